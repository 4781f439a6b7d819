//! Settings of the SQS/SNS adapter.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use messaging_core::ContentMode;
use messaging_core::connect::{BrokerUrl, ConfigError, Options, TlsFiles};

/// The options [`SqsConfig::from_options`] reads.
pub const OPTIONS: &[&str] = &[
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
    "tls_ca_file",
];

/// SNS's default largest message: 256 KiB.
pub const SNS_MAX_PAYLOAD: usize = 256 * 1024;
/// SQS's largest message: 1 MiB.
pub const SQS_MAX_PAYLOAD: usize = 1024 * 1024;

/// How topics and groups map onto SNS and SQS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Topology {
    /// A topic is an SNS topic; each subscription group is an SQS queue subscribed to it with
    /// raw message delivery (default).
    #[default]
    SnsFanout,
    /// A topic is one SQS queue, written and read directly (no SNS): point-to-point. Every
    /// consumer of the queue competes; the group name is not used.
    PointToPoint,
}

/// Static credentials, for a local endpoint (moto, LocalStack) or tests.
#[derive(Clone, PartialEq, Eq)]
pub struct StaticCredentials {
    /// Access key id.
    pub access_key_id: String,
    /// Secret access key.
    pub secret_access_key: String,
}

impl fmt::Debug for StaticCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StaticCredentials")
            .field("access_key_id", &self.access_key_id)
            .field("secret_access_key", &"***")
            .finish()
    }
}

/// How to reach SQS/SNS and how to lay messages out.
///
/// ```
/// use std::time::Duration;
/// use messaging_sqs::SqsConfig;
///
/// let config = SqsConfig {
///     wait_time: Duration::from_secs(1),
///     ..SqsConfig::local("http://127.0.0.1:4566")
/// };
/// assert_eq!(config.region, "us-east-1");
/// ```
#[derive(Debug, Clone)]
pub struct SqsConfig {
    /// AWS region (default `us-east-1`).
    pub region: String,
    /// Endpoint URL for both services, for a local endpoint such as moto
    /// (`http://127.0.0.1:4566`); `None` (default) uses the AWS endpoints of the region.
    pub endpoint_url: Option<String>,
    /// Static credentials; `None` (default): [`SqsBroker::connect`](crate::SqsBroker::connect)
    /// uses aws-config's default chain (environment, profile, SSO, web identity, container
    /// and instance roles), or pass clients built elsewhere to
    /// [`SqsBroker::from_clients`](crate::SqsBroker::from_clients).
    pub credentials: Option<StaticCredentials>,
    /// Topics as SNS topics with queues per group (default), or plain queues.
    pub topology: Topology,
    /// CloudEvents content mode (default structured: SQS allows only 10 message attributes, so
    /// binary mode fails for events with many extensions; see the crate docs).
    pub content_mode: ContentMode,
    /// Largest message published through SNS, body plus attributes (default 256 KiB).
    pub max_sns_payload: usize,
    /// Largest message sent to SQS directly, body plus attributes (default 1 MiB).
    pub max_sqs_payload: usize,
    /// Largest total of one `PublishBatch` (default 256 KiB); a batch is split to stay below.
    pub max_sns_batch_bytes: usize,
    /// Largest total of one `SendMessageBatch` (default 1 MiB).
    pub max_sqs_batch_bytes: usize,
    /// Long-poll wait of one `ReceiveMessage`, at most 20 s (default 20 s). Shorter waits
    /// return empty responses sooner (and cost more calls on an idle queue).
    pub wait_time: Duration,
    /// Batch calls (publish, delete) one publisher or subscription keeps in flight at once
    /// (default 16).
    pub max_in_flight: usize,
    /// Topics that are SNS FIFO topics (queues: FIFO queues) even when no ordered group
    /// created them. Topic names ending in `.fifo` are FIFO anyway.
    pub fifo_topics: HashSet<String>,
    /// Message retention of the queues this adapter creates (default: the SQS default, 4
    /// days). For tests and ephemeral groups, a short one keeps moto or an account tidy.
    pub retention: Option<Duration>,
    /// Bound on one API call, retries included (default 30 s; receives get at least
    /// `wait_time` + 10 s). A call past it fails with a transient `Timeout` error. Applies to
    /// clients built by [`SqsBroker::new`](crate::SqsBroker::new) and
    /// [`SqsBroker::connect`](crate::SqsBroker::connect).
    pub call_timeout: Duration,
    /// A CA to trust besides the system's for an `https://` endpoint (option `tls_ca_file`):
    /// a private endpoint or TLS-inspecting proxy. Server certificates are always verified,
    /// host name included; client certificates are not supported (AWS authenticates by
    /// signature).
    pub tls: TlsFiles,
}

