//! What every real-broker test of the workspace shares: where the brokers are (and the
//! environment variables that move them), unique names, bounded waits, and the one way a test
//! fails when its broker is down — with a message that says how to start it, never by
//! skipping.
//!
//! ```
//! use messaging_testkit::support::{self, TestBroker};
//!
//! let topic = support::unique("orders");
//! assert!(topic.starts_with("orders-"));
//! // `MESSAGING_TEST_AMQP_URL`, or the broker `scripts/brokers/rabbitmq.sh` starts.
//! assert!(TestBroker::RabbitMq.url().starts_with("amqp://"));
//! ```

use std::future::Future;
use std::time::{Duration, Instant};

/// A broker the project's scripts (`scripts/brokers/*.sh`) start on 127.0.0.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TestBroker {
    /// nisshi, a Kafka-protocol broker, on 127.0.0.1:9092.
    Kafka,
    /// RabbitMQ on 127.0.0.1:5672 (guest/guest).
    RabbitMq,
    /// moto, the AWS SQS/SNS emulator, on 127.0.0.1:4566.
    Sqs,
}

impl TestBroker {
    /// Every broker.
    pub const ALL: [Self; 3] = [Self::Kafka, Self::RabbitMq, Self::Sqs];

    /// The broker's name, as [`Features::broker`](messaging_core::Features::broker) says it.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Kafka => "kafka",
            Self::RabbitMq => "rabbitmq",
            Self::Sqs => "sqs",
        }
    }

    /// The environment variable that points the tests at another broker of this kind.
    pub const fn env_var(self) -> &'static str {
        match self {
            Self::Kafka => "MESSAGING_TEST_KAFKA_URL",
            Self::RabbitMq => "MESSAGING_TEST_AMQP_URL",
            Self::Sqs => "MESSAGING_TEST_SQS_URL",
        }
    }

    /// The URL of the local broker: nisshi drops offset-commit metadata, test queues expire
    /// two minutes after their last use, moto answers receives after a second.
    pub const fn default_url(self) -> &'static str {
        match self {
            Self::Kafka => "kafka://127.0.0.1:9092?commit_metadata=false",
            Self::RabbitMq => "amqp://guest:guest@127.0.0.1:5672/%2f?queue_expires=120s",
            Self::Sqs => {
                "sqs://?endpoint=http://127.0.0.1:4566&region=us-east-1&wait_time=1s&retention=60s"
            }
        }
    }

    /// The broker's address for the adapter's own configuration (not a facade URL).
    pub const fn address(self) -> &'static str {
        match self {
            Self::Kafka => "127.0.0.1:9092",
            Self::RabbitMq => "amqp://guest:guest@127.0.0.1:5672/%2f",
            Self::Sqs => "http://127.0.0.1:4566",
        }
    }

    /// The script that installs and starts it.
    pub const fn script(self) -> &'static str {
        match self {
            Self::Kafka => "scripts/brokers/nisshi.sh",
            Self::RabbitMq => "scripts/brokers/rabbitmq.sh",
            Self::Sqs => "scripts/brokers/moto.sh",
        }
    }

    /// The facade URL the tests use: [`env_var`](Self::env_var) if set, else
    /// [`default_url`](Self::default_url).
    pub fn url(self) -> String {
        std::env::var(self.env_var()).unwrap_or_else(|_| self.default_url().to_owned())
    }

    /// Fails the test: the broker is not reachable. Says where it was looked for and how to
    /// start it.
    #[track_caller]
    pub fn unreachable(self, error: impl std::fmt::Display) -> ! {
        panic!(
            "{} is not reachable (looked for at {}; run {}, or set {}): {error}",
            self.name(),
            messaging_core::connect::redact_url(&self.url()),
            self.script(),
            self.env_var()
        )
    }
}

