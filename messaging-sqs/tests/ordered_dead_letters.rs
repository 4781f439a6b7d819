//! An ordered group with `max_deliveries` under the consumer runtime, against moto on
//! 127.0.0.1:4566 (`scripts/brokers/moto.sh`). Fails with a clear message if moto is
//! unreachable.
//!
//! The group's queue is a FIFO queue, so its redrive target — the dead-letter topic's
//! `dead-letters` queue — must be FIFO too, hence the dead-letter topic an SNS FIFO topic. The
//! runtime must not create that topic as a standard one before the group's subscription
//! declares it.

use std::sync::Arc;
use std::time::Duration;

use messaging_core::dead_letter::{DEAD_LETTER_GROUP, DeadLetterMetadata};
use messaging_core::handler::{HandlerError, Incoming, handler_fn};
use messaging_core::middleware::retry::RetryPolicy;
use messaging_core::runtime::Consumer;
use messaging_core::{
    AttributesReader, Delivery, EventBuilder, Publisher, SubscribeOptions, Subscriber, Subscription,
};

mod common;
use common::{WAIT, broker};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_group_with_max_deliveries_starts_and_dead_letters() {
    let b = broker().await;
    let topic = format!("st-ordered-dlq-{}", uuid::Uuid::new_v4().simple());
    let dlq = format!("{topic}.dlq");
    let options = SubscribeOptions::new("g")
        .ordered(true)
        .max_deliveries(2)
        .ack_deadline(Duration::from_secs(5));
    let consumer = Consumer::builder(b.subscriber(), Arc::new(b.publisher()), &topic, options)
        .retry(RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        })
        .drain_timeout(Duration::from_secs(5))
        .build(handler_fn(|_msg: Incoming| async {
            Err::<(), _>(HandlerError::permanent("poison"))
        }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(consumer.run(async move {
        let _ = stopped.await;
    }));
    // Start-up: the group's queue is subscribed to the (FIFO) topic, and the consumer keeps
    // running. CreateTopic is idempotent and returns the ARN.
    let topic_arn = b
        .sns()
        .create_topic()
        .name(format!("{topic}.fifo"))
        .attributes("FifoTopic", "true")
        .send()
        .await
        .unwrap()
        .topic_arn
        .expect("topic ARN");
    let end = tokio::time::Instant::now() + WAIT;
    loop {
        if run.is_finished() {
            let result = run.await.expect("consumer task");
            panic!("the consumer stopped at start-up: {result:?}");
        }
        let subscribed = b
            .sns()
            .list_subscriptions_by_topic()
            .topic_arn(&topic_arn)
            .send()
            .await
            .unwrap();
        if !subscribed.subscriptions().is_empty() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "the group is not subscribed after {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let poison = EventBuilder::new("urn:test", "test.event")
        .id("poison")
        .ordering_key("k")
        .build()
        .unwrap();
    b.publisher().publish(&topic, poison).await.unwrap();
    let mut dead = b
        .subscriber()
        .subscribe(&dlq, SubscribeOptions::new(DEAD_LETTER_GROUP))
        .await
        .unwrap();
    let d = tokio::time::timeout(WAIT, dead.recv())
        .await
        .expect("a dead letter within 20 s")
        .expect("receive");
    let e = d.event().unwrap();
    assert_eq!(e.id(), "poison");
    let meta = DeadLetterMetadata::from_event(e).expect("dead-letter metadata");
    assert_eq!(
        (meta.topic.as_str(), meta.group.as_str()),
        (topic.as_str(), "g")
    );
    d.ack().await.unwrap();
    dead.close().await.unwrap();
    let _ = stop.send(());
    let report = tokio::time::timeout(WAIT, run)
        .await
        .expect("the consumer stops")
        .expect("consumer task")
        .expect("the consumer ran");
    assert_eq!(report.dead_lettered, 1, "{report:?}");
}
