//! What lets deliveries into a running consumer: the circuit breaker (kill switch) and the
//! rate limit. Pausing by hand is on the [`ConsumerHandle`](super::ConsumerHandle).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::time::Instant;

use super::status::Control;

/// The kill switch: when handlers fail too often, intake stops for a cooldown, so a
/// downstream outage leaves messages in the source queue instead of filling the dead-letter
/// queue; then one trial delivery decides whether to resume.
///
/// Counted over a fixed window: once at least `min_calls` deliveries were decided in the
/// window and the share that failed (nacked for retry or dead-lettered by the handler's
/// failure) reaches `failure_ratio`, the circuit *opens*: intake stops, in-flight work
/// finishes, and a message whose retries run out while the circuit is open is nacked for
/// redelivery after the cooldown instead of dead-lettered (on brokers with delayed
/// redelivery; permanent failures are still dead-lettered at once). After `cooldown` the
/// circuit is *half-open*: one delivery is let in; if it succeeds the circuit *closes* and
/// intake resumes, otherwise it opens for another cooldown. Every transition is logged and
/// counted (`messaging_circuit_transitions_total{state}`), and shown in the consumer's
/// [status](super::ConsumerStatus).
///
/// ```
/// use std::time::Duration;
/// use messaging_core::runtime::CircuitBreaker;
///
/// let yaml = "failure_ratio: 0.5\nmin_calls: 20\nwindow: 30s\ncooldown: 1m\n";
/// let breaker: CircuitBreaker = serde_norway::from_str(yaml)?;
/// assert_eq!(breaker.cooldown, Duration::from_secs(60));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CircuitBreaker {
    /// Share of failed deliveries (0 to 1) that opens the circuit (default 0.5).
    pub failure_ratio: f64,
    /// Fewest decided deliveries in a window before the ratio counts (default 20).
    pub min_calls: u32,
    /// How long a counting window lasts (default 30 s).
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// How long the circuit stays open before a trial (default 30 s).
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self {
            failure_ratio: 0.5,
            min_calls: 20,
            window: Duration::from_secs(30),
            cooldown: Duration::from_secs(30),
        }
    }
}

impl CircuitBreaker {
    /// Checks the fields.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return Err(format!(
                "circuit breaker failure_ratio {} must be in (0, 1]",
                self.failure_ratio
            ));
        }
        if self.min_calls == 0 || self.window.is_zero() || self.cooldown.is_zero() {
            return Err("circuit breaker min_calls, window and cooldown must be positive".into());
        }
        Ok(())
    }
}

/// A limit on how fast deliveries are taken in: `per_second` on average, with bursts of up to
/// `burst` (default: one second's worth). Waiting for the limit takes nothing from the broker,
/// so the messages stay in the queue.
///
/// ```
/// use messaging_core::runtime::RateLimit;
///
/// let limit: RateLimit = serde_norway::from_str("per_second: 50")?;
/// assert_eq!(limit.per_second, 50.0);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Deliveries per second, on average.
    pub per_second: f64,
    /// Most deliveries taken at once after a quiet spell (default `per_second`, at least 1).
    #[serde(default)]
    pub burst: Option<u32>,
}

impl RateLimit {
    /// Checks the fields.
    pub fn validate(&self) -> Result<(), String> {
        if !(self.per_second > 0.0 && self.per_second.is_finite()) {
            return Err(format!(
                "rate limit per_second {} must be positive",
                self.per_second
            ));
        }
        if self.burst == Some(0) {
            return Err("rate limit burst must be at least 1".into());
        }
        Ok(())
    }
}

