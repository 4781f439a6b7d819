//! Settings of the RabbitMQ adapter.

use std::fmt;
use std::time::Duration;

use messaging_core::ContentMode;
use messaging_core::connect::{BrokerUrl, ConfigError, Options, TlsFiles, redact_url};

/// The options [`RabbitConfig::from_options`] reads; other query keys of the URL (`heartbeat`,
/// `frame_max`, `channel_max`…) are the AMQP client's.
pub const OPTIONS: &[&str] = &[
    "queue_type",
    "content_mode",
    "max_payload",
    "mandatory",
    "confirm_timeout",
    "operation_timeout",
    "reconnect_max_delay",
    "connection_name",
    "queue_expires",
    "max_deliveries",
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
];

/// Queue type of subscription groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// Replicated, with delivery counts, delivery limits and dead-lettering (default).
    #[default]
    Quorum,
    /// Classic queues: no delivery count (attempts after the first are counted from the
    /// `redelivered` flag only, so 2 at most) and no delivery limit.
    Classic,
}

/// Default of [`RabbitConfig::max_deliveries`]: RabbitMQ 4's own default delivery limit is
/// 20 too, but there a message past it is dropped unless its queue has a dead-letter exchange.
pub const DEFAULT_MAX_DELIVERIES: u32 = 20;

/// How to reach RabbitMQ and how to lay messages out.
#[derive(Clone)]
pub struct RabbitConfig {
    /// AMQP URI, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f` (`amqps://` with feature `tls`).
    pub uri: String,
    /// Queue type of groups (default quorum).
    pub queue_type: QueueType,
    /// CloudEvents content mode (default binary: attributes as `cloudEvents:` application
    /// properties).
    pub content_mode: ContentMode,
    /// Largest message accepted, checked before sending (default 16 MiB; the server's own
    /// `max_message_size` is 128 MiB on 3.x).
    pub max_payload: usize,
    /// Publish as `mandatory`: a message no queue is bound to comes back as
    /// [`Unroutable`](messaging_core::PublishErrorKind::Unroutable) instead of being dropped
    /// (default false: a topic without groups drops, as pub/sub expects).
    pub mandatory: bool,
    /// How long a publish waits for the broker's confirm (default 30 s). In a batch each
    /// message gets this long from the end of sending, and only the unconfirmed ones fail; a
    /// nack with a delay waits this long for its delay copy's confirm, then requeues instead.
    pub confirm_timeout: Duration,
    /// How long any other call to the broker may take — opening a channel, declaring a
    /// topic or group, subscribing, acknowledging, closing (default 30 s). Past it the call
    /// fails as transient ([`Unavailable`](messaging_core::PublishErrorKind::Unavailable)) instead of
    /// waiting on a connection that cannot answer (a partitioned network, a node that
    /// accepts TCP but does not speak AMQP, a connection recovering).
    pub operation_timeout: Duration,
    /// The longest wait between two attempts to open a new connection once the one in use
    /// was lost (default 5 s). Attempts are made by the calls that need the connection
    /// (a publish, a subscription's `recv`), one at a time, from 100 ms after a failed one,
    /// doubling up to this, each wait jittered into its upper half; a call during the wait
    /// fails at once as transient. There is no limit on attempts: a node down for an hour is
    /// reconnected to once it is back.
    pub reconnect_max_delay: Duration,
    /// Connection name shown by `rabbitmqctl list_connections` (default `messaging-rabbitmq`).
    pub connection_name: String,
    /// Deletes group queues unused (no consumer, not redeclared) for this long (`x-expires`);
    /// `None` (default) keeps them, as production groups must. For tests and ephemeral groups.
    pub queue_expires: Option<Duration>,
    /// Deliveries a message gets from a quorum group queue whose subscription sets no
    /// [`SubscribeOptions::max_deliveries`](messaging_core::SubscribeOptions::max_deliveries)
    /// before RabbitMQ moves it to the group's dead-letter topic (default
    /// [`DEFAULT_MAX_DELIVERIES`]; 0 counts as 1). Declared as `x-delivery-limit` =
    /// `max_deliveries` − 1 with `x-dead-letter-exchange` = the dead-letter topic, so no
    /// RabbitMQ version drops a message that keeps coming back (4.x drops it past its default
    /// limit of 20 when a queue has no dead-letter exchange). A backstop for consumers that
    /// crash or requeue without end; the consumer runtime dead-letters by its retry policy
    /// first. Classic queues (ordered groups, [`QueueType::Classic`]) have no delivery limit.
    pub max_deliveries: u32,
    /// For `amqps://`: a CA to trust besides the system's, and a client certificate for
    /// mutual TLS (options `tls_ca_file`, `tls_cert_file`, `tls_key_file`). The server's
    /// certificate is always verified, host name included; no option turns that off.
    pub tls: TlsFiles,
}

