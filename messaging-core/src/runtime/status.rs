//! What a running consumer is doing, as a watchable value, and the handle that pauses and
//! resumes it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;
use tokio::sync::watch;

use super::RunReport;

/// Where a consumer is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ConsumerState {
    /// Built, or subscribing for the first time.
    Starting,
    /// Receiving and settling.
    Running,
    /// Intake stopped on purpose: [paused](ConsumerHandle::pause), or the circuit breaker is
    /// open. In-flight work finishes; nothing is nacked or dead-lettered by the pause.
    Paused,
    /// The subscription was lost, or receiving fails; the runtime is getting it back.
    Reconnecting,
    /// Work is waiting (deliveries in flight, or a backlog the broker reports) and nothing was
    /// settled for the [stall threshold](crate::runtime::ConsumerBuilder::stall_after).
    Stalled,
    /// Shutdown began: intake stopped, in-flight work is draining.
    Stopping,
    /// The run ended; [`ConsumerStatus::error`] says why if it was not a shutdown.
    Stopped,
}

/// A consumer's state and progress, as [`ConsumerHandle::status`] reports it and
/// [`ConsumerHandle::watch`] publishes it (at state changes, and about every second while it
/// runs). Serializes to the JSON the probe server's `/consumers` returns.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ConsumerStatus {
    /// The consumed topic.
    pub topic: String,
    /// The subscription group.
    pub group: String,
    /// Where the consumer is.
    pub state: ConsumerState,
    /// Whether intake is paused by [`ConsumerHandle::pause`].
    pub paused: bool,
    /// The circuit breaker's state, if one is configured: `closed`, `open` or `half-open`.
    pub circuit: Option<&'static str>,
    /// When the last delivery was received.
    pub last_receive: Option<DateTime<Utc>>,
    /// When a delivery was last settled (acked, redelivered or dead-lettered).
    pub last_settle: Option<DateTime<Utc>>,
    /// Deliveries being handled now.
    pub in_flight: usize,
    /// Messages waiting in the group, where the broker tells it (see
    /// [`ConsumerBuilder::backlog_from`](crate::runtime::ConsumerBuilder::backlog_from)).
    pub backlog: Option<u64>,
    /// Deliveries received since the run started.
    pub received: u64,
    /// Deliveries settled since the run started.
    pub settled: u64,
    /// Times the subscription was lost and opened again.
    pub resubscribed: u64,
    /// Why the run stopped, if it ended with an error, or the last receive error while
    /// reconnecting.
    pub error: Option<String>,
}

impl ConsumerStatus {
    /// Ready to take work: running or paused (intake stopped on purpose). Not ready while
    /// starting, reconnecting, stalled, stopping or stopped — what a readiness probe reports.
    pub fn is_ready(&self) -> bool {
        matches!(self.state, ConsumerState::Running | ConsumerState::Paused)
    }

    /// Alive: not stalled and not stopped by an error — what a liveness probe reports (a
    /// restart is what fixes a stalled consumer).
    pub fn is_live(&self) -> bool {
        match self.state {
            ConsumerState::Stalled => false,
            ConsumerState::Stopped => self.error.is_none(),
            _ => true,
        }
    }
}

/// Watches and steers one consumer: its [status](Self::status), and
/// [pause](Self::pause)/[resume](Self::resume) of its intake. Cheap to clone; get it with
/// [`Consumer::handle`](crate::runtime::Consumer::handle) before running the consumer.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::sync::Arc;
/// use messaging_core::handler::{handler_fn, HandlerError, Incoming};
/// use messaging_core::runtime::{Consumer, ConsumerState};
/// use messaging_core::{DynPublisher, SubscribeOptions};
/// # let broker = messaging_testkit::MemoryBroker::new();
/// # let publisher = Arc::new(broker.publisher()) as Arc<dyn DynPublisher>;
/// let consumer = Consumer::builder(broker.subscriber(), publisher, "orders", SubscribeOptions::new("billing"))
///     .build(handler_fn(|_msg: Incoming| async { Ok::<(), HandlerError>(()) }));
/// let handle = consumer.handle();
/// assert_eq!(handle.status().state, ConsumerState::Starting);
/// handle.pause(); // intake stops once running; in-flight work finishes
/// handle.resume();
/// # }
/// ```
#[derive(Clone, Debug)]
pub struct ConsumerHandle {
    pub(crate) control: Arc<Control>,
}

