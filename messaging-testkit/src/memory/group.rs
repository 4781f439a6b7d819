//! A subscription group: its queue, in-flight deliveries, delays, deadlines and key locks.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, HashSet, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
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
    entry: Entry,
    deadline: Instant,
    consumer: Arc<Consumer>,
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

/// Messages waiting to be handed out. Publishers lock only this.
#[derive(Default)]
pub(crate) struct Queue {
    ready: VecDeque<Entry>,
    /// Ordered groups: messages waiting behind their key's head.
    waiting: HashMap<Arc<str>, VecDeque<Entry>>,
    /// Ordered groups: keys whose head is ready, in flight or delayed.
    busy: HashSet<Arc<str>>,
    waiting_len: usize,
    delayed: BinaryHeap<Reverse<Delayed>>,
    next_seq: u64,
}

/// Deliveries handed out and not settled. Acks lock only this, so they do not contend with
/// publishers.
#[derive(Default)]
pub(crate) struct Flight {
    inflight: TagMap<Inflight>,
    /// Deadlines in the order they were set; non-decreasing while every subscription of the
    /// group uses the same ack deadline (the common case: O(1) per delivery).
    deadlines: VecDeque<(Instant, u64)>,
    /// Deadlines that arrived out of order (extensions, mixed ack deadlines).
    unordered: BinaryHeap<Reverse<(Instant, u64)>>,
    next_tag: u64,
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
    capacity: usize,
    // Lock order: queue, then flight.
    queue: Mutex<Queue>,
    flight: Mutex<Flight>,
    pub(crate) notify: Notify,
    /// Woken when the earliest deadline may have moved earlier, so sleeping consumers
    /// recompute when to expire deliveries.
    pub(crate) deadlines_changed: Notify,
    space: Notify,
    publishers_waiting: AtomicUsize,
}

/// Decrements the waiting-publisher count even if the waiting future is dropped.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Outcome of settling a delivery.
pub(crate) enum Settled {
    /// Done; `Some` holds a message to dead-letter.
    Done(Option<Entry>),
    /// The delivery is no longer in flight (expired, or its subscription closed).
    Gone,
}

/// `now + d`, saturating far in the future instead of overflowing.
pub(crate) fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

fn relock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding a lock leaves consistent data (no invariant spans an await).
    messaging_core::sync::lock(m)
}

impl Group {
    pub(crate) fn new(
        name: String,
        topic: Arc<str>,
        ordered: bool,
        max_deliveries: Option<u32>,
        dead_letter_topic: String,
        capacity: usize,
    ) -> Self {
        Self {
            name,
            topic,
            ordered,
            max_deliveries,
            dead_letter_topic,
            capacity,
            queue: Mutex::default(),
            flight: Mutex::default(),
            notify: Notify::new(),
            deadlines_changed: Notify::new(),
            space: Notify::new(),
            publishers_waiting: AtomicUsize::new(0),
        }
    }

    /// Waits until the group holds at most half its capacity (publisher flow control, like a
    /// broker blocking publishers while a queue is over its limit).
    pub(crate) async fn wait_for_space(&self) {
        loop {
            let notified = self.space.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            self.publishers_waiting.fetch_add(1, Ordering::SeqCst);
            let _waiting = Waiting(&self.publishers_waiting);
            if relock(&self.queue).queued() <= self.capacity / 2 {
                return;
            }
            notified.await;
        }
    }

    fn signal_space(&self, q: &Queue) {
        if self.publishers_waiting.load(Ordering::SeqCst) > 0 && q.queued() <= self.capacity / 2 {
            self.space.notify_waiters();
        }
    }

    /// Enqueues published payloads and wakes a consumer; `true` if the group is now over its
    /// capacity.
    pub(crate) fn enqueue(&self, payloads: impl IntoIterator<Item = Payload>) -> bool {
        let full = {
            let mut q = relock(&self.queue);
            for payload in payloads {
                let key = if self.ordered {
                    payload.ordering_key()
                } else {
                    None
                };
                q.push_new(Entry {
                    payload,
                    deliveries: 0,
                    key,
                });
            }
            q.queued() > self.capacity
        };
        self.notify.notify_one();
        full
    }

