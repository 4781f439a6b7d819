//! Raw rdkafka against the adapter on the same broker, in one run: publish (`acks=all`,
//! idempotent producer) and consume with a per-message ack, 100 B and 1 KiB.
//!
//! `cargo bench -p messaging-kafka --bench kafka_throughput` (broker from `KAFKA_BENCH_SERVERS`,
//! default 127.0.0.1:9092)
//!
//! Both sides send the same wire message: the CloudEvents binary-mode headers (`ce_specversion`,
//! `ce_id` unique per message, `ce_source`, `ce_type`, `content-type`) and the payload. The raw
//! producer is a `BaseProducer` with the adapter's producer settings, sending in a loop, polling
//! when its queue is full and flushing at the end, as a skilled rdkafka user would; the adapter
//! publishes events cloned from a template with `publish_batch` of `BATCH` events. The raw
//! consumer is a `StreamConsumer` with `enable.auto.offset.store=false` that stores each
//! message's offset after "processing" it (a per-message ack); the adapter receives with
//! `recv_batch` and acks each delivery. Both consumers read the same topic from the start as
//! new groups; a second raw consumer also decodes each message into a CloudEvent, which is
//! the work the adapter does and an application consuming CloudEvents needs, and a third only
//! reads every header (the least such a decode needs from rdkafka). `RUNS` runs of
//! `KAFKA_BENCH_MESSAGES` messages (default 200 000), ratios per run. Then end-to-end latency:
//! 100 B messages at 1 000 msg/s, send → raw receipt against send → the consumer runtime's
//! handler start. `MESSAGING_BENCH_OUT=dir` also writes `dir/kafka_throughput.json`.

#![allow(missing_docs)]

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use messaging_core::{
    Delivery, EventBuilder, Publisher, StartFrom, SubscribeOptions, Subscriber, Subscription,
};
use messaging_kafka::{KafkaBroker, KafkaConfig};
use messaging_testkit::bench::{Better, Comparison, Report, quantile};
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 10_000;
const RUNS: usize = 5;
const LATENCY_RUNS: usize = 3;

