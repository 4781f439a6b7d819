//! A running consumer rides out a Kafka broker crash: a nisshi broker of the test's own (its
//! SQLite database in a fresh directory) is SIGKILLed under a live publisher and consumer and
//! started again on the same database. Every acknowledged publish is handled, and the consumer
//! settles again soon after the broker is back.

mod common;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use messaging_core::{StartFrom, SubscribeOptions};
use messaging_kafka::KafkaConfig;
use messaging_testkit::outage::{BrokerProcess, broker_cache, ride_out};

/// The nisshi binary `scripts/brokers/nisshi.sh` builds.
fn nisshi() -> PathBuf {
    if let Some(home) = std::env::var_os("NISSHI_HOME") {
        return PathBuf::from(home).join("bin/nisshi");
    }
    broker_cache().join("nisshi-0.8.1/bin/nisshi")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_rides_out_a_killed_and_restarted_broker() {
    let port = BrokerProcess::free_port().expect("a free port");
    let dir = std::env::temp_dir().join(format!("nisshi-outage-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(dir.join("data")).expect("data directory");
    let listener = format!("tcp://127.0.0.1:{port}");
    let args = vec![
        "broker".into(),
        "--listener-url".into(),
        listener.clone(),
        "--advertised-listener-url".into(),
        listener,
        "--storage-engine".into(),
        "sqlite://data/nisshi.db".into(),
        "--group-initial-rebalance-delay".into(),
        "0s".into(),
        "--group-poll-interval".into(),
        "100ms".into(),
    ];
    let mut broker_process = BrokerProcess::start(nisshi(), args, &dir, port).unwrap_or_else(|e| {
        panic!("cannot start nisshi (run scripts/brokers/nisshi.sh to build it): {e}")
    });
    let broker = common::connect(KafkaConfig {
        partitions: 2,
        commit_metadata: false,
        ..common::test_config(&format!("127.0.0.1:{port}"))
    })
    .await;
    let topic = common::unique("outage");
    let down = Duration::from_secs(5);
    let report = ride_out(
        broker.subscriber(),
        Arc::new(broker.publisher()),
        &topic,
        SubscribeOptions::new("g").start_from(StartFrom::Earliest),
        (40, 40),
        async {
            broker_process.kill().expect("SIGKILL nisshi");
            tokio::time::sleep(down).await;
            broker_process
                .restart()
                .expect("nisshi starts again on its database");
        },
        Duration::from_secs(120),
    )
    .await;
    eprintln!("nisshi killed for {down:?}: {report:?}");
    report.assert_rode_out(80, Duration::from_secs(60), true);
    drop(broker_process);
    let _ = std::fs::remove_dir_all(&dir);
}
