//! Publish -> consume -> ack throughput of the in-memory broker against raw `tokio::sync::mpsc`
//! moving the same payloads, in one run.
//!
//! `cargo bench -p messaging-testkit --bench memory_throughput`
//!
//! Both sides create one message per iteration from a template (the broker side clones an
//! event of the given data size; the raw side clones a `Vec<u8>` of that size), a producer task
//! sends, a consumer task receives (the broker side also acks every delivery). Each figure is
//! the median of 5 runs of `MESSAGES` messages, on a 2-worker tokio runtime; ratios are taken per
//! run. `MESSAGING_BENCH_OUT=dir` also writes `dir/memory_throughput.json`.
//!
//! Two baselines: raw `mpsc<Vec<u8>>` (bytes, what a hand-rolled channel would move) and raw
//! `mpsc<Event>` (the same CloudEvents the broker moves). "single" publishes and receives one
//! message per call; "batch" uses `publish_batch`/`recv_batch` and the raw side `recv_many`,
//! 256 at a time.
//!
//! Both sides run on mimalloc: with glibc malloc, freeing on the consumer thread what the
//! producer thread allocated contends on malloc's arena locks, and that, not the broker,
//! dominates every figure.

#![allow(missing_docs)]

use std::time::{Duration, Instant};

use messaging_core::{
    Delivery, EventBuilder, Publisher, SubscribeOptions, Subscriber, Subscription,
};
use messaging_testkit::MemoryBroker;
use messaging_testkit::bench::{Better, Comparison, Report};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MESSAGES: usize = 1_000_000;
const BATCH: usize = 256;
const RUNS: usize = 5;

fn template(size: usize) -> messaging_core::Event {
    EventBuilder::new("bench", "bench.event")
        .bytes(None, vec![7u8; size])
        .build()
        .expect("event")
}

async fn raw_mpsc<T: Clone + Send + 'static>(template: T, batched: bool) -> Duration {
    let (tx, mut rx) = tokio::sync::mpsc::channel::<T>(BATCH * 4);
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        for _ in 0..MESSAGES {
            tx.send(template.clone()).await.expect("receiver alive");
        }
    });
    let consumer = tokio::spawn(async move {
        let mut n = 0;
        let mut buf = Vec::with_capacity(BATCH);
        while n < MESSAGES {
            if batched {
                n += rx.recv_many(&mut buf, BATCH).await;
                buf.clear();
            } else {
                let m = rx.recv().await.expect("sender alive");
                std::hint::black_box(&m);
                n += 1;
            }
        }
    });
    producer.await.expect("producer");
    consumer.await.expect("consumer");
    start.elapsed()
}

async fn broker(size: usize, batched: bool) -> Duration {
    let broker = MemoryBroker::new();
    let mut sub = broker
        .subscriber()
        .subscribe("bench", SubscribeOptions::new("g").prefetch(BATCH * 4))
        .await
        .expect("subscribe");
    let template = template(size);
    let publisher = broker.publisher();
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        if batched {
            for _ in 0..MESSAGES / BATCH {
                let events = (0..BATCH).map(|_| template.clone()).collect();
                publisher
                    .publish_batch("bench", events)
                    .await
                    .expect("publish");
            }
            let rest = (0..MESSAGES % BATCH).map(|_| template.clone()).collect();
            publisher
                .publish_batch("bench", rest)
                .await
                .expect("publish");
        } else {
            for _ in 0..MESSAGES {
                publisher
                    .publish("bench", template.clone())
                    .await
                    .expect("publish");
            }
        }
    });
    let consumer = tokio::spawn(async move {
        let mut n = 0;
        while n < MESSAGES {
            let batch = sub
                .recv_batch(if batched { BATCH } else { 1 })
                .await
                .expect("recv");
            n += batch.len();
            for d in batch {
                d.ack().await.expect("ack");
            }
        }
    });
    producer.await.expect("producer");
    consumer.await.expect("consumer");
    start.elapsed()
}

fn rate(d: Duration) -> f64 {
    MESSAGES as f64 / d.as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut report = Report::new(
        "memory_throughput",
        "In-memory broker throughput",
        "cargo bench -p messaging-testkit --bench memory_throughput",
    );
    report.setup(format!(
        "publish → consume → ack through `MemoryBroker` against raw `tokio::sync::mpsc` moving \
         the same payloads; {MESSAGES} messages per run, {RUNS} runs with the three sides \
         interleaved (order rotating), 2 tokio workers, mimalloc on every side"
    ));
    report.setup(
        "baselines: `mpsc<Vec<u8>>` (bytes, what a hand-rolled channel moves) and `mpsc<Event>` \
         (the same CloudEvents the broker moves); batch mode is `publish_batch`/`recv_batch` \
         against `recv_many`, 256 at a time",
    );
    for size in [100, 1024] {
        for batched in [false, true] {
            let mode = if batched { "batch 256" } else { "single" };
            let case = format!("{size} B, {mode}");
            let mut vs_bytes = Comparison::new(case.clone(), "msg/s", Better::Higher)
                .baseline_label("`mpsc<Vec<u8>>`")
                .framework_label("`MemoryBroker`");
            let mut vs_events = Comparison::new(case, "msg/s", Better::Higher)
                .baseline_label("`mpsc<Event>`")
                .framework_label("`MemoryBroker`");
            if batched {
                vs_events = vs_events.goal(0.5);
            }
            let bytes = vec![7u8; size];
            for run in 0..RUNS {
                let mut b = 0.0;
                let mut e = 0.0;
                let mut o = 0.0;
                for side in 0..3 {
                    match (side + run) % 3 {
                        0 => b = rate(rt.block_on(raw_mpsc(bytes.clone(), batched))),
                        1 => e = rate(rt.block_on(raw_mpsc(template(size), batched))),
                        _ => o = rate(rt.block_on(broker(size, batched))),
                    }
                }
                vs_bytes.add(b, o);
                vs_events.add(e, o);
            }
            report.push(vs_bytes);
            report.push(vs_events);
        }
    }
    report.finish();
}
