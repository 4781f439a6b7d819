//! TLS, authentication and authorisation against the real broker: the TLS listener on
//! 127.0.0.1:5671 with the test CA's certificate for `localhost`, and the users and virtual host
//! `scripts/brokers/rabbitmq.sh` creates (`messaging-app` with every permission on
//! `messaging-secure`, `messaging-limited` with permissions only on names `allowed.*`).
#![cfg(feature = "tls")]

use std::sync::Arc;
use std::time::{Duration, Instant};

use messaging_core::connect::{BrokerUrl, ConnectError, Options};
use messaging_core::handler::{HandlerError, Incoming, handler_fn};
use messaging_core::runtime::{Consumer, RunError};
use messaging_core::{EventBuilder, Publisher, SubscribeErrorKind, SubscribeOptions};
use messaging_rabbitmq::{RabbitBroker, RabbitConfig};
use messaging_testkit::logs::LogCapture;
use messaging_testkit::security::{
    assert_forbidden, assert_round_trip, assert_secret_hidden, refused_within,
};
use messaging_testkit::support::{TestBroker, tls_file, unique};

const APP: &str = "messaging-app:messaging-app-test-password";
const LIMITED: &str = "messaging-limited:messaging-limited-test-password";

/// A failed connect must say so within this: no time-out, no retry loop.
const FAST: Duration = Duration::from_secs(10);

fn config(url: &str) -> RabbitConfig {
    let url: BrokerUrl = url.parse().expect("url");
    let mut c = RabbitConfig::from_options(&url, Options::from_url("rabbitmq", &url))
        .unwrap_or_else(|e| panic!("{e}"));
    c.queue_expires = Some(Duration::from_secs(120));
    c.operation_timeout = Duration::from_secs(20);
    c
}

fn ca() -> String {
    tls_file("ca.pem").display().to_string()
}

/// `amqps://` as `user:password` to `host` on the TLS port, virtual host `messaging-secure`.
fn amqps(credentials: &str, host: &str, query: &str) -> String {
    format!("amqps://{credentials}@{host}:5671/messaging-secure?{query}")
}

async fn connect(url: &str) -> RabbitBroker {
    RabbitBroker::connect(config(url))
        .await
        .unwrap_or_else(|e| TestBroker::RabbitMq.unreachable(e))
}

/// Connects expecting a failure, within [`FAST`].
/// Connects expecting a refusal within [`FAST`].
async fn refused(url: &str) -> ConnectError {
    refused_within(FAST, RabbitBroker::connect(config(url))).await
}

async fn round_trip(broker: &RabbitBroker, topic: &str) {
    let event = EventBuilder::new("urn:test", "t").build().unwrap();
    let (publisher, subscriber) = (broker.publisher(), broker.subscriber());
    assert_round_trip(
        &publisher,
        &subscriber,
        topic,
        event,
        Duration::from_secs(20),
    )
    .await;
}

#[tokio::test]
async fn publishes_and_consumes_over_tls_with_the_ca_from_the_url() {
    let url = amqps(APP, "localhost", &format!("tls_ca_file={}", ca()));
    let broker = connect(&url).await;
    round_trip(&broker, &unique("tls")).await;
}

#[tokio::test]
async fn mutual_tls_sends_the_client_certificate() {
    // The listener verifies a client certificate when one is sent: ours passes, one from
    // another CA fails the handshake, so the certificate really is sent.
    let query = |cert: &str, key: &str| {
        format!(
            "tls_ca_file={}&tls_cert_file={}&tls_key_file={}",
            ca(),
            tls_file(cert).display(),
            tls_file(key).display()
        )
    };
    let ok = connect(&amqps(APP, "localhost", &query("client.pem", "client.key"))).await;
    round_trip(&ok, &unique("mtls")).await;
    // Under TLS 1.3 the server checks the client certificate after the client has finished
    // its side of the handshake: its alert (a `Tls` error) races the connection reset that
    // follows it (an I/O error), so only the refusal itself is certain.
    let url = amqps(
        APP,
        "localhost",
        &query("other-client.pem", "other-client.key"),
    );
    let result = tokio::time::timeout(FAST, RabbitBroker::connect(config(&url)))
        .await
        .expect("a refused client certificate answers");
    match result {
        Ok(_) => panic!("a client certificate from another CA was accepted"),
        Err(e) => assert!(
            matches!(
                e,
                ConnectError::Tls { .. } | ConnectError::Unreachable { .. }
            ),
            "{e:?}"
        ),
    }
}

