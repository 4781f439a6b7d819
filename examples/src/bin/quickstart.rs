//! Quickstart: the `order.created` event published and consumed at-least-once.
//!
//! Runs on the in-memory broker: `cargo run -p messaging-examples --bin quickstart`.
//! One payment attempt fails on purpose, to show a nack and the redelivery that follows.

use std::time::Duration;

use messaging_core::{
    AttributesReader, Delivery, EventBuilder, EventExt, Publisher, SubscribeOptions, Subscriber,
    Subscription,
};
use messaging_examples::OrderCreated;
use messaging_testkit::MemoryBroker;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = MemoryBroker::new();
    println!("broker: {} (in-process)", broker.features().broker);

    // The billing service's group exists before anything is published, like a durable queue.
    let mut billing = broker
        .subscriber()
        .subscribe("orders", SubscribeOptions::new("billing"))
        .await?;

    let publisher = broker.publisher();
    let orders = [
        ("ORD-5678", 99.99),
        ("ORD-5679", 12.50),
        ("ORD-5680", 230.00),
    ];
    for (order_id, amount) in orders {
        let event = EventBuilder::new("order-service", "order.created")
            .json(&OrderCreated {
                order_id: order_id.into(),
                amount,
                currency: "USD".into(),
            })
            .ordering_key(order_id)
            .correlation_id(format!("checkout-{order_id}"))
            .build()?;
        let receipt = publisher.publish("orders", event).await?;
        println!(
            "published order.created {order_id} (offset {})",
            receipt.offset.unwrap_or_default()
        );
    }

    let mut billed = 0;
    let mut redeliveries = 0;
    let mut failed_once = false;
    while billed < orders.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(5), billing.recv()).await??;
        let event = delivery.event()?;
        let order: OrderCreated = event.data_json()?;
        let attempt = delivery.attempt();
        if order.order_id == "ORD-5679" && !failed_once {
            // The payment provider is down: nack, so the broker redelivers it shortly.
            failed_once = true;
            println!(
                "billing got {} {} (attempt {attempt}): payment provider unavailable, nack -> redeliver in 200ms",
                event.ty(),
                order.order_id
            );
            delivery.nack(Some(Duration::from_millis(200))).await?;
            continue;
        }
        println!(
            "billing got {} {} {:.2} {} (attempt {attempt}, correlation {}): billed, ack",
            event.ty(),
            order.order_id,
            order.amount,
            order.currency,
            event.correlation_id().unwrap_or("-"),
        );
        if attempt > 1 {
            redeliveries += 1;
        }
        delivery.ack().await?;
        billed += 1;
    }

    let left = broker.group_stats("orders", "billing").map(|s| s.total());
    println!(
        "done: {billed} orders billed, {redeliveries} after redelivery, {} left in the queue",
        left.unwrap_or(0)
    );
    if left != Some(0) || redeliveries != 1 {
        return Err("at-least-once delivery did not hold".into());
    }
    Ok(())
}
