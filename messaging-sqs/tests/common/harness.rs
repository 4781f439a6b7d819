//! The conformance harness for moto: the adapter as the suite reaches it.

use std::sync::Arc;
use std::time::Duration;

use messaging_core::{BoxFuture, DelaySupport, DynPublisher, DynSubscriber, Features, RawMessage};
use messaging_sqs::SqsBroker;
use messaging_testkit::conformance::{Harness, Settings};

/// The suite's harness: one broker, connected on first use (failing clearly if moto is down).
pub struct SqsHarness {
    broker: tokio::sync::OnceCell<SqsBroker>,
}

impl SqsHarness {
    pub fn new() -> Self {
        Self {
            broker: tokio::sync::OnceCell::new(),
        }
    }

    pub async fn broker(&self) -> &SqsBroker {
        self.broker
            .get_or_init(|| async { super::broker().await })
            .await
    }
}

impl Harness for SqsHarness {
    fn features(&self) -> Features {
        // The same as SqsBroker::features with the default configuration.
        Features {
            consumer_groups: true,
            ordering: true,
            delayed_redelivery: DelaySupport::Native,
            native_dead_letter: true,
            ack_deadline: true,
            extend_deadline: true,
            max_payload: Some(256 * 1024),
            persistent: true,
            ..Features::new("sqs")
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

    /// Publishes through SNS as a producer that does not speak CloudEvents: the raw body, the
    /// headers as message attributes, the content type as `content-type`.
    fn publish_raw<'a>(&'a self, topic: &'a str, raw: RawMessage) -> Option<BoxFuture<'a, ()>> {
        Some(Box::pin(async move {
            self.broker()
                .await
                .publish_raw(topic, &raw)
                .await
                .expect("raw publish");
        }))
    }

    /// moto is single-threaded Python (a `ReceiveMessage` of 10 takes about 200 ms) and the 40
    /// cases share it: deliveries take longer to arrive than on a real broker (`quiet` 3 s),
    /// and the deadline starts when the poller receives a message (up to 10 at once) while the
    /// suite acks one delivery at a time (5 s keeps messages waiting in the prefetch buffer from
    /// expiring).
    fn settings(&self) -> Settings {
        Settings {
            timeout: Duration::from_secs(20),
            quiet: Duration::from_secs(3),
            ack_deadline: Duration::from_secs(5),
            delay: Duration::from_secs(2),
            case_timeout: Duration::from_secs(120),
        }
    }
}
