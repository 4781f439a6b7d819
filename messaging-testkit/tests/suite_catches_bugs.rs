//! The conformance suite can fail: each test here runs cases against a deliberately broken
//! broker (the in-memory one with a bug planted) and asserts the case fails.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use messaging_core::{
    BoxFuture, Delivery, DynPublisher, DynSubscriber, Event, Features, PublishBatchError,
    PublishError, Publisher, Receipt, ReceiveError, SettleError, SubscribeError, SubscribeOptions,
    Subscriber, Subscription,
};
use messaging_testkit::conformance::{self, Harness, Settings, cases};
use messaging_testkit::{MemoryBroker, MemoryDelivery, MemoryPublisher, MemorySubscription};

#[derive(Clone, Copy, PartialEq)]
enum Bug {
    /// Every message is delivered twice.
    Duplicates,
    /// Every third publish is acknowledged but dropped.
    DropsPublishes,
    /// A nack acknowledges the message instead of redelivering it.
    NackAcks,
    /// The ack deadline asked for is ignored (never expires).
    IgnoresDeadline,
    /// Ordered subscriptions are silently unordered.
    IgnoresOrdering,
}

struct Mutant {
    broker: MemoryBroker,
    bug: Bug,
}

impl Mutant {
    fn new(bug: Bug) -> Self {
        let broker = MemoryBroker::new();
        if bug == Bug::Duplicates {
            broker.faults().duplicate_next_deliveries(u32::MAX);
        }
        Self { broker, bug }
    }
}

impl Harness for Mutant {
    fn features(&self) -> Features {
        self.broker.features()
    }
    fn publisher(&self) -> BoxFuture<'_, Arc<dyn DynPublisher>> {
        let p = BuggyPublisher {
            inner: self.broker.publisher(),
            bug: self.bug,
            count: Arc::default(),
        };
        Box::pin(async move { Arc::new(p) as Arc<dyn DynPublisher> })
    }
    fn subscriber(&self) -> BoxFuture<'_, Arc<dyn DynSubscriber>> {
        let s = BuggySubscriber {
            broker: self.broker.clone(),
            bug: self.bug,
        };
        Box::pin(async move { Arc::new(s) as Arc<dyn DynSubscriber> })
    }
    fn settings(&self) -> Settings {
        Settings {
            timeout: Duration::from_secs(30),
            ..Settings::default()
        }
    }
}

struct BuggyPublisher {
    inner: MemoryPublisher,
    bug: Bug,
    count: Arc<AtomicUsize>,
}

impl BuggyPublisher {
    fn drops(&self) -> bool {
        self.bug == Bug::DropsPublishes && self.count.fetch_add(1, Ordering::Relaxed) % 3 == 2
    }
}

impl Publisher for BuggyPublisher {
    async fn publish(&self, topic: &str, event: Event) -> Result<Receipt, PublishError> {
        if self.drops() {
            return Ok(Receipt::new());
        }
        self.inner.publish(topic, event).await
    }
    async fn publish_batch(
        &self,
        topic: &str,
        events: Vec<Event>,
    ) -> Result<Vec<Receipt>, PublishBatchError> {
        let n = events.len();
        let kept: Vec<Event> = events.into_iter().filter(|_| !self.drops()).collect();
        self.inner.publish_batch(topic, kept).await?;
        Ok(vec![Receipt::new(); n])
    }
    async fn close(&self) -> Result<(), PublishError> {
        self.inner.close().await
    }
    fn features(&self) -> Features {
        self.inner.features()
    }
}

struct BuggySubscriber {
    broker: MemoryBroker,
    bug: Bug,
}

impl Subscriber for BuggySubscriber {
    type Subscription = BuggySubscription;
    async fn subscribe(
        &self,
        topic: &str,
        mut options: SubscribeOptions,
    ) -> Result<BuggySubscription, SubscribeError> {
        if self.bug == Bug::IgnoresDeadline {
            options = options.ack_deadline(Duration::from_secs(3600));
        }
        if self.bug == Bug::IgnoresOrdering {
            options = options.ordered(false);
        }
        let inner = self.broker.subscriber().subscribe(topic, options).await?;
        Ok(BuggySubscription {
            inner,
            bug: self.bug,
        })
    }
    fn features(&self) -> Features {
        self.broker.features()
    }
}

struct BuggySubscription {
    inner: MemorySubscription,
    bug: Bug,
}

