//! The consumer runtime: pulls deliveries, runs the handler stack with bounded concurrency,
//! and settles every delivery exactly once — ack, redeliver, or dead-letter.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use messaging_core::handler::{handler_fn, HandlerError, Incoming};
//! use messaging_core::middleware::retry::RetryPolicy;
//! use messaging_core::runtime::Consumer;
//! use messaging_core::{DynPublisher, SubscribeOptions};
//! # let broker = messaging_testkit::MemoryBroker::new();
//! # let (subscriber, publisher) = (broker.subscriber(), Arc::new(broker.publisher()) as Arc<dyn DynPublisher>);
//!
//! let consumer = Consumer::builder(subscriber, publisher, "orders", SubscribeOptions::new("billing"))
//!     .retry(RetryPolicy::default())
//!     .concurrency(8)
//!     .build(handler_fn(|msg: Incoming| async move {
//!         let order: serde_json::Value = msg.data()?;
//!         let _ = order;
//!         Ok::<(), HandlerError>(())
//!     }));
//! # let shutdown = async {};
//! let report = consumer.run(shutdown).await?;
//! # let _ = report;
//! # Ok(()) }
//! ```
//!
//! # Delivery guarantees
//!
//! | guarantee | settles | can lose | can duplicate |
//! |---|---|---|---|
//! | [`AtMostOnce`](Guarantee::AtMostOnce) | ack before the handler runs | a message whose handler fails or whose process dies mid-handler (failures still go to the dead-letter queue when the handler returns) | no — if the ack fails the message is not handled |
//! | [`AtLeastOnce`](Guarantee::AtLeastOnce) (default) | after the stack decided | no | yes: a crash (or an ack failure) after the handler ran and before the ack redelivers it |
//! | [`EffectivelyOnce`](Guarantee::EffectivelyOnce) | as at-least-once, with an idempotency layer | no | the handler does not run twice for a redelivered message once it was recorded done; see [`idempotency`](crate::middleware::idempotency) for the window between process and record |
//!
//! Broker transactions (Kafka's exactly-once) are not offered: no test broker here supports
//! them faithfully.
//!
//! # Concurrency, order and backpressure
//!
//! At most `concurrency` deliveries are in the runtime at once; the subscription's prefetch is
//! raised to match, so nothing piles up unbounded. On brokers whose deliveries have ack
//! deadlines (SQS, in-memory), a prefetch that was not [set](crate::SubscribeOptions::prefetch)
//! is `concurrency` plus one receive (10), so no message waits in a buffer while its deadline
//! runs out; elsewhere it is [`DEFAULT_PREFETCH`](crate::subscriber::DEFAULT_PREFETCH). For an ordered subscription
//! ([`SubscribeOptions::ordered`](crate::SubscribeOptions::ordered)), deliveries are routed to
//! `concurrency` lanes by ordering key: one key is handled one message at a time, in order.
//!
//! # Leases
//!
//! While a handler runs — in-place retries and their waits included — the runtime keeps its
//! delivery's ack deadline alive on brokers that can extend it, so a long handler's message is
//! not handed to a second consumer; see [`LeasePolicy`]. A handler can be given a time limit
//! with [`RetryPolicy::handler_timeout`](crate::middleware::retry::RetryPolicy::handler_timeout).
//! Dropping the run's future (aborting its task) is a hard stop: running handlers are cut off
//! and their deliveries nacked for redelivery at once, as at the drain timeout, so nothing
//! stays held by a run that is gone.
//!
//! # Supervision
//!
//! A subscription the broker closes (a lost connection, a node restart that the client could
//! not ride out) does not end the run: the runtime closes it and subscribes again with
//! jittered exponential backoff (100 ms to 30 s), logging each attempt and counting
//! [`RunReport::resubscribed`] and `messaging_resubscribed_total`. Failing receives are
//! retried with backoff (50 ms to 5 s). Deliveries in flight from a lost subscription cannot
//! be settled any more; the broker hands them out again, and none is settled twice. The run
//! ends early only when subscribing again fails for a reason retrying cannot fix
//! ([`RunError::Resubscribe`]).
//!
//! # Health, pause and the kill switch
//!
//! [`Consumer::handle`] gives a [`ConsumerHandle`]: the consumer's [`ConsumerStatus`] (state,
//! last receive and settle, in-flight count, backlog where
//! [given](ConsumerBuilder::backlog_from)) as a watchable value, readiness and liveness for
//! probes (the `http-probes` feature serves them: `probes`), and
//! [pause](ConsumerHandle::pause)/[resume](ConsumerHandle::resume) of intake. A
//! [`CircuitBreaker`] pauses intake by itself when handlers fail too often, and a
//! [`RateLimit`] bounds intake; both come from [`ConsumerSettings`] as a configuration file
//! gives them.
//!
//! # Shutdown
//!
//! When the shutdown future completes, the runtime stops receiving, lets in-flight deliveries
//! finish within [`drain_timeout`](ConsumerBuilder::drain_timeout), nacks (for immediate
//! redelivery) the ones still running after it, and closes the subscription: nothing is lost,
//! nothing is settled twice. Shutdown is bounded: handlers still running at the drain timeout
//! are cut off (at-most-once ones too — their messages were acked before handling, so they are
//! lost, as at-most-once allows), and if those nacks are not settled within 5 s more (a broker
//! that does not answer), the subscription is closed anyway, which returns them to the group.
//! Closing the subscription is bounded by another 5 s, so a run ends at most
//! `drain_timeout` + 10 s after the shutdown future completed.

