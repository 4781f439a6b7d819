//! Consuming: one consumer-group member per subscription, polled on its own thread, with
//! per-message settlement mapped onto offsets.
//!
//! The poller thread reads messages, decodes them and records each offset in its partition's
//! [`Tracker`]; deliveries go to the subscription through a channel while fewer than
//! `prefetch` are unsettled. Settling marks the offset; every few milliseconds the poller
//! stores each partition's commit position (the first unsettled offset) and librdkafka commits
//! stored offsets every `commit_interval`. Rebalance callbacks run on the same thread: a revoked
//! partition stops handing out messages, waits (bounded) for its in-flight ones, commits what is
//! settled and is released; an assigned partition starts at its committed offset, or — for a
//! new group — at the end (or the start) of the partition, which is committed at once so the
//! group exists from that point on.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use messaging_core::{
    AckError, AckErrorKind, DecodeError, Delivery, Event, Features, ReceiveError, ReceiveErrorKind,
    SettleError, StartFrom, SubscribeError, SubscribeErrorKind, SubscribeOptions, Subscriber,
    Subscription,
};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{BorrowedMessage, Message as _};
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio::sync::{mpsc, watch};

use crate::broker::Shared;
use crate::codec::{self, ATTEMPT_HEADER, GROUP_HEADER, NOT_BEFORE_HEADER, ORIGIN_HEADER};
use crate::config::retry_topic;
use crate::error;
use crate::offsets::Tracker;
use crate::publisher::prepare;

/// How long the poller blocks in one poll when nothing arrives.
const POLL: Duration = Duration::from_millis(20);
/// Messages the poller reads before handing them over under one lock.
const READ_BATCH: usize = 256;
/// How often the poller stores offsets, releases due retries and applies pauses.
const HOUSEKEEPING: Duration = Duration::from_millis(10);
/// Bound on the close's wait for the consumer to leave its group, besides the session.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one broker request made on the poller thread to find start positions
/// (committed offsets, metadata, watermarks): the thread also polls the healthy partitions.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on all requests of one attempt to find start positions: a retry for pending
/// partitions holds up the healthy ones' polling and offset storing at most this long (far
/// below `max.poll.interval.ms`).
const ATTEMPT_BUDGET: Duration = Duration::from_secs(3);
/// First wait before fetching committed offsets again after a failure; it doubles up to
/// [`FETCH_RETRY_MAX`] and the fetch is retried until it succeeds or the partitions are
/// revoked.
const FETCH_RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two fetches of committed offsets.
const FETCH_RETRY_MAX: Duration = Duration::from_secs(5);

/// Opens subscriptions on Kafka topics.
pub struct KafkaSubscriber {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for KafkaSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscriber").finish_non_exhaustive()
    }
}

impl KafkaSubscriber {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

/// Where the poller thread is.
#[derive(Debug, Clone)]
enum Status {
    Starting,
    Running,
    Failed { detail: String, transient: bool },
    Stopped,
}

/// A message read and decoded, not yet settled.
struct Msg {
    payload: Result<Arc<Event>, DecodeError>,
    /// The Kafka topic it was read from (the group's topic or a retry topic).
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    attempt: u32,
    /// The assignment it was read under; settling under a later one is refused.
    epoch: u64,
}

/// A message as the poller decoded it, before it is matched to its partition.
struct Read {
    payload: Result<Arc<Event>, DecodeError>,
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    attempt: u32,
    /// Retry topics: not before this Unix millisecond.
    due: Option<i64>,
    /// Read from a retry topic that another group shares (its group header names another
    /// group, or its origin header another topic, or it has no group header on a topic where
    /// such copies are another group's): settled without being delivered.
    foreign: bool,
}

/// One assigned partition.
struct Part {
    epoch: u64,
    tracker: Tracker,
    /// Commit position and handed-out mark last handed to librdkafka.
    stored: (i64, i64),
    /// The offset after the last message handed out (committed as metadata, so the next
    /// owner knows which messages were delivered before).
    handed: i64,
    /// Messages below this offset were handed out by an earlier member of the group: their
    /// delivery here is at least the second.
    seen_before: i64,
    /// Deliveries handed out and not settled.
    out: usize,
    /// Ordered subscriptions: a delivery of this partition is out.
    busy: bool,
    /// Ordered subscriptions: messages waiting for their turn.
    backlog: VecDeque<Msg>,
    /// Retry topics: messages waiting for their not-before time (Unix ms), in offset order.
    delayed: VecDeque<(i64, Msg)>,
    paused: bool,
    revoking: bool,
    /// Its start position is not known yet: the committed offsets could not be fetched when
    /// it was assigned. It stays paused, and anything read from it is dropped (it is read
    /// again from the start position once the fetch succeeds).
    pending: bool,
}

#[derive(Default)]
struct State {
    parts: HashMap<Arc<str>, HashMap<i32, Part>>,
    /// Unordered subscriptions: messages waiting for room under the prefetch limit.
    backlog: VecDeque<Msg>,
    unsettled: usize,
    epoch: u64,
    backpressure: bool,
    closed: bool,
    /// Partitions are pending: when to fetch their committed offsets again.
    retry_at: Option<Instant>,
    /// The wait before the next fetch after a failure (doubling, bounded).
    retry_delay: Duration,
    /// The last failure to fetch committed offsets, for the subscribe timeout's message.
    fetch_error: Option<String>,
}

impl State {
    fn part(&mut self, topic: &str, partition: i32) -> Option<&mut Part> {
        self.parts.get_mut(topic)?.get_mut(&partition)
    }

