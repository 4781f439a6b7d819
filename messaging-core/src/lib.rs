//! Broker-agnostic messaging for Rust services: one API over Kafka, RabbitMQ, AWS SQS/SNS and
//! an in-memory broker for tests.
//!
//! This crate holds what every broker shares: the message model (CloudEvents 1.0 events), the
//! [`codec`] for the two CloudEvents content modes, the [`Publisher`], [`Subscriber`],
//! [`Subscription`] and [`Delivery`] traits with [object-safe forms](dynamic), typed
//! [errors](error) that say whether retrying can help, and the [`Features`] each broker reports.
//! Adapters (`messaging-kafka`, `messaging-rabbitmq`, `messaging-sqs`) implement the traits over
//! the real clients; `messaging-testkit` implements them in memory and holds the conformance
//! suite every implementation passes.
//!
//! # Topology words
//!
//! Three words describe where messages go. Every adapter maps them onto its broker, and its
//! crate docs say exactly how:
//!
//! | word | meaning | Kafka | RabbitMQ | SQS/SNS | in-memory |
//! |---|---|---|---|---|---|
//! | **topic** | what publishers write to | topic | exchange | SNS topic | topic |
//! | **subscription group** | receives every message of the topic once; its consumers compete; every group gets every message | consumer group | durable queue bound to the exchange | SQS queue subscribed to the topic | group queue |
//! | **ordering key** | messages with one key are handled in publish order | message key (partition) | ordered groups: a single-active-consumer queue | FIFO `MessageGroupId` | per-key FIFO |
//!
//! The ordering key is the event's `partitionkey` extension
//! ([`EventBuilder::ordering_key`]); ordering is honoured for subscriptions that ask for it
//! ([`SubscribeOptions::ordered`]), on brokers whose [`Features::ordering`] says they can.
//!
//! # Acknowledgement model
//!
//! A [`Delivery`] is acked, nacked (redelivered, optionally after a delay), or its deadline is
//! extended. The attempt number counts deliveries of the message, starting at 1. An unsettled
//! delivery is redelivered after the subscription's ack deadline (on brokers with
//! [`Features::ack_deadline`]) or when its subscription closes. Adapters map this onto offsets
//! (Kafka: commit only below the lowest unsettled offset), channel acks (RabbitMQ) and receipt
//! handles with a visibility timeout (SQS).
//!
//! # Example
//!
//! ```
//! use messaging_core::{EventBuilder, EventExt, codec::{Binding, ContentMode}};
//!
//! let event = EventBuilder::new("order-service", "order.created")
//!     .json(&serde_json::json!({"orderId": "ORD-5678", "amount": 99.99, "currency": "USD"}))
//!     .ordering_key("ORD-5678")
//!     .build()?;
//!
//! // What a Kafka adapter puts on the wire in binary mode...
//! let binding = Binding::kafka();
//! let wire = binding.encode(&event, ContentMode::Binary)?.into_raw();
//! assert_eq!(wire.header("ce_type"), Some(&b"order.created"[..]));
//!
//! // ...and what a consumer gets back.
//! let received = binding.decode(wire)?;
//! assert_eq!(received.ordering_key(), Some("ORD-5678"));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod codec;
pub mod connect;
pub mod dead_letter;
pub mod delivery;
pub mod dynamic;
pub mod error;
pub mod event;
pub mod features;
pub mod handler;
pub mod inspect;
pub mod middleware;
pub mod naming;
pub mod publisher;
pub mod redact;
pub mod request;
pub mod runtime;
pub mod subscriber;
pub mod sync;
pub mod telemetry;

pub use chrono;
pub use cloudevents;
pub use cloudevents::event::ExtensionValue;
pub use cloudevents::{AttributesReader, AttributesWriter, Data, Event};

pub use codec::{Binding, ContentMode, DecodeError, DecodeErrorKind, RawMessage};
pub use connect::{Adapter, BrokerUrl, ConfigError, ConnectError};
pub use delivery::{Coordinates, Delivery};
pub use dynamic::{
    BoxDelivery, BoxFuture, BoxSubscription, DynDelivery, DynPublisher, DynSubscriber,
    DynSubscription,
};
pub use error::{
    AckError, AckErrorKind, Cause, Error, ErrorKind, PublishError, PublishErrorKind, ReceiveError,
    ReceiveErrorKind, SettleError, SubscribeError, SubscribeErrorKind,
};
pub use event::{EventBuilder, EventExt};
pub use features::{DelaySupport, Features, Requirements, Unsupported};
pub use handler::{HandlerError, Incoming, Outcome, handler_fn};
pub use inspect::{Inspect, InspectError, InspectErrorKind};
pub use publisher::{PublishBatchError, Publisher, Receipt};
pub use subscriber::{StartFrom, SubscribeOptions, Subscriber, Subscription, resubscribe};
