//! Configuration files with environment overrides.

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use messaging_core::Requirements;
use messaging_core::middleware::retry::RetryPolicy;
use messaging_core::runtime::ConsumerSettings;
use serde::Deserialize;
use serde_json::Value;

use messaging_core::connect::{BrokerUrl, ConfigError, redact_url};

/// The environment variable naming the broker URL.
pub const URL_VAR: &str = "MESSAGING_URL";
/// The environment variable naming a configuration file.
pub const CONFIG_VAR: &str = "MESSAGING_CONFIG";
/// The prefix of environment overrides.
pub const ENV_PREFIX: &str = "MESSAGING_";

/// Everything an application configures: the broker, the retry policy, and what its consumers
/// require of the broker. The configuration schema, in YAML:
///
/// ```yaml
/// broker:
///   url: kafka://127.0.0.1:9092        # or amqp://…, sqs://…, memory://
///   options:                           # per-broker options, as in the URL's query
///     partitions: 8
/// retry_policy:
///   max_retries: 3
///   backoff: exponential
///   initial_delay: 1s
///   max_delay: 30s
///   dlq: "orders-dlq"
///   handler_timeout: 10m               # a handler run past it fails (transient)
/// requires:                            # start-up fails if the broker cannot do these
///   ordering: true
///   delayed_redelivery: true
/// consumer:                            # see messaging_core::runtime::ConsumerSettings
///   lease: { max: 1h }                 # ack-deadline renewal for long handlers
///   stall_after: 5m                    # readiness/liveness: stalled after this
///   circuit_breaker: { failure_ratio: 0.5, min_calls: 20, window: 30s, cooldown: 1m }
///   rate_limit: { per_second: 100 }
/// ```
///
/// Environment variables override the file: `MESSAGING_URL` sets `broker.url`, and
/// `MESSAGING_<SECTION>__<KEY>` sets any other value (`MESSAGING_RETRY_POLICY__MAX_RETRIES=5`,
/// `MESSAGING_CONSUMER__STALL_AFTER=2m`,
/// `MESSAGING_BROKER__OPTIONS__PARTITIONS=8`, `MESSAGING_REQUIRES__ORDERING=true`).
///
/// ```
/// use messaging::Settings;
///
/// let yaml = "broker:\n  url: memory://\nretry_policy:\n  max_retries: 3\n  dlq: orders-dlq\n";
/// let env = [("MESSAGING_RETRY_POLICY__MAX_RETRIES".to_owned(), "5".to_owned())];
/// let settings = Settings::from_yaml(yaml, env)?;
/// assert_eq!(settings.retry_policy.max_retries, 5);
/// assert_eq!(settings.broker.url()?.scheme(), "memory");
/// # Ok::<(), messaging::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Settings {
    /// Which broker, and its options.
    pub broker: BrokerConfig,
    /// The retry policy consumers get from [`Broker::consumer`](crate::Broker::consumer).
    pub retry_policy: RetryPolicy,
    /// What consumers require of the broker: checked when connecting (the broker's
    /// capabilities) and again when a consumer starts (its own stack).
    pub requires: Requirements,
    /// How consumers from [`Broker::consumer`](crate::Broker::consumer) keep running: lease
    /// renewal, stall threshold, circuit breaker, rate limit.
    pub consumer: ConsumerSettings,
}

/// The `broker` section: a URL and options.
#[derive(Clone, Default, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct BrokerConfig {
    /// The broker URL; `memory://` when unset.
    pub url: Option<String>,
    /// Options of the broker, as in the URL's query (the URL's query wins).
    #[serde(deserialize_with = "scalars")]
    pub options: BTreeMap<String, String>,
}

impl BrokerConfig {
    /// A configuration for `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: Some(url.into()),
            options: BTreeMap::new(),
        }
    }

    /// The parsed URL (`memory://` when unset).
    pub fn url(&self) -> Result<BrokerUrl, ConfigError> {
        BrokerUrl::parse(self.url.as_deref().unwrap_or("memory://"))
    }
}

impl fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let url = self.url.as_deref().map(redact_url);
        let options: BTreeMap<&str, &str> = self
            .options
            .iter()
            .map(|(k, v)| (k.as_str(), messaging_core::redact::shown(k, v)))
            .collect();
        f.debug_struct("BrokerConfig")
            .field("url", &url)
            .field("options", &options)
            .finish()
    }
}