    fn valid(&mut self, m: &Msg) -> bool {
        !self.closed
            && self
                .part(&m.topic, m.partition)
                .is_some_and(|p| p.epoch == m.epoch)
    }
}

/// A commit of the group on one partition.
struct Commit {
    offset: i64,
    /// The handed-out mark of the commit's metadata; -1 if none.
    seen_before: i64,
    /// Not the group's own commit: carried over from its legacy `group.id`, or a start
    /// position this process chose for the new group whose commit is not known to have landed
    /// (see `Shared::uncommitted_starts`). Committed under the group's id with the assignment.
    carried: bool,
}

/// Where an assigned partition starts.
struct Start {
    topic: String,
    partition: i32,
    position: i64,
    seen_before: i64,
    /// The position is committed (else the next offset store commits it).
    committed: bool,
}

impl Part {
    /// A partition starting at `start`; `None` while its start is not known (pending, paused).
    fn new(epoch: u64, start: Option<&Start>) -> Self {
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
    fn hand_out(&mut self, mut m: Msg) -> Msg {
        self.out += 1;
        self.handed = self.handed.max(m.offset + 1);
        if m.offset < self.seen_before && m.attempt == 1 {
            m.attempt = 2;
        }
        m
    }
}

/// What is left of an attempt's [`ATTEMPT_BUDGET`].
struct Budget(Instant);

impl Budget {
    fn new() -> Self {
        Self(Instant::now() + ATTEMPT_BUDGET)
    }