#[tokio::test]
async fn a_server_certificate_that_does_not_verify_fails_as_tls() {
    let other_ca = format!("tls_ca_file={}", tls_file("other-ca.pem").display());
    let cases = [
        // The system's trust store only: the test CA is not in it.
        ("no CA", amqps(APP, "localhost", "")),
        ("another CA", amqps(APP, "localhost", &other_ca)),
        // The certificate is for `localhost` only.
        (
            "another host name",
            amqps(APP, "127.0.0.1", &format!("tls_ca_file={}", ca())),
        ),
        // The plain AMQP port does not speak TLS.
        (
            "a plain port",
            format!(
                "amqps://{APP}@localhost:5672/messaging-secure?tls_ca_file={}",
                ca()
            ),
        ),
    ];
    for (case, url) in cases {
        let err = refused(&url).await;
        assert!(matches!(err, ConnectError::Tls { .. }), "{case}: {err:?}");
        assert!(
            err.to_string().starts_with("TLS with rabbitmq"),
            "{case}: {err}"
        );
    }
}

#[tokio::test]
async fn wrong_credentials_fail_fast_as_authentication_and_never_show_the_secret() {
    let secret = format!("wrong-secret-{}", uuid_like());
    let url = amqps(
        &format!("messaging-app:{secret}"),
        "localhost",
        &format!("tls_ca_file={}", ca()),
    );
    let capture = LogCapture::global();
    let err = refused(&url).await;
    assert!(
        matches!(err, ConnectError::Authentication { .. }),
        "{err:?}"
    );
    // Everything the failed connect printed, at every level, and the error in every form.
    assert_secret_hidden(&err, "authentication to rabbitmq", &secret, capture);
    assert!(
        err.to_string().contains("messaging-app:***@localhost"),
        "{err}"
    );
    // Plain AMQP too.
    let err = refused(&format!(
        "amqp://guest:{secret}@127.0.0.1:5672/%2f?operation_timeout=5s"
    ))
    .await;
    assert!(
        matches!(err, ConnectError::Authentication { .. }),
        "{err:?}"
    );
    assert_secret_hidden(&err, "authentication to rabbitmq", &secret, capture);
}

#[tokio::test]
async fn a_virtual_host_without_permissions_is_forbidden() {
    // guest exists but has no permissions on messaging-secure.
    let err = refused(&amqps(
        "guest:guest",
        "localhost",
        &format!("tls_ca_file={}", ca()),
    ))
    .await;
    assert!(matches!(err, ConnectError::Forbidden { .. }), "{err:?}");
}

#[tokio::test]
async fn missing_permissions_are_forbidden_and_not_transient() {
    let broker = connect(&amqps(
        LIMITED,
        "localhost",
        &format!("tls_ca_file={}", ca()),
    ))
    .await;
    // Allowed names work.
    round_trip(&broker, &format!("allowed.{}", unique("ok"))).await;
    // Others: the exchange cannot be declared (configure permission).
    let event = EventBuilder::new("urn:test", "t").build().unwrap();
    assert_forbidden(
        &broker.publisher(),
        &broker.subscriber(),
        &unique("denied"),
        event.clone(),
    )
    .await;
    // The connection survives a refused channel: allowed names still work.
    broker
        .publisher()
        .publish(&format!("allowed.{}", unique("after")), event)
        .await
        .expect("publish after a refusal");
}

#[tokio::test]
async fn a_consumer_without_permission_stops_at_once_instead_of_retrying() {
    let broker = connect(&amqps(
        LIMITED,
        "localhost",
        &format!("tls_ca_file={}", ca()),
    ))
    .await;
    let topic: &'static str = Box::leak(unique("denied-consumer").into_boxed_str());
    let consumer = Consumer::builder(
        broker.subscriber(),
        Arc::new(broker.publisher()),
        topic,
        SubscribeOptions::new("g"),
    )
    .build(handler_fn(|_: Incoming| async {
        Ok::<(), HandlerError>(())
    }));
    let started = Instant::now();
    let ended = tokio::time::timeout(FAST * 2, consumer.run(std::future::pending::<()>()))
        .await
        .expect("the consumer ends by itself");
    match ended {
        Err(RunError::Subscribe(e)) => {
            assert_eq!(e.kind(), SubscribeErrorKind::Forbidden, "{e}")
        }
        other => panic!("expected a refused subscription, got {other:?}"),
    }
    assert!(started.elapsed() < FAST, "took {:?}", started.elapsed());
}

/// A unique suffix: the secret must appear nowhere else in the process's logs.
fn uuid_like() -> String {
    unique("s").replace('-', "")
}