mod context;
mod intake;
mod lease;
mod monitor;
#[cfg(feature = "http-probes")]
pub mod probes;
mod run;
mod status;
#[cfg(feature = "opentelemetry")]
pub(crate) mod trace_context;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::dynamic::DynPublisher;
use crate::features::Requirements;
use crate::handler::Incoming;
use crate::inspect::{Inspect, InspectError};
use crate::middleware::idempotency::{Idempotency, IdempotencyLayer, IdempotencyStore};
use crate::middleware::retry::{Retry, RetryLayer, RetryPolicy};
use crate::subscriber::{SubscribeOptions, Subscriber};
use tower_layer::{Identity, Layer, Stack};

pub use context::{Correlated, current};
pub use intake::{CircuitBreaker, RateLimit};
pub use lease::LeasePolicy;
pub use monitor::monitor_depth;
pub use run::{RunError, RunReport};
pub use status::{ConsumerHandle, ConsumerState, ConsumerStatus};

/// When deliveries are settled relative to handling; see the [module docs](self).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Guarantee {
    /// Ack first, then handle.
    AtMostOnce,
    /// Handle, then settle by the outcome.
    #[default]
    AtLeastOnce,
    /// At-least-once with an idempotency layer (set by [`ConsumerBuilder::build_idempotent`]).
    EffectivelyOnce,
}

/// A configured consumer; see [`Consumer::builder`] and [`Consumer::run`].
pub struct Consumer<Sub, Svc> {
    pub(crate) subscriber: Sub,
    pub(crate) publisher: Arc<dyn DynPublisher>,
    pub(crate) topic: String,
    pub(crate) options: SubscribeOptions,
    pub(crate) service: Svc,
    pub(crate) policy: RetryPolicy,
    pub(crate) concurrency: usize,
    pub(crate) guarantee: Guarantee,
    pub(crate) drain_timeout: Duration,
    pub(crate) requires: Requirements,
    pub(crate) lease: LeasePolicy,
    pub(crate) breaker: Option<CircuitBreaker>,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) backlog: Option<Arc<dyn Backlog>>,
    pub(crate) control: Arc<status::Control>,
}

impl<Sub, Svc> Consumer<Sub, Svc> {
    /// A handle on this consumer: its [status](ConsumerHandle::status), watchable, and
    /// [pause](ConsumerHandle::pause)/[resume](ConsumerHandle::resume). Take it before
    /// [`run`](Consumer::run); it stays valid after the run ends (state `stopped`).
    pub fn handle(&self) -> ConsumerHandle {
        ConsumerHandle {
            control: self.control.clone(),
        }
    }
}

