//! Moving messages from a dead-letter topic back to where they came from.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use cloudevents::{AttributesReader, Event};
use tokio::time::Instant;

use super::{DEAD_LETTER_GROUP, DeadLetterMetadata, replayed_event};
use crate::delivery::Delivery;
use crate::error::{PublishError, ReceiveError, SubscribeError};
use crate::publisher::Publisher;
use crate::subscriber::{DEFAULT_ACK_DEADLINE, SubscribeOptions, Subscriber, Subscription};

/// Most skipped messages held back during one replay; past it, the replay stops.
const HOLD_MAX: usize = 10_000;

/// A held message's reservation, in ack deadlines: renewed at half of it while the replay runs.
const HOLD_DEADLINES: u32 = 10;

/// Longest reservation of a held message (SQS's longest visibility timeout).
const HOLD_LONGEST: Duration = Duration::from_secs(12 * 3600);

/// `d` from now, or a year from now if that overflows.
fn after(d: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(d)
        .unwrap_or(now + Duration::from_secs(365 * 86_400))
}

/// Messages this replay leaves in the dead-letter topic (skipped, or counted by a dry run),
/// held unsettled until the replay ends so that the broker does not hand them out again
/// meanwhile — which would count them twice and could keep the replay from ever going idle.
/// On brokers whose ack deadline can be extended (SQS: the visibility timeout), each is
/// reserved for [`HOLD_DEADLINES`] ack deadlines when held, and the reservation renewed at half
/// of that while the replay runs; a replay that dies leaves them invisible that long at most.
struct Holding<D> {
    held: Vec<(D, Instant)>,
    /// The reservation, on brokers with extendable deadlines.
    period: Option<Duration>,
    /// When the earliest reservation is due for renewal.
    next: Option<Instant>,
}

impl<D: Delivery> Holding<D> {
    fn new(period: Option<Duration>) -> Self {
        Self {
            held: Vec::new(),
            period,
            next: None,
        }
    }

    async fn reserve(d: &mut D, period: Duration) -> Instant {
        if let Err(e) = d.extend_deadline(period).await {
            tracing::debug!(error = %e, "could not extend a held dead letter's deadline; the broker may hand it out again during the replay");
        }
        after(period)
    }

    async fn hold(&mut self, mut d: D) {
        let until = match self.period {
            Some(period) => {
                let until = Self::reserve(&mut d, period).await;
                let due = until - period / 2;
                self.next = Some(self.next.map_or(due, |n| n.min(due)));
                until
            }
            None => Instant::now(),
        };
        self.held.push((d, until));
    }

    /// Holds `d` without a reservation: it is given back right away.
    fn keep_briefly(&mut self, d: D) {
        self.held.push((d, Instant::now()));
    }

    /// Renews every reservation that is due.
    async fn renew(&mut self) {
        let Some(period) = self.period else {
            return;
        };
        let now = Instant::now();
        let mut next: Option<Instant> = None;
        for (d, until) in &mut self.held {
            if *until - period / 2 <= now {
                *until = Self::reserve(d, period).await;
            }
            let due = *until - period / 2;
            next = Some(next.map_or(due, |n| n.min(due)));
        }
        self.next = next;
    }

