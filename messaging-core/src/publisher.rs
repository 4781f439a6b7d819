//! Publishing events.

use std::fmt;
use std::future::Future;

use cloudevents::Event;

use crate::error::{ErrorKind as _, PublishError};
use crate::features::Features;

/// What the broker assigned to an accepted message. Which fields are set depends on the broker:
/// Kafka sets `partition` and `offset`, SQS/SNS set `message_id` (and `sequence_number` for FIFO),
/// the in-memory broker sets `offset`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Receipt {
    /// Partition the message was written to.
    pub partition: Option<i32>,
    /// Offset (position in the partition or topic log).
    pub offset: Option<i64>,
    /// Broker-assigned message ID.
    pub message_id: Option<String>,
    /// Broker-assigned sequence number (SQS FIFO).
    pub sequence_number: Option<String>,
}

impl Receipt {
    /// An empty receipt: the broker accepted the message and assigned nothing visible.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the partition.
    #[must_use]
    pub fn with_partition(mut self, partition: i32) -> Self {
        self.partition = Some(partition);
        self
    }

    /// Sets the offset.
    #[must_use]
    pub fn with_offset(mut self, offset: i64) -> Self {
        self.offset = Some(offset);
        self
    }

    /// Sets the message ID.
    #[must_use]
    pub fn with_message_id(mut self, id: impl Into<String>) -> Self {
        self.message_id = Some(id.into());
        self
    }

    /// Sets the sequence number.
    #[must_use]
    pub fn with_sequence_number(mut self, seq: impl Into<String>) -> Self {
        self.sequence_number = Some(seq.into());
        self
    }
}

/// A batch publish where some events were not accepted. Nothing is lost: every event that
/// failed comes back with its index and error, ready to be published again.
pub struct PublishBatchError {
    /// Receipts of accepted events, by index in the batch.
    pub accepted: Vec<(usize, Receipt)>,
    /// Events that were not accepted, by index in the batch.
    pub failed: Vec<(usize, Event, PublishError)>,
}

impl PublishBatchError {
    /// A batch where every event failed with the same error kind (e.g. the publisher is closed).
    pub fn all(events: Vec<Event>, error: impl Fn() -> PublishError) -> Self {
        Self {
            accepted: Vec::new(),
            failed: events
                .into_iter()
                .enumerate()
                .map(|(i, e)| (i, e, error()))
                .collect(),
        }
    }

    /// Whether publishing the failed events again can succeed (every failure is transient).
    pub fn is_transient(&self) -> bool {
        self.failed.iter().all(|(_, _, e)| e.kind().is_transient())
    }
}

impl fmt::Debug for PublishBatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishBatchError")
            .field("accepted", &self.accepted.len())
            .field(
                "failed",
                &self
                    .failed
                    .iter()
                    .map(|(i, _, e)| (i, e))
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl fmt::Display for PublishBatchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {} events not published",
            self.failed.len(),
            self.failed.len() + self.accepted.len()
        )?;
        if let Some((i, _, e)) = self.failed.first() {
            write!(f, " (first: #{i}: {e})")?;
        }
        Ok(())
    }
}

impl std::error::Error for PublishBatchError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.failed
            .first()
            .map(|(_, _, e)| e as &(dyn std::error::Error + 'static))
    }
}

/// Publishes events to topics.
///
/// A publish returns once the broker has accepted the message (Kafka `acks=all`, RabbitMQ
/// publisher confirm, SQS/SNS response), with a [`Receipt`] of what the broker assigned. The
/// ordering key is the event's `partitionkey` extension
/// ([`EventBuilder::ordering_key`](crate::EventBuilder::ordering_key)).
///
/// For a publisher chosen at run time use [`DynPublisher`](crate::DynPublisher).
pub trait Publisher: Send + Sync {
    /// Publishes one event to `topic`.
    fn publish(
        &self,
        topic: &str,
        event: Event,
    ) -> impl Future<Output = Result<Receipt, PublishError>> + Send;

    /// Publishes events to `topic`, keeping many in flight; receipts come back in input order.
    /// Events with the same ordering key keep their relative order.
    fn publish_batch(
        &self,
        topic: &str,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<Vec<Receipt>, PublishBatchError>> + Send;

    /// Flushes what is in flight and closes; later publishes fail with
    /// [`PublishErrorKind::Closed`](crate::PublishErrorKind::Closed).
    fn close(&self) -> impl Future<Output = Result<(), PublishError>> + Send;

    /// What this broker can do.
    fn features(&self) -> Features;
}
