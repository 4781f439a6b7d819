//! Settings of the Kafka adapter.

use std::fmt;
use std::time::Duration;

use messaging_core::ContentMode;
use rdkafka::ClientConfig;

/// librdkafka properties whose values are secrets: never shown in `Debug` or errors.
const SECRET_PROPERTIES: &[&str] = &[
    "sasl.password",
    "ssl.key.password",
    "ssl.keystore.password",
    "ssl.key.pem",
    "sasl.oauthbearer.client.secret",
];

/// Whether the librdkafka property `name` holds a secret.
pub(crate) fn is_secret(name: &str) -> bool {
    SECRET_PROPERTIES.contains(&name) || name.ends_with(".password") || name.contains("secret")
}

/// How to reach Kafka and how the adapter lays out topics and messages.
///
/// TLS and SASL go through [`properties`](Self::properties), with librdkafka's names
/// (`security.protocol`, `sasl.mechanism`, `sasl.username`, `sasl.password`,
/// `ssl.ca.location`…); TLS needs the crate feature `tls`.
///
/// ```
/// use messaging_kafka::KafkaConfig;
///
/// let config = KafkaConfig::new("127.0.0.1:9092")
///     .property("security.protocol", "sasl_plaintext")
///     .property("sasl.mechanism", "PLAIN")
///     .property("sasl.username", "app")
///     .property("sasl.password", "s3cret");
/// assert!(!format!("{config:?}").contains("s3cret"));
/// ```
#[derive(Clone)]
pub struct KafkaConfig {
    /// `bootstrap.servers`, e.g. `127.0.0.1:9092`.
    pub bootstrap_servers: String,
    /// Partitions of topics the adapter creates (default 4). Topics are created explicitly,
    /// never through broker auto-creation.
    pub partitions: i32,
    /// Replication factor of created topics (default 1).
    pub replication: i32,
    /// Create topics (and retry topics) through the admin API before first use (default
    /// true). Turn off where topics are provisioned by operations and clients may not create
    /// them; the adapter then relies on them existing.
    pub create_topics: bool,
    /// The broker keeps offset-commit metadata (default true, as Kafka does). The adapter
    /// commits, with each offset, how far the group member handed messages out, so the next
    /// member reports a message it gets again as attempt 2 or more. Set false for brokers that
    /// drop commit metadata (nisshi 0.8): attempts then restart at 1 after a consumer change,
    /// and [`Features::counts_redeliveries_across_consumers`](messaging_core::Features) says so.
    pub commit_metadata: bool,
    /// CloudEvents content mode (default binary: `ce_` headers).
    pub content_mode: ContentMode,
    /// Largest message accepted, checked before sending (default 1 MiB, Kafka's
    /// `message.max.bytes` default).
    pub max_message_bytes: usize,
    /// How often settled offsets are committed (default 1 s); closing and rebalancing commit
    /// at once.
    pub commit_interval: Duration,
    /// How long a revoked partition waits for its in-flight deliveries to be settled before
    /// its offsets are committed and it is handed over (default 10 s).
    pub revoke_timeout: Duration,
    /// Group session timeout: a consumer that stops heartbeating loses its partitions after
    /// this (default 10 s).
    pub session_timeout: Duration,
    /// How long a subscribe waits for the group to assign partitions (default 30 s).
    pub subscribe_timeout: Duration,
    /// How long a publish waits for the broker's acknowledgement (`message.timeout.ms`,
    /// default 30 s).
    pub publish_timeout: Duration,
    /// Delay tiers of the retry topics `<topic>.<group>.retry.<tier>` that carry nacks with a
    /// delay (default 1 s, 10 s, 1 min, 10 min, 1 h). A delay goes to the smallest tier at
    /// least as long, and is honoured to the millisecond by a not-before header.
    pub retry_tiers: Vec<Duration>,
    /// Further librdkafka properties for every client (TLS, SASL, tuning). Secrets among them
    /// never appear in `Debug` output.
    pub properties: Vec<(String, String)>,
}

impl KafkaConfig {
    /// Defaults for `bootstrap_servers`.
    pub fn new(bootstrap_servers: impl Into<String>) -> Self {
        Self {
            bootstrap_servers: bootstrap_servers.into(),
            partitions: 4,
            replication: 1,
            create_topics: true,
            commit_metadata: true,
            content_mode: ContentMode::Binary,
            max_message_bytes: 1024 * 1024,
            commit_interval: Duration::from_secs(1),
            revoke_timeout: Duration::from_secs(10),
            session_timeout: Duration::from_secs(10),
            subscribe_timeout: Duration::from_secs(30),
            publish_timeout: Duration::from_secs(30),
            retry_tiers: [1, 10, 60, 600, 3600]
                .into_iter()
                .map(Duration::from_secs)
                .collect(),
            properties: Vec::new(),
        }
    }

