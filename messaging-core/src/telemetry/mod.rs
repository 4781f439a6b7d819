//! Traces and metrics by OpenTelemetry's messaging conventions ([`semconv`]).
//!
//! Spans are [`tracing`] spans whose fields are the conventions' attribute names
//! (`messaging.system`, `messaging.destination.name`, ...), with `otel.name` and `otel.kind`
//! for the OpenTelemetry span name and kind: `tracing-opentelemetry` turns them into
//! OpenTelemetry spans as they are. Metrics go through the [`metrics`] facade under the
//! conventions' names; with feature `opentelemetry`, [`OpenTelemetryRecorder`] records them
//! (and every other facade metric) as OpenTelemetry instruments with the conventions' units.
//!
//! | operation | span name | kind | where |
//! |---|---|---|---|
//! | send | `send {topic}` | producer | every adapter's `publish` and `publish_batch` ([`SendTelemetry`]) |
//! | receive | `receive {queue}` | client | pull adapters, per broker call that returns messages (SQS) |
//! | process | `process {topic}` | consumer | the consumer runtime, per delivery |
//! | settle | `ack {topic}` / `nack {topic}` | client | the consumer runtime, per settlement |
//!
//! With feature `opentelemetry`, a send span's context is written into each event that has no
//! `traceparent` yet (the CloudEvents distributed-tracing extension), and the consumer's
//! process span links to that context and continues its trace. The full list of names is in
//! `docs/observability.md`.

pub mod semconv;

#[cfg(feature = "opentelemetry")]
mod recorder;

#[cfg(feature = "opentelemetry")]
pub use recorder::OpenTelemetryRecorder;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::sync::{Arc, Once, RwLock};
use std::time::Instant;

use cloudevents::{AttributesReader, Event};
use tracing::Instrument;
use tracing::field::Empty;

use crate::error::{Error, ErrorKind, PublishError};
use crate::event::EventExt;
use crate::publisher::{PublishBatchError, Receipt};

/// The instrumentation scope name of this crate's spans and metrics.
pub const SCOPE: &str = "messaging";

/// Registers the units and descriptions of the conventional metrics with the installed
/// `metrics` recorder. The adapters and the consumer runtime call it when they start; call it
/// yourself after installing a recorder later than that.
pub fn describe_metrics() {
    use metrics::Unit;
    metrics::describe_counter!(
        semconv::METRIC_SENT_MESSAGES,
        Unit::Count,
        "Messages handed to the broker ({message})."
    );
    metrics::describe_counter!(
        semconv::METRIC_CONSUMED_MESSAGES,
        Unit::Count,
        "Deliveries handed to the consumer runtime ({message})."
    );
    metrics::describe_histogram!(
        semconv::METRIC_OPERATION_DURATION,
        Unit::Seconds,
        "Duration of send, receive and settle operations."
    );
    metrics::describe_histogram!(
        semconv::METRIC_PROCESS_DURATION,
        Unit::Seconds,
        "Duration of the handler, per delivery."
    );
    metrics::describe_histogram!(
        END_TO_END_LATENCY,
        Unit::Seconds,
        "From the event's time to the end of its handling."
    );
}

/// Histogram `messaging_end_to_end_latency_seconds{topic, group}`: from the event's `time` to
/// the end of its handling (no convention has this yet, hence the project's own name).
pub const END_TO_END_LATENCY: &str = "messaging_end_to_end_latency_seconds";

/// The conventions' `error.type` for an error kind: its name in snake case (`timeout`,
/// `payload_too_large`).
pub fn error_type<K: fmt::Debug>(kind: K) -> String {
    let name = format!("{kind:?}");
    let mut out = String::with_capacity(name.len() + 4);
    for (i, c) in name.chars().enumerate() {
        if c.is_ascii_uppercase() {
            if i > 0 {
                out.push('_');
            }
            out.push(c.to_ascii_lowercase());
        } else {
            out.push(c);
        }
    }
    out
}

