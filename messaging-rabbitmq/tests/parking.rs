//! A message whose dead letter the broker always refuses is parked by RabbitMQ's own
//! dead-lettering (the quorum queue's delivery limit), and its handler runs once — not a
//! delayed-nack cycle that resets the delivery count forever (issue 12 item 2).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use messaging_core::dead_letter::DEAD_LETTER_GROUP;
use messaging_core::handler::{HandlerError, Incoming, handler_fn};
use messaging_core::middleware::retry::RetryPolicy;
use messaging_core::runtime::Consumer;
use messaging_core::{
    AttributesReader, BoxFuture, Delivery, DynPublisher, Event, EventBuilder, Features,
    PublishBatchError, PublishError, PublishErrorKind, Publisher, Receipt, SubscribeOptions,
    Subscriber, Subscription,
};
use messaging_rabbitmq::{RabbitConfig, RabbitPublisher};

mod common;
use common::{config, connect};

/// Publishes through RabbitMQ, but refuses everything sent to one topic, as a dead-letter
/// topic whose policy rejects every message would.
struct RefusingTopic {
    inner: RabbitPublisher,
    refused: String,
}

impl DynPublisher for RefusingTopic {
    fn publish_dyn<'a>(
        &'a self,
        topic: &'a str,
        event: Event,
    ) -> BoxFuture<'a, Result<Receipt, PublishError>> {
        Box::pin(async move {
            if topic == self.refused {
                return Err(PublishError::new(PublishErrorKind::Rejected)
                    .with_detail("refused by the test"));
            }
            self.inner.publish(topic, event).await
        })
    }

    fn publish_batch_dyn<'a>(
        &'a self,
        topic: &'a str,
        events: Vec<Event>,
    ) -> BoxFuture<'a, Result<Vec<Receipt>, PublishBatchError>> {
        self.inner.publish_batch_dyn(topic, events)
    }

    fn close_dyn(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        self.inner.close_dyn()
    }

    fn features_dyn(&self) -> Features {
        self.inner.features_dyn()
    }
}

#[tokio::test]
async fn an_unpublishable_dead_letter_is_parked_by_the_delivery_limit() {
    let broker = connect(RabbitConfig {
        max_deliveries: 3,
        ..config()
    })
    .await;
    let topic = common::unique("pk", "orders");
    let dlq = format!("{topic}.dlq");
    let runs = Arc::new(AtomicUsize::new(0));
    let r = runs.clone();
    let handler = handler_fn(move |_msg: Incoming| {
        let r = r.clone();
        async move {
            r.fetch_add(1, Ordering::SeqCst);
            Err::<(), _>(HandlerError::permanent("bad order"))
        }
    });
    let publisher = Arc::new(RefusingTopic {
        inner: broker.publisher(),
        refused: dlq.clone(),
    });
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher,
        topic.as_str(),
        SubscribeOptions::new("g"),
    )
    .retry(RetryPolicy::no_retries())
    .build(handler);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(consumer.run(async move {
        let _ = stopped.await;
    }));
    // The consumer declared the group and the dead-letter group before this is read.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut parked = broker
        .subscriber()
        .subscribe(&dlq, SubscribeOptions::new(DEAD_LETTER_GROUP))
        .await
        .unwrap();
    let e = EventBuilder::new("t", "order.created")
        .id("poison")
        .build()
        .unwrap();
    broker.publisher().publish(&topic, e).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(60), parked.recv())
        .await
        .expect("RabbitMQ moved the message to the dead-letter topic after its delivery limit")
        .unwrap();
    assert_eq!(d.event().unwrap().id(), "poison");
    d.ack().await.unwrap();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the handler ran once; the redeliveries only retried the dead-letter publish"
    );
    let _ = stop.send(());
    let _ = tokio::time::timeout(Duration::from_secs(30), run).await;
}
