//! TLS settings every adapter reads the same way: which CA to trust beyond the system's, and
//! the client certificate for mutual TLS. Certificate verification is always on; no option
//! turns it off.

use std::path::{Path, PathBuf};

use super::{ConfigError, Options};

/// The option keys [`TlsFiles::from_options`] takes, the same on every broker.
pub const TLS_OPTIONS: &[&str] = &["tls_ca_file", "tls_cert_file", "tls_key_file"];

/// PEM files for a TLS connection (`amqps://`, `kafka://…?security_protocol=ssl`,
/// `https://` endpoints). Paths, not contents: nothing here is secret, though the key file's
/// contents are.
///
/// ```
/// use messaging_core::connect::{BrokerUrl, Options, TlsFiles};
///
/// let url: BrokerUrl = "amqps://h/%2f?tls_ca_file=/etc/ca.pem".parse()?;
/// let tls = TlsFiles::from_options(&mut Options::from_url("rabbitmq", &url))?;
/// assert_eq!(tls.ca_file.as_deref(), Some(std::path::Path::new("/etc/ca.pem")));
/// # Ok::<(), messaging_core::ConfigError>(())
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct TlsFiles {
    /// CA certificates (PEM) trusted in addition to the system's (`tls_ca_file`): the CA of a
    /// private broker.
    pub ca_file: Option<PathBuf>,
    /// The client certificate (PEM, the chain up to the CA) for mutual TLS (`tls_cert_file`).
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM, PKCS #8 or SEC1 / PKCS #1) (`tls_key_file`).
    pub key_file: Option<PathBuf>,
}

impl TlsFiles {
    /// Takes [`TLS_OPTIONS`] from `options`. A certificate without its key, or a key without
    /// its certificate, is an error.
    pub fn from_options(options: &mut Options) -> Result<Self, ConfigError> {
        let tls = Self {
            ca_file: options.string("tls_ca_file").map(PathBuf::from),
            cert_file: options.string("tls_cert_file").map(PathBuf::from),
            key_file: options.string("tls_key_file").map(PathBuf::from),
        };
        match (&tls.cert_file, &tls.key_file) {
            (Some(_), None) | (None, Some(_)) => Err(ConfigError::InvalidOption {
                broker: options.broker(),
                key: if tls.cert_file.is_some() {
                    "tls_cert_file"
                } else {
                    "tls_key_file"
                }
                .to_owned(),
                value: "set".to_owned(),
                expected: "tls_cert_file and tls_key_file together (a client certificate \
                           and its key)"
                    .to_owned(),
            }),
            _ => Ok(tls),
        }
    }

    /// A CA file only.
    pub fn with_ca_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.ca_file = Some(path.into());
        self
    }

    /// A client certificate and its key.
    pub fn with_client_cert(
        mut self,
        cert_file: impl Into<PathBuf>,
        key_file: impl Into<PathBuf>,
    ) -> Self {
        self.cert_file = Some(cert_file.into());
        self.key_file = Some(key_file.into());
        self
    }

    /// Whether nothing is set (the system's trust store, no client certificate).
    pub fn is_empty(&self) -> bool {
        self.ca_file.is_none() && self.cert_file.is_none() && self.key_file.is_none()
    }

    /// The CA file's contents, if one is set.
    pub fn read_ca(&self) -> Result<Option<Vec<u8>>, ConfigError> {
        self.ca_file.as_deref().map(read).transpose()
    }

    /// The client certificate's and key's contents, if set.
    pub fn read_identity(&self) -> Result<Option<ClientIdentity>, ConfigError> {
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Ok(Some(ClientIdentity {
                cert_pem: read(cert)?,
                key_pem: read(key)?,
            })),
            _ => Ok(None),
        }
    }
}

/// A client certificate and its private key, as read from [`TlsFiles`]. `Debug` never shows
/// the key.
#[derive(Clone)]
#[non_exhaustive]
pub struct ClientIdentity {
    /// The certificate chain, PEM.
    pub cert_pem: Vec<u8>,
    /// The private key, PEM.
    pub key_pem: Vec<u8>,
}

impl std::fmt::Debug for ClientIdentity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClientIdentity")
            .field("cert_pem", &format_args!("{} bytes", self.cert_pem.len()))
            .field("key_pem", &"***")
            .finish()
    }
}

fn read(path: &Path) -> Result<Vec<u8>, ConfigError> {
    std::fs::read(path).map_err(|source| ConfigError::File {
        path: path.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::connect::BrokerUrl;

    fn options(url: &str) -> Options {
        Options::from_url("rabbitmq", &url.parse::<BrokerUrl>().unwrap())
    }

    #[test]
    fn a_certificate_needs_its_key() {
        let err = TlsFiles::from_options(&mut options("amqps://h/?tls_cert_file=/c.pem"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("tls_cert_file and tls_key_file together"),
            "{err}"
        );
        let tls = TlsFiles::from_options(&mut options(
            "amqps://h/?tls_cert_file=/c.pem&tls_key_file=/k.pem&tls_ca_file=/ca.pem",
        ))
        .unwrap();
        assert_eq!(
            tls,
            TlsFiles::default()
                .with_ca_file("/ca.pem")
                .with_client_cert("/c.pem", "/k.pem")
        );
    }

    #[test]
    fn a_missing_file_names_its_path() {
        let err = TlsFiles::default()
            .with_ca_file("/nonexistent/ca.pem")
            .read_ca()
            .unwrap_err();
        assert!(matches!(err, ConfigError::File { .. }), "{err}");
        assert!(err.to_string().contains("/nonexistent/ca.pem"), "{err}");
    }
}
