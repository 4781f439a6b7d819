//! Subscribing to topics.

use std::future::Future;
use std::time::Duration;

use crate::delivery::Delivery;
use crate::error::{ReceiveError, SubscribeError, SubscribeErrorKind};
use crate::features::Features;

/// Default ack deadline (visibility timeout) of a subscription.
pub const DEFAULT_ACK_DEADLINE: Duration = Duration::from_secs(30);
/// Default number of unsettled deliveries one subscription may hold.
pub const DEFAULT_PREFETCH: usize = 256;

/// The longest wait between attempts of [`resubscribe`].
pub const RESUBSCRIBE_MAX_DELAY: Duration = Duration::from_secs(30);

/// Subscribes to `topic` again after a subscription was lost (`recv` returned
/// [`Closed`](crate::ReceiveErrorKind::Closed)): tries at once, then with jittered exponential
/// backoff from 100 ms to [`RESUBSCRIBE_MAX_DELAY`], logging each failed attempt, until it
/// succeeds (`Ok(Some)`), `stop` completes (`Ok(None)`), or the broker refuses for a reason
/// retrying cannot fix (`Err`: bad credentials, a topic it refuses). The consumer runtime,
/// the requester's reply listener and the CLI's `consume` use it.
pub async fn resubscribe<S: Subscriber>(
    subscriber: &S,
    topic: &str,
    options: &SubscribeOptions,
    stop: impl Future<Output = ()>,
) -> Result<Option<S::Subscription>, SubscribeError> {
    use backon::BackoffBuilder as _;
    let mut delays = backon::ExponentialBuilder::new()
        .with_min_delay(Duration::from_millis(100))
        .with_max_delay(RESUBSCRIBE_MAX_DELAY)
        .with_jitter()
        .without_max_times()
        .build();
    tokio::pin!(stop);
    let started = tokio::time::Instant::now();
    for tries in 1u32.. {
        let attempt = tokio::select! {
            () = &mut stop => return Ok(None),
            r = subscriber.subscribe(topic, options.clone()) => r,
        };
        match attempt {
            Ok(sub) => {
                tracing::info!(topic, group = %options.group(), tries, after = ?started.elapsed(), "subscribed again");
                return Ok(Some(sub));
            }
            Err(e) if !e.is_transient() => {
                tracing::error!(topic, group = %options.group(), error = %e, tries, "subscribing again failed for good");
                return Err(e);
            }
            Err(e) => {
                let pause = delays.next().unwrap_or(RESUBSCRIBE_MAX_DELAY);
                tracing::warn!(topic, group = %options.group(), error = %e, tries, ?pause, "subscribing again failed; retrying");
                tokio::select! {
                    () = &mut stop => return Ok(None),
                    () = tokio::time::sleep(pause) => {}
                }
            }
        }
    }
    Ok(None)
}

/// Where a subscription group that does not exist yet starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum StartFrom {
    /// Messages published after the group was created (queue brokers always behave so).
    #[default]
    New,
    /// The oldest message the broker still holds, on brokers with
    /// [`Features::replay`](crate::Features::replay).
    Earliest,
}

/// How to subscribe: the group and what the consumer needs from the broker.
///
/// ```
/// use std::time::Duration;
/// use messaging_core::SubscribeOptions;
///
/// let options = SubscribeOptions::new("billing")
///     .ordered(true)
///     .ack_deadline(Duration::from_secs(60))
///     .prefetch(32);
/// assert_eq!(options.group(), "billing");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[must_use]
pub struct SubscribeOptions {
    group: String,
    ordered: bool,
    ack_deadline: Duration,
    /// `None` until set: the runtime then picks one for the broker.
    prefetch: Option<usize>,
    start_from: StartFrom,
    max_deliveries: Option<u32>,
    dead_letter_topic: Option<String>,
}

impl SubscribeOptions {
    /// Options for the subscription group `group`.
    pub fn new(group: impl Into<String>) -> Self {
        Self {
            group: group.into(),
            ordered: false,
            ack_deadline: DEFAULT_ACK_DEADLINE,
            prefetch: None,
            start_from: StartFrom::New,
            max_deliveries: None,
            dead_letter_topic: None,
        }
    }

    /// Requires per-key ordering: messages with the same ordering key are delivered one at a
    /// time, in publish order, across every consumer of the group.
    pub fn ordered(mut self, ordered: bool) -> Self {
        self.ordered = ordered;
        self
    }

