//! Quickstart: the `order.created` event published and consumed at-least-once.
//!
//! `cargo run -p messaging-examples --bin quickstart` runs it on the in-memory broker; with
//! `MESSAGING_URL=kafka://127.0.0.1:9092` (or `amqp://…`, `sqs://…`) the same code runs on a
//! real broker. One payment attempt fails on purpose, to show a nack and the redelivery that
//! follows.

use std::time::Duration;

use messaging::{
    AttributesReader, Delivery, EventBuilder, EventExt, Inspect, Publisher, SubscribeOptions,
    Subscriber, Subscription,
};
use messaging_examples::{OrderCreated, broker, fresh, wait_until};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = broker().await?;
    let topic = fresh("orders");

    // The billing service's group exists before anything is published, like a durable queue.
    let mut billing = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("billing"))
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
        let receipt = publisher.publish(&topic, event).await?;
        println!("published order.created {order_id} to {topic} ({receipt:?})");
    }

    let mut billed = 0;
    let mut redeliveries = 0;
    let mut failed_once = false;
    while billed < orders.len() {
        let delivery = tokio::time::timeout(Duration::from_secs(30), billing.recv()).await??;
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
    billing.close().await?;

    // Nothing is left for the group once every ack has reached the broker.
    wait_until("the queue to drain", Duration::from_secs(30), async || {
        broker.depth(&topic, "billing").await.ok().flatten() == Some(0)
    })
    .await?;
    println!("done: {billed} orders billed, {redeliveries} after redelivery, 0 left in the queue");
    if redeliveries != 1 {
        return Err("at-least-once delivery did not hold".into());
    }
    Ok(())
}
