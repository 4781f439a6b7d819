//! A subscription group: its queue, in-flight deliveries, delays, deadlines and key locks.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use messaging_core::Event;
use messaging_core::{EventExt, RawMessage};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::subscription::Consumer;

/// What a topic stores: an event, or raw bytes from a non-CloudEvents producer.
#[derive(Debug, Clone)]
pub(crate) enum Payload {
    Event(Arc<Event>),
    Raw(Arc<RawMessage>),
}

impl Payload {
    fn ordering_key(&self) -> Option<Arc<str>> {
        match self {
            Payload::Event(e) => e.ordering_key().map(Arc::from),
            Payload::Raw(_) => None,
        }
    }
}

/// A message waiting in (or handed out from) one group.
#[derive(Debug)]
pub(crate) struct Entry {
    pub(crate) payload: Payload,
    /// Deliveries so far.
    pub(crate) deliveries: u32,
    pub(crate) key: Option<Arc<str>>,
}

#[derive(Debug)]
pub(crate) struct Inflight {
    pub(crate) entry: Entry,
    deadline: Instant,
    pub(crate) consumer: Arc<Consumer>,
}

struct Delayed {
    due: Instant,
    seq: u64,
    entry: Entry,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

/// Tags are sequential integers: mixing them is all the hashing they need.
#[derive(Default)]
struct TagHasher(u64);

impl Hasher for TagHasher {
    fn finish(&self) -> u64 {
        self.0.wrapping_mul(0x9E37_79B9_7F4A_7C15)
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = (self.0 << 8) | u64::from(*b);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type TagMap<V> = HashMap<u64, V, BuildHasherDefault<TagHasher>>;

#[derive(Default)]
pub(crate) struct GroupState {
    ready: VecDeque<Entry>,
    /// Ordered groups: messages waiting behind their key's head.
    waiting: HashMap<Arc<str>, VecDeque<Entry>>,
    /// Ordered groups: keys whose head is ready, in flight or delayed.
    busy: HashSet<Arc<str>>,
    inflight: TagMap<Inflight>,
    deadlines: BinaryHeap<Reverse<(Instant, u64)>>,
    delayed: BinaryHeap<Reverse<Delayed>>,
    next_tag: u64,
    next_seq: u64,
}

/// Counts of one group's messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GroupStats {
    /// Ready to be delivered.
    pub ready: usize,
    /// Delivered and not yet settled.
    pub in_flight: usize,
    /// Nacked with a delay that has not passed yet.
    pub delayed: usize,
    /// Waiting behind an earlier message with the same ordering key.
    pub waiting_on_key: usize,
}

impl GroupStats {
    /// Every message the group still holds.
    pub fn total(&self) -> usize {
        self.ready + self.in_flight + self.delayed + self.waiting_on_key
    }
}

pub(crate) struct Group {
    pub(crate) name: String,
    pub(crate) topic: Arc<str>,
    pub(crate) ordered: bool,
    pub(crate) max_deliveries: Option<u32>,
    pub(crate) dead_letter_topic: String,
    state: Mutex<GroupState>,
    pub(crate) notify: Notify,
}

/// What a settle or expiry decided for an entry leaving flight.
pub(crate) enum Outcome {
    Done,
    DeadLetter(Entry),
}

impl Group {
    pub(crate) fn new(
        name: String,
        topic: Arc<str>,
        ordered: bool,
        max_deliveries: Option<u32>,
        dead_letter_topic: String,
    ) -> Self {
        Self {
            name,
            topic,
            ordered,
            max_deliveries,
            dead_letter_topic,
            state: Mutex::new(GroupState::default()),
            notify: Notify::new(),
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, GroupState> {
        // A panic while holding the lock leaves consistent data (no invariant spans an await).
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Enqueues published payloads; wakes a consumer.
    pub(crate) fn enqueue(&self, payloads: impl IntoIterator<Item = Payload>) {
        {
            let mut st = self.lock();
            for payload in payloads {
                let key = if self.ordered {
                    payload.ordering_key()
                } else {
                    None
                };
                st.push_new(Entry {
                    payload,
                    deliveries: 0,
                    key,
                });
            }
        }
        self.notify.notify_one();
    }

    pub(crate) fn stats(&self) -> GroupStats {
        let st = self.lock();
        GroupStats {
            ready: st.ready.len(),
            in_flight: st.inflight.len(),
            delayed: st.delayed.len(),
            waiting_on_key: st.waiting.values().map(VecDeque::len).sum(),
        }
    }
}

impl GroupState {
    fn push_new(&mut self, entry: Entry) {
        match &entry.key {
            Some(k) if self.busy.contains(k) => {
                self.waiting.entry(k.clone()).or_default().push_back(entry);
            }
            Some(k) => {
                self.busy.insert(k.clone());
                self.ready.push_back(entry);
            }
            None => self.ready.push_back(entry),
        }
    }

    /// Moves due delayed entries to ready and expires deliveries past their deadline.
    /// Returns entries to dead-letter and the next instant something becomes due.
    pub(crate) fn reap(
        &mut self,
        group: &Group,
        now: Instant,
        dead: &mut Vec<Entry>,
    ) -> Option<Instant> {
        while let Some(Reverse(d)) = self.delayed.peek() {
            if d.due > now {
                break;
            }
            if let Some(Reverse(d)) = self.delayed.pop() {
                self.ready.push_back(d.entry);
            }
        }
        while let Some(Reverse((deadline, tag))) = self.deadlines.peek().copied() {
            let live = self
                .inflight
                .get(&tag)
                .is_some_and(|i| i.deadline == deadline);
            if !live {
                self.deadlines.pop();
                continue;
            }
            if deadline > now {
                break;
            }
            self.deadlines.pop();
            if let Some(inf) = self.inflight.remove(&tag) {
                inf.consumer.released(1);
                if let Outcome::DeadLetter(e) = self.requeue(group, inf.entry, None, now) {
                    dead.push(e);
                }
            }
        }
        let delayed = self.delayed.peek().map(|Reverse(d)| d.due);
        let deadline = self.deadlines.peek().map(|Reverse((d, _))| *d);
        match (delayed, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Hands out up to `max` ready entries to `consumer`.
    pub(crate) fn take(
        &mut self,
        max: usize,
        consumer: &Arc<Consumer>,
        deadline: Instant,
        mut out: impl FnMut(u64, &Entry),
    ) -> usize {
        let mut n = 0;
        while n < max {
            let Some(mut entry) = self.ready.pop_front() else {
                break;
            };
            entry.deliveries += 1;
            let tag = self.next_tag;
            self.next_tag += 1;
            out(tag, &entry);
            self.deadlines.push(Reverse((deadline, tag)));
            self.inflight.insert(
                tag,
                Inflight {
                    entry,
                    deadline,
                    consumer: consumer.clone(),
                },
            );
            n += 1;
        }
        n
    }

    pub(crate) fn has_ready(&self) -> bool {
        !self.ready.is_empty()
    }

    /// Removes a delivery from flight (ack, nack); `None` if it is no longer there.
    pub(crate) fn settle(&mut self, tag: u64) -> Option<Inflight> {
        let inf = self.inflight.remove(&tag)?;
        inf.consumer.released(1);
        Some(inf)
    }

    /// Finishes an acked entry: releases its key to the next waiting message.
    pub(crate) fn complete(&mut self, entry: &Entry) {
        if let Some(k) = &entry.key {
            match self.waiting.get_mut(k).and_then(VecDeque::pop_front) {
                Some(next) => {
                    if self.waiting.get(k).is_some_and(VecDeque::is_empty) {
                        self.waiting.remove(k);
                    }
                    self.ready.push_back(next);
                }
                None => {
                    self.busy.remove(k);
                }
            }
        }
    }

    /// Puts an entry back for redelivery (after `delay`), or returns it for dead-lettering when
    /// the group's delivery limit is reached. Its key stays busy, so order per key holds.
    pub(crate) fn requeue(
        &mut self,
        group: &Group,
        entry: Entry,
        delay: Option<Duration>,
        now: Instant,
    ) -> Outcome {
        if group
            .max_deliveries
            .is_some_and(|max| entry.deliveries >= max)
        {
            self.complete(&entry);
            return Outcome::DeadLetter(entry);
        }
        match delay.filter(|d| !d.is_zero()) {
            Some(d) => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.delayed.push(Reverse(Delayed {
                    due: now + d,
                    seq,
                    entry,
                }));
            }
            None if entry.key.is_some() => self.ready.push_front(entry),
            None => self.ready.push_back(entry),
        }
        Outcome::Done
    }

    /// Moves a delivery's deadline; `false` if it is no longer in flight.
    pub(crate) fn extend(&mut self, tag: u64, deadline: Instant) -> bool {
        match self.inflight.get_mut(&tag) {
            Some(inf) => {
                inf.deadline = deadline;
                self.deadlines.push(Reverse((deadline, tag)));
                true
            }
            None => false,
        }
    }

    /// Returns every delivery of `consumer` to the queue.
    pub(crate) fn release_consumer(&mut self, group: &Group, consumer_id: u64) -> Vec<Entry> {
        let mut tags: Vec<u64> = self
            .inflight
            .iter()
            .filter(|(_, i)| i.consumer.id == consumer_id)
            .map(|(t, _)| *t)
            .collect();
        // Requeue in delivery order, so the original order survives a restart.
        tags.sort_unstable_by(|a, b| b.cmp(a));
        let mut dead = Vec::new();
        for tag in tags {
            if let Some(inf) = self.settle(tag) {
                let entry = inf.entry;
                if group
                    .max_deliveries
                    .is_some_and(|max| entry.deliveries >= max)
                {
                    self.complete(&entry);
                    dead.push(entry);
                } else {
                    // Back to the head: it was handed out before everything still ready.
                    self.ready.push_front(entry);
                }
            }
        }
        dead
    }
}
