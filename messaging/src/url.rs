//! Broker URLs: parsing, options, and the redacted form shown in `Debug`, logs and errors.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use percent_encoding::percent_decode_str;

use crate::errors::ConfigError;

/// Query keys whose values are secrets, besides the URL's password: the one rule of
/// [`messaging_core::redact`], shared with every adapter.
pub(crate) fn is_secret(key: &str) -> bool {
    messaging_core::redact::is_secret(key)
}

/// A parsed broker URL: `scheme://[user[:password]@]hosts[/path][?key=value&…]`.
///
/// `hosts` may list several `host:port` pairs separated by commas (Kafka bootstrap servers).
/// `Display` and `Debug` show the URL with the password and every secret option replaced by
/// `***`; the secrets are readable only through the accessors that need them.
///
/// ```
/// use messaging::BrokerUrl;
///
/// let url: BrokerUrl = "amqp://app:s3cret@127.0.0.1:5672/%2f?queue_type=classic".parse()?;
/// assert_eq!(url.scheme(), "amqp");
/// assert_eq!(url.to_string(), "amqp://app:***@127.0.0.1:5672/%2f?queue_type=classic");
/// assert!(!format!("{url:?}").contains("s3cret"));
/// # Ok::<(), messaging::ConfigError>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
pub struct BrokerUrl {
    scheme: String,
    /// Userinfo as written (percent-encoded), for URIs handed on to a client.
    raw_userinfo: Option<String>,
    user: Option<String>,
    password: Option<String>,
    hosts: String,
    /// Path as written, with its leading `/` (the AMQP virtual host).
    path: String,
    query: Vec<(String, String)>,
}

impl std::str::FromStr for BrokerUrl {
    type Err = ConfigError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl BrokerUrl {
    /// Parses `url`. The error never contains the URL's password.
    pub fn parse(url: &str) -> Result<Self, ConfigError> {
        let url = url.trim();
        let invalid = |reason: &str| ConfigError::InvalidUrl {
            url: redact_unparsed(url),
            reason: reason.to_owned(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| invalid("expected scheme://…, e.g. kafka://127.0.0.1:9092"))?;
        if scheme.is_empty()
            || !scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "+-.".contains(c))
        {
            return Err(invalid("the scheme is not valid"));
        }
        let (before_query, query) = match rest.split_once('?') {
            Some((b, q)) => (b, q),
            None => (rest, ""),
        };
        let (authority, path) = match before_query.find('/') {
            Some(i) => before_query.split_at(i),
            None => (before_query, ""),
        };
        let (raw_userinfo, hosts) = match authority.rsplit_once('@') {
            Some((u, h)) => (Some(u.to_owned()), h),
            None => (None, authority),
        };
        let decode = |s: &str| {
            percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| invalid("the user or password is not valid percent-encoded UTF-8"))
        };
        let (user, password) = match &raw_userinfo {
            Some(u) => match u.split_once(':') {
                Some((user, pass)) => (Some(decode(user)?), Some(decode(pass)?)),
                None => (Some(decode(u)?), None),
            },
            None => (None, None),
        };
        let query = form_urlencoded::parse(query.as_bytes())
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect();
        Ok(Self {
            scheme: scheme.to_ascii_lowercase(),
            raw_userinfo,
            user,
            password,
            hosts: hosts.to_owned(),
            path: path.to_owned(),
            query,
        })
    }

    /// The scheme, lower case (`kafka`, `amqp`, `sqs`, `memory`…).
    pub fn scheme(&self) -> &str {
        &self.scheme
    }

    /// The user name, decoded.
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// The password, decoded. Never shown by `Display` or `Debug`.
    pub fn password(&self) -> Option<&str> {
        self.password.as_deref()
    }

    /// Everything between the userinfo and the path: `host:port`, or a comma-separated list.
    pub fn hosts(&self) -> &str {
        &self.hosts
    }

    /// The path as written, with its leading `/`, or empty.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The query's key/value pairs, decoded, in order.
    pub fn query(&self) -> &[(String, String)] {
        &self.query
    }

