//! The Kafka harness for the conformance suite, against nisshi on 127.0.0.1:9092 (started by
//! `scripts/brokers/nisshi.sh`) or an in-process librdkafka mock cluster.

#![allow(dead_code, unreachable_pub, unused_imports)]

use std::sync::{Arc, Mutex, mpsc};
use std::time::Duration;

use messaging_core::{
    BoxFuture, DynPublisher, DynSubscriber, Event, Features, PublishBatchError, PublishError,
    Publisher, RawMessage, Receipt, SubscribeError, SubscribeOptions, Subscriber,
};
use messaging_kafka::{
    KafkaBroker, KafkaConfig, KafkaPublisher, KafkaSubscriber, KafkaSubscription,
};
use messaging_testkit::conformance::{Harness, Settings};
use messaging_testkit::support::TestBroker;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

/// The test broker's address.
pub const NISSHI: &str = TestBroker::Kafka.address();

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
    KafkaBroker::connect(config)
        .await
        .unwrap_or_else(|e| TestBroker::Kafka.unreachable(format!("{servers}: {e}")))
}

pub use messaging_testkit::support::unique;

/// Keeps an in-process librdkafka mock cluster alive on a thread of its own (it is neither
/// `Send` nor `Sync`); dropping the guard stops it.
pub struct MockGuard {
    requests: Mutex<mpsc::Sender<MockRequest>>,
    pub servers: String,
}

enum MockRequest {
    Create(String, mpsc::Sender<()>),
    /// Makes the next requests of an API fail with these errors, in order.
    Errors(RDKafkaApiKey, Vec<RDKafkaRespErr>, mpsc::Sender<()>),
    /// Drops the errors still queued for an API.
    Clear(RDKafkaApiKey, mpsc::Sender<()>),
    Stop,
}

impl MockGuard {
    pub fn start() -> Self {
        let (servers_tx, servers_rx) = mpsc::channel();
        let (requests, rx) = mpsc::channel::<MockRequest>();
        std::thread::spawn(move || {
            let cluster = rdkafka::mocking::MockCluster::new(3).expect("mock cluster");
            servers_tx.send(cluster.bootstrap_servers()).expect("send");
            loop {
                match rx.recv() {
                    Ok(MockRequest::Create(topic, done)) => {
                        // Creating an existing topic fails; either way it exists afterwards.
                        let _ = cluster.create_topic(&topic, 4, 1);
                        let _ = done.send(());
                    }
                    Ok(MockRequest::Errors(api, errors, done)) => {
                        cluster.request_errors(api, &errors);
                        let _ = done.send(());
                    }
                    Ok(MockRequest::Clear(api, done)) => {
                        cluster.clear_request_errors(api);
                        let _ = done.send(());
                    }
                    Ok(MockRequest::Stop) | Err(_) => break,
                }
            }
            drop(cluster);
        });
        let servers = servers_rx.recv().expect("mock cluster started");
        Self {
            requests: Mutex::new(requests),
            servers,
        }
    }

    /// Creates topics (the mock cluster does not implement CreateTopics).
    pub fn create(&self, topics: &[String]) {
        for t in topics {
            let (done, wait) = mpsc::channel();
            let sent = self
                .requests
                .lock()
                .map(|r| r.send(MockRequest::Create(t.clone(), done)).is_ok());
            if matches!(sent, Ok(true)) {
                let _ = wait.recv();
            }
        }
    }
}

impl MockGuard {
    /// Makes the cluster answer the next `errors.len()` requests of `api` with these errors.
    pub fn request_errors(&self, api: RDKafkaApiKey, errors: &[RDKafkaRespErr]) {
        let (done, wait) = mpsc::channel();
        let sent = self.requests.lock().map(|r| {
            r.send(MockRequest::Errors(api, errors.to_vec(), done))
                .is_ok()
        });
        if matches!(sent, Ok(true)) {
            let _ = wait.recv();
        }
    }
}

impl MockGuard {
    /// Drops the errors still queued for `api`.
    pub fn clear_request_errors(&self, api: RDKafkaApiKey) {
        let (done, wait) = mpsc::channel();
        let sent = self
            .requests
            .lock()
            .map(|r| r.send(MockRequest::Clear(api, done)).is_ok());
        if matches!(sent, Ok(true)) {
            let _ = wait.recv();
        }
    }
}

impl Drop for MockGuard {
    fn drop(&mut self) {
        let _ = self.requests.lock().map(|s| s.send(MockRequest::Stop));
    }
}

/// A publisher or subscriber that creates its topics on the mock cluster first.
pub struct OnMock<T> {
    inner: T,
    mock: Arc<MockGuard>,
    config: KafkaConfig,
}

impl Publisher for OnMock<KafkaPublisher> {
    async fn publish(&self, topic: &str, event: Event) -> Result<Receipt, PublishError> {
        self.mock.create(&[topic.to_owned()]);
        self.inner.publish(topic, event).await
    }

    async fn publish_batch(
        &self,
        topic: &str,
        events: Vec<Event>,
    ) -> Result<Vec<Receipt>, PublishBatchError> {
        self.mock.create(&[topic.to_owned()]);
        self.inner.publish_batch(topic, events).await
    }

    async fn close(&self) -> Result<(), PublishError> {
        self.inner.close().await
    }

    fn features(&self) -> Features {
        self.inner.features()
    }
}

impl Subscriber for OnMock<KafkaSubscriber> {
    type Subscription = KafkaSubscription;

    async fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<KafkaSubscription, SubscribeError> {
        self.mock.create(
            &self
                .config
                .topics_for(topic, options.group(), options.is_ordered()),
        );
        self.inner.subscribe(topic, options).await
    }

    fn features(&self) -> Features {
        self.inner.features()
    }
}

pub struct KafkaHarness {
    config: KafkaConfig,
    broker: tokio::sync::OnceCell<KafkaBroker>,
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
        let _ = env_logger::builder().is_test(true).try_init();
        let mock = Arc::new(MockGuard::start());
        let config = KafkaConfig {
            create_topics: false,
            ..test_config(&mock.servers)
        };
        Self::with(config, Some(mock))
    }

    fn with(config: KafkaConfig, mock: Option<Arc<MockGuard>>) -> Self {
        Self {
            config,
            broker: tokio::sync::OnceCell::new(),
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
            individual_acks: false,
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
        Box::pin(async {
            let inner = self.broker().await.publisher();
            match &self._mock {
                None => Arc::new(inner) as Arc<dyn DynPublisher>,
                Some(mock) => Arc::new(OnMock {
                    inner,
                    mock: mock.clone(),
                    config: self.config.clone(),
                }),
            }
        })
    }

    fn subscriber(&self) -> BoxFuture<'_, Arc<dyn DynSubscriber>> {
        Box::pin(async {
            let inner = self.broker().await.subscriber();
            match &self._mock {
                None => Arc::new(inner) as Arc<dyn DynSubscriber>,
                Some(mock) => Arc::new(OnMock {
                    inner,
                    mock: mock.clone(),
                    config: self.config.clone(),
                }),
            }
        })
    }

    fn can_publish_raw(&self) -> bool {
        true
    }

    fn publish_raw<'a>(&'a self, topic: &'a str, raw: RawMessage) -> Option<BoxFuture<'a, ()>> {
        Some(Box::pin(async move {
            if let Some(mock) = &self._mock {
                mock.create(&[topic.to_owned()]);
            }
            self.broker()
                .await
                .publish_raw(topic, &raw)
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
