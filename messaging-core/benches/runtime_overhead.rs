//! CPU the consumer runtime adds per message, with the retry, dead-letter and idempotency
//! layers, over a bare receive-and-ack loop on the same in-memory broker, in one run.
//!
//! `cargo bench -p messaging-core --bench runtime_overhead`
//!
//! Both sides run on a single-threaded tokio runtime (so elapsed time is CPU time of one core)
//! and consume the same pre-published messages. Median of 5 runs.

#![allow(missing_docs)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use messaging_core::handler::{HandlerError, Incoming, handler_fn};
use messaging_core::middleware::idempotency::{IdempotencyLayer, MemoryStore};
use messaging_core::middleware::retry::RetryPolicy;
use messaging_core::runtime::Consumer;
use messaging_core::{
    Delivery, DynPublisher, EventBuilder, Publisher, SubscribeOptions, Subscriber, Subscription,
};
use messaging_testkit::MemoryBroker;
use messaging_testkit::bench::{Better, Comparison, Report, median};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const MESSAGES: usize = 200_000;
const RUNS: usize = 5;

async fn filled_broker() -> MemoryBroker {
    let broker = MemoryBroker::builder().queue_capacity(MESSAGES * 2).build();
    // Create the group, then fill it.
    drop(
        broker
            .subscriber()
            .subscribe("bench", SubscribeOptions::new("g"))
            .await
            .expect("subscribe"),
    );
    let template = EventBuilder::new("bench", "bench.event")
        .bytes(None, vec![7u8; 100])
        .build()
        .expect("event");
    let publisher = broker.publisher();
    for chunk in 0..MESSAGES / 1000 {
        let events = (0..1000)
            .map(|i| {
                let mut e = template.clone();
                messaging_core::AttributesWriter::set_id(&mut e, format!("e{}", chunk * 1000 + i));
                e
            })
            .collect();
        publisher
            .publish_batch("bench", events)
            .await
            .expect("publish");
    }
    broker
}

async fn bare(broker: MemoryBroker) -> Duration {
    let mut sub = broker
        .subscriber()
        .subscribe("bench", SubscribeOptions::new("g").prefetch(256))
        .await
        .expect("subscribe");
    let handled = AtomicUsize::new(0);
    let start = Instant::now();
    let mut n = 0;
    while n < MESSAGES {
        let batch = sub.recv_batch(256).await.expect("recv");
        n += batch.len();
        for d in batch {
            std::hint::black_box(d.event().expect("decodes"));
            handled.fetch_add(1, Ordering::Relaxed);
            d.ack().await.expect("ack");
        }
    }
    start.elapsed()
}

async fn runtime(broker: MemoryBroker, idempotent: bool) -> Duration {
    let handled = Arc::new(AtomicUsize::new(0));
    let finished = Arc::new(tokio::sync::Notify::new());
    let (h, f) = (handled.clone(), finished.clone());
    let handler = handler_fn(move |msg: Incoming| {
        let (h, f) = (h.clone(), f.clone());
        async move {
            std::hint::black_box(msg.event());
            if h.fetch_add(1, Ordering::Relaxed) + 1 == MESSAGES {
                f.notify_one();
            }
            Ok::<(), HandlerError>(())
        }
    });
    let publisher: Arc<dyn DynPublisher> = Arc::new(broker.publisher());
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher,
        "bench",
        SubscribeOptions::new("g").prefetch(256),
    )
    .retry(RetryPolicy::default())
    .concurrency(256);
    let start = Instant::now();
    if !idempotent {
        consumer
            .build(handler)
            .run(async move { finished.notified().await })
            .await
            .expect("run");
        return start.elapsed();
    }
    let consumer = consumer.build_idempotent(
        IdempotencyLayer::new(Arc::new(MemoryStore::with_capacity(MESSAGES))),
        handler,
    );
    consumer
        .run(async move { finished.notified().await })
        .await
        .expect("run");
    start.elapsed()
}

fn main() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let per = |d: Duration| d.as_nanos() as f64 / MESSAGES as f64;
    let mut report = Report::new(
        "runtime_overhead",
        "Consumer runtime overhead",
        "cargo bench -p messaging-core --bench runtime_overhead",
    );
    report.setup(format!(
        "CPU per message on one core (single-threaded tokio runtime): {MESSAGES} messages of 100 B \
         pre-published to the in-memory broker, {RUNS} runs, the three loops interleaved in each run"
    ));
    report.setup(
        "baseline: a bare `recv_batch(256)` + decode + `ack` loop; no tracing subscriber or metrics \
         recorder installed",
    );
    let mut plain = Comparison::new("runtime + retry + dead-letter", "ns/msg", Better::Lower)
        .baseline_label("bare recv + ack loop");
    let mut idem = Comparison::new(
        "runtime + retry + dead-letter + idempotency (`MemoryStore`)",
        "ns/msg",
        Better::Lower,
    )
    .baseline_label("bare recv + ack loop");
    for _ in 0..RUNS {
        let bare_t = per(rt.block_on(async { bare(filled_broker().await).await }));
        let plain_t = per(rt.block_on(async { runtime(filled_broker().await, false).await }));
        let idem_t = per(rt.block_on(async { runtime(filled_broker().await, true).await }));
        plain.add(bare_t, plain_t);
        idem.add(bare_t, idem_t);
    }
    let added = median(&plain.framework) - median(&plain.baseline);
    report.note(format!(
        "The runtime, retry and dead-letter layers add {:.0} ns per message over the bare loop.",
        added
    ));
    report.push(plain);
    report.push(idem);
    report.finish();
}
