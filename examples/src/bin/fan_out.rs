//! Fan-out: one `order.created` stream, three subscription groups; every group gets every
//! event. `cargo run -p messaging-examples --bin fan_out`

use std::time::Duration;

use messaging_core::{
    Delivery, EventBuilder, EventExt, Publisher, SubscribeOptions, Subscriber, Subscription,
};
use messaging_examples::OrderCreated;
use messaging_testkit::MemoryBroker;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = MemoryBroker::new();
    let mut groups = Vec::new();
    for group in ["billing", "shipping", "analytics"] {
        let sub = broker
            .subscriber()
            .subscribe("orders", SubscribeOptions::new(group))
            .await?;
        groups.push((group, sub));
    }
    let publisher = broker.publisher();
    for (i, amount) in [99.99, 12.5, 230.0].into_iter().enumerate() {
        let order = OrderCreated {
            order_id: format!("ORD-{}", 5678 + i),
            amount,
            currency: "USD".into(),
        };
        publisher
            .publish(
                "orders",
                EventBuilder::new("order-service", "order.created")
                    .json(&order)
                    .build()?,
            )
            .await?;
    }
    for (group, sub) in &mut groups {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let d = tokio::time::timeout(Duration::from_secs(5), sub.recv()).await??;
            seen.push(d.event()?.data_json::<OrderCreated>()?.order_id);
            d.ack().await?;
        }
        println!("{group:>9} got {}", seen.join(", "));
        if seen.len() != 3 {
            return Err(format!("{group} missed events").into());
        }
    }
    Ok(())
}
