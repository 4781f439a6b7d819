//! AWS SQS/SNS adapter for `messaging`, over [`aws-sdk-sqs`](https://docs.rs/aws-sdk-sqs) and
//! [`aws-sdk-sns`](https://docs.rs/aws-sdk-sns).
//!
//! ```no_run
//! use messaging_core::{Publisher, SubscribeOptions, Subscriber};
//! use messaging_sqs::{SqsBroker, SqsConfig};
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! // moto or LocalStack on 127.0.0.1:4566; for AWS, `SqsConfig::default()` with a region:
//! // without static credentials `connect` uses aws-config's default chain.
//! let broker = SqsBroker::connect(SqsConfig::local("http://127.0.0.1:4566")).await?;
//! let mut billing = broker
//!     .subscriber()
//!     .subscribe("orders", SubscribeOptions::new("billing"))
//!     .await?;
//! # let _ = &mut billing;
//! # Ok(()) }
//! ```
//!
//! # Topology
//!
//! | core word | SQS/SNS ([`Topology::SnsFanout`], default) |
//! |---|---|
//! | topic | SNS topic named after the topic, created on first use |
//! | subscription group | SQS queue `<topic>-<group>` (see *Names*) subscribed to the topic with raw message delivery, with a queue policy allowing the topic to send to it; every group gets every message, the consumers of one queue compete |
//! | ordering key | FIFO: an ordered group makes the topic an SNS FIFO topic and its queues FIFO queues; the ordering key is the `MessageGroupId`; the `MessageDeduplicationId` is a SHA-256 of the CloudEvents `source` and `id` |
//!
//! With [`Topology::PointToPoint`] a topic is one SQS queue, sent to and received from directly,
//! without SNS: every consumer competes and the group name is not used
//! ([`Features::consumer_groups`](messaging_core::Features::consumer_groups) is then `false`).
//!
//! Names: SNS and SQS allow letters, digits, `-` and `_` and limit queue names to 80
//! characters; a name that does not fit keeps its valid prefix plus a stable hash of the full
//! name (`orders.dlq` becomes `orders_dlq-<hash>`), so distinct names never share a queue.
//! A group's queue is `<topic>-<group>` when the topic has neither `-` nor `_` — the group may
//! hold either (`orders-billing-service`). A topic with `-` or `_` would make the join
//! ambiguous (topic `a-b` with group `c`, topic `a` with group `b-c`), so its groups' queues
//! are `<topic with - as _>_<hash>-<group>` (`order_events_<10 hex>-billing`), by
//! [`group_resource_topic_first`](messaging_core::naming::group_resource_topic_first). Before
//! this rule such queues were plain `<topic>-<group>`: a group that already has that queue,
//! subscribed to its topic and to no other topic joining to the same name, keeps it (nothing
//! stranded, nothing read twice during a rolling upgrade); a shared one is left with a
//! warning, and a plain name kept that way by another pair is not taken (see the README,
//! "Queue names").
//!
//! Declarations are idempotent: `CreateTopic`, `CreateQueue` (only the FIFO flag and the
//! retention are set at creation), `SetQueueAttributes` (policy, redrive policy) and
//! `Subscribe` are safe to repeat on every start.
//!
//! **FIFO topics.** A topic is FIFO if its name ends in `.fifo`, if
//! [`SqsConfig::fifo_topics`] lists it, if an ordered group created it, or if a FIFO topic of
//! its name already exists when a publisher or subscriber first resolves it. Ordered groups
//! should therefore be subscribed before anything publishes to a new topic (or the topic
//! declared FIFO); an ordered group on an existing standard topic fails with
//! [`SubscribeErrorKind::Unsupported`](messaging_core::SubscribeErrorKind::Unsupported),
//! because a standard topic cannot deliver to a FIFO queue. Every group of a FIFO topic has a
//! FIFO queue. Events without an ordering key get their `id` as message group, so they are not
//! serialized behind each other. A FIFO batch is sent one call after another so every key keeps
//! its order.
//!
//! # Publishing
//!
//! [`Publisher::publish`](messaging_core::Publisher::publish) is one `Publish` (or
//! `SendMessage`). [`publish_batch`](messaging_core::Publisher::publish_batch) splits the
//! events into `PublishBatch` / `SendMessageBatch` calls of at most 10 entries and at most
//! [`SqsConfig::max_sns_batch_bytes`] / [`SqsConfig::max_sqs_batch_bytes`], keeps up to
//! [`SqsConfig::max_in_flight`] calls in flight at once, and reports every failed entry as a
//! typed error with its event handed back (throttling and service faults transient, sender
//! faults not); an entry the response does not mention counts as failed (`Timeout`), never
//! as published. Sizes are checked before any call: a message (body plus attribute names,
//! types and values) over [`SqsConfig::max_sns_payload`] (256 KiB) through SNS or
//! [`SqsConfig::max_sqs_payload`] (1 MiB) straight to SQS fails with
//! [`PublishErrorKind::PayloadTooLarge`](messaging_core::PublishErrorKind::PayloadTooLarge).
//!
//! # CloudEvents
//!
//! Structured mode is the default: the body is the event in the JSON event format, marked by
//! one message attribute `content-type: application/cloudevents+json`. Binary mode is an
//! option ([`SqsConfig::content_mode`]): attributes and extensions become `String` message
//! attributes `ce_<name>` and the data the body. SQS delivers at most 10 message attributes
//! (also through SNS raw delivery), and binary mode already needs 5 for a minimal event with a
//! content type, so an event with a subject, a time and a few extensions (correlation id,
//! trace parent...) — or a dead letter with its seven `dlq*` attributes — would not fit: such
//! an event is sent in structured mode instead, which always fits and which consumers decode
//! as well. SQS bodies are text: binary-mode data that is not valid SQS
//! text, or is empty, travels base64-encoded or as a placeholder, flagged by the attribute
//! `messaging-body`. Messages from producers that do not speak CloudEvents arrive as decode
//! errors carrying their body and attributes, so the runtime dead-letters them.
//!
//! # Receiving and settling
//!
//! Each subscription runs a poller task that, from the first `recv`, long-polls its queue
//! (`ReceiveMessage` with [`SqsConfig::wait_time`], up to 20 s, and up to 10 messages) while
//! the subscription holds fewer unsettled deliveries than its prefetch *and* fewer than 20
//! received messages not yet handed out by `recv`, so a cancelled `recv` loses nothing and a
//! slow consumer with a large prefetch is not read far ahead of; a subscription opened only
//! to declare its group never polls. Each receive sets the visibility timeout to the
//! subscription's ack deadline (whole seconds, rounded up). The attempt number is
//! `ApproximateReceiveCount`.
//!
//! A message waiting in that buffer is kept invisible: every eighth of the ack deadline, the
//! subscription extends to the full deadline (`ChangeMessageVisibilityBatch`) each waiting
//! message with less than five eighths of it left, so `recv` hands out every delivery with
//! at least about half its ack deadline ahead, however long it waited, and a buffered message
//! is never received a second time while its first copy waits. One whose extension the
//! service refuses (or whose timeout ran out anyway) is dropped at hand-out, not handed out
//! twice; SQS delivers it again.
//!
//! - **ack**: `DeleteMessageBatch`. An ack queues its receipt handle for the subscription's
//!   settler task and waits for the answer; the settler takes every ack queued at that moment
//!   (after a few yields, never a timer), sends them 10 per call with up to
//!   [`SqsConfig::max_in_flight`] calls at once, and answers each ack from its entry's result.
//!   Acks from many deliveries (a batch, concurrent handlers) share calls; an ack that waits
//!   alone is sent alone, without delay. A failed entry hands the delivery back.
//! - **nack**: `ChangeMessageVisibilityBatch` to 0, or to the delay (whole seconds, rounded
//!   up, at most 12 hours) — SQS delays natively; coalesced like acks.
//! - **extend_deadline**: `ChangeMessageVisibility` to the new deadline.
//! - **close** (or drop): stops the poller and makes this consumer's unsettled deliveries
//!   visible at once; settling them afterwards fails with `Closed`. A receive in flight at
//!   that moment finishes in the background and makes what it received visible again (SQS
//!   has counted that receive: such a message's next attempt number is one higher).
//! - A stale receipt handle (the message was received again meanwhile) fails with `Expired`.
//!
//! Once handed out, a delivery's deadline is the consumer's: a handler that runs longer than
//! what is left of it (at least about half the ack deadline) extends it or loses it to a
//! redelivery.
//!
//! Ordered groups receive one message per call: SQS FIFO hands out a message group's next
//! message only once the previous one is deleted or visible again, so every key has at most
//! one unsettled delivery and a nacked message comes back before the rest of its key.
//!
//! # Dead letters
//!
//! With [`SubscribeOptions::max_deliveries`](messaging_core::SubscribeOptions::max_deliveries)
//! `= n`, the group's queue gets a `RedrivePolicy` with `maxReceiveCount = n + 1` towards the
//! queue of the dead-letter topic's
//! [`DEAD_LETTER_GROUP`](messaging_core::dead_letter::DEAD_LETTER_GROUP) (created
//! with it). The poller forwards a message received for the (n + 1)-th time to the dead-letter
//! topic through SNS — with the dead-letter metadata (`dlqreason` `retries-exhausted`,
//! `dlqtopic`, `dlqgroup`...), so every group of the dead-letter topic sees it and
//! [`replay`](messaging_core::dead_letter::replay) knows where it came from — and
//! deletes it, without handing it to the consumer. If no poller runs (the consumer crashes on
//! the message every time) or the forward fails, SQS itself moves the message to the
//! dead-letters queue on the next receive: the native backstop. Natively moved messages carry
//! no metadata; replay them with `ReplayOptions::target`.
//!
//! An ordered group's queue is a FIFO queue, whose redrive target must be a FIFO queue: with a
//! delivery limit, its dead-letter topic is created as an SNS FIFO topic. If that topic
//! already exists as a standard topic (an unordered group, or an earlier start, created it)
//! the subscription is refused with `Unsupported`, naming the dead-letter topic.
//!
//! Replay does not need `StartMessageMoveTask` (which moto lacks): the core's
//! [`replay`](messaging_core::dead_letter::replay) receives from the dead-letters
//! queue, publishes, and acks (deletes) only after the publish succeeded; its large prefetch
//! (it holds the messages it skips) does not make it read ahead (see *Receiving*), and the
//! messages it skips it keeps invisible until it ends. [`SqsBroker`]
//! implements [`Inspect`](messaging_core::Inspect): the depth of a group is its queue's
//! `ApproximateNumberOfMessages` + `NotVisible` + `Delayed`.
//!
//! # Features
//!
//! | feature | value |
//! |---|---|
//! | consumer groups | yes (SNS fan-out); no in point-to-point topology |
//! | ordering | yes (FIFO topics and queues) |
//! | replay of old messages | no (a new queue starts empty) |
//! | delayed redelivery | native (visibility timeout), whole seconds, at most 12 h |
//! | native dead letter | yes (redrive policy, plus the forward described above) |
//! | ack deadline / extend | yes (visibility timeout) |
//! | max payload | 256 KiB through SNS, 1 MiB point-to-point (configurable) |
//! | transactions | no |
//!
//! # Errors
//!
//! SDK errors keep their source. Connection failures, timeouts, throttling and 5xx answers are
//! transient; 4xx answers (authorization, invalid parameters) are not; a missing queue ends a
//! subscription with `Closed`.
//!
//! # Local endpoints (moto)
//!
//! The tests run against moto (`scripts/brokers/moto.sh`), which lacks
//! `StartMessageMoveTask` (replay does not use it), deduplicates FIFO messages only against
//! messages still queued (AWS: a 5-minute window, so replays of a FIFO event within 5 minutes
//! get a deduplication id with the replay count), and ignores content-based deduplication on
//! SNS FIFO topics (this adapter always sends a deduplication id: SHA-256 over the event's
//! `source`, `id` and, for a replayed dead letter, its replay count — 64 hex digits, so two
//! producers' events with the same `id` are both delivered).

mod broker;
mod codec;
mod config;
mod error;
mod names;
mod publisher;
mod subscriber;

pub use broker::SqsBroker;
pub use config::{
    OPTIONS, SNS_MAX_PAYLOAD, SQS_MAX_PAYLOAD, SqsConfig, StaticCredentials, Topology,
};
pub use publisher::SqsPublisher;
pub use subscriber::{SqsDelivery, SqsSubscriber, SqsSubscription};