/// Option values may be written as YAML strings, numbers, booleans or lists (joined by commas).
fn scalars<'de, D: serde::Deserializer<'de>>(d: D) -> Result<BTreeMap<String, String>, D::Error> {
    let raw = BTreeMap::<String, Value>::deserialize(d)?;
    raw.into_iter()
        .map(|(k, v)| {
            let s = match v {
                Value::String(s) => s,
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                Value::Array(items) => items
                    .iter()
                    .map(|i| match i {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    })
                    .collect::<Vec<_>>()
                    .join(","),
                Value::Null => String::new(),
                Value::Object(_) => {
                    return Err(serde::de::Error::custom(format!(
                        "option `{k}` must be a value, not a map"
                    )));
                }
            };
            Ok((k, s))
        })
        .collect()
}

impl Settings {
    /// Loads the configuration file named by `MESSAGING_CONFIG` (if set), then applies the
    /// process's `MESSAGING_*` environment overrides. Without either: the in-memory broker and
    /// the default retry policy.
    pub fn from_env() -> Result<Self, ConfigError> {
        match std::env::var_os(CONFIG_VAR) {
            Some(path) => Self::load(Path::new(&path)),
            None => Self::from_yaml("", std::env::vars()),
        }
    }

    /// Loads the YAML file at `path`, then applies the process's `MESSAGING_*` environment
    /// overrides.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::File {
            path: path.display().to_string(),
            source,
        })?;
        Self::from_yaml(&text, std::env::vars()).map_err(|e| match e {
            ConfigError::Invalid {
                origin: None,
                message,
            } => ConfigError::Invalid {
                origin: Some(path.display().to_string()),
                message,
            },
            other => other,
        })
    }

    /// Parses YAML `text` (may be empty), then applies the `MESSAGING_*` variables among `env`.
    pub fn from_yaml(
        text: &str,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let invalid = |origin: Option<String>, e: &dyn fmt::Display| ConfigError::Invalid {
            origin,
            message: e.to_string(),
        };
        let mut tree: Value = if text.trim().is_empty() {
            Value::Object(Default::default())
        } else {
            serde_norway::from_str(text).map_err(|e| invalid(None, &e))?
        };
        if tree.is_null() {
            tree = Value::Object(Default::default());
        }
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(k, _)| k.starts_with(ENV_PREFIX) && k != CONFIG_VAR)
            .collect();
        overrides.sort();
        for (var, value) in overrides {
            let path: Vec<String> = if var == URL_VAR {
                vec!["broker".into(), "url".into()]
            } else {
                var[ENV_PREFIX.len()..]
                    .split("__")
                    .map(str::to_ascii_lowercase)
                    .collect()
            };
            // Only the sections above: other MESSAGING_* variables belong to someone else.
            if !["broker", "retry_policy", "requires", "consumer"].contains(&path[0].as_str()) {
                continue;
            }
            let as_string = path[0] == "broker";
            set(&mut tree, &path, parse_scalar(&value, as_string))
                .map_err(|e| invalid(Some(format!("environment variable {var}")), &e))?;
        }
        serde_json::from_value(tree).map_err(|e| invalid(None, &e))
    }
}

/// An environment value as YAML would read it (`5` a number, `true` a boolean), or a string.
fn parse_scalar(value: &str, as_string: bool) -> Value {
    if as_string {
        return Value::String(value.to_owned());
    }
    match serde_norway::from_str::<Value>(value) {
        Ok(v @ (Value::Bool(_) | Value::Number(_) | Value::String(_))) => v,
        _ => Value::String(value.to_owned()),
    }
}

