//! How a broker is chosen and connected: the [`Adapter`] trait every broker implements as a
//! whole, broker URLs and their [`Options`], and the errors of connecting.
//!
//! An adapter crate owns its construction: [`Adapter::configure`] reads its configuration
//! from a [`BrokerUrl`] and its [`Options`] (failing on an option it does not know), and
//! [`Adapter::connect`] connects with it, failing fast with [`ConnectError::Unreachable`] when
//! the broker does not answer. The `messaging` facade is then a table of [`AdapterEntry`]s
//! from URL scheme to adapter: adding a broker is one crate implementing [`Adapter`] plus one
//! line in that table.
//!
//! ```
//! use messaging_core::connect::{Adapter, BrokerUrl, ConfigError, ConnectError, Options};
//! # use messaging_core::{Features, Inspect, InspectError, PublishError, RawMessage, Receipt};
//! # #[derive(Clone)] struct Nats;
//! # #[derive(Clone)] struct NatsPublisher;
//! # #[derive(Clone)] struct NatsSubscriber;
//! # impl Inspect for Nats { async fn depth(&self, _: &str, _: &str) -> Result<Option<u64>, InspectError> { Ok(None) } }
//! # impl messaging_core::Publisher for NatsPublisher {
//! #     async fn publish(&self, _: &str, _: messaging_core::Event) -> Result<Receipt, PublishError> { Ok(Receipt::new()) }
//! #     async fn publish_batch(&self, _: &str, _: Vec<messaging_core::Event>) -> Result<Vec<Receipt>, messaging_core::PublishBatchError> { Ok(vec![]) }
//! #     async fn close(&self) -> Result<(), PublishError> { Ok(()) }
//! #     fn features(&self) -> Features { Features::new("nats") }
//! # }
//! # impl messaging_core::Subscriber for NatsSubscriber {
//! #     type Subscription = messaging_core::BoxSubscription;
//! #     async fn subscribe(&self, _: &str, _: messaging_core::SubscribeOptions) -> Result<Self::Subscription, messaging_core::SubscribeError> { unimplemented!() }
//! #     async fn declare(&self, _: &str, _: messaging_core::SubscribeOptions) -> Result<(), messaging_core::SubscribeError> { Ok(()) }
//! #     fn features(&self) -> Features { Features::new("nats") }
//! # }
//! /// What `nats://HOST:PORT?stream_replicas=3` configures.
//! pub struct NatsConfig { servers: String, replicas: usize }
//!
//! impl Adapter for Nats {
//!     const NAME: &'static str = "nats";
//!     const SCHEMES: &'static [&'static str] = &["nats"];
//!     const OPTIONS: &'static [&'static str] = &["stream_replicas"];
//!     type Config = NatsConfig;
//!     type Publisher = NatsPublisher;
//!     type Subscriber = NatsSubscriber;
//!
//!     fn configure(url: &BrokerUrl, mut options: Options) -> Result<NatsConfig, ConfigError> {
//!         let replicas = options.number("stream_replicas")?.unwrap_or(1);
//!         options.finish(Self::OPTIONS)?;
//!         Ok(NatsConfig { servers: url.hosts().to_owned(), replicas })
//!     }
//!     async fn connect(config: NatsConfig) -> Result<Self, ConnectError> {
//!         messaging_core::connect::probe_tcp(Self::NAME, &config.servers, &config.servers, 4222).await?;
//!         Ok(Nats)
//!     }
//!     fn publisher(&self) -> NatsPublisher { NatsPublisher }
//!     fn subscriber(&self) -> NatsSubscriber { NatsSubscriber }
//!     fn features(&self) -> Features { Features::new("nats") }
//!     async fn publish_raw(&self, _: &str, _: &RawMessage) -> Result<Receipt, PublishError> {
//!         Ok(Receipt::new())
//!     }
//! }
//!
//! let url: BrokerUrl = "nats://127.0.0.1:4222?stream_replicas=3".parse()?;
//! let config = Nats::configure(&url, Options::from_url(Nats::NAME, &url))?;
//! assert_eq!(config.replicas, 3);
//! let err = Nats::configure(&url, Options::from_url(Nats::NAME, &"nats://h?replicas=3".parse()?)).err().unwrap();
//! assert!(err.to_string().contains("known options: stream_replicas"), "{err}");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod error;
mod options;
mod tls;
mod url;

