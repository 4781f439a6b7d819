//! Publishing events.

use std::fmt;
use std::future::Future;

use cloudevents::Event;

use crate::error::{ErrorKind as _, PublishError, PublishErrorKind};
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

    /// A batch where every event failed with `error`, a failure before any was sent (the
    /// topic cannot be declared, the connection is down): each event gets `error`
    /// [repeated](crate::Error::repeated), its message said once.
    pub fn all_failed(events: Vec<Event>, error: &PublishError) -> Self {
        Self::all(events, || error.repeated())
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

/// The outcome of a batch publish, gathered event by event in any order — the epilogue every
/// adapter's `publish_batch` shares. [`finish`](Self::finish) hands back, with its error,
/// every event that was not accepted, and fails as not known to be published an event that
/// was reported neither way: nothing is lost.
///
/// ```
/// use messaging_core::{AttributesReader, EventBuilder, PublishError, PublishErrorKind, Receipt};
/// use messaging_core::publisher::BatchOutcome;
///
/// let events: Vec<_> = (0..3).map(|n| EventBuilder::new("t", "t").id(format!("e{n}")).build().unwrap()).collect();
/// let mut outcome = BatchOutcome::new(events.len());
/// outcome.record(2, Err(PublishError::new(PublishErrorKind::Throttled)));
/// outcome.record(0, Ok(Receipt::new()));
/// // Event 1 was never reported.
/// let err = outcome.finish(events).unwrap_err();
/// assert_eq!(err.accepted.len(), 1);
/// let failed: Vec<_> = err.failed.iter().map(|(i, e, _)| (*i, e.id().to_owned())).collect();
/// assert_eq!(failed, [(1, "e1".to_owned()), (2, "e2".to_owned())]);
/// assert!(err.is_transient());
/// ```
#[derive(Debug, Default)]
pub struct BatchOutcome {
    accepted: Vec<(usize, Receipt)>,
    failed: Vec<(usize, PublishError)>,
}

impl BatchOutcome {
    /// An outcome for a batch of `len` events.
    pub fn new(len: usize) -> Self {
        Self {
            accepted: Vec::with_capacity(len),
            failed: Vec::new(),
        }
    }

    /// Event `index` was accepted.
    pub fn accept(&mut self, index: usize, receipt: Receipt) {
        self.accepted.push((index, receipt));
    }

    /// Event `index` was not accepted.
    pub fn fail(&mut self, index: usize, error: PublishError) {
        self.failed.push((index, error));
    }

    /// Event `index` was accepted or not.
    pub fn record(&mut self, index: usize, result: Result<Receipt, PublishError>) {
        match result {
            Ok(receipt) => self.accept(index, receipt),
            Err(error) => self.fail(index, error),
        }
    }

    /// The batch's result: every receipt in batch order, or the events not accepted with their
    /// errors (and the receipts of those that were). An event reported neither way fails with
    /// [`Timeout`](PublishErrorKind::Timeout): it is not known to be published.
    pub fn finish(mut self, events: Vec<Event>) -> Result<Vec<Receipt>, PublishBatchError> {
        self.accepted.sort_by_key(|(i, _)| *i);
        self.failed.sort_by_key(|(i, _)| *i);
        let reported = |i: usize| {
            self.accepted.binary_search_by_key(&i, |(j, _)| *j).is_ok()
                || self.failed.binary_search_by_key(&i, |(j, _)| *j).is_ok()
        };
        let missing: Vec<usize> = (0..events.len()).filter(|i| !reported(*i)).collect();
        for i in missing {
            self.failed.push((
                i,
                PublishError::new(PublishErrorKind::Timeout)
                    .with_detail("the broker's answer did not mention this event"),
            ));
        }
        if self.failed.is_empty() {
            return Ok(self.accepted.into_iter().map(|(_, r)| r).collect());
        }
        self.failed.sort_by_key(|(i, _)| *i);
        let mut events: Vec<Option<Event>> = events.into_iter().map(Some).collect();
        let failed = self
            .failed
            .into_iter()
            .filter_map(|(i, e)| events.get_mut(i)?.take().map(|event| (i, event, e)))
            .collect();
        Err(PublishBatchError {
            accepted: self.accepted,
            failed,
        })
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
    /// [`PublishErrorKind::Closed`].
    fn close(&self) -> impl Future<Output = Result<(), PublishError>> + Send;

    /// What this broker can do.
    fn features(&self) -> Features;
}