    /// The timeout of the next request: at most [`CALL_TIMEOUT`], at most what is left; an
    /// error once the budget is spent.
    fn next(&self) -> KafkaResult<Duration> {
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
const HANDED: &str = "messaging:handed=";

/// Adds a commit position with the handed-out mark as metadata.
fn add_position(
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
fn commit_settled(consumer: &BaseConsumer<Ctx>, positions: &TopicPartitionList, when: &str) {
    if let Err(e) = consumer.store_offsets(positions) {
        tracing::warn!(error = %e, "cannot store offsets {when}");
    }
    if let Err(e) = consumer.commit(positions, CommitMode::Sync) {
        tracing::warn!(error = %e, "cannot commit {when}");
    }
}

/// State shared by the poller thread, the subscription and its deliveries.
struct Sub {
    broker: Arc<Shared>,
    topic: Arc<str>,
    ordered: bool,
    prefetch: usize,
    start: StartFrom,
    /// The subscription group (as the application named it; see `KafkaConfig::group_id`).
    group: String,
    /// The retry topics a nack with a delay publishes to, by tier.
    retry_topics: Vec<(Duration, Arc<str>)>,
    /// Every retry topic the subscription reads: those above and every other retry topic of
    /// the group found on the cluster (earlier tiers, legacy names), drained so that nothing
    /// parked there is orphaned.
    drained: Vec<Arc<str>>,
    /// The retry topics among `drained` where a copy without a group header (parked by an
    /// earlier version) is the group's (see `Shared::owns_headerless`).
    headerless: Vec<Arc<str>>,
    /// Reads the committed offsets of the group's former cluster-wide `group.id`.
    legacy: Option<BaseConsumer>,
    state: Mutex<State>,
    settled: Condvar,
    tx: mpsc::UnboundedSender<KafkaDelivery>,
    status: watch::Sender<Status>,
    stop: AtomicBool,
}

use messaging_core::sync::lock;

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn closed_error() -> AckError {
    AckError::new(AckErrorKind::Closed)
        .with_detail("the partition was revoked or the subscription closed; it will be redelivered")
}

impl Sub {
    fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    fn is_retry_topic(&self, topic: &str) -> bool {
        self.drained.iter().any(|t| &**t == topic)
    }

    /// The subscription's own name for a topic it reads, and whether it is a retry topic.
    fn known_topic(&self, topic: &str) -> Option<(Arc<str>, bool)> {
        if *self.topic == *topic {
            return Some((self.topic.clone(), false));
        }
        self.drained
            .iter()
            .find(|t| &***t == topic)
            .map(|t| (t.clone(), true))
    }

    /// Hands a message to the subscription; a closed channel drops it without requeueing.
    fn send(self: &Arc<Self>, msg: Msg) {
        let delivery = KafkaDelivery {
            msg: Some(msg),
            sub: self.clone(),
        };
        if let Err(mpsc::error::SendError(mut d)) = self.tx.send(delivery) {
            d.msg = None;
        }
    }

    /// Hands out waiting messages while the prefetch limit allows.
    fn dispatch(self: &Arc<Self>, st: &mut State) {
        if self.ordered {
            let mut ready = Vec::new();
            for part in st.parts.values_mut().flat_map(HashMap::values_mut) {
                if st.unsettled + ready.len() >= self.prefetch {
                    break;
                }
                if !part.busy && !part.revoking {
                    if let Some(m) = part.backlog.pop_front() {
                        part.busy = true;
                        ready.push(part.hand_out(m));
                    }
                }
            }
            st.unsettled += ready.len();
            for m in ready {
                self.send(m);
            }
        } else {
            while st.unsettled < self.prefetch {
                let Some(m) = st.backlog.pop_front() else {
                    break;
                };
                let Some(part) = st.part(&m.topic, m.partition) else {
                    continue;
                };
                let m = part.hand_out(m);
                st.unsettled += 1;
                self.send(m);
            }
        }
    }

    /// A message the poller read.
    fn read(&self, m: &BorrowedMessage<'_>) -> Option<Read> {
        let (topic, retry) = self.known_topic(m.topic())?;
        let foreign = retry
            && (codec::header(m, ORIGIN_HEADER)
                .is_some_and(|origin| origin != self.topic.as_bytes())
                || match codec::header(m, GROUP_HEADER) {
                    Some(group) => group != self.group.as_bytes(),
                    None => !self.headerless.contains(&topic),
                });
        let payload = codec::decode(&self.broker.binding, m).map(Arc::new);
        let (attempt, due) = if retry {
            let before = codec::int_header(m, ATTEMPT_HEADER).unwrap_or(0);
            (
                u32::try_from(before).unwrap_or(0).saturating_add(1),
                codec::int_header(m, NOT_BEFORE_HEADER),
            )
        } else {
            (1, None)
        };
        Some(Read {
            payload,
            topic,
            partition: m.partition(),
            offset: m.offset(),
            attempt,
            due,
            foreign,
        })
    }

    /// Messages the poller read, under one lock.
    fn accept(self: &Arc<Self>, reads: &mut Vec<Read>) {
        let now = now_ms();
        let mut st = self.lock();
        for r in reads.drain(..) {
            let Some(part) = st.part(&r.topic, r.partition) else {
                continue;
            };
            if part.revoking || part.pending || !part.tracker.read(r.offset) {
                continue;
            }
            if r.foreign {
                part.tracker.settle(r.offset);
                continue;
            }
            let msg = Msg {
                payload: r.payload,
                topic: r.topic,
                partition: r.partition,
                offset: r.offset,
                attempt: r.attempt,
                epoch: part.epoch,
            };
            match r.due {
                Some(due) if due > now || !part.delayed.is_empty() => {
                    part.delayed.push_back((due, msg));
                }
                _ if self.ordered => part.backlog.push_back(msg),
                _ => st.backlog.push_back(msg),
            }
        }
        self.dispatch(&mut st);
    }

    /// Releases due retries, pauses and resumes partitions, stores commit positions.
    fn housekeeping(self: &Arc<Self>, consumer: &BaseConsumer<Ctx>) {
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        let mut store = TopicPartitionList::new();
        {
            let mut st = self.lock();
            let now = now_ms();
            let mut released = Vec::new();
            for part in st.parts.values_mut().flat_map(HashMap::values_mut) {
                while part.delayed.front().is_some_and(|(due, _)| *due <= now) {
                    if let Some((_, m)) = part.delayed.pop_front() {
                        // Ordered subscriptions read retry topics only to drain what an
                        // unordered one parked there; their messages wait in their lane.
                        if self.ordered {
                            part.backlog.push_back(m);
                        } else {
                            released.push(m);
                        }
                    }
                }
            }
            st.backlog.extend(released);
            self.dispatch(&mut st);
            let waiting = st.backlog.len()
                + st.parts
                    .values()
                    .flat_map(HashMap::values)
                    .map(|p| p.backlog.len())
                    .sum::<usize>();
            let high = (self.prefetch * 4).max(1024);
            if waiting >= high {
                st.backpressure = true;
            } else if waiting <= high / 2 {
                st.backpressure = false;
            }
            let backpressure = st.backpressure;
            for (topic, parts) in &mut st.parts {
                for (partition, part) in parts.iter_mut() {
                    let want = part.pending || backpressure || !part.delayed.is_empty();
                    if want != part.paused {
                        part.paused = want;
                        let list = if want { &mut pause } else { &mut resume };
                        list.add_partition(topic, *partition);
                    }
                    let mark = (part.tracker.position(), part.handed);
                    if mark.0 >= 0 && mark != part.stored {
                        part.stored = mark;
                        add_position(&mut store, topic, *partition, mark);
                    }
                }
            }
        }
        if pause.count() > 0 {
            if let Err(e) = consumer.pause(&pause) {
                tracing::warn!(error = %e, "cannot pause partitions");
            }
        }
        if resume.count() > 0 {
            if let Err(e) = consumer.resume(&resume) {
                tracing::warn!(error = %e, "cannot resume partitions");
            }
        }
        if store.count() > 0 {
            if let Err(e) = consumer.store_offsets(&store) {
                tracing::warn!(error = %e, "cannot store offsets");
            }
        }
    }

    /// A new assignment: each partition starts at its committed offset. A partition without
    /// one starts at its earliest offset when the group has committed on the topic before (a
    /// partition added to the topic, whose messages must not be skipped) and on retry topics;
    /// only a group with no commit on the topic at all is new and starts where
    /// [`StartFrom`] says. A new group's start positions are committed at once, for every
    /// partition of the topic, so the group exists from then on and members assigned the other
    /// partitions in the same rebalance start there too.
    ///
    /// When the committed offsets cannot be read, the partitions are assigned paused and
    /// pending; the poller fetches again with a growing delay (see [`Sub::retry_pending`]).
    fn on_assign(self: &Arc<Self>, consumer: &BaseConsumer<Ctx>, tpl: &TopicPartitionList) {
        let wanted: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let resolved = self.resolve(consumer, &wanted, CommitMode::Sync);
        let mut assignment = TopicPartitionList::new();
        let mut pending = TopicPartitionList::new();
        {
            let mut st = self.lock();
            st.epoch += 1;
            let epoch = st.epoch;
            match &resolved {
                Ok(starts) => {
                    for start in starts {
                        let _ = assignment.add_partition_offset(
                            &start.topic,
                            start.partition,
                            Offset::Offset(start.position),
                        );
                        let part = Part::new(epoch, Some(start));
                        st.parts
                            .entry(Arc::from(start.topic.as_str()))
                            .or_default()
                            .insert(start.partition, part);
                    }
                }
                Err(e) => {
                    self.fetch_failed(&mut st, e, wanted.len());
                    for (topic, partition) in &wanted {
                        // Fetching from the end reads least before the pause takes hold;
                        // the start position, once known, is sought before resuming.
                        let _ = assignment.add_partition_offset(topic, *partition, Offset::End);
                        pending.add_partition(topic, *partition);
                        st.parts
                            .entry(Arc::from(topic.as_str()))
                            .or_default()
                            .insert(*partition, Part::new(epoch, None));
                    }
                }
            }
        }
        self.assign(consumer, &assignment);
        if pending.count() > 0 {
            if let Err(e) = consumer.pause(&pending) {
                tracing::warn!(error = %e, "cannot pause partitions waiting for their committed offsets");
            }
        } else {
            self.running();
        }
    }

    /// The subscription is running once its first assignment has start positions.
    fn running(&self) {
        self.status.send_if_modified(|s| {
            if matches!(s, Status::Starting) {
                *s = Status::Running;
                true
            } else {
                false
            }
        });
    }

    /// Records a failure to fetch committed offsets: logged, counted, retried later.
    fn fetch_failed(&self, st: &mut State, e: &KafkaError, partitions: usize) {
        let delay = if st.retry_delay.is_zero() {
            FETCH_RETRY_MIN
        } else {
            (st.retry_delay * 2).min(FETCH_RETRY_MAX)
        };
        st.retry_delay = delay;
        st.retry_at = Some(Instant::now() + delay);
        st.fetch_error = Some(e.to_string());
        metrics::counter!(
            "messaging_kafka_offset_fetch_failures_total",
            "topic" => self.topic.to_string(),
            "group" => self.group.clone(),
        )
        .increment(1);
        tracing::warn!(
            error = %e,
            topic = %self.topic,
            group = %self.group,
            partitions,
            retry_in = ?delay,
            "cannot read the committed offsets of assigned partitions; they stay paused until the fetch succeeds"
        );
    }

    /// Fetches the start positions of pending partitions again when due; seeks them there
    /// and lets housekeeping resume them.
    fn retry_pending(self: &Arc<Self>, consumer: &BaseConsumer<Ctx>) {
        let wanted: Vec<(String, i32)> = {
            let mut st = self.lock();
            if st.retry_at.is_none_or(|at| Instant::now() < at) {
                return;
            }
            let wanted: Vec<_> = st
                .parts
                .iter()
                .flat_map(|(t, ps)| {
                    ps.iter()
                        .filter(|(_, p)| p.pending)
                        .map(|(p, _)| (t.to_string(), *p))
                })
                .collect();
            if wanted.is_empty() {
                st.retry_at = None;
                return;
            }
            wanted
        };
        // Committed without waiting: the poller thread keeps polling the healthy partitions
        // (until it lands, the next offset store commits the positions too).
        let starts = match self.resolve(consumer, &wanted, CommitMode::Async) {
            Ok(starts) => starts,
            Err(e) => {
                self.fetch_failed(&mut self.lock(), &e, wanted.len());
                return;
            }
        };
        let mut seek = TopicPartitionList::new();
        for start in &starts {
            let _ = seek.add_partition_offset(
                &start.topic,
                start.partition,
                Offset::Offset(start.position),
            );
        }
        let sought = match consumer.seek_partitions(seek, CALL_TIMEOUT) {
            Ok(sought) => sought,
            Err(e) => {
                self.fetch_failed(&mut self.lock(), &e, wanted.len());
                return;
            }
        };
        let failed: Vec<(String, i32)> = sought
            .elements()
            .iter()
            .filter(|e| e.error().is_err())
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let mut st = self.lock();
        for start in &starts {
            if failed.contains(&(start.topic.clone(), start.partition)) {
                continue;
            }
            if let Some(part) = st.part(&start.topic, start.partition) {
                if part.pending {
                    *part = Part {
                        paused: true,
                        ..Part::new(part.epoch, Some(start))
                    };
                }
            }
        }
        if failed.is_empty() {
            tracing::info!(
                topic = %self.topic,
                group = %self.group,
                partitions = starts.len(),
                "committed offsets fetched; the partitions resume"
            );
            st.retry_delay = Duration::ZERO;
            st.retry_at = None;
            st.fetch_error = None;
            drop(st);
            self.running();
        } else {
            let e = KafkaError::Seek(format!("cannot seek {failed:?} to their start positions"));
            self.fetch_failed(&mut st, &e, failed.len());
        }
    }

    /// The start positions of `wanted`, committing those of partitions without a commit (see
    /// [`Sub::on_assign`]). Fails if committed offsets, metadata or watermarks cannot be read
    /// within one [`Budget`] (each request bounded by [`CALL_TIMEOUT`]).
    fn resolve(
        &self,
        consumer: &BaseConsumer<Ctx>,
        wanted: &[(String, i32)],
        mode: CommitMode,
    ) -> KafkaResult<Vec<Start>> {
        let budget = Budget::new();
        let mut commits = self.committed(consumer, wanted, &budget)?;
        let group_id = self.broker.config.group_id(&self.topic, &self.group);
        {
            // A start chosen earlier for the new group, whose commit failed (say, refused while
            // the group rebalanced), still holds: the group is not new again.
            let mut chosen = lock(&self.broker.uncommitted_starts);
            for k in wanted {
                let key = (group_id.clone(), k.0.clone(), k.1);
                if commits.contains_key(k) {
                    chosen.remove(&key);
                } else if let Some(&offset) = chosen.get(&key) {
                    let carried = Commit {
                        offset,
                        seen_before: -1,
                        carried: true,
                    };
                    commits.insert(k.clone(), carried);
                }
            }
        }
        let mut fresh = TopicPartitionList::new();
        // Carried positions (the legacy id's, earlier uncommitted starts) are committed now.
        for ((topic, partition), c) in &commits {
            if c.carried {
                let _ = fresh.add_partition_offset(topic, *partition, Offset::Offset(c.offset));
            }
        }
        let mut topics: Vec<&str> = wanted
            .iter()
            .filter(|k| !commits.contains_key(*k))
            .map(|(t, _)| t.as_str())
            .collect();
        topics.sort_unstable();
        topics.dedup();
        let mut starts: HashMap<(String, i32), i64> = HashMap::new();
        for topic in topics {
            let mut missing: Vec<(String, i32)> = wanted
                .iter()
                .filter(|k| k.0 == topic && !commits.contains_key(*k))
                .cloned()
                .collect();
            let mut existing =
                self.is_retry_topic(topic) || commits.keys().any(|(t, _)| t == topic);
            let mut others_missing = Vec::new();
            if !existing {
                // Does the group have commits on the topic's other partitions?
                let md = consumer.fetch_metadata(Some(topic), budget.next()?)?;
                let others: Vec<(String, i32)> = md
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic)
                    .flat_map(|t| t.partitions().iter().map(|p| (topic.to_owned(), p.id())))
                    .filter(|k| !wanted.contains(k))
                    .collect();
                if !others.is_empty() {
                    let theirs = self.committed(consumer, &others, &budget)?;
                    existing = !theirs.is_empty();
                    others_missing = others;
                    for ((t, p), c) in theirs {
                        if c.carried {
                            let _ = fresh.add_partition_offset(&t, p, Offset::Offset(c.offset));
                        }
                        commits.insert((t, p), c);
                    }
                }
            }
            let from_start = existing || self.start == StartFrom::Earliest;
            if !existing {
                // A new group: the other members' partitions start here too.
                missing.append(&mut others_missing);
            }
            for ((t, p), position) in watermarks(consumer, &missing, from_start, &budget)? {
                let _ = fresh.add_partition_offset(&t, p, Offset::Offset(position));
                starts.insert((t, p), position);
            }
        }
        let committed_now = fresh.count() == 0
            || match consumer.commit(&fresh, mode) {
                // An asynchronous commit is not known to have landed: stored again.
                Ok(()) => matches!(mode, CommitMode::Sync),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot commit start positions; they are committed with the next offsets");
                    false
                }
            };
        {
            let mut chosen = lock(&self.broker.uncommitted_starts);
            if committed_now {
                for ((t, p), c) in &commits {
                    if c.carried {
                        chosen.remove(&(group_id.clone(), t.clone(), *p));
                    }
                }
            } else {
                for ((t, p), position) in &starts {
                    chosen.insert((group_id.clone(), t.clone(), *p), *position);
                }
            }
        }
        wanted
            .iter()
            .map(|k| {
                let (topic, partition) = k.clone();
                match (commits.get(k), starts.get(k)) {
                    (Some(c), _) => Ok(Start {
                        topic,
                        partition,
                        position: c.offset,
                        seen_before: c.seen_before,
                        committed: committed_now || !c.carried,
                    }),
                    (None, Some(&position)) => Ok(Start {
                        topic,
                        partition,
                        position,
                        seen_before: -1,
                        committed: committed_now,
                    }),
                    // Every wanted partition is committed or given a start above.
                    (None, None) => Err(KafkaError::OffsetFetch(
                        rdkafka::types::RDKafkaErrorCode::UnknownPartition,
                    )),
                }
            })
            .collect()
    }

    /// The group's commits on `partitions`, falling back to its legacy `group.id`.
    fn committed(
        &self,
        consumer: &BaseConsumer<Ctx>,
        partitions: &[(String, i32)],
        budget: &Budget,
    ) -> KafkaResult<HashMap<(String, i32), Commit>> {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in partitions {
            tpl.add_partition(t, *p);
        }
        let mut out = HashMap::new();
        for e in consumer.committed_offsets(tpl, budget.next()?)?.elements() {
            // An error of one partition is no answer: it is not "no commit".
            e.error()?;
            if let Offset::Offset(offset) = e.offset() {
                let seen_before = e
                    .metadata()
                    .strip_prefix(HANDED)
                    .and_then(|n| n.parse::<i64>().ok())
                    .unwrap_or(-1);
                out.insert(
                    (e.topic().to_owned(), e.partition()),
                    Commit {
                        offset,
                        seen_before,
                        carried: false,
                    },
                );
            }
        }
        if let Some(legacy) = &self.legacy {
            let mut tpl = TopicPartitionList::new();
            for k in partitions.iter().filter(|k| !out.contains_key(*k)) {
                tpl.add_partition(&k.0, k.1);
            }
            if tpl.count() > 0 {
                for e in legacy.committed_offsets(tpl, budget.next()?)?.elements() {
                    e.error()?;
                    if let Offset::Offset(offset) = e.offset() {
                        out.insert(
                            (e.topic().to_owned(), e.partition()),
                            Commit {
                                offset,
                                seen_before: -1,
                                carried: true,
                            },
                        );
                    }
                }
            }
        }
        Ok(out)
    }

    fn assign(&self, consumer: &BaseConsumer<Ctx>, tpl: &TopicPartitionList) {
        let result = match consumer.rebalance_protocol() {
            rdkafka::consumer::RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot assign partitions");
        }
    }

    /// Partitions taken away: hand out nothing more from them, wait (bounded) for their
    /// in-flight deliveries, commit what is settled, release them.
    fn on_revoke(&self, consumer: &BaseConsumer<Ctx>, tpl: &TopicPartitionList) {
        let revoked: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let mut commit = TopicPartitionList::new();
        {
            let mut st = self.lock();
            for (t, p) in &revoked {
                if let Some(part) = st.part(t, *p) {
                    part.revoking = true;
                }
            }
            let wait = if self.stop.load(Ordering::Acquire) || st.closed {
                Duration::ZERO
            } else {
                self.broker.config.revoke_timeout
            };
            let deadline = Instant::now() + wait;
            loop {
                let busy = revoked
                    .iter()
                    .any(|(t, p)| st.part(t, *p).is_some_and(|part| part.out > 0));
                let now = Instant::now();
                if !busy || now >= deadline || st.closed {
                    break;
                }
                st = self
                    .settled
                    .wait_timeout(st, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            for (t, p) in &revoked {
                let Some(part) = st.parts.get_mut(t.as_str()).and_then(|m| m.remove(p)) else {
                    continue;
                };
                st.unsettled -= part.out;
                let position = part.tracker.position();
                if position >= 0 {
                    add_position(&mut commit, t, *p, (position, part.handed));
                }
            }
            st.parts.retain(|_, m| !m.is_empty());
            let State { parts, backlog, .. } = &mut *st;
            backlog.retain(|m| {
                parts
                    .get(&m.topic)
                    .is_some_and(|ps| ps.contains_key(&m.partition))
            });
        }
        if commit.count() > 0 {
            commit_settled(consumer, &commit, "revoked partitions");
        }
        let result = match consumer.rebalance_protocol() {
            rdkafka::consumer::RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
            _ => consumer.unassign(),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot release partitions");
        }
    }

    /// Commits every partition's settled position synchronously (closing).
    fn commit_all(&self, consumer: &BaseConsumer<Ctx>) {
        let mut commit = TopicPartitionList::new();
        {
            let st = self.lock();
            for (topic, parts) in &st.parts {
                for (partition, part) in parts {
                    let position = part.tracker.position();
                    if position >= 0 {
                        add_position(&mut commit, topic, *partition, (position, part.handed));
                    }
                }
            }
        }
        if commit.count() > 0 {
            commit_settled(consumer, &commit, "on close");
        }
    }

    /// Settles `m` as done.
    fn ack(self: &Arc<Self>, m: &Msg) -> Result<(), AckError> {
        let mut st = self.lock();
        if !st.valid(m) {
            return Err(closed_error());
        }
        let mut notify = false;
        if let Some(part) = st.part(&m.topic, m.partition) {
            part.tracker.settle(m.offset);
            part.out -= 1;
            part.busy = false;
            notify = part.revoking;
        }
        st.unsettled -= 1;
        self.dispatch(&mut st);
        drop(st);
        if notify {
            self.settled.notify_all();
        }
        Ok(())
    }

    /// Hands `m` out again with the next attempt number (it stays in flight).
    // The error hands the message back to the delivery; the path is cold.
    #[allow(clippy::result_large_err)]
    fn redeliver(self: &Arc<Self>, mut m: Msg) -> Result<(), (AckError, Msg)> {
        let mut st = self.lock();
        if !st.valid(&m) {
            return Err((closed_error(), m));
        }
        drop(st);
        m.attempt = m.attempt.saturating_add(1);
        self.send(m);
        Ok(())
    }

    /// Redelivers `m` after `delay` without leaving the partition (ordered subscriptions, or
    /// no retry tiers configured).
    // The error hands the message back to the delivery; the path is cold.
    #[allow(clippy::result_large_err)]
    fn redeliver_later(self: &Arc<Self>, m: Msg, delay: Duration) -> Result<(), (AckError, Msg)> {
        if !self.lock().valid(&m) {
            return Err((closed_error(), m));
        }
        let sub = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // A revoked partition's message is redelivered by its new owner instead.
            let _ = sub.redeliver(m);
        });
        Ok(())
    }

    /// Republishes `m` to the retry topic for `delay`, then settles it.
    async fn retry_via_topic(
        self: &Arc<Self>,
        m: &Msg,
        delay: Duration,
        retry_topic: &str,
    ) -> Result<(), AckError> {
        if !self.lock().valid(m) {
            return Err(closed_error());
        }
        let due = now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        let attempt = m.attempt.to_string();
        let due = due.to_string();
        let extra: [(&str, &[u8]); 4] = [
            (ATTEMPT_HEADER, attempt.as_bytes()),
            (NOT_BEFORE_HEADER, due.as_bytes()),
            (ORIGIN_HEADER, self.topic.as_bytes()),
            (GROUP_HEADER, self.group.as_bytes()),
        ];
        let producer = &self.broker.producer;
        let sent = match &m.payload {
            Ok(event) => {
                let record = prepare(&self.broker, event, self.broker.config.content_mode)
                    .map_err(|e| AckError::new(AckErrorKind::Unavailable).with_source(e))?;
                let headers = record.headers(&extra);
                producer
                    .send_one(retry_topic, record.key, &record.encoded.body, headers)
                    .await
            }
            Err(decode) => {
                let raw = decode.raw().cloned().unwrap_or_default();
                producer
                    .send_one(
                        retry_topic,
                        codec::raw_key(&raw),
                        &raw.body,
                        codec::raw_headers(&raw, &extra),
                    )
                    .await
            }
        };
        if let Err(e) = sent {
            return Err(AckError::new(AckErrorKind::Unavailable)
                .with_detail(format!(
                    "cannot publish to retry topic {retry_topic:?}: {e}"
                ))
                .with_source(e));
        }
        // Revoked meanwhile: the copy on the retry topic stands; the original is redelivered
        // by the partition's new owner too (at-least-once).
        let _ = self.ack(m);
        Ok(())
    }
}

/// The low (`from_start`) or high watermark of every partition of `partitions`, in one
/// ListOffsets round (`offsets_for_times` with the special timestamps -2, earliest, and -1,
/// latest) instead of one request per partition.
fn watermarks(
    consumer: &BaseConsumer<Ctx>,
    partitions: &[(String, i32)],
    from_start: bool,
    budget: &Budget,
) -> KafkaResult<Vec<((String, i32), i64)>> {
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let query = if from_start {
        Offset::Beginning
    } else {
        Offset::End
    };
    let mut tpl = TopicPartitionList::new();
    for (t, p) in partitions {
        tpl.add_partition_offset(t, *p, query)?;
    }
    let found = consumer.offsets_for_times(tpl, budget.next()?)?;
    let mut out = Vec::with_capacity(partitions.len());
    for e in found.elements() {
        e.error()?;
        match e.offset() {
            Offset::Offset(o) if o >= 0 => out.push(((e.topic().to_owned(), e.partition()), o)),
            other => {
                tracing::debug!(offset = ?other, topic = e.topic(), partition = e.partition(), "no watermark");
                return Err(KafkaError::OffsetFetch(
                    rdkafka::types::RDKafkaErrorCode::OffsetOutOfRange,
                ));
            }
        }
    }
    if out.len() != partitions.len() {
        return Err(KafkaError::OffsetFetch(
            rdkafka::types::RDKafkaErrorCode::UnknownPartition,
        ));
    }
    Ok(out)
}

/// The consumer's context: rebalances go to the subscription's state.
struct Ctx {
    sub: Arc<Sub>,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.sub.on_assign(consumer, tpl)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.sub.on_revoke(consumer, tpl)
            }
            other => {
                tracing::warn!(error = ?other, "rebalance failed; releasing partitions");
                self.sub.on_revoke(consumer, tpl);
            }
        }
    }
}