use std::any::Any;
use std::future::Future;
use std::sync::Arc;

pub use error::{ConfigError, ConnectError, caused_by};
pub use options::{COMMON_OPTIONS, Options};
pub use tls::{ClientIdentity, TLS_OPTIONS, TlsFiles};
pub use url::{BrokerUrl, redact_url};

use crate::dynamic::BoxFuture;
use crate::{
    DynPublisher, DynSubscriber, Features, Inspect, InspectError, PublishError, Publisher,
    RawMessage, Receipt, Subscriber,
};

/// A broker as a whole: how it is configured from a URL and connected, and what it hands
/// out once connected. Implemented by `KafkaBroker`, `RabbitBroker`, `SqsBroker` and the
/// testkit's `MemoryBroker`; the `messaging` facade picks one by URL scheme.
pub trait Adapter: Inspect + Clone + Send + Sync + Sized + 'static {
    /// The broker's name, as [`Features::broker`] and errors give it (`kafka`).
    const NAME: &'static str;
    /// The URL schemes that choose this broker (`kafka`, `kafkas`).
    const SCHEMES: &'static [&'static str];
    /// The options [`configure`](Self::configure) reads, for error messages and docs
    /// ([`COMMON_OPTIONS`] are read before it, by whoever connects).
    const OPTIONS: &'static [&'static str];
    /// The adapter's configuration.
    type Config: Send + 'static;
    /// Its publisher.
    type Publisher: Publisher + 'static;
    /// Its subscriber.
    type Subscriber: Subscriber<Subscription: 'static> + 'static;

    /// Reads the configuration from `url` and `options`, failing on an option it does not
    /// know ([`Options::finish`]) or a value it cannot use.
    fn configure(url: &BrokerUrl, options: Options) -> Result<Self::Config, ConfigError>;

    /// Connects, failing fast ([`ConnectError::Unreachable`], transient) when the broker
    /// does not answer, and with a permanent error when it refuses the configuration.
    fn connect(config: Self::Config) -> impl Future<Output = Result<Self, ConnectError>> + Send;

    /// A publisher.
    fn publisher(&self) -> Self::Publisher;

    /// A subscriber.
    fn subscriber(&self) -> Self::Subscriber;

    /// What the broker can do with its configuration.
    fn features(&self) -> Features;

    /// Publishes `raw` as it is, past the CloudEvents codec, as a producer that does not
    /// speak CloudEvents would.
    fn publish_raw(
        &self,
        topic: &str,
        raw: &RawMessage,
    ) -> impl Future<Output = Result<Receipt, PublishError>> + Send;
}

/// Object-safe [`Adapter`], for a broker chosen at run time.
pub trait DynAdapter: Send + Sync + 'static {
    /// See [`Adapter::NAME`].
    fn name(&self) -> &'static str;
    /// See [`Adapter::publisher`].
    fn publisher_dyn(&self) -> Arc<dyn DynPublisher>;
    /// See [`Adapter::subscriber`].
    fn subscriber_dyn(&self) -> Arc<dyn DynSubscriber>;
    /// See [`Adapter::features`].
    fn features_dyn(&self) -> Features;
    /// See [`Inspect::depth`].
    fn depth_dyn<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, InspectError>>;
    /// See [`Adapter::publish_raw`].
    fn publish_raw_dyn<'a>(
        &'a self,
        topic: &'a str,
        raw: &'a RawMessage,
    ) -> BoxFuture<'a, Result<Receipt, PublishError>>;
    /// The adapter itself, for downcasting to its own type (`KafkaBroker`…).
    fn as_any(&self) -> &dyn Any;
}

