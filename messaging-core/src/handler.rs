//! Handlers: what the consumer runtime calls for each message, and how their results are
//! decided.
//!
//! A handler is an `async fn(Incoming) -> Result<(), HandlerError>` wrapped by [`handler_fn`]
//! into a [`tower_service::Service`], so middleware composes as tower layers and nobody writes
//! `poll_ready`. The top of a stack must turn every error into an [`Outcome`] (its error type is
//! [`Infallible`](std::convert::Infallible)): the consumer runtime accepts nothing else, so an
//! undecided error does not compile.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use chrono::{DateTime, Utc};
use cloudevents::{AttributesReader, Event};
use serde::de::DeserializeOwned;

use crate::codec::DecodeError;
use crate::error::{BoxError, ErrorKind as _};
use crate::event::{DataError, EventBuilder, EventExt};

/// A message handed to a handler: the event, where it came from, and which attempt this is.
/// Cheap to clone (the event is shared).
#[derive(Clone)]
pub struct Incoming {
    event: Arc<Event>,
    source: Arc<Origin>,
    attempt: u32,
}

/// The topic and group a message was consumed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    /// Topic.
    pub topic: String,
    /// Subscription group.
    pub group: String,
}

impl fmt::Debug for Incoming {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Incoming")
            .field("id", &self.event.id())
            .field("type", &self.event.ty())
            .field("topic", &self.source.topic)
            .field("group", &self.source.group)
            .field("attempt", &self.attempt)
            .finish()
    }
}

impl Incoming {
    /// A message as the runtime builds it (also handy in handler unit tests).
    pub fn new(event: Arc<Event>, origin: Arc<Origin>, attempt: u32) -> Self {
        Self {
            event,
            source: origin,
            attempt,
        }
    }

    /// The event.
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// The shared event.
    pub fn shared_event(&self) -> &Arc<Event> {
        &self.event
    }

    /// Delivery attempt, 1 the first time.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Topic the message came from.
    pub fn topic(&self) -> &str {
        &self.source.topic
    }

    /// Subscription group consuming it.
    pub fn group(&self) -> &str {
        &self.source.group
    }

    /// The topic and group.
    pub fn origin(&self) -> &Arc<Origin> {
        &self.source
    }

    /// The data deserialized from JSON; a payload that does not fit `T` is a permanent error
    /// (retrying cannot fix it), so `?` sends it to the dead-letter queue at once.
    pub fn data<T: DeserializeOwned>(&self) -> Result<T, HandlerError> {
        self.event.data_json().map_err(HandlerError::permanent)
    }

    /// A builder for an event caused by this one: same correlation ID (this event's `id` if it
    /// had none), causation ID = this event's `id`, and a `traceparent`: the handler span's,
    /// when called in it with feature `opentelemetry` (the adapter's send span then takes its
    /// place, as its child), else this event's.
    pub fn follow_up(&self, source: impl Into<String>, ty: impl Into<String>) -> EventBuilder {
        let e = &self.event;
        let mut b = EventBuilder::new(source, ty)
            .correlation_id(e.correlation_id().unwrap_or(e.id()))
            .causation_id(e.id());
        #[cfg(feature = "opentelemetry")]
        let own = crate::runtime::trace_context::current_traceparent();
        #[cfg(not(feature = "opentelemetry"))]
        let own: Option<String> = None;
        if let Some(tp) = own.or_else(|| e.traceparent().map(str::to_owned)) {
            b = b.traceparent(tp);
        }
        b
    }
}

/// A handler's failure, classified: transient failures are retried, permanent ones go to the
/// dead-letter queue at once.
///
/// Any error converts with `?`. The classification follows the error: this crate's errors say
/// whether retrying helps ([`ErrorKind::is_transient`](crate::ErrorKind::is_transient)); data
/// that does not deserialize ([`DataError`], `serde_json::Error`) and undecodable messages are
/// permanent; anything else is transient unless wrapped with [`HandlerError::permanent`].
pub struct HandlerError {
    permanent: bool,
    retry_after: Option<Duration>,
    source: BoxError,
}

impl HandlerError {
    /// A failure that may go away (a timeout, a dependency down).
    pub fn transient(error: impl Into<BoxError>) -> Self {
        Self {
            permanent: false,
            retry_after: None,
            source: error.into(),
        }
    }

