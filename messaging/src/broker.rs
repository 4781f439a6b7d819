//! The broker chosen at run time.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use messaging_core::inspect::{Inspect, InspectError, InspectErrorKind};
use messaging_core::runtime::{Consumer, ConsumerBuilder};
use messaging_core::{DynPublisher, DynSubscriber, Features, Requirements, SubscribeOptions};

use crate::config::{BrokerConfig, Settings};
use crate::errors::{ConfigError, ConnectError};
use crate::url::{BrokerUrl, Options};

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
    kind: Kind,
    url: String,
    features: Features,
    publisher: Arc<dyn DynPublisher>,
    subscriber: Arc<dyn DynSubscriber>,
    settings: Arc<Settings>,
}

#[derive(Clone)]
enum Kind {
    #[cfg(feature = "memory")]
    Memory(messaging_testkit::MemoryBroker),
    #[cfg(feature = "kafka")]
    Kafka(messaging_kafka::KafkaBroker),
    #[cfg(feature = "rabbitmq")]
    Rabbit(messaging_rabbitmq::RabbitBroker),
    #[cfg(feature = "sqs")]
    Sqs(messaging_sqs::SqsBroker),
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
        let mut options = Options::new(scheme_name(url.scheme()), &settings.broker.options, &url);
        let connect_timeout = options
            .duration("connect_timeout")?
            .unwrap_or(CONNECT_TIMEOUT);
        let shown = url.to_string();
        let connecting = connect_kind(&url, options);
        let kind = match tokio::time::timeout(connect_timeout, connecting).await {
            Ok(kind) => kind?,
            Err(_) => {
                return Err(ConnectError::Unreachable {
                    broker: scheme_name(url.scheme()),
                    url: shown,
                    transient: true,
                    source: format!(
                        "no answer within {connect_timeout:?} (option connect_timeout)"
                    )
                    .into(),
                });
            }
        };
        let (features, publisher, subscriber) = kind.parts();
        features
            .check(&settings.requires)
            .map_err(|source| ConnectError::Unsupported {
                url: shown.clone(),
                source,
            })?;
        Ok(Self {
            kind,
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
    /// broker (where it can tell). Add the handler with `build`, `build_idempotent` or
    /// `build_stack`.
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
        match &self.kind {
            #[cfg(feature = "memory")]
            Kind::Memory(b) => {
                b.publish_raw(topic, raw.clone());
                Ok(messaging_core::Receipt::new())
            }
            #[cfg(feature = "kafka")]
            Kind::Kafka(b) => b.publish_raw(topic, raw).await,
            #[cfg(feature = "rabbitmq")]
            Kind::Rabbit(b) => b.publish_raw(topic, raw).await,
            #[cfg(feature = "sqs")]
            Kind::Sqs(b) => b.publish_raw(topic, raw).await,
        }
    }

    /// The in-memory broker, if this is one (for fault injection in tests).
    #[cfg(feature = "memory")]
    pub fn as_memory(&self) -> Option<&messaging_testkit::MemoryBroker> {
        #[allow(unreachable_patterns)]
        match &self.kind {
            Kind::Memory(b) => Some(b),
            _ => None,
        }
    }

    /// The Kafka broker, if this is one (per-partition lag, topic creation).
    #[cfg(feature = "kafka")]
    pub fn as_kafka(&self) -> Option<&messaging_kafka::KafkaBroker> {
        #[allow(unreachable_patterns)]
        match &self.kind {
            Kind::Kafka(b) => Some(b),
            _ => None,
        }
    }

    /// The RabbitMQ broker, if this is one.
    #[cfg(feature = "rabbitmq")]
    pub fn as_rabbitmq(&self) -> Option<&messaging_rabbitmq::RabbitBroker> {
        #[allow(unreachable_patterns)]
        match &self.kind {
            Kind::Rabbit(b) => Some(b),
            _ => None,
        }
    }

    /// The SQS/SNS broker, if this is one.
    #[cfg(feature = "sqs")]
    pub fn as_sqs(&self) -> Option<&messaging_sqs::SqsBroker> {
        #[allow(unreachable_patterns)]
        match &self.kind {
            Kind::Sqs(b) => Some(b),
            _ => None,
        }
    }
}

impl Inspect for Broker {
    async fn depth(&self, topic: &str, group: &str) -> Result<Option<u64>, InspectError> {
        match &self.kind {
            #[cfg(feature = "memory")]
            Kind::Memory(b) => b.depth(topic, group).await,
            #[cfg(feature = "kafka")]
            Kind::Kafka(b) => b.depth(topic, group).await,
            #[cfg(feature = "rabbitmq")]
            Kind::Rabbit(b) => b.depth(topic, group).await,
            #[cfg(feature = "sqs")]
            Kind::Sqs(b) => b.depth(topic, group).await,
            #[allow(unreachable_patterns)]
            _ => Err(InspectError::new(InspectErrorKind::Unsupported)),
        }
    }
}

impl Kind {
    fn parts(&self) -> (Features, Arc<dyn DynPublisher>, Arc<dyn DynSubscriber>) {
        match self {
            #[cfg(feature = "memory")]
            Kind::Memory(b) => (
                b.features(),
                Arc::new(b.publisher()),
                Arc::new(b.subscriber()),
            ),
            #[cfg(feature = "kafka")]
            Kind::Kafka(b) => (
                b.features(),
                Arc::new(b.publisher()),
                Arc::new(b.subscriber()),
            ),
            #[cfg(feature = "rabbitmq")]
            Kind::Rabbit(b) => (
                b.features(),
                Arc::new(b.publisher()),
                Arc::new(b.subscriber()),
            ),
            #[cfg(feature = "sqs")]
            Kind::Sqs(b) => (
                b.features(),
                Arc::new(b.publisher()),
                Arc::new(b.subscriber()),
            ),
        }
    }
}

/// Fails fast when none of `hosts` (comma-separated `host[:port]`) accepts a TCP connection,
/// rather than letting a client retry until its own timeout.
#[cfg(any(feature = "kafka", feature = "rabbitmq"))]
async fn probe_tcp(
    broker: &'static str,
    url: &BrokerUrl,
    default_port: u16,
) -> Result<(), ConnectError> {
    let mut last = None;
    for host in url
        .hosts()
        .split(',')
        .map(str::trim)
        .filter(|h| !h.is_empty())
    {
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
    Err(ConnectError::Unreachable {
        broker,
        url: url.to_string(),
        transient: true,
        source: last.unwrap_or_else(|| "no host given".into()).into(),
    })
}

/// The broker a scheme names, for messages.
fn scheme_name(scheme: &str) -> &'static str {
    match scheme {
        "memory" => "memory",
        "kafka" | "kafkas" => "kafka",
        "amqp" | "amqps" => "rabbitmq",
        "sqs" => "sqs",
        _ => "broker",
    }
}

#[allow(clippy::unused_async)]
async fn connect_kind(url: &BrokerUrl, options: Options) -> Result<Kind, ConnectError> {
    let not_compiled = |feature| {
        Err(ConfigError::NotCompiled {
            scheme: url.scheme().to_owned(),
            feature,
        }
        .into())
    };
    let _ = &options;
    #[allow(unreachable_patterns)] // the fallbacks for brokers not compiled in
    match url.scheme() {
        #[cfg(feature = "memory")]
        "memory" => memory(url, options).map(Kind::Memory),
        #[cfg(feature = "kafka")]
        "kafka" | "kafkas" => kafka(url, options).await.map(Kind::Kafka),
        #[cfg(feature = "rabbitmq")]
        "amqp" | "amqps" => rabbitmq(url, options).await.map(Kind::Rabbit),
        #[cfg(feature = "sqs")]
        "sqs" => sqs(url, options).await.map(Kind::Sqs),
        "memory" => not_compiled("memory"),
        "kafka" | "kafkas" => not_compiled("kafka"),
        "amqp" | "amqps" => not_compiled("rabbitmq"),
        "sqs" => not_compiled("sqs"),
        other => Err(ConfigError::UnknownScheme {
            scheme: other.to_owned(),
        }
        .into()),
    }
}

#[cfg(feature = "memory")]
fn memory(
    url: &BrokerUrl,
    mut options: Options,
) -> Result<messaging_testkit::MemoryBroker, ConnectError> {
    use std::collections::HashMap;
    use std::sync::{Mutex, OnceLock};

    static NAMED: OnceLock<Mutex<HashMap<String, messaging_testkit::MemoryBroker>>> =
        OnceLock::new();
    let mut builder = messaging_testkit::MemoryBroker::builder();
    if let Some(n) = options.number("max_payload")? {
        builder = builder.max_payload(n);
    }
    if let Some(n) = options.number("queue_capacity")? {
        builder = builder.queue_capacity(n);
    }
    options.finish(&["max_payload", "queue_capacity", "connect_timeout"])?;
    let name = url.hosts();
    if name.is_empty() {
        return Ok(builder.build());
    }
    let mut named = NAMED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    Ok(named
        .entry(name.to_owned())
        .or_insert_with(|| builder.build())
        .clone())
}

#[cfg(feature = "kafka")]
const KAFKA_OPTIONS: &[&str] = &[
    "partitions",
    "replication",
    "create_topics",
    "commit_metadata",
    "content_mode",
    "max_message_bytes",
    "commit_interval",
    "revoke_timeout",
    "session_timeout",
    "subscribe_timeout",
    "publish_timeout",
    "retry_tiers",
    "connect_timeout",
    "<any librdkafka property, e.g. sasl.mechanism>",
];

#[cfg(feature = "kafka")]
async fn kafka(
    url: &BrokerUrl,
    mut o: Options,
) -> Result<messaging_kafka::KafkaBroker, ConnectError> {
    use messaging_kafka::{KafkaBroker, KafkaConfig};

    if url.hosts().is_empty() {
        return Err(ConfigError::InvalidUrl {
            url: url.to_string(),
            reason: "no bootstrap servers: expected kafka://HOST:PORT[,HOST:PORT…]".into(),
        }
        .into());
    }
    let mut c = KafkaConfig::new(url.hosts());
    if let Some(v) = o.number("partitions")? {
        c.partitions = v;
    }
    if let Some(v) = o.number("replication")? {
        c.replication = v;
    }
    if let Some(v) = o.flag("create_topics")? {
        c.create_topics = v;
    }
    if let Some(v) = o.flag("commit_metadata")? {
        c.commit_metadata = v;
    }
    if let Some(v) = o.content_mode()? {
        c.content_mode = v;
    }
    if let Some(v) = o.number("max_message_bytes")? {
        c.max_message_bytes = v;
    }
    for (key, field) in [
        ("commit_interval", &mut c.commit_interval),
        ("revoke_timeout", &mut c.revoke_timeout),
        ("session_timeout", &mut c.session_timeout),
        ("subscribe_timeout", &mut c.subscribe_timeout),
        ("publish_timeout", &mut c.publish_timeout),
    ] {
        if let Some(v) = o.duration(key)? {
            *field = v;
        }
    }
    if let Some(tiers) = o.list("retry_tiers") {
        c.retry_tiers = tiers
            .iter()
            .map(|t| humantime::parse_duration(t))
            .collect::<Result<_, _>>()
            .map_err(|_| ConfigError::InvalidOption {
                broker: "kafka",
                key: "retry_tiers".into(),
                value: tiers.join(","),
                expected: "durations separated by commas, e.g. 1s,10s,1m".into(),
            })?;
    }
    // Credentials in the URL are SASL; `kafkas://` is TLS. Explicit properties win.
    let tls = url.scheme() == "kafkas";
    let sasl = url.user().is_some();
    let protocol = match (tls, sasl) {
        (false, false) => None,
        (true, false) => Some("ssl"),
        (false, true) => Some("sasl_plaintext"),
        (true, true) => Some("sasl_ssl"),
    };
    if let Some(p) = protocol {
        c = c.property("security.protocol", p);
    }
    if let Some(user) = url.user() {
        c = c
            .property("sasl.mechanism", "PLAIN")
            .property("sasl.username", user)
            .property("sasl.password", url.password().unwrap_or_default());
    }
    for (k, v) in o.drain(|k| k.contains('.')) {
        c.properties.retain(|(name, _)| *name != k);
        c = c.property(k, v);
    }
    o.finish(KAFKA_OPTIONS)?;
    probe_tcp("kafka", url, 9092).await?;
    KafkaBroker::connect(c)
        .await
        .map_err(|e| ConnectError::Unreachable {
            broker: "kafka",
            url: url.to_string(),
            transient: e.is_transient(),
            source: Box::new(e),
        })
}

#[cfg(feature = "rabbitmq")]
const RABBIT_OPTIONS: &[&str] = &[
    "queue_type",
    "content_mode",
    "max_payload",
    "mandatory",
    "confirm_timeout",
    "operation_timeout",
    "reconnect_max_delay",
    "connection_name",
    "queue_expires",
    "connect_timeout",
];

#[cfg(feature = "rabbitmq")]
async fn rabbitmq(
    url: &BrokerUrl,
    mut o: Options,
) -> Result<messaging_rabbitmq::RabbitBroker, ConnectError> {
    use messaging_rabbitmq::{QueueType, RabbitBroker, RabbitConfig};

    // Options of ours come off the URI; the rest (heartbeat, frame_max…) are lapin's.
    let mut c = RabbitConfig::new(url.without_options(RABBIT_OPTIONS));
    if let Some(v) = o.parsed("queue_type", "quorum or classic", |v| match v {
        "quorum" => Some(QueueType::Quorum),
        "classic" => Some(QueueType::Classic),
        _ => None,
    })? {
        c.queue_type = v;
    }
    if let Some(v) = o.content_mode()? {
        c.content_mode = v;
    }
    if let Some(v) = o.number("max_payload")? {
        c.max_payload = v;
    }
    if let Some(v) = o.flag("mandatory")? {
        c.mandatory = v;
    }
    if let Some(v) = o.duration("confirm_timeout")? {
        c.confirm_timeout = v;
    }
    if let Some(v) = o.duration("operation_timeout")? {
        c.operation_timeout = v;
    }
    if let Some(v) = o.duration("reconnect_max_delay")? {
        c.reconnect_max_delay = v;
    }
    if let Some(v) = o.string("connection_name") {
        c.connection_name = v;
    }
    if let Some(v) = o.duration("queue_expires")? {
        c.queue_expires = Some(v);
    }
    // Everything else in the query is lapin's; options from the file must be ours.
    let lapin_keys: Vec<String> = url.query().iter().map(|(k, _)| k.clone()).collect();
    o.drain(|k| lapin_keys.iter().any(|l| l == k));
    o.finish(RABBIT_OPTIONS)?;
    let port = if url.scheme() == "amqps" { 5671 } else { 5672 };
    probe_tcp("rabbitmq", url, port).await?;
    RabbitBroker::connect(c)
        .await
        .map_err(|e| ConnectError::Unreachable {
            broker: "rabbitmq",
            url: url.to_string(),
            transient: e.is_transient(),
            source: Box::new(e),
        })
}

#[cfg(feature = "sqs")]
const SQS_OPTIONS: &[&str] = &[
    "endpoint",
    "region",
    "access_key_id",
    "secret_access_key",
    "topology",
    "content_mode",
    "wait_time",
    "max_in_flight",
    "fifo_topics",
    "retention",
    "call_timeout",
    "connect_timeout",
];

#[cfg(feature = "sqs")]
async fn sqs(url: &BrokerUrl, mut o: Options) -> Result<messaging_sqs::SqsBroker, ConnectError> {
    use messaging_sqs::{SqsBroker, SqsConfig, StaticCredentials, Topology};

    let mut c = SqsConfig {
        endpoint_url: o.string("endpoint"),
        ..SqsConfig::default()
    };
    if let Some(region) = o.string("region") {
        c.region = region;
    } else if !url.hosts().is_empty() {
        c.region = url.hosts().to_owned();
    }
    let key = o.string("access_key_id").or(url.user().map(str::to_owned));
    let secret = o
        .string("secret_access_key")
        .or(url.password().map(str::to_owned));
    c.credentials = match (key, secret) {
        (Some(access_key_id), Some(secret_access_key)) => Some(StaticCredentials {
            access_key_id,
            secret_access_key,
        }),
        (None, None) if c.endpoint_url.is_some() => {
            // A local endpoint (moto, LocalStack) takes any credentials.
            SqsConfig::local("").credentials
        }
        (None, None) => None,
        _ => {
            return Err(ConfigError::InvalidUrl {
                url: url.to_string(),
                reason: "give both the access key id and the secret access key, or neither".into(),
            }
            .into());
        }
    };
    if let Some(v) = o.parsed("topology", "sns_fanout or point_to_point", |v| match v {
        "sns_fanout" => Some(Topology::SnsFanout),
        "point_to_point" => Some(Topology::PointToPoint),
        _ => None,
    })? {
        c.topology = v;
    }
    if let Some(v) = o.content_mode()? {
        c.content_mode = v;
    }
    if let Some(v) = o.duration("wait_time")? {
        c.wait_time = v;
    }
    if let Some(v) = o.number("max_in_flight")? {
        c.max_in_flight = v;
    }
    if let Some(v) = o.list("fifo_topics") {
        c.fifo_topics = v.into_iter().collect();
    }
    if let Some(v) = o.duration("retention")? {
        c.retention = Some(v);
    }
    if let Some(v) = o.duration("call_timeout")? {
        c.call_timeout = v;
    }
    o.finish(SQS_OPTIONS)?;
    let unreachable = |transient: bool, source: Box<dyn std::error::Error + Send + Sync>| {
        ConnectError::Unreachable {
            broker: "sqs",
            url: url.to_string(),
            transient,
            source,
        }
    };
    let broker = if c.credentials.is_some() {
        SqsBroker::new(c)
    } else {
        // No static credentials: aws-config's default chain (environment, profile, SSO,
        // web identity, ECS and EC2 instance roles).
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(c.region.clone()));
        if let Some(endpoint) = &c.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        let timeout = c
            .call_timeout
            .max(c.wait_time.min(Duration::from_secs(20)) + Duration::from_secs(10));
        loader = loader.timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_timeout(timeout)
                .build(),
        );
        let shared = loader.load().await;
        SqsBroker::from_clients(
            aws_sdk_sqs::Client::new(&shared),
            aws_sdk_sns::Client::new(&shared),
            c,
        )
    };
    // One cheap call, so a wrong endpoint or refused credentials fail here, not at first use.
    broker
        .sqs()
        .list_queues()
        .max_results(1)
        .send()
        .await
        .map_err(|e| {
            let transient = matches!(
                e,
                aws_sdk_sqs::error::SdkError::TimeoutError(_)
                    | aws_sdk_sqs::error::SdkError::DispatchFailure(_)
            );
            unreachable(
                transient,
                aws_sdk_sqs::error::DisplayErrorContext(e)
                    .to_string()
                    .into(),
            )
        })?;
    Ok(broker)
}