/// Send-side telemetry of one publisher: the `send` span and the sent-messages and
/// operation-duration metrics, by the conventions. Adapters wrap each publish in
/// [`SendTelemetry::publish`] or [`SendTelemetry::publish_batch`].
#[derive(Clone)]
pub struct SendTelemetry {
    inner: Arc<SendInner>,
}

struct SendInner {
    system: &'static str,
    server: Option<(String, u16)>,
    topics: RwLock<HashMap<Box<str>, Arc<TopicMetrics>>>,
}

/// Metric handles of one destination, registered on its first publish.
struct TopicMetrics {
    sent: metrics::Counter,
    duration: metrics::Histogram,
}

impl fmt::Debug for SendTelemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SendTelemetry")
            .field("system", &self.inner.system)
            .field("server", &self.inner.server)
            .finish_non_exhaustive()
    }
}

static DESCRIBED: Once = Once::new();

impl SendTelemetry {
    /// Telemetry for a publisher of `system` (a [`semconv::system_for`] value).
    pub fn new(system: &'static str) -> Self {
        DESCRIBED.call_once(describe_metrics);
        Self {
            inner: Arc::new(SendInner {
                system,
                server: None,
                topics: RwLock::default(),
            }),
        }
    }

    /// Adds `server.address` and `server.port` to the spans and metrics.
    #[must_use]
    pub fn with_server(self, address: impl Into<String>, port: u16) -> Self {
        Self {
            inner: Arc::new(SendInner {
                system: self.inner.system,
                server: Some((address.into(), port)),
                topics: RwLock::default(),
            }),
        }
    }

    /// Adds `server.address` and `server.port` from `target`: a URL
    /// (`amqp://user:secret@host:5672/vhost`, credentials never kept) or `host:port` (the
    /// first of a comma-separated list); `default_port` where it names none. Unchanged if
    /// `target` names no host.
    #[must_use]
    pub fn with_server_of(self, target: &str, default_port: u16) -> Self {
        match server_of(target, default_port) {
            Some((host, port)) => self.with_server(host, port),
            None => self,
        }
    }

