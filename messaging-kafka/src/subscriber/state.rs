//! Partition and subscription state: what the poller read, what is out, what is settled.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use messaging_core::{AckError, AckErrorKind, DecodeError, Event, StartFrom};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use super::delivery::KafkaDelivery;
use super::poller::Ctx;
use super::{ATTEMPT_BUDGET, CALL_TIMEOUT};
use crate::broker::Shared;
use crate::offsets::Tracker;

/// Where the poller thread is.
#[derive(Debug, Clone)]
pub(super) enum Status {
    Starting,
    Running,
    Failed { detail: String, transient: bool },
    Stopped,
}

/// A message read and decoded, not yet settled.
pub(super) struct Msg {
    pub(super) payload: Result<Arc<Event>, DecodeError>,
    /// The Kafka topic it was read from (the group's topic or a retry topic).
    pub(super) topic: Arc<str>,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) attempt: u32,
    /// The assignment it was read under; settling under a later one is refused.
    pub(super) epoch: u64,
}

/// A message as the poller decoded it, before it is matched to its partition.
pub(super) struct Read {
    pub(super) payload: Result<Arc<Event>, DecodeError>,
    pub(super) topic: Arc<str>,
    pub(super) partition: i32,
    pub(super) offset: i64,
    pub(super) attempt: u32,
    /// Retry topics: not before this Unix millisecond.
    pub(super) due: Option<i64>,
    /// Read from a retry topic that another group shares (its group header names another
    /// group, or its origin header another topic, or it has no group header on a topic where
    /// such copies are another group's): settled without being delivered.
    pub(super) foreign: bool,
}

/// One assigned partition.
pub(super) struct Part {
    pub(super) epoch: u64,
    pub(super) tracker: Tracker,
    /// Commit position and handed-out mark last handed to librdkafka.
    pub(super) stored: (i64, i64),
    /// The offset after the last message handed out (committed as metadata, so the next
    /// owner knows which messages were delivered before).
    pub(super) handed: i64,
    /// Messages below this offset were handed out by an earlier member of the group: their
    /// delivery here is at least the second.
    pub(super) seen_before: i64,
    /// Deliveries handed out and not settled.
    pub(super) out: usize,
    /// Ordered subscriptions: a delivery of this partition is out.
    pub(super) busy: bool,
    /// Ordered subscriptions: messages waiting for their turn.
    pub(super) backlog: VecDeque<Msg>,
    /// Retry topics: messages waiting for their not-before time (Unix ms), in offset order.
    pub(super) delayed: VecDeque<(i64, Msg)>,
    pub(super) paused: bool,
    pub(super) revoking: bool,
    /// Its start position is not known yet: the committed offsets could not be fetched when
    /// it was assigned. It stays paused, and anything read from it is dropped (it is read
    /// again from the start position once the fetch succeeds).
    pub(super) pending: bool,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) parts: HashMap<Arc<str>, HashMap<i32, Part>>,
    /// Unordered subscriptions: messages waiting for room under the prefetch limit.
    pub(super) backlog: VecDeque<Msg>,
    pub(super) unsettled: usize,
    pub(super) epoch: u64,
    pub(super) backpressure: bool,
    pub(super) closed: bool,
    /// Partitions are pending: when to fetch their committed offsets again.
    pub(super) retry_at: Option<Instant>,
    /// The wait before the next fetch after a failure (doubling, bounded).
    pub(super) retry_delay: Duration,
    /// The last failure to fetch committed offsets, for the subscribe timeout's message.
    pub(super) fetch_error: Option<String>,
}

impl State {
    pub(super) fn part(&mut self, topic: &str, partition: i32) -> Option<&mut Part> {
        self.parts.get_mut(topic)?.get_mut(&partition)
    }

    pub(super) fn valid(&mut self, m: &Msg) -> bool {
        !self.closed
            && self
                .part(&m.topic, m.partition)
                .is_some_and(|p| p.epoch == m.epoch)
    }
}

/// A commit of the group on one partition.
pub(super) struct Commit {
    pub(super) offset: i64,
    /// The handed-out mark of the commit's metadata; -1 if none.
    pub(super) seen_before: i64,
    /// Not the group's own commit: carried over from its legacy `group.id`, or a start
    /// position this process chose for the new group whose commit is not known to have landed
    /// (see `Shared::uncommitted_starts`). Committed under the group's id with the assignment.
    pub(super) carried: bool,
}

/// Where an assigned partition starts.
pub(super) struct Start {
    pub(super) topic: String,
    pub(super) partition: i32,
    pub(super) position: i64,
    pub(super) seen_before: i64,
    /// The position is committed (else the next offset store commits it).
    pub(super) committed: bool,
}

