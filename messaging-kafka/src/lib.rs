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
//! A group with no commit on a topic is new: it starts at the end of each partition (or the
//! start with [`StartFrom::Earliest`](messaging_core::StartFrom)) and commits that position at
//! once for every partition of the topic, so a group exists from its first subscribe: messages
//! published after `subscribe` returns are delivered even if the consumer closes and comes back
//! later, and members joining in the same rebalance start at the same place. If that commit
//! fails (a coordinator refuses commits while the group rebalances), the positions are
//! committed with the next offsets, and until a commit lands every later assignment in the
//! process starts there: the group is never taken for new again and moved to the then end of
//! the topic, past messages published meanwhile. A partition
//! without a commit in a group that has commits on the topic — a partition added to the topic —
//! starts at its earliest offset, so messages produced to it before the group rebalanced onto
//! it are delivered.
//!
//! If the committed offsets of an assignment cannot be read (a timeout, a busy coordinator),
//! its partitions are assigned paused and nothing read from them is handed out; the fetch is
//! retried every 100 ms to 5 s (doubling) until it succeeds, each failure logged and counted
//! in `messaging_kafka_offset_fetch_failures_total{topic, group}`, then the partitions are
//! sought to their start and resume. `subscribe` returns once its first assignment has its
//! start positions (or fails with `Timeout` naming the fetch error).
//!
//! # Nacks
//!
//! A log cannot un-read a message. A nack without delay hands the same message to the group
//! member again at once (attempt + 1). A nack with a delay publishes a copy to the group's retry
//! topic `<topic>.<group>.retry.<tier>` (tiers from [`KafkaConfig::retry_tiers`]: the smallest
//! tier at least the delay) with a not-before header, then settles the original. Retry topics are
//! consumed by the same group alongside the topic: a retry partition whose head is not due yet
//! is paused, the topic's own partitions keep flowing. Ordered subscriptions retry in place
//! instead (the partition waits), which keeps per-key order.
//!
//! A message parked in a retry topic is already settled on the topic, so every subscription
//! reads *every* retry topic of its group that exists on the cluster — found by name at
//! subscribe, whatever the tiers are now, ordered subscriptions included — and lag and depth
//! count them; a subscription whose retry topics cannot be listed fails to start.
//!
//! Retry topic names are injective: where the group has no `.`, both names hold only Kafka's
//! name characters and the name fits 249 characters, it is `<topic>.<group>.retry.<tier>` as
//! before; otherwise `<topic>.<group>.retry.<tier>.<hash>` (readable part sanitized and
//! shortened, hash of the exact topic and group). Retry topics under the earlier naming, where
//! topic `a.b` with group `c` and topic `a` with group `b.c` shared one, are still drained;
//! each message there carries its origin topic, and a group skips the messages of another
//! topic.
//!
//! # Group ids
//!
//! A subscription group is the Kafka consumer group of the same name, except the framework's
//! own groups — the dead-letter group and the requester's `requester` — which are one per topic
//! on every broker but would be one cluster-wide group on Kafka (every service's replays and
//! requesters rebalancing each other): they are the consumer group `<topic>.<group>`
//! ([`KafkaConfig::group_id`]). The dead-letter group continues from the commits of the former
//! `dead-letters` group on partitions it has not committed yet. The attempt number counts local
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

pub use broker::{KafkaBroker, PartitionLag};
pub use config::{KafkaConfig, OPTIONS};
pub use messaging_core::ConnectError;
pub use publisher::KafkaPublisher;
pub use subscriber::{KafkaDelivery, KafkaSubscriber, KafkaSubscription};
