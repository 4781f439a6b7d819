//! Raw aws-sdk-sqs calls against the adapter on the same endpoint, in one run: send with
//! `SendMessageBatch`, then receive with `ReceiveMessage` and delete with
//! `DeleteMessageBatch`, 100 B and 1 KiB payloads.
//!
//! `bash scripts/brokers/moto.sh && cargo bench -p messaging-sqs --bench sqs_throughput`
//! (endpoint `http://127.0.0.1:4566`, or `SQS_BENCH_ENDPOINT`)
//!
//! Both sides use one standard queue each (the adapter in point-to-point topology, so both
//! send straight to SQS), and the same concurrency: sends go out in windows of 160 messages,
//! 16 batch calls of 10 in flight at once (raw: 16 `SendMessageBatch` joined; adapter: one
//! `publish_batch` of 160). Consumers receive 10 per call, one receive in flight, and delete
//! each received batch in the background while receiving the next (raw: a spawned
//! `DeleteMessageBatch`; adapter: `recv_batch(10)`, then the 10 acks joined in a spawned task,
//! which the adapter's settler coalesces into `DeleteMessageBatch` calls). Both sides send the
//! same bytes: the raw side sends the adapter's wire form (the structured-mode CloudEvents JSON
//! of `size` bytes of text data and its `content-type` attribute), so the ratio measures the
//! adapter's own cost. An interceptor on each client counts the API calls, so the report gives
//! messages per call. `RUNS` runs, ratios per run, alternating which side goes first (moto slows down
//! as its state grows, which would otherwise favour the side that runs first).
//! `MESSAGING_BENCH_OUT=dir` also writes `dir/sqs_throughput.json`.

#![allow(missing_docs)]

use std::sync::Arc;

use messaging_testkit::bench::{Better, Comparison, Report};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use aws_sdk_sqs::config::interceptors::BeforeSerializationInterceptorContextRef;
use aws_sdk_sqs::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_sqs::error::BoxError;
use aws_sdk_sqs::operation::delete_message_batch::DeleteMessageBatchInput;
use aws_sdk_sqs::operation::receive_message::ReceiveMessageInput;
use aws_sdk_sqs::operation::send_message_batch::SendMessageBatchInput;
use aws_sdk_sqs::types::{DeleteMessageBatchRequestEntry, SendMessageBatchRequestEntry};
use futures_util::future::join_all;
use messaging_core::{
    Delivery, EventBuilder, Publisher, SubscribeOptions, Subscriber, Subscription,
};
use messaging_sqs::{SqsBroker, SqsConfig, Topology};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const WINDOW: usize = 160;
const RUNS: usize = 4;

/// Messages per run: `SQS_BENCH_MESSAGES` (default 480), rounded down to whole windows.
fn messages() -> usize {
    let n = std::env::var("SQS_BENCH_MESSAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(480usize);
    (n / WINDOW).max(1) * WINDOW
}

/// API calls by operation.
#[derive(Debug, Default)]
struct Calls {
    send: AtomicU64,
    receive: AtomicU64,
    delete: AtomicU64,
    other: AtomicU64,
}

impl Calls {
    fn take(&self) -> (u64, u64, u64) {
        (
            self.send.swap(0, Ordering::Relaxed),
            self.receive.swap(0, Ordering::Relaxed),
            self.delete.swap(0, Ordering::Relaxed),
        )
    }
}

#[derive(Debug, Clone)]
struct Counter(Arc<Calls>);

impl Intercept for Counter {
    fn name(&self) -> &'static str {
        "bench-call-counter"
    }

    fn read_before_execution(
        &self,
        context: &BeforeSerializationInterceptorContextRef<'_>,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let input = context.input();
        let c = &self.0;
        let slot = if input.downcast_ref::<SendMessageBatchInput>().is_some() {
            &c.send
        } else if input.downcast_ref::<ReceiveMessageInput>().is_some() {
            &c.receive
        } else if input.downcast_ref::<DeleteMessageBatchInput>().is_some() {
            &c.delete
        } else {
            &c.other
        };
        slot.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    fn read_before_transmit(
        &self,
        _context: &aws_sdk_sqs::config::interceptors::BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        Ok(())
    }
}

fn endpoint() -> String {
    std::env::var("SQS_BENCH_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

fn client(calls: Arc<Calls>) -> aws_sdk_sqs::Client {
    let conf = aws_sdk_sqs::Config::builder()
        .behavior_version(aws_sdk_sqs::config::BehaviorVersion::latest())
        .region(aws_sdk_sqs::config::Region::new("us-east-1"))
        .endpoint_url(endpoint())
        .credentials_provider(aws_sdk_sqs::config::Credentials::new(
            "test", "test", None, None, "bench",
        ))
        .interceptor(Counter(calls))
        .build();
    aws_sdk_sqs::Client::from_conf(conf)
}

fn unique(prefix: &str) -> String {
    format!("bench-{prefix}-{}", uuid::Uuid::new_v4().simple())
}

async fn create_queue(sqs: &aws_sdk_sqs::Client, name: &str) -> String {
    sqs.create_queue()
        .queue_name(name)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "no SQS endpoint at {} (run scripts/brokers/moto.sh): {}",
                endpoint(),
                aws_sdk_sqs::error::DisplayErrorContext(e)
            )
        })
        .queue_url()
        .expect("url")
        .to_owned()
}