    /// How long a delivery may stay unsettled before the broker hands it out again, on brokers
    /// with [`Features::ack_deadline`](crate::Features::ack_deadline).
    pub fn ack_deadline(mut self, deadline: Duration) -> Self {
        self.ack_deadline = deadline;
        self
    }

    /// The most unsettled deliveries this subscription holds at once (QoS prefetch). Receiving
    /// waits while the limit is reached: this is the backpressure. Default
    /// [`DEFAULT_PREFETCH`]; the consumer runtime, when it is not set, holds only what it can
    /// work on where deliveries have ack deadlines (see
    /// [the runtime](crate::runtime#concurrency-order-and-backpressure)).
    pub fn prefetch(mut self, prefetch: usize) -> Self {
        self.prefetch = Some(prefetch);
        self
    }

    /// Where a new group starts.
    pub fn start_from(mut self, start: StartFrom) -> Self {
        self.start_from = start;
        self
    }

    /// Broker-native dead-lettering: after `max` deliveries that were not acked, the broker
    /// moves the message to [`dead_letter_topic`](Self::dead_letter_topic). A backstop for
    /// consumers that crash before they can dead-letter a message themselves.
    pub fn max_deliveries(mut self, max: u32) -> Self {
        self.max_deliveries = Some(max);
        self
    }

    /// Topic for broker-native dead-lettering (default `<topic>.dlq`).
    pub fn dead_letter_topic(mut self, topic: impl Into<String>) -> Self {
        self.dead_letter_topic = Some(topic.into());
        self
    }

    /// The subscription group.
    pub fn group(&self) -> &str {
        &self.group
    }

    /// Whether per-key ordering is required (set by [`ordered`](Self::ordered)).
    pub fn is_ordered(&self) -> bool {
        self.ordered
    }

    /// The ack deadline (set by [`ack_deadline`](Self::ack_deadline)).
    pub fn get_ack_deadline(&self) -> Duration {
        self.ack_deadline
    }

    /// The prefetch limit if it was set by [`prefetch`](Self::prefetch), `None` for the
    /// default.
    pub fn get_prefetch(&self) -> Option<usize> {
        self.prefetch
    }

    /// The prefetch limit in effect: the one [set](Self::prefetch) or [`DEFAULT_PREFETCH`].
    pub fn prefetch_limit(&self) -> usize {
        self.prefetch.unwrap_or(DEFAULT_PREFETCH)
    }

    /// Where a new group starts (set by [`start_from`](Self::start_from)).
    pub fn get_start_from(&self) -> StartFrom {
        self.start_from
    }

    /// The broker-native delivery limit, if any (set by
    /// [`max_deliveries`](Self::max_deliveries)).
    pub fn get_max_deliveries(&self) -> Option<u32> {
        self.max_deliveries
    }

    /// The broker-native dead-letter topic if it was set by
    /// [`dead_letter_topic`](Self::dead_letter_topic); see
    /// [`dead_letter_topic_for`](Self::dead_letter_topic_for) for the one in effect.
    pub fn get_dead_letter_topic(&self) -> Option<&str> {
        self.dead_letter_topic.as_deref()
    }

    /// The former name of [`get_ack_deadline`](Self::get_ack_deadline).
    #[deprecated(note = "named like its setter: `get_ack_deadline`")]
    pub fn deadline(&self) -> Duration {
        self.ack_deadline
    }

    /// The former name of [`get_prefetch`](Self::get_prefetch).
    #[deprecated(note = "named like its setter: `get_prefetch`")]
    pub fn explicit_prefetch(&self) -> Option<usize> {
        self.prefetch
    }

    /// The former name of [`get_start_from`](Self::get_start_from).
    #[deprecated(note = "named like its setter: `get_start_from`")]
    pub fn start(&self) -> StartFrom {
        self.start_from
    }

    /// The former name of [`get_max_deliveries`](Self::get_max_deliveries).
    #[deprecated(note = "named like its setter: `get_max_deliveries`")]
    pub fn delivery_limit(&self) -> Option<u32> {
        self.max_deliveries
    }

    /// The dead-letter topic for `topic`: the configured one or `<topic>.dlq`.
    pub fn dead_letter_topic_for(&self, topic: &str) -> String {
        self.dead_letter_topic
            .clone()
            .unwrap_or_else(|| format!("{topic}.dlq"))
    }

