//! Subscribing to the in-memory broker: subscriptions and deliveries.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use messaging_core::{
    AckError, AckErrorKind, Binding, DecodeError, Delivery, Event, Features, ReceiveError,
    ReceiveErrorKind, SettleError, SubscribeError, SubscribeOptions, Subscriber, Subscription,
};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::group::{Entry, Group, Payload, Settled, later};
use super::{BrokerInner, MemoryBroker};

/// One subscription's shared state: its in-flight count (for prefetch) and whether it is closed.
#[derive(Debug)]
pub(crate) struct Consumer {
    pub(crate) id: u64,
    group: Arc<Group>,
    broker: std::sync::Weak<BrokerInner>,
    faults: Arc<super::faults::FaultState>,
    inflight: AtomicUsize,
    prefetch: usize,
    closed: AtomicBool,
    wake: Notify,
}

impl Consumer {
    pub(crate) fn released(&self, n: usize) {
        let before = self.inflight.fetch_sub(n, Ordering::AcqRel);
        if before >= self.prefetch {
            // The subscription may be waiting for room.
            self.wake.notify_one();
        }
    }

    /// Counts deliveries handed out; called under the group's lock.
    pub(crate) fn taken(&self, n: usize) {
        self.inflight.fetch_add(n, Ordering::AcqRel);
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Closes this consumer and returns its unsettled deliveries to the group.
    pub(crate) fn close(&self) {
        if self.closed.swap(true, Ordering::AcqRel) {
            return;
        }
        let dead = self.group.release_consumer(self.id);
        self.dead_letter(dead);
        self.wake.notify_one();
        self.group.notify.notify_one();
    }

    fn dead_letter(&self, dead: Vec<Entry>) {
        if dead.is_empty() {
            return;
        }
        if let Some(broker) = self.broker.upgrade() {
            // Dead-lettering ignores flow control: it happens on a consumer's path.
            let payloads: Vec<Payload> = dead.into_iter().map(|e| e.payload).collect();
            let count = payloads.len();
            broker.route(&self.group.dead_letter_topic, payloads.into_iter(), count);
        }
    }
}

impl std::fmt::Debug for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Group")
            .field("topic", &self.topic)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Opens subscriptions on a [`MemoryBroker`].
#[derive(Debug, Clone)]
pub struct MemorySubscriber {
    pub(crate) broker: MemoryBroker,
}

impl Subscriber for MemorySubscriber {
    type Subscription = MemorySubscription;

    async fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<MemorySubscription, SubscribeError> {
        let features = self.broker.features();
        options.validate(&features)?;
        let inner = &self.broker.inner;
        if let Some(refused) = inner.faults.subscribe_refusal() {
            return Err(refused);
        }
        let group = inner.group(topic, &options)?;
        let consumer = Arc::new(Consumer {
            id: inner.next_consumer.fetch_add(1, Ordering::Relaxed),
            group,
            broker: Arc::downgrade(inner),
            faults: inner.faults.clone(),
            inflight: AtomicUsize::new(0),
            prefetch: options.prefetch_limit(),
            closed: AtomicBool::new(false),
            wake: Notify::new(),
        });
        inner.faults.register(&consumer);
        Ok(MemorySubscription {
            consumer,
            faults: inner.faults.clone(),
            binding: inner.binding.clone(),
            ack_deadline: options.get_ack_deadline(),
            prefetch: options.prefetch_limit(),
        })
    }

    fn features(&self) -> Features {
        self.broker.features()
    }
}

/// One consumer of a group on a [`MemoryBroker`]. Dropping it closes it.
#[derive(Debug)]
pub struct MemorySubscription {
    consumer: Arc<Consumer>,
    faults: Arc<super::faults::FaultState>,
    binding: Arc<Binding>,
    ack_deadline: Duration,
    prefetch: usize,
}

impl MemorySubscription {
    fn closed_error() -> ReceiveError {
        ReceiveError::new(ReceiveErrorKind::Closed)
    }

