//! Test your messaging code without a broker, and prove an adapter behaves like the others.
//!
//! - [`MemoryBroker`]: an in-memory broker implementing the `messaging-core` traits with real
//!   semantics — groups, per-key ordering, ack deadlines, redelivery with attempt counts, delays,
//!   payload limits, dead-lettering — and deterministic [fault injection](Faults).
//! - [`conformance`]: the suite every adapter (and the in-memory broker) must pass, one
//!   `#[tokio::test]` per case through [`conformance_suite!`].
//! - [`outage`]: broker processes a test owns (killed, frozen and restarted by PID) and a
//!   workload proving a running consumer rides an outage out.

pub mod bench;
pub mod conformance;
#[cfg(feature = "logs")]
pub mod logs;
pub mod memory;
pub mod netfault;
pub mod outage;
#[cfg(feature = "logs")]
pub mod security;
pub mod support;
#[cfg(feature = "opentelemetry")]
pub mod telemetry;

pub use memory::{
    Faults, GroupStats, MemoryBroker, MemoryBrokerBuilder, MemoryConfig, MemoryDelivery,
    MemoryPublisher, MemorySubscriber, MemorySubscription,
};
