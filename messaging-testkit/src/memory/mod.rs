//! An in-memory broker with the semantics of a real one.
//!
//! - **Topics and groups**: every group of a topic gets every message published after the group
//!   was created; the consumers of one group compete. Groups outlive their subscriptions (like a
//!   durable queue), so a consumer that restarts finds what it left.
//! - **Acks**: each delivery is acked, nacked (redelivered, after a delay if given) or its
//!   deadline extended. An unsettled delivery is redelivered with `attempt + 1` once its ack
//!   deadline passes or its subscription closes; a late ack then fails with
//!   [`Expired`](messaging_core::AckErrorKind::Expired) or
//!   [`Closed`](messaging_core::AckErrorKind::Closed) and hands the delivery back.
//! - **Ordering**: in an ordered group, messages with the same ordering key are delivered one at a
//!   time in publish order across all consumers (like an SQS FIFO message group), also across
//!   nacks and redeliveries.
//! - **Limits and dead letters**: a configurable maximum payload with a typed error, and
//!   broker-native dead-lettering after `max_deliveries`.
//! - **Faults**: see [`Faults`].
//!
//! Every timer uses tokio's clock, so tests under `#[tokio::test(start_paused = true)]` run
//! backoffs and deadlines instantly.

mod adapter;
mod faults;
mod group;
mod publisher;
mod subscription;

pub use adapter::MemoryConfig;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64};
use std::sync::{Arc, RwLock};

use messaging_core::dead_letter::DEAD_LETTER_GROUP;
use messaging_core::{
    Binding, DelaySupport, Features, Inspect, InspectError, RawMessage, SubscribeError,
    SubscribeErrorKind, SubscribeOptions,
};

pub use faults::Faults;
pub use group::GroupStats;
pub use publisher::MemoryPublisher;
pub use subscription::{MemoryDelivery, MemorySubscriber, MemorySubscription};

use group::{Group, Payload};

/// Default maximum payload: 1 MiB, like Kafka's and SQS's defaults.
pub const DEFAULT_MAX_PAYLOAD: usize = 1024 * 1024;
/// Default number of waiting messages per group before publishers are held back.
pub const DEFAULT_QUEUE_CAPACITY: usize = 65_536;

/// An in-memory broker. Cheap to clone: clones share the same topics.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use messaging_core::{Delivery, EventBuilder, Publisher, SubscribeOptions, Subscriber, Subscription};
/// use messaging_testkit::MemoryBroker;
///
/// let broker = MemoryBroker::new();
/// let mut subscription = broker.subscriber().subscribe("orders", SubscribeOptions::new("billing")).await?;
/// broker.publisher().publish("orders", EventBuilder::new("shop", "order.created").build()?).await?;
///
/// let delivery = subscription.recv().await?;
/// assert_eq!(delivery.attempt(), 1);
/// delivery.ack().await?;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct MemoryBroker {
    pub(crate) inner: Arc<BrokerInner>,
}

#[derive(Debug)]
pub(crate) struct Topic {
    name: Arc<str>,
    groups: RwLock<Vec<Arc<Group>>>,
    next_offset: AtomicI64,
}

#[derive(Debug)]
pub(crate) struct BrokerInner {
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    max_payload: usize,
    queue_capacity: usize,
    pub(crate) faults: Arc<faults::FaultState>,
    pub(crate) next_consumer: AtomicU64,
    pub(crate) binding: Arc<Binding>,
}

/// Configures a [`MemoryBroker`].
#[derive(Debug, Clone)]
#[must_use]
pub struct MemoryBrokerBuilder {
    max_payload: usize,
    queue_capacity: usize,
}

impl MemoryBrokerBuilder {
    /// Largest accepted event, as measured by
    /// [`approximate_size`](messaging_core::event::approximate_size) (default 1 MiB).
    pub fn max_payload(mut self, bytes: usize) -> Self {
        self.max_payload = bytes;
        self
    }

    /// How many messages one group may hold waiting before publishers to its topic wait for
    /// consumers to catch up (flow control; default 65 536). The message that crosses the limit
    /// is accepted; its publish returns once the group is back under half of it.
    pub fn queue_capacity(mut self, messages: usize) -> Self {
        self.queue_capacity = messages;
        self
    }

    /// Builds the broker.
    pub fn build(self) -> MemoryBroker {
        MemoryBroker {
            inner: Arc::new(BrokerInner {
                topics: RwLock::default(),
                max_payload: self.max_payload,
                queue_capacity: self.queue_capacity,
                faults: Arc::default(),
                next_consumer: AtomicU64::new(1),
                binding: Arc::new(Binding::kafka()),
            }),
        }
    }
}

impl Default for MemoryBroker {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryBroker {
    /// A broker with default settings.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// Configures a broker.
    pub fn builder() -> MemoryBrokerBuilder {
        MemoryBrokerBuilder {
            max_payload: DEFAULT_MAX_PAYLOAD,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
        }
    }

    /// A publisher on this broker.
    pub fn publisher(&self) -> MemoryPublisher {
        MemoryPublisher::new(self.clone())
    }

    /// A subscriber on this broker.
    pub fn subscriber(&self) -> MemorySubscriber {
        MemorySubscriber {
            broker: self.clone(),
        }
    }

