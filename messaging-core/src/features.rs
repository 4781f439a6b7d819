//! What a broker can and cannot do, reported by every adapter.

use std::fmt;

/// How a broker redelivers a nacked message after a delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DelaySupport {
    /// No delayed redelivery: a nack with a delay is refused.
    None,
    /// The broker delays natively (SQS visibility change, in-memory timers).
    Native,
    /// The adapter emulates it with broker primitives (retry topics, TTL queues).
    Emulated,
}

/// Capabilities of a broker as an adapter implements it. Consumers check them at start-up so a
/// requirement the broker cannot meet fails fast instead of degrading silently.
///
/// Construct with struct-update syntax from [`Features::new`]:
///
/// ```
/// use messaging_core::{DelaySupport, Features};
///
/// let features = Features {
///     ordering: true,
///     delayed_redelivery: DelaySupport::Emulated,
///     ..Features::new("kafka")
/// };
/// assert!(features.ordering);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Features {
    /// The broker's name, for error messages (`"kafka"`, `"rabbitmq"`, `"sqs"`, `"memory"`).
    pub broker: &'static str,
    /// Subscription groups: consumers in one group compete, every group gets every message.
    pub consumer_groups: bool,
    /// Per-key ordering within a group for subscriptions that ask for it.
    pub ordering: bool,
    /// A new group can read messages published before it existed (log replay).
    pub replay: bool,
    /// Delayed redelivery on nack.
    pub delayed_redelivery: DelaySupport,
    /// The broker moves a message to a dead-letter destination after a number of deliveries,
    /// even if the consumer crashes before it can.
    pub native_dead_letter: bool,
    /// Unacked deliveries are redelivered once an ack deadline (visibility timeout) passes.
    pub ack_deadline: bool,
    /// A delivery's ack deadline can be extended.
    pub extend_deadline: bool,
    /// Largest accepted message in bytes, if the broker has a limit.
    pub max_payload: Option<usize>,
    /// Broker transactions (atomic publish of several messages, consume-transform-produce).
    pub transactions: bool,
    /// Messages survive a broker restart.
    pub persistent: bool,
    /// A message that goes back to the group (its consumer closed or crashed) and is delivered
    /// to another consumer reports an attempt of at least 2. Brokers without a delivery count
    /// (Kafka on a broker that drops commit metadata) restart at 1.
    pub counts_redeliveries_across_consumers: bool,
    /// An ack settles that message alone, for good, even while earlier messages are
    /// unsettled. False on log brokers, where a group's progress is an offset (Kafka): an ack
    /// behind an unsettled message only takes effect once that one is settled, and is lost
    /// (the message redelivered) if the subscription ends first. Dead-letter replay uses this
    /// to move the messages it skips behind the ones it replays.
    pub individual_acks: bool,
}

impl Features {
    /// A broker with none of the optional capabilities.
    pub const fn new(broker: &'static str) -> Self {
        Self {
            broker,
            consumer_groups: false,
            ordering: false,
            replay: false,
            delayed_redelivery: DelaySupport::None,
            native_dead_letter: false,
            ack_deadline: false,
            extend_deadline: false,
            max_payload: None,
            transactions: false,
            persistent: false,
            counts_redeliveries_across_consumers: true,
            individual_acks: true,
        }
    }

    /// Checks that these features meet `needs`, naming the broker and every missing capability.
    pub fn check(&self, needs: &Requirements) -> Result<(), Unsupported> {
        let mut missing = Vec::new();
        if needs.ordering && !self.ordering {
            missing.push("per-key ordering".to_owned());
        }
        if needs.replay && !self.replay {
            missing.push("replay of older messages".to_owned());
        }
        if needs.delayed_redelivery && self.delayed_redelivery == DelaySupport::None {
            missing.push("delayed redelivery".to_owned());
        }
        if needs.transactions && !self.transactions {
            missing.push("transactions".to_owned());
        }
        if needs.ack_deadline && !self.ack_deadline {
            missing.push("ack deadlines".to_owned());
        }
        if needs.extend_deadline && !self.extend_deadline {
            missing.push("extending ack deadlines".to_owned());
        }
        if let (Some(want), Some(max)) = (needs.payload, self.max_payload) {
            if want > max {
                missing.push(format!("payloads of {want} bytes (limit {max})"));
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(Unsupported {
                broker: self.broker,
                missing,
            })
        }
    }
}

/// What a consumer or test requires of a broker; see [`Features::check`]. A consumer declares
/// them with [`ConsumerBuilder::requires`](crate::runtime::ConsumerBuilder::requires) (or in a
/// configuration file: the field names are the keys), and start-up fails naming the broker and
/// every missing capability instead of degrading silently.
///
/// ```
/// use messaging_core::{Features, Requirements};
///
/// let needs: Requirements = serde_json::from_value(serde_json::json!({
///     "ordering": true, "delayed_redelivery": true, "payload": 65536
/// }))?;
/// let err = Features::new("example").check(&needs).unwrap_err();
/// assert_eq!(
///     err.to_string(),
///     "broker \"example\" does not support per-key ordering, delayed redelivery"
/// );
/// # Ok::<(), serde_json::Error>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct Requirements {
    /// Per-key ordering.
    pub ordering: bool,
    /// Replay of messages published before the group existed.
    pub replay: bool,
    /// Delayed redelivery on nack.
    pub delayed_redelivery: bool,
    /// Broker transactions.
    pub transactions: bool,
    /// Redelivery after an ack deadline.
    pub ack_deadline: bool,
    /// Extending an ack deadline.
    pub extend_deadline: bool,
    /// Payloads of this many bytes.
    pub payload: Option<usize>,
    /// Effects happen once per message: the consumer needs an idempotency layer
    /// ([`build_idempotent`](crate::runtime::ConsumerBuilder::build_idempotent)) or broker
    /// transactions. A broker alone cannot tell, so [`Features::check`] ignores this; the
    /// consumer runtime checks it at start-up.
    pub effectively_once: bool,
}

/// A requirement the broker cannot meet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsupported {
    /// The broker's name.
    pub broker: &'static str,
    /// Each missing capability, in words.
    pub missing: Vec<String>,
}

impl fmt::Display for Unsupported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "broker {:?} does not support {}",
            self.broker,
            self.missing.join(", ")
        )
    }
}

impl std::error::Error for Unsupported {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_names_broker_and_every_missing_capability() {
        let f = Features {
            max_payload: Some(1024),
            ..Features::new("rabbitmq")
        };
        let needs = Requirements {
            ordering: true,
            payload: Some(4096),
            ..Requirements::default()
        };
        let err = f.check(&needs).unwrap_err();
        assert_eq!(
            err.to_string(),
            "broker \"rabbitmq\" does not support per-key ordering, payloads of 4096 bytes (limit 1024)"
        );
        assert!(f.check(&Requirements::default()).is_ok());
    }
}