impl<A: Adapter> DynAdapter for A {
    fn name(&self) -> &'static str {
        A::NAME
    }
    fn publisher_dyn(&self) -> Arc<dyn DynPublisher> {
        Arc::new(Adapter::publisher(self))
    }
    fn subscriber_dyn(&self) -> Arc<dyn DynSubscriber> {
        Arc::new(Adapter::subscriber(self))
    }
    fn features_dyn(&self) -> Features {
        Adapter::features(self)
    }
    fn depth_dyn<'a>(
        &'a self,
        topic: &'a str,
        group: &'a str,
    ) -> BoxFuture<'a, Result<Option<u64>, InspectError>> {
        Box::pin(self.depth(topic, group))
    }
    fn publish_raw_dyn<'a>(
        &'a self,
        topic: &'a str,
        raw: &'a RawMessage,
    ) -> BoxFuture<'a, Result<Receipt, PublishError>> {
        Box::pin(Adapter::publish_raw(self, topic, raw))
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// Configures and connects an adapter chosen at run time.
pub type ConnectFn =
    fn(BrokerUrl, Options) -> BoxFuture<'static, Result<Arc<dyn DynAdapter>, ConnectError>>;

/// One row of a table from URL scheme to adapter: what the `messaging` facade holds per
/// broker compiled in.
#[derive(Clone, Copy)]
pub struct AdapterEntry {
    /// See [`Adapter::NAME`].
    pub name: &'static str,
    /// See [`Adapter::SCHEMES`].
    pub schemes: &'static [&'static str],
    /// See [`Adapter::OPTIONS`].
    pub options: &'static [&'static str],
    /// [`Adapter::configure`] then [`Adapter::connect`].
    pub connect: ConnectFn,
}

impl AdapterEntry {
    /// The entry of adapter `A`.
    pub const fn of<A: Adapter>() -> Self {
        Self {
            name: A::NAME,
            schemes: A::SCHEMES,
            options: A::OPTIONS,
            connect: connect_dyn::<A>,
        }
    }
}

impl std::fmt::Debug for AdapterEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdapterEntry")
            .field("name", &self.name)
            .field("schemes", &self.schemes)
            .finish_non_exhaustive()
    }
}

fn connect_dyn<A: Adapter>(
    url: BrokerUrl,
    options: Options,
) -> BoxFuture<'static, Result<Arc<dyn DynAdapter>, ConnectError>> {
    Box::pin(async move {
        let config = A::configure(&url, options)?;
        let adapter = A::connect(config).await?;
        Ok(Arc::new(adapter) as Arc<dyn DynAdapter>)
    })
}

/// Fails fast, as transient [`ConnectError::Unreachable`], when none of `hosts`
/// (comma-separated `host[:port]`, `default_port` where none is given) accepts a TCP
/// connection, rather than letting a client retry until its own timeout. `shown` is the
/// broker's address as errors show it (without secrets).
pub async fn probe_tcp(
    broker: &'static str,
    shown: &str,
    hosts: &str,
    default_port: u16,
) -> Result<(), ConnectError> {
    let mut last = None;
    for host in hosts.split(',').map(str::trim).filter(|h| !h.is_empty()) {
        let has_port = host.rsplit_once(':').is_some_and(|(h, p)| {
            !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()) && !h.ends_with('[')
        }) && !host.ends_with(']');
        let addr = if has_port {
            host.to_owned()
        } else {
            format!("{host}:{default_port}")
        };
        match tokio::net::TcpStream::connect(&addr).await {
            Ok(_) => return Ok(()),
            Err(e) => last = Some(format!("{addr}: {e}")),
        }
    }
    Err(ConnectError::unreachable(
        broker,
        shown,
        true,
        last.unwrap_or_else(|| "no host given".into()),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn probe_fails_fast_and_transient_on_a_closed_port() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = probe_tcp("kafka", "kafka://x", &format!("127.0.0.1:{port}"), 1)
            .await
            .unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert!(err.to_string().contains("kafka://x"), "{err}");
        let open = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = open.local_addr().unwrap().port();
        probe_tcp("kafka", "x", &format!("127.0.0.1:1,127.0.0.1:{port}"), 1)
            .await
            .unwrap();
        probe_tcp("kafka", "x", "127.0.0.1", port).await.unwrap();
    }
}
