//! The options of one broker, from its URL's query and the configuration file.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::error::ConfigError;
use super::url::BrokerUrl;
use crate::redact::is_secret;

/// Options every broker takes, read by whoever connects (the `messaging` facade) before the
/// adapter sees the rest; [`Options::finish`] lists them among the known ones.
pub const COMMON_OPTIONS: &[&str] = &["connect_timeout"];

/// The options of one broker: the configuration file's `options`, then the URL's query on
/// top. Each accessor takes the option it reads; [`finish`](Self::finish) fails on what no
/// one took, so a misspelt option is an error rather than silently ignored. An adapter's
/// [`Adapter::configure`](super::Adapter::configure) reads its configuration from it.
///
/// ```
/// use messaging_core::connect::{BrokerUrl, Options};
///
/// let url: BrokerUrl = "kafka://127.0.0.1:9092?partitions=8&retry_tiers=1s,10s".parse()?;
/// let mut options = Options::from_url("kafka", &url);
/// assert_eq!(options.number::<i32>("partitions")?, Some(8));
/// assert_eq!(options.durations("retry_tiers")?.map(|t| t.len()), Some(2));
/// options.finish(&["partitions", "retry_tiers"])?;
/// # Ok::<(), messaging_core::connect::ConfigError>(())
/// ```
pub struct Options {
    broker: &'static str,
    values: BTreeMap<String, String>,
}

impl Options {
    /// The options of `broker`: `file` (the configuration file's `options`), then `url`'s
    /// query on top.
    pub fn new(broker: &'static str, file: &BTreeMap<String, String>, url: &BrokerUrl) -> Self {
        let mut values = file.clone();
        values.extend(url.query().iter().cloned());
        Self { broker, values }
    }

    /// The options in `url`'s query alone.
    pub fn from_url(broker: &'static str, url: &BrokerUrl) -> Self {
        Self::new(broker, &BTreeMap::new(), url)
    }

    /// The broker these options are for, as errors name it.
    pub fn broker(&self) -> &'static str {
        self.broker
    }

    /// Whether no option is left.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }

    fn invalid(&self, key: &str, value: &str, expected: &str) -> ConfigError {
        ConfigError::InvalidOption {
            broker: self.broker,
            key: key.to_owned(),
            value: if is_secret(key) {
                "***".to_owned()
            } else {
                value.to_owned()
            },
            expected: expected.to_owned(),
        }
    }

    /// Takes `key` as a string.
    pub fn string(&mut self, key: &str) -> Option<String> {
        self.values.remove(key)
    }

    /// Takes `key`, parsed by `parse`; `expected` describes valid values.
    pub fn parsed<T>(
        &mut self,
        key: &str,
        expected: &str,
        parse: impl FnOnce(&str) -> Option<T>,
    ) -> Result<Option<T>, ConfigError> {
        match self.values.remove(key) {
            None => Ok(None),
            Some(v) => parse(v.trim())
                .map(Some)
                .ok_or_else(|| self.invalid(key, &v, expected)),
        }
    }

    /// Takes `key` as a number.
    pub fn number<T: std::str::FromStr>(&mut self, key: &str) -> Result<Option<T>, ConfigError> {
        self.parsed(key, "a number", |v| v.parse().ok())
    }

    /// Takes `key` as `true`/`false`.
    pub fn flag(&mut self, key: &str) -> Result<Option<bool>, ConfigError> {
        self.parsed(key, "true or false", |v| match v {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        })
    }

    /// Takes `key` as a duration (`500ms`, `30s`, `1m`).
    pub fn duration(&mut self, key: &str) -> Result<Option<Duration>, ConfigError> {
        self.parsed(key, "a duration such as 500ms, 30s or 1m", |v| {
            humantime::parse_duration(v).ok()
        })
    }

    /// Takes `key` as durations separated by commas (`1s,10s,1m`).
    pub fn durations(&mut self, key: &str) -> Result<Option<Vec<Duration>>, ConfigError> {
        match self.list(key) {
            None => Ok(None),
            Some(items) => items
                .iter()
                .map(|t| humantime::parse_duration(t))
                .collect::<Result<Vec<_>, _>>()
                .map(Some)
                .map_err(|_| {
                    self.invalid(
                        key,
                        &items.join(","),
                        "durations separated by commas, e.g. 1s,10s,1m",
                    )
                }),
        }
    }

    /// Takes `key` as a comma-separated list.
    pub fn list(&mut self, key: &str) -> Option<Vec<String>> {
        self.values.remove(key).map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
    }

    /// Takes `content_mode` (`binary` or `structured`).
    pub fn content_mode(&mut self) -> Result<Option<crate::ContentMode>, ConfigError> {
        self.parsed("content_mode", "binary or structured", |v| match v {
            "binary" => Some(crate::ContentMode::Binary),
            "structured" => Some(crate::ContentMode::Structured),
            _ => None,
        })
    }

    /// Takes every remaining option whose key `accept`s, in key order.
    pub fn drain(&mut self, accept: impl Fn(&str) -> bool) -> Vec<(String, String)> {
        let keys: Vec<String> = self.values.keys().filter(|k| accept(k)).cloned().collect();
        keys.into_iter()
            .filter_map(|k| self.values.remove_entry(&k))
            .collect()
    }

    /// Fails if an option was not taken, naming it and the ones this broker knows (`known`
    /// and [`COMMON_OPTIONS`]).
    pub fn finish(self, known: &[&str]) -> Result<(), ConfigError> {
        match self.values.into_keys().next() {
            None => Ok(()),
            Some(key) => Err(ConfigError::UnknownOption {
                broker: self.broker,
                key,
                known: known
                    .iter()
                    .chain(COMMON_OPTIONS.iter().filter(|c| !known.contains(c)))
                    .copied()
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }
}

impl fmt::Debug for Options {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Options")
            .field("broker", &self.broker)
            .field(
                "values",
                &self
                    .values
                    .iter()
                    .map(|(k, v)| (k.as_str(), crate::redact::shown(k, v)))
                    .collect::<BTreeMap<_, _>>(),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_reject_bad_values_and_unknown_keys() {
        let url = BrokerUrl::parse("memory://?max_payload=lots&sasl_password=pw&typo=1").unwrap();
        let mut o = Options::from_url("memory", &url);
        let shown = format!("{o:?}");
        assert!(
            !shown.contains("\"pw\"") && shown.contains("typo"),
            "{shown}"
        );
        let err = o.number::<usize>("max_payload").unwrap_err();
        assert!(err.to_string().contains("max_payload"), "{err}");
        assert_eq!(o.string("sasl_password").as_deref(), Some("pw"));
        let err = o.finish(&["max_payload"]).unwrap_err();
        assert!(err.to_string().contains("`typo`"), "{err}");
        assert!(err.to_string().contains("connect_timeout"), "{err}");
    }
}