    /// `messaging.system` of this publisher.
    pub fn system(&self) -> &'static str {
        self.inner.system
    }

    fn topic(&self, topic: &str) -> Arc<TopicMetrics> {
        if let Some(m) = crate::sync::read(&self.inner.topics).get(topic) {
            return m.clone();
        }
        let labels = self.labels(topic, None);
        let m = Arc::new(TopicMetrics {
            sent: metrics::counter!(semconv::METRIC_SENT_MESSAGES, &labels),
            duration: metrics::histogram!(semconv::METRIC_OPERATION_DURATION, &labels),
        });
        crate::sync::write(&self.inner.topics)
            .entry(topic.into())
            .or_insert(m)
            .clone()
    }

    fn labels(&self, topic: &str, error: Option<String>) -> Vec<(&'static str, String)> {
        let mut labels = vec![
            (semconv::MESSAGING_SYSTEM, self.inner.system.to_owned()),
            (semconv::MESSAGING_OPERATION_NAME, "send".to_owned()),
            (semconv::MESSAGING_DESTINATION_NAME, topic.to_owned()),
        ];
        if let Some((address, port)) = &self.inner.server {
            labels.push((semconv::SERVER_ADDRESS, address.clone()));
            labels.push((semconv::SERVER_PORT, port.to_string()));
        }
        if let Some(error) = error {
            labels.push((semconv::ERROR_TYPE, error));
        }
        labels
    }

    fn span(&self, topic: &str, batch: Option<usize>, event: Option<&Event>) -> tracing::Span {
        let (address, port) = match &self.inner.server {
            Some((a, p)) => (Some(a.as_str()), Some(*p)),
            None => (None, None),
        };
        let span = tracing::info_span!(
            "send",
            otel.name = %format_args!("send {topic}"),
            otel.kind = "producer",
            otel.status_code = Empty,
            messaging.system = self.inner.system,
            messaging.operation.name = "send",
            messaging.operation.type = "send",
            messaging.destination.name = topic,
            messaging.batch.message_count = batch,
            messaging.message.id = event.map(|e| e.id()),
            messaging.message.conversation_id = event.and_then(|e| e.correlation_id()),
            messaging.kafka.message.key = Empty,
            messaging.destination.partition.id = Empty,
            messaging.kafka.offset = Empty,
            cloudevents.event_id = event.map(|e| e.id()),
            cloudevents.event_type = event.map(|e| e.ty()),
            cloudevents.event_source = event.map(|e| tracing::field::display(e.source())),
            server.address = address,
            server.port = port,
            error.type = Empty,
        );
        if self.inner.system == "kafka"
            && let Some(key) = event.and_then(|e| e.ordering_key())
        {
            span.record("messaging.kafka.message.key", key);
        }
        span
    }

    /// Runs one publish of `event` to `topic` in a `send {topic}` span: writes the span's
    /// context into the event's `traceparent` if it has none (feature `opentelemetry`; else the
    /// span links to the one it has), then records the receipt's partition and offset, or the
    /// error, and the metrics.
    pub async fn publish<F, Fut>(
        &self,
        topic: &str,
        mut event: Event,
        send: F,
    ) -> Result<Receipt, PublishError>
    where
        F: FnOnce(Event) -> Fut,
        Fut: Future<Output = Result<Receipt, PublishError>>,
    {
        let span = self.span(topic, None, Some(&event));
        let _ = propagate(&span, &mut event);
        let metrics = self.topic(topic);
        let started = Instant::now();
        let result = send(event).instrument(span.clone()).await;
        let elapsed = started.elapsed().as_secs_f64();
        match &result {
            Ok(receipt) => {
                record_receipt(&span, self.inner.system, receipt);
                metrics.sent.increment(1);
                metrics.duration.record(elapsed);
            }
            Err(e) => self.failed(&span, topic, e, 1, elapsed),
        }
        result
    }

    /// Runs one batch publish to `topic` in a `send {topic}` span with
    /// `messaging.batch.message_count`: every event without a `traceparent` gets the span's
    /// context (feature `opentelemetry`). Sent messages are counted one by one; the failed
    /// ones under their `error.type`.
    pub async fn publish_batch<F, Fut>(
        &self,
        topic: &str,
        mut events: Vec<Event>,
        send: F,
    ) -> Result<Vec<Receipt>, PublishBatchError>
    where
        F: FnOnce(Vec<Event>) -> Fut,
        Fut: Future<Output = Result<Vec<Receipt>, PublishBatchError>>,
    {
        let count = events.len();
        let span = self.span(topic, Some(count), None);
        // Indices of the events whose traceparent this send wrote (none without a subscriber).
        let mut stamped = Vec::new();
        for (i, event) in events.iter_mut().enumerate() {
            if propagate(&span, event) {
                stamped.push(i);
            }
        }
        let metrics = self.topic(topic);
        let started = Instant::now();
        let mut result = send(events).instrument(span.clone()).await;
        let elapsed = started.elapsed().as_secs_f64();
        // The events handed back are as the caller gave them: a retry is another send.
        if let Err(e) = &mut result
            && !stamped.is_empty()
        {
            for (i, event, _) in &mut e.failed {
                if stamped.binary_search(i).is_ok() {
                    event.remove_extension(crate::event::TRACEPARENT);
                }
            }
        }
        match &result {
            Ok(_) => {
                metrics.sent.increment(count as u64);
                metrics.duration.record(elapsed);
            }
            Err(e) => {
                metrics.sent.increment(e.accepted.len() as u64);
                let mut kinds: HashMap<String, u64> = HashMap::new();
                for (_, _, err) in &e.failed {
                    *kinds.entry(error_type(err.kind())).or_default() += 1;
                }
                for (kind, n) in kinds {
                    metrics::counter!(
                        semconv::METRIC_SENT_MESSAGES,
                        &self.labels(topic, Some(kind))
                    )
                    .increment(n);
                }
                let first = e.failed.first().map(|(_, _, e)| e);
                let kind = first.map_or_else(|| "_OTHER".to_owned(), |e| error_type(e.kind()));
                span.record("error.type", kind.as_str());
                span.record("otel.status_code", "error");
                metrics::histogram!(
                    semconv::METRIC_OPERATION_DURATION,
                    &self.labels(topic, Some(kind))
                )
                .record(elapsed);
            }
        }
        result
    }

    fn failed<K: ErrorKind + fmt::Debug>(
        &self,
        span: &tracing::Span,
        topic: &str,
        error: &Error<K>,
        count: u64,
        elapsed: f64,
    ) {
        let kind = error_type(error.kind());
        span.record("error.type", kind.as_str());
        span.record("otel.status_code", "error");
        let labels = self.labels(topic, Some(kind));
        metrics::counter!(semconv::METRIC_SENT_MESSAGES, &labels).increment(count);
        metrics::histogram!(semconv::METRIC_OPERATION_DURATION, &labels).record(elapsed);
    }
}

