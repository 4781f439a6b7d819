//! Fan-out: one `order.created` stream, three subscription groups; every group gets every
//! event. `cargo run -p messaging-examples --bin fan_out` (any broker: `MESSAGING_URL`)

use std::time::Duration;

use messaging::{
    Delivery, EventBuilder, EventExt, Publisher, SubscribeOptions, Subscriber, Subscription,
};
use messaging_examples::{OrderCreated, broker, fresh};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = broker().await?;
    let topic = fresh("orders");
    let mut groups = Vec::new();
    for group in ["billing", "shipping", "analytics"] {
        let sub = broker
            .subscriber()
            .subscribe(&topic, SubscribeOptions::new(group))
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
                &topic,
                EventBuilder::new("order-service", "order.created")
                    .json(&order)
                    .build()?,
            )
            .await?;
    }
    for (group, sub) in &mut groups {
        let mut seen = Vec::new();
        for _ in 0..3 {
            let d = tokio::time::timeout(Duration::from_secs(30), sub.recv()).await??;
            seen.push(d.event()?.data_json::<OrderCreated>()?.order_id);
            d.ack().await?;
        }
        seen.sort();
        println!("{group:>9} got {}", seen.join(", "));
        if seen != ["ORD-5678", "ORD-5679", "ORD-5680"] {
            return Err(format!("{group} missed events").into());
        }
    }
    for (_, sub) in &mut groups {
        sub.close().await?;
    }
    Ok(())
}