/// Where a consumer's backlog comes from: any [`Inspect`], boxed.
pub(crate) trait Backlog: Send + Sync {
    fn depth<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<u64>, InspectError>> + Send + 'a>>;
}

impl<I: Inspect> Backlog for I {
    fn depth<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
    ) -> Pin<Box<dyn Future<Output = Result<Option<u64>, InspectError>> + Send + 'a>> {
        Box::pin(Inspect::depth(self, topic, group))
    }
}

/// How a consumer behaves when things go wrong, as a configuration file's `consumer:`
/// section gives it (the retry policy has its own section):
///
/// ```yaml
/// consumer:
///   lease: { every: 10s, max: 1h }   # renewal of ack deadlines for long handlers
///   stall_after: 5m                  # work waiting this long without a settle: stalled
///   circuit_breaker:                 # the kill switch
///     failure_ratio: 0.5
///     min_calls: 20
///     window: 30s
///     cooldown: 1m
///   rate_limit: { per_second: 100 }  # intake limit
/// ```
///
/// ```
/// use messaging_core::runtime::ConsumerSettings;
///
/// let yaml = "stall_after: 2m\ncircuit_breaker:\n  cooldown: 1m\nrate_limit:\n  per_second: 5\n";
/// let settings: ConsumerSettings = serde_norway::from_str(yaml)?;
/// assert_eq!(settings.rate_limit.unwrap().per_second, 5.0);
/// assert_eq!(settings.circuit_breaker.unwrap().min_calls, 20);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ConsumerSettings {
    /// Lease renewal; see [`LeasePolicy`].
    pub lease: LeasePolicy,
    /// How long work may wait (deliveries in flight, or a backlog) without a settle before
    /// the consumer is [`Stalled`](ConsumerState::Stalled) (default 5 minutes; set it above
    /// your longest handler run).
    #[serde(with = "humantime_serde")]
    pub stall_after: Duration,
    /// The kill switch, off unless set; see [`CircuitBreaker`].
    pub circuit_breaker: Option<CircuitBreaker>,
    /// An intake limit, off unless set; see [`RateLimit`].
    pub rate_limit: Option<RateLimit>,
}

/// Default [`ConsumerSettings::stall_after`].
pub const DEFAULT_STALL_AFTER: Duration = Duration::from_secs(300);

impl Default for ConsumerSettings {
    fn default() -> Self {
        Self {
            lease: LeasePolicy::default(),
            stall_after: DEFAULT_STALL_AFTER,
            circuit_breaker: None,
            rate_limit: None,
        }
    }
}

impl<Sub, Svc> std::fmt::Debug for Consumer<Sub, Svc> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consumer")
            .field("topic", &self.topic)
            .field("group", &self.options.group())
            .field("concurrency", &self.concurrency)
            .field("guarantee", &self.guarantee)
            .finish_non_exhaustive()
    }
}

/// Builds a [`Consumer`] with the standard stack: one retry layer, built from the consumer's
/// [policy](Self::retry), deciding every failure; under it the user's [layers](Self::layer),
/// in the order added (the first added is the outermost); under those the optional
/// idempotency layer ([`build_idempotent`](Self::build_idempotent)), then the handler.
///
/// ```
/// use std::time::Duration;
/// use messaging_core::handler::{HandlerError, Incoming, handler_fn};
/// use messaging_core::middleware::retry::RetryPolicy;
/// use messaging_core::runtime::Consumer;
/// use messaging_core::SubscribeOptions;
/// # use messaging_core::dynamic::DynPublisher;
/// # fn demo<S: messaging_core::Subscriber>(subscriber: S, publisher: std::sync::Arc<dyn DynPublisher>) {
/// # #[derive(Clone)] struct Timeout;
/// # impl<S: Clone> tower_layer::Layer<S> for Timeout { type Service = S; fn layer(&self, s: S) -> S { s } }
/// let consumer = Consumer::builder(subscriber, publisher, "orders", SubscribeOptions::new("billing"))
///     .retry(RetryPolicy::default())
///     .layer(Timeout) // any tower layer; runs under the retry layer, around each attempt
///     .build(handler_fn(|_event: Incoming| async { Ok::<(), HandlerError>(()) }));
/// # let _ = consumer;
/// # }
/// ```
pub struct ConsumerBuilder<Sub, L = Identity> {
    subscriber: Sub,
    publisher: Arc<dyn DynPublisher>,
    topic: String,
    options: SubscribeOptions,
    policy: RetryPolicy,
    concurrency: usize,
    guarantee: Guarantee,
    drain_timeout: Duration,
    requires: Requirements,
    settings: ConsumerSettings,
    backlog: Option<Arc<dyn Backlog>>,
    layers: L,
}