/// Messages per run (`KAFKA_BENCH_MESSAGES`, default 200 000).
fn messages() -> usize {
    std::env::var("KAFKA_BENCH_MESSAGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(200_000)
}

fn servers() -> String {
    std::env::var("KAFKA_BENCH_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

fn unique(prefix: &str) -> String {
    format!("bench-{prefix}-{}", uuid::Uuid::new_v4().simple())
}

fn raw_producer() -> BaseProducer {
    ClientConfig::new()
        .set("bootstrap.servers", servers())
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("queue.buffering.max.messages", "1000000")
        .create()
        .expect("raw producer")
}

fn raw_publish(producer: &BaseProducer, topic: &str, size: usize) -> Duration {
    let payload = vec![7u8; size];
    let start = Instant::now();
    for i in 0..messages() {
        let id = format!("id-{i}");
        let headers = OwnedHeaders::new_with_capacity(5)
            .insert(Header {
                key: "content-type",
                value: Some("application/octet-stream"),
            })
            .insert(Header {
                key: "ce_specversion",
                value: Some("1.0"),
            })
            .insert(Header {
                key: "ce_id",
                value: Some(id.as_str()),
            })
            .insert(Header {
                key: "ce_source",
                value: Some("/bench"),
            })
            .insert(Header {
                key: "ce_type",
                value: Some("bench.raw"),
            });
        let mut record: BaseRecord<'_, (), [u8]> =
            BaseRecord::to(topic).payload(&payload[..]).headers(headers);
        loop {
            match producer.send(record) {
                Ok(()) => break,
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    producer.poll(Duration::from_millis(1));
                }
                Err((e, _)) => panic!("raw send: {e}"),
            }
        }
        producer.poll(Duration::ZERO);
    }
    producer.flush(Duration::from_secs(600)).expect("flush");
    start.elapsed()
}

async fn adapter_publish(broker: &KafkaBroker, topic: &str, size: usize) -> Duration {
    let publisher = broker.publisher();
    let template = EventBuilder::new("/bench", "bench.adapter")
        .without_time()
        .bytes(Some("application/octet-stream"), vec![7u8; size])
        .build()
        .expect("event");
    let start = Instant::now();
    let mut sent = 0;
    while sent < messages() {
        let n = BATCH.min(messages() - sent);
        let events = (sent..sent + n)
            .map(|i| {
                let mut e = template.clone();
                messaging_core::AttributesWriter::set_id(&mut e, format!("id-{i}"));
                e
            })
            .collect();
        publisher
            .publish_batch(topic, events)
            .await
            .expect("adapter publish");
        sent += n;
    }
    start.elapsed()
}

/// The raw consumers' settings: what the adapter's consumer sets, by hand.
fn raw_consumer_config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", servers())
        .set("group.id", unique("raw"))
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("session.timeout.ms", "10000")
        .set("heartbeat.interval.ms", "2500")
        .set("enable.partition.eof", "false")
        // librdkafka's default is 1 s: a consumer slower than the fetches idles most of each
        // second once its queue has held 100 000 messages (the adapter sets 10 ms too).
        .set("fetch.queue.backoff.ms", "10");
    c
}

/// What the raw consumer does with each message besides storing its offset.
#[derive(Clone, Copy)]
enum Work {
    /// Nothing: the payload's length only.
    Bytes,
    /// Reads every header (name and value), as any decode must.
    Headers,
    /// Turns the message into a CloudEvent, as an application consuming CloudEvents with plain
    /// rdkafka must (here with the same binding code the adapter uses, standing in for
    /// cloudevents-sdk's rdkafka binding).
    Decode,
}

async fn raw_consume(topic: &str, work: Work) -> Duration {
    let binding = messaging_core::Binding::kafka();
    let consumer: StreamConsumer = raw_consumer_config()
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("raw consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    // The clock starts at the first message: the group join is not the client's throughput,
    // and its time on this broker varies by seconds.
    let mut start = None;
    let mut stream = consumer.stream();
    let mut n = 0;
    let mut bytes = 0usize;
    while n < messages() {
        let m = tokio::time::timeout(Duration::from_secs(120), stream.next())
            .await
            .expect("the raw consumer receives within 120 s")
            .expect("stream")
            .expect("message");
        start.get_or_insert_with(Instant::now);
        bytes += m.payload_len();
        match work {
            Work::Bytes => {}
            Work::Headers => {
                use rdkafka::message::Headers as _;
                let headers = m.headers().expect("headers");
                for h in headers.iter() {
                    bytes += h.key.len() + h.value.map_or(0, <[u8]>::len);
                }
            }
            Work::Decode => {
                use rdkafka::message::Headers as _;
                let headers = m.headers().expect("headers");
                let ct = headers
                    .iter()
                    .find(|h| h.key == "content-type")
                    .and_then(|h| h.value)
                    .and_then(|v| std::str::from_utf8(v).ok());
                let pairs = headers.iter().filter_map(|h| Some((h.key, h.value?)));
                let event = binding
                    .decode_parts(ct, pairs, m.payload().unwrap_or_default())
                    .expect("a CloudEvent");
                std::hint::black_box(event);
            }
        }
        consumer.store_offset_from_message(&m).expect("store");
        n += 1;
    }
    assert!(bytes > 0);
    start.map_or(Duration::ZERO, |s| s.elapsed())
}

async fn adapter_consume(broker: &KafkaBroker, topic: &str) -> Duration {
    let mut sub = broker
        .subscriber()
        .subscribe(
            topic,
            SubscribeOptions::new(unique("adapter"))
                .start_from(StartFrom::Earliest)
                .prefetch(4096),
        )
        .await
        .expect("subscribe");
    // From the first delivery, as on the raw side.
    let mut start = None;
    let mut n = 0;
    while n < messages() {
        let batch = tokio::time::timeout(Duration::from_secs(120), sub.recv_batch(1024))
            .await
            .expect("the adapter receives within 120 s")
            .expect("recv");
        start.get_or_insert_with(Instant::now);
        for d in batch {
            d.ack().await.expect("ack");
            n += 1;
        }
    }
    let elapsed = start.map_or(Duration::ZERO, |s| s.elapsed());
    sub.close().await.expect("close");
    elapsed
}

fn rate(d: Duration) -> f64 {
    messages() as f64 / d.as_secs_f64()
}

/// Nanoseconds since the Unix epoch: the send time a latency message carries.
fn now_nanos() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

fn sent_at(payload: &[u8]) -> u64 {
    payload
        .get(..8)
        .map_or(0, |b| u64::from_le_bytes(b.try_into().unwrap_or_default()))
}

/// Messages and rate of the latency phase.
const LATENCY_MESSAGES: usize = 2_000;
const LATENCY_RATE: u64 = 1_000;

/// Publish at `LATENCY_RATE` msg/s with `publish(i)`, each payload starting with its send time.
async fn paced(mut publish: impl AsyncFnMut(Vec<u8>)) {
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / LATENCY_RATE));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    for _ in 0..LATENCY_MESSAGES {
        tick.tick().await;
        let mut payload = now_nanos().to_le_bytes().to_vec();
        payload.resize(100, 7);
        publish(payload).await;
    }
}

