//! The clients shared by publishers and subscribers: one producer, one admin client, and the
//! topics already created.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use messaging_core::connect::{Adapter, BrokerUrl, ConfigError, ConnectError, Options, probe_tcp};
use messaging_core::{
    Binding, DelaySupport, Features, Inspect, InspectError, InspectErrorKind, PublishError,
    PublishErrorKind, RawMessage, Receipt,
};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::{KafkaConfig, plain_retry_owner, retry_tier_of, retry_topic};
use crate::error;
use crate::publisher::{KafkaPublisher, Producer};
use crate::subscriber::KafkaSubscriber;

/// A connection to a Kafka cluster; hands out publishers and subscribers. Cheap to clone.
#[derive(Clone)]
pub struct KafkaBroker {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for KafkaBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaBroker")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub(crate) config: KafkaConfig,
    pub(crate) binding: Binding,
    pub(crate) producer: Producer,
    admin: AdminClient<DefaultClientContext>,
    topics: Mutex<HashSet<String>>,
    /// Start positions a new group's subscription chose whose commit is not known to have
    /// landed, by (`group.id`, topic, partition): a later assignment in this process starts
    /// there instead of deciding again that the group is new (and starting at the then end).
    pub(crate) uncommitted_starts: Mutex<HashMap<(String, String, i32), i64>>,
}

/// Why the connect probe failed.
enum Refused {
    /// SASL authentication failed, with librdkafka's reason.
    Authentication(String),
    /// The TLS handshake failed, with librdkafka's reason.
    Tls(String),
    /// Anything else: the metadata request's own error.
    Other(KafkaError),
}

/// Watches librdkafka's log for a connection it refused for good: a TLS handshake that failed
/// on the certificate (OpenSSL's reason, "SSL handshake failed: error:…: certificate verify
/// failed"), or a failed SASL authentication. Its error events carry only a code, and may come
/// long after the log line, behind transport failures. Every line still goes on to the `log`
/// crate, as without this context.
#[derive(Default)]
struct ProbeContext {
    refused: Mutex<Option<Refused>>,
}

impl ProbeContext {
    fn take(&self) -> Option<Refused> {
        messaging_core::sync::lock(&self.refused).take()
    }
}

/// What a librdkafka log line says about a connection, if it was refused for good. A TLS
/// failure without OpenSSL's error (a connection dropped mid-handshake) is not one.
fn refusal_in(line: &str) -> Option<Refused> {
    if line.contains("SASL authentication error")
        || line.contains("SASL SCRAM") && line.contains("failed")
    {
        return Some(Refused::Authentication(line.to_owned()));
    }
    if line.contains("SSL handshake failed: error:") || line.contains("certificate verify failed") {
        return Some(Refused::Tls(line.to_owned()));
    }
    None
}

impl rdkafka::ClientContext for ProbeContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, line: &str) {
        if let Some(refused) = refusal_in(line) {
            messaging_core::sync::lock(&self.refused).get_or_insert(refused);
        }
        DefaultClientContext.log(level, fac, line);
    }
}

impl rdkafka::consumer::ConsumerContext for ProbeContext {}

/// Asks for the cluster's metadata until `timeout`, watching in between for a refusal (see
/// [`ProbeContext`]) and the client's error events: librdkafka keeps trying a connection it
/// cannot make, so without this a refused one would look like a broker that does not answer
/// (a time-out, transient). A refusal fails at once, and not as transient.
fn probe_cluster(
    probe: &BaseConsumer<ProbeContext>,
    timeout: std::time::Duration,
) -> Result<(), Refused> {
    use std::time::{Duration, Instant};
    let end = Instant::now() + timeout;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        let last = match probe.fetch_metadata(None, left.min(Duration::from_millis(250))) {
            Ok(_) => return Ok(()),
            Err(e) => e,
        };
        while let Some(event) = probe.poll(Duration::ZERO) {
            let Err(e) = event else { continue };
            let refused = match e.rdkafka_error_code() {
                Some(RDKafkaErrorCode::SSL) => Refused::Tls(e.to_string()),
                Some(
                    RDKafkaErrorCode::Authentication | RDKafkaErrorCode::SaslAuthenticationFailed,
                ) => Refused::Authentication(e.to_string()),
                _ => continue,
            };
            // The log line says why; the event only what.
            return Err(probe.context().take().unwrap_or(refused));
        }
        if let Some(refused) = probe.context().take() {
            return Err(refused);
        }
        if Instant::now() >= end {
            return Err(Refused::Other(last));
        }
    }
}