fn poll_loop(consumer: BaseConsumer<Ctx>, sub: Arc<Sub>) {
    let mut last = Instant::now();
    let mut reads = Vec::with_capacity(READ_BATCH);
    while !sub.stop.load(Ordering::Acquire) {
        // Block for the first message, then take what is already fetched, up to a batch.
        let mut timeout = POLL;
        while reads.len() < READ_BATCH {
            match consumer.poll(timeout) {
                Some(Ok(m)) => reads.extend(sub.read(&m)),
                Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                    sub.status.send_replace(Status::Failed {
                        detail: format!("fatal consumer error: {code}"),
                        transient: false,
                    });
                    sub.stop.store(true, Ordering::Release);
                    break;
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "consumer error (librdkafka retries)");
                    break;
                }
                None => break,
            }
            timeout = Duration::ZERO;
        }
        if !reads.is_empty() {
            sub.accept(&mut reads);
        }
        if last.elapsed() >= HOUSEKEEPING {
            sub.retry_pending(&consumer);
            sub.housekeeping(&consumer);
            last = Instant::now();
        }
    }
    sub.housekeeping(&consumer);
    sub.commit_all(&consumer);
    sub.lock().closed = true;
    sub.settled.notify_all();
    // Leaves the group: the revoke callback commits again and releases the partitions.
    drop(consumer);
    sub.status.send_if_modified(|s| {
        if matches!(s, Status::Failed { .. }) {
            false
        } else {
            *s = Status::Stopped;
            true
        }
    });
}

