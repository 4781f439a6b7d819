//! What the framework emits, captured with OpenTelemetry's in-memory exporters (feature
//! `opentelemetry`), for tests that assert span and metric names, attributes and links.
//!
//! [`capture`] installs, once per process, a global `tracing` subscriber that turns spans
//! into OpenTelemetry spans, and a global `metrics` recorder
//! ([`OpenTelemetryRecorder`]) into an OpenTelemetry meter; both export into memory. Tests in
//! one binary share them, so each asserts on its own uniquely named topics.
//! [`SpanRecord`] and [`MetricRecord`] serialize, so a child process can hand its spans to
//! the test that started it.

use std::collections::BTreeMap;
use std::sync::OnceLock;

use messaging_core::telemetry::{OpenTelemetryRecorder, SCOPE};
use opentelemetry::Value;
use opentelemetry::metrics::MeterProvider as _;
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::metrics::data::{AggregatedMetrics, MetricData};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use serde::{Deserialize, Serialize};
use tracing_subscriber::layer::SubscriberExt as _;

/// The process's span and metric capture.
pub struct Capture {
    spans: InMemorySpanExporter,
    tracer: SdkTracerProvider,
    metrics: InMemoryMetricExporter,
    meter: SdkMeterProvider,
}

impl std::fmt::Debug for Capture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Capture").finish_non_exhaustive()
    }
}

/// The process's capture, installed on first use.
///
/// # Panics
///
/// If another global `tracing` subscriber or `metrics` recorder was installed before.
pub fn capture() -> &'static Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE.get_or_init(|| {
        let spans = InMemorySpanExporter::default();
        let tracer = SdkTracerProvider::builder()
            .with_simple_exporter(spans.clone())
            .build();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(tracer.tracer(SCOPE)));
        tracing::subscriber::set_global_default(subscriber)
            .expect("no other global tracing subscriber is installed");
        let metrics = InMemoryMetricExporter::default();
        let meter = SdkMeterProvider::builder()
            .with_periodic_exporter(metrics.clone())
            .build();
        metrics::set_global_recorder(OpenTelemetryRecorder::new(meter.meter(SCOPE)))
            .expect("no other global metrics recorder is installed");
        messaging_core::telemetry::describe_metrics();
        Capture {
            spans,
            tracer,
            metrics,
            meter,
        }
    })
}

impl Capture {
    /// Every span ended so far, oldest first.
    pub fn spans(&self) -> Vec<SpanRecord> {
        let _ = self.tracer.force_flush();
        self.spans
            .get_finished_spans()
            .unwrap_or_default()
            .into_iter()
            .map(|s| SpanRecord {
                name: s.name.into_owned(),
                kind: match s.span_kind {
                    SpanKind::Client => "client",
                    SpanKind::Server => "server",
                    SpanKind::Producer => "producer",
                    SpanKind::Consumer => "consumer",
                    SpanKind::Internal => "internal",
                }
                .to_owned(),
                trace_id: s.span_context.trace_id().to_string(),
                span_id: s.span_context.span_id().to_string(),
                parent_span_id: s.parent_span_id.to_string(),
                attributes: s
                    .attributes
                    .iter()
                    .map(|kv| (kv.key.to_string(), value(&kv.value)))
                    .collect(),
                links: s
                    .links
                    .links
                    .iter()
                    .map(|l| format!("{}-{}", l.span_context.trace_id(), l.span_context.span_id()))
                    .collect(),
                events: s.events.events.iter().map(|e| e.name.to_string()).collect(),
                error: matches!(s.status, opentelemetry::trace::Status::Error { .. }),
            })
            .collect()
    }

    /// The metrics as last exported (cumulative), after exporting now.
    pub fn metrics(&self) -> Vec<MetricRecord> {
        let _ = self.meter.force_flush();
        let exported = self.metrics.get_finished_metrics().unwrap_or_default();
        let Some(last) = exported.last() else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for scope in last.scope_metrics() {
            for m in scope.metrics() {
                let mut record = MetricRecord {
                    name: m.name().to_owned(),
                    unit: m.unit().to_owned(),
                    kind: String::new(),
                    points: Vec::new(),
                };
                let attrs = |it: &mut dyn Iterator<Item = &opentelemetry::KeyValue>| {
                    it.map(|kv| (kv.key.to_string(), value(&kv.value)))
                        .collect::<BTreeMap<_, _>>()
                };
                match m.data() {
                    AggregatedMetrics::U64(MetricData::Sum(sum)) => {
                        record.kind = "counter".into();
                        for p in sum.data_points() {
                            record.points.push(Point {
                                attributes: attrs(&mut p.attributes()),
                                value: p.value() as f64,
                            });
                        }
                    }
                    AggregatedMetrics::F64(MetricData::Histogram(h)) => {
                        record.kind = "histogram".into();
                        for p in h.data_points() {
                            record.points.push(Point {
                                attributes: attrs(&mut p.attributes()),
                                value: p.count() as f64,
                            });
                        }
                    }
                    AggregatedMetrics::F64(MetricData::Gauge(g)) => {
                        record.kind = "gauge".into();
                        for p in g.data_points() {
                            record.points.push(Point {
                                attributes: attrs(&mut p.attributes()),
                                value: p.value(),
                            });
                        }
                    }
                    _ => record.kind = "other".into(),
                }
                out.push(record);
            }
        }
        out
    }
}

fn value(v: &Value) -> String {
    match v {
        Value::String(s) => s.as_str().to_owned(),
        other => other.to_string(),
    }
}

/// One ended span, flattened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SpanRecord {
    /// The span name (`send orders`).
    pub name: String,
    /// `producer`, `consumer`, `client`, `server` or `internal`.
    pub kind: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// 16 hex digits; all zero for a root span.
    pub parent_span_id: String,
    /// Attributes, as strings.
    pub attributes: BTreeMap<String, String>,
    /// Linked contexts, as `{trace_id}-{span_id}`.
    pub links: Vec<String>,
    /// Event names, in order.
    pub events: Vec<String>,
    /// The status is Error.
    pub error: bool,
}

impl SpanRecord {
    /// The attribute `key`, if set.
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    /// This span's context as a link (`{trace_id}-{span_id}`).
    pub fn context(&self) -> String {
        format!("{}-{}", self.trace_id, self.span_id)
    }
}

/// One metric with its data points, flattened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricRecord {
    /// The metric name.
    pub name: String,
    /// Its unit.
    pub unit: String,
    /// `counter`, `histogram`, `gauge` or `other`.
    pub kind: String,
    /// Its data points.
    pub points: Vec<Point>,
}

/// One data point: its attributes and its value (a counter's sum, a histogram's count, a
/// gauge's value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Attributes, as strings.
    pub attributes: BTreeMap<String, String>,
    /// The value.
    pub value: f64,
}

impl MetricRecord {
    /// The sum of the values of the points whose attributes include every `(key, value)`.
    pub fn total(&self, matching: &[(&str, &str)]) -> f64 {
        self.points
            .iter()
            .filter(|p| {
                matching
                    .iter()
                    .all(|(k, v)| p.attributes.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|p| p.value)
            .sum()
    }
}
