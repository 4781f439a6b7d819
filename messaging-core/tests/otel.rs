//! With feature `opentelemetry`: a delivery's span continues the incoming trace, and what the
//! handler publishes carries the handler span as parent.
#![cfg(feature = "opentelemetry")]

use std::sync::Arc;
use std::time::Duration;

use messaging_core::handler::{HandlerError, Incoming, handler_fn};
use messaging_core::runtime::{Consumer, Correlated};
use messaging_core::{
    Delivery, DynPublisher, EventBuilder, EventExt, Publisher, SubscribeOptions, Subscriber,
    Subscription,
};
use messaging_testkit::MemoryBroker;
use opentelemetry::trace::TracerProvider as _;
use tracing_subscriber::layer::SubscriberExt;

const INCOMING: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

#[tokio::test(flavor = "current_thread")]
async fn handler_span_continues_the_trace_and_propagates_itself() {
    let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    let _guard = tracing::subscriber::set_default(subscriber);

    let broker = MemoryBroker::new();
    let out = Correlated(broker.publisher());
    let handler = handler_fn(move |msg: Incoming| {
        let out = out.clone();
        async move {
            let next = EventBuilder::new("billing", "invoice.issued")
                .json(&msg.data::<u32>()?)
                .build()?;
            out.publish("invoices", next).await?;
            Ok::<(), HandlerError>(())
        }
    });
    let mut invoices = broker
        .subscriber()
        .subscribe("invoices", SubscribeOptions::new("audit"))
        .await
        .unwrap();
    let dlq: Arc<dyn DynPublisher> = Arc::new(broker.publisher());
    let consumer = Consumer::builder(
        broker.subscriber(),
        dlq,
        "orders",
        SubscribeOptions::new("billing"),
    )
    .build(handler);
    let run = tokio::spawn(consumer.run(tokio::time::sleep(Duration::from_millis(300))));
    tokio::time::sleep(Duration::from_millis(20)).await;
    let order = EventBuilder::new("shop", "order.created")
        .traceparent(INCOMING)
        .json(&7)
        .build()
        .unwrap();
    broker.publisher().publish("orders", order).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(5), invoices.recv())
        .await
        .unwrap()
        .unwrap();
    let tp = d.event().unwrap().traceparent().unwrap().to_owned();
    let parts: Vec<&str> = tp.split('-').collect();
    assert_eq!(
        parts[1], "0af7651916cd43dd8448eb211c80319c",
        "same trace: {tp}"
    );
    assert_ne!(
        parts[2], "b7ad6b7169203331",
        "the handler's span is the new parent: {tp}"
    );
    assert_eq!(parts[3], "01");
    run.await.unwrap().unwrap();
}
