//! The clients, topology declarations and the caches of resolved topics.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_sdk_sqs::types::QueueAttributeName;
use messaging_core::connect::{Adapter, BrokerUrl, ConfigError, ConnectError, Options};
use messaging_core::dead_letter::DEAD_LETTER_GROUP;
use messaging_core::{
    Binding, DelaySupport, Features, Inspect, InspectError, InspectErrorKind, SubscribeError,
    SubscribeErrorKind, SubscribeOptions,
};

use crate::config::{SqsConfig, Topology};
use crate::publisher::SqsPublisher;
use crate::subscriber::SqsSubscriber;
use crate::{codec, error, names};

/// A connection to SQS and SNS; hands out publishers and subscribers. Cheap to clone.
#[derive(Clone)]
pub struct SqsBroker {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for SqsBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsBroker")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// Where messages for a topic go: an SNS topic, or (point-to-point) an SQS queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Destination {
    /// An SNS topic.
    Topic {
        /// Its ARN.
        arn: String,
        /// Whether it is a FIFO topic.
        fifo: bool,
    },
    /// An SQS queue.
    Queue {
        /// Its URL.
        url: String,
        /// Whether it is a FIFO queue.
        fifo: bool,
    },
}

impl Destination {
    pub(crate) fn is_fifo(&self) -> bool {
        match self {
            Self::Topic { fifo, .. } | Self::Queue { fifo, .. } => *fifo,
        }
    }
}

/// The SDK's own HTTPS client (rustls with aws-lc), trusting `tls.ca_file` besides the
/// system's roots; `None` without a CA file, so the SDK builds its default one.
fn http_client(
    tls: &messaging_core::connect::TlsFiles,
) -> Result<Option<aws_sdk_sqs::config::SharedHttpClient>, ConfigError> {
    use aws_smithy_http_client::tls;
    let Some(ca) = tls.read_ca()? else {
        return Ok(None);
    };
    let context = tls::TlsContext::builder()
        .with_trust_store(tls::TrustStore::default().with_pem_certificate(ca))
        .build()
        .map_err(|e| ConfigError::Invalid {
            origin: Some("tls_ca_file".into()),
            message: format!("the CA file cannot be used: {e}"),
        })?;
    Ok(Some(
        aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(
                tls::rustls_provider::CryptoMode::AwsLc,
            ))
            .tls_context(context)
            .build_https(),
    ))
}

/// A group's queue, declared.
#[derive(Debug, Clone)]
pub(crate) struct GroupQueue {
    pub(crate) url: String,
    pub(crate) fifo: bool,
    /// Where messages past the delivery limit are forwarded (with dead-letter metadata).
    pub(crate) dead_letter: Option<(String, Destination)>,
}

pub(crate) struct Shared {
    pub(crate) sqs: aws_sdk_sqs::Client,
    pub(crate) sns: aws_sdk_sns::Client,
    pub(crate) config: SqsConfig,
    pub(crate) binding: Binding,
    destinations: Mutex<HashMap<String, Destination>>,
    /// `arn:<partition>:sns:<region>:<account>:`, once known.
    arn_prefix: Mutex<Option<String>>,
}

impl SqsBroker {
    /// Builds the SQS and SNS clients from `config` (region, endpoint URL, static credentials).
    /// No call is made until the first publish or subscribe.
    ///
    /// # Panics
    ///
    /// If `config.tls.ca_file` is set and cannot be read; [`connect`](Self::connect) returns
    /// that as [`ConnectError::Config`] instead.
    pub fn new(config: SqsConfig) -> Self {
        let http = http_client(&config.tls).unwrap_or_else(|e| panic!("{e}"));
        Self::with_http(config, http)
    }