impl Part {
    /// A partition starting at `start`; `None` while its start is not known (pending, paused).
    pub(super) fn new(epoch: u64, start: Option<&Start>) -> Self {
        let (position, seen_before, stored) = match start {
            Some(s) if s.committed => (s.position, s.seen_before, (s.position, s.position)),
            // Not committed yet: the first housekeeping stores it for the next commit.
            Some(s) => (s.position, s.seen_before, (i64::MIN, i64::MIN)),
            None => (-1, -1, (-1, -1)),
        };
        Self {
            epoch,
            tracker: Tracker::new(position),
            stored,
            handed: position,
            seen_before,
            out: 0,
            busy: false,
            backlog: VecDeque::new(),
            delayed: VecDeque::new(),
            paused: start.is_none(),
            revoking: false,
            pending: start.is_none(),
        }
    }

    /// Counts `m` as handed out; a message an earlier group member already had is at least
    /// on its second delivery.
    pub(super) fn hand_out(&mut self, mut m: Msg) -> Msg {
        self.out += 1;
        self.handed = self.handed.max(m.offset + 1);
        if m.offset < self.seen_before && m.attempt == 1 {
            m.attempt = 2;
        }
        m
    }
}

/// What is left of an attempt's [`ATTEMPT_BUDGET`].
pub(super) struct Budget(Instant);

impl Budget {
    pub(super) fn new() -> Self {
        Self(Instant::now() + ATTEMPT_BUDGET)
    }

    /// The timeout of the next request: at most [`CALL_TIMEOUT`], at most what is left; an
    /// error once the budget is spent.
    pub(super) fn next(&self) -> KafkaResult<Duration> {
        let left = self.0.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(KafkaError::OffsetFetch(
                rdkafka::types::RDKafkaErrorCode::OperationTimedOut,
            ));
        }
        Ok(left.min(CALL_TIMEOUT))
    }
}

/// Commit metadata prefix: the offset after the last message handed out.
pub(super) const HANDED: &str = "messaging:handed=";

/// Adds a commit position with the handed-out mark as metadata.
pub(super) fn add_position(
    tpl: &mut TopicPartitionList,
    topic: &str,
    partition: i32,
    (position, handed): (i64, i64),
) {
    let mut e = tpl.add_partition(topic, partition);
    if e.set_offset(Offset::Offset(position)).is_ok() {
        e.set_metadata(format!("{HANDED}{handed}"));
    }
}

/// Commits settled positions synchronously, storing them first: librdkafka's auto-commit
/// commits the *stored* offsets again when partitions are unassigned — after this commit — and
/// a stored offset older than the commit (acks given since the last housekeeping, e.g. while a
/// revoked partition waited for its in-flight deliveries) would move the group back and hand
/// those messages out again.
pub(super) fn commit_settled(
    consumer: &BaseConsumer<Ctx>,
    positions: &TopicPartitionList,
    when: &str,
) {
    if let Err(e) = consumer.store_offsets(positions) {
        tracing::warn!(error = %e, "cannot store offsets {when}");
    }
    if let Err(e) = consumer.commit(positions, CommitMode::Sync) {
        tracing::warn!(error = %e, "cannot commit {when}");
    }
}

/// State shared by the poller thread, the subscription and its deliveries.
pub(super) struct Sub {
    pub(super) broker: Arc<Shared>,
    pub(super) topic: Arc<str>,
    pub(super) ordered: bool,
    pub(super) prefetch: usize,
    pub(super) start: StartFrom,
    /// The subscription group (as the application named it; see `KafkaConfig::group_id`).
    pub(super) group: String,
    /// The retry topics a nack with a delay publishes to, by tier.
    pub(super) retry_topics: Vec<(Duration, Arc<str>)>,
    /// Every retry topic the subscription reads: those above and every other retry topic of
    /// the group found on the cluster (earlier tiers, legacy names), drained so that nothing
    /// parked there is orphaned.
    pub(super) drained: Vec<Arc<str>>,
    /// The retry topics among `drained` where a copy without a group header (parked by an
    /// earlier version) is the group's (see `Shared::owns_headerless`).
    pub(super) headerless: Vec<Arc<str>>,
    /// Reads the committed offsets of the group's former cluster-wide `group.id`.
    pub(super) legacy: Option<BaseConsumer>,
    pub(super) state: Mutex<State>,
    pub(super) settled: Condvar,
    pub(super) tx: mpsc::UnboundedSender<KafkaDelivery>,
    pub(super) status: watch::Sender<Status>,
    pub(super) stop: AtomicBool,
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

pub(super) fn closed_error() -> AckError {
    AckError::new(AckErrorKind::Closed)
        .with_detail("the partition was revoked or the subscription closed; it will be redelivered")
}