impl RabbitConfig {
    /// Defaults for `uri`.
    pub fn new(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            queue_type: QueueType::Quorum,
            content_mode: ContentMode::Binary,
            max_payload: 16 * 1024 * 1024,
            mandatory: false,
            confirm_timeout: Duration::from_secs(30),
            operation_timeout: Duration::from_secs(30),
            reconnect_max_delay: Duration::from_secs(5),
            connection_name: "messaging-rabbitmq".into(),
            queue_expires: None,
            max_deliveries: DEFAULT_MAX_DELIVERIES,
            tls: TlsFiles::default(),
        }
    }
}

impl RabbitConfig {
    /// The configuration a URL gives: `amqp://USER:PASS@HOST:PORT/VHOST[?OPTIONS]` (or
    /// `amqps://`), with `options` the URL's query and the configuration file's options
    /// ([`OPTIONS`]). Query keys that are not ours stay in the URI for the AMQP client
    /// (`heartbeat=10`); an option from the file must be one of ours.
    ///
    /// ```
    /// use messaging_core::connect::{BrokerUrl, Options};
    /// use messaging_rabbitmq::{QueueType, RabbitConfig};
    ///
    /// let url: BrokerUrl = "amqp://app:pw@h:5672/%2f?queue_type=classic&heartbeat=10".parse()?;
    /// let config = RabbitConfig::from_options(&url, Options::from_url("rabbitmq", &url))?;
    /// assert_eq!(config.queue_type, QueueType::Classic);
    /// assert_eq!(config.uri, "amqp://app:pw@h:5672/%2f?heartbeat=10");
    /// # Ok::<(), messaging_core::ConfigError>(())
    /// ```
    pub fn from_options(url: &BrokerUrl, mut o: Options) -> Result<Self, ConfigError> {
        let mut c = Self::new(url.without_options(OPTIONS));
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
        for (key, field) in [
            ("confirm_timeout", &mut c.confirm_timeout),
            ("operation_timeout", &mut c.operation_timeout),
            ("reconnect_max_delay", &mut c.reconnect_max_delay),
        ] {
            if let Some(v) = o.duration(key)? {
                *field = v;
            }
        }
        if let Some(v) = o.string("connection_name") {
            c.connection_name = v;
        }
        if let Some(v) = o.duration("queue_expires")? {
            c.queue_expires = Some(v);
        }
        if let Some(v) = o.number("max_deliveries")? {
            c.max_deliveries = v;
        }
        c.tls = TlsFiles::from_options(&mut o)?;
        if !c.tls.is_empty() && url.scheme() != "amqps" {
            return Err(ConfigError::InvalidUrl {
                url: redact_url(&c.uri),
                reason: "tls_ca_file, tls_cert_file and tls_key_file need an amqps:// URL \
                         (this one would connect without TLS)"
                    .into(),
            });
        }
        // Everything else in the query is lapin's; options from the file must be ours.
        let lapin_keys: Vec<&str> = url.query().iter().map(|(k, _)| k.as_str()).collect();
        o.drain(|k| lapin_keys.contains(&k));
        o.finish(OPTIONS)?;
        Ok(c)
    }
}

impl fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConfig")
            .field("uri", &redact_url(&self.uri))
            .field("queue_type", &self.queue_type)
            .field("content_mode", &self.content_mode)
            .field("max_payload", &self.max_payload)
            .field("mandatory", &self.mandatory)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("operation_timeout", &self.operation_timeout)
            .field("reconnect_max_delay", &self.reconnect_max_delay)
            .field("connection_name", &self.connection_name)
            .field("queue_expires", &self.queue_expires)
            .field("max_deliveries", &self.max_deliveries)
            .field("tls", &self.tls)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_files_need_amqps() {
        let config = |url: &str| {
            let url: BrokerUrl = url.parse().unwrap();
            RabbitConfig::from_options(&url, Options::from_url("rabbitmq", &url))
        };
        let c = config("amqps://u:p@h/%2f?tls_ca_file=/ca.pem&heartbeat=10").unwrap();
        assert_eq!(c.tls, TlsFiles::default().with_ca_file("/ca.pem"));
        assert_eq!(c.uri, "amqps://u:p@h/%2f?heartbeat=10");
        let err = config("amqp://u:p@h/%2f?tls_ca_file=/ca.pem")
            .unwrap_err()
            .to_string();
        assert!(err.contains("need an amqps:// URL"), "{err}");
        assert!(!err.contains(":p@"), "{err}");
    }

    #[test]
    fn debug_never_shows_the_password() {
        let c = RabbitConfig::new("amqp://guest:s3cret@127.0.0.1:5672/%2f");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("guest:***@127.0.0.1"), "{shown}");
    }
}
