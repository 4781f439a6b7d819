//! One messaging API over Kafka, RabbitMQ, AWS SQS/SNS and an in-memory broker — the broker
//! chosen by a URL or a configuration file, not by code.
//!
//! Depend on this crate with the brokers you deploy on as cargo features (`kafka`,
//! `rabbitmq`, `sqs`; `memory` is on by default), write against the traits of
//! [`messaging_core`] (re-exported here), and let [`Broker::from_env`] pick the broker from
//! `MESSAGING_URL` — or a file named by `MESSAGING_CONFIG` with `MESSAGING_*` overrides, see
//! [`Settings`]. With nothing set it is the in-memory broker, so the same binary runs in tests.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use messaging::handler::{handler_fn, HandlerError, Incoming};
//! use messaging::{Broker, EventBuilder, Publisher, SubscribeOptions};
//!
//! let broker = Broker::from_env().await?; // MESSAGING_URL=kafka://127.0.0.1:9092, amqp://…, sqs://…
//! let consumer = broker
//!     .consumer("orders", SubscribeOptions::new("billing"))
//!     .build(handler_fn(|msg: Incoming| async move {
//!         let order: serde_json::Value = msg.data()?;
//!         let _ = order;
//!         Ok::<(), HandlerError>(())
//!     }));
//! let running = tokio::spawn(consumer.run(async { /* shutdown signal */ }));
//! broker.publisher().publish("orders", EventBuilder::new("shop", "order.created").build()?).await?;
//! running.await??;
//! # Ok(()) }
//! ```
//!
//! # Broker URLs and their options
//!
//! Options go in the URL's query (`kafka://127.0.0.1:9092?partitions=8`) or under
//! `broker.options` in the configuration file; the URL wins. An option the broker does not
//! know is an error, so typos do not pass silently. Every broker takes `connect_timeout`
//! (default 15 s). Passwords and secret keys never appear in `Debug`, logs or errors.
//!
//! TLS (`amqps://`, `kafkas://`, an `https://` SQS endpoint) takes the same options on every
//! broker: `tls_ca_file` (a CA trusted besides the system's), and `tls_cert_file` with
//! `tls_key_file` (a client certificate, RabbitMQ and Kafka). Certificates and host names are
//! always verified. A failed handshake, refused credentials and refused access fail at connect
//! as [`ConnectError::Tls`], [`ConnectError::Authentication`] and [`ConnectError::Forbidden`],
//! none transient; `docs/security.md` has the details per broker.
//!
//! **`memory://[NAME]`** — the in-memory broker of `messaging-testkit`. Brokers with a name
//! are shared within the process (two `connect("memory://a")` see the same messages); an
//! unnamed one is new each time. Options: `max_payload` (bytes, default 1 MiB),
//! `queue_capacity` (messages per group before publishers wait, default 65 536).
//!
//! **`kafka://HOST:PORT[,HOST:PORT…]`** — Kafka through `messaging-kafka`. `kafkas://` sets
//! `security.protocol=ssl` (feature `tls`); a user and password in the URL set SASL
//! (`sasl_plaintext`, or `sasl_ssl` with `kafkas://`) with mechanism `PLAIN` unless
//! `sasl.mechanism` says otherwise. Options: `partitions`, `replication`, `create_topics`,
//! `commit_metadata`, `content_mode` (`binary`|`structured`), `max_message_bytes`,
//! `commit_interval`, `revoke_timeout`, `session_timeout`, `subscribe_timeout`,
//! `publish_timeout`, `retry_tiers` (`1s,10s,1m`), the TLS options — the fields of
//! [`KafkaConfig`](https://docs.rs/messaging-kafka) — and any librdkafka property by its
//! dotted name (`sasl.mechanism=SCRAM-SHA-512`, `ssl.endpoint.identification.algorithm=https`).
//!
//! **`amqp://USER:PASS@HOST:PORT/VHOST`**, **`amqps://…`** (feature `tls`) — RabbitMQ through
//! `messaging-rabbitmq`; the virtual host is percent-encoded (`%2f` is `/`). Options:
//! `queue_type` (`quorum`|`classic`), `content_mode`, `max_payload`, `mandatory`,
//! `confirm_timeout`, `operation_timeout`, `reconnect_max_delay`, `connection_name`,
//! `queue_expires`, `max_deliveries`, the TLS options; other query keys (`heartbeat`,
//! `frame_max`, `channel_max`…) are passed to the AMQP client.
//!
//! **`sqs://[ACCESS_KEY_ID:SECRET@][REGION]`** — AWS SQS/SNS through `messaging-sqs`. Options:
//! `endpoint` (a local endpoint such as `http://127.0.0.1:4566`, which is given dummy
//! credentials when none are set), `region` (default `us-east-1`), `access_key_id` and
//! `secret_access_key` (else aws-config's default chain: environment, profile, SSO, web
//! identity, container and instance roles), `topology` (`sns_fanout`|`point_to_point`),
//! `content_mode`, `wait_time`, `max_in_flight`, `fifo_topics` (comma-separated),
//! `retention`, `call_timeout`, `tls_ca_file`. Connecting makes one `ListQueues` call, so a wrong endpoint or
//! refused credentials fail at start-up.
//!
//! Durations are written `500ms`, `30s`, `1m`.
//!
//! Each adapter reads its own options (`KafkaConfig::from_options`,
//! `RabbitConfig::from_options`, `SqsConfig::from_options`, the testkit's `MemoryConfig`), as
//! its [`Adapter`] implementation; this crate only maps the URL
//! scheme to the adapter and applies `connect_timeout`.
//!
//! # Declared guarantees
//!
//! `requires:` in the configuration (or [`Broker::require`], or
//! [`ConsumerBuilder::requires`](messaging_core::runtime::ConsumerBuilder::requires)) states
//! what the service needs — `ordering`, `replay`, `delayed_redelivery`, `transactions`,
//! `ack_deadline`, `extend_deadline`, `payload` (bytes), `effectively_once` — and connecting or
//! starting a consumer fails with an error naming the broker and every missing capability,
//! instead of degrading silently.

mod broker;
mod config;

pub use broker::Broker;
pub use config::{BrokerConfig, CONFIG_VAR, ENV_PREFIX, Settings, URL_VAR};

pub use messaging_core::*;

#[cfg(feature = "kafka")]
pub use messaging_kafka as kafka;
#[cfg(feature = "rabbitmq")]
pub use messaging_rabbitmq as rabbitmq;
#[cfg(feature = "sqs")]
pub use messaging_sqs as sqs;
#[cfg(feature = "memory")]
pub use messaging_testkit as testkit;

/// The workspace README's code, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeDoctests;

/// The user guide's code (`docs/`), compiled and run as doctests.
#[cfg(doctest)]
pub mod docs {
    #[doc = include_str!("../../docs/guarantees.md")]
    pub struct Guarantees;
    #[doc = include_str!("../../docs/retry-and-dlq.md")]
    pub struct RetryAndDlq;
    #[doc = include_str!("../../docs/idempotency.md")]
    pub struct Idempotency;
    #[doc = include_str!("../../docs/cloudevents.md")]
    pub struct CloudEvents;
    #[doc = include_str!("../../docs/testing.md")]
    pub struct Testing;
    #[cfg(feature = "opentelemetry")]
    #[doc = include_str!("../../docs/observability.md")]
    pub struct Observability;
}