    fn with_http(config: SqsConfig, http: Option<aws_sdk_sqs::config::SharedHttpClient>) -> Self {
        let region = aws_sdk_sqs::config::Region::new(config.region.clone());
        let mut sqs = aws_sdk_sqs::Config::builder()
            .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
            .region(region.clone());
        let mut sns = aws_sdk_sns::Config::builder()
            .behavior_version(aws_sdk_sns::config::BehaviorVersion::latest())
            .region(region);
        sqs = sqs.timeout_config(config.timeouts());
        sns = sns.timeout_config(config.timeouts());
        sqs = sqs.retry_config(SqsConfig::retries());
        sns = sns.retry_config(SqsConfig::retries());
        if let Some(url) = &config.endpoint_url {
            sqs = sqs.endpoint_url(url);
            sns = sns.endpoint_url(url);
        }
        if let Some(http) = http {
            sqs = sqs.http_client(http.clone());
            sns = sns.http_client(http);
        }
        if let Some(c) = &config.credentials {
            let creds = aws_sdk_sqs::config::Credentials::new(
                &c.access_key_id,
                &c.secret_access_key,
                None,
                None,
                "messaging-sqs",
            );
            sqs = sqs.credentials_provider(creds.clone());
            sns = sns.credentials_provider(creds);
        }
        Self::from_clients(
            aws_sdk_sqs::Client::from_conf(sqs.build()),
            aws_sdk_sns::Client::from_conf(sns.build()),
            config,
        )
    }

    /// Builds the clients — from `config`'s static credentials, or else from aws-config's
    /// default chain (environment, profile, SSO, web identity, container and instance roles),
    /// with the same call timeout and retries either way — and makes one cheap call
    /// (`ListQueues`), so a wrong endpoint or refused credentials fail here, not at first use.
    /// An endpoint that does not answer is transient; refused credentials are not.
    ///
    /// Refused keys (a wrong secret, an unknown access key, an expired token) fail as
    /// [`ConnectError::Authentication`], keys without permission for `ListQueues` as
    /// [`ConnectError::Forbidden`], and an `https://` endpoint whose certificate does not
    /// verify as [`ConnectError::Tls`].
    pub async fn connect(config: SqsConfig) -> Result<Self, ConnectError> {
        let http = http_client(&config.tls)?;
        let broker = if config.credentials.is_some() {
            Self::with_http(config, http)
        } else {
            Self::from_default_chain(config, http).await
        };
        broker
            .sqs()
            .list_queues()
            .max_results(1)
            .send()
            .await
            .map_err(|e| crate::error::connect(broker.shared.config.shown(), e))?;
        Ok(broker)
    }

    /// Clients from aws-config's default credential chain, with the call timeout and retries
    /// that [`new`](Self::new) gives its clients.
    async fn from_default_chain(
        config: SqsConfig,
        http: Option<aws_sdk_sqs::config::SharedHttpClient>,
    ) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .region(aws_config::Region::new(config.region.clone()))
            .timeout_config(config.timeouts())
            .retry_config(SqsConfig::retries());
        if let Some(endpoint) = &config.endpoint_url {
            loader = loader.endpoint_url(endpoint);
        }
        if let Some(http) = http {
            loader = loader.http_client(http);
        }
        let shared = loader.load().await;
        Self::from_clients(
            aws_sdk_sqs::Client::new(&shared),
            aws_sdk_sns::Client::new(&shared),
            config,
        )
    }

    /// Uses clients built elsewhere (e.g. from `aws-config`'s default credential chain);
    /// `config`'s region, endpoint and credentials are then not used.
    pub fn from_clients(
        sqs: aws_sdk_sqs::Client,
        sns: aws_sdk_sns::Client,
        config: SqsConfig,
    ) -> Self {
        Self {
            shared: Arc::new(Shared {
                sqs,
                sns,
                config,
                binding: codec::binding(),
                destinations: Mutex::default(),
                arn_prefix: Mutex::default(),
            }),
        }
    }

    /// A publisher.
    pub fn publisher(&self) -> SqsPublisher {
        SqsPublisher::new(self.shared.clone())
    }

    /// A subscriber.
    pub fn subscriber(&self) -> SqsSubscriber {
        SqsSubscriber {
            shared: self.shared.clone(),
        }
    }

    /// What this adapter can do with its configuration.
    pub fn features(&self) -> Features {
        self.shared.features()
    }

    /// Publishes `raw` as it is, past the CloudEvents codec, to `topic` (an SNS topic, or a
    /// queue in point-to-point topology, created like [`publisher`](Self::publisher) does):
    /// the body as the message, each header as a `String` message attribute, the content type
    /// as the `content-type` attribute — what a producer that does not speak CloudEvents
    /// sends. For bridging such producers and for testing what consumers do with their
    /// messages (a consumer runtime dead-letters a message it cannot decode as
    /// `messaging.undecodable`). The body must be non-empty SQS text and at most 10
    /// attributes are allowed (`Encode` otherwise); over the size limit is `PayloadTooLarge`.
    pub async fn publish_raw(
        &self,
        topic: &str,
        raw: &messaging_core::RawMessage,
    ) -> Result<messaging_core::Receipt, messaging_core::PublishError> {
        let out = crate::codec::encode_raw(raw, self.shared.config.max_payload())?;
        let dest = self
            .shared
            .destination(topic, false)
            .await
            .map_err(crate::publisher::from_subscribe)?;
        self.shared.send_one(&dest, out).await
    }

    /// The SQS client, for what this crate does not cover.
    pub fn sqs(&self) -> &aws_sdk_sqs::Client {
        &self.shared.sqs
    }

    /// The SNS client, for what this crate does not cover.
    pub fn sns(&self) -> &aws_sdk_sns::Client {
        &self.shared.sns
    }

    /// The URL of the queue of `group` on `topic` (the topic's queue, point-to-point), if it
    /// exists.
    pub async fn queue_url(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<Option<String>, InspectError> {
        self.shared.find_queue(topic, group).await
    }
}

