//! Helpers shared by the RabbitMQ test files.
#![allow(dead_code, unreachable_pub)]

pub mod harness;

use std::time::Duration;

use messaging_rabbitmq::{RabbitBroker, RabbitConfig};
use messaging_testkit::support::{self, TestBroker};

/// The local broker the tests run against.
pub const URI: &str = TestBroker::RabbitMq.address();

/// A fresh name: `<prefix>-<what>-<uuid>`.
pub fn unique(prefix: &str, what: &str) -> String {
    support::unique(&format!("{prefix}-{what}"))
}

/// Test queues delete themselves two minutes after their last use.
pub fn config() -> RabbitConfig {
    RabbitConfig {
        queue_expires: Some(Duration::from_secs(120)),
        ..RabbitConfig::new(URI)
    }
}

/// Connects, or fails saying how to start the broker.
pub async fn connect(config: RabbitConfig) -> RabbitBroker {
    RabbitBroker::connect(config)
        .await
        .unwrap_or_else(|e| TestBroker::RabbitMq.unreachable(e))
}
