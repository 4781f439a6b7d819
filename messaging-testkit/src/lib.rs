//! Test your messaging code without a broker, and prove an adapter behaves like the others.
//!
//! - [`MemoryBroker`]: an in-memory broker implementing the `messaging-core` traits with real
//!   semantics — groups, per-key ordering, ack deadlines, redelivery with attempt counts, delays,
//!   payload limits, dead-lettering — and deterministic [fault injection](Faults).
//! - [`conformance`]: the suite every adapter (and the in-memory broker) must pass, one
//!   `#[tokio::test]` per case through [`conformance_suite!`].

pub mod conformance;
pub mod memory;

pub use memory::{
    Faults, GroupStats, MemoryBroker, MemoryBrokerBuilder, MemoryDelivery, MemoryPublisher,
    MemorySubscriber, MemorySubscription,
};
