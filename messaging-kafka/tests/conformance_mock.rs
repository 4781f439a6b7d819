//! The conformance suite against librdkafka's in-process mock cluster: a second opinion on
//! the adapter, independent of the test broker.

mod common;

use common::KafkaHarness;

messaging_testkit::conformance_suite!(
    KafkaHarness::mock(),
    flavor = "multi_thread",
    worker_threads = 2
);