/// The event both sides send: `size` bytes of text data.
fn template(size: usize) -> messaging_core::Event {
    EventBuilder::new("bench", "bench.event")
        .bytes(Some("text/plain"), "x".repeat(size).into_bytes())
        .build()
        .expect("event")
}

async fn raw_send(sqs: &aws_sdk_sqs::Client, url: &str, size: usize) -> Duration {
    // The same bytes the adapter puts on the wire: the structured-mode JSON event and its
    // `content-type` attribute, so the comparison measures the adapter, not the payload.
    let event = template(size);
    let binding = messaging_core::Binding::new("ce_");
    let encoded = binding
        .encode(&event, messaging_core::ContentMode::Structured)
        .expect("encode");
    let body = String::from_utf8(encoded.body.into_owned()).expect("json");
    let content_type = aws_sdk_sqs::types::MessageAttributeValue::builder()
        .data_type("String")
        .string_value(messaging_core::codec::STRUCTURED_CONTENT_TYPE)
        .build()
        .expect("attribute");
    let start = Instant::now();
    for _ in 0..messages() / WINDOW {
        let calls = (0..WINDOW / 10).map(|_| {
            let mut req = sqs.send_message_batch().queue_url(url);
            for i in 0..10 {
                req = req.entries(
                    SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(body.clone())
                        .message_attributes("content-type", content_type.clone())
                        .build()
                        .expect("entry"),
                );
            }
            req.send()
        });
        for r in join_all(calls).await {
            assert!(r.expect("send").failed().is_empty());
        }
    }
    start.elapsed()
}

async fn adapter_send(broker: &SqsBroker, queue: &str, size: usize) -> Duration {
    let publisher = broker.publisher();
    let template = template(size);
    let start = Instant::now();
    for _ in 0..messages() / WINDOW {
        let events = (0..WINDOW).map(|_| template.clone()).collect();
        publisher
            .publish_batch(queue, events)
            .await
            .expect("publish");
    }
    start.elapsed()
}

async fn raw_consume(sqs: &aws_sdk_sqs::Client, url: &str) -> Duration {
    let start = Instant::now();
    let mut n = 0;
    let mut deletes = Vec::new();
    while n < messages() {
        let out = sqs
            .receive_message()
            .queue_url(url)
            .max_number_of_messages(10)
            .wait_time_seconds(1)
            .send()
            .await
            .expect("receive");
        let messages = out.messages.unwrap_or_default();
        if messages.is_empty() {
            continue;
        }
        n += messages.len();
        let mut req = sqs.delete_message_batch().queue_url(url);
        for (i, m) in messages.iter().enumerate() {
            std::hint::black_box(m.body());
            req = req.entries(
                DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(m.receipt_handle().expect("receipt"))
                    .build()
                    .expect("entry"),
            );
        }
        deletes.push(tokio::spawn(req.send()));
    }
    for d in deletes {
        assert!(d.await.expect("task").expect("delete").failed().is_empty());
    }
    start.elapsed()
}

async fn adapter_consume(broker: &SqsBroker, queue: &str) -> Duration {
    let mut sub = broker
        .subscriber()
        .subscribe(queue, SubscribeOptions::new("g").prefetch(100))
        .await
        .expect("subscribe");
    let start = Instant::now();
    let mut n = 0;
    let mut acks = Vec::new();
    while n < messages() {
        let batch = sub.recv_batch(10).await.expect("recv");
        n += batch.len();
        for d in &batch {
            std::hint::black_box(d.event().expect("decodes"));
        }
        acks.push(tokio::spawn(join_all(batch.into_iter().map(Delivery::ack))));
    }
    for a in acks {
        for r in a.await.expect("task") {
            assert!(r.is_ok(), "ack failed");
        }
    }
    let t = start.elapsed();
    sub.close().await.expect("close");
    t
}

type Counts = (u64, u64, u64);

fn add(a: Counts, b: Counts) -> Counts {
    (a.0 + b.0, a.1 + b.1, a.2 + b.2)
}

