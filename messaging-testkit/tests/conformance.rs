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

/// The one case list says what each case needs: a broker with none of the optional
/// capabilities and a harness without raw publishing skips exactly the cases declared with
/// needs, each for its own reason.
#[test]
fn a_bare_broker_skips_exactly_the_cases_declared_with_needs() {
    use messaging_core::Features;
    use messaging_testkit::conformance::skipped_cases;
    let skipped = skipped_cases(&Features::new("bare"), false);
    let reason = |name: &str| {
        skipped
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, r)| r.as_str())
    };
    assert_eq!(skipped.len(), 11, "{skipped:?}");
    assert_eq!(reason("ordering_per_key"), Some("needs per-key ordering"));
    assert!(reason("extend_deadline_prevents_redelivery").is_some_and(|r| r.contains("extend")));
    assert_eq!(
        reason("payload_over_limit_is_rejected"),
        Some("needs a payload limit")
    );
    assert_eq!(
        reason("undecodable_message_is_delivered_as_error"),
        Some("needs raw publishing in its harness")
    );
    assert_eq!(reason("publish_subscribe"), None);
}
