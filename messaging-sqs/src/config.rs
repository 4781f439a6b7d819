//! Settings of the SQS/SNS adapter.

use std::collections::HashSet;
use std::fmt;
use std::time::Duration;

use messaging_core::ContentMode;

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
    /// Static credentials; `None` (default) needs clients built elsewhere
    /// ([`SqsBroker::from_clients`](crate::SqsBroker::from_clients), e.g. from `aws-config`'s
    /// default chain).
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
    /// clients built by [`SqsBroker::new`](crate::SqsBroker::new).
    pub call_timeout: Duration,
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