/// A token bucket, owned by the run loop.
pub(crate) struct Limiter {
    per_second: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl Limiter {
    pub(crate) fn new(limit: &RateLimit) -> Self {
        let burst = f64::from(
            limit
                .burst
                .unwrap_or_else(|| limit.per_second.ceil().min(f64::from(u32::MAX)) as u32)
                .max(1),
        );
        Self {
            per_second: limit.per_second,
            burst,
            tokens: burst,
            last: Instant::now(),
        }
    }

    /// Takes up to `want` tokens (at least one) if one is there; otherwise how long until one
    /// is.
    pub(crate) fn take(&mut self, want: usize) -> Result<usize, Duration> {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.per_second).min(self.burst);
        // A hair short of a whole token counts as one: rounding must not spin the caller on
        // waits too short for the timer.
        let whole = (self.tokens + 1e-9).floor();
        if whole >= 1.0 {
            let n = (whole as usize).min(want.max(1));
            self.tokens = (self.tokens - n as f64).max(0.0);
            Ok(n)
        } else {
            let wait = Duration::from_secs_f64((1.0 - self.tokens) / self.per_second);
            Err(wait.max(Duration::from_millis(1)))
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum State {
    Closed,
    Open { until: Instant },
    HalfOpen { trial_out: bool },
}

#[derive(Debug)]
struct Window {
    state: State,
    started: Instant,
    ok: u32,
    failed: u32,
}

/// The circuit breaker of one run.
pub(crate) struct Breaker {
    policy: CircuitBreaker,
    window: Mutex<Window>,
    changed: Notify,
    control: Arc<Control>,
}

impl Breaker {
    pub(crate) fn new(policy: CircuitBreaker, control: Arc<Control>) -> Self {
        control.set_circuit("closed", false);
        Self {
            policy,
            window: Mutex::new(Window {
                state: State::Closed,
                started: Instant::now(),
                ok: 0,
                failed: 0,
            }),
            changed: Notify::new(),
            control,
        }
    }

    /// The cooldown: how long a message whose retries ran out while the circuit is open waits
    /// before it is delivered again.
    pub(crate) fn cooldown(&self) -> Duration {
        self.policy.cooldown
    }

    /// Completes once the circuit is not closed: at once if it is open or trying now,
    /// otherwise at its next transition.
    pub(crate) async fn opened(&self) {
        let notified = self.changed.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if self.is_open() {
            return;
        }
        notified.await;
    }

    /// Whether the circuit is open or trying (not closed).
    pub(crate) fn is_open(&self) -> bool {
        self.lock().state != State::Closed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Window> {
        crate::sync::lock(&self.window)
    }

    fn transition(&self, w: &mut Window, to: State) {
        w.state = to;
        let (name, blocks) = match to {
            State::Closed => ("closed", false),
            State::Open { .. } => ("open", true),
            State::HalfOpen { .. } => ("half-open", true),
        };
        metrics::counter!(
            "messaging_circuit_transitions_total",
            "topic" => self.control.topic.clone(),
            "group" => self.control.group.clone(),
            "state" => name,
        )
        .increment(1);
        match to {
            State::Open { .. } => tracing::error!(
                topic = %self.control.topic,
                group = %self.control.group,
                ok = w.ok,
                failed = w.failed,
                cooldown = ?self.policy.cooldown,
                "circuit breaker open: too many handler failures; intake paused"
            ),
            _ => {
                tracing::warn!(topic = %self.control.topic, group = %self.control.group, state = name, "circuit breaker")
            }
        }
        self.control.set_circuit(name, blocks);
        self.changed.notify_waiters();
    }

    /// Records a decided delivery: `Some(true)` handled, `Some(false)` failed, `None` neither
    /// (undecodable, cut off) — which only gives a half-open circuit another trial.
    pub(crate) fn record(&self, ok: Option<bool>) {
        let mut w = self.lock();
        match (w.state, ok) {
            (State::Closed, Some(ok)) => {
                let now = Instant::now();
                if now.duration_since(w.started) >= self.policy.window {
                    w.started = now;
                    w.ok = 0;
                    w.failed = 0;
                }
                if ok {
                    w.ok += 1;
                } else {
                    w.failed += 1;
                }
                let calls = w.ok + w.failed;
                if calls >= self.policy.min_calls
                    && f64::from(w.failed) >= self.policy.failure_ratio * f64::from(calls)
                {
                    let until = now + self.policy.cooldown;
                    self.transition(&mut w, State::Open { until });
                }
            }
            (State::HalfOpen { trial_out: true }, Some(true)) => {
                w.started = Instant::now();
                w.ok = 0;
                w.failed = 0;
                self.transition(&mut w, State::Closed);
            }
            (State::HalfOpen { trial_out: true }, Some(false)) => {
                let until = Instant::now() + self.policy.cooldown;
                self.transition(&mut w, State::Open { until });
            }
            (State::HalfOpen { trial_out: true }, None) => {
                w.state = State::HalfOpen { trial_out: false };
                self.changed.notify_waiters();
            }
            _ => {}
        }
    }

    /// Waits until intake may take deliveries; returns how many (one for a trial).
    pub(crate) async fn admit(&self) -> usize {
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let wait_until = {
                let mut w = self.lock();
                match w.state {
                    State::Closed => return usize::MAX,
                    State::Open { until } if Instant::now() >= until => {
                        self.transition(&mut w, State::HalfOpen { trial_out: true });
                        return 1;
                    }
                    State::HalfOpen { trial_out: false } => {
                        w.state = State::HalfOpen { trial_out: true };
                        return 1;
                    }
                    State::Open { until } => Some(until),
                    State::HalfOpen { trial_out: true } => None,
                }
            };
            match wait_until {
                Some(until) => tokio::select! {
                    () = tokio::time::sleep_until(until) => {}
                    () = &mut notified => {}
                },
                None => notified.await,
            }
        }
    }
}
