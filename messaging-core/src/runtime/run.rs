//! The receive loop, dispatch, settlement and shutdown.

use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::{Future, poll_fn};
use std::hash::{Hash, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use cloudevents::AttributesReader;
use tokio::sync::{Semaphore, oneshot};
use tokio_util::sync::CancellationToken;
use tower_service::Service;
use tracing::Instrument;
use tracing::field::Empty;

use super::Backlog;
use super::intake::{Breaker, Limiter};
use super::lease::{self, Lease};
use super::status::{Control, Seen};
use super::{Consumer, Guarantee, context};
use crate::codec::DecodeError;
use crate::dead_letter::{self, DEAD_LETTER_GROUP};
use crate::delivery::Delivery;
use crate::dynamic::DynPublisher;
use crate::error::{ErrorKind as _, ReceiveErrorKind, SubscribeError, SubscribeErrorKind};
use crate::event::EventExt;
use crate::features::{DelaySupport, Features, Unsupported};
use crate::handler::{DeadLetterReason, Failure, Incoming, Origin, Outcome, catch_panic, panicked};
use crate::middleware::retry::RetryMode;
use crate::subscriber::{SubscribeOptions, Subscriber, Subscription};
use crate::telemetry::semconv;

/// What a run did, counted per delivery.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunReport {
    /// Deliveries received.
    pub received: u64,
    /// Acked after handling (or, at-most-once, before).
    pub acked: u64,
    /// Nacked for redelivery by the retry policy.
    pub redelivered: u64,
    /// Published to the dead-letter topic, then acked.
    pub dead_lettered: u64,
    /// Still running at the end of the drain timeout: nacked for redelivery (at-most-once:
    /// cut off, and not redelivered — the message was acked before handling).
    pub abandoned: u64,
    /// Settlements the broker refused (the message will be redelivered).
    pub settle_failures: u64,
    /// Times the subscription was lost (closed by the broker, its connection gone) and opened
    /// again.
    pub resubscribed: u64,
}

/// Why a consumer could not start, or stopped before its shutdown future completed.
///
/// A lost subscription is not an error: the runtime subscribes again (see
/// [Supervision](super#supervision)). A run ends early only when subscribing fails for a
/// reason retrying cannot fix.
#[derive(Debug)]
pub enum RunError {
    /// Subscribing failed when the consumer started (bad credentials, options the broker
    /// refuses, a broker that is not reachable), or the broker cannot do what the consumer
    /// needs.
    Subscribe(SubscribeError),
    /// Subscribing again after the subscription was lost failed for good; in-flight work was
    /// drained first.
    Resubscribe {
        /// Why the broker refused.
        error: SubscribeError,
        /// What the run did until then.
        report: RunReport,
    },
}

impl fmt::Display for RunError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Subscribe(e) => write!(f, "consumer cannot start: {e}"),
            Self::Resubscribe { error, report } => write!(
                f,
                "consumer stopped: the subscription was lost after {} deliveries and subscribing again failed: {error}",
                report.received
            ),
        }
    }
}

impl std::error::Error for RunError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Subscribe(e) | Self::Resubscribe { error: e, .. } => Some(e),
        }
    }
}

/// Metric handles, registered once per run: the conventions' (`messaging.*`, labelled with
/// their attributes) and the project's own (`messaging_*{topic, group}`).
struct Metrics {
    consumed: metrics::Counter,
    process_seconds: metrics::Histogram,
    ack_seconds: metrics::Histogram,
    nack_seconds: metrics::Histogram,
    end_to_end_seconds: metrics::Histogram,
    acked: metrics::Counter,
    redelivered: metrics::Counter,
    dead_lettered: metrics::Counter,
    settle_failures: metrics::Counter,
    dead_letter_failures: metrics::Counter,
    in_flight: metrics::Gauge,
    resubscribed: metrics::Counter,
}

impl Metrics {
    fn new(telemetry: &Telemetry) -> Self {
        crate::telemetry::describe_metrics();
        let labels = [
            ("topic", telemetry.topic.clone()),
            ("group", telemetry.group.clone()),
        ];
        let consumed = telemetry.labels("receive", None);
        let process = telemetry.labels("process", None);
        let ack = telemetry.settle_labels("ack", None);
        let nack = telemetry.settle_labels("nack", None);
        Self {
            consumed: metrics::counter!(semconv::METRIC_CONSUMED_MESSAGES, &consumed),
            process_seconds: metrics::histogram!(semconv::METRIC_PROCESS_DURATION, &process),
            ack_seconds: metrics::histogram!(semconv::METRIC_OPERATION_DURATION, &ack),
            nack_seconds: metrics::histogram!(semconv::METRIC_OPERATION_DURATION, &nack),
            end_to_end_seconds: metrics::histogram!(crate::telemetry::END_TO_END_LATENCY, &labels),
            acked: metrics::counter!("messaging_acked_total", &labels),
            redelivered: metrics::counter!("messaging_redelivered_total", &labels),
            dead_lettered: metrics::counter!("messaging_dead_lettered_total", &labels),
            settle_failures: metrics::counter!("messaging_settle_failures_total", &labels),
            dead_letter_failures: metrics::counter!(
                "messaging_dead_letter_failures_total",
                &labels
            ),
            in_flight: metrics::gauge!("messaging_in_flight", &labels),
            resubscribed: metrics::counter!("messaging_resubscribed_total", &labels),
        }
    }
}

/// What the consumer's spans and metrics say of it, by the conventions.
struct Telemetry {
    system: &'static str,
    topic: String,
    group: String,
    /// Span names, built once: `process {topic}`, `ack {topic}`, `nack {topic}`.
    process_name: String,
    ack_name: String,
    nack_name: String,
}

impl Telemetry {
    fn new(broker: &str, topic: &str, group: &str) -> Self {
        Self {
            system: semconv::system_for(broker),
            topic: topic.to_owned(),
            group: group.to_owned(),
            process_name: format!("process {topic}"),
            ack_name: format!("ack {topic}"),
            nack_name: format!("nack {topic}"),
        }
    }

