//! The conformance harness for the real RabbitMQ: the adapter as the suite reaches it.

use std::sync::Arc;
use std::time::Duration;

use messaging_core::{BoxFuture, DynPublisher, DynSubscriber, Features, RawMessage};
use messaging_rabbitmq::RabbitBroker;
use messaging_testkit::conformance::{Harness, Settings};

/// The suite's harness: one broker, connected on first use (failing clearly if RabbitMQ is
/// down).
pub struct RabbitHarness {
    broker: tokio::sync::OnceCell<RabbitBroker>,
}

impl RabbitHarness {
    pub fn new() -> Self {
        Self {
            broker: tokio::sync::OnceCell::new(),
        }
    }

    pub async fn broker(&self) -> &RabbitBroker {
        self.broker
            .get_or_init(|| async { super::connect(super::config()).await })
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
        f.max_payload = Some(super::config().max_payload);
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
