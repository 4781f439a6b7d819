//! Deliveries and how they are settled.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use cloudevents::Event;

use crate::codec::DecodeError;
use crate::error::{AckError, SettleError};

/// Where a broker keeps a delivered message, as far as its adapter can say; the consumer
/// runtime puts it on the delivery's `process` span.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Coordinates<'a> {
    /// The partition (Kafka).
    pub partition: Option<i32>,
    /// The offset in the partition (Kafka).
    pub offset: Option<i64>,
    /// The channel's delivery tag (RabbitMQ).
    pub delivery_tag: Option<u64>,
    /// The broker's own message ID, where it assigns one (SQS); the event's `id` stands in
    /// where it does not.
    pub message_id: Option<&'a str>,
}

/// One delivery of a message to one consumer: the event (or why it could not be decoded), the
/// attempt number, and the means to settle it.
///
/// Every broker acknowledges differently — Kafka by committing offsets per partition, RabbitMQ
/// per message on a channel, SQS by receipt handle before a visibility deadline — and every
/// adapter maps those onto these four operations honestly:
///
/// - [`ack`](Self::ack): processing is done; the broker forgets the message.
/// - [`nack`](Self::nack): processing failed; redeliver, after `delay` if given.
/// - [`extend_deadline`](Self::extend_deadline): still working; do not redeliver yet.
/// - dropping the delivery without settling leaves it to the broker: redelivered after the ack
///   deadline, or when the subscription closes.
///
/// A failed ack or nack hands the delivery back in [`SettleError`], so it can be settled again.
pub trait Delivery: Send + Sync + 'static {
    /// The event, or the error that kept the message from decoding as a CloudEvent (with the
    /// raw message, for dead-lettering).
    fn payload(&self) -> Result<&Event, &DecodeError>;

    /// The event; an undecodable message gives an owned copy of its [`DecodeError`], so `?`
    /// works in handlers.
    fn event(&self) -> Result<&Event, DecodeError> {
        self.payload().map_err(Clone::clone)
    }

    /// The event behind an `Arc`, for handlers that outlive the borrow. The default clones the
    /// event; adapters that already share it override this to clone the `Arc` only.
    fn shared_event(&self) -> Result<Arc<Event>, DecodeError> {
        self.payload()
            .map(|e| Arc::new(e.clone()))
            .map_err(Clone::clone)
    }

    /// The topic the message was published to.
    fn topic(&self) -> &str;

    /// How many times this message has been delivered, this delivery included (1 the first time).
    fn attempt(&self) -> u32;

    /// Where the broker keeps this message, for telemetry (`messaging.kafka.offset`,
    /// `messaging.rabbitmq.message.delivery_tag`...): what the adapter knows. The default
    /// knows nothing.
    fn coordinates(&self) -> Coordinates<'_> {
        Coordinates::default()
    }

    /// Acknowledges the message.
    fn ack(self) -> impl Future<Output = Result<(), SettleError<Self>>> + Send
    where
        Self: Sized;

    /// Negatively acknowledges the message so it is redelivered, after `delay` if given (on
    /// brokers with [`Features::delayed_redelivery`](crate::Features::delayed_redelivery)).
    fn nack(
        self,
        delay: Option<Duration>,
    ) -> impl Future<Output = Result<(), SettleError<Self>>> + Send
    where
        Self: Sized;

    /// Pushes the ack deadline to `by` from now, on brokers with
    /// [`Features::extend_deadline`](crate::Features::extend_deadline).
    fn extend_deadline(
        &mut self,
        by: Duration,
    ) -> impl Future<Output = Result<(), AckError>> + Send;
}
