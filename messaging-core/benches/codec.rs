//! What the CloudEvents codec costs per message: nanoseconds and heap allocations to encode and
//! decode one event, per binding (Kafka, AMQP) and content mode (binary, structured).
//!
//! `cargo bench -p messaging-core --bench codec`
//!
//! The event is what a service typically sends: a UUID `id`, `source`, `type`, `time`,
//! `datacontenttype: application/json` and 100 B of JSON data. Each decode starts from the
//! bytes the same binding's encode produced, as a consumer receives them: header names and
//! values borrowed, the body borrowed (Kafka, whose client lends the message) or owned (AMQP
//! and SQS, whose clients hand the body over, so it becomes the event's data without a copy).
//! Time is the median of `RUNS` runs of `ITERATIONS` operations on one thread; allocations are
//! counted exactly, for one operation, by an instrumented allocator around the system
//! allocator (its counters add a few nanoseconds per allocation to the times).

#![allow(missing_docs)]

use std::hint::black_box;
use std::time::Instant;

use messaging_core::codec::Encoded;
use messaging_core::{Binding, ContentMode, Event, EventBuilder};
use messaging_testkit::bench::{Better, Measurement, Report};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};

#[global_allocator]
static GLOBAL: &StatsAlloc<std::alloc::System> = &INSTRUMENTED_SYSTEM;

const ITERATIONS: usize = 200_000;
const RUNS: usize = 7;

fn event() -> Event {
    let data = serde_json::json!({
        "orderId": "ORD-5678",
        "customer": "C-1234",
        "amount": 99.99,
        "currency": "USD",
        "items": 3,
        "express": false
    });
    let event = EventBuilder::new("/orders/eu-west-1", "com.example.order.created")
        .id("6f1c2e0a-8d5b-4b7e-9a3f-2c1d0e9b8a7f")
        .json(&data)
        .build()
        .expect("event");
    let len = serde_json::to_vec(&data).expect("json").len();
    assert!((90..=110).contains(&len), "data is about 100 B, not {len}");
    event
}

/// Nanoseconds per call of `op`, one sample per run, and the allocations of one call.
/// `setup` makes what the calls of one run consume (say, a fresh body each), untimed.
fn measure<S, T>(mut setup: impl FnMut() -> S, mut op: impl FnMut(&mut S) -> T) -> (Vec<f64>, f64) {
    let mut state = setup();
    for _ in 0..ITERATIONS / 10 {
        black_box(op(&mut state));
    }
    let region = Region::new(GLOBAL);
    black_box(op(&mut state));
    let allocations = region.change().allocations as f64;
    drop(state);
    let runs = (0..RUNS)
        .map(|_| {
            let mut state = setup();
            let start = Instant::now();
            for _ in 0..ITERATIONS {
                black_box(op(&mut state));
            }
            start.elapsed().as_nanos() as f64 / ITERATIONS as f64
        })
        .collect();
    (runs, allocations)
}

fn header_pairs(encoded: &Encoded<'_>) -> Vec<(String, Vec<u8>)> {
    encoded
        .headers
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_vec()))
        .collect()
}

fn main() {
    let event = event();
    let mut report = Report::new(
        "codec",
        "CloudEvents codec",
        "cargo bench -p messaging-core --bench codec",
    );
    report.setup(format!(
        "one event with a UUID id, source, type, time, datacontenttype application/json and 100 B \
         of JSON data; median of {RUNS} runs of {ITERATIONS} operations on one thread; allocations \
         counted for one operation"
    ));
    if wanted("floor") {
        floor(&mut report, &event);
    }
    for (name, binding) in [("Kafka", Binding::kafka()), ("AMQP", Binding::amqp())] {
        for mode in [ContentMode::Binary, ContentMode::Structured] {
            let mode_name = match mode {
                ContentMode::Binary => "binary",
                ContentMode::Structured => "structured",
            };
            if !wanted(&format!("{name} {mode_name}")) {
                continue;
            }
            let encoded = binding.encode(&event, mode).expect("encode");
            let content_type = encoded.content_type.as_deref().map(str::to_owned);
            let headers = header_pairs(&encoded);
            let body = encoded.body.to_vec();
            drop(encoded);

            let (ns, allocs) = measure(
                || (),
                |_| {
                    let e = binding.encode(black_box(&event), mode).expect("encode");
                    e.headers.len() + e.body.len()
                },
            );
            push(
                &mut report,
                &format!("{name} {mode_name} encode"),
                ns,
                allocs,
                None,
            );

            let ct = content_type.as_deref();
            let pairs = || headers.iter().map(|(k, v)| (k.as_str(), v.as_slice()));
            let decoded = binding.decode_parts(ct, pairs(), &body).expect("decodes");
            same(&decoded, &event, &format!("{name} {mode_name}"));
            let (ns, allocs) = measure(
                || (),
                |_| binding.decode_parts(ct, pairs(), black_box(&body)),
            );
            let goal = (mode == ContentMode::Binary).then_some((300.0, 5.0));
            push(
                &mut report,
                &format!("{name} {mode_name} decode, body borrowed"),
                ns,
                allocs,
                goal,
            );

            // Owned bodies: one fresh copy per operation, made before the clock starts.
            let (ns, allocs) = measure(
                || vec![body.clone(); ITERATIONS + 1],
                |bodies| {
                    let b = bodies.pop().expect("a body per operation");
                    binding
                        .decode_parts_owned(ct, pairs(), b)
                        .map_err(|(e, _)| e)
                },
            );
            let goal = (mode == ContentMode::Binary).then_some((300.0, 4.0));
            push(
                &mut report,
                &format!("{name} {mode_name} decode, body owned"),
                ns,
                allocs,
                goal,
            );
        }
    }
    report.finish();
}