    fn labels(
        &self,
        operation: &'static str,
        error: Option<String>,
    ) -> Vec<(&'static str, String)> {
        let mut labels = vec![
            (semconv::MESSAGING_SYSTEM, self.system.to_owned()),
            (semconv::MESSAGING_OPERATION_NAME, operation.to_owned()),
            (semconv::MESSAGING_DESTINATION_NAME, self.topic.clone()),
            (semconv::MESSAGING_CONSUMER_GROUP_NAME, self.group.clone()),
        ];
        if let Some(error) = error {
            labels.push((semconv::ERROR_TYPE, error));
        }
        labels
    }

    fn settle_labels(
        &self,
        operation: &'static str,
        error: Option<String>,
    ) -> Vec<(&'static str, String)> {
        let mut labels = self.labels(operation, error);
        labels.push((semconv::MESSAGING_OPERATION_TYPE, "settle".to_owned()));
        labels
    }

    /// The `process {topic}` span of one delivery.
    fn process_span<D: Delivery>(&self, delivery: &D, msg: &Incoming) -> tracing::Span {
        let event = msg.event();
        let at = delivery.coordinates();
        tracing::info_span!(
            "process",
            otel.name = %self.process_name,
            otel.kind = "consumer",
            otel.status_code = Empty,
            messaging.system = self.system,
            messaging.operation.name = "process",
            messaging.operation.type = "process",
            messaging.destination.name = %self.topic,
            messaging.consumer.group.name = %self.group,
            messaging.message.id = at.message_id.unwrap_or(event.id()),
            messaging.message.conversation_id = event.correlation_id(),
            messaging.destination.partition.id = at.partition.map(tracing::field::display),
            messaging.kafka.offset = at.offset,
            messaging.rabbitmq.message.delivery_tag = at.delivery_tag,
            cloudevents.event_id = event.id(),
            cloudevents.event_type = event.ty(),
            cloudevents.event_source = %event.source(),
            attempt = msg.attempt(),
            error.type = Empty,
        )
    }

    /// The `process {topic}` span of a delivery the handler does not see (undecodable, cut off
    /// before it started, or one whose dead letter is still to be published), failed with
    /// `error`; its settle and dead-letter spans are its children.
    fn unhandled_span<D: Delivery>(&self, delivery: &D, error: &str) -> tracing::Span {
        let at = delivery.coordinates();
        let event = delivery.payload().ok();
        let span = tracing::info_span!(
            "process",
            otel.name = %self.process_name,
            otel.kind = "consumer",
            otel.status_code = "error",
            messaging.system = self.system,
            messaging.operation.name = "process",
            messaging.operation.type = "process",
            messaging.destination.name = %self.topic,
            messaging.consumer.group.name = %self.group,
            messaging.message.id = at.message_id.or(event.map(|e| e.id())),
            messaging.destination.partition.id = at.partition.map(tracing::field::display),
            messaging.kafka.offset = at.offset,
            messaging.rabbitmq.message.delivery_tag = at.delivery_tag,
            cloudevents.event_id = event.map(|e| e.id()),
            cloudevents.event_type = event.map(|e| e.ty()),
            attempt = delivery.attempt(),
            error.type = error,
        );
        #[cfg(feature = "opentelemetry")]
        if let Some(event) = event {
            super::trace_context::continue_trace(&span, event);
        }
        span
    }

    /// The `ack {topic}` or `nack {topic}` span of one settlement, a child of the current
    /// (process) span.
    fn settle_span(&self, ack: bool) -> tracing::Span {
        let (name, operation) = if ack {
            (&self.ack_name, "ack")
        } else {
            (&self.nack_name, "nack")
        };
        tracing::info_span!(
            "settle",
            otel.name = %name,
            otel.kind = "client",
            otel.status_code = Empty,
            messaging.system = self.system,
            messaging.operation.name = operation,
            messaging.operation.type = "settle",
            messaging.destination.name = %self.topic,
            messaging.consumer.group.name = %self.group,
            error.type = Empty,
        )
    }
}

/// What every delivery task shares.
struct Shared<Svc> {
    service: Svc,
    origin: Arc<Origin>,
    publisher: Arc<dyn DynPublisher>,
    dlq_topic: String,
    guarantee: Guarantee,
    /// Cancelled at the drain timeout, and with `ended`: handlers still running are cut off.
    hard_stop: CancellationToken,
    /// Cancelled when the run ends or is dropped.
    ended: CancellationToken,
    metrics: Metrics,
    telemetry: Telemetry,
    pending: PendingDeadLetters,
    /// The subscription's ack deadline: a held delivery's deadline is never extended by less.
    ack_deadline: Duration,
    /// Keeps a running handler's delivery from being handed out again.
    lease: Option<Lease>,
    /// The state and progress the consumer's handles see.
    control: Arc<Control>,
    /// The kill switch, if configured.
    breaker: Option<Arc<Breaker>>,
    /// Whether the broker can delay a redelivery (for messages held back by the breaker).
    can_delay: bool,
    /// Park an undeliverable dead letter's original by immediate requeues (the broker's delivery
    /// limit then dead-letters it) rather than a delayed nack, which would reset the count.
    park_by_requeue: bool,
}

const SETTLE_TRIES: u32 = 3;
/// Publishes of one dead letter before a transient failure gives the delivery back.
const DEAD_LETTER_TRIES: u32 = 8;
/// How often a message whose every dead letter the broker refuses is tried again.
const PARKED_RETRY: Duration = Duration::from_secs(60);
/// How long shutdown waits, after the drain timeout, for cut-off deliveries to be settled, and
/// then for the subscription to close.
const HARD_STOP_GRACE: Duration = Duration::from_secs(5);
/// Most deliveries taken from the subscription in one receive.
const RECV_BATCH: usize = 64;
/// What the runtime lets a subscription hold beyond its concurrency, by default, where
/// deliveries have ack deadlines: one receive's worth (SQS's largest), so nothing waits in a
/// buffer while its deadline runs out.
const DEADLINE_READ_AHEAD: usize = 10;

