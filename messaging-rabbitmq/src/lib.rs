//! RabbitMQ adapter for `messaging`, over [lapin](https://docs.rs/lapin).
//!
//! # Topology
//!
//! | core word | RabbitMQ |
//! |---|---|
//! | topic | durable fanout exchange named after the topic, declared on first use |
//! | subscription group | durable queue `<topic>.<group>` (quorum by default, classic as an option) bound to the exchange; its consumers compete, every group gets every message. A group containing `.` or `~` gets `<topic>.<group>~<hash>` instead, so no two (topic, group) pairs share a queue (see [`messaging_core::naming`]); an existing `<topic>.<group>` queue of an earlier version is kept unless it may be another group's (see the README, "Queue names of groups with `.` or `~`") |
//! | ordering key | an ordered subscription's queue is a classic queue with `x-single-active-consumer` and a prefetch of 1: one consumer, one message at a time, in queue order, also across requeues (a quorum queue would put a requeued message last) — every key keeps its order (stronger than per key, and slower: one message in flight per group). A nack *with a delay* re-enters the queue behind later messages; ordered consumers retry in place. Ordered groups have no broker-side delivery limit and count attempts from the `redelivered` flag (1 or 2). |
//!
//! Declarations are idempotent: subscribing again declares the same queue with the same
//! arguments ([`Subscriber::declare`](messaging_core::Subscriber::declare) declares it without
//! a consumer, so messages waiting in it are not handed out and returned); different arguments
//! for an existing queue are refused by the broker (`Rejected`). One exception: a quorum queue
//! declared by an earlier version, without the dead-letter exchange and delivery limit this
//! version adds (below), is used as it is, with a warning that gives the `rabbitmqctl
//! set_policy` command adding them.
//!
//! # Acks, delays, dead letters
//!
//! Acks and nacks go to the delivery's channel; the subscription's prefetch is the channel's
//! QoS. A nack without delay requeues. A nack with a delay re-publishes (with a publisher
//! confirm) to a per-delay classic queue `<queue>~delay-<ms>ms` whose message TTL dead-letters
//! back to the group's queue, then acks — the delayed-message plugin is not needed. Delays are rounded
//! **up** to a ladder — 10, 12, 15, 20, 25, 30, 40, 50, 60, 80 ms × 10ⁿ (10 ms at least) — so
//! jittered retry delays share a few delay queues (at most ten per decade, e.g. 1 s, 1.2 s,
//! 1.5 s, 2 s …) instead of declaring one durable queue per distinct millisecond; a message
//! waits at most a third longer than asked, never shorter. Idle delay queues expire a minute
//! after their TTL. If that re-publish
//! fails or is not confirmed, the nack falls back to an immediate requeue (`basic.nack` with
//! `requeue`) while the delivery's channel lives: the message comes back at once rather than
//! staying unacked until the channel closes (and, if the unconfirmed copy did reach the delay
//! queue, once more after the delay — a duplicate, never a loss). The attempt number
//! comes from the quorum queue's `x-delivery-count` plus an `x-messaging-attempt` header carried
//! across delays.
//!
//! Every quorum group queue gets `x-dead-letter-exchange` (the group's dead-letter topic,
//! [`SubscribeOptions::dead_letter_topic_for`](messaging_core::SubscribeOptions::dead_letter_topic_for))
//! and `x-delivery-limit`: [`SubscribeOptions::max_deliveries`](messaging_core::SubscribeOptions::max_deliveries)
//! if set, else [`RabbitConfig::max_deliveries`] (20 deliveries by default) — a broker-side
//! backstop for consumers that crash or requeue before the runtime can dead-letter, and what
//! keeps RabbitMQ 4.x, whose quorum queues have a default limit of 20, from dropping the
//! message. The dead-letter topic's `dead-letters` queue is declared first; it has no
//! dead-letter exchange (it would loop) and a limit of [`DEAD_LETTER_DELIVERY_LIMIT`], so
//! inspecting and replaying dead letters never drops one.
//!
//! # Features
//!
//! | feature | value |
//! |---|---|
//! | consumer groups | yes |
//! | ordering | yes (single active consumer) |
//! | replay of old messages | no |
//! | delayed redelivery | emulated (TTL + dead-letter queues) |
//! | native dead letter | quorum queues only |
//! | ack deadline / extend | no (RabbitMQ's `consumer_timeout` closes the channel instead) |
//! | max payload | configured, 16 MiB by default |
//! | transactions | no |
//!
//! # Request-reply
//!
//! [`RabbitBroker::requester`] gives a [`DirectRequester`] over RabbitMQ's direct reply-to
//! (`amq.rabbitmq.reply-to`): requests carry the AMQP `reply_to` property, the broker routes
//! replies straight to the requesting channel, and no reply queue is ever declared. Responders
//! need nothing special: the adapter exposes the broker's reply address as the event's
//! `replyto` extension, and the core's
//! [`request::reply`](messaging_core::request::reply) publishes to it (through the default
//! exchange). The generic [`Requester`](messaging_core::request::Requester), with a reply
//! topic of its own, works here too.
//!
//! # CloudEvents
//!
//! Binary mode (default) maps attributes to application properties named `cloudEvents:<name>`
//! (`cloudEvents_<name>` accepted) and `datacontenttype` to the `content-type` property;
//! structured mode sends `application/cloudevents+json`. Messages from plain AMQP producers
//! arrive as decode errors carrying their bytes, so the runtime dead-letters them.

mod broker;
mod codec;
mod config;
mod error;
mod names;
mod publisher;
mod request;
mod subscriber;

pub use broker::{DEAD_LETTER_DELIVERY_LIMIT, RabbitBroker};
pub use config::{DEFAULT_MAX_DELIVERIES, OPTIONS, QueueType, RabbitConfig};
pub use messaging_core::ConnectError;
pub use publisher::RabbitPublisher;
pub use request::DirectRequester;
pub use subscriber::{RabbitDelivery, RabbitSubscriber, RabbitSubscription};
