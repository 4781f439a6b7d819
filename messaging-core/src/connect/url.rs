//! Broker URLs: parsing, options, and the redacted form shown in `Debug`, logs and errors.

use std::fmt;

use percent_encoding::percent_decode_str;

use super::error::ConfigError;
use crate::redact::is_secret;

/// A parsed broker URL: `scheme://[user[:password]@]hosts[/path][?key=value&…]`.
///
/// `hosts` may list several `host:port` pairs separated by commas (Kafka bootstrap servers).
/// `Display` and `Debug` show the URL with the password and every secret option replaced by
/// `***`; the secrets are readable only through the accessors that need them.
///
/// ```
/// use messaging_core::connect::BrokerUrl;
///
/// let url: BrokerUrl = "amqp://app:s3cret@127.0.0.1:5672/%2f?queue_type=classic".parse()?;
/// assert_eq!(url.scheme(), "amqp");
/// assert_eq!(url.to_string(), "amqp://app:***@127.0.0.1:5672/%2f?queue_type=classic");
/// assert!(!format!("{url:?}").contains("s3cret"));
/// # Ok::<(), messaging_core::connect::ConfigError>(())
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

    /// The URL as written, secrets included, less the query keys in `drop`: for handing a
    /// URI on to a client (the AMQP client takes its own options from the query).
    pub fn without_options(&self, drop: &[&str]) -> String {
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

/// `url` as it may be shown: parsed, without its password and secret options; a URL that does
/// not parse loses everything between `://` and the last `@`, and its whole query.
///
/// ```
/// use messaging_core::connect::redact_url;
///
/// assert_eq!(redact_url("amqp://app:pw@h:5672/%2f"), "amqp://app:***@h:5672/%2f");
/// assert_eq!(redact_url("amqp:/app:pw@h?password=x"), "amqp:***@h");
/// ```
pub fn redact_url(url: &str) -> String {
    match BrokerUrl::parse(url) {
        Ok(parsed) => parsed.to_string(),
        Err(_) => redact_unparsed(url),
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
}
