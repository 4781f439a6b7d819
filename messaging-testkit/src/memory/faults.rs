//! Deterministic fault injection for the in-memory broker.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use messaging_core::{SubscribeError, SubscribeErrorKind};

use super::subscription::Consumer;

#[derive(Debug, Default)]
pub(crate) struct FaultState {
    armed: AtomicBool,
    fail_publishes: AtomicU32,
    fail_acks: AtomicU32,
    duplicates: AtomicU32,
    latency_nanos: AtomicU64,
    refuse_subscribes: Mutex<Option<SubscribeErrorKind>>,
    pub(crate) consumers: Mutex<Vec<Weak<Consumer>>>,
}

impl FaultState {
    /// One relaxed load on the hot path when no fault is armed.
    #[inline]
    pub(crate) fn armed(&self) -> bool {
        self.armed.load(Ordering::Relaxed)
    }

    fn rearm(&self) {
        let any = self.fail_publishes.load(Ordering::SeqCst) > 0
            || self.fail_acks.load(Ordering::SeqCst) > 0
            || self.duplicates.load(Ordering::SeqCst) > 0
            || self.latency_nanos.load(Ordering::SeqCst) > 0;
        self.armed.store(any, Ordering::SeqCst);
    }

    fn take(&self, counter: &AtomicU32) -> bool {
        let took = counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if took {
            self.rearm();
        }
        took
    }

    pub(crate) fn take_publish_failure(&self) -> bool {
        self.take(&self.fail_publishes)
    }

    pub(crate) fn take_ack_failure(&self) -> bool {
        self.take(&self.fail_acks)
    }

    pub(crate) fn take_duplicate(&self) -> bool {
        self.take(&self.duplicates)
    }

    pub(crate) fn latency(&self) -> Option<Duration> {
        match self.latency_nanos.load(Ordering::Relaxed) {
            0 => None,
            n => Some(Duration::from_nanos(n)),
        }
    }

    /// The error every subscribe fails with while [`Faults::refuse_subscribes`] is on.
    pub(crate) fn subscribe_refusal(&self) -> Option<SubscribeError> {
        let kind = *self
            .refuse_subscribes
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        kind.map(|k| SubscribeError::new(k).with_detail("refused by fault injection"))
    }

    pub(crate) fn register(&self, consumer: &Arc<Consumer>) {
        let mut list = messaging_core::sync::lock(&self.consumers);
        list.retain(|c| c.strong_count() > 0);
        list.push(Arc::downgrade(consumer));
    }
}

/// Switches faults on for a [`MemoryBroker`](super::MemoryBroker), so tests can drive their own
/// consumers' retry, idempotency and shutdown paths. Every fault is deterministic: it applies to
/// exactly the next N operations, in order.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use messaging_core::{EventBuilder, Publisher, PublishErrorKind};
/// use messaging_testkit::MemoryBroker;
///
/// let broker = MemoryBroker::new();
/// broker.faults().fail_next_publishes(1);
/// let publisher = broker.publisher();
/// let event = || EventBuilder::new("test", "t").build().unwrap();
/// let err = publisher.publish("orders", event()).await.unwrap_err();
/// assert_eq!(err.kind(), PublishErrorKind::Unavailable);
/// assert!(err.is_transient());
/// assert!(publisher.publish("orders", event()).await.is_ok());
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct Faults(pub(crate) Arc<FaultState>);

impl Faults {
    /// The next `n` published events fail with a transient
    /// [`Unavailable`](messaging_core::PublishErrorKind::Unavailable) error and are not stored.
    pub fn fail_next_publishes(&self, n: u32) {
        self.0.fail_publishes.store(n, Ordering::SeqCst);
        self.0.rearm();
    }

    /// The next `n` acks or nacks fail with a transient
    /// [`Unavailable`](messaging_core::AckErrorKind::Unavailable) error and hand the delivery back.
    pub fn fail_next_acks(&self, n: u32) {
        self.0.fail_acks.store(n, Ordering::SeqCst);
        self.0.rearm();
    }

    /// The next `n` published events are delivered twice to every group (as a broker with
    /// at-least-once delivery may do), each copy with its own delivery.
    pub fn duplicate_next_deliveries(&self, n: u32) {
        self.0.duplicates.store(n, Ordering::SeqCst);
        self.0.rearm();
    }

    /// Every publish and receive waits `latency` first (`Duration::ZERO` turns it off).
    pub fn set_latency(&self, latency: Duration) {
        let nanos = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.0.latency_nanos.store(nanos, Ordering::SeqCst);
        self.0.rearm();
    }

    /// Closes every open subscription from the broker's side, as a dropped connection would:
    /// receiving fails with [`Closed`](messaging_core::ReceiveErrorKind::Closed) and unsettled
    /// deliveries return to their groups.
    pub fn close_subscriptions(&self) {
        let consumers: Vec<_> = {
            let mut list = messaging_core::sync::lock(&self.0.consumers);
            std::mem::take(&mut *list)
        };
        for consumer in consumers.iter().filter_map(Weak::upgrade) {
            consumer.close();
        }
    }

    /// Until called again with `None`, every subscribe fails with `kind` — `Unavailable` for a
    /// broker that is down for a while, a permanent kind (`Rejected`, `NotFound`) for one that
    /// refuses the consumer for good. Existing subscriptions are untouched (pair it with
    /// [`close_subscriptions`](Self::close_subscriptions) for a lost connection).
    pub fn refuse_subscribes(&self, kind: Option<SubscribeErrorKind>) {
        *self
            .0
            .refuse_subscribes
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = kind;
    }

    /// Turns every fault off.
    pub fn clear(&self) {
        self.refuse_subscribes(None);
        self.fail_next_publishes(0);
        self.fail_next_acks(0);
        self.duplicate_next_deliveries(0);
        self.set_latency(Duration::ZERO);
    }
}