impl<Sub, L> std::fmt::Debug for ConsumerBuilder<Sub, L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConsumerBuilder")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

impl Consumer<(), ()> {
    /// Starts a consumer of `topic` under `options`. `publisher` publishes dead letters (and is
    /// required: a message that cannot be processed must end in the dead-letter queue).
    pub fn builder<Sub: Subscriber>(
        subscriber: Sub,
        publisher: Arc<dyn DynPublisher>,
        topic: impl Into<String>,
        options: SubscribeOptions,
    ) -> ConsumerBuilder<Sub> {
        ConsumerBuilder {
            subscriber,
            publisher,
            topic: topic.into(),
            options,
            policy: RetryPolicy::default(),
            concurrency: 1,
            guarantee: Guarantee::AtLeastOnce,
            drain_timeout: Duration::from_secs(30),
            requires: Requirements::default(),
            settings: ConsumerSettings::default(),
            backlog: None,
            layers: Identity::new(),
        }
    }
}

impl<Sub: Subscriber, L> ConsumerBuilder<Sub, L> {
    /// The retry policy (default: [`RetryPolicy::default`]); also names the dead-letter topic.
    #[must_use]
    pub fn retry(mut self, policy: RetryPolicy) -> Self {
        self.policy = policy;
        self
    }

    /// Deliveries handled at once (default 1).
    #[must_use]
    pub fn concurrency(mut self, n: usize) -> Self {
        self.concurrency = n.max(1);
        self
    }

    /// At-most-once or at-least-once (default); effectively-once comes with
    /// [`build_idempotent`](Self::build_idempotent).
    #[must_use]
    pub fn guarantee(mut self, guarantee: Guarantee) -> Self {
        self.guarantee = guarantee;
        self
    }