impl Subscriber for KafkaSubscriber {
    type Subscription = KafkaSubscription;

    async fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<KafkaSubscription, SubscribeError> {
        let features = self.shared.features();
        options.validate(&features)?;
        let config = &self.shared.config;
        let group = options.group();
        let retry_topics: Vec<(Duration, Arc<str>)> = if options.is_ordered() {
            Vec::new()
        } else {
            config
                .retry_tiers
                .iter()
                .map(|t| (*t, Arc::from(retry_topic(topic, group, *t))))
                .collect()
        };
        let created: Vec<&str> = std::iter::once(topic)
            .chain(retry_topics.iter().map(|(_, t)| &**t))
            .collect();
        self.shared.ensure_topics(&created).await.map_err(|e| {
            SubscribeError::new(if e.is_transient() {
                SubscribeErrorKind::Unavailable
            } else {
                SubscribeErrorKind::Rejected
            })
            .with_detail(e.to_string())
            .with_source(e)
        })?;
        // Every retry topic of the group on the cluster is read, whatever the tiers or the
        // ordering are now: messages parked there were already settled on the topic.
        let mut drained: Vec<Arc<str>> = retry_topics.iter().map(|(_, t)| t.clone()).collect();
        let mut headerless = drained.clone();
        let found = self
            .shared
            .group_retry_topics(topic, group)
            .await
            .map_err(|e| {
                SubscribeError::new(SubscribeErrorKind::Unavailable)
                    .with_detail(format!(
                        "cannot list the retry topics of group {group:?} on {topic:?}, whose \
                         parked messages the subscription must drain: {e}"
                    ))
                    .with_source(e)
            })?;
        for (t, own) in found {
            if !drained.iter().any(|d| **d == *t) {
                tracing::info!(topic, group, retry_topic = %t, "draining a retry topic of the group");
                let t: Arc<str> = Arc::from(t);
                if own {
                    headerless.push(t.clone());
                }
                drained.push(t);
            }
        }
        let topics: Vec<String> = std::iter::once(topic.to_owned())
            .chain(drained.iter().map(|t| t.to_string()))
            .collect();

        let legacy = match config.legacy_group_id(group) {
            None => None,
            Some(id) => Some(
                config
                    .client_config()
                    .set("group.id", id)
                    .set("enable.auto.commit", "false")
                    .create::<BaseConsumer>()
                    .map_err(error::subscribe)?,
            ),
        };
        let mut c = config.client_config();
        let session = config.session_timeout.as_millis().max(1000);
        c.set("group.id", config.group_id(topic, group))
            .set("enable.auto.commit", "true")
            .set(
                "auto.commit.interval.ms",
                config.commit_interval.as_millis().max(1).to_string(),
            )
            .set("enable.auto.offset.store", "false")
            .set(
                "auto.offset.reset",
                match options.get_start_from() {
                    StartFrom::Earliest => "earliest",
                    StartFrom::New => "latest",
                },
            )
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 4).max(100).to_string())
            .set("enable.partition.eof", "false");
        for (k, v) in &config.properties {
            c.set(k, v);
        }

        let (tx, rx) = mpsc::unbounded_channel();
        let (status, mut status_rx) = watch::channel(Status::Starting);
        let sub = Arc::new(Sub {
            broker: self.shared.clone(),
            topic: Arc::from(topic),
            ordered: options.is_ordered(),
            prefetch: options.prefetch_limit(),
            start: options.get_start_from(),
            group: group.to_owned(),
            retry_topics,
            drained,
            headerless,
            legacy,
            state: Mutex::new(State::default()),
            settled: Condvar::new(),
            tx,
            status,
            stop: AtomicBool::new(false),
        });
        let consumer: BaseConsumer<Ctx> = c
            .create_with_context(Ctx { sub: sub.clone() })
            .map_err(error::subscribe)?;
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(error::subscribe)?;
        let thread = std::thread::Builder::new()
            .name(format!("kafka-consumer-{group}"))
            .spawn({
                let sub = sub.clone();
                move || poll_loop(consumer, sub)
            })
            .map_err(|e| SubscribeError::new(SubscribeErrorKind::Unavailable).with_source(e))?;
        let mut subscription = KafkaSubscription {
            sub,
            rx,
            status: status_rx.clone(),
            thread: Some(thread),
            closed: false,
        };
        let started = tokio::time::timeout(
            config.subscribe_timeout,
            status_rx.wait_for(|s| !matches!(s, Status::Starting)),
        )
        .await
        .map(|r| r.map(|s| s.clone()));
        let failure = match started {
            Ok(Ok(s)) => match &s {
                Status::Running => None,
                Status::Failed { detail, transient } => Some(
                    SubscribeError::new(if *transient {
                        SubscribeErrorKind::Unavailable
                    } else {
                        SubscribeErrorKind::Rejected
                    })
                    .with_detail(detail.clone()),
                ),
                _ => Some(SubscribeError::new(SubscribeErrorKind::Closed)),
            },
            Ok(Err(_)) => Some(SubscribeError::new(SubscribeErrorKind::Closed)),
            Err(_) => Some(
                SubscribeError::new(SubscribeErrorKind::Timeout).with_detail(
                    match subscription.sub.lock().fetch_error.clone() {
                        Some(e) => format!(
                            "group {group:?} could not read its committed offsets on {topic:?} \
                             within {:?}: {e}",
                            config.subscribe_timeout
                        ),
                        None => format!(
                            "group {group:?} assigned no partitions of {topic:?} within {:?}",
                            config.subscribe_timeout
                        ),
                    },
                ),
            ),
        };
        match failure {
            None => Ok(subscription),
            Some(e) => {
                let _ = subscription.close().await;
                Err(e)
            }
        }
    }

    fn features(&self) -> Features {
        self.shared.features()
    }
}