impl ConsumerHandle {
    /// The consumer's status now.
    pub fn status(&self) -> ConsumerStatus {
        self.control.status.borrow().clone()
    }

    /// A receiver that sees every published status (`changed().await` to wait for the next).
    pub fn watch(&self) -> watch::Receiver<ConsumerStatus> {
        self.control.status.subscribe()
    }

    /// Stops intake: no new deliveries are taken; those in flight finish and are settled as
    /// usual. Nothing is nacked or dead-lettered by the pause. Logged and counted
    /// (`messaging_consumer_paused_total`).
    pub fn pause(&self) {
        if !self.control.paused.send_replace(true) {
            metrics::counter!("messaging_consumer_paused_total", &self.control.labels())
                .increment(1);
            tracing::info!(topic = %self.control.topic, group = %self.control.group, "consumer paused");
        }
        self.control.publish();
    }

    /// Resumes intake after [`pause`](Self::pause).
    pub fn resume(&self) {
        if self.control.paused.send_replace(false) {
            tracing::info!(topic = %self.control.topic, group = %self.control.group, "consumer resumed");
        }
        self.control.publish();
    }

    /// Whether intake is paused by [`pause`](Self::pause).
    pub fn is_paused(&self) -> bool {
        *self.control.paused.borrow()
    }
}

const STARTING: u8 = 0;
const RUNNING: u8 = 1;
const RECONNECTING: u8 = 2;
const STOPPING: u8 = 3;
const STOPPED: u8 = 4;

/// The state a consumer's run shares with its handles. The run loop sets the base state and
/// the counters; [`Control::publish`] derives the status (paused, stalled) from them.
#[derive(Debug)]
pub(crate) struct Control {
    pub(crate) topic: String,
    pub(crate) group: String,
    base: AtomicU8,
    pub(crate) paused: watch::Sender<bool>,
    status: watch::Sender<ConsumerStatus>,
    /// Set by the run: the progress it publishes.
    pub(crate) progress: Progress,
    /// How long work may wait without a settle before the consumer counts as stalled.
    pub(crate) stall_after: Duration,
    /// Whether a circuit breaker blocks intake, and its state's name.
    circuit: std::sync::Mutex<Option<&'static str>>,
    circuit_blocks: std::sync::atomic::AtomicBool,
    error: std::sync::Mutex<Option<String>>,
}

/// What a run counts (one relaxed atomic operation each): its [`RunReport`], and what the
/// health tick reads.
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub(crate) received: AtomicU64,
    pub(crate) acked: AtomicU64,
    pub(crate) redelivered: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) abandoned: AtomicU64,
    pub(crate) settle_failures: AtomicU64,
    /// Every successful ack or nack.
    pub(crate) settled: AtomicU64,
    pub(crate) in_flight: AtomicUsize,
    pub(crate) resubscribed: AtomicU64,
    /// `u64::MAX` while unknown.
    pub(crate) backlog: AtomicU64,
}

impl Progress {
    pub(crate) fn report(&self) -> RunReport {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        RunReport {
            received: g(&self.received),
            acked: g(&self.acked),
            redelivered: g(&self.redelivered),
            dead_lettered: g(&self.dead_lettered),
            abandoned: g(&self.abandoned),
            settle_failures: g(&self.settle_failures),
            resubscribed: g(&self.resubscribed),
        }
    }
}

/// What the health tick remembers between ticks, to date receives and settles.
#[derive(Debug)]
pub(crate) struct Seen {
    received: u64,
    settled: u64,
    last_receive: Option<DateTime<Utc>>,
    last_settle: Option<DateTime<Utc>>,
    /// When the last settle was seen, or the run started.
    settle_instant: tokio::time::Instant,
}

impl Control {
    pub(crate) fn new(topic: &str, group: &str, stall_after: Duration) -> Self {
        let status = ConsumerStatus {
            topic: topic.to_owned(),
            group: group.to_owned(),
            state: ConsumerState::Starting,
            paused: false,
            circuit: None,
            last_receive: None,
            last_settle: None,
            in_flight: 0,
            backlog: None,
            received: 0,
            settled: 0,
            resubscribed: 0,
            error: None,
        };
        let progress = Progress {
            backlog: AtomicU64::new(u64::MAX),
            ..Progress::default()
        };
        Self {
            topic: topic.to_owned(),
            group: group.to_owned(),
            base: AtomicU8::new(STARTING),
            paused: watch::Sender::new(false),
            status: watch::Sender::new(status),
            progress,
            stall_after,
            circuit: std::sync::Mutex::new(None),
            circuit_blocks: std::sync::atomic::AtomicBool::new(false),
            error: std::sync::Mutex::new(None),
        }
    }

