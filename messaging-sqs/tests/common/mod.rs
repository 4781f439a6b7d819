//! Helpers shared by the SQS test files: moto's endpoint, a test configuration, a connected
//! broker that fails clearly when moto is down, and a JSON test event.
#![allow(dead_code, unreachable_pub, unused_imports)]

pub mod harness;

use std::time::Duration;

use messaging_core::{Event, EventBuilder};
use messaging_sqs::{SqsBroker, SqsConfig};
use messaging_testkit::support::TestBroker;

pub use messaging_testkit::support::unique;

/// moto, started by `scripts/brokers/moto.sh`.
pub const ENDPOINT: &str = TestBroker::Sqs.address();
/// Every wait for a message is bounded by this.
pub const WAIT: Duration = Duration::from_secs(20);

/// Short receive waits and an hour's retention, against moto.
pub fn config() -> SqsConfig {
    SqsConfig {
        wait_time: Duration::from_secs(1),
        retention: Some(Duration::from_secs(3600)),
        ..SqsConfig::local(ENDPOINT)
    }
}

/// A broker on `config`, or a panic saying how to start moto.
pub async fn broker_with(config: SqsConfig) -> SqsBroker {
    let broker = SqsBroker::new(config);
    if let Err(e) = broker.sqs().list_queues().max_results(1).send().await {
        TestBroker::Sqs.unreachable(aws_sdk_sqs::error::DisplayErrorContext(e));
    }
    broker
}

/// A broker on [`config`].
pub async fn broker() -> SqsBroker {
    broker_with(config()).await
}

/// A JSON event whose data names its id.
pub fn event(id: &str) -> Event {
    EventBuilder::new("urn:test", "test.event")
        .id(id)
        .json(&serde_json::json!({"id": id}))
        .build()
        .unwrap()
}
