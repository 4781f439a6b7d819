//! The conformance suite against the real RabbitMQ on 127.0.0.1:5672 (started by
//! `scripts/brokers/rabbitmq.sh`). Fails with a clear message if it is unreachable.

use messaging_testkit::conformance::Harness as _;

mod common;
use common::harness::RabbitHarness;

messaging_testkit::conformance_suite!(
    RabbitHarness::new(),
    flavor = "multi_thread",
    worker_threads = 2
);

#[tokio::test]
async fn harness_features_match_the_adapter() {
    let h = RabbitHarness::new();
    assert_eq!(h.features(), h.broker().await.features());
}
