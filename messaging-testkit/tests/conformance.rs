//! The in-memory broker passes the whole conformance suite, in real time and under tokio's
//! paused clock.

use std::sync::Arc;
use std::time::Duration;

use messaging_core::{BoxFuture, DynPublisher, DynSubscriber, Features, RawMessage};
use messaging_testkit::MemoryBroker;
use messaging_testkit::conformance::{Harness, Settings};

/// Harness over one in-memory broker; each case gets its own.
struct MemoryHarness {
    broker: MemoryBroker,
    settings: Settings,
}

impl MemoryHarness {
    fn real_time() -> Self {
        Self {
            broker: MemoryBroker::builder().max_payload(512 * 1024).build(),
            settings: Settings {
                timeout: Duration::from_secs(5),
                quiet: Duration::from_millis(300),
                ack_deadline: Duration::from_millis(400),
                delay: Duration::from_millis(400),
                case_timeout: Duration::from_secs(60),
            },
        }
    }

    fn paused() -> Self {
        Self {
            broker: MemoryBroker::new(),
            settings: Settings::default(),
        }
    }
}

impl Harness for MemoryHarness {
    fn features(&self) -> Features {
        self.broker.features()
    }

    fn publisher(&self) -> BoxFuture<'_, Arc<dyn DynPublisher>> {
        Box::pin(async { Arc::new(self.broker.publisher()) as Arc<dyn DynPublisher> })
    }

    fn subscriber(&self) -> BoxFuture<'_, Arc<dyn DynSubscriber>> {
        Box::pin(async { Arc::new(self.broker.subscriber()) as Arc<dyn DynSubscriber> })
    }

    fn can_publish_raw(&self) -> bool {
        true
    }

    fn publish_raw<'a>(&'a self, topic: &'a str, raw: RawMessage) -> Option<BoxFuture<'a, ()>> {
        Some(Box::pin(async move { self.broker.publish_raw(topic, raw) }))
    }

    fn settings(&self) -> Settings {
        self.settings.clone()
    }
}

mod real_time {
    use super::*;
    messaging_testkit::conformance_suite!(
        MemoryHarness::real_time(),
        flavor = "multi_thread",
        worker_threads = 2
    );
}

mod paused_time {
    use super::*;
    messaging_testkit::conformance_suite!(MemoryHarness::paused(), start_paused = true);
}

#[test]
fn memory_broker_skips_no_case() {
    let features = MemoryBroker::new().features();
    assert_eq!(
        messaging_testkit::conformance::skipped_cases(&features, true),
        vec![]
    );
    assert!(messaging_testkit::conformance::cases::ALL.len() >= 20);
}