/// Receive-side telemetry of one pull subscription: a `receive {topic}` span per broker call
/// that returns messages (or none), linked to the creation context of each, and its
/// `messaging.client.operation.duration`.
pub struct ReceiveTelemetry {
    system: &'static str,
    topic: String,
    group: String,
    name: String,
    duration: metrics::Histogram,
}

impl fmt::Debug for ReceiveTelemetry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReceiveTelemetry")
            .field("system", &self.system)
            .field("topic", &self.topic)
            .field("group", &self.group)
            .finish_non_exhaustive()
    }
}

impl ReceiveTelemetry {
    /// Telemetry for receiving `topic`'s messages for `group`.
    pub fn new(system: &'static str, topic: &str, group: &str) -> Self {
        DESCRIBED.call_once(describe_metrics);
        let duration = metrics::histogram!(
            semconv::METRIC_OPERATION_DURATION,
            &Self::labels_of(system, topic, group, None)
        );
        Self {
            system,
            topic: topic.to_owned(),
            group: group.to_owned(),
            name: format!("receive {topic}"),
            duration,
        }
    }

    fn labels_of(
        system: &'static str,
        topic: &str,
        group: &str,
        error: Option<String>,
    ) -> Vec<(&'static str, String)> {
        let mut labels = vec![
            (semconv::MESSAGING_SYSTEM, system.to_owned()),
            (semconv::MESSAGING_OPERATION_NAME, "receive".to_owned()),
            (semconv::MESSAGING_OPERATION_TYPE, "receive".to_owned()),
            (semconv::MESSAGING_DESTINATION_NAME, topic.to_owned()),
            (semconv::MESSAGING_CONSUMER_GROUP_NAME, group.to_owned()),
        ];
        if let Some(error) = error {
            labels.push((semconv::ERROR_TYPE, error));
        }
        labels
    }

    /// Starts one receive call's span.
    pub fn start(&self) -> ReceiveOp<'_> {
        let span = tracing::info_span!(
            "receive",
            otel.name = %self.name,
            otel.kind = "client",
            otel.status_code = Empty,
            messaging.system = self.system,
            messaging.operation.name = "receive",
            messaging.operation.type = "receive",
            messaging.destination.name = %self.topic,
            messaging.consumer.group.name = %self.group,
            messaging.batch.message_count = Empty,
            error.type = Empty,
        );
        ReceiveOp {
            telemetry: self,
            span,
            started: Instant::now(),
            returned: None,
        }
    }
}

/// One receive call in progress.
#[derive(Debug)]
pub struct ReceiveOp<'a> {
    telemetry: &'a ReceiveTelemetry,
    span: tracing::Span,
    started: Instant,
    returned: Option<f64>,
}

