//! The conformance suite against nisshi, a Kafka-protocol broker, on 127.0.0.1:9092 (started
//! by `scripts/brokers/nisshi.sh`). Fails with a clear message if it is unreachable.

mod common;

use common::KafkaHarness;
use messaging_testkit::conformance::Harness as _;

messaging_testkit::conformance_suite!(
    KafkaHarness::nisshi(),
    flavor = "multi_thread",
    worker_threads = 2
);

#[tokio::test]
async fn harness_features_match_the_adapter() {
    let h = KafkaHarness::nisshi();
    assert_eq!(h.features(), h.broker().await.features());
}
