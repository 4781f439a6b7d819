//! The conformance suite against moto on 127.0.0.1:4566 (started by
//! `scripts/brokers/moto.sh`). Fails with a clear message if it is unreachable.

use messaging_testkit::conformance::Harness as _;

mod common;
use common::harness::SqsHarness;

messaging_testkit::conformance_suite!(
    SqsHarness::new(),
    flavor = "multi_thread",
    worker_threads = 2
);

#[tokio::test]
async fn harness_features_match_the_adapter() {
    let h = SqsHarness::new();
    assert_eq!(h.features(), h.broker().await.features());
}
