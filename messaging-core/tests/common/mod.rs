//! Helpers shared by the runtime tests.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::time::Duration;

use messaging_core::dead_letter;
use messaging_core::middleware::retry::{RetryMode, RetryPolicy};
use messaging_core::{
    Delivery, DynPublisher, Event, EventBuilder, SubscribeOptions, Subscriber, Subscription,
};
use messaging_testkit::MemoryBroker;

pub fn event(n: usize) -> Event {
    EventBuilder::new("test", "order.created")
        .id(format!("e{n}"))
        .json(&serde_json::json!({ "n": n }))
        .build()
        .unwrap()
}

pub fn policy(max_retries: u32, mode: RetryMode) -> RetryPolicy {
    RetryPolicy {
        max_retries,
        jitter: false,
        mode,
        ..RetryPolicy::default()
    }
}

pub fn publisher(broker: &MemoryBroker) -> Arc<dyn DynPublisher> {
    Arc::new(broker.publisher())
}

/// The report of a spawned `Consumer::run`; fails with `what` unless it ends within 600 s
/// (of paused time) and without an error.
pub async fn report_of(
    run: tokio::task::JoinHandle<
        Result<messaging_core::runtime::RunReport, messaging_core::runtime::RunError>,
    >,
    what: &str,
) -> messaging_core::runtime::RunReport {
    tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .unwrap_or_else(|_| panic!("{what}"))
        .expect("the run's task")
        .expect("the run ended without an error")
}

/// Publishes `event(n)` to `orders`.
pub async fn publish_order(broker: &MemoryBroker, n: usize) {
    messaging_core::Publisher::publish(&broker.publisher(), "orders", event(n))
        .await
        .unwrap();
}

/// Completes once `done()` holds (checked every 10 ms of tokio time).
pub async fn until(done: impl Fn() -> bool) {
    while !done() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

pub async fn dead_letters(broker: &MemoryBroker, dlq: &str, n: usize) -> Vec<Event> {
    let mut sub = broker
        .subscriber()
        .subscribe(dlq, SubscribeOptions::new(dead_letter::DEAD_LETTER_GROUP))
        .await
        .unwrap();
    let mut out = Vec::new();
    for _ in 0..n {
        let d = tokio::time::timeout(Duration::from_secs(60), sub.recv())
            .await
            .expect("dead letter arrives")
            .unwrap();
        out.push(d.event().unwrap().clone());
        d.nack(None).await.unwrap(); // leave it there
    }
    out
}

/// Completes once the dead-letter topic `dlq` holds `n` messages.
pub async fn until_dead_lettered(broker: MemoryBroker, dlq: &'static str, n: usize) {
    until(move || {
        broker
            .group_stats(dlq, dead_letter::DEAD_LETTER_GROUP)
            .is_some_and(|s| s.total() == n)
    })
    .await;
}

/// A handler that counts its runs in `runs` and fails permanently with `error`.
pub fn failing_permanently(
    runs: Arc<std::sync::atomic::AtomicUsize>,
    error: &'static str,
) -> impl tower_service::Service<
    messaging_core::Incoming,
    Response = (),
    Error = messaging_core::HandlerError,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    messaging_core::handler_fn(move |_msg: messaging_core::Incoming| {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Err::<(), _>(messaging_core::HandlerError::permanent(error))
        }
    })
}
