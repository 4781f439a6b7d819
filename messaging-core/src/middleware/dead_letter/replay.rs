//! Moving messages from a dead-letter topic back to where they came from.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cloudevents::{AttributesReader, Event};

use super::{DEAD_LETTER_GROUP, DeadLetterMetadata, replayed_event};
use crate::delivery::Delivery;
use crate::error::{PublishError, ReceiveError, SubscribeError};
use crate::publisher::Publisher;
use crate::subscriber::{SubscribeOptions, Subscriber, Subscription};

/// Most skipped messages held back during one replay; past it, the replay stops.
const HOLD_MAX: usize = 10_000;

type Filter = Arc<dyn Fn(&Event) -> bool + Send + Sync>;
type Progress = Arc<dyn Fn(&ReplayReport) + Send + Sync>;

/// What to replay, and where to.
#[derive(Clone)]
pub struct ReplayOptions {
    target: Option<String>,
    limit: Option<usize>,
    filter: Option<Filter>,
    idle: Duration,
    dry_run: bool,
    progress: Option<Progress>,
}

impl fmt::Debug for ReplayOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReplayOptions")
            .field("target", &self.target)
            .field("limit", &self.limit)
            .field("filter", &self.filter.is_some())
            .field("idle", &self.idle)
            .field("dry_run", &self.dry_run)
            .field("progress", &self.progress.is_some())
            .finish()
    }
}

impl Default for ReplayOptions {
    fn default() -> Self {
        Self {
            target: None,
            limit: None,
            filter: None,
            idle: Duration::from_secs(2),
            dry_run: false,
            progress: None,
        }
    }
}

impl ReplayOptions {
    /// Replays everything to each message's origin topic.
    pub fn new() -> Self {
        Self::default()
    }

    /// Publishes to `topic` instead of each message's origin.
    #[must_use]
    pub fn target(mut self, topic: impl Into<String>) -> Self {
        self.target = Some(topic.into());
        self
    }

    /// Replays at most `n` messages.
    #[must_use]
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// Replays only events for which `filter` is true; the others stay in the dead-letter topic.
    #[must_use]
    pub fn filter(mut self, filter: impl Fn(&Event) -> bool + Send + Sync + 'static) -> Self {
        self.filter = Some(Arc::new(filter));
        self
    }

    /// Stops once no message arrives for `idle` (default 2 s).
    #[must_use]
    pub fn idle(mut self, idle: Duration) -> Self {
        self.idle = idle;
        self
    }

    /// Calls `progress` with the counts so far after each message (for a progress bar).
    #[must_use]
    pub fn on_progress(mut self, progress: impl Fn(&ReplayReport) + Send + Sync + 'static) -> Self {
        self.progress = Some(Arc::new(progress));
        self
    }

    /// Counts what would be replayed and leaves every message where it is.
    #[must_use]
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }
}

/// What a replay did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Published to their target and removed from the dead-letter topic (in a dry run: would be).
    pub replayed: usize,
    /// Left in the dead-letter topic (filtered out, no known origin, or not decodable).
    pub skipped: usize,
}

/// Why a replay stopped early. Messages not yet replayed stay in the dead-letter topic.
#[derive(Debug)]
pub enum ReplayError {
    /// Could not read the dead-letter topic.
    Subscribe(SubscribeError),
    /// Receiving failed.
    Receive(ReceiveError),
    /// Publishing a replayed message failed; it stays in the dead-letter topic.
    Publish {
        /// The error.
        error: PublishError,
        /// What was done before.
        report: ReplayReport,
    },
}

impl fmt::Display for ReplayError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Subscribe(e) => write!(f, "cannot read the dead-letter topic: {e}"),
            Self::Receive(e) => write!(f, "receiving from the dead-letter topic failed: {e}"),
            Self::Publish { error, report } => write!(
                f,
                "replay stopped after {} messages: publish failed: {error}",
                report.replayed
            ),
        }
    }
}

