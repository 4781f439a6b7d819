//! Everything `tracing` and the `log` crate record, at every level, as text: for tests that
//! check that nothing a failure logs shows a secret (librdkafka's own log lines, for one, go
//! through `log`).

use std::fmt::Write as _;
use std::sync::{Arc, Mutex, OnceLock};

use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Subscriber};
use tracing_subscriber::layer::{Context, Layer, SubscriberExt as _};

/// The text of every span (name and fields, as created and as recorded later) and every event
/// (level, target, fields) of the process, and every `log` record, at every level down to
/// `TRACE`.
#[derive(Clone, Debug, Default)]
pub struct LogCapture {
    text: Arc<Mutex<String>>,
}

impl LogCapture {
    /// The process's capture: installed as the global `tracing` subscriber and the `log`
    /// logger (at `Trace`) on first use. Panics if either was installed first.
    pub fn global() -> &'static LogCapture {
        static GLOBAL: OnceLock<LogCapture> = OnceLock::new();
        GLOBAL.get_or_init(|| {
            let capture = LogCapture::default();
            let subscriber = tracing_subscriber::registry().with(Recorder(capture.clone()));
            tracing::subscriber::set_global_default(subscriber)
                .expect("another global tracing subscriber is installed");
            log::set_boxed_logger(Box::new(capture.clone())).expect("another logger is installed");
            log::set_max_level(log::LevelFilter::Trace);
            capture
        })
    }

    /// Everything recorded so far.
    pub fn text(&self) -> String {
        self.text.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn push(&self, line: String) {
        let mut text = self.text.lock().unwrap_or_else(|e| e.into_inner());
        text.push_str(&line);
        text.push('\n');
    }
}

impl log::Log for LogCapture {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        self.push(format!(
            "{} {} {}",
            record.level(),
            record.target(),
            record.args()
        ));
    }

    fn flush(&self) {}
}

struct Recorder(LogCapture);

struct Fields(String);

impl Visit for Fields {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        let _ = write!(self.0, " {}={value:?}", field.name());
    }

    fn record_str(&mut self, field: &Field, value: &str) {
        // Both forms: `Debug` escapes, a secret with a quote or backslash would hide in it.
        let _ = write!(self.0, " {}={value}", field.name());
    }

    fn record_error(&mut self, field: &Field, value: &(dyn std::error::Error + 'static)) {
        let _ = write!(self.0, " {}={value} ({value:?})", field.name());
    }
}

impl<S: Subscriber> Layer<S> for Recorder {
    fn on_new_span(&self, attrs: &Attributes<'_>, _: &Id, _: Context<'_, S>) {
        let mut fields = Fields(format!("span {}", attrs.metadata().name()));
        attrs.record(&mut fields);
        self.0.push(fields.0);
    }

    fn on_record(&self, _: &Id, values: &Record<'_>, _: Context<'_, S>) {
        let mut fields = Fields("record".to_owned());
        values.record(&mut fields);
        self.0.push(fields.0);
    }

    fn on_event(&self, event: &Event<'_>, _: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields(format!("{} {}", meta.level(), meta.target()));
        event.record(&mut fields);
        self.0.push(fields.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_level_and_span_field_is_recorded() {
        let capture = LogCapture::global();
        let span = tracing::trace_span!("connecting", url = "amqp://u@h");
        span.in_scope(|| tracing::trace!(detail = "deep-trace-marker", "x"));
        tracing::error!(error = %"error-marker");
        let text = capture.text();
        for marker in [
            "connecting url=amqp://u@h",
            "deep-trace-marker",
            "error-marker",
        ] {
            assert!(text.contains(marker), "{marker} missing from {text}");
        }
    }
}