/// One member of a consumer group, reading a topic (and the group's retry topics).
pub struct KafkaSubscription {
    sub: Arc<Sub>,
    rx: mpsc::UnboundedReceiver<KafkaDelivery>,
    status: watch::Receiver<Status>,
    thread: Option<JoinHandle<()>>,
    closed: bool,
}

impl std::fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscription")
            .field("topic", &self.sub.topic)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl KafkaSubscription {
    fn failure(&self) -> Option<ReceiveError> {
        match &*self.status.borrow() {
            Status::Failed { detail, transient } => Some(
                ReceiveError::new(if *transient {
                    ReceiveErrorKind::Unavailable
                } else {
                    ReceiveErrorKind::Closed
                })
                .with_detail(detail.clone()),
            ),
            Status::Stopped => Some(ReceiveError::new(ReceiveErrorKind::Closed)),
            _ => None,
        }
    }
}

impl Subscription for KafkaSubscription {
    type Delivery = KafkaDelivery;

    async fn recv(&mut self) -> Result<KafkaDelivery, ReceiveError> {
        if self.closed {
            return Err(ReceiveError::new(ReceiveErrorKind::Closed));
        }
        loop {
            if let Some(e) = self.failure() {
                return Err(e);
            }
            tokio::select! {
                biased;
                d = self.rx.recv() => {
                    return d.ok_or_else(|| ReceiveError::new(ReceiveErrorKind::Closed));
                }
                changed = self.status.changed() => {
                    if changed.is_err() {
                        return Err(ReceiveError::new(ReceiveErrorKind::Closed));
                    }
                }
            }
        }
    }