use messaging_core::sync::lock;

type SubResult<T> = Result<T, SubscribeError>;

impl Shared {
    pub(crate) fn features(&self) -> Features {
        let fanout = self.config.topology == Topology::SnsFanout;
        Features {
            consumer_groups: fanout,
            ordering: true,
            replay: false,
            delayed_redelivery: DelaySupport::Native,
            native_dead_letter: true,
            ack_deadline: true,
            extend_deadline: true,
            max_payload: Some(self.config.max_payload()),
            transactions: false,
            persistent: true,
            ..Features::new("sqs")
        }
    }

    fn learn_prefix(&self, arn: &str) {
        if let Some(i) = arn.rfind(':') {
            let mut p = lock(&self.arn_prefix);
            if p.is_none() {
                *p = Some(arn[..=i].to_owned());
            }
        }
    }

    /// The ARN prefix of this account's topics: from a topic resolved before, or the first
    /// page of `ListTopics`. `None` while the account has no topic at all.
    async fn arn_prefix(&self) -> SubResult<Option<String>> {
        if let Some(p) = lock(&self.arn_prefix).clone() {
            return Ok(Some(p));
        }
        let out = self
            .sns
            .list_topics()
            .send()
            .await
            .map_err(error::subscribe)?;
        if let Some(arn) = out.topics().iter().find_map(|t| t.topic_arn()) {
            self.learn_prefix(arn);
        }
        Ok(lock(&self.arn_prefix).clone())
    }

    async fn topic_exists(&self, arn: &str) -> SubResult<bool> {
        match self.sns.get_topic_attributes().topic_arn(arn).send().await {
            Ok(_) => Ok(true),
            Err(e) if error::is_not_found(&e) => Ok(false),
            Err(e) => Err(error::subscribe(e)),
        }
    }

    async fn create_topic(&self, name: &str, fifo: bool) -> SubResult<String> {
        let mut req = self.sns.create_topic().name(name);
        if fifo {
            req = req.attributes("FifoTopic", "true");
        }
        let out = req.send().await.map_err(error::subscribe)?;
        let arn = out
            .topic_arn()
            .ok_or_else(|| {
                SubscribeError::new(SubscribeErrorKind::Rejected)
                    .with_detail(format!("CreateTopic {name} returned no ARN"))
            })?
            .to_owned();
        self.learn_prefix(&arn);
        Ok(arn)
    }

    async fn create_queue(&self, name: &str, fifo: bool) -> SubResult<String> {
        let mut req = self.sqs.create_queue().queue_name(name);
        if fifo {
            req = req.attributes(QueueAttributeName::FifoQueue, "true");
        }
        if let Some(r) = self.config.retention {
            req = req.attributes(
                QueueAttributeName::MessageRetentionPeriod,
                r.as_secs().clamp(60, 1_209_600).to_string(),
            );
        }
        let out = req.send().await.map_err(error::subscribe)?;
        out.queue_url().map(str::to_owned).ok_or_else(|| {
            SubscribeError::new(SubscribeErrorKind::Rejected)
                .with_detail(format!("CreateQueue {name} returned no URL"))
        })
    }

