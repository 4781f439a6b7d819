//! W3C trace context through OpenTelemetry (feature `opentelemetry`): a delivery's span
//! continues the trace of the event's `traceparent`, and events published while handling it
//! carry the handler span's own context.

use cloudevents::Event;
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::event::EventExt;

/// Parses a version-00 `traceparent`; `None` for anything malformed or all-zero.
pub(crate) fn parse(traceparent: &str) -> Option<SpanContext> {
    let mut parts = traceparent.trim().split('-');
    let (version, trace, span, flags) =
        (parts.next()?, parts.next()?, parts.next()?, parts.next()?);
    if version.len() != 2
        || version == "ff"
        || trace.len() != 32
        || span.len() != 16
        || flags.len() != 2
    {
        return None;
    }
    if version == "00" && parts.next().is_some() {
        return None;
    }
    let hex = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    if !(hex(version) && hex(trace) && hex(span) && hex(flags)) {
        return None;
    }
    let trace = TraceId::from_hex(trace).ok()?;
    let span = SpanId::from_hex(span).ok()?;
    let flags = u8::from_str_radix(flags, 16).ok()?;
    let sc = SpanContext::new(
        trace,
        span,
        TraceFlags::new(flags),
        true,
        TraceState::default(),
    );
    sc.is_valid().then_some(sc)
}

/// Whether `sc` is the context of the current span: a `traceparent` stamped by `Correlated` or
/// `Incoming::follow_up` in the handler's span, which the send span, its child, replaces.
pub(crate) fn names_current(sc: &SpanContext) -> bool {
    let cx = tracing::Span::current().context();
    let current = cx.span();
    let current = current.span_context();
    current.is_valid() && current.span_id() == sc.span_id() && current.trace_id() == sc.trace_id()
}

/// Makes `span` a child of the event's creation context (its valid `traceparent`), and links
/// it there too: the conventions' process span links to the creation context of each message
/// it accounts for, and may also take it as parent when it accounts for one message.
pub(crate) fn continue_trace(span: &tracing::Span, event: &Event) {
    if span.is_disabled() {
        return;
    }
    if let Some(sc) = event.traceparent().and_then(parse) {
        let cx = opentelemetry::Context::new().with_remote_span_context(sc.clone());
        let _ = span.set_parent(cx);
        link(span, sc);
    }
}

/// Links `span` to `creation`.
pub(crate) fn link(span: &tracing::Span, creation: SpanContext) {
    span.add_link(creation);
}

/// `span`'s own context as a `traceparent`, if it belongs to a trace (is recorded).
pub(crate) fn traceparent_of(span: &tracing::Span) -> Option<String> {
    let cx = span.context();
    let span = cx.span();
    format_traceparent(span.span_context())
}

/// The current span's context as a `traceparent`, if it belongs to a trace.
pub(crate) fn current_traceparent() -> Option<String> {
    traceparent_of(&tracing::Span::current())
}

fn format_traceparent(sc: &SpanContext) -> Option<String> {
    sc.is_valid().then(|| {
        format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_valid_and_rejects_malformed() {
        let sc = parse("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
        assert_eq!(
            sc.trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert!(sc.is_sampled());
        for bad in [
            "",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
            "00-00000000000000000000000000000000-b7ad6b7169203331-01",
            "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-extra",
        ] {
            assert!(parse(bad).is_none(), "{bad:?}");
        }
    }
}