impl Subscription for BuggySubscription {
    type Delivery = BuggyDelivery;
    async fn recv(&mut self) -> Result<BuggyDelivery, ReceiveError> {
        let inner = self.inner.recv().await?;
        Ok(BuggyDelivery {
            inner,
            bug: self.bug,
        })
    }
    async fn recv_batch(&mut self, max: usize) -> Result<Vec<BuggyDelivery>, ReceiveError> {
        let bug = self.bug;
        let batch = self.inner.recv_batch(max).await?;
        Ok(batch
            .into_iter()
            .map(|inner| BuggyDelivery { inner, bug })
            .collect())
    }
    async fn close(&mut self) -> Result<(), ReceiveError> {
        self.inner.close().await
    }
}

struct BuggyDelivery {
    inner: MemoryDelivery,
    bug: Bug,
}

fn rewrap(bug: Bug) -> impl Fn(SettleError<MemoryDelivery>) -> SettleError<BuggyDelivery> {
    move |e| SettleError {
        error: e.error,
        delivery: BuggyDelivery {
            inner: e.delivery,
            bug,
        },
    }
}

impl Delivery for BuggyDelivery {
    fn payload(&self) -> Result<&Event, &messaging_core::DecodeError> {
        self.inner.payload()
    }
    fn topic(&self) -> &str {
        self.inner.topic()
    }
    fn attempt(&self) -> u32 {
        self.inner.attempt()
    }
    async fn ack(self) -> Result<(), SettleError<Self>> {
        let bug = self.bug;
        self.inner.ack().await.map_err(rewrap(bug))
    }
    async fn nack(self, delay: Option<Duration>) -> Result<(), SettleError<Self>> {
        let bug = self.bug;
        if bug == Bug::NackAcks {
            return self.inner.ack().await.map_err(rewrap(bug));
        }
        self.inner.nack(delay).await.map_err(rewrap(bug))
    }
    async fn extend_deadline(&mut self, by: Duration) -> Result<(), messaging_core::AckError> {
        self.inner.extend_deadline(by).await
    }
}

/// Runs `case` against a broker with `bug` and asserts that it fails.
async fn assert_case_fails(bug: Bug, name: &'static str) {
    let run = tokio::spawn(async move {
        let harness = Mutant::new(bug);
        conformance::run(
            harness,
            name,
            |ctx| async move { run_case(name, &ctx).await },
        )
        .await;
    });
    let result = run.await;
    assert!(
        result.as_ref().is_err_and(|e| e.is_panic()),
        "case `{name}` passed against a broker with a planted bug"
    );
}

async fn run_case(name: &str, ctx: &conformance::Ctx) -> conformance::CaseResult {
    match name {
        "batch_publish" => cases::batch_publish(ctx).await,
        "publish_subscribe" => cases::publish_subscribe(ctx).await,
        "concurrent_publishers" => cases::concurrent_publishers(ctx).await,
        "nack_redelivers_with_next_attempt" => cases::nack_redelivers_with_next_attempt(ctx).await,
        "unacked_redelivered_after_deadline" => {
            cases::unacked_redelivered_after_deadline(ctx).await
        }
        "ordering_survives_redelivery" => cases::ordering_survives_redelivery(ctx).await,
        other => panic!("unknown case {other}"),
    }
}

#[tokio::test(start_paused = true)]
async fn duplicates_are_caught() {
    assert_case_fails(Bug::Duplicates, "publish_subscribe").await;
    assert_case_fails(Bug::Duplicates, "batch_publish").await;
}

#[tokio::test(start_paused = true)]
async fn lost_publishes_are_caught() {
    assert_case_fails(Bug::DropsPublishes, "batch_publish").await;
    assert_case_fails(Bug::DropsPublishes, "concurrent_publishers").await;
}

#[tokio::test(start_paused = true)]
async fn nack_that_acks_is_caught() {
    assert_case_fails(Bug::NackAcks, "nack_redelivers_with_next_attempt").await;
}

#[tokio::test(start_paused = true)]
async fn ignored_deadline_is_caught() {
    assert_case_fails(Bug::IgnoresDeadline, "unacked_redelivered_after_deadline").await;
}

#[tokio::test(start_paused = true)]
async fn ignored_ordering_is_caught() {
    assert_case_fails(Bug::IgnoresOrdering, "ordering_survives_redelivery").await;
}

#[tokio::test(start_paused = true)]
async fn the_same_cases_pass_without_the_bug() {
    // Control: the harness itself is sound when the planted bug is inert.
    for name in ["batch_publish", "nack_redelivers_with_next_attempt"] {
        let harness = Mutant::new(Bug::IgnoresOrdering);
        conformance::run(
            harness,
            name,
            |ctx| async move { run_case(name, &ctx).await },
        )
        .await;
    }
}
