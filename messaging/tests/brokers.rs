//! The facade against every broker: the same code, only the URL differs. Needs the real
//! brokers the project's scripts start (`scripts/brokers/*.sh`); a broker that is down fails
//! its test with the connection error.

use std::time::Duration;

use messaging::{
    Broker, ConnectError, Delivery, EventBuilder, EventExt, Inspect, Publisher, Requirements,
    SubscribeOptions, Subscriber, Subscription,
};
use messaging_testkit::support::{TestBroker, unique};

/// Publish, receive, ack, and the group's depth back to zero — through the run-time-chosen
/// publisher and subscriber.
async fn round_trip(url: &str, broker_name: &str) {
    let broker = Broker::connect(url)
        .await
        .unwrap_or_else(|e| panic!("{broker_name} must be running (scripts/brokers): {e}"));
    assert_eq!(broker.features().broker, broker_name);
    assert!(!broker.url().contains("guest:guest"), "{}", broker.url());
    let topic = unique("facade");
    let mut sub = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("g"))
        .await
        .unwrap();
    let event = EventBuilder::new("facade-test", "order.created")
        .json(&serde_json::json!({"orderId": "ORD-1"}))
        .ordering_key("ORD-1")
        .build()
        .unwrap();
    broker
        .publisher()
        .publish(&topic, event.clone())
        .await
        .unwrap();
    let delivery = tokio::time::timeout(Duration::from_secs(30), sub.recv())
        .await
        .expect("delivered within 30 s")
        .unwrap();
    let got = delivery.event().unwrap();
    assert_eq!(got.id(), event.id());
    assert_eq!(got.ordering_key(), Some("ORD-1"));
    delivery.ack().await.unwrap();
    sub.close().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let depth = broker.depth(&topic, "g").await.unwrap();
        if depth == Some(0) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "depth stayed {depth:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

use messaging::AttributesReader as _;

#[tokio::test]
async fn memory_by_url() {
    round_trip("memory://", "memory").await;
}

#[tokio::test]
async fn kafka_by_url() {
    round_trip(&TestBroker::Kafka.url(), "kafka").await;
}

#[tokio::test]
async fn rabbitmq_by_url() {
    round_trip(&TestBroker::RabbitMq.url(), "rabbitmq").await;
}

/// `amqps://` with the test CA from the URL, as a user on its own virtual host
/// (`scripts/brokers/rabbitmq.sh` makes both).
#[cfg(feature = "tls")]
#[tokio::test]
async fn rabbitmq_over_tls_by_url() {
    let ca = messaging_testkit::support::tls_file("ca.pem");
    round_trip(
        &format!(
            "amqps://messaging-app:messaging-app-test-password@localhost:5671/messaging-secure\
             ?queue_expires=120s&tls_ca_file={}",
            ca.display()
        ),
        "rabbitmq",
    )
    .await;
}

/// `kafkas://` with SASL/SCRAM and the test CA from the URL, against the TLS-only nisshi
/// (`scripts/brokers/nisshi.sh`).
#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_over_tls_with_sasl_by_url() {
    let ca = messaging_testkit::support::tls_file("ca.pem");
    round_trip(
        &format!(
            "kafkas://messaging-app:messaging-app-test-password@localhost:9093\
             ?sasl.mechanism=SCRAM-SHA-512&commit_metadata=false&tls_ca_file={}",
            ca.display()
        ),
        "kafka",
    )
    .await;
}

/// An `https://` SQS endpoint with the test CA and signed requests, against the
/// IAM-enforcing moto (`scripts/brokers/moto.sh`).
#[tokio::test]
async fn sqs_over_https_with_keys_by_url() {
    use messaging_testkit::support::{SECURE_SQS_ENDPOINT, secure_sqs_keys, tls_file};
    use percent_encoding::{NON_ALPHANUMERIC, utf8_percent_encode};
    // A secret key may hold `/` and `+`, which a URL's password must encode.
    let url_encode = |text: &str| utf8_percent_encode(text, NON_ALPHANUMERIC).to_string();
    let (key, secret) = secure_sqs_keys("app");
    round_trip(
        &format!(
            "sqs://{}:{}@us-east-1?endpoint={SECURE_SQS_ENDPOINT}&wait_time=1s&tls_ca_file={}",
            url_encode(&key),
            url_encode(&secret),
            tls_file("ca.pem").display()
        ),
        "sqs",
    )
    .await;
}

#[tokio::test]
async fn sqs_by_url() {
    round_trip(&TestBroker::Sqs.url(), "sqs").await;
}

#[tokio::test]
async fn named_memory_brokers_are_shared_within_the_process() {
    let name = unique("memory://shared");
    let a = Broker::connect(&name).await.unwrap();
    let b = Broker::connect(&name).await.unwrap();
    let other = Broker::connect("memory://").await.unwrap();
    let mut sub = b
        .subscriber()
        .subscribe("t", SubscribeOptions::new("g"))
        .await
        .unwrap();
    a.publisher()
        .publish("t", EventBuilder::new("s", "t").build().unwrap())
        .await
        .unwrap();
    sub.recv().await.unwrap().ack().await.unwrap();
    assert_eq!(other.depth("t", "g").await.unwrap(), None);
}