    async fn queue_arn(&self, url: &str) -> SubResult<String> {
        let out = self
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::QueueArn)
            .send()
            .await
            .map_err(error::subscribe)?;
        out.attributes()
            .and_then(|a| a.get(&QueueAttributeName::QueueArn))
            .cloned()
            .ok_or_else(|| {
                SubscribeError::new(SubscribeErrorKind::Rejected)
                    .with_detail(format!("queue {url} has no ARN"))
            })
    }

    /// Where `topic`'s messages go, creating the SNS topic (or, point-to-point, the queue) if
    /// needed. `ordered` asks for a FIFO topic.
    ///
    /// A topic is FIFO if its name ends in `.fifo`, if the configuration lists it, if an
    /// ordered group created it, or if a FIFO topic of its name already exists; otherwise it
    /// is a standard topic.
    pub(crate) async fn destination(&self, topic: &str, ordered: bool) -> SubResult<Destination> {
        let cached = lock(&self.destinations).get(topic).cloned();
        if let Some(d) = cached {
            return if ordered && !d.is_fifo() {
                Err(standard_topic(topic))
            } else {
                Ok(d)
            };
        }
        let declared = self.config.declared_fifo(topic);
        let dest = match self.config.topology {
            Topology::PointToPoint => {
                if ordered && !declared {
                    return Err(
                        SubscribeError::new(SubscribeErrorKind::Unsupported).with_detail(format!(
                            "sqs: ordering on point-to-point queue {topic:?} needs a FIFO queue: \
                             name it `<name>.fifo` or list it in SqsConfig::fifo_topics"
                        )),
                    );
                }
                let url = self
                    .create_queue(&names::queue_name(topic, declared), declared)
                    .await?;
                Destination::Queue {
                    url,
                    fifo: declared,
                }
            }
            Topology::SnsFanout => {
                let prefix = if declared {
                    None
                } else {
                    self.arn_prefix().await?
                };
                let fifo = match &prefix {
                    _ if declared => true,
                    Some(p) => {
                        if ordered {
                            let standard = format!("{p}{}", names::topic_name(topic, false));
                            if self.topic_exists(&standard).await? {
                                return Err(standard_topic(topic));
                            }
                            true
                        } else {
                            let fifo = format!("{p}{}", names::topic_name(topic, true));
                            self.topic_exists(&fifo).await?
                        }
                    }
                    None => ordered,
                };
                let arn = self
                    .create_topic(&names::topic_name(topic, fifo), fifo)
                    .await?;
                Destination::Topic { arn, fifo }
            }
        };
        lock(&self.destinations).insert(topic.to_owned(), dest.clone());
        Ok(dest)
    }

    /// Declares the queue of `options.group()` on `topic` (point-to-point: the topic's queue),
    /// subscribed to the topic with raw delivery and a policy letting the topic send to it,
    /// plus the dead-letter topology when the options set a delivery limit. Idempotent.
    pub(crate) async fn declare_group(
        &self,
        topic: &str,
        options: &SubscribeOptions,
    ) -> SubResult<GroupQueue> {
        let dest = self.destination(topic, options.is_ordered()).await?;
        let fifo = dest.is_fifo();
        let (url, arn) = match &dest {
            Destination::Queue { url, .. } => (url.clone(), None),
            Destination::Topic { arn, .. } => {
                let name = self
                    .group_queue_name(topic, options.group(), fifo, arn, true)
                    .await?;
                let url = self.create_queue(&name, fifo).await?;
                (url, Some(arn.clone()))
            }
        };
        let mut attrs: Vec<(QueueAttributeName, String)> = Vec::new();
        let queue_arn = self.queue_arn(&url).await?;
        if let Some(topic_arn) = &arn {
            let policy = serde_json::json!({
                "Version": "2012-10-17",
                "Statement": [{
                    "Sid": "messaging-sns-to-sqs",
                    "Effect": "Allow",
                    "Principal": {"Service": "sns.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": queue_arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": topic_arn}},
                }],
            });
            attrs.push((QueueAttributeName::Policy, policy.to_string()));
        }
        let mut dead_letter = None;
        if let Some(max) = options.get_max_deliveries() {
            let dlq_topic = options.dead_letter_topic_for(topic);
            let dlq_options = SubscribeOptions::new(DEAD_LETTER_GROUP).ordered(fifo);
            let dlq = Box::pin(self.declare_group(&dlq_topic, &dlq_options))
                .await
                .map_err(|e| {
                    if fifo && e.kind() == SubscribeErrorKind::Unsupported {
                        standard_dead_letter_topic(topic, options.group(), &dlq_topic, &e)
                    } else {
                        e
                    }
                })?;
            let dlq_arn = self.queue_arn(&dlq.url).await?;
            // The adapter forwards a message at delivery max + 1 (see the crate docs); SQS
            // moves it natively one receive later if that forward never happens.
            let redrive = serde_json::json!({
                "deadLetterTargetArn": dlq_arn,
                "maxReceiveCount": max.saturating_add(1),
            });
            attrs.push((QueueAttributeName::RedrivePolicy, redrive.to_string()));
            let dlq_dest = self.destination(&dlq_topic, fifo).await?;
            dead_letter = Some((dlq_topic, dlq_dest));
        }
        if !attrs.is_empty() {
            let mut req = self.sqs.set_queue_attributes().queue_url(&url);
            for (k, v) in attrs {
                req = req.attributes(k, v);
            }
            req.send().await.map_err(error::subscribe)?;
        }
        if let Some(topic_arn) = arn {
            self.sns
                .subscribe()
                .topic_arn(topic_arn)
                .protocol("sqs")
                .endpoint(queue_arn)
                .attributes("RawMessageDelivery", "true")
                .return_subscription_arn(true)
                .send()
                .await
                .map_err(error::subscribe)?;
        }
        Ok(GroupQueue {
            url,
            fifo,
            dead_letter,
        })
    }

    /// The queue of `group` on `topic` (SNS fan-out, `topic_arn`), keeping an earlier
    /// version's queue so that upgrading strands nothing and processes nothing twice.
    ///
    /// Before queue names became injective the queue was always the plain join
    /// `<topic>-<group>` (see the crate docs, "Queue names"). For a topic with `-` or `_`
    /// that *legacy* name is kept while the queue exists and is subscribed to this topic and
    /// to no other topic that could have joined to the same name (the old collision: then it
    /// gets the new name and a warning names the shared queue). For a plain topic whose
    /// group has `-`, the name is its plain join unless that queue is kept, as its legacy
    /// queue, by another pair (subscribed to that pair's topic and not to this one): then it
    /// takes the displaced name `<topic>_<hash>-<group>`. `log` says whether to log what was
    /// decided (declare) or stay quiet (inspect).
    async fn group_queue_name(
        &self,
        topic: &str,
        group: &str,
        fifo: bool,
        topic_arn: &str,
        log: bool,
    ) -> SubResult<String> {
        let name = names::group_queue_name(topic, group, fifo);
        let legacy = names::legacy_group_queue_name(topic, group, fifo);
        if legacy != name {
            let others = names::other_owners(topic, &legacy);
            let Some(subs) = self
                .subscriptions(&legacy, topic_arn, &others, fifo)
                .await?
            else {
                return Ok(name);
            };
            if !subs.own {
                return Ok(name);
            }
            if let Some(other) = subs.other {
                if log {
                    tracing::warn!(
                        topic,
                        group,
                        queue = name,
                        legacy_queue = legacy,
                        also_subscribed_to = other,
                        waiting = %subs.waiting,
                        "the group's queue under the earlier naming is also subscribed to \
                         another topic, so the group moves to its own queue; the old queue \
                         gets copies of both topics' messages: drain it, then unsubscribe and \
                         delete it (messaging-sqs README, \"Queue names\")"
                    );
                }
                return Ok(name);
            }
            if log {
                tracing::info!(
                    topic,
                    group,
                    queue = legacy,
                    "keeping the group's queue from before queue names became injective"
                );
            }
            return Ok(legacy);
        }
        let others = names::other_owners(topic, &name);
        if others.is_empty() {
            return Ok(name);
        }
        let Some(subs) = self.subscriptions(&name, topic_arn, &others, fifo).await? else {
            return Ok(name);
        };
        match (subs.own, subs.other) {
            (false, Some(other)) => {
                let displaced = names::displaced_group_queue_name(topic, group, fifo);
                if log {
                    tracing::warn!(
                        topic,
                        group,
                        queue = displaced,
                        kept_by_topic = other,
                        plain_queue = name,
                        "the group's plain queue name is an earlier version's queue of a group \
                         of another topic, which keeps it; this group uses its own queue"
                    );
                }
                Ok(displaced)
            }
            (true, Some(other)) => {
                if log {
                    tracing::warn!(
                        topic,
                        group,
                        queue = name,
                        also_subscribed_to = other,
                        "the group's queue is also subscribed to another topic (an earlier \
                         version gave both the same queue): this group receives that topic's \
                         messages too; unsubscribe the queue from it (messaging-sqs README, \
                         \"Queue names\")"
                    );
                }
                Ok(name)
            }
            _ => Ok(name),
        }
    }

    /// Which topics the queue `queue` is subscribed to: `own_arn`, and the first of the
    /// topics `others` (core names). `None` if the queue does not exist.
    async fn subscriptions(
        &self,
        queue: &str,
        own_arn: &str,
        others: &[String],
        fifo: bool,
    ) -> SubResult<Option<Subscriptions>> {
        let url = match self.sqs.get_queue_url().queue_name(queue).send().await {
            Ok(out) => match out.queue_url {
                Some(url) => url,
                None => return Ok(None),
            },
            Err(e) if error::is_not_found(&e) => return Ok(None),
            Err(e) => return Err(error::subscribe(e)),
        };
        let out = match self
            .sqs
            .get_queue_attributes()
            .queue_url(&url)
            .attribute_names(QueueAttributeName::QueueArn)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .send()
            .await
        {
            Ok(out) => out,
            Err(e) if error::is_not_found(&e) => return Ok(None),
            Err(e) => return Err(error::subscribe(e)),
        };
        let attrs = out.attributes.unwrap_or_default();
        let Some(arn) = attrs.get(&QueueAttributeName::QueueArn) else {
            return Ok(None);
        };
        let waiting = attrs
            .get(&QueueAttributeName::ApproximateNumberOfMessages)
            .cloned()
            .unwrap_or_default();
        let own = self.is_subscribed(own_arn, arn).await?;
        let mut other = None;
        if let Some(prefix) = self.arn_prefix().await? {
            for t in others {
                let other_arn = format!("{prefix}{}", names::topic_name(t, fifo));
                if self.is_subscribed(&other_arn, arn).await? {
                    other = Some(t.clone());
                    break;
                }
            }
        }
        Ok(Some(Subscriptions {
            own,
            other,
            waiting,
        }))
    }

    /// Whether the queue `queue_arn` is subscribed to the topic `topic_arn` (false if the
    /// topic does not exist).
    async fn is_subscribed(&self, topic_arn: &str, queue_arn: &str) -> SubResult<bool> {
        let mut next = None;
        loop {
            let out = match self
                .sns
                .list_subscriptions_by_topic()
                .topic_arn(topic_arn)
                .set_next_token(next)
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) if error::is_not_found(&e) => return Ok(false),
                Err(e) => return Err(error::subscribe(e)),
            };
            if out
                .subscriptions()
                .iter()
                .any(|s| s.protocol() == Some("sqs") && s.endpoint() == Some(queue_arn))
            {
                return Ok(true);
            }
            next = out.next_token;
            if next.is_none() {
                return Ok(false);
            }
        }
    }

    /// The URL of an existing queue of `group` on `topic`, standard or FIFO.
    pub(crate) async fn find_queue(
        &self,
        topic: &str,
        group: &str,
    ) -> Result<Option<String>, InspectError> {
        for fifo in [false, true] {
            let name = match self.config.topology {
                Topology::SnsFanout => {
                    let prefix = self.arn_prefix().await.map_err(inspect_error)?;
                    match prefix {
                        Some(p) => {
                            let arn = format!("{p}{}", names::topic_name(topic, fifo));
                            self.group_queue_name(topic, group, fifo, &arn, false)
                                .await
                                .map_err(inspect_error)?
                        }
                        None => names::group_queue_name(topic, group, fifo),
                    }
                }
                Topology::PointToPoint => names::queue_name(topic, fifo),
            };
            match self.sqs.get_queue_url().queue_name(&name).send().await {
                Ok(out) => return Ok(out.queue_url().map(str::to_owned)),
                Err(e) if error::is_not_found(&e) => {}
                Err(e) => return Err(error::inspect(e)),
            }
        }
        Ok(None)
    }
}

