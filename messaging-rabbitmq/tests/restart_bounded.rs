//! Every publish returns within its bound across repeated restarts of the real RabbitMQ node
//! (`rabbitmqctl stop_app` / `start_app`), outages short and long, and publishing resumes
//! within seconds of the node being back. Its own test binary, so no other test runs while
//! the node is down.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use messaging_core::{EventBuilder, Publisher};
use messaging_rabbitmq::{RabbitBroker, RabbitConfig};

const URI: &str = messaging_testkit::support::TestBroker::RabbitMq.address();

async fn rabbitmqctl(args: &[&str]) {
    messaging_testkit::outage::rabbitmqctl_async(args)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishing_never_hangs_and_resumes_after_every_restart() {
    let confirm_timeout = Duration::from_secs(10);
    let broker = RabbitBroker::connect(RabbitConfig {
        confirm_timeout,
        ..RabbitConfig::new(URI)
    })
    .await
    .unwrap_or_else(|e| panic!("RabbitMQ is not reachable (run scripts/brokers/rabbitmq.sh): {e}"));
    let topic = format!("bounded-{}", uuid::Uuid::new_v4().simple());
    let accepted = Arc::new(AtomicU64::new(0));
    let publisher = broker.publisher();
    let counter = accepted.clone();
    let topic2 = topic.clone();
    // A publish (channel, declaration, send and confirm) may fail while the node is away, but
    // it returns within the confirm timeout plus the time to open a channel.
    let bound = confirm_timeout * 2 + Duration::from_secs(5);
    let publishing: tokio::task::JoinHandle<Result<(), String>> = tokio::spawn(async move {
        let mut n = 0u64;
        loop {
            let events = (0..10)
                .map(|i| {
                    EventBuilder::new("t", "t")
                        .id(format!("{n}-{i}"))
                        .build()
                        .unwrap()
                })
                .collect();
            n += 1;
            let started = Instant::now();
            match tokio::time::timeout(bound, publisher.publish_batch(&topic2, events)).await {
                Err(_) => return Err(format!("publish call {n} did not return within {bound:?}")),
                Ok(Ok(r)) => {
                    counter.fetch_add(r.len() as u64, Ordering::Relaxed);
                }
                Ok(Err(e)) => {
                    if !e.is_transient() {
                        return Err(format!("a restarting node is transient: {e}"));
                    }
                    if started.elapsed() < Duration::from_millis(100) {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    for down in [1, 6, 12] {
        tokio::time::sleep(Duration::from_secs(2)).await;
        rabbitmqctl(&["-q", "stop_app"]).await;
        tokio::time::sleep(Duration::from_secs(down)).await;
        rabbitmqctl(&["-q", "start_app"]).await;
        rabbitmqctl(&["-q", "await_startup"]).await;
        let before = accepted.load(Ordering::Relaxed);
        let back = Instant::now();
        while accepted.load(Ordering::Relaxed) == before {
            if publishing.is_finished() {
                break;
            }
            assert!(
                back.elapsed() < Duration::from_secs(30),
                "publishing did not resume within 30 s of the node being back after {down} s down"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!(
            "{down} s down: publishing resumed {:?} after the node was back",
            back.elapsed()
        );
    }
    assert!(
        !publishing.is_finished(),
        "{}",
        publishing.await.unwrap().unwrap_err()
    );
    publishing.abort();
}
