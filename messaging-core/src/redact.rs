//! The one rule for which configuration keys hold secrets, used by every adapter and the
//! facade wherever options, properties or URLs are shown (`Debug`, `Display`, logs, errors).
//!
//! ```
//! use messaging_core::redact::is_secret;
//!
//! assert!(is_secret("sasl.password"));
//! assert!(is_secret("ssl.key.pem"));
//! assert!(is_secret("sasl.oauthbearer.config"));
//! assert!(is_secret("secret_access_key"));
//! assert!(!is_secret("sasl.mechanism"));
//! assert!(!is_secret("partitions"));
//! ```

/// What a secret value is shown as.
pub const REDACTED: &str = "***";

/// Parts of a key that mark its value as a secret, in any case.
const SECRET_PARTS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "credential",
    "private",
    "apikey",
    "api_key",
    "api-key",
    "key.pem",
    "keystore",
    "jaas",
    "signature",
];

/// SASL settings that are not secrets; every other `sasl.*` key is (librdkafka's
/// `sasl.oauthbearer.config`, `sasl.kerberos.keytab`, … can all carry credentials).
const PUBLIC_SASL: &[&str] = &["sasl.mechanism", "sasl.mechanisms", "sasl.username"];

/// Whether the value of the option, property or query key `key` is a secret.
pub fn is_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    if key.starts_with("sasl.") && !PUBLIC_SASL.contains(&key.as_str()) {
        return true;
    }
    SECRET_PARTS.iter().any(|p| key.contains(p))
}

/// `value`, or [`REDACTED`] when `key` is a secret.
pub fn shown<'a>(key: &str, value: &'a str) -> &'a str {
    if is_secret(key) { REDACTED } else { value }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_adapter_secret_is_caught() {
        for key in [
            "sasl.password",
            "sasl.oauthbearer.client.secret",
            "sasl.oauthbearer.config",
            "sasl.kerberos.keytab",
            "ssl.key.password",
            "ssl.key.pem",
            "ssl.keystore.password",
            "ssl.keystore.location",
            "SSL.KEY.PEM",
            "secret_access_key",
            "session_token",
            "password",
            "x-api-key",
        ] {
            assert!(is_secret(key), "{key}");
        }
        for key in [
            "sasl.mechanism",
            "sasl.username",
            "security.protocol",
            "ssl.ca.location",
            "partitions",
            "region",
            "endpoint",
            "queue_type",
            "access_key_id",
        ] {
            assert!(!is_secret(key), "{key}");
        }
    }
}