/// `CODEC_BENCH_ONLY=binary` (say) runs the cases whose name contains it: for a profile.
fn wanted(case: &str) -> bool {
    std::env::var("CODEC_BENCH_ONLY").map_or(true, |only| case.contains(&only))
}

/// The least any decode into a `cloudevents::Event` does, with nothing of a binding: UTF-8
/// checks of the four attribute values, chrono's RFC 3339 parse of `time`, cloudevents-sdk's
/// builder, and a copy of the borrowed body. The codec's binary decode is measured against it.
fn floor(report: &mut Report, event: &Event) {
    use messaging_core::chrono::{DateTime, SecondsFormat, Utc};
    use messaging_core::cloudevents::event::{EventBuilder as _, EventBuilderV10};
    use messaging_core::{AttributesReader as _, EventExt as _};

    let time = event
        .time()
        .expect("a time")
        .to_rfc3339_opts(SecondsFormat::AutoSi, true);
    let values: [Vec<u8>; 4] =
        [event.id(), event.source(), event.ty(), &time].map(|v| v.as_bytes().to_vec());
    let body =
        serde_json::to_vec(&event.data_json::<serde_json::Value>().expect("json")).expect("json");
    let (ns, allocs) = measure(
        || (),
        |_| {
            let [id, source, ty, time] = black_box(&values)
                .each_ref()
                .map(|v| std::str::from_utf8(v));
            let time = DateTime::parse_from_rfc3339(time.ok()?).ok()?;
            EventBuilderV10::new()
                .id(id.ok()?)
                .source(source.ok()?)
                .ty(ty.ok()?)
                .time(time.with_timezone(&Utc))
                .data("application/json", black_box(&body).to_vec())
                .build()
                .ok()
        },
    );
    push(
        report,
        "floor: cloudevents-sdk builds the same event from its values",
        ns,
        allocs,
        None,
    );
}

/// The same event, whichever representation its JSON data has after the trip.
fn same(decoded: &Event, sent: &Event, what: &str) {
    use messaging_core::{AttributesReader as _, EventExt as _};
    assert_eq!(decoded.id(), sent.id(), "{what}: id");
    assert_eq!(decoded.source(), sent.source(), "{what}: source");
    assert_eq!(decoded.ty(), sent.ty(), "{what}: type");
    assert_eq!(decoded.time(), sent.time(), "{what}: time");
    assert_eq!(
        decoded.datacontenttype(),
        sent.datacontenttype(),
        "{what}: datacontenttype"
    );
    assert_eq!(
        decoded.data_json::<serde_json::Value>().expect("json data"),
        sent.data_json::<serde_json::Value>().expect("json data"),
        "{what}: data"
    );
}

fn push(report: &mut Report, case: &str, ns: Vec<f64>, allocs: f64, goal: Option<(f64, f64)>) {
    let mut time = Measurement::new(format!("{case}: time"), "ns", Better::Lower, ns);
    let mut count = Measurement::new(
        format!("{case}: allocations"),
        "allocations",
        Better::Lower,
        vec![allocs],
    );
    if let Some((ns, n)) = goal {
        time = time.goal(ns);
        count = count.goal(n);
    }
    report.measure(time);
    report.measure(count);
}
