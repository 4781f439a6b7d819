//! The in-memory broker as an [`Adapter`]: `memory://` and `memory://NAME`.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use messaging_core::connect::{Adapter, BrokerUrl, ConfigError, ConnectError, Options};
use messaging_core::{Features, PublishError, RawMessage, Receipt};

use super::{MemoryBroker, MemoryBrokerBuilder, MemoryPublisher, MemorySubscriber};

/// What a `memory://[NAME][?max_payload=…&queue_capacity=…]` URL configures.
///
/// A broker with a name is one per name per process: every connect to `memory://a` gets the
/// same broker (the first connect's settings hold), so two parts of a test see the same
/// messages. An unnamed one is new each time.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use messaging_core::connect::{Adapter, BrokerUrl, Options};
/// use messaging_testkit::MemoryBroker;
///
/// let url: BrokerUrl = "memory://shared-doc?max_payload=1024".parse()?;
/// let config = MemoryBroker::configure(&url, Options::from_url("memory", &url))?;
/// let a = <MemoryBroker as Adapter>::connect(config).await?;
/// let config = MemoryBroker::configure(&url, Options::from_url("memory", &url))?;
/// let b = <MemoryBroker as Adapter>::connect(config).await?;
/// a.publish_raw("t", messaging_core::RawMessage { content_type: None, headers: vec![], body: b"x".to_vec() });
/// assert_eq!(b.topics(), ["t"]);
/// assert_eq!(a.features().max_payload, Some(1024));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct MemoryConfig {
    /// The broker's name; `None`: a new broker.
    pub name: Option<String>,
    /// Its settings.
    pub builder: MemoryBrokerBuilder,
}

/// The options of `memory://`.
const OPTIONS: &[&str] = &["max_payload", "queue_capacity"];

impl Adapter for MemoryBroker {
    const NAME: &'static str = "memory";
    const SCHEMES: &'static [&'static str] = &["memory"];
    const OPTIONS: &'static [&'static str] = OPTIONS;
    type Config = MemoryConfig;
    type Publisher = MemoryPublisher;
    type Subscriber = MemorySubscriber;

    fn configure(url: &BrokerUrl, mut options: Options) -> Result<MemoryConfig, ConfigError> {
        let mut builder = MemoryBroker::builder();
        if let Some(n) = options.number("max_payload")? {
            builder = builder.max_payload(n);
        }
        if let Some(n) = options.number("queue_capacity")? {
            builder = builder.queue_capacity(n);
        }
        options.finish(OPTIONS)?;
        let name = Some(url.hosts().to_owned()).filter(|n| !n.is_empty());
        Ok(MemoryConfig { name, builder })
    }

    async fn connect(config: MemoryConfig) -> Result<Self, ConnectError> {
        static NAMED: OnceLock<Mutex<HashMap<String, MemoryBroker>>> = OnceLock::new();
        let Some(name) = config.name else {
            return Ok(config.builder.build());
        };
        let mut named = NAMED
            .get_or_init(Default::default)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        Ok(named
            .entry(name)
            .or_insert_with(|| config.builder.build())
            .clone())
    }

    fn publisher(&self) -> MemoryPublisher {
        Self::publisher(self)
    }

    fn subscriber(&self) -> MemorySubscriber {
        Self::subscriber(self)
    }

    fn features(&self) -> Features {
        Self::features(self)
    }

    async fn publish_raw(&self, topic: &str, raw: &RawMessage) -> Result<Receipt, PublishError> {
        Self::publish_raw(self, topic, raw.clone());
        Ok(Receipt::new())
    }
}