    async fn receive(&mut self, max: usize) -> Result<Vec<MemoryDelivery>, ReceiveError> {
        if self.faults.armed() {
            if let Some(latency) = self.faults.latency() {
                tokio::time::sleep(latency).await;
            }
        }
        let max = max.max(1);
        let c = &self.consumer;
        let group = &c.group;
        loop {
            if c.is_closed() {
                return Err(Self::closed_error());
            }
            // Registered before looking, so no deadline change between look and wait is missed.
            let deadlines_changed = group.deadlines_changed.notified();
            tokio::pin!(deadlines_changed);
            deadlines_changed.as_mut().enable();
            let room = self
                .prefetch
                .saturating_sub(c.inflight.load(Ordering::Acquire));
            let mut out = Vec::new();
            let now = Instant::now();
            let want = room.min(max);
            out.reserve(want.min(64));
            // Even with no room, this expires overdue deliveries, which may make room.
            let (_, dead, next_due) =
                group.take(want, c, now, later(now, self.ack_deadline), |tag, entry| {
                    out.push(MemoryDelivery::new(entry, tag, c.clone(), &self.binding))
                });
            c.dead_letter(dead);
            if !out.is_empty() {
                return Ok(out);
            }
            if room == 0 && c.inflight.load(Ordering::Acquire) < self.prefetch {
                continue;
            }
            let next_due = next_due.map(|d| d.max(Instant::now()));
            tokio::select! {
                () = group.notify.notified(), if room > 0 => {}
                () = c.wake.notified() => {}
                () = &mut deadlines_changed => {}
                () = sleep_until(next_due) => {}
            }
        }
    }
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due).await,
        None => std::future::pending().await,
    }
}

impl Subscription for MemorySubscription {
    type Delivery = MemoryDelivery;

    async fn recv(&mut self) -> Result<MemoryDelivery, ReceiveError> {
        let mut batch = self.receive(1).await?;
        batch.pop().ok_or_else(Self::closed_error)
    }

    async fn recv_batch(&mut self, max: usize) -> Result<Vec<MemoryDelivery>, ReceiveError> {
        self.receive(max).await
    }

    async fn close(&mut self) -> Result<(), ReceiveError> {
        self.consumer.close();
        Ok(())
    }
}

impl Drop for MemorySubscription {
    fn drop(&mut self) {
        self.consumer.close();
    }
}

#[derive(Debug)]
enum Body {
    Event(Arc<Event>),
    Undecodable(DecodeError),
}

/// A delivery from a [`MemoryBroker`].
#[derive(Debug)]
pub struct MemoryDelivery {
    body: Body,
    attempt: u32,
    tag: u64,
    consumer: Arc<Consumer>,
}

impl MemoryDelivery {
    fn new(entry: &Entry, tag: u64, consumer: Arc<Consumer>, binding: &Binding) -> Self {
        let body = match &entry.payload {
            Payload::Event(e) => Body::Event(e.clone()),
            Payload::Raw(raw) => match binding.decode(messaging_core::RawMessage::clone(raw)) {
                Ok(e) => Body::Event(Arc::new(e)),
                Err(e) => Body::Undecodable(e),
            },
        };
        Self {
            body,
            attempt: entry.deliveries,
            tag,
            consumer,
        }
    }

    fn settle_error(self, kind: AckErrorKind) -> SettleError<Self> {
        SettleError {
            error: AckError::new(kind),
            delivery: self,
        }
    }

    fn gone(&self) -> AckErrorKind {
        if self.consumer.is_closed() {
            AckErrorKind::Closed
        } else {
            AckErrorKind::Expired
        }
    }

    fn finish(self, settled: Settled) -> Result<(), SettleError<Self>> {
        match settled {
            Settled::Done(dead) => {
                if let Some(entry) = dead {
                    self.consumer.dead_letter(vec![entry]);
                }
                Ok(())
            }
            Settled::Gone => {
                let kind = self.gone();
                Err(self.settle_error(kind))
            }
        }
    }

    fn fault(&self) -> bool {
        let faults = &self.consumer.faults;
        faults.armed() && faults.take_ack_failure()
    }
}

impl Delivery for MemoryDelivery {
    fn payload(&self) -> Result<&Event, &DecodeError> {
        match &self.body {
            Body::Event(e) => Ok(e),
            Body::Undecodable(e) => Err(e),
        }
    }

    fn shared_event(&self) -> Result<Arc<Event>, DecodeError> {
        match &self.body {
            Body::Event(e) => Ok(e.clone()),
            Body::Undecodable(e) => Err(e.clone()),
        }
    }

    fn topic(&self) -> &str {
        &self.consumer.group.topic
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    async fn ack(self) -> Result<(), SettleError<Self>> {
        if self.fault() {
            return Err(self.settle_error(AckErrorKind::Unavailable));
        }
        let settled = self.consumer.group.ack(self.tag);
        self.finish(settled)
    }

    async fn nack(self, delay: Option<Duration>) -> Result<(), SettleError<Self>> {
        if self.fault() {
            return Err(self.settle_error(AckErrorKind::Unavailable));
        }
        let settled = self.consumer.group.nack(self.tag, delay);
        self.finish(settled)
    }

    async fn extend_deadline(&mut self, by: Duration) -> Result<(), AckError> {
        let extended = self
            .consumer
            .group
            .extend(self.tag, later(Instant::now(), by));
        if extended {
            Ok(())
        } else {
            Err(AckError::new(self.gone()))
        }
    }
}