fn set(tree: &mut Value, path: &[String], value: Value) -> Result<(), String> {
    let mut node = tree;
    for (i, key) in path.iter().enumerate() {
        if !node.is_object() {
            return Err(format!("`{}` is not a section", path[..i].join(".")));
        }
        let map = node.as_object_mut().expect("checked");
        if i + 1 == path.len() {
            map.insert(key.clone(), value);
            return Ok(());
        }
        node = map
            .entry(key.clone())
            .or_insert_with(|| Value::Object(Default::default()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    const SEED: &str = r#"
broker:
  url: kafka://127.0.0.1:9092
  options:
    partitions: 8
    retry_tiers: [1s, 1m]
retry_policy:
  max_retries: 3
  backoff: exponential
  initial_delay: 1s
  max_delay: 30s
  dlq: "orders-dlq"
requires:
  ordering: true
"#;

    #[test]
    fn reads_the_consumer_section_with_environment_overrides() {
        let yaml = "retry_policy:\n  handler_timeout: 10m\nconsumer:\n  lease:\n    max: 2h\n  stall_after: 2m\n  circuit_breaker:\n    cooldown: 1m\n  rate_limit:\n    per_second: 50\n";
        let s = Settings::from_yaml(
            yaml,
            env(&[("MESSAGING_CONSUMER__CIRCUIT_BREAKER__MIN_CALLS", "7")]),
        )
        .unwrap();
        assert_eq!(
            s.retry_policy.handler_timeout,
            Some(Duration::from_secs(600))
        );
        assert_eq!(s.consumer.lease.max, Duration::from_secs(7200));
        assert!(s.consumer.lease.enabled);
        assert_eq!(s.consumer.stall_after, Duration::from_secs(120));
        let breaker = s.consumer.circuit_breaker.unwrap();
        assert_eq!(breaker.cooldown, Duration::from_secs(60));
        assert_eq!(breaker.min_calls, 7);
        assert_eq!(s.consumer.rate_limit.unwrap().per_second, 50.0);
        assert!(Settings::from_yaml("consumer:\n  stall_afterr: 1m\n", []).is_err());
    }

    #[test]
    fn reads_the_seed_shape() {
        let s = Settings::from_yaml(SEED, []).unwrap();
        assert_eq!(s.broker.url.as_deref(), Some("kafka://127.0.0.1:9092"));
        assert_eq!(s.broker.options["partitions"], "8");
        assert_eq!(s.broker.options["retry_tiers"], "1s,1m");
        assert_eq!(s.retry_policy.max_retries, 3);
        assert_eq!(s.retry_policy.max_delay, Duration::from_secs(30));
        assert_eq!(s.retry_policy.dlq.as_deref(), Some("orders-dlq"));
        assert!(s.requires.ordering);
    }

    #[test]
    fn environment_overrides_the_file() {
        let s = Settings::from_yaml(
            SEED,
            env(&[
                ("MESSAGING_URL", "amqp://guest:guest@127.0.0.1:5672/%2f"),
                ("MESSAGING_RETRY_POLICY__MAX_RETRIES", "5"),
                ("MESSAGING_RETRY_POLICY__INITIAL_DELAY", "250ms"),
                ("MESSAGING_BROKER__OPTIONS__PARTITIONS", "16"),
                ("MESSAGING_REQUIRES__PAYLOAD", "65536"),
                ("MESSAGING_RUN_ID", "not ours"),
                ("OTHER", "x"),
            ]),
        )
        .unwrap();
        assert_eq!(s.broker.url().unwrap().scheme(), "amqp");
        assert_eq!(s.retry_policy.max_retries, 5);
        assert_eq!(s.retry_policy.initial_delay, Duration::from_millis(250));
        assert_eq!(s.broker.options["partitions"], "16");
        assert_eq!(s.requires.payload, Some(65536));
        assert!(s.requires.ordering, "untouched values stay");
    }

    #[test]
    fn empty_configuration_is_the_in_memory_broker() {
        let s = Settings::from_yaml("", []).unwrap();
        assert_eq!(s.broker.url().unwrap().scheme(), "memory");
        assert_eq!(s.requires, Requirements::default());
    }

    #[test]
    fn typos_are_errors_naming_their_origin() {
        let err = Settings::from_yaml("retry_policy:\n  max_retris: 3\n", []).unwrap_err();
        assert!(err.to_string().contains("max_retris"), "{err}");
        let err =
            Settings::from_yaml("", env(&[("MESSAGING_REQUIRES__ORDERNIG", "true")])).unwrap_err();
        assert!(err.to_string().contains("ordernig"), "{err}");
        let err = Settings::from_yaml("", env(&[("MESSAGING_RETRY_POLICY__MAX_RETRIES", "many")]))
            .unwrap_err();
        assert!(err.to_string().contains("invalid"), "{err}");
    }

    #[test]
    fn debug_hides_secrets() {
        let s = Settings::from_yaml(
            "broker:\n  url: amqp://app:hunter2@rabbit/%2f\n  options:\n    sasl_password: pw2\n",
            [],
        )
        .unwrap();
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("hunter2") && !shown.contains("pw2"),
            "{shown}"
        );
    }
}