/// Lag of one partition of a group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionLag {
    /// The topic (the group's topic or one of its retry topics).
    pub topic: String,
    /// The partition.
    pub partition: i32,
    /// The group's committed offset (the next message it will read), if it committed one.
    pub committed: Option<i64>,
    /// The partition's high watermark (the offset of the next message written).
    pub high_watermark: i64,
    /// Messages the group has not settled yet: high watermark minus committed offset (minus
    /// the low watermark without a commit).
    pub lag: u64,
}

impl KafkaBroker {
    /// Creates the clients and checks that the cluster answers: a TCP connection to one of
    /// the bootstrap servers (failing at once when none accepts), then a metadata request
    /// bounded by `config.subscribe_timeout`. An error is transient unless librdkafka refused
    /// the configuration.
    pub async fn connect(config: KafkaConfig) -> Result<Self, ConnectError> {
        let servers = config.bootstrap_servers.clone();
        probe_tcp("kafka", &servers, &servers, 9092).await?;
        let fail = |source: KafkaError| {
            let transient = !matches!(
                source,
                KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_)
            );
            ConnectError::unreachable("kafka", servers.clone(), transient, source)
        };
        let producer = Producer::new(&config).map_err(fail)?;
        let admin: AdminClient<DefaultClientContext> =
            config.client_config().create().map_err(fail)?;
        let probe: BaseConsumer<ProbeContext> = config
            .client_config()
            .create_with_context(ProbeContext::default())
            .map_err(fail)?;
        let timeout = config.subscribe_timeout;
        let shown = servers.clone();
        tokio::task::spawn_blocking(move || probe_cluster(&probe, timeout))
            .await
            .map_err(|_| fail(KafkaError::Canceled))?
            .map_err(|refused| match refused {
                Refused::Authentication(why) => ConnectError::authentication("kafka", shown, why),
                Refused::Tls(why) => ConnectError::tls("kafka", shown, why),
                Refused::Other(e) => fail(e),
            })?;
        Ok(Self {
            shared: Arc::new(Shared {
                binding: Binding::kafka(),
                producer,
                admin,
                topics: Mutex::new(HashSet::new()),
                uncommitted_starts: Mutex::new(HashMap::new()),
                config,
            }),
        })
    }

    /// A publisher over the broker's shared producer.
    pub fn publisher(&self) -> KafkaPublisher {
        KafkaPublisher::new(self.shared.clone())
    }

    /// A subscriber.
    pub fn subscriber(&self) -> KafkaSubscriber {
        KafkaSubscriber::new(self.shared.clone())
    }

    /// The configuration.
    pub fn config(&self) -> &KafkaConfig {
        &self.shared.config
    }

    /// What Kafka can do through this adapter.
    pub fn features(&self) -> Features {
        self.shared.features()
    }

    /// Creates `topic` with the configured partition count if it does not exist.
    pub async fn create_topic(&self, topic: &str) -> Result<(), PublishError> {
        self.shared.ensure_topics(&[topic]).await
    }

    /// Publishes `raw` as it is, past the CloudEvents codec: the body as the record value, each
    /// header as a record header, the content type as the `content-type` header, no key — what
    /// a producer that does not speak CloudEvents sends. For bridging such producers and for
    /// testing what consumers do with their messages (a consumer runtime dead-letters a
    /// message it cannot decode as `messaging.undecodable`). Creates the topic like
    /// [`publisher`](Self::publisher) does; a message over `max_message_bytes` is refused
    /// (`PayloadTooLarge`).
    pub async fn publish_raw(
        &self,
        topic: &str,
        raw: &RawMessage,
    ) -> Result<Receipt, PublishError> {
        let size = raw.body.len()
            + raw.content_type.as_ref().map_or(0, |c| c.len() + 12)
            + raw
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>();
        let max = self.shared.config.max_message_bytes;
        if size > max {
            return Err(PublishError::new(PublishErrorKind::PayloadTooLarge)
                .with_detail(format!("message of {size} bytes, limit {max}")));
        }
        self.shared.ensure_topics(&[topic]).await?;
        let mut headers = OwnedHeaders::new_with_capacity(raw.headers.len() + 1);
        if let Some(ct) = &raw.content_type {
            headers = headers.insert(Header {
                key: "content-type",
                value: Some(ct.as_bytes()),
            });
        }
        for (k, v) in &raw.headers {
            headers = headers.insert(Header {
                key: k,
                value: Some(v.as_slice()),
            });
        }
        self.shared
            .producer
            .send_one(topic, None, &raw.body, headers)
            .await
            .map_err(error::publish)
    }

    /// Per-partition lag of `group` on `topic` and its retry topics; `None` if the group has
    /// committed nothing there (it does not exist).
    pub async fn lag(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<Option<Vec<PartitionLag>>, InspectError> {
        let shared = self.shared.clone();
        let topic = topic.to_owned();
        let group = group.to_owned();
        tokio::task::spawn_blocking(move || shared.lag_blocking(&topic, &group))
            .await
            .map_err(|e| InspectError::new(InspectErrorKind::Unavailable).with_source(e))?
    }
}

