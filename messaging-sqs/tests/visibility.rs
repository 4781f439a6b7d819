//! How long a received message stays invisible, on moto at 127.0.0.1:4566 (started by
//! `scripts/brokers/moto.sh`): extending a delivery's deadline never shortens it. Fresh
//! names, bounded waits, a clear failure when moto is down.

use std::time::Duration;

use messaging_core::{
    AttributesReader, Delivery, EventBuilder, Publisher, SubscribeOptions, Subscriber, Subscription,
};

mod common;
use common::{WAIT, broker};

/// A delivery with a 10 s ack deadline, extended "by 1 s": it must stay invisible for the
/// rest of its 10 s (an extension that set 1 s would hand it out again, attempt 2, after
/// about a second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_short_extension_does_not_shorten_the_deadline() {
    let b = broker().await;
    let topic = format!("vis-{}", uuid::Uuid::new_v4().simple());
    let mut sub = b
        .subscriber()
        .subscribe(
            &topic,
            SubscribeOptions::new("g").ack_deadline(Duration::from_secs(10)),
        )
        .await
        .unwrap();
    let e = EventBuilder::new("urn:test", "test.event")
        .id("once")
        .build()
        .unwrap();
    b.publisher().publish(&topic, e).await.unwrap();
    let mut d = tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("a delivery within 20 s")
        .expect("receive");
    assert_eq!(d.event().unwrap().id(), "once");
    d.extend_deadline(Duration::from_secs(1)).await.unwrap();
    if let Ok(again) = tokio::time::timeout(Duration::from_secs(4), sub.recv()).await {
        let again = again.expect("receive");
        panic!(
            "handed out again (attempt {}) after an extension by 1 s shortened the deadline",
            again.attempt()
        );
    }
    d.ack().await.unwrap();
}