    /// Adds a librdkafka property for every client.
    #[must_use]
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((name.into(), value.into()));
        self
    }

    /// The base client configuration: servers plus the extra properties.
    pub(crate) fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.bootstrap_servers);
        c.set("client.id", "messaging-kafka");
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    /// Every topic a subscription of `group` to `topic` reads: the topic itself, then the
    /// group's retry topics (none for ordered subscriptions, which retry in place). Provision
    /// these where [`create_topics`](Self::create_topics) is off.
    pub fn topics_for(&self, topic: &str, group: &str, ordered: bool) -> Vec<String> {
        let mut topics = vec![topic.to_owned()];
        if !ordered {
            topics.extend(
                self.retry_tiers
                    .iter()
                    .map(|t| retry_topic(topic, group, *t)),
            );
        }
        topics
    }

    /// The retry tier for a delay: the smallest tier at least `delay`, else the longest.
    pub(crate) fn tier_for(&self, delay: Duration) -> Option<Duration> {
        self.retry_tiers
            .iter()
            .copied()
            .filter(|t| *t >= delay)
            .min()
            .or_else(|| self.retry_tiers.iter().copied().max())
    }
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let props: Vec<(&str, &str)> = self
            .properties
            .iter()
            .map(|(k, v)| (k.as_str(), if is_secret(k) { "***" } else { v.as_str() }))
            .collect();
        f.debug_struct("KafkaConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("partitions", &self.partitions)
            .field("replication", &self.replication)
            .field("create_topics", &self.create_topics)
            .field("commit_metadata", &self.commit_metadata)
            .field("content_mode", &self.content_mode)
            .field("max_message_bytes", &self.max_message_bytes)
            .field("commit_interval", &self.commit_interval)
            .field("revoke_timeout", &self.revoke_timeout)
            .field("session_timeout", &self.session_timeout)
            .field("subscribe_timeout", &self.subscribe_timeout)
            .field("publish_timeout", &self.publish_timeout)
            .field("retry_tiers", &self.retry_tiers)
            .field("properties", &props)
            .finish()
    }
}

/// A topic-name-safe form of `s`: Kafka allows `[A-Za-z0-9._-]`.
pub(crate) fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The label of a retry tier in topic names: `1s`, `10s`, `1m`, `1h`, or milliseconds.
pub(crate) fn tier_label(tier: Duration) -> String {
    let ms = tier.as_millis();
    if ms % 3_600_000 == 0 {
        format!("{}h", ms / 3_600_000)
    } else if ms % 60_000 == 0 {
        format!("{}m", ms / 60_000)
    } else if ms % 1000 == 0 {
        format!("{}s", ms / 1000)
    } else {
        format!("{ms}ms")
    }
}

/// The retry topic of `topic` for `group` and `tier`.
pub(crate) fn retry_topic(topic: &str, group: &str, tier: Duration) -> String {
    format!("{topic}.{}.retry.{}", sanitize(group), tier_label(tier))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_secrets() {
        let c = KafkaConfig::new("b:9092")
            .property("sasl.password", "pw1")
            .property("ssl.key.password", "pw2")
            .property("sasl.username", "alice");
        let shown = format!("{c:?}");
        assert!(!shown.contains("pw1") && !shown.contains("pw2"), "{shown}");
        assert!(shown.contains("alice"), "{shown}");
    }

    #[test]
    fn delays_map_to_the_smallest_sufficient_tier() {
        let c = KafkaConfig::new("b:9092");
        assert_eq!(
            c.tier_for(Duration::from_millis(10)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            c.tier_for(Duration::from_secs(1)),
            Some(Duration::from_secs(1))
        );
        assert_eq!(
            c.tier_for(Duration::from_millis(1500)),
            Some(Duration::from_secs(10))
        );
        assert_eq!(
            c.tier_for(Duration::from_secs(86_400)),
            Some(Duration::from_secs(3600))
        );
        let none = KafkaConfig {
            retry_tiers: vec![],
            ..c
        };
        assert_eq!(none.tier_for(Duration::from_secs(1)), None);
    }

    #[test]
    fn retry_topic_names_are_valid_kafka_names() {
        assert_eq!(
            retry_topic("orders", "billing svc/1", Duration::from_secs(60)),
            "orders.billing_svc_1.retry.1m"
        );
        assert_eq!(tier_label(Duration::from_millis(1500)), "1500ms");
        assert_eq!(tier_label(Duration::from_secs(7200)), "2h");
    }
}