#[tokio::test]
async fn requirements_a_broker_cannot_meet_fail_at_connect() {
    // SQS has no replay of old messages and no transactions; the error names both.
    let url = format!(
        "{}&access_key_id=AKIA1&secret_access_key=hunter2",
        TestBroker::Sqs.url()
    );
    let settings = messaging::Settings::from_yaml(
        "requires:\n  replay: true\n  transactions: true\n  ordering: true\n",
        [("MESSAGING_URL".to_owned(), url)],
    )
    .unwrap();
    let err = Broker::from_settings(settings).await.unwrap_err();
    let shown = err.to_string();
    assert!(matches!(err, ConnectError::Unsupported { .. }), "{shown}");
    assert!(
        shown.contains("\"sqs\"")
            && shown.contains("replay of older messages")
            && shown.contains("transactions")
            && !shown.contains("per-key ordering"),
        "{shown}"
    );
    assert!(!shown.contains("hunter2"), "{shown}");

    let kafka = Broker::connect(&TestBroker::Kafka.url()).await.unwrap();
    kafka
        .require(&Requirements {
            ordering: true,
            replay: true,
            delayed_redelivery: true,
            ..Requirements::default()
        })
        .unwrap();
    let err = kafka
        .require(&Requirements {
            payload: Some(8 * 1024 * 1024),
            ..Requirements::default()
        })
        .unwrap_err();
    assert!(
        err.to_string().contains("payloads of 8388608 bytes"),
        "{err}"
    );
}

#[tokio::test]
async fn unreachable_brokers_fail_clearly_without_secrets() {
    for url in [
        "amqp://guest:hunter2@127.0.0.1:1/%2f",
        "kafka://app:hunter2@127.0.0.1:1?connect_timeout=3s",
        "sqs://AKIA1:hunter2@us-east-1?endpoint=http://127.0.0.1:1&call_timeout=3s",
    ] {
        let started = std::time::Instant::now();
        let err = Broker::connect(url).await.unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(
            matches!(err, ConnectError::Unreachable { .. }),
            "{url}: {shown}"
        );
        assert!(err.is_transient(), "{url}: {shown}");
        assert!(shown.contains("127.0.0.1:1"), "{url}: {shown}");
        assert!(!shown.contains("hunter2"), "{url}: {shown}");
        assert!(started.elapsed() < Duration::from_secs(20), "{url}");
    }
}

#[tokio::test]
async fn refused_credentials_are_not_transient() {
    let err = Broker::connect("amqp://guest:hunter2@127.0.0.1:5672/%2f")
        .await
        .unwrap_err();
    let shown = format!("{err} {err:?}");
    assert!(
        matches!(err, ConnectError::Authentication { .. }),
        "{shown}"
    );
    assert!(!err.is_transient(), "{shown}");
    assert!(!shown.contains("hunter2"), "{shown}");
}

#[tokio::test]
async fn bad_configuration_is_named() {
    for (url, expect) in [
        ("nats://127.0.0.1:4222", "unknown broker scheme \"nats\""),
        ("kafka://", "no bootstrap servers"),
        (
            "memory://?partitions=3",
            "unknown option `partitions` for memory",
        ),
        (
            "kafka://127.0.0.1:9092?partitions=many",
            "option `partitions` of kafka is \"many\"",
        ),
        (
            "amqp://guest:guest@127.0.0.1:5672/%2f?queue_type=stream",
            "quorum or classic",
        ),
        ("127.0.0.1:9092", "expected scheme://"),
    ] {
        let err = Broker::connect(url).await.unwrap_err();
        assert!(matches!(err, ConnectError::Config(_)), "{url}: {err}");
        assert!(err.to_string().contains(expect), "{url}: {err}");
        assert!(!err.is_transient());
    }
}

/// Issue 12 item 11: one redaction rule everywhere — the adapters' secret properties
/// (`ssl.key.pem`, `ssl.keystore.password`, `sasl.*`) are hidden in `Broker::url()`, `Debug`
/// and errors on every broker.
#[tokio::test]
async fn adapter_secret_options_never_show() {
    let secrets = [
        ("ssl.key.pem", "PEMKEY1"),
        ("ssl.keystore.password", "KSPW2"),
        ("sasl.oauthbearer.config", "OAUTH3"),
        ("sasl.kerberos.keytab", "KEYTAB4"),
    ];
    let query: Vec<String> = secrets.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let query = query.join("&");
    // Reachable Kafka: the URL the connected broker reports.
    let kafka = Broker::connect(&format!("{}&{query}", TestBroker::Kafka.url())).await;
    let shown = match &kafka {
        Ok(b) => format!("{} {b:?}", b.url()),
        Err(e) => format!("{e} {e:?}"),
    };
    for (k, v) in secrets {
        assert!(!shown.contains(v), "kafka {k}: {shown}");
    }
    // Unreachable, bad and valid URLs of every broker: parse, Display, Debug, errors.
    for url in [
        format!("kafka://127.0.0.1:1?connect_timeout=2s&{query}"),
        format!("kafka://127.0.0.1:9092?partitions=many&{query}"),
        "amqp://guest:guest@127.0.0.1:1/%2f?x-api-key=PEMKEY1&token=KSPW2".to_owned(),
        "sqs://us-east-1?endpoint=http://127.0.0.1:1&call_timeout=2s&session_token=OAUTH3"
            .to_owned(),
    ] {
        let parsed: messaging::BrokerUrl = url.parse().unwrap();
        let mut shown = format!("{parsed} {parsed:?}");
        if let Err(e) = Broker::connect(&url).await {
            shown.push_str(&format!(" {e} {e:?}"));
        }
        for (_, v) in secrets {
            assert!(!shown.contains(v), "{url}: {shown}");
        }
    }
}