/// Which topics a queue is subscribed to (see `Shared::subscriptions`).
struct Subscriptions {
    /// To the group's own topic.
    own: bool,
    /// To this other topic that could have joined to the queue's name.
    other: Option<String>,
    /// Messages waiting in it, as SQS counts them.
    waiting: String,
}

fn inspect_error(e: SubscribeError) -> InspectError {
    let kind = if e.is_transient() {
        InspectErrorKind::Unavailable
    } else {
        InspectErrorKind::Rejected
    };
    InspectError::new(kind).with_detail(e.to_string())
}

/// An ordered group's delivery limit needs a FIFO dead-letter queue (SQS: the redrive target
/// of a FIFO queue is a FIFO queue), hence a FIFO dead-letter topic.
fn standard_dead_letter_topic(
    topic: &str,
    group: &str,
    dlq_topic: &str,
    cause: &SubscribeError,
) -> SubscribeError {
    SubscribeError::new(SubscribeErrorKind::Unsupported).with_detail(format!(
        "sqs: ordered group {group:?} on {topic:?} has a delivery limit, so its dead-letter \
         topic {dlq_topic:?} must be an SNS FIFO topic (a FIFO queue's redrive target is a FIFO \
         queue), but it exists as a standard one — created by an unordered group or an earlier \
         start. Replay what its dead-letters queue holds, delete the standard topic and its \
         queues, or give this group another dead-letter topic ({cause})"
    ))
}

