//! HTTPS, SigV4 keys and IAM permissions against a real endpoint: the second moto that
//! `scripts/brokers/moto.sh` starts on https://localhost:4567 (the test CA's certificate for
//! `localhost`), which checks every request's signature against the users it knows and their
//! policies. Its users' keys are in `~/.cache/messaging-brokers/moto-secure.json`: `app` may
//! do everything on SQS and SNS, `limited` only list queues and topics.

use std::time::Duration;

use messaging_core::connect::{ConnectError, TlsFiles};
use messaging_sqs::{SqsBroker, SqsConfig, StaticCredentials};
use messaging_testkit::logs::LogCapture;
use messaging_testkit::security::{
    assert_forbidden, assert_round_trip, assert_secret_hidden, refused_within,
};
use messaging_testkit::support::{
    SECURE_SQS_ENDPOINT as ENDPOINT, TestBroker, secure_sqs_keys, tls_file, unique,
};

mod common;

/// A refused connect must say so within this.
const FAST: Duration = Duration::from_secs(10);

/// The secure moto's keys of `user`.
fn keys(user: &str) -> StaticCredentials {
    let (access_key_id, secret_access_key) = secure_sqs_keys(user);
    StaticCredentials {
        access_key_id,
        secret_access_key,
    }
}

fn config(endpoint: &str, credentials: StaticCredentials, ca: Option<&str>) -> SqsConfig {
    let mut tls = TlsFiles::default();
    if let Some(ca) = ca {
        tls = tls.with_ca_file(tls_file(ca));
    }
    SqsConfig {
        credentials: Some(credentials),
        tls,
        wait_time: Duration::from_secs(1),
        retention: Some(Duration::from_secs(3600)),
        call_timeout: Duration::from_secs(20),
        ..SqsConfig::local(endpoint)
    }
}

async fn refused(config: SqsConfig) -> ConnectError {
    refused_within(FAST, SqsBroker::connect(config)).await
}

#[tokio::test]
async fn publishes_and_consumes_over_https_with_signed_requests() {
    let broker = SqsBroker::connect(config(ENDPOINT, keys("app"), Some("ca.pem")))
        .await
        .unwrap_or_else(|e| TestBroker::Sqs.unreachable(format!("the HTTPS endpoint: {e}")));
    let (publisher, subscriber) = (broker.publisher(), broker.subscriber());
    let topic = unique("sqs-tls");
    let event = common::event("over-https");
    assert_round_trip(
        &publisher,
        &subscriber,
        &topic,
        event,
        Duration::from_secs(30),
    )
    .await;
}

#[tokio::test]
async fn refused_keys_fail_fast_as_authentication_and_never_show_the_secret() {
    let capture = LogCapture::global();
    let secret = format!("wrong-secret-{}", unique("s").replace('-', ""));
    let app = keys("app");
    for credentials in [
        StaticCredentials {
            secret_access_key: secret.clone(),
            ..app.clone()
        },
        StaticCredentials {
            access_key_id: "AKIAUNKNOWNKEY000000".into(),
            secret_access_key: secret.clone(),
        },
    ] {
        let err = refused(config(ENDPOINT, credentials, Some("ca.pem"))).await;
        assert!(
            matches!(err, ConnectError::Authentication { .. }),
            "{err:?}"
        );
        assert_secret_hidden(&err, "authentication to sqs", &secret, capture);
    }
    assert!(
        !capture.text().contains(&app.secret_access_key),
        "a secret is in the logs"
    );
}

#[tokio::test]
async fn an_endpoint_certificate_that_does_not_verify_fails_as_tls() {
    let cases = [
        ("no CA", config(ENDPOINT, keys("app"), None)),
        (
            "another CA",
            config(ENDPOINT, keys("app"), Some("other-ca.pem")),
        ),
        (
            "another host name",
            config("https://127.0.0.1:4567", keys("app"), Some("ca.pem")),
        ),
    ];
    for (case, config) in cases {
        let err = refused(config).await;
        assert!(matches!(err, ConnectError::Tls { .. }), "{case}: {err:?}");
        assert!(err.to_string().starts_with("TLS with sqs"), "{case}: {err}");
    }
}

#[tokio::test]
async fn missing_permissions_are_forbidden_and_not_transient() {
    // `limited` may list queues (so it connects) and nothing else.
    let broker = SqsBroker::connect(config(ENDPOINT, keys("limited"), Some("ca.pem")))
        .await
        .unwrap_or_else(|e| TestBroker::Sqs.unreachable(format!("the HTTPS endpoint: {e}")));
    assert_forbidden(
        &broker.publisher(),
        &broker.subscriber(),
        &unique("sqs-denied"),
        common::event("denied"),
    )
    .await;
}

#[test]
fn a_client_certificate_is_refused_as_configuration() {
    let url: messaging_core::connect::BrokerUrl =
        "sqs://?endpoint=https://h&tls_cert_file=/c.pem&tls_key_file=/k.pem"
            .parse()
            .unwrap();
    let err = SqsConfig::from_options(
        &url,
        messaging_core::connect::Options::from_url("sqs", &url),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("AWS authenticates requests by their signature"),
        "{err}"
    );
}
