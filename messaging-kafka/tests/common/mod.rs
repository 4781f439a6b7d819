//! The Kafka harness for the conformance suite, against nisshi on 127.0.0.1:9092 (started by
//! `scripts/brokers/nisshi.sh`) or an in-process librdkafka mock cluster.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use messaging_core::{BoxFuture, DynPublisher, DynSubscriber, Features, RawMessage};
use messaging_kafka::{KafkaBroker, KafkaConfig};
use messaging_testkit::conformance::{Harness, Settings};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// The test broker's address.
pub const NISSHI: &str = "127.0.0.1:9092";

/// The configuration every Kafka test uses: quick commits and session expiry.
pub fn test_config(servers: &str) -> KafkaConfig {
    KafkaConfig {
        commit_interval: Duration::from_millis(200),
        session_timeout: Duration::from_secs(6),
        revoke_timeout: Duration::from_secs(3),
        subscribe_timeout: Duration::from_secs(30),
        ..KafkaConfig::new(servers)
    }
}

/// The configuration for nisshi, which drops offset-commit metadata.
pub fn nisshi_config() -> KafkaConfig {
    KafkaConfig {
        commit_metadata: false,
        ..test_config(NISSHI)
    }
}

/// Connects, failing the test with a clear message when the broker is unreachable.
pub async fn connect(config: KafkaConfig) -> KafkaBroker {
    let servers = config.bootstrap_servers.clone();
    KafkaBroker::connect(config).await.unwrap_or_else(|e| {
        panic!("Kafka is not reachable at {servers} (run scripts/brokers/nisshi.sh): {e}")
    })
}

/// A unique name for a test's topic or group.
pub fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Keeps an in-process librdkafka mock cluster alive on a thread of its own (it is neither
/// `Send` nor `Sync`); dropping the guard stops it.
pub struct MockGuard {
    stop: Mutex<mpsc::Sender<()>>,
    pub servers: String,
}

impl MockGuard {
    pub fn start() -> Self {
        let (servers_tx, servers_rx) = mpsc::channel();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        std::thread::spawn(move || {
            let cluster = rdkafka::mocking::MockCluster::new(3).expect("mock cluster");
            servers_tx.send(cluster.bootstrap_servers()).expect("send");
            let _ = stop_rx.recv();
            drop(cluster);
        });
        let servers = servers_rx.recv().expect("mock cluster started");
        Self {
            stop: Mutex::new(stop_tx),
            servers,
        }
    }
}

impl Drop for MockGuard {
    fn drop(&mut self) {
        let _ = self.stop.lock().map(|s| s.send(()));
    }
}

pub struct KafkaHarness {
    config: KafkaConfig,
    broker: tokio::sync::OnceCell<KafkaBroker>,
    raw: std::sync::OnceLock<FutureProducer>,
    _mock: Option<Arc<MockGuard>>,
}

impl KafkaHarness {
    /// Against nisshi.
    pub fn nisshi() -> Self {
        Self::with(nisshi_config(), None)
    }

    /// Against a fresh mock cluster. It does not implement CreateTopics: topics are created
    /// on first use by the cluster itself.
    pub fn mock() -> Self {
        let mock = Arc::new(MockGuard::start());
        let config = KafkaConfig {
            create_topics: false,
            ..test_config(&mock.servers)
        }
        .property("allow.auto.create.topics", "true");
        Self::with(config, Some(mock))
    }

    fn with(config: KafkaConfig, mock: Option<Arc<MockGuard>>) -> Self {
        Self {
            config,
            broker: tokio::sync::OnceCell::new(),
            raw: std::sync::OnceLock::new(),
            _mock: mock,
        }
    }

    pub async fn broker(&self) -> &KafkaBroker {
        self.broker
            .get_or_init(|| connect(self.config.clone()))
            .await
    }
}

impl Harness for KafkaHarness {
    fn features(&self) -> Features {
        // What KafkaBroker::features reports for this configuration, written out.
        Features {
            counts_redeliveries_across_consumers: self.config.commit_metadata,
            consumer_groups: true,
            ordering: true,
            replay: true,
            delayed_redelivery: messaging_core::DelaySupport::Emulated,
            max_payload: Some(1024 * 1024),
            persistent: true,
            ..Features::new("kafka")
        }
    }

    fn publisher(&self) -> BoxFuture<'_, Arc<dyn DynPublisher>> {
        Box::pin(async { Arc::new(self.broker().await.publisher()) as Arc<dyn DynPublisher> })
    }

    fn subscriber(&self) -> BoxFuture<'_, Arc<dyn DynSubscriber>> {
        Box::pin(async { Arc::new(self.broker().await.subscriber()) as Arc<dyn DynSubscriber> })
    }

    fn can_publish_raw(&self) -> bool {
        true
    }

    fn publish_raw<'a>(&'a self, topic: &'a str, raw: RawMessage) -> Option<BoxFuture<'a, ()>> {
        Some(Box::pin(async move {
            self.broker()
                .await
                .create_topic(topic)
                .await
                .expect("create topic");
            let producer = self.raw.get_or_init(|| {
                rdkafka::ClientConfig::new()
                    .set("bootstrap.servers", &self.config.bootstrap_servers)
                    .create()
                    .expect("raw producer")
            });
            let mut headers = OwnedHeaders::new();
            if let Some(ct) = &raw.content_type {
                headers = headers.insert(Header {
                    key: "content-type",
                    value: Some(ct.as_bytes()),
                });
            }
            for (k, v) in &raw.headers {
                headers = headers.insert(Header {
                    key: k,
                    value: Some(v.as_slice()),
                });
            }
            let record: FutureRecord<'_, (), [u8]> = FutureRecord::to(topic)
                .payload(raw.body.as_slice())
                .headers(headers);
            producer
                .send(record, Duration::from_secs(10))
                .await
                .expect("raw publish");
        }))
    }

    fn settings(&self) -> Settings {
        Settings {
            timeout: Duration::from_secs(30),
            quiet: Duration::from_millis(1500),
            ack_deadline: Duration::from_secs(2),
            delay: Duration::from_secs(1),
            case_timeout: Duration::from_secs(180),
        }
    }
}