    /// Hands out up to `max` ready messages to `consumer`, after moving due delayed messages
    /// to ready and expiring overdue deliveries. `out` sees each (tag, entry). Returns how many
    /// were taken, messages to dead-letter, and when something next becomes due.
    pub(crate) fn take(
        &self,
        max: usize,
        consumer: &Arc<Consumer>,
        now: Instant,
        deadline: Instant,
        mut out: impl FnMut(u64, &Entry),
    ) -> (usize, Vec<Entry>, Option<Instant>) {
        let mut dead = Vec::new();
        let mut q = relock(&self.queue);
        let mut f = relock(&self.flight);
        // Checked under the lock: `close` marks the consumer before it takes the lock to
        // release its deliveries, so nothing is handed to a closed consumer.
        let max = if consumer.is_closed() { 0 } else { max };
        let first_deadline = f.deadlines.is_empty() && f.unordered.is_empty();
        q.promote(now);
        f.expire(now, |entry| {
            if let Some(e) = q.requeue(self, entry, None, now) {
                dead.push(e);
            }
        });
        let mut n = 0;
        while n < max {
            let Some(mut entry) = q.ready.pop_front() else {
                break;
            };
            entry.deliveries += 1;
            let tag = f.next_tag;
            f.next_tag += 1;
            out(tag, &entry);
            f.push_deadline(deadline, tag);
            f.inflight.insert(
                tag,
                Inflight {
                    entry,
                    deadline,
                    consumer: consumer.clone(),
                },
            );
            n += 1;
        }
        consumer.taken(n);
        let next_due = match (q.delayed.peek().map(|Reverse(d)| d.due), f.next_deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        drop(f);
        if n > 0 && first_deadline {
            self.deadlines_changed.notify_waiters();
        }
        if n > 0 {
            if !q.ready.is_empty() {
                // Others may be waiting for what is left.
                self.notify.notify_one();
            }
            self.signal_space(&q);
        }
        (n, dead, next_due)
    }

    fn remove(&self, tag: u64) -> Option<Inflight> {
        let inf = relock(&self.flight).inflight.remove(&tag)?;
        inf.consumer.released(1);
        Some(inf)
    }

    /// Acks a delivery: the message is done; its key moves on.
    pub(crate) fn ack(&self, tag: u64) -> Settled {
        let Some(inf) = self.remove(tag) else {
            return Settled::Gone;
        };
        if inf.entry.key.is_some() {
            let mut q = relock(&self.queue);
            q.complete(&inf.entry);
            if !q.ready.is_empty() {
                drop(q);
                self.notify.notify_one();
            }
        }
        Settled::Done(None)
    }

    /// Nacks a delivery: redelivered after `delay`, or dead-lettered at the delivery limit.
    pub(crate) fn nack(&self, tag: u64, delay: Option<Duration>) -> Settled {
        let Some(inf) = self.remove(tag) else {
            return Settled::Gone;
        };
        let dead = relock(&self.queue).requeue(self, inf.entry, delay, Instant::now());
        self.notify.notify_one();
        Settled::Done(dead)
    }

    /// Moves a delivery's deadline; `false` if it is no longer in flight.
    pub(crate) fn extend(&self, tag: u64, deadline: Instant) -> bool {
        let mut f = relock(&self.flight);
        match f.inflight.get_mut(&tag) {
            Some(inf) => {
                let earlier = deadline < inf.deadline;
                inf.deadline = deadline;
                f.push_deadline(deadline, tag);
                drop(f);
                if earlier {
                    self.deadlines_changed.notify_waiters();
                }
                true
            }
            None => false,
        }
    }

    /// Returns every delivery of `consumer` to the head of the queue, in delivery order;
    /// returns messages that reached the delivery limit, for dead-lettering.
    pub(crate) fn release_consumer(&self, consumer_id: u64) -> Vec<Entry> {
        let mut q = relock(&self.queue);
        let mut f = relock(&self.flight);
        let mut tags: Vec<u64> = f
            .inflight
            .iter()
            .filter(|(_, i)| i.consumer.id == consumer_id)
            .map(|(t, _)| *t)
            .collect();
        tags.sort_unstable_by(|a, b| b.cmp(a));
        let mut dead = Vec::new();
        for tag in tags {
            if let Some(inf) = f.inflight.remove(&tag) {
                inf.consumer.released(1);
                let entry = inf.entry;
                if self
                    .max_deliveries
                    .is_some_and(|max| entry.deliveries >= max)
                {
                    q.complete(&entry);
                    dead.push(entry);
                } else {
                    q.ready.push_front(entry);
                }
            }
        }
        dead
    }

    pub(crate) fn stats(&self) -> GroupStats {
        let q = relock(&self.queue);
        let f = relock(&self.flight);
        GroupStats {
            ready: q.ready.len(),
            in_flight: f.inflight.len(),
            delayed: q.delayed.len(),
            waiting_on_key: q.waiting_len,
        }
    }
}

impl Queue {
    /// Messages waiting to be handed out (ready or behind their key).
    fn queued(&self) -> usize {
        self.ready.len() + self.waiting_len
    }