impl Shared {
    pub(crate) fn features(&self) -> Features {
        Features {
            consumer_groups: true,
            ordering: true,
            replay: true,
            delayed_redelivery: if self.config.retry_tiers.is_empty() {
                DelaySupport::None
            } else {
                DelaySupport::Emulated
            },
            max_payload: Some(self.config.max_message_bytes),
            persistent: true,
            counts_redeliveries_across_consumers: self.config.commit_metadata,
            individual_acks: false,
            ..Features::new("kafka")
        }
    }

    /// Creates the topics not created yet, tolerating ones that exist.
    pub(crate) async fn ensure_topics(&self, topics: &[&str]) -> Result<(), PublishError> {
        if !self.config.create_topics {
            return Ok(());
        }
        let missing: Vec<&str> = {
            let known = messaging_core::sync::lock(&self.topics);
            topics
                .iter()
                .copied()
                .filter(|t| !known.contains(*t))
                .collect()
        };
        if missing.is_empty() {
            return Ok(());
        }
        let new: Vec<NewTopic<'_>> = missing
            .iter()
            .map(|t| {
                NewTopic::new(
                    t,
                    self.config.partitions,
                    TopicReplication::Fixed(self.config.replication),
                )
            })
            .collect();
        let options = AdminOptions::new().operation_timeout(Some(self.config.subscribe_timeout));
        let results = self
            .admin
            .create_topics(new.iter(), &options)
            .await
            .map_err(error::publish)?;
        for result in results {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((topic, code)) => {
                    return Err(error::publish(KafkaError::AdminOp(code))
                        .with_detail(format!("cannot create topic {topic:?}: {code}")));
                }
            }
        }
        self.topics
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .extend(missing.iter().map(|t| (*t).to_owned()));
        Ok(())
    }

    /// The retry topics of `group` on `topic` that exist on the cluster, under today's
    /// naming or the legacy one, whatever their tier, each with whether copies on it without
    /// a group header are the group's (see [`Shared::owns_headerless`]).
    pub(crate) async fn group_retry_topics(
        self: &Arc<Self>,
        topic: &str,
        group: &str,
    ) -> Result<Vec<(String, bool)>, KafkaError> {
        let shared = self.clone();
        let (topic, group) = (topic.to_owned(), group.to_owned());
        tokio::task::spawn_blocking(move || {
            let found = shared.group_retry_topics_blocking(&topic, &group)?;
            found
                .into_iter()
                .map(|(name, partitions)| {
                    let own = shared.owns_headerless(&name, &partitions, &topic, &group)?;
                    Ok((name, own))
                })
                .collect()
        })
        .await
        .map_err(|_| KafkaError::Canceled)?
    }

    /// The retry topics of `group` on `topic` on the cluster, with their partition ids.
    fn group_retry_topics_blocking(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<Vec<(String, Vec<i32>)>, KafkaError> {
        let md = self
            .admin
            .inner()
            .fetch_metadata(None, self.config.subscribe_timeout)?;
        let mut found: Vec<(String, Vec<i32>)> = md
            .topics()
            .iter()
            .filter(|t| t.error().is_none() && retry_tier_of(t.name(), topic, group).is_some())
            .map(|t| {
                (
                    t.name().to_owned(),
                    t.partitions().iter().map(|p| p.id()).collect(),
                )
            })
            .collect();
        found.sort_unstable();
        Ok(found)
    }

    /// Whether copies on the retry topic `name` of `group` on `topic` that carry no group
    /// header (written by versions before the header) are the group's.
    ///
    /// Such a copy names its origin topic but not its group. It is the group's when `name` is
    /// the group's current retry topic. On a legacy name (the group sanitized, e.g.
    /// `orders.billing_v1.retry.1m` for `billing/v1`) it is the group's unless the name is
    /// the current retry topic of another group *of the same topic* (`billing_v1`) that uses
    /// it (has commits on it): that group reads it as its own, and a copy without the header
    /// cannot be told apart — it goes to the group whose current name it is, never to both.
    /// (Another topic's group writes another origin, which tells its copies apart.) A legacy
    /// name no other group uses stays the group's, so an upgrade does not orphan its parked
    /// copies.
    fn owns_headerless(
        &self,
        name: &str,
        partitions: &[i32],
        topic: &str,
        group: &str,
    ) -> Result<bool, KafkaError> {
        let Some(tier) = retry_tier_of(name, topic, group) else {
            return Ok(false);
        };
        if retry_topic(topic, group, tier) == name {
            return Ok(true);
        }
        let Some((owner_topic, owner_group, _)) = plain_retry_owner(name) else {
            return Ok(true);
        };
        if owner_topic != topic || owner_group == group || partitions.is_empty() {
            return Ok(true);
        }
        let reader: BaseConsumer = self
            .config
            .client_config()
            .set("group.id", self.config.group_id(topic, &owner_group))
            .set("enable.auto.commit", "false")
            .create()?;
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(name, *p);
        }
        let committed = reader.committed_offsets(tpl, self.config.subscribe_timeout)?;
        let mut used = false;
        for e in committed.elements() {
            e.error()?;
            used |= matches!(e.offset(), Offset::Offset(_));
        }
        if used {
            tracing::warn!(
                topic,
                group,
                retry_topic = name,
                other_group = %owner_group,
                "a legacy retry topic of the group is another group's current one: copies \
                 parked there by earlier versions (without a group header) are left to it"
            );
        }
        Ok(!used)
    }

    /// A consumer for reading the commits of `group_id` (it never joins the group).
    fn offsets_reader(&self, group_id: &str) -> Result<BaseConsumer, InspectError> {
        self.config
            .client_config()
            .set("group.id", group_id)
            .set("enable.auto.commit", "false")
            .create()
            .map_err(error::inspect)
    }

    fn lag_blocking(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<Option<Vec<PartitionLag>>, InspectError> {
        let timeout = self.config.subscribe_timeout;
        let consumer = self.offsets_reader(&self.config.group_id(topic, group))?;
        let mut topics = vec![topic.to_owned()];
        topics.extend(
            self.config
                .retry_tiers
                .iter()
                .map(|t| retry_topic(topic, group, *t)),
        );
        for (t, _) in self
            .group_retry_topics_blocking(topic, group)
            .map_err(error::inspect)?
        {
            if !topics.contains(&t) {
                topics.push(t);
            }
        }
        let mut tpl = TopicPartitionList::new();
        for t in &topics {
            let md = consumer
                .fetch_metadata(Some(t), timeout)
                .map_err(error::inspect)?;
            for mt in md.topics().iter().filter(|mt| mt.error().is_none()) {
                for p in mt.partitions() {
                    tpl.add_partition(t, p.id());
                }
            }
        }
        if tpl.count() == 0 {
            return Ok(None);
        }
        let mut committed = consumer
            .committed_offsets(tpl, timeout)
            .map_err(error::inspect)?;
        for e in committed.elements() {
            e.error().map_err(error::inspect)?;
        }
        if let Some(legacy) = self.config.legacy_group_id(group) {
            // Partitions not committed under the new id yet continue from the legacy one.
            let uncommitted: Vec<(String, i32)> = committed
                .elements()
                .iter()
                .filter(|e| !matches!(e.offset(), Offset::Offset(_)))
                .map(|e| (e.topic().to_owned(), e.partition()))
                .collect();
            if !uncommitted.is_empty() {
                let mut tpl = TopicPartitionList::new();
                for (t, p) in &uncommitted {
                    tpl.add_partition(t, *p);
                }
                let old = self
                    .offsets_reader(legacy)?
                    .committed_offsets(tpl, timeout)
                    .map_err(error::inspect)?;
                for e in old.elements() {
                    e.error().map_err(error::inspect)?;
                    if let Offset::Offset(o) = e.offset() {
                        committed
                            .set_partition_offset(e.topic(), e.partition(), Offset::Offset(o))
                            .map_err(error::inspect)?;
                    }
                }
            }
        }
        let mut any = false;
        let mut lags = Vec::new();
        for e in committed.elements() {
            let (low, high) = consumer
                .fetch_watermarks(e.topic(), e.partition(), timeout)
                .map_err(error::inspect)?;
            let committed = match e.offset() {
                Offset::Offset(o) => {
                    any = true;
                    Some(o)
                }
                _ => None,
            };
            let from = committed.unwrap_or(low).max(low);
            lags.push(PartitionLag {
                topic: e.topic().to_owned(),
                partition: e.partition(),
                committed,
                high_watermark: high,
                lag: u64::try_from(high - from).unwrap_or(0),
            });
        }
        Ok(any.then_some(lags))
    }
}

