//! The conformance suite: one async function per case, run against any broker.
//!
//! An adapter's `tests/conformance.rs` implements [`Harness`] (how to make a publisher and a
//! subscriber, and the broker's [`Features`]) and invokes [`conformance_suite!`](crate::conformance_suite), which expands
//! to one named `#[tokio::test]` per case, so `cargo test` lists every case:
//!
//! ```text
//! struct KafkaHarness;
//! impl messaging_testkit::conformance::Harness for KafkaHarness { /* ... */ }
//!
//! messaging_testkit::conformance_suite!(KafkaHarness, flavor = "multi_thread");
//! ```
//!
//! Each case runs on fresh, uniquely named topics and groups, with bounded waits. A case the
//! broker's [`Features`] rule out writes `conformance case `name` SKIPPED on broker: reason` to
//! the real stderr (past the test harness's capture) instead of silently passing; the
//! [`skipped_cases`] function lists them for a broker.

pub mod cases;
mod ctx;

use std::future::Future;
use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use messaging_core::{BoxFuture, DynPublisher, DynSubscriber, Features, RawMessage, Requirements};

pub use ctx::{Ctx, SOURCE, TYPE, ack, event_id, nack};

/// What a case returns: `Err` (or a panic) fails it.
pub type CaseResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

/// Timing of the suite against one broker.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Longest wait for something that must arrive.
    pub timeout: Duration,
    /// How long to watch for something that must not arrive.
    pub quiet: Duration,
    /// Ack deadline used by the deadline cases.
    pub ack_deadline: Duration,
    /// Delay used by the delayed-redelivery case.
    pub delay: Duration,
    /// Bound on a whole case.
    pub case_timeout: Duration,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            timeout: Duration::from_secs(15),
            quiet: Duration::from_millis(1500),
            ack_deadline: Duration::from_secs(2),
            delay: Duration::from_secs(2),
            case_timeout: Duration::from_secs(120),
        }
    }
}

/// How the suite reaches a broker.
pub trait Harness: Send + Sync + 'static {
    /// The broker's capabilities, as its adapter reports them.
    fn features(&self) -> Features;

    /// A new publisher.
    fn publisher(&self) -> BoxFuture<'_, Arc<dyn DynPublisher>>;

    /// A new subscriber.
    fn subscriber(&self) -> BoxFuture<'_, Arc<dyn DynSubscriber>>;

    /// Whether [`publish_raw`](Self::publish_raw) works; cases that need it are skipped
    /// otherwise.
    fn can_publish_raw(&self) -> bool {
        false
    }

    /// Publishes a raw transport message, as a producer that does not speak CloudEvents would.
    /// `None` if the harness cannot.
    fn publish_raw<'a>(&'a self, topic: &'a str, raw: RawMessage) -> Option<BoxFuture<'a, ()>> {
        let _ = (topic, raw);
        None
    }

    /// Timing for this broker.
    fn settings(&self) -> Settings {
        Settings::default()
    }
}

/// What a case needs from the broker beyond the basics.
#[derive(Debug, Clone, Default)]
pub struct Needs {
    /// Broker capabilities.
    pub features: Requirements,
    /// A limit on payload size.
    pub payload_limit: bool,
    /// Broker-native dead-lettering.
    pub native_dead_letter: bool,
    /// The harness can publish raw messages.
    pub raw_publish: bool,
}

impl Needs {
    /// Per-key ordering.
    #[must_use]
    pub fn ordering(mut self) -> Self {
        self.features.ordering = true;
        self
    }

    /// Delayed redelivery.
    #[must_use]
    pub fn delayed_redelivery(mut self) -> Self {
        self.features.delayed_redelivery = true;
        self
    }

    /// Ack deadlines.
    #[must_use]
    pub fn ack_deadline(mut self) -> Self {
        self.features.ack_deadline = true;
        self
    }

    /// Extending ack deadlines.
    #[must_use]
    pub fn extend_deadline(mut self) -> Self {
        self.features.extend_deadline = true;
        self
    }