impl std::error::Error for ReplayError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Subscribe(e) => Some(e),
            Self::Receive(e) => Some(e),
            Self::Publish { error, .. } => Some(error),
        }
    }
}

/// Moves messages from the dead-letter topic `dlq_topic` back to their origin (the `dlqtopic`
/// metadata) or to the options' target, keeping their history (`dlqreplays` counts up). Each
/// message is acked in the dead-letter topic only after its publish succeeded. Stops at the
/// limit, or when the topic stays idle.
///
/// Messages the filter skips stay in the dead-letter topic. On brokers without
/// [individual acks](crate::Features::individual_acks) (Kafka), where a skipped message would
/// hold back the group's offset and with it every replayed message behind it, a skipped
/// message is published again to the end of the dead-letter topic and then acked, so the
/// dead-letter topic keeps exactly the skipped messages.
pub async fn replay<S, P>(
    subscriber: &S,
    publisher: &P,
    dlq_topic: &str,
    options: ReplayOptions,
) -> Result<ReplayReport, ReplayError>
where
    S: Subscriber,
    P: Publisher,
{
    let group = SubscribeOptions::new(DEAD_LETTER_GROUP).prefetch(HOLD_MAX);
    // On log brokers a skipped message goes to the end of the topic instead of blocking it.
    let move_skipped = !subscriber.features().individual_acks && !options.dry_run;
    let mut moved = std::collections::HashSet::new();
    let mut sub = subscriber
        .subscribe(dlq_topic, group)
        .await
        .map_err(ReplayError::Subscribe)?;
    let mut held = Vec::new();
    let mut report = ReplayReport::default();
    let tick = |report: &ReplayReport| {
        if let Some(progress) = &options.progress {
            progress(report);
        }
    };
    let result = loop {
        if options.limit.is_some_and(|l| report.replayed >= l) {
            break Ok(());
        }
        let d = match tokio::time::timeout(options.idle, sub.recv()).await {
            Err(_) => break Ok(()),
            Ok(Err(e)) => break Err(ReplayError::Receive(e)),
            Ok(Ok(d)) => d,
        };
        let Ok(event) = d.payload() else {
            report.skipped += 1;
            tick(&report);
            held.push(d);
            continue;
        };
        let wanted = options.filter.as_ref().is_none_or(|f| f(event));
        let target = options
            .target
            .clone()
            .or_else(|| DeadLetterMetadata::from_event(event).map(|m| m.topic))
            .filter(|t| !t.is_empty());
        let (true, Some(target)) = (wanted, target) else {
            if moved.contains(event.id()) {
                // A copy this replay moved to the end: it was counted when first skipped.
                held.push(d);
                continue;
            }
            report.skipped += 1;
            tick(&report);
            if move_skipped && publisher.publish(dlq_topic, event.clone()).await.is_ok() {
                moved.insert(event.id().to_owned());
                if let Err(e) = d.ack().await {
                    tracing::warn!(error = %e.error, "skipped message moved to the end of the dead-letter topic, but its original could not be acked");
                }
                continue;
            }
            held.push(d);
            continue;
        };
        if options.dry_run {
            report.replayed += 1;
            tick(&report);
            held.push(d);
            continue;
        }
        match publisher.publish(&target, replayed_event(event)).await {
            Ok(_) => {
                report.replayed += 1;
                tick(&report);
                if let Err(e) = d.ack().await {
                    // Published but still in the dead-letter topic: a later replay would
                    // publish it again. Say so; the consumer's idempotency absorbs it.
                    tracing::warn!(error = %e.error, "replayed message could not be acked in the dead-letter topic");
                }
            }
            Err(error) => {
                held.push(d);
                break Err(ReplayError::Publish {
                    error,
                    report: report.clone(),
                });
            }
        }
    };
    for d in held {
        // Back to the dead-letter topic for a later replay; a failed nack leaves it to the
        // broker's redelivery, which also keeps it.
        let _ = d.nack(None).await;
    }
    let _ = sub.close().await;
    result.map(|()| report)
}