/// Publish → the raw consumer has the message, in ms, one sample per message.
async fn raw_latency(producer: &BaseProducer, topic: &str) -> Vec<f64> {
    // A fresh topic: from the start is every message of this phase, whenever the fetch
    // position is set (with `latest`, messages sent before it was set would never come).
    let consumer: StreamConsumer = raw_consumer_config()
        .set("auto.offset.reset", "earliest")
        .create()
        .expect("raw consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let ready = wait_assigned(&consumer).await;
    assert!(ready, "raw latency consumer got no partitions");
    let receive = async {
        let mut stream = consumer.stream();
        let mut samples = Vec::with_capacity(LATENCY_MESSAGES);
        while samples.len() < LATENCY_MESSAGES {
            let m = tokio::time::timeout(Duration::from_secs(60), stream.next())
                .await
                .expect("every latency message arrives within 60 s")
                .expect("stream")
                .expect("message");
            let at = now_nanos();
            samples
                .push((at.saturating_sub(sent_at(m.payload().unwrap_or_default()))) as f64 / 1e6);
            consumer.store_offset_from_message(&m).expect("store");
        }
        samples
    };
    let send = paced(async |payload: Vec<u8>| {
        let record: BaseRecord<'_, (), [u8]> = BaseRecord::to(topic).payload(&payload[..]);
        producer.send(record).map_err(|(e, _)| e).expect("raw send");
        producer.poll(Duration::ZERO);
    });
    let (samples, ()) = tokio::join!(receive, async {
        send.await;
        producer.flush(Duration::from_secs(60)).expect("flush");
    });
    samples
}

/// Publish through the adapter → the consumer runtime's handler starts, in ms.
async fn adapter_latency(broker: &KafkaBroker, topic: &str) -> Vec<f64> {
    use messaging_core::handler::{HandlerError, Incoming, handler_fn};
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = handler_fn(move |msg: Incoming| {
        let at = now_nanos();
        let tx = tx.clone();
        async move {
            let sent = msg.event().data().map_or(0, |d| match d {
                messaging_core::Data::Binary(b) => sent_at(b),
                _ => 0,
            });
            let _ = tx.send(at.saturating_sub(sent) as f64 / 1e6);
            Ok::<(), HandlerError>(())
        }
    });
    let publisher: std::sync::Arc<dyn messaging_core::DynPublisher> =
        std::sync::Arc::new(broker.publisher());
    let consumer = messaging_core::runtime::Consumer::builder(
        broker.subscriber(),
        publisher,
        topic,
        SubscribeOptions::new(unique("latency")).start_from(StartFrom::Earliest),
    )
    .concurrency(64)
    .build(handler);
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(consumer.run(async move {
        let _ = stop_rx.await;
    }));
    // Joined once a first message comes through.
    let publisher = broker.publisher();
    let probe = |payload: Vec<u8>| {
        EventBuilder::new("/bench", "bench.latency")
            .without_time()
            .bytes(Some("application/octet-stream"), payload)
            .build()
            .expect("event")
    };
    loop {
        publisher
            .publish(topic, probe(vec![0; 100]))
            .await
            .expect("probe");
        match tokio::time::timeout(Duration::from_secs(2), rx.recv()).await {
            Ok(Some(_)) => break,
            Ok(None) => panic!("latency consumer stopped"),
            Err(_) => {}
        }
    }
    while rx.try_recv().is_ok() {}
    paced(async |payload: Vec<u8>| {
        publisher
            .publish(topic, probe(payload))
            .await
            .expect("publish");
    })
    .await;
    let mut samples = Vec::with_capacity(LATENCY_MESSAGES);
    while samples.len() < LATENCY_MESSAGES {
        let sample = tokio::time::timeout(Duration::from_secs(60), rx.recv())
            .await
            .expect("every latency message arrives within 60 s")
            .expect("handler alive");
        samples.push(sample);
    }
    let _ = stop_tx.send(());
    run.await.expect("runtime task").expect("runtime");
    samples
}

async fn wait_assigned(consumer: &StreamConsumer) -> bool {
    for _ in 0..200 {
        // Polling drives the join; no message is expected yet.
        let _ = tokio::time::timeout(Duration::from_millis(50), consumer.recv()).await;
        if consumer.assignment().is_ok_and(|a| a.count() > 0) {
            return true;
        }
    }
    false
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let broker = KafkaBroker::connect(KafkaConfig::new(servers()))
            .await
            .expect("Kafka reachable (run scripts/brokers/nisshi.sh)");
        let producer = raw_producer();
        let mut report = Report::new(
            "kafka_throughput",
            "Kafka: raw rdkafka against the adapter",
            "cargo bench -p messaging-kafka --bench kafka_throughput",
        );
        report.setup(format!(
            "broker {}; {} messages per run, {RUNS} runs after an untimed warm-up publish, \
             sides alternating which goes first",
            servers(),
            messages()
        ));
        report.setup(
            "both producers: the adapter's settings (`acks=all`, idempotent, librdkafka's \
             default linger); both consumers: a fresh group reading the same topic from the start, \
             auto-commit every 1 s of explicitly stored offsets (a per-message ack); consume \
             is timed from the first message received, so the group join is not counted",
        );
        report.setup(
            "every consumer sets `fetch.queue.backoff.ms=10`, as the adapter does (librdkafka's \
             1 s default idles a consumer slower than the fetches once its queue has held \
             100 000 messages); the row \"raw consume reading every header\" is the least a \
             binary-mode CloudEvents consumer does, so it bounds any ratio against bytes only",
        );
        report.setup(
            "the adapter's subscription also fetches its group's five (empty) retry topics, as \
             every default subscription does",
        );
        // Warm-up: connections, metadata, the broker's caches; nothing here is timed.
        {
            let topic = unique("warmup");
            broker.create_topic(&topic).await.expect("topic");
            let n = messages().min(5_000);
            let publisher = broker.publisher();
            let template = EventBuilder::new("/bench", "bench.warmup")
                .bytes(None, vec![7u8; 100])
                .build()
                .expect("event");
            publisher
                .publish_batch(&topic, (0..n).map(|_| template.clone()).collect())
                .await
                .expect("warm-up publish");
        }
        for size in [100, 1024] {
            let mut publish = Comparison::new(format!("{size} B publish"), "msg/s", Better::Higher)
                .baseline_label("raw rdkafka")
                .goal(if size == 100 { 0.90 } else { 0.95 });
            let mut consume = Comparison::new(
                format!("{size} B consume, per-message ack"),
                "msg/s",
                Better::Higher,
            )
            .baseline_label("raw rdkafka, bytes only")
            .goal(0.80);
            let mut consume_decoded = Comparison::new(
                format!("{size} B consume, per-message ack"),
                "msg/s",
                Better::Higher,
            )
            .baseline_label("raw rdkafka decoding each CloudEvent")
            .goal(0.95);
            // Where a raw consumer's time goes: reading the headers, against bytes only.
            let mut consume_headers = Comparison::new(
                format!("{size} B raw consume reading every header"),
                "msg/s",
                Better::Higher,
            )
            .baseline_label("raw rdkafka, bytes only")
            .framework_label("raw rdkafka reading headers");
            for run in 0..RUNS {
                let raw_topic = unique("raw");
                let adapter_topic = unique("adapter");
                broker.create_topic(&raw_topic).await.expect("topic");
                broker.create_topic(&adapter_topic).await.expect("topic");
                // Alternate which side goes first so neither always gets a warmer broker.
                let (rp, ap) = if run % 2 == 0 {
                    let rp = raw_publish(&producer, &raw_topic, size);
                    (rp, adapter_publish(&broker, &adapter_topic, size).await)
                } else {
                    let ap = adapter_publish(&broker, &adapter_topic, size).await;
                    (raw_publish(&producer, &raw_topic, size), ap)
                };
                publish.add(rate(rp), rate(ap));
                // All consume the adapter's topic: same messages, same partitions.
                let (rc, rh, rd, ac) = if run % 2 == 0 {
                    let rc = raw_consume(&adapter_topic, Work::Bytes).await;
                    let rh = raw_consume(&adapter_topic, Work::Headers).await;
                    let rd = raw_consume(&adapter_topic, Work::Decode).await;
                    (rc, rh, rd, adapter_consume(&broker, &adapter_topic).await)
                } else {
                    let ac = adapter_consume(&broker, &adapter_topic).await;
                    let rd = raw_consume(&adapter_topic, Work::Decode).await;
                    let rh = raw_consume(&adapter_topic, Work::Headers).await;
                    (raw_consume(&adapter_topic, Work::Bytes).await, rh, rd, ac)
                };
                consume_headers.add(rate(rc), rate(rh));
                consume.add(rate(rc), rate(ac));
                consume_decoded.add(rate(rd), rate(ac));
            }
            report.push(publish);
            report.push(consume);
            report.push(consume_decoded);
            report.push(consume_headers);
        }
        let (mut p50, mut p99) = (
            Comparison::new("latency p50, 100 B at 1 000 msg/s", "ms", Better::Lower)
                .baseline_label("raw rdkafka (message received)")
                .framework_label("adapter (handler starts)"),
            Comparison::new("latency p99, 100 B at 1 000 msg/s", "ms", Better::Lower)
                .baseline_label("raw rdkafka (message received)")
                .framework_label("adapter (handler starts)"),
        );
        for run in 0..LATENCY_RUNS {
            let (raw_topic, adapter_topic) = (unique("lat-raw"), unique("lat-adapter"));
            broker.create_topic(&raw_topic).await.expect("topic");
            broker.create_topic(&adapter_topic).await.expect("topic");
            let (mut raw, mut ours) = if run % 2 == 0 {
                let raw = raw_latency(&producer, &raw_topic).await;
                (raw, adapter_latency(&broker, &adapter_topic).await)
            } else {
                let ours = adapter_latency(&broker, &adapter_topic).await;
                (raw_latency(&producer, &raw_topic).await, ours)
            };
            p50.add(quantile(&mut raw, 0.5), quantile(&mut ours, 0.5));
            p99.add(quantile(&mut raw, 0.99), quantile(&mut ours, 0.99));
        }
        report.setup(format!(
            "latency: {LATENCY_MESSAGES} messages of 100 B per run at {LATENCY_RATE} msg/s, from \
             before the send call to the raw consumer's receipt or the adapter's handler start \
             (consumer runtime, default retry and dead-letter layers), {LATENCY_RUNS} runs"
        ));
        report.push(p50);
        report.push(p99);
        report.finish();
    });
}
