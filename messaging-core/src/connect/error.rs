//! Errors of choosing and connecting a broker. None of them shows a password or secret key.

use crate::Unsupported;

/// Bad configuration: a URL, an option, a configuration file or an environment override. Not
/// transient: the same configuration fails again.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The broker URL does not parse.
    #[error("invalid broker URL {url:?}: {reason}")]
    InvalidUrl {
        /// The URL, without password.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// No broker has this scheme.
    #[error("unknown broker scheme {scheme:?}: expected one of {known}")]
    UnknownScheme {
        /// The scheme.
        scheme: String,
        /// The schemes there are, e.g. `memory://, kafka://, amqp://`.
        known: String,
    },
    /// The scheme names a broker whose adapter is not compiled in.
    #[error(
        "{scheme}:// needs the `{feature}` feature of the `messaging` crate, which this build does not have"
    )]
    NotCompiled {
        /// The scheme.
        scheme: String,
        /// The cargo feature that adds it.
        feature: &'static str,
    },
    /// An option has a value the broker cannot use.
    #[error("option `{key}` of {broker} is {value:?}; expected {expected}")]
    InvalidOption {
        /// The broker.
        broker: &'static str,
        /// The option.
        key: String,
        /// Its value (`***` for secrets).
        value: String,
        /// What would be valid.
        expected: String,
    },
    /// An option this broker does not know (a typo, or an option of another broker).
    #[error("unknown option `{key}` for {broker}; known options: {known}")]
    UnknownOption {
        /// The broker.
        broker: &'static str,
        /// The option.
        key: String,
        /// The options it knows.
        known: String,
    },
    /// The configuration file cannot be read.
    #[error("cannot read configuration file {path}: {source}")]
    File {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The configuration (file plus environment overrides) does not have the expected shape.
    #[error("invalid configuration{}: {message}", origin.as_ref().map(|o| format!(" in {o}")).unwrap_or_default())]
    Invalid {
        /// The file or environment variable it came from, if known.
        origin: Option<String>,
        /// What is wrong.
        message: String,
    },
}

/// Failure to choose, connect to or use a broker as configured.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The configuration is wrong; see [`ConfigError`].
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The broker cannot be reached, or refused the connection.
    #[error("cannot connect to {broker} at {url}: {source}")]
    Unreachable {
        /// The broker.
        broker: &'static str,
        /// The URL, without secrets.
        url: String,
        /// Whether trying again later can succeed (the broker is down, rather than the
        /// credentials or settings being refused).
        transient: bool,
        /// The client's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The broker refused the credentials (a wrong user name or password, an unknown SASL
    /// user, a wrong access key). Not transient: the same credentials fail again.
    #[error("authentication to {broker} at {url} failed: {source}")]
    Authentication {
        /// The broker.
        broker: &'static str,
        /// The URL, without secrets.
        url: String,
        /// The client's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The credentials were accepted but the user may not use what the URL names (a RabbitMQ
    /// virtual host without permissions). Not transient until an operator grants access.
    #[error("{broker} at {url} refused access: {source}")]
    Forbidden {
        /// The broker.
        broker: &'static str,
        /// The URL, without secrets.
        url: String,
        /// The client's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The TLS handshake failed: the server's certificate does not verify against the trusted
    /// CAs or is not for the host name connected to, the server refused the client
    /// certificate, or the server does not speak TLS on that port. Not transient.
    #[error("TLS with {broker} at {url} failed: {source}")]
    Tls {
        /// The broker.
        broker: &'static str,
        /// The URL, without secrets.
        url: String,
        /// The client's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The broker lacks a capability the configuration requires (`requires:`).
    #[error("{url}: {source}")]
    Unsupported {
        /// The URL, without secrets.
        url: String,
        /// The broker and every missing capability.
        source: Unsupported,
    },
}

impl ConnectError {
    /// The broker at `url` (shown without secrets) cannot be reached or refused; `transient`
    /// says whether trying again later can succeed.
    pub fn unreachable(
        broker: &'static str,
        url: impl Into<String>,
        transient: bool,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Unreachable {
            broker,
            url: url.into(),
            transient,
            source: source.into(),
        }
    }

    /// The broker at `url` (shown without secrets) refused the credentials.
    pub fn authentication(
        broker: &'static str,
        url: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Authentication {
            broker,
            url: url.into(),
            source: source.into(),
        }
    }

    /// The broker at `url` accepted the credentials but refused access.
    pub fn forbidden(
        broker: &'static str,
        url: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Forbidden {
            broker,
            url: url.into(),
            source: source.into(),
        }
    }

    /// The TLS handshake with the broker at `url` failed.
    pub fn tls(
        broker: &'static str,
        url: impl Into<String>,
        source: impl Into<Box<dyn std::error::Error + Send + Sync>>,
    ) -> Self {
        Self::Tls {
            broker,
            url: url.into(),
            source: source.into(),
        }
    }

    /// The same error, naming `url` (without secrets) as where it happened: the URL the user
    /// gave, rather than the one the adapter built from it.
    pub fn with_url(self, url: &str) -> Self {
        match self {
            Self::Authentication { broker, source, .. } => {
                Self::authentication(broker, url, source)
            }
            Self::Forbidden { broker, source, .. } => Self::forbidden(broker, url, source),
            Self::Tls { broker, source, .. } => Self::tls(broker, url, source),
            Self::Unreachable {
                broker,
                transient,
                source,
                ..
            } => Self::Unreachable {
                broker,
                url: url.to_owned(),
                transient,
                source,
            },
            Self::Unsupported { source, .. } => Self::Unsupported {
                url: url.to_owned(),
                source,
            },
            other => other,
        }
    }

    /// Whether trying again later can succeed.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Self::Unreachable {
                transient: true,
                ..
            }
        )
    }
}

/// Whether an error of type `T` is anywhere in `error`'s chain of sources, including inside
/// I/O errors (whose own `source` skips the error they wrap): how an adapter tells, say, a
/// failed TLS handshake (`rustls::Error`) from other I/O failures of its client.
///
/// ```
/// use messaging_core::connect::caused_by;
///
/// #[derive(Debug)]
/// struct Handshake;
/// impl std::fmt::Display for Handshake {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result { f.write_str("bad certificate") }
/// }
/// impl std::error::Error for Handshake {}
///
/// let io = std::io::Error::other(std::io::Error::new(std::io::ErrorKind::InvalidData, Handshake));
/// assert!(caused_by::<Handshake>(&io));
/// assert!(!caused_by::<std::fmt::Error>(&io));
/// ```
pub fn caused_by<T: std::error::Error + 'static>(
    error: &(dyn std::error::Error + 'static),
) -> bool {
    let mut next = Some(error);
    while let Some(err) = next {
        if err.is::<T>() {
            return true;
        }
        next = match err
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            Some(inner) => Some(inner),
            None => err.source(),
        };
    }
    false
}
