//! `RetryLayer` / `Retry<S>`: runs a handler service and decides the outcome.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cloudevents::AttributesReader;
use tower_layer::Layer;
use tower_service::Service;

use super::{RetryMode, RetryPolicy};
use crate::handler::{
    DeadLetterReason, Failure, HandlerError, Incoming, Outcome, call_isolated, is_panic,
};

/// Wraps a handler service in [`Retry`].
#[derive(Debug, Clone)]
pub struct RetryLayer {
    policy: Arc<RetryPolicy>,
    first_failures: Arc<FirstFailures>,
}

impl RetryLayer {
    /// A layer retrying by `policy`.
    pub fn new(policy: RetryPolicy) -> Self {
        Self {
            policy: Arc::new(policy),
            first_failures: Arc::default(),
        }
    }

    /// The policy.
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }
}

impl<S> Layer<S> for RetryLayer {
    type Service = Retry<S>;

    fn layer(&self, inner: S) -> Retry<S> {
        Retry {
            inner,
            policy: self.policy.clone(),
            first_failures: self.first_failures.clone(),
        }
    }
}

/// Runs the inner handler and turns its result into an [`Outcome`]: success acks; a permanent
/// failure, or a transient one past `max_retries`, dead-letters; other transient failures are
/// retried in place or redelivered, by the policy's mode.
#[derive(Debug, Clone)]
pub struct Retry<S> {
    inner: S,
    policy: Arc<RetryPolicy>,
    first_failures: Arc<FirstFailures>,
}

/// When messages in redelivery mode first failed, so the dead-letter metadata can say so
/// although each redelivery is a new delivery. Bounded; touched only on failures.
#[derive(Debug, Default)]
struct FirstFailures {
    len: AtomicUsize,
    map: Mutex<HashMap<String, DateTime<Utc>>>,
}

const FIRST_FAILURES_MAX: usize = 10_000;

impl FirstFailures {
    fn record(&self, id: &str, now: DateTime<Utc>) -> DateTime<Utc> {
        let mut map = crate::sync::lock(&self.map);
        if map.len() >= FIRST_FAILURES_MAX && !map.contains_key(id) {
            map.clear();
        }
        let first = *map.entry(id.to_owned()).or_insert(now);
        self.len.store(map.len(), Ordering::Relaxed);
        first
    }

    fn forget(&self, id: &str) -> Option<DateTime<Utc>> {
        if self.len.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut map = crate::sync::lock(&self.map);
        let first = map.remove(id);
        self.len.store(map.len(), Ordering::Relaxed);
        first
    }
}

type BoxOutcome = Pin<Box<dyn Future<Output = Result<Outcome, Infallible>> + Send>>;

impl<S> Service<Incoming> for Retry<S>
where
    S: Service<Incoming, Response = (), Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send,
{
    type Response = Outcome;
    type Error = Infallible;
    type Future = BoxOutcome;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The inner service's readiness is awaited per call, where its error can be decided.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, msg: Incoming) -> BoxOutcome {
        let clone = self.inner.clone();
        let inner = std::mem::replace(&mut self.inner, clone);
        let policy = self.policy.clone();
        let first_failures = self.first_failures.clone();
        Box::pin(async move { Ok(decide(inner, policy, first_failures, msg).await) })
    }
}

/// `messaging_retries_total{topic, group, mode}`: on the failure path only.
fn count_retry(msg: &Incoming, mode: &'static str) {
    // An event of the current (process) span.
    tracing::info!(mode, attempt = msg.attempt(), "retrying");
    metrics::counter!(
        "messaging_retries_total",
        "topic" => msg.topic().to_owned(),
        "group" => msg.group().to_owned(),
        "mode" => mode,
    )
    .increment(1);
}

async fn run_once<S>(
    inner: &mut S,
    msg: &Incoming,
    timeout: Option<Duration>,
) -> Result<(), HandlerError>
where
    S: Service<Incoming, Response = (), Error = HandlerError>,
{
    poll_fn(|cx| inner.poll_ready(cx)).await?;
    let run = call_isolated(msg, || inner.call(msg.clone()));
    let Some(limit) = timeout else {
        return run.await;
    };
    // Boxed: the timer stays out of the future of every call without a limit.
    match Box::pin(tokio::time::timeout(limit, run)).await {
        Ok(result) => result,
        Err(_) => {
            metrics::counter!(
                "messaging_handler_timeouts_total",
                "topic" => msg.topic().to_owned(),
                "group" => msg.group().to_owned(),
            )
            .increment(1);
            tracing::warn!(
                topic = msg.topic(),
                id = msg.event().id(),
                ?limit,
                "handler timed out; it was cancelled and counts as a transient failure"
            );
            Err(HandlerError::transient(format!(
                "handler timed out after {limit:?}"
            )))
        }
    }
}

/// The dead-letter reason for a failure: a panic says so.
fn reason_for(error: &HandlerError, otherwise: DeadLetterReason) -> DeadLetterReason {
    if is_panic(error) {
        DeadLetterReason::Panicked
    } else {
        otherwise
    }
}

async fn decide<S>(
    mut inner: S,
    policy: Arc<RetryPolicy>,
    first_failures: Arc<FirstFailures>,
    msg: Incoming,
) -> Outcome
where
    S: Service<Incoming, Response = (), Error = HandlerError>,
{
    let id = msg.event().id();
    match policy.mode {
        RetryMode::InPlace => {
            let mut delays = policy.delays();
            let mut first = None;
            let mut runs = 0u32;
            loop {
                runs += 1;
                let error = match run_once(&mut inner, &msg, policy.handler_timeout).await {
                    Ok(()) => return Outcome::Ack,
                    Err(e) => e,
                };
                let now = Utc::now();
                let first_failure = *first.get_or_insert(now);
                let dead = |reason| {
                    Outcome::DeadLetter(Failure {
                        reason,
                        error: error.to_string(),
                        attempts: runs + msg.attempt().saturating_sub(1),
                        first_failure,
                        last_failure: now,
                    })
                };
                if error.is_permanent() {
                    return dead(DeadLetterReason::Permanent);
                }
                match delays.next() {
                    Some(d) => {
                        count_retry(&msg, "in-place");
                        tokio::time::sleep(error.requested_delay().unwrap_or(d)).await;
                    }
                    None => return dead(reason_for(&error, DeadLetterReason::RetriesExhausted)),
                }
            }
        }
        RetryMode::Redelivery => {
            let error = match run_once(&mut inner, &msg, policy.handler_timeout).await {
                Ok(()) => {
                    first_failures.forget(id);
                    return Outcome::Ack;
                }
                Err(e) => e,
            };
            let now = Utc::now();
            let dead = |reason| {
                let first_failure = first_failures.forget(id).unwrap_or(now);
                Outcome::DeadLetter(Failure {
                    reason,
                    error: error.to_string(),
                    attempts: msg.attempt(),
                    first_failure,
                    last_failure: now,
                })
            };
            if error.is_permanent() {
                return dead(DeadLetterReason::Permanent);
            }
            match policy.delay_before_retry(msg.attempt()) {
                Some(d) => {
                    count_retry(&msg, "redelivery");
                    first_failures.record(id, now);
                    Outcome::Redeliver {
                        delay: Some(error.requested_delay().unwrap_or(d)),
                    }
                }
                None => dead(reason_for(&error, DeadLetterReason::RetriesExhausted)),
            }
        }
    }
}
