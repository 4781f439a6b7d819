//! The message being handled, for events published from inside a handler.

use std::future::Future;

use cloudevents::{AttributesReader, Event};

use crate::error::PublishError;
use crate::event::{CAUSATION_ID, CORRELATION_ID, EventExt, TRACEPARENT};
use crate::features::Features;
use crate::handler::Incoming;
use crate::publisher::{PublishBatchError, Publisher, Receipt};

tokio::task_local! {
    static CURRENT: Incoming;
}

/// The message the current task is handling, inside a consumer runtime's handler.
pub fn current() -> Option<Incoming> {
    CURRENT.try_with(Clone::clone).ok()
}

pub(crate) fn scope<F: Future>(msg: Incoming, f: F) -> impl Future<Output = F::Output> {
    CURRENT.scope(msg, f)
}

/// A publisher that stamps events published while handling a message with that message's
/// correlation ID (its `id` if it had none), a causation ID (its `id`) and a `traceparent`,
/// unless the event already has them. The `traceparent` is the handler span's (feature
/// `opentelemetry`), else the incoming event's.
#[derive(Debug, Clone)]
pub struct Correlated<P>(pub P);

fn stamp(mut event: Event) -> Event {
    let Some(msg) = current() else {
        return event;
    };
    let cause = msg.event();
    if event.correlation_id().is_none() {
        event.set_extension(CORRELATION_ID, cause.correlation_id().unwrap_or(cause.id()));
    }
    if event.causation_id().is_none() {
        event.set_extension(CAUSATION_ID, cause.id());
    }
    if event.traceparent().is_none() {
        // With OpenTelemetry, the handler's span is the parent; without, the incoming trace.
        #[cfg(feature = "opentelemetry")]
        let own = super::trace_context::current_traceparent();
        #[cfg(not(feature = "opentelemetry"))]
        let own: Option<String> = None;
        if let Some(tp) = own.or_else(|| cause.traceparent().map(str::to_owned)) {
            event.set_extension(TRACEPARENT, tp);
        }
    }
    event
}

impl<P: Publisher> Publisher for Correlated<P> {
    fn publish(
        &self,
        topic: &str,
        event: Event,
    ) -> impl Future<Output = Result<Receipt, PublishError>> + Send {
        self.0.publish(topic, stamp(event))
    }

    fn publish_batch(
        &self,
        topic: &str,
        events: Vec<Event>,
    ) -> impl Future<Output = Result<Vec<Receipt>, PublishBatchError>> + Send {
        self.0
            .publish_batch(topic, events.into_iter().map(stamp).collect())
    }

    fn close(&self) -> impl Future<Output = Result<(), PublishError>> + Send {
        self.0.close()
    }

    fn features(&self) -> Features {
        self.0.features()
    }
}
