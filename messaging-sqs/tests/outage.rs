//! A running consumer rides out an SQS outage: a moto server of the test's own is frozen with
//! SIGSTOP for 15 s under a live publisher and consumer, then continued. Every acknowledged
//! publish is handled, and the consumer settles again soon after moto answers.

mod common;

use std::sync::Arc;
use std::time::Duration;

use messaging_core::SubscribeOptions;
use messaging_sqs::SqsConfig;
use messaging_testkit::outage::{BrokerProcess, broker_cache, ride_out};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_rides_out_moto_frozen_for_15_seconds() {
    let port = BrokerProcess::free_port().expect("a free port");
    let dir = std::env::temp_dir().join(format!("moto-outage-{port}"));
    let moto = BrokerProcess::start(
        broker_cache().join("moto-venv/bin/moto_server"),
        vec![
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ],
        &dir,
        port,
    )
    .unwrap_or_else(|e| {
        panic!("cannot start moto (run scripts/brokers/moto.sh to install it): {e}")
    });
    let endpoint = format!("http://127.0.0.1:{port}");
    let broker = common::broker_with(SqsConfig {
        endpoint_url: Some(endpoint),
        call_timeout: Duration::from_secs(5),
        ..common::config()
    })
    .await;
    let topic = format!("outage-{}", uuid::Uuid::new_v4().simple());
    let frozen = Duration::from_secs(15);
    let report = ride_out(
        broker.subscriber(),
        Arc::new(broker.publisher()),
        &topic,
        SubscribeOptions::new("g"),
        (40, 40),
        async {
            moto.stop().expect("SIGSTOP moto");
            tokio::time::sleep(frozen).await;
            moto.cont().expect("SIGCONT moto");
        },
        Duration::from_secs(120),
    )
    .await;
    eprintln!("moto frozen {frozen:?}: {report:?}");
    report.assert_rode_out(80, Duration::from_secs(30), true);
}
