//! Kafka adapter for `messaging`, over [rdkafka](https://docs.rs/rdkafka) (librdkafka, built
//! from source by `rdkafka-sys`).
//!
//! # Topology
//!
//! | core word | Kafka |
//! |---|---|
//! | topic | a Kafka topic, created explicitly with [`KafkaConfig::partitions`] partitions on first publish or subscribe (broker auto-creation is never relied on) |
//! | subscription group | a consumer group; its members share the partitions, every group reads every message |
//! | ordering key | the message key (`partitionkey` extension): one key, one partition, in order |
//!
//! # Acks on a log
//!
//! Kafka acknowledges by committing one offset per partition, which settles everything before
//! it. The adapter tracks every delivery's offset and commits only the position below which
//! *every* message is settled, so out-of-order acks under concurrency never commit past an
//! unsettled message. Offsets are stored after settlement (`enable.auto.offset.store=false`) and
//! committed every [`KafkaConfig::commit_interval`], at once on close and on rebalance. A revoked
//! partition hands out nothing more, waits up to [`KafkaConfig::revoke_timeout`] for its
//! in-flight deliveries, commits what is settled and is released; settling a delivery of a
//! revoked partition fails with `Closed` (its new owner redelivers it).
//!
//! A new group starts at the end of each partition (or the start with
//! [`StartFrom::Earliest`](messaging_core::StartFrom)) and commits that position at once, so a
//! group exists from its first subscribe: messages published after `subscribe` returns are
//! delivered even if the consumer closes and comes back later.
//!
//! # Nacks
//!
//! A log cannot un-read a message. A nack without delay hands the same message to the group
//! member again at once (attempt + 1). A nack with a delay publishes a copy to the group's retry
//! topic `<topic>.<group>.retry.<tier>` (tiers from [`KafkaConfig::retry_tiers`]: the smallest
//! tier at least the delay) with a not-before header, then settles the original. Retry topics are
//! consumed by the same group alongside the topic: a retry partition whose head is not due yet
//! is paused, the topic's own partitions keep flowing. Ordered subscriptions retry in place
//! instead (the partition waits), which keeps per-key order. The attempt number counts local
//! redeliveries and retry-topic hops; a redelivery after a crash or rebalance starts again at 1
//! (Kafka keeps no delivery count).
//!
//! An unsettled delivery that is dropped is handed out again: Kafka has no ack deadline.
//!
//! # Features
//!
//! | feature | value |
//! |---|---|
//! | consumer groups | yes |
//! | ordering | yes, per partition (ordered subscriptions hand out one message per partition at a time) |
//! | replay of old messages | yes (`StartFrom::Earliest` for a new group) |
//! | delayed redelivery | emulated (retry topics with a not-before header) |
//! | native dead letter | no (the runtime's dead-letter middleware publishes to `<topic>.dlq`) |
//! | ack deadline / extend | no |
//! | max payload | [`KafkaConfig::max_message_bytes`], 1 MiB by default, checked before sending |
//! | transactions | no: no broker reachable in this project's tests supports them faithfully, so no transactional mode ships; effectively-once on Kafka is the idempotent consumer |
//!
//! # Publishing
//!
//! One idempotent producer (`enable.idempotence=true`, `acks=all`) per [`KafkaBroker`]. A batch
//! hands every message to librdkafka before waiting; delivery reports land in one slot array
//! per call, so there is no future or channel per message.
//!
//! # CloudEvents
//!
//! The Kafka protocol binding: binary mode (default) puts attributes in `ce_` headers and
//! `datacontenttype` in the `content-type` header; structured mode sends
//! `application/cloudevents+json`. In both, the `partitionkey` extension is the message key, and
//! a message with a key but no `partitionkey` gets the key as its ordering key. Messages from
//! plain Kafka producers arrive as decode errors carrying their bytes (and key, as header
//! `key`), so the runtime dead-letters them.
//!
//! # Lag
//!
//! [`KafkaBroker::lag`] reports committed offset and high watermark per partition of a group;
//! [`Inspect::depth`](messaging_core::Inspect::depth) sums it.

mod broker;
mod codec;
mod config;
mod error;
mod offsets;
mod publisher;
mod subscriber;

pub use broker::{ConnectError, KafkaBroker, PartitionLag};
pub use config::KafkaConfig;
pub use publisher::KafkaPublisher;
pub use subscriber::{KafkaDelivery, KafkaSubscriber, KafkaSubscription};