    /// Gives every held message back to the dead-letter topic for a later replay; a failed
    /// nack leaves it to the broker's redelivery, which also keeps it.
    async fn release(self) {
        for (d, _) in self.held {
            let _ = d.nack(None).await;
        }
    }
}

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
    ack_deadline: Duration,
    truncated: bool,
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
            .field("ack_deadline", &self.ack_deadline)
            .field("truncated", &self.truncated)
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
            ack_deadline: DEFAULT_ACK_DEADLINE,
            truncated: false,
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

    /// The ack deadline of the replay's subscription to the dead-letter topic (default 30 s): how
    /// long a received dead letter stays reserved for this replay before the broker may hand it
    /// out again (SQS: the visibility timeout), on brokers with
    /// [ack deadlines](crate::Features::ack_deadline).
    #[must_use]
    pub fn ack_deadline(mut self, deadline: Duration) -> Self {
        self.ack_deadline = deadline;
        self
    }

    /// Also replays dead letters marked [`dlqtruncated`](super::TRUNCATED) (default: no). The
    /// broker refused their full form, so they lack their data (and perhaps extensions):
    /// replayed, a handler would get an event that is not the original. They are skipped and
    /// counted in [`ReplayReport::truncated`] unless this is set.
    #[must_use]
    pub fn include_truncated(mut self, include: bool) -> Self {
        self.truncated = include;
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
    /// Left in the dead-letter topic (filtered out, no known origin, not decodable, or
    /// truncated).
    pub skipped: usize,
    /// Of the skipped, dead letters marked `dlqtruncated` (their data was dropped to fit the
    /// broker), left alone unless [`ReplayOptions::include_truncated`].
    pub truncated: usize,
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
/// Messages the filter skips stay in the dead-letter topic, held by the replay until it ends
/// (reserved for ten ack deadlines at a time on brokers with extendable deadlines, such as
/// SQS, so they are not received and counted again). On brokers without
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
    let group = SubscribeOptions::new(DEAD_LETTER_GROUP)
        .prefetch(HOLD_MAX)
        .ack_deadline(options.ack_deadline);
    let features = subscriber.features();
    // On log brokers a skipped message goes to the end of the topic instead of blocking it.
    let move_skipped = !features.individual_acks && !options.dry_run;
    let mut moved = std::collections::HashSet::new();
    let mut sub = subscriber
        .subscribe(dlq_topic, group)
        .await
        .map_err(ReplayError::Subscribe)?;
    let mut held = Holding::new(
        (features.ack_deadline && features.extend_deadline).then(|| {
            options
                .ack_deadline
                .saturating_mul(HOLD_DEADLINES)
                .min(HOLD_LONGEST)
        }),
    );
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
        let idle_until = after(options.idle);
        let received = loop {
            if held.next.is_some_and(|due| due <= Instant::now()) {
                held.renew().await;
            }
            let wake = held.next.map_or(idle_until, |due| due.min(idle_until));
            match tokio::time::timeout_at(wake, sub.recv()).await {
                Ok(r) => break Some(r),
                Err(_) if Instant::now() >= idle_until => break None,
                Err(_) => {}
            }
        };
        let d = match received {
            None => break Ok(()),
            Some(Err(e)) => break Err(ReplayError::Receive(e)),
            Some(Ok(d)) => d,
        };
        let Ok(event) = d.payload() else {
            report.skipped += 1;
            tick(&report);
            held.hold(d).await;
            continue;
        };
        let whole = options.truncated || event.extension(super::TRUNCATED).is_none();
        let wanted = whole && options.filter.as_ref().is_none_or(|f| f(event));
        let target = options
            .target
            .clone()
            .or_else(|| DeadLetterMetadata::from_event(event).map(|m| m.topic))
            .filter(|t| !t.is_empty());
        let (true, Some(target)) = (wanted, target) else {
            if moved.contains(event.id()) {
                // A copy this replay moved to the end: it was counted when first skipped.
                held.hold(d).await;
                continue;
            }
            report.skipped += 1;
            if !whole {
                report.truncated += 1;
            }
            tick(&report);
            if move_skipped && publisher.publish(dlq_topic, event.clone()).await.is_ok() {
                moved.insert(event.id().to_owned());
                if let Err(e) = d.ack().await {
                    tracing::warn!(error = %e.error, "skipped message moved to the end of the dead-letter topic, but its original could not be acked");
                }
                continue;
            }
            held.hold(d).await;
            continue;
        };
        if options.dry_run {
            report.replayed += 1;
            tick(&report);
            held.hold(d).await;
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
                held.keep_briefly(d);
                break Err(ReplayError::Publish {
                    error,
                    report: report.clone(),
                });
            }
        }
    };
    held.release().await;
    let _ = sub.close().await;
    result.map(|()| report)
}