fn standard_topic(topic: &str) -> SubscribeError {
    SubscribeError::new(SubscribeErrorKind::Unsupported).with_detail(format!(
        "sqs: topic {topic:?} exists as a standard SNS topic; ordered groups need a FIFO topic: \
         name it `<name>.fifo`, list it in SqsConfig::fifo_topics, or subscribe the ordered \
         group before anything publishes to it"
    ))
}

impl Adapter for SqsBroker {
    const NAME: &'static str = "sqs";
    const SCHEMES: &'static [&'static str] = &["sqs"];
    const OPTIONS: &'static [&'static str] = crate::config::OPTIONS;
    type Config = SqsConfig;
    type Publisher = SqsPublisher;
    type Subscriber = SqsSubscriber;

    fn configure(url: &BrokerUrl, options: Options) -> Result<SqsConfig, ConfigError> {
        SqsConfig::from_options(url, options)
    }

    async fn connect(config: SqsConfig) -> Result<Self, ConnectError> {
        Self::connect(config).await
    }

    fn publisher(&self) -> SqsPublisher {
        Self::publisher(self)
    }

    fn subscriber(&self) -> SqsSubscriber {
        Self::subscriber(self)
    }

    fn features(&self) -> Features {
        Self::features(self)
    }

    async fn publish_raw(
        &self,
        topic: &str,
        raw: &messaging_core::RawMessage,
    ) -> Result<messaging_core::Receipt, messaging_core::PublishError> {
        Self::publish_raw(self, topic, raw).await
    }
}