    /// How long shutdown waits for in-flight handlers (default 30 s); see
    /// [Shutdown](self#shutdown) for what happens to the ones still running after it.
    #[must_use]
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.drain_timeout = timeout;
        self
    }

    /// What this consumer needs of the broker. [`Consumer::run`] checks it before subscribing
    /// and fails with [`SubscribeErrorKind::Unsupported`](crate::SubscribeErrorKind) naming
    /// the broker and every missing capability; see [`Requirements`].
    #[must_use]
    pub fn requires(mut self, requirements: Requirements) -> Self {
        self.requires = requirements;
        self
    }

    /// How running handlers keep their deliveries' leases on brokers with ack deadlines
    /// (default: renewed every third of the deadline, for at most an hour); see
    /// [`LeasePolicy`].
    #[must_use]
    pub fn lease(mut self, lease: LeasePolicy) -> Self {
        self.settings.lease = lease;
        self
    }

    /// How long work may wait without a settle before the consumer counts as
    /// [`Stalled`](ConsumerState::Stalled) (default 5 minutes).
    #[must_use]
    pub fn stall_after(mut self, after: Duration) -> Self {
        self.settings.stall_after = after;
        self
    }

    /// The kill switch; see [`CircuitBreaker`].
    #[must_use]
    pub fn circuit_breaker(mut self, breaker: CircuitBreaker) -> Self {
        self.settings.circuit_breaker = Some(breaker);
        self
    }

    /// An intake limit; see [`RateLimit`].
    #[must_use]
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.settings.rate_limit = Some(limit);
        self
    }

    /// All of [`ConsumerSettings`] at once, as a configuration file gives them.
    #[must_use]
    pub fn settings(mut self, settings: ConsumerSettings) -> Self {
        self.settings = settings;
        self
    }

    /// Reads the group's backlog from `inspector` (every 10 s) for the consumer's
    /// [status](ConsumerStatus::backlog): a backlog that is not worked off makes a consumer
    /// stalled even with nothing in flight. The adapters' brokers and the facade's `Broker`
    /// implement [`Inspect`].
    #[must_use]
    pub fn backlog_from<I: Inspect + 'static>(mut self, inspector: I) -> Self {
        self.backlog = Some(Arc::new(inspector));
        self
    }

    /// Adds `layer` under the retry layer, around each attempt of the handler: a timeout,
    /// metrics, a tracing span, anything written as a tower layer. Layers added first are
    /// outermost, as in `tower::ServiceBuilder`. There is one retry layer, built from
    /// [`retry`](Self::retry)'s policy — the policy that also names the dead-letter topic —
    /// so a layer must not retry on its own.
    #[must_use]
    pub fn layer<T>(self, layer: T) -> ConsumerBuilder<Sub, Stack<T, L>> {
        ConsumerBuilder {
            subscriber: self.subscriber,
            publisher: self.publisher,
            topic: self.topic,
            options: self.options,
            policy: self.policy,
            concurrency: self.concurrency,
            guarantee: self.guarantee,
            drain_timeout: self.drain_timeout,
            requires: self.requires,
            settings: self.settings,
            backlog: self.backlog,
            layers: Stack::new(layer, self.layers),
        }
    }

    /// A consumer running `handler` under the [layers](Self::layer) and the retry policy.
    pub fn build<H>(self, handler: H) -> Consumer<Sub, Retry<L::Service>>
    where
        L: Layer<H>,
        L::Service:
            tower_service::Service<Incoming, Response = (), Error = crate::handler::HandlerError>,
    {
        let retry = RetryLayer::new(self.policy.clone());
        let stack = self.layers.layer(handler);
        self.finish(retry.layer(stack))
    }

    /// An effectively-once consumer: `handler` behind `idempotency` (innermost, right around
    /// the handler), under the [layers](Self::layer) and the retry policy.
    pub fn build_idempotent<H, St>(
        mut self,
        idempotency: IdempotencyLayer<St>,
        handler: H,
    ) -> Consumer<Sub, Retry<L::Service>>
    where
        H: tower_service::Service<Incoming, Response = (), Error = crate::handler::HandlerError>,
        St: IdempotencyStore,
        L: Layer<Idempotency<H, St>>,
        L::Service:
            tower_service::Service<Incoming, Response = (), Error = crate::handler::HandlerError>,
    {
        self.guarantee = Guarantee::EffectivelyOnce;
        self.build(idempotency.layer(handler))
    }

    /// A consumer running a custom stack, whose top decides every outcome, with no retry layer
    /// of the consumer's. The policy given to [`retry`](Self::retry) still names the
    /// dead-letter topic, so a retry layer inside `service` with another policy disagrees with
    /// it; [`layer`](Self::layer) and [`build`](Self::build) cannot.
    #[deprecated(
        note = "add layers with `layer` and the handler with `build`: the one retry layer is then built from the consumer's policy"
    )]
    pub fn build_stack<Svc>(self, service: Svc) -> Consumer<Sub, Svc> {
        self.finish(service)
    }

    fn finish<Svc>(self, service: Svc) -> Consumer<Sub, Svc> {
        let control =
            status::Control::new(&self.topic, self.options.group(), self.settings.stall_after);
        Consumer {
            subscriber: self.subscriber,
            publisher: self.publisher,
            topic: self.topic,
            options: self.options,
            service,
            policy: self.policy,
            concurrency: self.concurrency,
            guarantee: self.guarantee,
            drain_timeout: self.drain_timeout,
            control: Arc::new(control),
            requires: self.requires,
            lease: self.settings.lease,
            breaker: self.settings.circuit_breaker,
            rate_limit: self.settings.rate_limit,
            backlog: self.backlog,
        }
    }
}