    fn labels(&self) -> [(&'static str, String); 2] {
        [("topic", self.topic.clone()), ("group", self.group.clone())]
    }

    pub(crate) fn running(&self) {
        self.set_base(RUNNING, None);
    }

    pub(crate) fn reconnecting(&self, error: String) {
        self.set_base(RECONNECTING, Some(error));
    }

    pub(crate) fn stopping(&self) {
        self.set_base(STOPPING, None);
    }

    pub(crate) fn stopped(&self, error: Option<String>) {
        self.set_base(STOPPED, error);
    }

    /// Whether the run is in the reconnecting state (so a success can end it).
    pub(crate) fn is_reconnecting(&self) -> bool {
        self.base.load(Ordering::Relaxed) == RECONNECTING
    }

    fn set_base(&self, base: u8, error: Option<String>) {
        let before = self.base.swap(base, Ordering::Relaxed);
        let changed = before != base;
        if changed || error.is_some() {
            *crate::sync::lock(&self.error) = error;
        }
        if changed {
            self.publish();
        }
    }

    /// Records the circuit breaker's state, and whether it blocks intake.
    pub(crate) fn set_circuit(&self, name: &'static str, blocks: bool) {
        *crate::sync::lock(&self.circuit) = Some(name);
        self.circuit_blocks.store(blocks, Ordering::Relaxed);
        self.publish();
    }

    /// Publishes the status from the base state and the progress, without the timestamps'
    /// bookkeeping (see [`tick`](Self::tick)).
    pub(crate) fn publish(&self) {
        self.status.send_modify(|s| self.fill(s, None));
    }

    /// The health tick: dates receives and settles seen since the last tick, derives
    /// "stalled", and publishes.
    pub(crate) fn tick(&self, seen: &mut Seen) {
        let p = &self.progress;
        let (received, settled) = (
            p.received.load(Ordering::Relaxed),
            p.settled.load(Ordering::Relaxed),
        );
        let now = Utc::now();
        if received != seen.received {
            seen.received = received;
            seen.last_receive = Some(now);
        }
        if settled != seen.settled {
            seen.settled = settled;
            seen.last_settle = Some(now);
            seen.settle_instant = tokio::time::Instant::now();
        }
        self.status.send_modify(|s| self.fill(s, Some(seen)));
    }

    fn fill(&self, s: &mut ConsumerStatus, seen: Option<&Seen>) {
        let p = &self.progress;
        s.in_flight = p.in_flight.load(Ordering::Relaxed);
        s.received = p.received.load(Ordering::Relaxed);
        s.settled = p.settled.load(Ordering::Relaxed);
        s.resubscribed = p.resubscribed.load(Ordering::Relaxed);
        s.backlog = match p.backlog.load(Ordering::Relaxed) {
            u64::MAX => None,
            n => Some(n),
        };
        s.paused = *self.paused.borrow();
        s.circuit = *crate::sync::lock(&self.circuit);
        s.error = crate::sync::lock(&self.error).clone();
        let blocked = s.paused || self.circuit_blocks.load(Ordering::Relaxed);
        let mut stalled = false;
        if let Some(seen) = seen {
            s.last_receive = seen.last_receive;
            s.last_settle = seen.last_settle;
            // A backlog left waiting by a pause is not a stall; work in flight is.
            let waiting = s.in_flight > 0 || (!blocked && s.backlog.is_some_and(|b| b > 0));
            stalled = waiting && seen.settle_instant.elapsed() >= self.stall_after;
        } else if s.state == ConsumerState::Stalled {
            // Only a tick decides that a stall ended (a settle seen).
            stalled = true;
        }
        s.state = match self.base.load(Ordering::Relaxed) {
            STARTING => ConsumerState::Starting,
            RECONNECTING => ConsumerState::Reconnecting,
            STOPPING => ConsumerState::Stopping,
            STOPPED => ConsumerState::Stopped,
            _ if stalled => ConsumerState::Stalled,
            _ if blocked => ConsumerState::Paused,
            _ => ConsumerState::Running,
        };
    }
}

impl Seen {
    pub(crate) fn new() -> Self {
        Self {
            received: 0,
            settled: 0,
            last_receive: None,
            last_settle: None,
            settle_instant: tokio::time::Instant::now(),
        }
    }
}