    async fn recv_batch(&mut self, max: usize) -> Result<Vec<KafkaDelivery>, ReceiveError> {
        let first = self.recv().await?;
        let mut batch = Vec::with_capacity(max.clamp(1, 1024));
        batch.push(first);
        while batch.len() < max {
            match self.rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        Ok(batch)
    }

    async fn close(&mut self) -> Result<(), ReceiveError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.sub.stop.store(true, Ordering::Release);
        self.sub.settled.notify_all();
        if let Some(thread) = self.thread.take() {
            let bound = self.sub.broker.config.session_timeout + REQUEST_TIMEOUT;
            let joined =
                tokio::time::timeout(bound, tokio::task::spawn_blocking(move || thread.join()))
                    .await;
            if joined.is_err() {
                return Err(ReceiveError::new(ReceiveErrorKind::Timeout)
                    .with_detail("the consumer did not leave its group in time"));
            }
        }
        self.sub.lock().closed = true;
        self.rx.close();
        while let Ok(mut d) = self.rx.try_recv() {
            d.msg = None;
        }
        Ok(())
    }
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        self.sub.stop.store(true, Ordering::Release);
        self.sub.lock().closed = true;
        self.sub.settled.notify_all();
    }
}

/// One delivery of a Kafka message. Settling marks its offset; the partition's committed
/// offset moves past it once every earlier message is settled too.
pub struct KafkaDelivery {
    msg: Option<Msg>,
    sub: Arc<Sub>,
}