    /// The URL as written, less the query keys in `drop` (for handing a URI on to a client).
    pub(crate) fn without_options(&self, drop: &[&str]) -> String {
        let mut out = format!("{}://", self.scheme);
        if let Some(u) = &self.raw_userinfo {
            out.push_str(u);
            out.push('@');
        }
        out.push_str(&self.hosts);
        out.push_str(&self.path);
        let kept: Vec<_> = self
            .query
            .iter()
            .filter(|(k, _)| !drop.contains(&k.as_str()))
            .collect();
        if !kept.is_empty() {
            out.push('?');
            out.push_str(
                &form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(kept)
                    .finish(),
            );
        }
        out
    }
}

impl fmt::Display for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        if let Some(u) = &self.raw_userinfo {
            match u.split_once(':') {
                Some((user, _)) => write!(f, "{user}:***@")?,
                None => write!(f, "{u}@")?,
            }
        }
        write!(f, "{}{}", self.hosts, self.path)?;
        for (i, (k, v)) in self.query.iter().enumerate() {
            let v = if is_secret(k) { "***" } else { v.as_str() };
            let pair = form_urlencoded::Serializer::new(String::new())
                .append_pair(k, v)
                .finish()
                .replace("%2A%2A%2A", "***");
            write!(f, "{}{pair}", if i == 0 { '?' } else { '&' })?;
        }
        Ok(())
    }
}

impl fmt::Debug for BrokerUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BrokerUrl({self})")
    }
}

/// Best-effort redaction of a URL that did not parse: drops everything between `://` and the
/// last `@`, and the whole query.
pub(crate) fn redact_unparsed(url: &str) -> String {
    let without_query = url.split('?').next().unwrap_or_default();
    match without_query.rfind('@') {
        Some(at) => {
            let scheme_end = without_query[..at]
                .find("://")
                .map(|i| i + 3)
                .or_else(|| without_query[..at].find(':').map(|i| i + 1))
                .unwrap_or(0);
            format!(
                "{}***{}",
                &without_query[..scheme_end],
                &without_query[at..]
            )
        }
        None => without_query.to_owned(),
    }
}

/// The options of one broker: the configuration file's `options`, then the URL's query on
/// top. Each accessor takes the option it reads; [`finish`](Self::finish) fails on what no
/// one took, so a misspelt option is an error rather than silently ignored.
pub(crate) struct Options {
    broker: &'static str,
    values: BTreeMap<String, String>,
}