/// A fresh name for a test's topic, queue or group: `<prefix>-<uuid>`.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// `future`'s output, or a test failure naming `what` once `limit` has passed.
#[track_caller]
pub fn within<T>(
    what: &str,
    limit: Duration,
    future: impl Future<Output = T>,
) -> impl Future<Output = T> {
    let caller = std::panic::Location::caller();
    let what = what.to_owned();
    async move {
        match tokio::time::timeout(limit, future).await {
            Ok(v) => v,
            Err(_) => panic!("{what}: not done within {limit:?} (at {caller})"),
        }
    }
}

/// Waits until `done()` holds, checking every 10 ms; `false` if `limit` passed first.
pub async fn until(limit: Duration, mut done: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + limit;
    loop {
        if done() {
            return true;
        }
        if Instant::now() >= end {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A file of the tests' throw-away TLS material (`ca.pem`, `server.pem`, `client.pem`,
/// `client.key`, `other-ca.pem`, `other-client.pem`, `other-client.key`), made by
/// `scripts/tls-certs.sh` (which the broker scripts run) in `$MESSAGING_TLS_DIR`, default
/// `~/.cache/messaging-brokers/tls`. Panics, saying how to make it, when it is missing.
pub fn tls_file(name: &str) -> std::path::PathBuf {
    let dir = std::env::var_os("MESSAGING_TLS_DIR")
        .map(std::path::PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .map(|home| std::path::Path::new(&home).join(".cache/messaging-brokers/tls"))
        })
        .expect("neither MESSAGING_TLS_DIR nor HOME is set");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "TLS test file {} is missing: run scripts/tls-certs.sh (the broker scripts in \
         scripts/brokers run it)",
        path.display()
    );
    path
}

/// The IAM-enforcing HTTPS moto (`https://localhost:4567`) that `scripts/brokers/moto.sh`
/// starts beside the plain one.
pub const SECURE_SQS_ENDPOINT: &str = "https://localhost:4567";

/// The access key id and secret access key of `user` (`app`: every SQS and SNS action;
/// `limited`: only listing queues and topics) on the secure moto, from the keys file
/// `scripts/brokers/moto.sh` writes when it starts it
/// (`${XDG_CACHE_HOME:-~/.cache}/messaging-brokers/moto-secure.json`). Panics, saying how to
/// make it, when the file is missing.
pub fn secure_sqs_keys(user: &str) -> (String, String) {
    let path = std::env::var_os("XDG_CACHE_HOME")
        .map(std::path::PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| std::path::Path::new(&h).join(".cache")))
        .expect("neither XDG_CACHE_HOME nor HOME is set")
        .join("messaging-brokers/moto-secure.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{} cannot be read ({e}): run scripts/brokers/moto.sh, which starts the secure moto",
            path.display()
        )
    });
    let keys: serde_json::Value = serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("{} is not JSON: {e}", path.display()));
    let field = |name: &str| {
        keys[user][name]
            .as_str()
            .unwrap_or_else(|| panic!("{} has no {user}.{name}", path.display()))
            .to_owned()
    };
    (field("access_key_id"), field("secret_access_key"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_broker_has_its_env_var_script_and_scheme() {
        for b in TestBroker::ALL {
            assert!(b.env_var().starts_with("MESSAGING_TEST_"));
            assert!(b.script().starts_with("scripts/brokers/"));
            let scheme = b.default_url().split("://").next().unwrap_or_default();
            assert!(
                ["kafka", "amqp", "sqs"].contains(&scheme),
                "{}",
                b.default_url()
            );
        }
        assert_ne!(unique("t"), unique("t"));
    }

    #[tokio::test]
    async fn until_reports_whether_the_condition_came_in_time() {
        assert!(until(Duration::from_millis(50), || true).await);
        assert!(!until(Duration::from_millis(30), || false).await);
    }

    #[tokio::test]
    #[should_panic(expected = "the reply: not done within")]
    async fn within_fails_the_test_naming_what_did_not_finish() {
        within(
            "the reply",
            Duration::from_millis(10),
            std::future::pending::<()>(),
        )
        .await;
    }
}
