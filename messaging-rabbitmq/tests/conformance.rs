//! The conformance suite against the real RabbitMQ on 127.0.0.1:5672 (started by
//! `scripts/brokers/rabbitmq.sh`). Fails with a clear message if it is unreachable.

use std::sync::Arc;
use std::time::Duration;

use messaging_core::{BoxFuture, DynPublisher, DynSubscriber, Features, RawMessage};
use messaging_rabbitmq::{RabbitBroker, RabbitConfig};
use messaging_testkit::conformance::{Harness, Settings};

const URI: &str = messaging_testkit::support::TestBroker::RabbitMq.address();

/// Test queues delete themselves two minutes after their last use.
fn test_config() -> RabbitConfig {
    RabbitConfig {
        queue_expires: Some(Duration::from_secs(120)),
        ..RabbitConfig::new(URI)
    }
}

struct RabbitHarness {
    broker: tokio::sync::OnceCell<RabbitBroker>,
}

impl RabbitHarness {
    fn new() -> Self {
        Self {
            broker: tokio::sync::OnceCell::new(),
        }
    }

    async fn broker(&self) -> &RabbitBroker {
        self.broker
            .get_or_init(|| async {
                RabbitBroker::connect(test_config())
                    .await
                    .unwrap_or_else(|e| {
                        panic!("RabbitMQ is not reachable (run scripts/brokers/rabbitmq.sh): {e}")
                    })
            })
            .await
    }
}

impl Harness for RabbitHarness {
    fn features(&self) -> Features {
        // The same as RabbitBroker::features with the default configuration.
        let mut f = Features::new("rabbitmq");
        f.consumer_groups = true;
        f.ordering = true;
        f.delayed_redelivery = messaging_core::DelaySupport::Emulated;
        f.native_dead_letter = true;
        f.max_payload = Some(test_config().max_payload);
        f.persistent = true;
        f
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
                .publish_raw(topic, &raw)
                .await
                .expect("raw publish");
        }))
    }

    fn settings(&self) -> Settings {
        Settings {
            timeout: Duration::from_secs(20),
            quiet: Duration::from_millis(1000),
            ack_deadline: Duration::from_secs(2),
            delay: Duration::from_secs(1),
            case_timeout: Duration::from_secs(120),
        }
    }
}

messaging_testkit::conformance_suite!(
    RabbitHarness::new(),
    flavor = "multi_thread",
    worker_threads = 2
);

#[tokio::test]
async fn harness_features_match_the_adapter() {
    let h = RabbitHarness::new();
    assert_eq!(h.features(), h.broker().await.features());
}