impl Options {
    pub(crate) fn new(
        broker: &'static str,
        file: &BTreeMap<String, String>,
        url: &BrokerUrl,
    ) -> Self {
        let mut values = file.clone();
        values.extend(url.query.iter().cloned());
        Self { broker, values }
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
    pub(crate) fn string(&mut self, key: &str) -> Option<String> {
        self.values.remove(key)
    }

    /// Takes `key`, parsed by `parse`; `expected` describes valid values.
    pub(crate) fn parsed<T>(
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
    pub(crate) fn number<T: std::str::FromStr>(
        &mut self,
        key: &str,
    ) -> Result<Option<T>, ConfigError> {
        self.parsed(key, "a number", |v| v.parse().ok())
    }

    /// Takes `key` as `true`/`false`.
    pub(crate) fn flag(&mut self, key: &str) -> Result<Option<bool>, ConfigError> {
        self.parsed(key, "true or false", |v| match v {
            "true" | "1" | "yes" => Some(true),
            "false" | "0" | "no" => Some(false),
            _ => None,
        })
    }

    /// Takes `key` as a duration (`500ms`, `30s`, `1m`).
    pub(crate) fn duration(&mut self, key: &str) -> Result<Option<Duration>, ConfigError> {
        self.parsed(key, "a duration such as 500ms, 30s or 1m", |v| {
            humantime::parse_duration(v).ok()
        })
    }

    /// Takes `key` as a comma-separated list.
    pub(crate) fn list(&mut self, key: &str) -> Option<Vec<String>> {
        self.values.remove(key).map(|v| {
            v.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect()
        })
    }

    /// Takes `content_mode` (`binary` or `structured`).
    pub(crate) fn content_mode(
        &mut self,
    ) -> Result<Option<messaging_core::ContentMode>, ConfigError> {
        self.parsed("content_mode", "binary or structured", |v| match v {
            "binary" => Some(messaging_core::ContentMode::Binary),
            "structured" => Some(messaging_core::ContentMode::Structured),
            _ => None,
        })
    }

    /// Takes every remaining option whose key `accept`s, in key order.
    pub(crate) fn drain(&mut self, accept: impl Fn(&str) -> bool) -> Vec<(String, String)> {
        let keys: Vec<String> = self.values.keys().filter(|k| accept(k)).cloned().collect();
        keys.into_iter()
            .filter_map(|k| self.values.remove_entry(&k))
            .collect()
    }

    /// Fails if an option was not taken, naming it and the ones this broker knows.
    pub(crate) fn finish(self, known: &[&str]) -> Result<(), ConfigError> {
        match self.values.into_keys().next() {
            None => Ok(()),
            Some(key) => Err(ConfigError::UnknownOption {
                broker: self.broker,
                key,
                known: known.join(", "),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_userinfo_hosts_path_and_query() {
        let url = BrokerUrl::parse(
            "kafka://app:p%40ss@h1:9092,h2:9092?partitions=8&sasl.mechanism=PLAIN",
        )
        .unwrap();
        assert_eq!(url.scheme(), "kafka");
        assert_eq!(url.user(), Some("app"));
        assert_eq!(url.password(), Some("p@ss"));
        assert_eq!(url.hosts(), "h1:9092,h2:9092");
        assert_eq!(url.path(), "");
        assert_eq!(
            url.query(),
            &[
                ("partitions".to_owned(), "8".to_owned()),
                ("sasl.mechanism".to_owned(), "PLAIN".to_owned())
            ]
        );
    }

    #[test]
    fn display_hides_password_and_secret_options() {
        let url = BrokerUrl::parse(
            "sqs://AKIA:wJalr%2Fsecret@us-east-1?endpoint=http://127.0.0.1:4566&secret_access_key=abc&session_token=xyz",
        )
        .unwrap();
        let shown = format!("{url} {url:?}");
        for secret in ["wJalr", "abc", "xyz"] {
            assert!(!shown.contains(secret), "{secret} in {shown}");
        }
        assert!(
            shown.contains("sqs://AKIA:***@us-east-1?endpoint="),
            "{shown}"
        );
        assert!(shown.contains("secret_access_key=***"), "{shown}");
    }

    #[test]
    fn invalid_urls_are_reported_without_their_password() {
        let err = BrokerUrl::parse("amqp:/guest:hunter2@host").unwrap_err();
        assert!(!err.to_string().contains("hunter2"), "{err}");
        let err = BrokerUrl::parse("am qp://guest:hunter2@host?password=x").unwrap_err();
        let shown = err.to_string();
        assert!(
            !shown.contains("hunter2") && !shown.contains("password=x"),
            "{shown}"
        );
    }

    #[test]
    fn without_options_keeps_the_rest_as_written() {
        let url = BrokerUrl::parse(
            "amqp://guest:gu%40st@127.0.0.1:5672/%2f?queue_type=classic&heartbeat=10",
        )
        .unwrap();
        assert_eq!(
            url.without_options(&["queue_type"]),
            "amqp://guest:gu%40st@127.0.0.1:5672/%2f?heartbeat=10"
        );
    }

    #[test]
    fn options_reject_bad_values_and_unknown_keys() {
        let url = BrokerUrl::parse("memory://?max_payload=lots&sasl_password=pw&typo=1").unwrap();
        let mut o = Options::new("memory", &BTreeMap::new(), &url);
        let err = o.number::<usize>("max_payload").unwrap_err();
        assert!(err.to_string().contains("max_payload"), "{err}");
        assert_eq!(o.string("sasl_password").as_deref(), Some("pw"));
        let err = o.finish(&["max_payload"]).unwrap_err();
        assert!(err.to_string().contains("`typo`"), "{err}");
    }
}