impl Default for SqsConfig {
    fn default() -> Self {
        Self {
            region: "us-east-1".into(),
            endpoint_url: None,
            credentials: None,
            topology: Topology::SnsFanout,
            content_mode: ContentMode::Structured,
            max_sns_payload: SNS_MAX_PAYLOAD,
            max_sqs_payload: SQS_MAX_PAYLOAD,
            max_sns_batch_bytes: SNS_MAX_PAYLOAD,
            max_sqs_batch_bytes: SQS_MAX_PAYLOAD,
            wait_time: Duration::from_secs(20),
            max_in_flight: 16,
            fifo_topics: HashSet::new(),
            retention: None,
            call_timeout: Duration::from_secs(30),
            tls: TlsFiles::default(),
        }
    }
}

impl SqsConfig {
    /// Defaults for a local endpoint (moto, LocalStack) at `endpoint_url`, with the dummy
    /// credentials such endpoints accept.
    pub fn local(endpoint_url: impl Into<String>) -> Self {
        Self {
            endpoint_url: Some(endpoint_url.into()),
            credentials: Some(StaticCredentials {
                access_key_id: "test".into(),
                secret_access_key: "test".into(),
            }),
            ..Self::default()
        }
    }

    /// The configuration a URL gives: `sqs://[ACCESS_KEY_ID:SECRET@][REGION][?OPTIONS]`, with
    /// `options` the URL's query and the configuration file's options ([`OPTIONS`]).
    ///
    /// Credentials come from the URL's user and password or the options `access_key_id` and
    /// `secret_access_key` (both or neither); with neither, a local `endpoint` gets the dummy
    /// credentials such endpoints accept, and otherwise
    /// [`SqsBroker::connect`](crate::SqsBroker::connect) uses aws-config's default chain.
    ///
    /// ```
    /// use messaging_core::connect::{BrokerUrl, Options};
    /// use messaging_sqs::{SqsConfig, Topology};
    ///
    /// let url: BrokerUrl = "sqs://eu-west-1?topology=point_to_point&wait_time=1s".parse()?;
    /// let config = SqsConfig::from_options(&url, Options::from_url("sqs", &url))?;
    /// assert_eq!(config.region, "eu-west-1");
    /// assert_eq!(config.topology, Topology::PointToPoint);
    /// assert!(config.credentials.is_none()); // aws-config's default chain
    /// # Ok::<(), messaging_core::ConfigError>(())
    /// ```
    pub fn from_options(url: &BrokerUrl, mut o: Options) -> Result<Self, ConfigError> {
        let mut c = Self {
            endpoint_url: o.string("endpoint"),
            ..Self::default()
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
            // A local endpoint (moto, LocalStack) takes any credentials.
            (None, None) if c.endpoint_url.is_some() => Self::local("").credentials,
            (None, None) => None,
            _ => {
                return Err(ConfigError::InvalidUrl {
                    url: url.to_string(),
                    reason: "give both the access key id and the secret access key, or neither"
                        .into(),
                });
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
        c.tls = TlsFiles::from_options(&mut o)?;
        if c.tls.cert_file.is_some() {
            return Err(ConfigError::InvalidOption {
                broker: "sqs",
                key: "tls_cert_file".into(),
                value: "set".into(),
                expected: "no client certificate: AWS authenticates requests by their signature"
                    .into(),
            });
        }
        o.finish(OPTIONS)?;
        Ok(c)
    }

    /// Where the clients go, as errors show it.
    pub(crate) fn shown(&self) -> String {
        match &self.endpoint_url {
            Some(endpoint) => format!("{endpoint} ({})", self.region),
            None => format!("AWS {}", self.region),
        }
    }

    /// The one bound on an API call of both clients: a long poll must fit in it.
    pub(crate) fn timeouts(&self) -> aws_sdk_sqs::config::timeout::TimeoutConfig {
        let timeout = self
            .call_timeout
            .max(self.wait_time.min(Duration::from_secs(20)) + Duration::from_secs(10));
        aws_sdk_sqs::config::timeout::TimeoutConfig::builder()
            .operation_timeout(timeout)
            .build()
    }

    /// Transient failures (throttling, 5xx, dropped connections) are retried with the SDK's
    /// standard backoff, within the call timeout; a client config built by hand has none.
    pub(crate) fn retries() -> aws_sdk_sqs::config::retry::RetryConfig {
        aws_sdk_sqs::config::retry::RetryConfig::standard().with_max_attempts(4)
    }

    /// Whether `topic` is declared FIFO by name or by [`fifo_topics`](Self::fifo_topics).
    pub(crate) fn declared_fifo(&self, topic: &str) -> bool {
        topic.ends_with(".fifo") || self.fifo_topics.contains(topic)
    }

    /// The largest message on this topology's publish path.
    pub(crate) fn max_payload(&self) -> usize {
        match self.topology {
            Topology::SnsFanout => self.max_sns_payload,
            Topology::PointToPoint => self.max_sqs_payload,
        }
    }
}