impl<Sub, Svc> Consumer<Sub, Svc> {
    /// The declared [`Requirements`] against the broker's features and this consumer's stack.
    fn check_requirements(&self, features: &Features) -> Result<(), RunError> {
        let mut missing = match features.check(&self.requires) {
            Ok(()) => Vec::new(),
            Err(unsupported) => unsupported.missing,
        };
        if self.requires.effectively_once
            && self.guarantee != Guarantee::EffectivelyOnce
            && !features.transactions
        {
            missing.push(
                "effectively-once delivery without an idempotency layer (no broker transactions; \
                 build the consumer with `build_idempotent`)"
                    .to_owned(),
            );
        }
        if missing.is_empty() {
            return Ok(());
        }
        Err(RunError::Subscribe(
            SubscribeError::new(SubscribeErrorKind::Unsupported).with_detail(format!(
                "consumer of {:?} (group {:?}) cannot start: {}",
                self.topic,
                self.options.group(),
                Unsupported {
                    broker: features.broker,
                    missing,
                }
            )),
        ))
    }
}

impl<Sub, Svc> Consumer<Sub, Svc>
where
    Sub: Subscriber,
    Sub::Subscription: 'static,
    Svc: Service<Incoming, Response = Outcome, Error = Infallible> + Clone + Send + Sync + 'static,
    Svc::Future: Send,
{
    /// Runs until `shutdown` completes, then drains (see [Shutdown](super#shutdown)). A lost
    /// subscription is opened again (see [Supervision](super#supervision)); the run ends
    /// early only when subscribing fails for good. The consumer's
    /// [handle](Consumer::handle) sees the state, ending with
    /// [`Stopped`](super::ConsumerState::Stopped) (and the error, if any).
    pub async fn run(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<RunReport, RunError> {
        let control = self.control.clone();
        let result = self.run_supervised(shutdown).await;
        control.stopped(result.as_ref().err().map(ToString::to_string));
        result
    }

    async fn run_supervised(
        self,
        shutdown: impl Future<Output = ()> + Send,
    ) -> Result<RunReport, RunError> {
        let features = self.subscriber.features();
        let prefetch = match self.options.get_prefetch() {
            Some(p) => p.max(self.concurrency),
            None if features.ack_deadline => self.concurrency + DEADLINE_READ_AHEAD,
            None => self.options.prefetch_limit().max(self.concurrency),
        };
        let options = self.options.clone().prefetch(prefetch);
        let dlq_topic = self.policy.dead_letter_topic(&self.topic);
        options.validate(&features).map_err(RunError::Subscribe)?;
        self.check_requirements(&features)?;
        let invalid = |detail: String| {
            RunError::Subscribe(
                SubscribeError::new(SubscribeErrorKind::InvalidOptions).with_detail(detail),
            )
        };
        self.policy.validate().map_err(|e| invalid(e.to_string()))?;
        if let Some(breaker) = &self.breaker {
            breaker.validate().map_err(invalid)?;
        }
        if let Some(limit) = &self.rate_limit {
            limit.validate().map_err(invalid)?;
        }
        if self.policy.mode == RetryMode::Redelivery
            && features.delayed_redelivery == DelaySupport::None
            && self.policy.max_retries > 0
        {
            return Err(RunError::Subscribe(
                SubscribeError::new(SubscribeErrorKind::Unsupported).with_detail(format!(
                    "broker {:?} does not support delayed redelivery, which retry mode `redelivery` needs",
                    features.broker
                )),
            ));
        }
        let mut sub = self
            .subscriber
            .subscribe(&self.topic, options.clone())
            .await
            .map_err(RunError::Subscribe)?;
        // Then the dead-letter topic's group, before the first delivery is handled, so dead
        // letters are kept from the start (declared, not subscribed: dead letters already
        // waiting are not handed out). Subscribing first lets the adapter lay out the
        // dead-letter topic for the subscription (SQS: a FIFO one for an ordered group whose
        // queue redrives into it).
        if let Err(e) = self
            .subscriber
            .declare(&dlq_topic, SubscribeOptions::new(DEAD_LETTER_GROUP))
            .await
        {
            let _ = tokio::time::timeout(HARD_STOP_GRACE, sub.close()).await;
            return Err(RunError::Subscribe(e));
        }

        let ended = CancellationToken::new();
        let telemetry = Telemetry::new(features.broker, &self.topic, options.group());
        let shared = Arc::new(Shared {
            service: self.service,
            origin: Arc::new(Origin {
                topic: self.topic.clone(),
                group: options.group().to_owned(),
            }),
            publisher: self.publisher,
            dlq_topic,
            guarantee: self.guarantee,
            hard_stop: ended.child_token(),
            ended,
            metrics: Metrics::new(&telemetry),
            telemetry,
            pending: PendingDeadLetters::default(),
            ack_deadline: options.get_ack_deadline(),
            lease: self.lease.for_deadline(
                options.get_ack_deadline(),
                features.ack_deadline && features.extend_deadline,
                &[
                    ("topic", self.topic.clone()),
                    ("group", options.group().to_owned()),
                ],
            ),
            control: self.control.clone(),
            breaker: self
                .breaker
                .clone()
                .map(|policy| Arc::new(Breaker::new(policy, self.control.clone()))),
            can_delay: features.delayed_redelivery != DelaySupport::None,
            park_by_requeue: features.native_dead_letter
                && features.delayed_redelivery == DelaySupport::Emulated
                && !options.is_ordered(),
        });
        // A permit per delivery in the runtime; all of them back means nothing is in flight.
        let permits = Arc::new(Semaphore::new(self.concurrency));
        // Dropping the run (its task aborted) is a hard stop: running handlers are cut off and
        // their deliveries nacked, queued ones nacked untouched, and the health task ends.
        let _end_of_run = shared.ended.clone().drop_guard();
        // Ordered: each lane is a chain of batons, each delivery's task waiting for the one
        // before it on its lane (while keeping its own lease).
        let mut lanes = options.is_ordered().then(|| {
            (0..self.concurrency)
                .map(|_| Baton::passed())
                .collect::<Vec<_>>()
        });
        let mut next_lane = 0usize;

        shared.control.running();
        {
            let shared = shared.clone();
            let health = health(
                shared.control.clone(),
                self.backlog.clone(),
                self.topic.clone(),
                options.group().to_owned(),
            );
            tokio::spawn(async move { scoped(&shared, health).await });
        }
        let mut paused = shared.control.paused.subscribe();
        let mut limiter = self.rate_limit.as_ref().map(Limiter::new);
        tokio::pin!(shutdown);
        let mut failed = None;
        let mut backoff = Duration::from_millis(50);
        'receive: loop {
            // Intake stops while paused by hand...
            if *paused.borrow_and_update() {
                tokio::select! {
                    () = &mut shutdown => break,
                    _ = paused.changed() => {}
                }
                continue;
            }
            // ...and while the circuit is open; a half-open one lets one delivery in.
            let mut admitted = RECV_BATCH;
            if let Some(breaker) = &shared.breaker {
                admitted = tokio::select! {
                    () = &mut shutdown => break,
                    _ = paused.changed() => continue,
                    n = breaker.admit() => n.min(RECV_BATCH),
                };
            }
            let first = tokio::select! {
                () = &mut shutdown => {
                    release_trial(&shared, admitted);
                    break;
                }
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            // Take whatever other permits are free, and receive up to that many at once.
            let mut batch_permits = vec![first];
            while batch_permits.len() < admitted {
                match permits.clone().try_acquire_owned() {
                    Ok(p) => batch_permits.push(p),
                    Err(_) => break,
                }
            }
            if let Some(limiter) = &mut limiter {
                let n = loop {
                    match limiter.take(batch_permits.len()) {
                        Ok(n) => break n,
                        Err(wait) => tokio::select! {
                            () = &mut shutdown => {
                                release_trial(&shared, admitted);
                                break 'receive;
                            }
                            () = tokio::time::sleep(wait) => {}
                        },
                    }
                };
                batch_permits.truncate(n);
            }
            // Receiving is cancel safe: a pause or a shutdown meanwhile loses nothing.
            let received = tokio::select! {
                // A pause or a shutdown that came while waiting for permits wins over a
                // delivery that is ready.
                biased;
                () = &mut shutdown => {
                    release_trial(&shared, admitted);
                    break;
                }
                _ = paused.changed() => {
                    release_trial(&shared, admitted);
                    continue;
                }
                // The circuit opened (by deliveries in flight) while waiting: take nothing.
                () = circuit_opened(&shared, admitted) => continue,
                r = sub.recv_batch(batch_permits.len()) => r,
            };
            let deliveries = match received {
                Ok(d) => d,
                Err(e) if e.kind() == ReceiveErrorKind::Closed => {
                    drop(batch_permits);
                    release_trial(&shared, admitted);
                    tracing::warn!(topic = %self.topic, group = %options.group(), error = %e, "subscription lost; subscribing again");
                    shared.control.reconnecting(e.to_string());
                    // Deliveries still in flight from it fail to settle and are redelivered
                    // by the broker; none is settled twice.
                    let _ = tokio::time::timeout(HARD_STOP_GRACE, sub.close()).await;
                    let again = crate::subscriber::resubscribe(
                        &self.subscriber,
                        &self.topic,
                        &options,
                        shutdown.as_mut(),
                    );
                    match again.await {
                        Ok(Some(new)) => {
                            sub = new;
                            shared.metrics.resubscribed.increment(1);
                            shared
                                .control
                                .progress
                                .resubscribed
                                .fetch_add(1, Ordering::Relaxed);
                            shared.control.running();
                            continue;
                        }
                        Ok(None) => break,
                        Err(e) => {
                            failed = Some(e);
                            break;
                        }
                    }
                }
                Err(e) => {
                    drop(batch_permits);
                    release_trial(&shared, admitted);
                    tracing::warn!(topic = %self.topic, group = %options.group(), error = %e, ?backoff, "receive failed; retrying");
                    shared.control.reconnecting(e.to_string());
                    tokio::select! {
                        () = &mut shutdown => break,
                        () = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            if shared.control.is_reconnecting() {
                shared.control.running();
            }
            if deliveries.is_empty() {
                release_trial(&shared, admitted);
            }
            backoff = Duration::from_millis(50);
            let n = deliveries.len() as u64;
            shared
                .control
                .progress
                .received
                .fetch_add(n, Ordering::Relaxed);
            shared.metrics.consumed.increment(n);
            // Unused permits drop back into the semaphore.
            for (delivery, permit) in deliveries.into_iter().zip(batch_permits) {
                match &mut lanes {
                    None => {
                        let shared = shared.clone();
                        // Boxed before spawning: the task's future is kilobytes (handler and
                        // middleware state), and spawning moves it several times; boxed, only
                        // the pointer moves.
                        tokio::spawn(Box::pin(async move {
                            process_isolated(&shared, delivery).await;
                            drop(permit);
                        }));
                    }
                    Some(lanes) => {
                        let lane = match delivery.payload().ok().and_then(|e| e.ordering_key()) {
                            Some(key) => {
                                let mut h = std::collections::hash_map::DefaultHasher::new();
                                key.hash(&mut h);
                                (h.finish() as usize) % lanes.len()
                            }
                            None => {
                                next_lane = next_lane.wrapping_add(1);
                                next_lane % lanes.len()
                            }
                        };
                        let (turn, done) = Baton::take(&mut lanes[lane]);
                        let shared = shared.clone();
                        tokio::spawn(Box::pin(async move {
                            let mut delivery = delivery;
                            // The lane's previous delivery is settled first (or its task ended).
                            tokio::select! {
                                biased;
                                () = turn => {}
                                () = lease::renew(shared.lease.as_ref(), &mut delivery) => {}
                            }
                            process_isolated(&shared, delivery).await;
                            drop(permit);
                            done.pass();
                        }));
                    }
                }
            }
        }

        // Drain: stop receiving, let in-flight work finish, then stop the rest. Every task
        // holds a permit until its delivery is settled.
        shared.control.stopping();
        let all = u32::try_from(self.concurrency).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(self.drain_timeout, permits.acquire_many(all)).await;
        if drained.is_err() {
            shared.hard_stop.cancel();
            // Cut-off deliveries are nacked now; a broker that does not answer must not hold
            // shutdown forever. Whatever is still unsettled goes back to the group when the
            // subscription closes.
            let settled = tokio::time::timeout(HARD_STOP_GRACE, permits.acquire_many(all)).await;
            if settled.is_err() {
                let stuck = self.concurrency.saturating_sub(permits.available_permits());
                tracing::warn!(
                    stuck,
                    grace = ?HARD_STOP_GRACE,
                    "deliveries still unsettled after the hard stop; closing the subscription, which returns them to the group"
                );
            }
        }
        if tokio::time::timeout(HARD_STOP_GRACE, sub.close())
            .await
            .is_err()
        {
            tracing::warn!(grace = ?HARD_STOP_GRACE, "closing the subscription timed out");
        }
        let report = shared.control.progress.report();
        match failed {
            Some(error) => Err(RunError::Resubscribe { error, report }),
            None => Ok(report),
        }
    }
}

/// Runs `task` until it completes or the run ends (see `Shared::ended`).
async fn scoped<Svc>(shared: &Shared<Svc>, task: impl Future<Output = ()>) {
    tokio::select! {
        biased;
        () = task => {}
        () = shared.ended.cancelled() => {}
    }
}

/// Completes when the circuit is (or becomes) open, for a receive that is not a trial — it may
/// have opened, by deliveries in flight, while intake waited for a permit; never otherwise.
async fn circuit_opened<Svc>(shared: &Shared<Svc>, admitted: usize) {
    match &shared.breaker {
        Some(breaker) if admitted > 1 => breaker.opened().await,
        _ => std::future::pending().await,
    }
}

/// Gives a half-open circuit's trial back when intake took nothing with it.
fn release_trial<Svc>(shared: &Shared<Svc>, admitted: usize) {
    if admitted == 1 {
        no_verdict(shared);
    }
}

/// How often a running consumer's status is refreshed.
const HEALTH_TICK: Duration = Duration::from_secs(1);
/// How often the backlog is read from the broker, in health ticks.
const BACKLOG_TICKS: u64 = 10;

/// Refreshes the consumer's status every [`HEALTH_TICK`] (and its backlog, if it has a
/// source, every [`BACKLOG_TICKS`]) until the run ends.
async fn health(
    control: Arc<Control>,
    backlog: Option<Arc<dyn Backlog>>,
    topic: String,
    group: String,
) {
    let mut seen = Seen::new();
    for n in 0u64.. {
        if let Some(source) = backlog.as_ref().filter(|_| n % BACKLOG_TICKS == 0) {
            let depth = tokio::time::timeout(HARD_STOP_GRACE, source.depth(&topic, &group)).await;
            let value = match depth {
                Ok(Ok(d)) => d.unwrap_or(0),
                Ok(Err(e)) => {
                    tracing::debug!(topic, group, error = %e, "cannot read the backlog");
                    u64::MAX
                }
                Err(_) => u64::MAX,
            };
            control.progress.backlog.store(value, Ordering::Relaxed);
        }
        control.tick(&mut seen);
        tokio::time::sleep(HEALTH_TICK).await;
    }
}

/// One place in an ordered lane: a delivery's task waits for the baton of the delivery before
/// it on the lane, and passes its own on when done (or when its task ends, by drop: a panic or
/// an aborted run does not stop the lane).
struct Baton(oneshot::Sender<()>);

impl Baton {
    /// A lane's starting point: a turn that is already free.
    fn passed() -> oneshot::Receiver<()> {
        let (tx, rx) = oneshot::channel();
        let _ = tx.send(());
        rx
    }

    /// Joins the lane whose last turn is `tail`: returns the wait for this turn, and the baton
    /// to pass to the next; `tail` becomes this turn's end.
    fn take(tail: &mut oneshot::Receiver<()>) -> (impl Future<Output = ()> + Send + 'static, Self) {
        let (tx, rx) = oneshot::channel();
        let before = std::mem::replace(tail, rx);
        (
            async move {
                let _ = before.await;
            },
            Self(tx),
        )
    }

    fn pass(self) {
        let _ = self.0.send(());
    }
}

/// [`process`], with a panic outside the handler (an adapter's settle, say) logged instead of
/// ending the task: the delivery it held is dropped unsettled, which the broker redelivers.
async fn process_isolated<D, Svc>(shared: &Shared<Svc>, delivery: D)
where
    D: Delivery,
    Svc: Service<Incoming, Response = Outcome, Error = Infallible> + Clone + Send + Sync + 'static,
    Svc::Future: Send,
{
    shared.metrics.in_flight.increment(1.0);
    let in_flight = &shared.control.progress.in_flight;
    in_flight.fetch_add(1, Ordering::Relaxed);
    let result = catch_panic(process(shared, delivery)).await;
    in_flight.fetch_sub(1, Ordering::Relaxed);
    shared.metrics.in_flight.decrement(1.0);
    if let Err(p) = result {
        no_verdict(shared);
        tracing::error!(topic = %shared.origin.topic, group = %shared.origin.group, panic = %p.message(), "processing a delivery panicked outside the handler; the broker redelivers it");
    }
}

async fn process<D, Svc>(shared: &Shared<Svc>, delivery: D)
where
    D: Delivery,
    Svc: Service<Incoming, Response = Outcome, Error = Infallible> + Clone + Send + Sync + 'static,
    Svc::Future: Send,
{
    // A delivery queued in a lane that had not started when the hard stop came goes back for
    // redelivery untouched (at-most-once included: it was never acked, so nothing is lost).
    if shared.hard_stop.is_cancelled() {
        no_verdict(shared);
        shared
            .control
            .progress
            .abandoned
            .fetch_add(1, Ordering::Relaxed);
        let span = shared.telemetry.unhandled_span(&delivery, "abandoned");
        let _ = Box::pin(settle(shared, delivery, Settle::Nack(None)))
            .instrument(span)
            .await;
        return;
    }
    // Cold paths are boxed so they do not swell every delivery's task.
    let event = match delivery.shared_event() {
        Ok(e) => e,
        Err(err) => {
            no_verdict(shared);
            let span = shared.telemetry.unhandled_span(&delivery, "undecodable");
            Box::pin(dead_letter_undecodable(shared, delivery, &err))
                .instrument(span)
                .await;
            return;
        }
    };
    if let Some(failure) = shared.pending.take(&event) {
        no_verdict(shared);
        // Decided before; only the dead-letter publish failed.
        let dead = dead_letter::dead_letter_event(&event, &failure, &shared.origin);
        let span = shared
            .telemetry
            .unhandled_span(&delivery, failure.reason.as_str());
        Box::pin(publish_dead_letter(shared, delivery, dead, Some(failure)))
            .instrument(span)
            .await;
        return;
    }
    let msg = Incoming::new(event, shared.origin.clone(), delivery.attempt());
    let span = shared.telemetry.process_span(&delivery, &msg);
    #[cfg(feature = "opentelemetry")]
    super::trace_context::continue_trace(&span, msg.event());
    // Handling, settling and dead-lettering all run in the process span: settle spans are its
    // children, retries and dead letters its events.
    handle(shared, delivery, msg).instrument(span).await;
}

async fn handle<D, Svc>(shared: &Shared<Svc>, mut delivery: D, msg: Incoming)
where
    D: Delivery,
    Svc: Service<Incoming, Response = Outcome, Error = Infallible> + Clone + Send + Sync + 'static,
    Svc::Future: Send,
{
    if shared.guarantee == Guarantee::AtMostOnce {
        Box::pin(at_most_once(shared, delivery, msg)).await;
        return;
    }
    let work = call(shared, msg.clone());
    let outcome = tokio::select! {
        biased;
        o = work => Some(o),
        () = shared.hard_stop.cancelled() => None,
        () = lease::renew(shared.lease.as_ref(), &mut delivery) => None,
    };
    if let Some(breaker) = &shared.breaker {
        breaker.record(outcome.as_ref().map(|o| matches!(o, Outcome::Ack)));
    }
    match outcome {
        None => {
            shared
                .control
                .progress
                .abandoned
                .fetch_add(1, Ordering::Relaxed);
            failed_span("abandoned");
            let _ = Box::pin(settle(shared, delivery, Settle::Nack(None))).await;
        }
        Some(Outcome::Ack) => {
            let _ = Box::pin(settle(shared, delivery, Settle::Ack)).await;
        }
        Some(Outcome::Redeliver { delay }) => {
            Box::pin(redeliver(shared, delivery, delay)).await;
        }
        Some(Outcome::DeadLetter(failure)) => match held_back(shared, &failure) {
            Some(delay) => {
                tracing::warn!(topic = %shared.origin.topic, id = %msg.event().id(), ?delay, "retries ran out while the circuit breaker is open; the message is redelivered after the cooldown instead of dead-lettered");
                Box::pin(redeliver(shared, delivery, Some(delay))).await;
            }
            None => {
                let event = dead_letter::dead_letter_event(msg.event(), &failure, &shared.origin);
                Box::pin(publish_dead_letter(shared, delivery, event, Some(failure))).await;
            }
        },
    }
}

/// Marks the current (process) span failed with `error.type`.
fn failed_span(error: &str) {
    let span = tracing::Span::current();
    span.record("error.type", error);
    span.record("otel.status_code", "error");
}

/// Tells the circuit breaker that a delivery ended without saying anything about the handler
/// (undecodable, a pending dead letter, cut off), so a half-open circuit tries another.
fn no_verdict<Svc>(shared: &Shared<Svc>) {
    if let Some(breaker) = &shared.breaker {
        breaker.record(None);
    }
}

/// Nacks for a retry, counting it.
async fn redeliver<D: Delivery, Svc>(shared: &Shared<Svc>, delivery: D, delay: Option<Duration>) {
    if settle(shared, delivery, Settle::Nack(delay)).await.is_ok() {
        shared
            .control
            .progress
            .redelivered
            .fetch_add(1, Ordering::Relaxed);
        shared.metrics.redelivered.increment(1);
    }
}

/// The delay to redeliver after, instead of dead-lettering, a message whose retries ran out
/// while the circuit breaker is open (the failure is likely the outage that opened it), on
/// brokers that can delay a redelivery. Permanent failures and panics are dead-lettered.
fn held_back<Svc>(shared: &Shared<Svc>, failure: &Failure) -> Option<Duration> {
    let breaker = shared.breaker.as_ref()?;
    (shared.can_delay && failure.reason == DeadLetterReason::RetriesExhausted && breaker.is_open())
        .then(|| breaker.cooldown())
}

/// Acks first; a failure after that can only be dead-lettered, never retried.
async fn at_most_once<D, Svc>(shared: &Shared<Svc>, delivery: D, msg: Incoming)
where
    D: Delivery,
    Svc: Service<Incoming, Response = Outcome, Error = Infallible> + Clone + Send + Sync + 'static,
    Svc::Future: Send,
{
    if settle(shared, delivery, Settle::Ack).await.is_err() {
        // Not acked, so it may come again: at-most-once means not handling it now.
        return;
    }
    let outcome = tokio::select! {
        o = call(shared, msg.clone()) => o,
        () = shared.hard_stop.cancelled() => {
            shared.control.progress.abandoned.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("at-most-once: handler cut off at the drain timeout; its message was acked before handling and is not redelivered");
            return;
        }
    };
    if let Some(breaker) = &shared.breaker {
        breaker.record(Some(matches!(outcome, Outcome::Ack)));
    }
    if let Outcome::DeadLetter(failure) = outcome {
        let mut event = dead_letter::dead_letter_event(msg.event(), &failure, &shared.origin);
        let (mut tries, mut pause) = (0u32, Duration::from_millis(100));
        loop {
            match shared
                .publisher
                .publish_dyn(&shared.dlq_topic, event.clone())
                .await
            {
                Ok(_) => return count_dead_letter(shared, &event),
                Err(e) if !e.is_transient() => match dead_letter::shrink(&event) {
                    Some(smaller) => event = smaller,
                    None => {
                        shared.metrics.dead_letter_failures.increment(1);
                        tracing::error!(error = %e, "at-most-once: dead-letter publish refused; the message is lost");
                        return;
                    }
                },
                Err(e) => {
                    tries += 1;
                    if tries < DEAD_LETTER_TRIES && !shared.hard_stop.is_cancelled() {
                        tracing::warn!(error = %e, tries, "at-most-once: dead-letter publish failed; retrying");
                        pause = backoff(shared, pause).await;
                        continue;
                    }
                    shared.metrics.dead_letter_failures.increment(1);
                    tracing::error!(error = %e, tries, "at-most-once: dead-letter publish failed; the message is lost");
                    return;
                }
            }
        }
    }
}

/// Sleeps `pause` (cut short by the hard stop) and returns the next pause: doubled, at most 5 s.
async fn backoff<Svc>(shared: &Shared<Svc>, pause: Duration) -> Duration {
    tokio::select! {
        () = tokio::time::sleep(pause) => {}
        () = shared.hard_stop.cancelled() => {}
    }
    (pause * 2).min(Duration::from_secs(5))
}

/// Counts a dead letter, and says so in an event of the current (process) span.
fn count_dead_letter<Svc>(shared: &Shared<Svc>, dead: &cloudevents::Event) {
    tracing::info!(
        dlq = %shared.dlq_topic,
        reason = dead.extension_str(dead_letter::REASON).unwrap_or_default(),
        "dead-lettered"
    );
    shared
        .control
        .progress
        .dead_lettered
        .fetch_add(1, Ordering::Relaxed);
    shared.metrics.dead_lettered.increment(1);
}

async fn call<Svc>(shared: &Shared<Svc>, msg: Incoming) -> Outcome
where
    Svc: Service<Incoming, Response = Outcome, Error = Infallible> + Clone + Send + Sync + 'static,
    Svc::Future: Send,
{
    let mut svc = shared.service.clone();
    let started = tokio::time::Instant::now();
    let failed = msg.clone();
    let outcome = context::scope(msg.clone(), async move {
        let Ok(()) = poll_fn(|cx| svc.poll_ready(cx)).await;
        let Ok(outcome) = svc.call(msg).await;
        outcome
    });
    // The standard stack turns handler panics into failures the retry policy decides; a panic
    // anywhere else in a custom stack has no policy to decide it, so it is dead-lettered.
    let outcome = match catch_panic(outcome).await {
        Ok(outcome) => outcome,
        Err(p) => {
            let now = Utc::now();
            let error = panicked(&failed, p);
            Outcome::DeadLetter(Failure {
                reason: DeadLetterReason::Panicked,
                error: error.to_string(),
                attempts: failed.attempt(),
                first_failure: now,
                last_failure: now,
            })
        }
    };
    let elapsed = started.elapsed().as_secs_f64();
    match &outcome {
        Outcome::Ack => shared.metrics.process_seconds.record(elapsed),
        failed => {
            let error = match failed {
                Outcome::DeadLetter(f) => f.reason.as_str(),
                _ => "redelivered",
            };
            failed_span(error);
            let labels = shared.telemetry.labels("process", Some(error.to_owned()));
            metrics::histogram!(semconv::METRIC_PROCESS_DURATION, &labels).record(elapsed);
        }
    }
    // Once per message: when it is done with (acked or dead-lettered), not per attempt.
    if !matches!(outcome, Outcome::Redeliver { .. })
        && let Some(time) = failed.event().time()
        && let Ok(latency) = (Utc::now() - *time).to_std()
    {
        shared
            .metrics
            .end_to_end_seconds
            .record(latency.as_secs_f64());
    }
    outcome
}

async fn dead_letter_undecodable<D: Delivery, Svc>(
    shared: &Shared<Svc>,
    delivery: D,
    err: &DecodeError,
) {
    tracing::warn!(topic = %shared.origin.topic, error = %err, "undecodable message goes to the dead-letter queue");
    let event = dead_letter::undecodable_event(err, &shared.origin, Utc::now());
    // Not remembered as pending: its redelivery takes this path again without a handler run.
    publish_dead_letter(shared, delivery, event, None).await;
}

/// Publishes to the dead-letter topic, then acks; never acks a message whose dead letter was
/// not published, and does not run the handler again (in this process) for one whose was
/// decided (`failure`, kept pending by event identity):
///
/// - a transient failure is retried with backoff while the delivery is held (its deadline
///   extended, never shortened), [`DEAD_LETTER_TRIES`] times; then the delivery is nacked with
///   a delay and the decision kept pending, so the redelivery publishes the dead letter
///   without running the handler;
/// - a permanent failure (too large, unencodable, rejected) publishes a smaller dead letter
///   instead: first without the data, then with only the identity, the correlation and the
///   dead-letter metadata, each marked with `dlqtruncated` (the data's size in bytes); if even
///   that is refused, the error is logged and counted
///   (`messaging_dead_letter_failures_total`) and the message is parked: where the broker
///   dead-letters by delivery count and a delayed nack would reset that count (RabbitMQ), it is
///   requeued after a pause, so the queue's delivery limit moves it to the broker's
///   dead-letter exchange; elsewhere it is nacked for [`PARKED_RETRY`] (SQS counts that
///   delivery towards its redrive policy).
async fn publish_dead_letter<D: Delivery, Svc>(
    shared: &Shared<Svc>,
    mut delivery: D,
    mut event: cloudevents::Event,
    failure: Option<Failure>,
) {
    let mut tries = 0u32;
    let mut pause = Duration::from_millis(100);
    loop {
        let err = match shared
            .publisher
            .publish_dyn(&shared.dlq_topic, event.clone())
            .await
        {
            Ok(_) => {
                if failure.is_some() {
                    shared.pending.forget(&event);
                }
                if settle(shared, delivery, Settle::Ack).await.is_ok() {
                    count_dead_letter(shared, &event);
                }
                return;
            }
            Err(e) => e,
        };
        if err.is_transient() {
            tries += 1;
            if tries < DEAD_LETTER_TRIES && !shared.hard_stop.is_cancelled() {
                tracing::warn!(dlq = %shared.dlq_topic, error = %err, tries, "dead-letter publish failed; retrying");
                let hold = shared.ack_deadline.max(pause * 2 + Duration::from_secs(5));
                let _ = delivery.extend_deadline(hold).await;
                pause = backoff(shared, pause).await;
                continue;
            }
            tracing::error!(dlq = %shared.dlq_topic, error = %err, tries, "dead-letter publish keeps failing; the message is nacked and its dead letter published when it comes back");
            if let Some(failure) = failure {
                shared.pending.remember(&event, failure);
            }
            let _ = settle(shared, delivery, Settle::Nack(Some(Duration::from_secs(5)))).await;
            return;
        }
        match dead_letter::shrink(&event) {
            Some(smaller) => {
                tracing::warn!(dlq = %shared.dlq_topic, error = %err, "dead letter refused; publishing a smaller one (marked dlqtruncated)");
                event = smaller;
            }
            None => {
                shared.metrics.dead_letter_failures.increment(1);
                if let Some(failure) = failure {
                    shared.pending.remember(&event, failure);
                }
                if shared.park_by_requeue {
                    tracing::error!(dlq = %shared.dlq_topic, error = %err, "even the smallest dead letter was refused; requeueing the message so the broker's delivery limit parks it in its own dead-letter queue");
                    let _ = backoff(shared, Duration::from_secs(1)).await;
                    let _ = settle(shared, delivery, Settle::Nack(None)).await;
                } else {
                    tracing::error!(dlq = %shared.dlq_topic, error = %err, "even the smallest dead letter was refused; the message is held (nacked) and retried every {PARKED_RETRY:?} without running the handler");
                    let _ = settle(shared, delivery, Settle::Nack(Some(PARKED_RETRY))).await;
                }
                return;
            }
        }
    }
}

/// Dead-letter decisions whose publish failed, by event identity, so that a redelivery to this
/// process publishes the dead letter instead of running the handler again. Holds the failure,
/// not the event, so its size does not grow with payloads; bounded, evicting an arbitrary entry
/// when full; touched only when not empty.
#[derive(Default)]
struct PendingDeadLetters {
    len: AtomicUsize,
    map: Mutex<HashMap<String, Failure>>,
}

const PENDING_MAX: usize = 10_000;

impl PendingDeadLetters {
    fn key(e: &cloudevents::Event) -> String {
        format!("{}\u{0}{}", e.source(), e.id())
    }

    fn remember(&self, event: &cloudevents::Event, failure: Failure) {
        let mut map = crate::sync::lock(&self.map);
        if map.len() >= PENDING_MAX {
            let evict = map.keys().next().cloned();
            if let Some(k) = evict {
                map.remove(&k);
            }
        }
        map.insert(Self::key(event), failure);
        self.len.store(map.len(), Ordering::Relaxed);
    }

    fn take(&self, original: &cloudevents::Event) -> Option<Failure> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut map = crate::sync::lock(&self.map);
        let failure = map.remove(&Self::key(original));
        self.len.store(map.len(), Ordering::Relaxed);
        failure
    }

    fn forget(&self, event: &cloudevents::Event) {
        let _ = self.take(event);
    }
}

#[derive(Clone, Copy)]
enum Settle {
    Ack,
    Nack(Option<Duration>),
}

/// Settles, retrying transient broker errors a few times with the delivery handed back.
async fn settle<D: Delivery, Svc>(
    shared: &Shared<Svc>,
    delivery: D,
    how: Settle,
) -> Result<(), ()> {
    let ack = matches!(how, Settle::Ack);
    let span = shared.telemetry.settle_span(ack);
    let started = tokio::time::Instant::now();
    let result = settle_tries(shared, delivery, how)
        .instrument(span.clone())
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    match &result {
        Ok(()) if ack => shared.metrics.ack_seconds.record(elapsed),
        Ok(()) => shared.metrics.nack_seconds.record(elapsed),
        Err(error) => {
            span.record("error.type", error.as_str());
            span.record("otel.status_code", "error");
            let labels = shared
                .telemetry
                .settle_labels(if ack { "ack" } else { "nack" }, Some(error.clone()));
            metrics::histogram!(semconv::METRIC_OPERATION_DURATION, &labels).record(elapsed);
        }
    }
    result.map_err(|_| ())
}

/// Settles, retrying a transient failure; `Err` holds the last failure's `error.type`.
async fn settle_tries<D: Delivery, Svc>(
    shared: &Shared<Svc>,
    mut delivery: D,
    how: Settle,
) -> Result<(), String> {
    let mut last = None;
    for attempt in 1..=SETTLE_TRIES {
        let result = match how {
            Settle::Ack => delivery.ack().await,
            Settle::Nack(delay) => delivery.nack(delay).await,
        };
        match result {
            Ok(()) => {
                shared
                    .control
                    .progress
                    .settled
                    .fetch_add(1, Ordering::Relaxed);
                if matches!(how, Settle::Ack) {
                    shared
                        .control
                        .progress
                        .acked
                        .fetch_add(1, Ordering::Relaxed);
                    shared.metrics.acked.increment(1);
                }
                return Ok(());
            }
            Err(e) if e.error.kind().is_transient() && attempt < SETTLE_TRIES => {
                last = Some(e.error.kind());
                delivery = e.delivery;
                tokio::time::sleep(Duration::from_millis(100 * u64::from(attempt))).await;
            }
            Err(e) => {
                tracing::warn!(error = %e.error, "settling a delivery failed; the broker will redeliver it");
                shared
                    .control
                    .progress
                    .settle_failures
                    .fetch_add(1, Ordering::Relaxed);
                shared.metrics.settle_failures.increment(1);
                return Err(crate::telemetry::error_type(e.error.kind()));
            }
        }
    }
    Err(last.map_or_else(|| "_OTHER".to_owned(), crate::telemetry::error_type))
}
