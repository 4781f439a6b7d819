//! The broker chosen at run time.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use messaging_core::connect::{AdapterEntry, ConfigError, ConnectError, DynAdapter, Options};
use messaging_core::inspect::{Inspect, InspectError};
use messaging_core::runtime::{Consumer, ConsumerBuilder};
use messaging_core::{DynPublisher, DynSubscriber, Features, Requirements, SubscribeOptions};

use crate::config::{BrokerConfig, Settings};

/// The brokers compiled in: one line per adapter crate, each an
/// [`Adapter`](messaging_core::Adapter) that owns its URL options and its connecting.
const ADAPTERS: &[AdapterEntry] = &[
    #[cfg(feature = "memory")]
    AdapterEntry::of::<messaging_testkit::MemoryBroker>(),
    #[cfg(feature = "kafka")]
    AdapterEntry::of::<messaging_kafka::KafkaBroker>(),
    #[cfg(feature = "rabbitmq")]
    AdapterEntry::of::<messaging_rabbitmq::RabbitBroker>(),
    #[cfg(feature = "sqs")]
    AdapterEntry::of::<messaging_sqs::SqsBroker>(),
];

/// Every scheme of this crate with the cargo feature that adds its broker, to say which
/// feature a URL needs when its adapter is not compiled in.
const FEATURES: &[(&str, &str)] = &[
    ("memory", "memory"),
    ("kafka", "kafka"),
    ("kafkas", "kafka"),
    ("amqp", "rabbitmq"),
    ("amqps", "rabbitmq"),
    ("sqs", "sqs"),
];

/// How long connecting may take by default (option `connect_timeout`).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// A connected broker of any kind, chosen by URL or configuration: hands out
/// [`DynPublisher`]s and [`DynSubscriber`]s, reports its [`Features`], inspects depth, and
/// builds consumers with the configured retry policy and requirements.
///
/// | URL | broker | cargo feature |
/// |---|---|---|
/// | `memory://` or `memory://NAME` | in-memory (one per name per process; unnamed: a new one each time) | `memory` (default) |
/// | `kafka://HOST:PORT[,HOST:PORT…]`, `kafkas://…` (TLS) | Kafka | `kafka` |
/// | `amqp://USER:PASS@HOST:PORT/VHOST`, `amqps://…` (TLS) | RabbitMQ | `rabbitmq` |
/// | `sqs://[KEY:SECRET@][REGION]?endpoint=URL` | AWS SQS/SNS | `sqs` |
///
/// Each broker's options go in the URL's query or the configuration file's `options`; the
/// crate docs list them.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use messaging::{Broker, EventBuilder, Publisher, SubscribeOptions, Subscriber, Subscription, Delivery};
///
/// let broker = Broker::connect("memory://").await?;
/// let mut sub = broker.subscriber().subscribe("orders", SubscribeOptions::new("billing")).await?;
/// broker.publisher().publish("orders", EventBuilder::new("shop", "order.created").build()?).await?;
/// let delivery = sub.recv().await?;
/// delivery.ack().await?;
/// assert_eq!(broker.features().broker, "memory");
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Broker {
    adapter: Arc<dyn DynAdapter>,
    url: String,
    features: Features,
    publisher: Arc<dyn DynPublisher>,
    subscriber: Arc<dyn DynSubscriber>,
    settings: Arc<Settings>,
}

