//! AWS SQS/SNS adapter for `messaging`, over `aws-sdk-sqs` and `aws-sdk-sns`.
//!
//! (Crate docs are completed below.)

mod broker;
mod codec;
mod config;
mod error;
mod names;
mod publisher;
mod subscriber;

pub use broker::SqsBroker;
pub use config::{SNS_MAX_PAYLOAD, SQS_MAX_PAYLOAD, SqsConfig, StaticCredentials, Topology};
pub use publisher::SqsPublisher;
pub use subscriber::{SqsDelivery, SqsSubscriber, SqsSubscription};