    /// A limit on payload size.
    #[must_use]
    pub fn payload_limit(mut self) -> Self {
        self.payload_limit = true;
        self
    }

    /// Broker-native dead-lettering.
    #[must_use]
    pub fn native_dead_letter(mut self) -> Self {
        self.native_dead_letter = true;
        self
    }

    /// A harness that publishes raw messages.
    #[must_use]
    pub fn raw_publish(mut self) -> Self {
        self.raw_publish = true;
        self
    }
}

/// Why `features` rule a case out, if they do (`raw` says whether the harness publishes raw).
pub fn skip_reason(needs: &Needs, features: &Features, raw: bool) -> Option<String> {
    let mut reasons = Vec::new();
    if let Err(e) = features.check(&needs.features) {
        reasons.push(e.missing.join(", "));
    }
    if needs.payload_limit && features.max_payload.is_none() {
        reasons.push("a payload limit".into());
    }
    if needs.native_dead_letter && !features.native_dead_letter {
        reasons.push("broker-native dead-lettering".into());
    }
    if needs.raw_publish && !raw {
        reasons.push("raw publishing in its harness".into());
    }
    (!reasons.is_empty()).then(|| format!("needs {}", reasons.join(", ")))
}

/// Cases that `features` rule out, with the reason; the rest run.
pub fn skipped_cases(features: &Features, raw: bool) -> Vec<(&'static str, String)> {
    cases::ALL
        .iter()
        .filter_map(|name| skip_reason(&cases::needs(name), features, raw).map(|r| (*name, r)))
        .collect()
}

/// Runs one case against `harness`; used by [`conformance_suite!`](crate::conformance_suite).
pub async fn run<H, F, Fut>(harness: H, name: &'static str, case: F)
where
    H: Harness,
    F: FnOnce(Ctx) -> Fut,
    Fut: Future<Output = CaseResult>,
{
    let features = harness.features();
    let raw = harness.can_publish_raw();
    if let Some(reason) = skip_reason(&cases::needs(name), &features, raw) {
        // Straight to stderr: the test harness captures print macros, not this.
        let _ = writeln!(
            std::io::stderr().lock(),
            "conformance case `{name}` SKIPPED on {}: {reason}",
            features.broker
        );
        return;
    }
    let settings = harness.settings();
    let ctx = Ctx::new(Arc::new(harness), name, features, settings.clone()).await;
    match tokio::time::timeout(settings.case_timeout, case(ctx)).await {
        Err(_) => panic!(
            "conformance case `{name}` did not finish within {:?}",
            settings.case_timeout
        ),
        Ok(Err(e)) => panic!("conformance case `{name}` failed: {e}"),
        Ok(Ok(())) => {}
    }
}

/// Expands to one `#[tokio::test]` per conformance case, each running against the harness
/// the first argument builds. Further arguments go to `#[tokio::test(...)]`.
///
/// ```text
/// messaging_testkit::conformance_suite!(MemoryHarness::default(), start_paused = true);
/// ```
#[macro_export]
macro_rules! conformance_suite {
    ($harness:expr $(, $($test_args:tt)*)?) => {
        $crate::__conformance_cases!(tests [$harness] ($($($test_args)*)?));
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_expand {
    (tests [[$harness:expr] $test_args:tt] $($case:ident $([$($need:ident),*])?)*) => {
        $(
            #[tokio::test $test_args]
            async fn $case() {
                $crate::conformance::run($harness, stringify!($case), |ctx| async move {
                    $crate::conformance::cases::$case(&ctx).await
                })
                .await;
            }
        )*
    };
    (names [] $($case:ident $([$($need:ident),*])?)*) => {
        &[$(stringify!($case)),*]
    };
    (needs [] $($case:ident $([$($need:ident),*])?)*) => {
        [$(
            (
                stringify!($case),
                $crate::conformance::Needs::default() $($(.$need())*)?,
            )
        ),*]
    };
}
