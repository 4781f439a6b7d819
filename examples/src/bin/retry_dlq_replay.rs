//! Retry with backoff, the dead-letter queue, and replay: a flaky dependency recovers within
//! the retries; a bug sends orders to the DLQ; after the fix they are replayed.
//! `cargo run -p messaging-examples --bin retry_dlq_replay` (any broker: `MESSAGING_URL`)

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::Duration;

use messaging::dead_letter::{self, DeadLetterMetadata, ReplayOptions};
use messaging::handler::{HandlerError, Incoming, handler_fn};
use messaging::middleware::retry::RetryPolicy;
use messaging::{Delivery, EventBuilder, Publisher, SubscribeOptions, Subscriber, Subscription};
use messaging_examples::{OrderCreated, Shutdown, broker, fresh, wait_until};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = broker().await?;
    let (topic, dlq) = (fresh("orders"), fresh("orders-dlq"));
    // The default policy's shape, with shorter delays so the example runs in a second.
    let policy: RetryPolicy = serde_json::from_value(serde_json::json!({
        "max_retries": 3, "backoff": "exponential", "initial_delay": "50ms", "max_delay": "1s", "dlq": dlq
    }))?;
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
    // The group exists before the first order, so none is published into the void.
    broker
        .subscriber()
        .declare(&topic, SubscribeOptions::new("billing"))
        .await?;
    let consumer = broker
        .consumer(&topic, SubscribeOptions::new("billing"))
        .retry(policy)
        .build(handler);
    let stop = Shutdown::new();
    let run = tokio::spawn(consumer.run(stop.signal()));

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
                &topic,
                EventBuilder::new("shop", "order.created")
                    .json(&order)
                    .build()?,
            )
            .await?;
    }
    wait_until(
        "two orders billed and two dead-lettered",
        Duration::from_secs(60),
        async || {
            billed.load(Ordering::SeqCst) >= 2
                && dead_letter::depth(&broker, &dlq).await.unwrap_or(0) >= 2
        },
    )
    .await?;
    println!(
        "ORD-1 failed {} times, then succeeded on retry",
        flaky_calls.load(Ordering::SeqCst) - 1
    );
    println!(
        "billed: {}, dead-letter depth: {}",
        billed.load(Ordering::SeqCst),
        dead_letter::depth(&broker, &dlq).await?
    );

    // Inspect without removing: peek at the DLQ's metadata.
    let mut peek = broker
        .subscriber()
        .subscribe(&dlq, SubscribeOptions::new(dead_letter::DEAD_LETTER_GROUP))
        .await?;
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(30), peek.recv()).await??;
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
        &dlq,
        ReplayOptions::new().limit(2).idle(Duration::from_secs(10)),
    )
    .await?;
    wait_until(
        "the replayed orders billed",
        Duration::from_secs(60),
        async || billed.load(Ordering::SeqCst) >= 4,
    )
    .await?;
    // The replay's acks reach the broker before the depth says zero.
    wait_until(
        "the dead-letter queue to drain",
        Duration::from_secs(30),
        async || dead_letter::depth(&broker, &dlq).await.ok() == Some(0),
    )
    .await?;
    println!(
        "replayed {} dead letters; billed: {}, dead-letter depth: {}",
        report.replayed,
        billed.load(Ordering::SeqCst),
        dead_letter::depth(&broker, &dlq).await?
    );
    stop.stop();
    run.await??;
    if report.replayed != 2 || dead_letter::depth(&broker, &dlq).await? != 0 {
        return Err("replay did not empty the dead-letter queue".into());
    }
    Ok(())
}