impl Inspect for SqsBroker {
    /// Messages in the group's queue: visible, in flight and delayed (approximate, as SQS
    /// counts them).
    async fn depth(&self, topic: &str, group: &str) -> Result<Option<u64>, InspectError> {
        let Some(url) = self.shared.find_queue(topic, group).await? else {
            return Ok(None);
        };
        let out = self
            .shared
            .sqs
            .get_queue_attributes()
            .queue_url(url)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
            .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
            .send()
            .await;
        let out = match out {
            Ok(out) => out,
            Err(e) if error::is_not_found(&e) => return Ok(None),
            Err(e) => return Err(error::inspect(e)),
        };
        let total = out
            .attributes()
            .map(|a| a.values().filter_map(|v| v.parse::<u64>().ok()).sum())
            .unwrap_or(0);
        Ok(Some(total))
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The facade used to build default-chain clients itself, with a timeout but without
    /// the retries `SqsBroker::new` sets: both paths now get the same settings.
    #[tokio::test]
    async fn the_default_chain_gets_the_timeouts_and_retries_of_static_credentials() {
        let config = SqsConfig {
            call_timeout: Duration::from_secs(7),
            wait_time: Duration::from_secs(1),
            ..SqsConfig::local("http://127.0.0.1:1")
        };
        let fixed = SqsBroker::new(config.clone());
        let chained = SqsBroker::from_default_chain(
            SqsConfig {
                credentials: None,
                ..config
            },
            None,
        )
        .await;
        for broker in [&fixed, &chained] {
            let sqs = broker.sqs().config();
            let sns = broker.sns().config();
            assert_eq!(sqs.retry_config().map(|r| r.max_attempts()), Some(4));
            assert_eq!(sns.retry_config().map(|r| r.max_attempts()), Some(4));
            for timeouts in [sqs.timeout_config(), sns.timeout_config()] {
                assert_eq!(
                    timeouts.and_then(|t| t.operation_timeout()),
                    Some(Duration::from_secs(11)),
                    "wait_time + 10 s, above call_timeout"
                );
            }
        }
    }
}
