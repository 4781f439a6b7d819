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
//! the work the adapter does and an application consuming CloudEvents needs. Median of `RUNS`
//! runs of `KAFKA_BENCH_MESSAGES` messages (default 200 000).

#![allow(missing_docs)]

use std::time::{Duration, Instant};

use futures_util::StreamExt as _;
use messaging_core::{
    Delivery, EventBuilder, Publisher, StartFrom, SubscribeOptions, Subscriber, Subscription,
};
use messaging_kafka::{KafkaBroker, KafkaConfig};
use rdkafka::ClientConfig;
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer as _};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const BATCH: usize = 10_000;
const RUNS: usize = 3;

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

/// `decode`: the raw consumer also turns each message into a CloudEvent, as an application
/// consuming CloudEvents with plain rdkafka must (here with the same binding code the adapter
/// uses, standing in for cloudevents-sdk's rdkafka binding).
async fn raw_consume(topic: &str, decode: bool) -> Duration {
    let binding = messaging_core::Binding::kafka();
    let consumer: StreamConsumer = ClientConfig::new()
        .set("bootstrap.servers", servers())
        .set("group.id", unique("raw"))
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.offset.store", "false")
        .set("enable.partition.eof", "false")
        .create()
        .expect("raw consumer");
    consumer.subscribe(&[topic]).expect("subscribe");
    let start = Instant::now();
    let mut stream = consumer.stream();
    let mut n = 0;
    let mut bytes = 0usize;
    while n < messages() {
        let m = stream.next().await.expect("stream").expect("message");
        bytes += m.payload_len();
        if decode {
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
        consumer.store_offset_from_message(&m).expect("store");
        n += 1;
    }
    assert!(bytes > 0);
    start.elapsed()
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
    let start = Instant::now();
    let mut n = 0;
    while n < messages() {
        for d in sub.recv_batch(1024).await.expect("recv") {
            d.ack().await.expect("ack");
            n += 1;
        }
    }
    let elapsed = start.elapsed();
    sub.close().await.expect("close");
    elapsed
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn rate(d: Duration) -> f64 {
    messages() as f64 / d.as_secs_f64()
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
        println!(
            "broker {}; {} messages per run, median of {RUNS}",
            servers(),
            messages()
        );
        println!(
            "{:>6} {:>8} {:>12} {:>12} {:>6}",
            "size", "side", "raw msg/s", "adapter", "ratio"
        );
        for size in [100, 1024] {
            let (mut rp, mut ap, mut rc, mut rd, mut ac) = (vec![], vec![], vec![], vec![], vec![]);
            for run in 0..RUNS {
                let raw_topic = unique("raw");
                let adapter_topic = unique("adapter");
                broker.create_topic(&raw_topic).await.expect("topic");
                broker.create_topic(&adapter_topic).await.expect("topic");
                // Alternate which side goes first so neither always gets a warmer broker.
                if run % 2 == 0 {
                    rp.push(raw_publish(&producer, &raw_topic, size));
                    ap.push(adapter_publish(&broker, &adapter_topic, size).await);
                } else {
                    ap.push(adapter_publish(&broker, &adapter_topic, size).await);
                    rp.push(raw_publish(&producer, &raw_topic, size));
                }
                // Both consume the adapter's topic: same messages, same partitions.
                if run % 2 == 0 {
                    rc.push(raw_consume(&adapter_topic, false).await);
                    rd.push(raw_consume(&adapter_topic, true).await);
                    ac.push(adapter_consume(&broker, &adapter_topic).await);
                } else {
                    ac.push(adapter_consume(&broker, &adapter_topic).await);
                    rd.push(raw_consume(&adapter_topic, true).await);
                    rc.push(raw_consume(&adapter_topic, false).await);
                }
            }
            let (rp, ap, rc, rd, ac) = (median(rp), median(ap), median(rc), median(rd), median(ac));
            println!(
                "{size:>6} {:>8} {:>12.0} {:>12.0} {:>6.2}",
                "publish",
                rate(rp),
                rate(ap),
                rate(ap) / rate(rp)
            );
            println!(
                "{size:>6} {:>8} {:>12.0} {:>12.0} {:>6.2}",
                "consume",
                rate(rc),
                rate(ac),
                rate(ac) / rate(rc)
            );
            println!(
                "{size:>6} {:>8} {:>12.0} {:>12.0} {:>6.2}   (raw side decodes each CloudEvent)",
                "consume",
                rate(rd),
                rate(ac),
                rate(ac) / rate(rd)
            );
        }
    });
}