impl Adapter for KafkaBroker {
    const NAME: &'static str = "kafka";
    const SCHEMES: &'static [&'static str] = &["kafka", "kafkas"];
    const OPTIONS: &'static [&'static str] = crate::config::OPTIONS;
    type Config = KafkaConfig;
    type Publisher = KafkaPublisher;
    type Subscriber = KafkaSubscriber;

    fn configure(url: &BrokerUrl, options: Options) -> Result<KafkaConfig, ConfigError> {
        KafkaConfig::from_options(url, options)
    }

    async fn connect(config: KafkaConfig) -> Result<Self, ConnectError> {
        Self::connect(config).await
    }

    fn publisher(&self) -> KafkaPublisher {
        Self::publisher(self)
    }

    fn subscriber(&self) -> KafkaSubscriber {
        Self::subscriber(self)
    }

    fn features(&self) -> Features {
        Self::features(self)
    }

    async fn publish_raw(&self, topic: &str, raw: &RawMessage) -> Result<Receipt, PublishError> {
        Self::publish_raw(self, topic, raw).await
    }
}

impl Inspect for KafkaBroker {
    /// The group's lag: messages not yet settled on the topic and its retry topics.
    async fn depth(&self, topic: &str, group: &str) -> Result<Option<u64>, InspectError> {
        Ok(self
            .lag(topic, group)
            .await?
            .map(|lags| lags.iter().map(|l| l.lag).sum()))
    }
}
