//! Restarts the real RabbitMQ node (`rabbitmqctl stop_app` / `start_app`) under a running
//! publisher and subscription: the adapter reconnects, re-declares and resumes, and the
//! message that was unacked when the node went down is delivered again. Its own test binary,
//! so no other test runs while the node is down.

use std::time::Duration;

use messaging_core::{
    AttributesReader, Delivery, EventBuilder, Publisher, SubscribeOptions, Subscriber, Subscription,
};
use messaging_rabbitmq::{RabbitBroker, RabbitConfig};

const URI: &str = messaging_testkit::support::TestBroker::RabbitMq.address();

/// `rabbitmqctl`, failing the test if it fails (a node that does not come back within 120 s
/// included).
fn rabbitmqctl(args: &[&str]) {
    messaging_testkit::outage::rabbitmqctl(args).unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_restart_mid_stream_loses_nothing() {
    let broker = RabbitBroker::connect(RabbitConfig {
        queue_expires: Some(Duration::from_secs(120)),
        ..RabbitConfig::new(URI)
    })
    .await
    .unwrap_or_else(|e| panic!("RabbitMQ is not reachable (run scripts/brokers/rabbitmq.sh): {e}"));
    let topic = format!("restart-{}", uuid::Uuid::new_v4().simple());
    let mut sub = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("g"))
        .await
        .unwrap();
    broker
        .publisher()
        .publish(
            &topic,
            EventBuilder::new("t", "t").id("before").build().unwrap(),
        )
        .await
        .unwrap();
    let held = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .unwrap()
        .unwrap();

    rabbitmqctl(&["-q", "stop_app"]);
    rabbitmqctl(&["-q", "start_app"]);
    rabbitmqctl(&["-q", "await_startup"]);

    assert!(
        held.ack().await.is_err(),
        "an ack from before the restart cannot succeed"
    );
    let mut published = false;
    for _ in 0..120 {
        let e = EventBuilder::new("t", "t").id("after").build().unwrap();
        match broker.publisher().publish(&topic, e).await {
            Ok(_) => {
                published = true;
                break;
            }
            Err(e) => {
                assert!(e.is_transient(), "a restarting broker is transient: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    assert!(published, "the publisher did not recover within 30 s");
    let mut ids = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ids.len() < 2 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "consuming did not resume: got {ids:?}"
        );
        match tokio::time::timeout(Duration::from_secs(10), sub.recv()).await {
            Ok(Ok(d)) => {
                ids.push(d.event().unwrap().id().to_owned());
                d.ack().await.unwrap();
            }
            Ok(Err(e)) => {
                assert!(e.is_transient(), "{e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(_) => {}
        }
    }
    ids.sort();
    assert_eq!(
        ids,
        ["after", "before"],
        "the unacked message came back, nothing was lost"
    );
}
