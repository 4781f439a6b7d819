//! A `metrics` recorder that records into OpenTelemetry instruments (feature `opentelemetry`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, KeyName, Metadata,
    SharedString, Unit,
};
use opentelemetry::KeyValue;
use opentelemetry::metrics::Meter;

use super::semconv;

/// Records every metric of the [`metrics`] facade as an OpenTelemetry instrument of `meter`:
/// counters as `Counter<u64>`, gauges as `Gauge<f64>`, histograms as `Histogram<f64>`, with
/// the labels as attributes. The conventional metrics get the conventions' units (`s`,
/// `{message}`) and histogram buckets ([`semconv::DURATION_BUCKETS`]); others get the unit
/// they were described with.
///
/// ```
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use opentelemetry::metrics::MeterProvider as _;
/// let provider = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
/// let recorder = messaging_core::telemetry::OpenTelemetryRecorder::new(
///     provider.meter(messaging_core::telemetry::SCOPE),
/// );
/// metrics::set_global_recorder(recorder)?;
/// # Ok(()) }
/// ```
pub struct OpenTelemetryRecorder {
    meter: Meter,
    units: Mutex<HashMap<String, (Unit, SharedString)>>,
    counters: Mutex<HashMap<Key, Arc<OtelCounter>>>,
    gauges: Mutex<HashMap<Key, Arc<OtelGauge>>>,
    histograms: Mutex<HashMap<Key, Arc<OtelHistogram>>>,
}

impl std::fmt::Debug for OpenTelemetryRecorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenTelemetryRecorder")
            .finish_non_exhaustive()
    }
}

impl OpenTelemetryRecorder {
    /// A recorder into `meter`.
    pub fn new(meter: Meter) -> Self {
        Self {
            meter,
            units: Mutex::default(),
            counters: Mutex::default(),
            gauges: Mutex::default(),
            histograms: Mutex::default(),
        }
    }

    fn describe(&self, key: &KeyName, unit: Option<Unit>, description: SharedString) {
        if let Some(unit) = unit {
            crate::sync::lock(&self.units).insert(key.as_str().to_owned(), (unit, description));
        }
    }

    /// The OpenTelemetry unit and description of `name`.
    fn unit(&self, name: &str) -> (Option<String>, Option<String>) {
        let described = crate::sync::lock(&self.units).get(name).cloned();
        let description = described.as_ref().map(|(_, d)| d.to_string());
        let unit = match name {
            semconv::METRIC_SENT_MESSAGES | semconv::METRIC_CONSUMED_MESSAGES => {
                Some("{message}".to_owned())
            }
            semconv::METRIC_OPERATION_DURATION | semconv::METRIC_PROCESS_DURATION => {
                Some("s".to_owned())
            }
            _ => described.and_then(|(u, _)| ucum(u)).map(str::to_owned),
        };
        (unit, description)
    }
}

/// The UCUM code of a `metrics` unit.
fn ucum(unit: Unit) -> Option<&'static str> {
    Some(match unit {
        Unit::Seconds => "s",
        Unit::Milliseconds => "ms",
        Unit::Microseconds => "us",
        Unit::Nanoseconds => "ns",
        Unit::Bytes => "By",
        Unit::Percent => "%",
        Unit::Count => "1",
        _ => return None,
    })
}

fn attributes(key: &Key) -> Vec<KeyValue> {
    key.labels()
        .map(|l| KeyValue::new(l.key().to_owned(), l.value().to_owned()))
        .collect()
}

impl metrics::Recorder for OpenTelemetryRecorder {
    fn describe_counter(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(&key, unit, description);
    }

    fn describe_gauge(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(&key, unit, description);
    }

    fn describe_histogram(&self, key: KeyName, unit: Option<Unit>, description: SharedString) {
        self.describe(&key, unit, description);
    }

    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut counters = crate::sync::lock(&self.counters);
        if let Some(c) = counters.get(key) {
            return Counter::from_arc(c.clone());
        }
        let (unit, description) = self.unit(key.name());
        let mut b = self.meter.u64_counter(key.name().to_owned());
        if let Some(u) = unit {
            b = b.with_unit(u);
        }
        if let Some(d) = description {
            b = b.with_description(d);
        }
        let c = Arc::new(OtelCounter {
            counter: b.build(),
            attributes: attributes(key),
            last: AtomicU64::new(0),
        });
        counters.insert(key.clone(), c.clone());
        Counter::from_arc(c)
    }

    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut gauges = crate::sync::lock(&self.gauges);
        if let Some(g) = gauges.get(key) {
            return Gauge::from_arc(g.clone());
        }
        let (unit, description) = self.unit(key.name());
        let mut b = self.meter.f64_gauge(key.name().to_owned());
        if let Some(u) = unit {
            b = b.with_unit(u);
        }
        if let Some(d) = description {
            b = b.with_description(d);
        }
        let g = Arc::new(OtelGauge {
            gauge: b.build(),
            attributes: attributes(key),
            value: Mutex::new(0.0),
        });
        gauges.insert(key.clone(), g.clone());
        Gauge::from_arc(g)
    }

    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut histograms = crate::sync::lock(&self.histograms);
        if let Some(h) = histograms.get(key) {
            return Histogram::from_arc(h.clone());
        }
        let (unit, description) = self.unit(key.name());
        let seconds = unit.as_deref() == Some("s");
        let mut b = self.meter.f64_histogram(key.name().to_owned());
        if let Some(u) = unit {
            b = b.with_unit(u);
        }
        if let Some(d) = description {
            b = b.with_description(d);
        }
        if seconds {
            b = b.with_boundaries(semconv::DURATION_BUCKETS.to_vec());
        }
        let h = Arc::new(OtelHistogram {
            histogram: b.build(),
            attributes: attributes(key),
        });
        histograms.insert(key.clone(), h.clone());
        Histogram::from_arc(h)
    }
}

struct OtelCounter {
    counter: opentelemetry::metrics::Counter<u64>,
    attributes: Vec<KeyValue>,
    last: AtomicU64,
}

impl CounterFn for OtelCounter {
    fn increment(&self, value: u64) {
        self.last.fetch_add(value, Ordering::Relaxed);
        self.counter.add(value, &self.attributes);
    }

    fn absolute(&self, value: u64) {
        let before = self.last.fetch_max(value, Ordering::Relaxed);
        if value > before {
            self.counter.add(value - before, &self.attributes);
        }
    }
}

struct OtelGauge {
    gauge: opentelemetry::metrics::Gauge<f64>,
    attributes: Vec<KeyValue>,
    /// The value; updated and recorded under the lock, so records are never out of order.
    value: Mutex<f64>,
}

impl OtelGauge {
    fn update(&self, f: impl Fn(f64) -> f64) {
        let mut value = crate::sync::lock(&self.value);
        *value = f(*value);
        self.gauge.record(*value, &self.attributes);
    }
}

impl GaugeFn for OtelGauge {
    fn increment(&self, value: f64) {
        self.update(|v| v + value);
    }

    fn decrement(&self, value: f64) {
        self.update(|v| v - value);
    }

    fn set(&self, value: f64) {
        self.update(|_| value);
    }
}

struct OtelHistogram {
    histogram: opentelemetry::metrics::Histogram<f64>,
    attributes: Vec<KeyValue>,
}

impl HistogramFn for OtelHistogram {
    fn record(&self, value: f64) {
        self.histogram.record(value, &self.attributes);
    }
}
