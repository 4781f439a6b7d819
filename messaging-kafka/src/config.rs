//! Settings of the Kafka adapter.

use std::fmt;
use std::time::Duration;

use messaging_core::ContentMode;
use messaging_core::dead_letter::DEAD_LETTER_GROUP;
use messaging_core::naming::short_hash;
use messaging_core::request::REQUESTER_GROUP;
use rdkafka::ClientConfig;

/// Groups whose Kafka `group.id` is scoped to the topic (see [`KafkaConfig::group_id`]).
const TOPIC_SCOPED_GROUPS: [&str; 2] = [DEAD_LETTER_GROUP, REQUESTER_GROUP];

/// The options [`KafkaConfig::from_options`] reads, besides any librdkafka property by its
/// dotted name.
pub const OPTIONS: &[&str] = &[
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
    "tls_ca_file",
    "tls_cert_file",
    "tls_key_file",
    "<any librdkafka property, e.g. sasl.mechanism>",
];

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

    /// The configuration a URL gives: `kafka://[USER:PASS@]HOST:PORT[,HOST:PORT…][?OPTIONS]`,
    /// with `options` the URL's query and the configuration file's options ([`OPTIONS`]).
    ///
    /// `kafkas://` sets `security.protocol=ssl`; a user and password set SASL
    /// (`sasl_plaintext`, or `sasl_ssl` with `kafkas://`) with mechanism `PLAIN`. Options with a
    /// dot in their name are librdkafka properties, and win over what the URL implies
    /// (`sasl.mechanism=SCRAM-SHA-512`).
    ///
    /// ```
    /// use messaging_core::connect::{BrokerUrl, Options};
    /// use messaging_kafka::KafkaConfig;
    ///
    /// let url: BrokerUrl = "kafkas://app:pw@k1:9093,k2:9093?partitions=8&sasl.mechanism=SCRAM-SHA-512".parse()?;
    /// let config = KafkaConfig::from_options(&url, Options::from_url("kafka", &url))?;
    /// assert_eq!(config.bootstrap_servers, "k1:9093,k2:9093");
    /// assert_eq!(config.partitions, 8);
    /// assert!(config.properties.contains(&("security.protocol".into(), "sasl_ssl".into())));
    /// assert!(config.properties.contains(&("sasl.mechanism".into(), "SCRAM-SHA-512".into())));
    /// # Ok::<(), messaging_core::ConfigError>(())
    /// ```
    pub fn from_options(
        url: &messaging_core::connect::BrokerUrl,
        mut o: messaging_core::connect::Options,
    ) -> Result<Self, messaging_core::ConfigError> {
        if url.hosts().is_empty() {
            return Err(messaging_core::ConfigError::InvalidUrl {
                url: url.to_string(),
                reason: "no bootstrap servers: expected kafka://HOST:PORT[,HOST:PORT…]".into(),
            });
        }
        let mut c = Self::new(url.hosts());
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
        if let Some(tiers) = o.durations("retry_tiers")? {
            c.retry_tiers = tiers;
        }
        // Credentials in the URL are SASL; `kafkas://` is TLS. Explicit properties win.
        let tls = url.scheme() == "kafkas";
        let protocol = match (tls, url.user().is_some()) {
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
        // The shared TLS options, as librdkafka's PEM file properties.
        let files = messaging_core::connect::TlsFiles::from_options(&mut o)?;
        if !files.is_empty() && !tls {
            return Err(messaging_core::ConfigError::InvalidUrl {
                url: messaging_core::connect::redact_url(&url.to_string()),
                reason: "tls_ca_file, tls_cert_file and tls_key_file need a kafkas:// URL \
                         (this one would connect without TLS)"
                    .into(),
            });
        }
        for (property, file) in [
            ("ssl.ca.location", &files.ca_file),
            ("ssl.certificate.location", &files.cert_file),
            ("ssl.key.location", &files.key_file),
        ] {
            if let Some(path) = file {
                c = c.property(property, path.display().to_string());
            }
        }
        for (k, v) in o.drain(|k| k.contains('.')) {
            c.properties.retain(|(name, _)| *name != k);
            c = c.property(k, v);
        }
        o.finish(OPTIONS)?;
        Ok(c)
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

    /// The Kafka `group.id` of the subscription group `group` on `topic`.
    ///
    /// A subscription group is the group itself, except the framework's own groups, which are
    /// one per topic on every broker (a RabbitMQ queue `<topic>.<group>`, an SQS queue
    /// `<topic>-<group>`) but would be one cluster-wide consumer group on Kafka, where every
    /// service's dead-letter replays and every requester would rebalance each other: the
    /// dead-letter group ([`DEAD_LETTER_GROUP`]) and the requester's reply group
    /// (`requester`) are scoped to their topic, `<topic>.<group>`.
    ///
    /// ```
    /// use messaging_kafka::KafkaConfig;
    ///
    /// let config = KafkaConfig::new("127.0.0.1:9092");
    /// assert_eq!(config.group_id("orders", "billing"), "billing");
    /// assert_eq!(config.group_id("orders.dlq", "dead-letters"), "orders.dlq.dead-letters");
    /// ```
    pub fn group_id(&self, topic: &str, group: &str) -> String {
        if TOPIC_SCOPED_GROUPS.contains(&group) {
            format!("{topic}.{group}")
        } else {
            group.to_owned()
        }
    }

    /// The cluster-wide `group.id` a topic-scoped group had before, whose committed offsets a
    /// partition without a commit of its own continues from (dead letters already replayed
    /// are not replayed again after the upgrade).
    pub(crate) fn legacy_group_id(&self, group: &str) -> Option<&'static str> {
        (group == DEAD_LETTER_GROUP).then_some(DEAD_LETTER_GROUP)
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
            .map(|(k, v)| (k.as_str(), messaging_core::redact::shown(k, v)))
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

/// Longest topic name Kafka accepts.
pub(crate) const MAX_TOPIC_LEN: usize = 249;

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')
}

/// The retry topic of `topic` for `group` and `tier`, injective over (topic, group, tier):
///
/// - `{topic}.{group}.retry.{tier}` — today's name — when the group has no `.`, both names
///   hold only Kafka's name characters and the join fits 249 characters. Its last segment is
///   the tier label, which always ends in `s`, `m` or `h`; the group is the segment before
///   `.retry.` and the topic everything before that, so two pairs never share such a name.
/// - otherwise `{topic}.{group}.retry.{tier}.{hash}`, the readable part sanitized and
///   shortened to fit, `hash` the first 10 hex digits of SHA-256 over the exact topic and
///   group ([`short_hash`]). Its last segment is hex, so it never ends like a plain name, and
///   two pairs share it only if the hash collides on 40 bits.
///
/// The hash is not put into the group segment (as [`messaging_core::naming::group_resource`]
/// does with a marker character) because every character Kafka allows besides `.` — `-`,
/// `_`, letters, digits — is common in group names, and marking them would rename the retry
/// topics of most existing groups.
pub(crate) fn retry_topic(topic: &str, group: &str, tier: Duration) -> String {
    let label = tier_label(tier);
    let plain = format!("{topic}.{group}.retry.{label}");
    let unambiguous = !group.contains('.') && topic.chars().chain(group.chars()).all(is_name_char);
    if unambiguous && plain.len() <= MAX_TOPIC_LEN {
        return plain;
    }
    let suffix = format!(".retry.{label}.{}", short_hash(&[topic, group]));
    let mut readable = format!("{}.{}", sanitize(topic), sanitize(group));
    // Sanitized names are ASCII: any byte is a char boundary.
    readable.truncate(MAX_TOPIC_LEN.saturating_sub(suffix.len()));
    readable + &suffix
}

/// The retry topic name used before names were made injective: `{topic}.{group}.retry.{tier}`
/// with the group sanitized. (topic `a.b`, group `c`) and (topic `a`, group `b.c`) share one;
/// messages on it carry their origin topic, by which each group tells its own apart.
pub(crate) fn legacy_retry_topic(topic: &str, group: &str, tier: Duration) -> String {
    format!("{topic}.{}.retry.{}", sanitize(group), tier_label(tier))
}

/// The delay a [`tier_label`] stands for; `None` for anything [`tier_label`] never writes.
pub(crate) fn parse_tier_label(label: &str) -> Option<Duration> {
    let (digits, unit_ms) = if let Some(d) = label.strip_suffix("ms") {
        (d, 1)
    } else if let Some(d) = label.strip_suffix('s') {
        (d, 1000)
    } else if let Some(d) = label.strip_suffix('m') {
        (d, 60_000)
    } else if let Some(d) = label.strip_suffix('h') {
        (d, 3_600_000)
    } else {
        return None;
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let ms = digits.parse::<u64>().ok()?.checked_mul(unit_ms)?;
    let tier = Duration::from_millis(ms);
    (tier_label(tier) == label).then_some(tier)
}

/// The (topic, group, tier) whose current retry topic ([`retry_topic`]) is `name`, if `name`
/// is a plain one (`{topic}.{group}.retry.{tier}`: the tier is the last segment, the group the
/// segment before `.retry.`, the topic the rest). Hashed names cannot be traced back; they are
/// never anyone's legacy name either (their last segment is hex, never a tier label).
pub(crate) fn plain_retry_owner(name: &str) -> Option<(String, String, Duration)> {
    let (rest, label) = name.rsplit_once('.')?;
    let tier = parse_tier_label(label)?;
    let rest = rest.strip_suffix(".retry")?;
    let (topic, group) = rest.rsplit_once('.')?;
    (retry_topic(topic, group, tier) == name).then(|| (topic.to_owned(), group.to_owned(), tier))
}

/// The tier of `name` if it is a retry topic of `group` on `topic`, under today's naming or
/// the legacy one ([`legacy_retry_topic`]).
pub(crate) fn retry_tier_of(name: &str, topic: &str, group: &str) -> Option<Duration> {
    let mut segments = name.rsplit('.');
    let last = segments.next()?;
    let before_last = segments.next();
    [Some(last), before_last]
        .into_iter()
        .flatten()
        .filter_map(parse_tier_label)
        .find(|tier| {
            retry_topic(topic, group, *tier) == name
                || legacy_retry_topic(topic, group, *tier) == name
        })
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

    fn valid(name: &str) -> bool {
        !name.is_empty() && name.len() <= MAX_TOPIC_LEN && name.chars().all(is_name_char)
    }

    #[test]
    fn retry_topic_names_are_valid_kafka_names() {
        // Today's names stay where they are unambiguous.
        assert_eq!(
            retry_topic("orders", "billing", Duration::from_secs(60)),
            "orders.billing.retry.1m"
        );
        assert_eq!(
            retry_topic("orders.v1", "billing-svc_2", Duration::from_secs(10)),
            "orders.v1.billing-svc_2.retry.10s"
        );
        let sanitized = retry_topic("orders", "billing svc/1", Duration::from_secs(60));
        assert!(valid(&sanitized), "{sanitized}");
        assert!(
            sanitized.starts_with("orders.billing_svc_1.retry.1m."),
            "{sanitized}"
        );
        assert_ne!(
            sanitized,
            retry_topic("orders", "billing_svc_1", Duration::from_secs(60)),
            "sanitizing no longer merges groups"
        );
        assert_eq!(
            legacy_retry_topic("orders", "billing svc/1", Duration::from_secs(60)),
            "orders.billing_svc_1.retry.1m"
        );
        assert_eq!(tier_label(Duration::from_millis(1500)), "1500ms");
        assert_eq!(tier_label(Duration::from_secs(7200)), "2h");
    }

    #[test]
    fn the_review_collision_is_gone() {
        let tier = Duration::from_secs(1);
        let a = retry_topic("u.a.b", "c", tier);
        let b = retry_topic("u.a", "b.c", tier);
        assert_eq!(a, "u.a.b.c.retry.1s", "unambiguous: today's name");
        assert_ne!(a, b);
        assert!(valid(&b), "{b}");
        // The old shared name is found as a legacy retry topic of both pairs.
        assert_eq!(retry_tier_of(&a, "u.a.b", "c"), Some(tier));
        assert_eq!(retry_tier_of(&a, "u.a", "b.c"), Some(tier), "legacy name");
        assert_eq!(retry_tier_of(&b, "u.a", "b.c"), Some(tier));
        assert_eq!(retry_tier_of(&b, "u.a.b", "c"), None);
    }

    #[test]
    fn plain_names_trace_back_to_their_owner() {
        let tier = Duration::from_secs(60);
        let legacy = legacy_retry_topic("orders", "billing/v1", tier);
        assert_eq!(
            plain_retry_owner(&legacy),
            Some(("orders".to_owned(), "billing_v1".to_owned(), tier)),
            "the legacy name of billing/v1 is billing_v1's current name"
        );
        assert_eq!(
            plain_retry_owner("a.retry.1s.b.retry.1s"),
            Some((
                "a.retry.1s".to_owned(),
                "b".to_owned(),
                Duration::from_secs(1)
            ))
        );
        let hashed = retry_topic("orders", "billing/v1", tier);
        assert_eq!(plain_retry_owner(&hashed), None);
        assert_eq!(plain_retry_owner("orders.billing.1m"), None);
    }

    #[test]
    fn long_names_fit() {
        let topic = "t".repeat(240);
        let name = retry_topic(&topic, "billing", Duration::from_secs(3600));
        assert!(valid(&name), "{name}");
        assert_eq!(
            retry_tier_of(&name, &topic, "billing"),
            Some(Duration::from_secs(3600))
        );
        assert_ne!(
            name,
            retry_topic(&topic, "billinh", Duration::from_secs(3600))
        );
        assert_ne!(
            name,
            retry_topic(&topic, "billing", Duration::from_secs(60))
        );
    }

    #[test]
    fn tier_labels_parse_back() {
        for ms in [
            1, 999, 1000, 1500, 10_000, 60_000, 90_000, 600_000, 3_600_000, 7_200_000,
        ] {
            let tier = Duration::from_millis(ms);
            assert_eq!(parse_tier_label(&tier_label(tier)), Some(tier));
        }
        for bad in ["", "s", "60s", "1x", "1.5s", "-1s", "0x1s", "abcdef0123"] {
            assert_eq!(parse_tier_label(bad), None, "{bad}");
        }
    }

    use proptest::prelude::*;

    fn part() -> impl Strategy<Value = String> {
        // Small alphabet so dots, characters Kafka refuses and shared prefixes are frequent.
        proptest::string::string_regex("[ab._ -]{0,5}").expect("regex")
    }

    fn tier() -> impl Strategy<Value = Duration> {
        prop::sample::select(vec![
            Duration::from_millis(500),
            Duration::from_secs(1),
            Duration::from_secs(60),
            Duration::from_secs(3600),
        ])
    }

    proptest! {
        /// Different (topic, group, tier) never share a retry topic; every name is a valid
        /// Kafka topic name; discovery finds a name for its own pair and tier, and never
        /// claims another pair's current name unless it is that pair's legacy name too.
        #[test]
        fn retry_topics_are_injective(
            t1 in part(), g1 in part(), d1 in tier(),
            t2 in part(), g2 in part(), d2 in tier(),
        ) {
            let a = retry_topic(&t1, &g1, d1);
            let b = retry_topic(&t2, &g2, d2);
            prop_assert!(valid(&a), "{}", a);
            prop_assert_eq!(retry_tier_of(&a, &t1, &g1), Some(d1));
            if let Some(owner) = plain_retry_owner(&a) {
                prop_assert_eq!(owner, (t1.clone(), g1.clone(), d1));
            }
            if (&t1, &g1, d1) != (&t2, &g2, d2) {
                prop_assert_ne!(&a, &b, "{:?} and {:?}", (&t1, &g1, d1), (&t2, &g2, d2));
            }
            if let Some(tier) = retry_tier_of(&b, &t1, &g1) {
                prop_assert_eq!(tier, d2);
                prop_assert!(
                    (&t1, &g1) == (&t2, &g2) || b == legacy_retry_topic(&t1, &g1, d2),
                    "{} claimed by {:?}", b, (&t1, &g1)
                );
            }
        }
    }
}
