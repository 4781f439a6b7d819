//! What a case works with: unique names, publishers, subscriptions and bounded waits.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use messaging_core::{
    AckErrorKind, BoxDelivery, BoxSubscription, Delivery, DynPublisher, DynSubscriber, Event,
    EventBuilder, Features, RawMessage, SubscribeOptions, Subscriber, Subscription,
};

use super::{Harness, Settings};

static COUNTER: AtomicU64 = AtomicU64::new(0);

/// Source of every event the suite publishes.
pub const SOURCE: &str = "urn:messaging:conformance";
/// Type of every event the suite publishes.
pub const TYPE: &str = "messaging.conformance.test";

/// A case's context.
pub struct Ctx {
    harness: Arc<dyn ErasedHarness>,
    /// The case's name.
    pub case: &'static str,
    /// The broker's features.
    pub features: Features,
    /// Timing.
    pub settings: Settings,
    prefix: String,
    publisher: Arc<dyn DynPublisher>,
    subscriber: Arc<dyn DynSubscriber>,
}

trait ErasedHarness: Send + Sync {
    fn publisher(&self) -> messaging_core::BoxFuture<'_, Arc<dyn DynPublisher>>;
    fn publish_raw<'a>(
        &'a self,
        topic: &'a str,
        raw: RawMessage,
    ) -> Option<messaging_core::BoxFuture<'a, ()>>;
}

impl<H: Harness> ErasedHarness for H {
    fn publisher(&self) -> messaging_core::BoxFuture<'_, Arc<dyn DynPublisher>> {
        Harness::publisher(self)
    }
    fn publish_raw<'a>(
        &'a self,
        topic: &'a str,
        raw: RawMessage,
    ) -> Option<messaging_core::BoxFuture<'a, ()>> {
        Harness::publish_raw(self, topic, raw)
    }
}

impl Ctx {
    pub(crate) async fn new<H: Harness>(
        harness: Arc<H>,
        case: &'static str,
        features: Features,
        settings: Settings,
    ) -> Self {
        let publisher = harness.publisher().await;
        let subscriber = harness.subscriber().await;
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let unique = (nanos as u64 ^ (u64::from(std::process::id()) << 32)).wrapping_add(n);
        let short: String = case
            .chars()
            .take(20)
            .map(|c| if c == '_' { '-' } else { c })
            .collect();
        Self {
            harness,
            case,
            features,
            settings,
            prefix: format!("mc-{short}-{:012x}", unique & 0xffff_ffff_ffff),
            publisher,
            subscriber,
        }
    }

