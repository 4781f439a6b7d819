//! Retry with backoff, the dead-letter queue, and replay: a flaky dependency recovers within
//! the retries; a bug sends orders to the DLQ; after the fix they are replayed.
//! `cargo run -p messaging-examples --bin retry_dlq_replay`

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use messaging_core::handler::{HandlerError, Incoming, handler_fn};
use messaging_core::middleware::dead_letter::{self, DeadLetterMetadata, ReplayOptions};
use messaging_core::middleware::retry::RetryPolicy;
use messaging_core::runtime::Consumer;
use messaging_core::{
    Delivery, DynPublisher, EventBuilder, Publisher, SubscribeOptions, Subscriber, Subscription,
};
use messaging_examples::OrderCreated;
use messaging_testkit::MemoryBroker;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The seed's policy, with shorter delays so the example runs in a second.
    let policy: RetryPolicy = serde_json::from_value(serde_json::json!({
        "max_retries": 3, "backoff": "exponential", "initial_delay": "50ms", "max_delay": "1s", "dlq": "orders-dlq"
    }))?;
    let broker = MemoryBroker::new();
    let publisher: Arc<dyn DynPublisher> = Arc::new(broker.publisher());
    let flaky_calls = Arc::new(AtomicU32::new(0));
    let bug = Arc::new(AtomicBool::new(true));
    let billed = Arc::new(AtomicU32::new(0));
    let (f, b, n) = (flaky_calls.clone(), bug.clone(), billed.clone());
    let handler = handler_fn(move |msg: Incoming| {
        let (flaky, bug, billed) = (f.clone(), b.clone(), n.clone());
        async move {
            let order: OrderCreated = msg.data()?;
            if order.order_id == "ORD-1" && flaky.fetch_add(1, Ordering::SeqCst) < 2 {
                return Err(HandlerError::transient("payment provider timed out"));
            }
            if order.currency == "XXX" && bug.load(Ordering::SeqCst) {
                return Err(HandlerError::permanent(format!(
                    "unsupported currency {}",
                    order.currency
                )));
            }
            billed.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher.clone(),
        "orders",
        SubscribeOptions::new("billing"),
    )
    .retry(policy)
    .build(handler);
    let stop = Arc::new(tokio::sync::Notify::new());
    let s = stop.clone();
    let run = tokio::spawn(consumer.run(async move { s.notified().await }));
    tokio::time::sleep(Duration::from_millis(20)).await;

    for (id, currency) in [
        ("ORD-1", "USD"),
        ("ORD-2", "XXX"),
        ("ORD-3", "XXX"),
        ("ORD-4", "EUR"),
    ] {
        let order = OrderCreated {
            order_id: id.into(),
            amount: 10.0,
            currency: currency.into(),
        };
        broker
            .publisher()
            .publish(
                "orders",
                EventBuilder::new("shop", "order.created")
                    .json(&order)
                    .build()?,
            )
            .await?;
    }
    while billed.load(Ordering::SeqCst) < 2 || dead_letter::depth(&broker, "orders-dlq").await? < 2
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "ORD-1 failed {} times, then succeeded on retry",
        flaky_calls.load(Ordering::SeqCst) - 1
    );
    println!(
        "billed: {}, dead-letter depth: {}",
        billed.load(Ordering::SeqCst),
        dead_letter::depth(&broker, "orders-dlq").await?
    );

    // Inspect without removing: peek at the DLQ's metadata.
    let mut peek = broker
        .subscriber()
        .subscribe(
            "orders-dlq",
            SubscribeOptions::new(dead_letter::DEAD_LETTER_GROUP),
        )
        .await?;
    for _ in 0..2 {
        let d = peek.recv().await?;
        let m = DeadLetterMetadata::from_event(d.event()?).ok_or("no metadata")?;
        println!(
            "  dead letter: reason={} attempts={} from {}/{}: {}",
            m.reason, m.attempts, m.topic, m.group, m.error
        );
        d.nack(None).await?;
    }
    peek.close().await?;
    drop(peek);

    bug.store(false, Ordering::SeqCst); // the fix is deployed
    let report = dead_letter::replay(
        &broker.subscriber(),
        &broker.publisher(),
        "orders-dlq",
        ReplayOptions::new().idle(Duration::from_millis(200)),
    )
    .await?;
    while billed.load(Ordering::SeqCst) < 4 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "replayed {} dead letters; billed: {}, dead-letter depth: {}",
        report.replayed,
        billed.load(Ordering::SeqCst),
        dead_letter::depth(&broker, "orders-dlq").await?
    );
    stop.notify_waiters();
    run.await??;
    if report.replayed != 2 || dead_letter::depth(&broker, "orders-dlq").await? != 0 {
        return Err("replay did not empty the dead-letter queue".into());
    }
    Ok(())
}