impl std::fmt::Debug for KafkaDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.msg();
        f.debug_struct("KafkaDelivery")
            .field("topic", &m.topic)
            .field("partition", &m.partition)
            .field("offset", &m.offset)
            .field("attempt", &m.attempt)
            .finish_non_exhaustive()
    }
}

impl KafkaDelivery {
    fn msg(&self) -> &Msg {
        // Only settling and dropping take the message, and both consume the delivery.
        self.msg
            .as_ref()
            .unwrap_or_else(|| unreachable!("delivery without message"))
    }

    /// The Kafka topic the message was read from: the published topic, or the group's retry
    /// topic for a message nacked with a delay.
    pub fn kafka_topic(&self) -> &str {
        &self.msg().topic
    }

    /// The partition the message was read from.
    pub fn partition(&self) -> i32 {
        self.msg().partition
    }

    /// The message's offset in its partition.
    pub fn offset(&self) -> i64 {
        self.msg().offset
    }

    fn settle_error(mut self, error: AckError, m: Msg) -> SettleError<Self> {
        self.msg = Some(m);
        SettleError {
            error,
            delivery: self,
        }
    }
}

impl Delivery for KafkaDelivery {
    fn payload(&self) -> Result<&Event, &DecodeError> {
        self.msg().payload.as_ref().map(|e| &**e)
    }

    fn shared_event(&self) -> Result<Arc<Event>, DecodeError> {
        self.msg().payload.clone()
    }

    fn topic(&self) -> &str {
        &self.sub.topic
    }

    fn attempt(&self) -> u32 {
        self.msg().attempt
    }

    async fn ack(mut self) -> Result<(), SettleError<Self>> {
        let Some(m) = self.msg.take() else {
            return Ok(());
        };
        match self.sub.ack(&m) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.settle_error(e, m)),
        }
    }

    async fn nack(mut self, delay: Option<Duration>) -> Result<(), SettleError<Self>> {
        let Some(m) = self.msg.take() else {
            return Ok(());
        };
        let sub = self.sub.clone();
        let delay = delay.filter(|d| !d.is_zero());
        let result = match delay {
            None => sub.redeliver(m),
            Some(d) => {
                let tier = sub.broker.config.tier_for(d).and_then(|tier| {
                    sub.retry_topics
                        .iter()
                        .find(|(t, _)| *t == tier)
                        .map(|(_, name)| name.clone())
                });
                match tier {
                    None => sub.redeliver_later(m, d),
                    Some(topic) => match sub.retry_via_topic(&m, d, &topic).await {
                        Ok(()) => Ok(()),
                        Err(e) => Err((e, m)),
                    },
                }
            }
        };
        result.map_err(|(e, m)| self.settle_error(e, m))
    }

    async fn extend_deadline(&mut self, _by: Duration) -> Result<(), AckError> {
        Err(AckError::new(AckErrorKind::Unsupported)
            .with_detail("Kafka has no per-message ack deadline"))
    }
}

impl Drop for KafkaDelivery {
    /// An unsettled delivery dropped is handed out again (Kafka has no ack deadline to do it).
    fn drop(&mut self) {
        if let Some(m) = self.msg.take() {
            if !self.sub.tx.is_closed() {
                let _ = self.sub.redeliver(m);
            }
        }
    }
}