/// One adapter run on a fresh queue: send time, consume time, calls.
async fn adapter_run(
    broker: &SqsBroker,
    calls: &Calls,
    size: usize,
) -> (Duration, Duration, Counts) {
    let queue = unique("adapter");
    // Declares the queue outside the timed part.
    let mut s = broker
        .subscriber()
        .subscribe(&queue, SubscribeOptions::new("g"))
        .await
        .expect("declare");
    s.close().await.expect("close");
    calls.take();
    let send = adapter_send(broker, &queue, size).await;
    let consume = adapter_consume(broker, &queue).await;
    let counts = calls.take();
    if let Ok(Some(url)) = broker.queue_url(&queue, "g").await {
        let _ = broker.sqs().delete_queue().queue_url(url).send().await;
    }
    (send, consume, counts)
}

fn rate(d: Duration) -> f64 {
    messages() as f64 / d.as_secs_f64()
}

fn per_call(messages: usize, calls: u64) -> f64 {
    messages as f64 / calls.max(1) as f64
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let raw_calls = Arc::new(Calls::default());
        let raw = client(raw_calls.clone());
        let adapter_calls = Arc::new(Calls::default());
        let broker = SqsBroker::from_clients(
            client(adapter_calls.clone()),
            aws_sdk_sns::Client::from_conf(
                aws_sdk_sns::Config::builder()
                    .behavior_version(aws_sdk_sns::config::BehaviorVersion::latest())
                    .region(aws_sdk_sns::config::Region::new("us-east-1"))
                    .endpoint_url(endpoint())
                    .build(),
            ),
            SqsConfig {
                topology: Topology::PointToPoint,
                wait_time: Duration::from_secs(1),
                retention: Some(Duration::from_secs(600)),
                ..SqsConfig::local(endpoint())
            },
        );
        let mut report = Report::new(
            "sqs_throughput",
            "SQS: raw aws-sdk-sqs against the adapter",
            "bash scripts/brokers/moto.sh && cargo bench -p messaging-sqs --bench sqs_throughput",
        );
        report.setup(format!(
            "endpoint {} (moto); {} messages per run, {RUNS} runs alternating which side goes \
             first; identical bytes on both sides, one standard queue each, the same concurrency",
            endpoint(),
            messages()
        ));
        report.setup(
            "moto is single-threaded Python (about 200 ms per `ReceiveMessage` of 10): absolute \
             rates say nothing about AWS; the ratios and the messages per API call do",
        );
        for size in [100, 1024] {
            let (mut rs, mut as_, mut rc, mut ac) = (vec![], vec![], vec![], vec![]);
            let (mut raw_counts, mut adapter_counts) = ((0, 0, 0), (0, 0, 0));
            for run in 0..RUNS {
                // Alternate which side goes first, so a drift of the endpoint over a run
                // (moto slows as its state grows) does not favour either side.
                let adapter_first = run % 2 == 1;
                if adapter_first {
                    let (s, c, counts) = adapter_run(&broker, &adapter_calls, size).await;
                    as_.push(s);
                    ac.push(c);
                    adapter_counts = add(adapter_counts, counts);
                }
                let q1 = unique("raw");
                let url = create_queue(&raw, &q1).await;
                raw_calls.take();
                rs.push(raw_send(&raw, &url, size).await);
                rc.push(raw_consume(&raw, &url).await);
                raw_counts = add(raw_counts, raw_calls.take());
                let _ = raw.delete_queue().queue_url(&url).send().await;
                if !adapter_first {
                    let (s, c, counts) = adapter_run(&broker, &adapter_calls, size).await;
                    as_.push(s);
                    ac.push(c);
                    adapter_counts = add(adapter_counts, counts);
                }
            }
            let total = messages() * RUNS;
            let note = format!(
                "messages per call, raw → adapter: send {:.2} → {:.2}, receive {:.2} → {:.2}, \
                 delete {:.2} → {:.2}",
                per_call(total, raw_counts.0),
                per_call(total, adapter_counts.0),
                per_call(total, raw_counts.1),
                per_call(total, adapter_counts.1),
                per_call(total, raw_counts.2),
                per_call(total, adapter_counts.2)
            );
            report.push(
                Comparison::new(
                    format!("{size} B send (batches of 10)"),
                    "msg/s",
                    Better::Higher,
                )
                .baseline_label("raw aws-sdk-sqs")
                .samples(
                    rs.iter().map(|d| rate(*d)).collect(),
                    as_.iter().map(|d| rate(*d)).collect(),
                )
                .note(note),
            );
            report.push(
                Comparison::new(
                    format!("{size} B receive + delete"),
                    "msg/s",
                    Better::Higher,
                )
                .baseline_label("raw aws-sdk-sqs")
                .samples(
                    rc.iter().map(|d| rate(*d)).collect(),
                    ac.iter().map(|d| rate(*d)).collect(),
                ),
            );
        }
        report.finish();
    });
}