    /// A topic name unique to this run of this case.
    pub fn topic(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// A group name unique to this run of this case.
    pub fn group(&self, name: &str) -> String {
        format!("{}-{name}", self.prefix)
    }

    /// The case's shared publisher.
    pub fn publisher(&self) -> &Arc<dyn DynPublisher> {
        &self.publisher
    }

    /// A new publisher of its own (to close it, for instance).
    pub async fn new_publisher(&self) -> Arc<dyn DynPublisher> {
        self.harness.publisher().await
    }

    /// The case's subscriber.
    pub fn subscriber(&self) -> &Arc<dyn DynSubscriber> {
        &self.subscriber
    }

    /// Subscribes with the suite's short ack deadline; fails the case if it cannot.
    pub async fn subscribe(&self, topic: &str, options: SubscribeOptions) -> BoxSubscription {
        let options = options.ack_deadline(self.settings.ack_deadline);
        match self.subscriber.subscribe(topic, options).await {
            Ok(s) => s,
            Err(e) => panic!("subscribe to {topic:?} failed: {e}"),
        }
    }

    /// Publishes a raw message through the harness (cases that call it declare the need).
    pub async fn publish_raw(&self, topic: &str, raw: RawMessage) {
        match self.harness.publish_raw(topic, raw) {
            Some(f) => f.await,
            None => panic!("harness cannot publish raw messages"),
        }
    }

    /// Event number `n` of this case, with JSON data `{"n": n}`.
    pub fn event(&self, n: usize) -> Event {
        self.builder(n)
            .json(&serde_json::json!({ "n": n }))
            .build()
            .expect("valid event")
    }

    /// Event number `n` with ordering key `key`.
    pub fn keyed_event(&self, n: usize, key: &str) -> Event {
        self.builder(n)
            .json(&serde_json::json!({ "n": n, "key": key }))
            .ordering_key(key)
            .build()
            .expect("valid event")
    }

    /// A builder for event number `n` (id `<prefix>-<n>`).
    pub fn builder(&self, n: usize) -> EventBuilder {
        EventBuilder::new(SOURCE, TYPE).id(self.id(n))
    }

    /// The id of event number `n`.
    pub fn id(&self, n: usize) -> String {
        format!("{}-{n}", self.prefix)
    }

    /// Publishes events `range`, one by one.
    pub async fn publish_n(&self, topic: &str, range: std::ops::Range<usize>) {
        for n in range {
            if let Err(e) = self.publisher.publish_dyn(topic, self.event(n)).await {
                panic!("publish #{n} to {topic:?} failed: {e}");
            }
        }
    }

    /// The next delivery, or a case failure after the timeout.
    pub async fn recv(&self, sub: &mut BoxSubscription) -> BoxDelivery {
        match tokio::time::timeout(self.settings.timeout, sub.recv()).await {
            Ok(Ok(d)) => d,
            Ok(Err(e)) => panic!("receive failed: {e}"),
            Err(_) => panic!("no delivery within {:?}", self.settings.timeout),
        }
    }

    /// Asserts nothing is delivered during the quiet period.
    pub async fn expect_nothing(&self, sub: &mut BoxSubscription, why: &str) {
        self.expect_nothing_for(sub, self.settings.quiet, why).await;
    }

    /// Asserts nothing is delivered during `period`.
    pub async fn expect_nothing_for(&self, sub: &mut BoxSubscription, period: Duration, why: &str) {
        if let Ok(r) = tokio::time::timeout(period, sub.recv()).await {
            match r {
                Ok(d) => panic!(
                    "unexpected delivery of {:?} (attempt {}): {why}",
                    event_id(&d),
                    d.attempt()
                ),
                Err(e) => panic!("receive failed while expecting nothing: {e}"),
            }
        }
    }

    /// Receives and acks until every id in `ids` has been acked; fails on an unexpected id or
    /// a duplicate of an acked one. An ack refused with `Closed` (the delivery's partition was
    /// revoked by a rebalance, as Kafka may do while group members join) hands the message
    /// back, as the ack contract says: it must then be delivered again, and is counted when
    /// that ack succeeds. Returns the acked ids in order.
    pub async fn drain_exactly(
        &self,
        sub: &mut BoxSubscription,
        ids: &HashSet<String>,
    ) -> Vec<String> {
        let mut seen = HashSet::new();
        let mut order = Vec::new();
        while seen.len() < ids.len() {
            let d = self.recv(sub).await;
            let id = event_id(&d);
            assert!(ids.contains(&id), "unexpected message {id:?}");
            assert!(!seen.contains(&id), "duplicate delivery of {id:?}");
            match d.ack().await {
                Ok(()) => {
                    seen.insert(id.clone());
                    order.push(id);
                }
                Err(e) if e.error.kind() == AckErrorKind::Closed => {
                    eprintln!(
                        "conformance: ack of {id:?} refused ({}); awaiting its redelivery",
                        e.error
                    );
                }
                Err(e) => panic!("ack failed: {}", e.error),
            }
        }
        order
    }

    /// Ids of events `range`.
    pub fn ids(&self, range: std::ops::Range<usize>) -> HashSet<String> {
        range.map(|n| self.id(n)).collect()
    }
}

/// The id of a delivered event; fails the case if it did not decode.
pub fn event_id(d: &BoxDelivery) -> String {
    use messaging_core::AttributesReader;
    match d.payload() {
        Ok(e) => e.id().to_owned(),
        Err(e) => panic!("delivery did not decode: {e}"),
    }
}

/// Acks, failing the case if the broker refuses.
pub async fn ack(d: BoxDelivery) {
    if let Err(e) = d.ack().await {
        panic!("ack failed: {}", e.error);
    }
}

/// Nacks, failing the case if the broker refuses.
pub async fn nack(d: BoxDelivery, delay: Option<Duration>) {
    if let Err(e) = d.nack(delay).await {
        panic!("nack failed: {}", e.error);
    }
}