impl ReceiveOp<'_> {
    /// The call's span, to instrument the call with.
    pub fn span(&self) -> &tracing::Span {
        &self.span
    }

    /// Marks the broker call returned: the operation's duration ends here, not at
    /// [`finish`](Self::finish), which may come after decoding what it returned.
    pub fn returned(&mut self) {
        self.returned = Some(self.started.elapsed().as_secs_f64());
    }

    /// Links the span to the creation context of a received event (feature `opentelemetry`).
    pub fn link(&self, event: &Event) {
        #[cfg(feature = "opentelemetry")]
        if !self.span.is_disabled()
            && let Some(creation) = event
                .traceparent()
                .and_then(crate::runtime::trace_context::parse)
        {
            crate::runtime::trace_context::link(&self.span, creation);
        }
        #[cfg(not(feature = "opentelemetry"))]
        let _ = event;
    }

    /// Ends the call: `count` messages received, or the error's `error.type`.
    pub fn finish(self, count: usize, error: Option<String>) {
        let elapsed = self
            .returned
            .unwrap_or_else(|| self.started.elapsed().as_secs_f64());
        self.span.record("messaging.batch.message_count", count);
        match error {
            None => self.telemetry.duration.record(elapsed),
            Some(error) => {
                self.span.record("error.type", error.as_str());
                self.span.record("otel.status_code", "error");
                let t = self.telemetry;
                metrics::histogram!(
                    semconv::METRIC_OPERATION_DURATION,
                    &ReceiveTelemetry::labels_of(t.system, &t.topic, &t.group, Some(error))
                )
                .record(elapsed);
            }
        }
    }
}

/// The host and port `target` names: a URL, or `host:port` (the first of a comma-separated
/// list).
pub fn server_of(target: &str, default_port: u16) -> Option<(String, u16)> {
    let first = target.split(',').next()?.trim();
    if first.contains("://") {
        let url = url::Url::parse(first).ok()?;
        let host = url.host_str()?.trim_matches(['[', ']']).to_owned();
        return Some((host, url.port().unwrap_or(default_port)));
    }
    let (host, port) = match first.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => {
            (h, p.parse().unwrap_or(default_port))
        }
        _ => (first, default_port),
    };
    (!host.is_empty()).then(|| (host.trim_matches(['[', ']']).to_owned(), port))
}

/// Records a receipt's partition and offset on a send span.
fn record_receipt(span: &tracing::Span, system: &str, receipt: &Receipt) {
    if let Some(p) = receipt.partition {
        span.record(
            "messaging.destination.partition.id",
            tracing::field::display(p),
        );
    }
    if system == "kafka"
        && let Some(o) = receipt.offset
    {
        span.record("messaging.kafka.offset", o);
    }
}

/// Writes the send span's context into an event without a `traceparent`, or with the one
/// `Correlated`/`follow_up` stamped from the span the publish is called in (the send span is
/// that span's child); links the span to any other `traceparent`, the event's creation
/// context, kept end to end. Returns whether it wrote the event's `traceparent`.
#[cfg(feature = "opentelemetry")]
fn propagate(span: &tracing::Span, event: &mut Event) -> bool {
    use crate::runtime::trace_context as tc;
    if span.is_disabled() {
        return false;
    }
    match event.traceparent().and_then(tc::parse) {
        Some(creation) if !tc::names_current(&creation) => {
            tc::link(span, creation);
            false
        }
        _ => match tc::traceparent_of(span) {
            Some(tp) => {
                event.set_extension(crate::event::TRACEPARENT, tp);
                true
            }
            None => false,
        },
    }
}

#[cfg(not(feature = "opentelemetry"))]
fn propagate(_span: &tracing::Span, _event: &mut Event) -> bool {
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_of_takes_the_host_and_port_and_never_the_credentials() {
        let s = |t: &str| server_of(t, 5672);
        assert_eq!(
            s("amqp://app:secret@rabbit.internal:5673/%2f"),
            Some(("rabbit.internal".into(), 5673))
        );
        assert_eq!(
            s("amqps://rabbit.internal"),
            Some(("rabbit.internal".into(), 5672))
        );
        assert_eq!(s("k1:9092,k2:9092"), Some(("k1".into(), 9092)));
        assert_eq!(s("k1"), Some(("k1".into(), 5672)));
        assert_eq!(s("[::1]:9092"), Some(("::1".into(), 9092)));
        assert_eq!(s(""), None);
    }

    #[test]
    fn error_type_is_the_kind_in_snake_case() {
        use crate::error::PublishErrorKind;
        assert_eq!(
            error_type(PublishErrorKind::PayloadTooLarge),
            "payload_too_large"
        );
        assert_eq!(error_type(PublishErrorKind::Timeout), "timeout");
    }
}
