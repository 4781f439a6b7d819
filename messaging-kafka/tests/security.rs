//! TLS and SASL/SCRAM against the real broker: the second nisshi that
//! `scripts/brokers/nisshi.sh` starts on 127.0.0.1:9093, which speaks only TLS (the test CA's
//! certificate for `localhost`) and requires SASL/SCRAM, with the users `messaging-app`
//! (SCRAM-SHA-512) and `messaging-app256` (SCRAM-SHA-256).
#![cfg(feature = "tls")]

use std::time::Duration;

use messaging_core::EventBuilder;
use messaging_core::connect::{BrokerUrl, ConnectError, Options};
use messaging_kafka::{KafkaBroker, KafkaConfig};
use messaging_testkit::logs::LogCapture;
use messaging_testkit::security::{assert_round_trip, assert_secret_hidden, refused_within};
use messaging_testkit::support::{TestBroker, tls_file, unique};

/// A refused connect must say so within this, well before the metadata time-out.
const FAST: Duration = Duration::from_secs(10);

fn config(url: &str) -> KafkaConfig {
    let url: BrokerUrl = url.parse().expect("url");
    let mut c = KafkaConfig::from_options(&url, Options::from_url("kafka", &url))
        .unwrap_or_else(|e| panic!("{e}"));
    // nisshi drops offset-commit metadata; the rest as the other Kafka tests.
    c.commit_metadata = false;
    c.commit_interval = Duration::from_millis(200);
    c.session_timeout = Duration::from_secs(6);
    c.subscribe_timeout = Duration::from_secs(30);
    c
}

fn ca() -> String {
    format!("tls_ca_file={}", tls_file("ca.pem").display())
}

/// `kafkas://user:password@host:9093?sasl.mechanism=…&query`.
fn kafkas(credentials: &str, host: &str, mechanism: &str, query: &str) -> String {
    format!("kafkas://{credentials}@{host}:9093?sasl.mechanism={mechanism}&{query}")
}

async fn refused(url: &str) -> ConnectError {
    refused_within(FAST, KafkaBroker::connect(config(url))).await
}

async fn round_trip(url: &str) {
    let broker = KafkaBroker::connect(config(url))
        .await
        .unwrap_or_else(|e| TestBroker::Kafka.unreachable(format!("the TLS listener: {e}")));
    let event = EventBuilder::new("urn:test", "t").build().unwrap();
    let (publisher, subscriber) = (broker.publisher(), broker.subscriber());
    let topic = unique("kafka-tls");
    assert_round_trip(
        &publisher,
        &subscriber,
        &topic,
        event,
        Duration::from_secs(60),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sasl_scram_over_tls_publishes_and_consumes() {
    round_trip(&kafkas(
        "messaging-app:messaging-app-test-password",
        "localhost",
        "SCRAM-SHA-512",
        &ca(),
    ))
    .await;
    round_trip(&kafkas(
        "messaging-app256:messaging-app256-test-password",
        "localhost",
        "SCRAM-SHA-256",
        &ca(),
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_fail_fast_as_authentication_and_never_show_the_secret() {
    let capture = LogCapture::global();
    let secret = format!("wrong-secret-{}", unique("s").replace('-', ""));
    for user in ["messaging-app", "nobody"] {
        let url = kafkas(
            &format!("{user}:{secret}"),
            "localhost",
            "SCRAM-SHA-512",
            &ca(),
        );
        // librdkafka's log lines go through the `log` crate, which the capture records too.
        let err = refused(&url).await;
        assert!(
            matches!(err, ConnectError::Authentication { .. }),
            "{err:?}"
        );
        assert_secret_hidden(&err, "authentication to kafka", &secret, capture);
    }
    assert!(
        capture.text().contains("SASL"),
        "librdkafka's log was not captured"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_that_does_not_verify_fails_as_tls() {
    let app = "messaging-app:messaging-app-test-password";
    let other = format!("tls_ca_file={}", tls_file("other-ca.pem").display());
    let cases = [
        ("no CA", kafkas(app, "localhost", "SCRAM-SHA-512", "")),
        (
            "another CA",
            kafkas(app, "localhost", "SCRAM-SHA-512", &other),
        ),
        (
            "another host name",
            kafkas(app, "127.0.0.1", "SCRAM-SHA-512", &ca()),
        ),
    ];
    for (case, url) in cases {
        let err = refused(&url).await;
        assert!(matches!(err, ConnectError::Tls { .. }), "{case}: {err:?}");
        assert!(
            err.to_string().starts_with("TLS with kafka"),
            "{case}: {err}"
        );
    }
}

#[test]
fn tls_files_need_kafkas() {
    let url: BrokerUrl = format!("kafka://h:9092?{}", ca()).parse().unwrap();
    let err = KafkaConfig::from_options(&url, Options::from_url("kafka", &url))
        .expect_err("refused")
        .to_string();
    assert!(err.contains("need a kafkas:// URL"), "{err}");
    let url: BrokerUrl = format!("kafkas://h:9093?{}", ca()).parse().unwrap();
    let c = KafkaConfig::from_options(&url, Options::from_url("kafka", &url)).unwrap();
    assert!(
        c.properties
            .iter()
            .any(|(k, v)| k == "ssl.ca.location" && v.ends_with("ca.pem")),
        "{:?}",
        c.properties
    );
}
