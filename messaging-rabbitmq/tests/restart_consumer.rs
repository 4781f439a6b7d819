//! A running consumer rides out a RabbitMQ node restart (`rabbitmqctl stop_app` / `start_app`)
//! under a live publisher: every acknowledged publish is handled, the consumer's readiness
//! fails while the node is down, and it settles again soon after the node is back; a consumer
//! whose queue is deleted under it subscribes again. Its own test binary, so no other test
//! runs while the node is down; its tests take turns.

mod common;

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use messaging_core::SubscribeOptions;
use messaging_testkit::outage::{rabbitmqctl_async, ride_out};

/// Held by each test: one restarts the node, which the others must not see.
static NODE: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// `rabbitmqctl`, failing the test if it fails.
async fn rabbitmqctl(args: &[&str]) {
    rabbitmqctl_async(args)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_rides_out_a_node_restart() {
    let _turn = NODE.lock().await;
    let broker = common::connect(common::config()).await;
    let topic = common::unique("restart", "consumer");
    let report = ride_out(
        broker.subscriber(),
        Arc::new(broker.publisher()),
        &topic,
        SubscribeOptions::new("g"),
        (40, 40),
        async {
            rabbitmqctl(&["-q", "stop_app"]).await;
            tokio::time::sleep(Duration::from_secs(2)).await;
            rabbitmqctl(&["-q", "start_app"]).await;
            rabbitmqctl(&["-q", "await_startup"]).await;
        },
        Duration::from_secs(120),
    )
    .await;
    eprintln!("RabbitMQ restarted: {report:?}");
    report.assert_rode_out(80, Duration::from_secs(60), true);
}

/// The queue names on the node that contain `part`.
async fn queues_named(part: &'static str) -> Vec<String> {
    let part = part.to_owned();
    tokio::task::spawn_blocking(move || {
        let out = Command::new("timeout")
            .args([
                "60",
                "rabbitmqctl",
                "-q",
                "list_queues",
                "name",
                "--no-table-headers",
            ])
            .output()
            .expect("rabbitmqctl runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::trim)
            .filter(|l| l.contains(&part))
            .map(ToOwned::to_owned)
            .collect()
    })
    .await
    .expect("rabbitmqctl task")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_whose_queue_is_deleted_subscribes_again() {
    let _turn = NODE.lock().await;
    use messaging_core::handler::{HandlerError, Incoming, handler_fn};
    use messaging_core::runtime::Consumer;
    use messaging_core::{AttributesReader, EventBuilder, Publisher};

    let broker = common::connect(common::config()).await;
    let topic: &'static str = Box::leak(common::unique("deleted", "queue").into_boxed_str());
    let seen: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let s = seen.clone();
    let consumer = Consumer::builder(
        broker.subscriber(),
        Arc::new(broker.publisher()),
        topic,
        SubscribeOptions::new("g"),
    )
    .build(handler_fn(move |msg: Incoming| {
        let s = s.clone();
        async move {
            s.lock().unwrap().push(msg.event().id().to_owned());
            Ok::<(), HandlerError>(())
        }
    }));
    let handle = consumer.handle();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(consumer.run(async move {
        let _ = stop_rx.await;
    }));
    let event = |id: &str| EventBuilder::new("urn:test", "t").id(id).build().unwrap();
    let until = async |n: usize| {
        let end = tokio::time::Instant::now() + Duration::from_secs(60);
        while seen.lock().unwrap().len() < n && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    broker
        .publisher()
        .publish(topic, event("one"))
        .await
        .unwrap();
    until(1).await;
    let queues = queues_named(topic).await;
    let main_queue = queues
        .iter()
        .find(|q| !q.contains("dlq") && !q.contains("dead") && !q.contains("delay"))
        .unwrap_or_else(|| panic!("the group's queue among {queues:?}"))
        .clone();
    let deleted_at = tokio::time::Instant::now();
    tokio::task::spawn_blocking(move || {
        Command::new("timeout")
            .args(["60", "rabbitmqctl", "-q", "delete_queue", &main_queue])
            .status()
            .expect("rabbitmqctl runs")
    })
    .await
    .unwrap();
    // The consumer notices (the broker cancels it), declares the queue again and resumes.
    let end = tokio::time::Instant::now() + Duration::from_secs(60);
    while handle.status().resubscribed == 0 && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = handle.status();
    assert_eq!(status.resubscribed, 1, "{status:?}");
    eprintln!(
        "subscribed again {:?} after the queue was deleted",
        deleted_at.elapsed()
    );
    broker
        .publisher()
        .publish(topic, event("two"))
        .await
        .unwrap();
    until(2).await;
    assert_eq!(*seen.lock().unwrap(), ["one", "two"]);
    let _ = stop_tx.send(());
    let report = run.await.unwrap().expect("the run ended by its shutdown");
    assert_eq!(report.resubscribed, 1);
}