    /// A failure retrying cannot fix (invalid payload, business rule).
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self {
            permanent: true,
            retry_after: None,
            source: error.into(),
        }
    }

    /// Asks for the next retry after `delay` instead of the policy's backoff (e.g. a rate
    /// limit's `Retry-After`).
    #[must_use]
    pub fn retry_after(mut self, delay: Duration) -> Self {
        self.retry_after = Some(delay);
        self
    }

    /// Whether retrying cannot help.
    pub fn is_permanent(&self) -> bool {
        self.permanent
    }

    /// The requested retry delay, if any.
    pub fn requested_delay(&self) -> Option<Duration> {
        self.retry_after
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }

    /// Consumes into the underlying error.
    pub fn into_source(self) -> BoxError {
        self.source
    }
}

fn classify(e: &(dyn std::error::Error + 'static)) -> bool {
    use crate::error::{AckError, PublishError, ReceiveError, SubscribeError};
    if e.is::<DataError>() || e.is::<DecodeError>() || e.is::<serde_json::Error>() {
        return true;
    }
    if let Some(e) = e.downcast_ref::<PublishError>() {
        return !e.kind().is_transient();
    }
    if let Some(e) = e.downcast_ref::<SubscribeError>() {
        return !e.kind().is_transient();
    }
    if let Some(e) = e.downcast_ref::<ReceiveError>() {
        return !e.kind().is_transient();
    }
    if let Some(e) = e.downcast_ref::<AckError>() {
        return !e.kind().is_transient();
    }
    false
}

impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(e: E) -> Self {
        let source = e.into();
        Self {
            permanent: classify(&*source),
            retry_after: None,
            source,
        }
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("permanent", &self.permanent)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.permanent {
            "permanent"
        } else {
            "transient"
        };
        write!(f, "{kind} handler failure: {}", self.source)
    }
}

/// Why a message goes to the dead-letter queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DeadLetterReason {
    /// Every retry the policy allows failed.
    RetriesExhausted,
    /// The handler failed permanently.
    Permanent,
    /// The message is not a valid CloudEvent.
    Undecodable,
    /// The handler panicked on every attempt the policy allows.
    Panicked,
}

impl DeadLetterReason {
    /// The name used in dead-letter metadata.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::RetriesExhausted => "retries-exhausted",
            Self::Permanent => "permanent-failure",
            Self::Undecodable => "undecodable",
            Self::Panicked => "handler-panicked",
        }
    }
}

impl fmt::Display for DeadLetterReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What happened to a message that failed for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Why it is dead-lettered.
    pub reason: DeadLetterReason,
    /// The last error's text.
    pub error: String,
    /// How many times the handler ran for it, as far as this consumer knows.
    pub attempts: u32,
    /// When it first failed.
    pub first_failure: DateTime<Utc>,
    /// When it last failed.
    pub last_failure: DateTime<Utc>,
}

/// The decision for one delivery, made at the top of a handler stack and carried out by the
/// consumer runtime.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Done: acknowledge.
    Ack,
    /// Failed for now: nack so the broker redelivers, after `delay` if given.
    Redeliver {
        /// Delay before redelivery.
        delay: Option<Duration>,
    },
    /// Failed for good: publish to the dead-letter queue, then acknowledge.
    DeadLetter(Failure),
}

/// A handler that panicked. The runtime isolates panics: a panic is a failure of that one
/// message, retried like a transient error and dead-lettered with reason `handler-panicked`
/// when the retries are spent; the consumer and its lanes keep running.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Panicked {
    message: String,
}

impl Panicked {
    fn from_payload(payload: &(dyn std::any::Any + Send)) -> Self {
        let message = if let Some(s) = payload.downcast_ref::<&'static str>() {
            (*s).to_owned()
        } else if let Some(s) = payload.downcast_ref::<String>() {
            s.clone()
        } else {
            "a panic with a non-string payload".to_owned()
        };
        Self { message }
    }

    /// The panic's message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Panicked {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "handler panicked: {}", self.message)
    }
}

impl std::error::Error for Panicked {}

/// Runs `fut` to completion, turning a panic in any of its polls into [`Panicked`]. No
/// allocation: the future is pinned in place.
pub(crate) async fn catch_panic<F: Future>(fut: F) -> Result<F::Output, Panicked> {
    use std::panic::{AssertUnwindSafe, catch_unwind};
    let mut fut = std::pin::pin!(fut);
    std::future::poll_fn(
        |cx| match catch_unwind(AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(payload) => Poll::Ready(Err(Panicked::from_payload(&*payload))),
        },
    )
    .await
}