    /// Checks the options against each other and against `features`; adapters call this first.
    pub fn validate(&self, features: &Features) -> Result<(), SubscribeError> {
        let invalid = |detail: String| {
            Err(SubscribeError::new(SubscribeErrorKind::InvalidOptions).with_detail(detail))
        };
        if self.group.is_empty() {
            return invalid("group name is empty".into());
        }
        if self.prefetch == Some(0) {
            return invalid("prefetch must be at least 1".into());
        }
        if self.ack_deadline.is_zero() {
            return invalid("ack deadline must be positive".into());
        }
        if self.max_deliveries == Some(0) {
            return invalid("max deliveries must be at least 1".into());
        }
        let unsupported = |what: &str| {
            Err(
                SubscribeError::new(SubscribeErrorKind::Unsupported).with_detail(format!(
                    "broker {:?} does not support {what}",
                    features.broker
                )),
            )
        };
        if self.ordered && !features.ordering {
            return unsupported("per-key ordering");
        }
        if self.start_from == StartFrom::Earliest && !features.replay {
            return unsupported("starting a new group from the earliest message");
        }
        if self.max_deliveries.is_some() && !features.native_dead_letter {
            return unsupported("broker-native dead-lettering");
        }
        Ok(())
    }
}

/// Opens subscriptions: a topic read under a subscription group.
///
/// Topology words, as every adapter maps them: a *topic* is what publishers write to; a
/// *subscription group* receives every message of the topic once, shared among the group's
/// consumers, which compete; every group gets every message.
pub trait Subscriber: Send + Sync {
    /// The subscription type.
    type Subscription: Subscription;

    /// Subscribes to `topic` under `options.group()`, creating the group (and topic) if needed.
    /// Every message published after this returns is delivered to the group.
    fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> impl Future<Output = Result<Self::Subscription, SubscribeError>> + Send;

    /// Creates the group (and topic) without consuming from it: every message published after
    /// this returns is kept for the group. The consumer runtime declares the dead-letter
    /// group this way. The default subscribes and closes at once, which suits brokers where a
    /// subscription that receives nothing has no effect; adapters whose consumers are handed
    /// messages right away (and would return them with a higher delivery count) override it
    /// with a plain declaration.
    fn declare(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> impl Future<Output = Result<(), SubscribeError>> + Send {
        async move {
            let mut sub = self.subscribe(topic, options).await?;
            // Closing only stops receiving; the group stays.
            let _ = sub.close().await;
            Ok(())
        }
    }

    /// What this broker can do.
    fn features(&self) -> Features;
}

/// One consumer's stream of deliveries from a subscription group.
///
/// Receiving is cancel safe: dropping a `recv` future (a timeout, a `select!`) loses no
/// message. Closing returns this consumer's unsettled deliveries to the group for redelivery.
pub trait Subscription: Send {
    /// The delivery type.
    type Delivery: Delivery;

    /// Waits for the next delivery. Fails with
    /// [`ReceiveErrorKind::Closed`](crate::ReceiveErrorKind::Closed) once closed.
    fn recv(&mut self) -> impl Future<Output = Result<Self::Delivery, ReceiveError>> + Send;

    /// Waits for at least one delivery and returns up to `max` that are ready.
    fn recv_batch(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Vec<Self::Delivery>, ReceiveError>> + Send;

    /// Stops receiving. Unsettled deliveries of this consumer go back to the group; settling
    /// them afterwards fails with [`AckErrorKind::Closed`](crate::AckErrorKind::Closed).
    fn close(&mut self) -> impl Future<Output = Result<(), ReceiveError>> + Send;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validate_rejects_what_the_broker_cannot_do() {
        let f = Features::new("plain");
        assert!(SubscribeOptions::new("g").validate(&f).is_ok());
        let e = SubscribeOptions::new("g")
            .ordered(true)
            .validate(&f)
            .unwrap_err();
        assert_eq!(e.kind(), SubscribeErrorKind::Unsupported);
        assert!(e.to_string().contains("\"plain\""), "{e}");
        let e = SubscribeOptions::new("").validate(&f).unwrap_err();
        assert_eq!(e.kind(), SubscribeErrorKind::InvalidOptions);
        let e = SubscribeOptions::new("g")
            .prefetch(0)
            .validate(&f)
            .unwrap_err();
        assert_eq!(e.kind(), SubscribeErrorKind::InvalidOptions);
    }

    #[test]
    fn dead_letter_topic_defaults_to_dot_dlq() {
        let o = SubscribeOptions::new("g");
        assert_eq!(o.dead_letter_topic_for("orders"), "orders.dlq");
        let o = o.dead_letter_topic("orders-dlq");
        assert_eq!(o.dead_letter_topic_for("orders"), "orders-dlq");
    }
}