    fn push_new(&mut self, entry: Entry) {
        match &entry.key {
            Some(k) if self.busy.contains(k) => {
                self.waiting_len += 1;
                self.waiting.entry(k.clone()).or_default().push_back(entry);
            }
            Some(k) => {
                self.busy.insert(k.clone());
                self.ready.push_back(entry);
            }
            None => self.ready.push_back(entry),
        }
    }

    fn promote(&mut self, now: Instant) {
        while self.delayed.peek().is_some_and(|Reverse(d)| d.due <= now) {
            if let Some(Reverse(d)) = self.delayed.pop() {
                self.ready.push_back(d.entry);
            }
        }
    }

    /// Finishes an entry: releases its key to the next waiting message.
    fn complete(&mut self, entry: &Entry) {
        if let Some(k) = &entry.key {
            match self.waiting.get_mut(k).and_then(VecDeque::pop_front) {
                Some(next) => {
                    self.waiting_len -= 1;
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

    /// Puts an entry back for redelivery (after `delay`); its key stays busy, so order per key
    /// holds. At the group's delivery limit the entry is returned for dead-lettering instead.
    fn requeue(
        &mut self,
        group: &Group,
        entry: Entry,
        delay: Option<Duration>,
        now: Instant,
    ) -> Option<Entry> {
        if group
            .max_deliveries
            .is_some_and(|max| entry.deliveries >= max)
        {
            self.complete(&entry);
            return Some(entry);
        }
        match delay.filter(|d| !d.is_zero()) {
            Some(d) => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.delayed.push(Reverse(Delayed {
                    due: later(now, d),
                    seq,
                    entry,
                }));
            }
            None if entry.key.is_some() => self.ready.push_front(entry),
            None => self.ready.push_back(entry),
        }
        None
    }
}

impl Flight {
    fn push_deadline(&mut self, deadline: Instant, tag: u64) {
        if self
            .deadlines
            .back()
            .is_none_or(|(last, _)| *last <= deadline)
        {
            self.deadlines.push_back((deadline, tag));
        } else {
            self.unordered.push(Reverse((deadline, tag)));
        }
    }

    fn is_live(&self, deadline: Instant, tag: u64) -> bool {
        self.inflight
            .get(&tag)
            .is_some_and(|i| i.deadline == deadline)
    }

    /// Drops stale deadlines (acked or extended deliveries) from the fronts of both queues
    /// and returns the earliest live one.
    fn next_deadline(&mut self) -> Option<Instant> {
        while let Some(&(d, tag)) = self.deadlines.front() {
            if self.is_live(d, tag) {
                break;
            }
            self.deadlines.pop_front();
        }
        while let Some(&Reverse((d, tag))) = self.unordered.peek() {
            if self.is_live(d, tag) {
                break;
            }
            self.unordered.pop();
        }
        match (
            self.deadlines.front().map(|(d, _)| *d),
            self.unordered.peek().map(|Reverse((d, _))| *d),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Removes deliveries past their deadline and hands their entries to `requeue`.
    fn expire(&mut self, now: Instant, mut requeue: impl FnMut(Entry)) {
        while self.next_deadline().is_some_and(|d| d <= now) {
            let tag = match (self.deadlines.front(), self.unordered.peek()) {
                (Some(&(a, ta)), Some(&Reverse((b, tb)))) => {
                    if a <= b {
                        self.deadlines.pop_front();
                        ta
                    } else {
                        self.unordered.pop();
                        tb
                    }
                }
                (Some(&(_, ta)), None) => {
                    self.deadlines.pop_front();
                    ta
                }
                (None, Some(&Reverse((_, tb)))) => {
                    self.unordered.pop();
                    tb
                }
                (None, None) => break,
            };
            if let Some(inf) = self.inflight.remove(&tag) {
                inf.consumer.released(1);
                requeue(inf.entry);
            }
        }
    }
}