impl fmt::Debug for Broker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broker")
            .field("broker", &self.features.broker)
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Connects to the broker at `url`, with default settings otherwise.
    pub async fn connect(url: &str) -> Result<Self, ConnectError> {
        Self::from_settings(Settings {
            broker: BrokerConfig::new(url),
            ..Settings::default()
        })
        .await
    }

    /// Connects as the environment says: the file named by `MESSAGING_CONFIG` and the
    /// `MESSAGING_*` overrides, `MESSAGING_URL` above all; the in-memory broker when nothing
    /// is set. See [`Settings`].
    pub async fn from_env() -> Result<Self, ConnectError> {
        Self::from_settings(Settings::from_env()?).await
    }

    /// Connects as `settings` say, and checks the broker against `settings.requires`.
    pub async fn from_settings(settings: Settings) -> Result<Self, ConnectError> {
        let url = settings.broker.url()?;
        let entry = adapter_for(url.scheme())?;
        let mut options = Options::new(entry.name, &settings.broker.options, &url);
        let connect_timeout = options
            .duration("connect_timeout")?
            .unwrap_or(CONNECT_TIMEOUT);
        let shown = url.to_string();
        let connecting = (entry.connect)(url, options);
        let adapter = match tokio::time::timeout(connect_timeout, connecting).await {
            Ok(adapter) => adapter.map_err(|e| e.with_url(&shown))?,
            Err(_) => {
                return Err(ConnectError::unreachable(
                    entry.name,
                    shown,
                    true,
                    format!("no answer within {connect_timeout:?} (option connect_timeout)"),
                ));
            }
        };
        let features = adapter.features_dyn();
        let publisher = adapter.publisher_dyn();
        let subscriber = adapter.subscriber_dyn();
        features
            .check(&settings.requires)
            .map_err(|source| ConnectError::Unsupported {
                url: shown.clone(),
                source,
            })?;
        Ok(Self {
            adapter,
            url: shown,
            features,
            publisher,
            subscriber,
            settings: Arc::new(settings),
        })
    }

    /// A publisher (shared: cheap to call again).
    pub fn publisher(&self) -> Arc<dyn DynPublisher> {
        self.publisher.clone()
    }

    /// A subscriber (shared: cheap to call again).
    pub fn subscriber(&self) -> Arc<dyn DynSubscriber> {
        self.subscriber.clone()
    }

    /// What the broker can do.
    pub fn features(&self) -> &Features {
        &self.features
    }

    /// The URL, without password or secret options.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The settings it was connected with.
    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    /// Checks the broker against `needs`, naming the broker and every missing capability.
    pub fn require(&self, needs: &Requirements) -> Result<(), ConnectError> {
        self.features
            .check(needs)
            .map_err(|source| ConnectError::Unsupported {
                url: self.url.clone(),
                source,
            })
    }

    /// A consumer of `topic` on this broker, with the configured retry policy, requirements
    /// and consumer settings (`retry_policy:`, `requires:`, `consumer:`); dead letters go
    /// through this broker's publisher, and the consumer's status reads its backlog from this
    /// broker (where it can tell). Add layers with `layer` and the handler with `build` or
    /// `build_idempotent`.
    pub fn consumer(
        &self,
        topic: impl Into<String>,
        options: SubscribeOptions,
    ) -> ConsumerBuilder<Arc<dyn DynSubscriber>> {
        Consumer::builder(self.subscriber(), self.publisher(), topic, options)
            .retry(self.settings.retry_policy.clone())
            .requires(self.settings.requires.clone())
            .settings(self.settings.consumer.clone())
            .backlog_from(self.clone())
    }

    /// Publishes `raw` as it is, past the CloudEvents codec, as a producer that does not
    /// speak CloudEvents would: the body, the headers and the content type on the broker's own
    /// terms (Kafka record headers, AMQP long-string headers and `content-type` property, SQS
    /// `String` message attributes). For bridging such producers into a topic, and for testing
    /// what a service does with input it cannot decode (its consumer runtime dead-letters it
    /// as `messaging.undecodable`). Each adapter's `publish_raw` says what it refuses.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use messaging::{Broker, Delivery, RawMessage, SubscribeOptions, Subscriber, Subscription};
    ///
    /// let broker = Broker::connect("memory://").await?;
    /// let mut sub = broker.subscriber().subscribe("legacy", SubscribeOptions::new("audit")).await?;
    /// let raw = RawMessage { content_type: Some("text/plain".into()), headers: vec![], body: b"hello".to_vec() };
    /// broker.publish_raw("legacy", &raw).await?;
    /// let delivery = sub.recv().await?;
    /// assert_eq!(delivery.event().unwrap_err().raw().unwrap().body, b"hello");
    /// # Ok(()) }
    /// ```
    pub async fn publish_raw(
        &self,
        topic: &str,
        raw: &messaging_core::RawMessage,
    ) -> Result<messaging_core::Receipt, messaging_core::PublishError> {
        self.adapter.publish_raw_dyn(topic, raw).await
    }

    /// The in-memory broker, if this is one (for fault injection in tests).
    #[cfg(feature = "memory")]
    pub fn as_memory(&self) -> Option<&messaging_testkit::MemoryBroker> {
        self.adapter.as_any().downcast_ref()
    }

    /// The Kafka broker, if this is one (per-partition lag, topic creation).
    #[cfg(feature = "kafka")]
    pub fn as_kafka(&self) -> Option<&messaging_kafka::KafkaBroker> {
        self.adapter.as_any().downcast_ref()
    }

    /// The RabbitMQ broker, if this is one.
    #[cfg(feature = "rabbitmq")]
    pub fn as_rabbitmq(&self) -> Option<&messaging_rabbitmq::RabbitBroker> {
        self.adapter.as_any().downcast_ref()
    }

    /// The SQS/SNS broker, if this is one.
    #[cfg(feature = "sqs")]
    pub fn as_sqs(&self) -> Option<&messaging_sqs::SqsBroker> {
        self.adapter.as_any().downcast_ref()
    }
}

impl Inspect for Broker {
    async fn depth(&self, topic: &str, group: &str) -> Result<Option<u64>, InspectError> {
        self.adapter.depth_dyn(topic, group).await
    }
}

/// The adapter that `scheme` names, or why there is none.
fn adapter_for(scheme: &str) -> Result<&'static AdapterEntry, ConfigError> {
    if let Some(entry) = ADAPTERS.iter().find(|a| a.schemes.contains(&scheme)) {
        return Ok(entry);
    }
    match FEATURES.iter().find(|(s, _)| *s == scheme) {
        Some((_, feature)) => Err(ConfigError::NotCompiled {
            scheme: scheme.to_owned(),
            feature,
        }),
        None => Err(ConfigError::UnknownScheme {
            scheme: scheme.to_owned(),
            known: FEATURES
                .iter()
                .map(|(s, _)| format!("{s}://"))
                .collect::<Vec<_>>()
                .join(", "),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(all(
        feature = "memory",
        feature = "kafka",
        feature = "rabbitmq",
        feature = "sqs"
    ))]
    fn every_scheme_has_its_adapter_in_a_full_build() {
        for (scheme, feature) in FEATURES {
            let entry = adapter_for(scheme).unwrap_or_else(|e| panic!("{scheme}: {e}"));
            assert_eq!(entry.name, *feature, "{scheme}");
        }
        let names: Vec<_> = ADAPTERS.iter().map(|a| a.name).collect();
        assert_eq!(names, ["memory", "kafka", "rabbitmq", "sqs"]);
    }

    #[test]
    fn an_unknown_scheme_names_the_known_ones() {
        let err = adapter_for("nats").unwrap_err();
        assert!(matches!(err, ConfigError::UnknownScheme { .. }), "{err}");
        let shown = err.to_string();
        for scheme in ["memory://", "kafka://", "amqps://", "sqs://"] {
            assert!(shown.contains(scheme), "{shown}");
        }
    }
}