    /// Fault injection for this broker.
    pub fn faults(&self) -> Faults {
        Faults(self.inner.faults.clone())
    }

    /// What this broker can do.
    pub fn features(&self) -> Features {
        Features {
            consumer_groups: true,
            ordering: true,
            replay: false,
            delayed_redelivery: DelaySupport::Native,
            native_dead_letter: true,
            ack_deadline: true,
            extend_deadline: true,
            max_payload: Some(self.inner.max_payload),
            transactions: false,
            persistent: false,
            ..Features::new("memory")
        }
    }

    /// Publishes a raw message, as a producer that does not speak CloudEvents would. Groups
    /// receive it as a delivery whose [`event`](messaging_core::Delivery::event) is a
    /// [`DecodeError`](messaging_core::DecodeError) unless it decodes (Kafka binding names).
    pub fn publish_raw(&self, topic: &str, raw: RawMessage) {
        let payload = Payload::Raw(Arc::new(raw));
        self.inner.route(topic, std::iter::once(payload), 1);
    }

    /// Counts of one group's messages; `None` if the group does not exist.
    pub fn group_stats(&self, topic: &str, group: &str) -> Option<GroupStats> {
        let t = self.inner.existing_topic(topic)?;
        let groups = messaging_core::sync::read(&t.groups);
        groups.iter().find(|g| g.name == group).map(|g| g.stats())
    }

    /// The topics that exist, sorted.
    pub fn topics(&self) -> Vec<String> {
        let topics = messaging_core::sync::read(&self.inner.topics);
        let mut names: Vec<String> = topics.keys().cloned().collect();
        names.sort();
        names
    }
}

impl Inspect for MemoryBroker {
    async fn depth(&self, topic: &str, group: &str) -> Result<Option<u64>, InspectError> {
        Ok(self
            .group_stats(topic, group)
            .map(|s| u64::try_from(s.total()).unwrap_or(u64::MAX)))
    }
}

impl Inspect for MemorySubscriber {
    async fn depth(&self, topic: &str, group: &str) -> Result<Option<u64>, InspectError> {
        self.broker.depth(topic, group).await
    }
}

impl BrokerInner {
    fn existing_topic(&self, name: &str) -> Option<Arc<Topic>> {
        let topics = messaging_core::sync::read(&self.topics);
        topics.get(name).cloned()
    }

    pub(crate) fn topic(&self, name: &str) -> Arc<Topic> {
        if let Some(t) = self.existing_topic(name) {
            return t;
        }
        let mut topics = messaging_core::sync::write(&self.topics);
        topics
            .entry(name.to_owned())
            .or_insert_with(|| {
                Arc::new(Topic {
                    name: Arc::from(name),
                    groups: RwLock::default(),
                    next_offset: AtomicI64::new(0),
                })
            })
            .clone()
    }

    /// Delivers `count` payloads to every group of `topic`. Returns the offset of the first
    /// and the groups now over capacity, which the publisher waits for.
    pub(crate) fn route<I>(&self, topic: &str, payloads: I, count: usize) -> (i64, Vec<Arc<Group>>)
    where
        I: Iterator<Item = Payload> + Clone,
    {
        let topic = self.topic(topic);
        let first = topic.next_offset.fetch_add(
            i64::try_from(count).unwrap_or(i64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        );
        let mut full = Vec::new();
        let groups = messaging_core::sync::read(&topic.groups);
        if let Some((last, rest)) = groups.split_last() {
            for g in rest {
                if g.enqueue(payloads.clone()) {
                    full.push(g.clone());
                }
            }
            if last.enqueue(payloads) {
                full.push(last.clone());
            }
        }
        (first, full)
    }

    pub(crate) fn group(
        &self,
        topic: &str,
        options: &SubscribeOptions,
    ) -> Result<Arc<Group>, SubscribeError> {
        let topic = self.topic(topic);
        let mut groups = messaging_core::sync::write(&topic.groups);
        if let Some(g) = groups.iter().find(|g| g.name == options.group()) {
            if g.ordered != options.is_ordered() || g.max_deliveries != options.get_max_deliveries()
            {
                return Err(SubscribeError::new(SubscribeErrorKind::Rejected).with_detail(format!(
                    "group {:?} of topic {:?} exists with other ordering or delivery-limit settings",
                    options.group(),
                    topic.name
                )));
            }
            return Ok(g.clone());
        }
        let dead_letter_topic = options.dead_letter_topic_for(&topic.name);
        let g = Arc::new(Group::new(
            options.group().to_owned(),
            topic.name.clone(),
            options.is_ordered(),
            options.get_max_deliveries(),
            dead_letter_topic.clone(),
            self.queue_capacity,
        ));
        groups.push(g.clone());
        drop(groups);
        if options.get_max_deliveries().is_some() && dead_letter_topic != *topic.name {
            // Like a dead-letter exchange bound to a queue: dead letters are kept from the
            // start, in the group the dead-letter tools read.
            self.group(
                &dead_letter_topic,
                &SubscribeOptions::new(DEAD_LETTER_GROUP),
            )?;
        }
        Ok(g)
    }

    pub(crate) fn max_payload(&self) -> usize {
        self.max_payload
    }
}