/// Counts and logs a handler panic for `msg`; the returned error is transient, so the retry
/// policy decides what happens next.
pub(crate) fn panicked(msg: &Incoming, p: Panicked) -> HandlerError {
    tracing::error!(
        topic = %msg.topic(),
        group = %msg.group(),
        id = %msg.event().id(),
        attempt = msg.attempt(),
        panic = %p.message,
        "handler panicked; the message is retried by the policy, then dead-lettered"
    );
    metrics::counter!(
        "messaging_handler_panics_total",
        "topic" => msg.topic().to_owned(),
        "group" => msg.group().to_owned(),
    )
    .increment(1);
    HandlerError::transient(p)
}

/// Runs `call` (which makes the handler's future) and its future, with panics in either
/// turned into a transient [`HandlerError`] carrying [`Panicked`].
pub(crate) async fn call_isolated<Fut>(
    msg: &Incoming,
    call: impl FnOnce() -> Fut,
) -> Result<(), HandlerError>
where
    Fut: Future<Output = Result<(), HandlerError>>,
{
    match catch_panic(async move { call().await }).await {
        Ok(result) => result,
        Err(p) => Err(panicked(msg, p)),
    }
}

/// Whether `error` is a handler panic.
pub(crate) fn is_panic(error: &HandlerError) -> bool {
    error.source().is::<Panicked>()
}

/// A handler made from an async function; see [`handler_fn`].
#[derive(Clone)]
pub struct HandlerFn<F> {
    f: F,
}

impl<F> fmt::Debug for HandlerFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandlerFn")
    }
}

/// Wraps `async fn(Incoming) -> Result<(), HandlerError>` into a service.
///
/// ```
/// use messaging_core::handler::{handler_fn, HandlerError, Incoming};
///
/// let handler = handler_fn(|msg: Incoming| async move {
///     let order: serde_json::Value = msg.data()?;
///     println!("order {}", order["orderId"]);
///     Ok::<(), HandlerError>(())
/// });
/// # let _ = handler;
/// ```
pub fn handler_fn<F, Fut>(f: F) -> HandlerFn<F>
where
    F: Fn(Incoming) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    HandlerFn { f }
}

impl<F, Fut> tower_service::Service<Incoming> for HandlerFn<F>
where
    F: Fn(Incoming) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Result<(), HandlerError>> + Send + 'static,
{
    type Response = ();
    type Error = HandlerError;
    type Future = Fut;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, msg: Incoming) -> Fut {
        (self.f)(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::PublishErrorKind;

    #[test]
    fn errors_are_classified_by_what_they_are() {
        let e: HandlerError = std::io::Error::other("down").into();
        assert!(!e.is_permanent());
        let e: HandlerError = serde_json::from_str::<u8>("x").unwrap_err().into();
        assert!(e.is_permanent());
        let e: HandlerError = crate::PublishError::new(PublishErrorKind::PayloadTooLarge).into();
        assert!(e.is_permanent());
        let e: HandlerError = crate::PublishError::new(PublishErrorKind::Unavailable).into();
        assert!(!e.is_permanent());
        let e: HandlerError = "plain text".into();
        assert!(!e.is_permanent());
        assert!(HandlerError::permanent("rule").is_permanent());
    }

    #[test]
    fn follow_up_carries_correlation_and_causation() {
        let e = EventBuilder::new("s", "order.created")
            .id("e1")
            .traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .build()
            .unwrap();
        let origin = Arc::new(Origin {
            topic: "orders".into(),
            group: "billing".into(),
        });
        let msg = Incoming::new(Arc::new(e), origin, 1);
        let next = msg.follow_up("billing", "invoice.issued").build().unwrap();
        assert_eq!(next.correlation_id(), Some("e1"));
        assert_eq!(next.causation_id(), Some("e1"));
        assert_eq!(next.traceparent(), msg.event().traceparent());
        let msg2 = Incoming::new(Arc::new(next.clone()), msg.origin().clone(), 1);
        let third = msg2.follow_up("x", "y").build().unwrap();
        assert_eq!(
            third.correlation_id(),
            Some("e1"),
            "correlation is kept along the chain"
        );
        assert_eq!(third.causation_id(), Some(next.id()));
    }
}
