//! Raw lapin against the adapter on the same RabbitMQ, in one run: publish with confirms and
//! consume with acks, persistent messages, 100 B and 1 KiB.
//!
//! `cargo bench -p messaging-rabbitmq --bench rabbit_throughput` (RabbitMQ on 127.0.0.1:5672)
//!
//! Both sides use a durable quorum queue bound to a fanout exchange. The raw publisher keeps
//! 256 confirms in flight (publish 256, then await their confirms), as a skilled lapin user
//! would, each with a freshly allocated payload; the adapter uses `publish_batch` with 256
//! events cloned from a template. The adapter's messages also carry the CloudEvents attributes
//! as `cloudEvents:*` application properties (about 200 bytes). The raw consumer acks each
//! delivery from a `basic_consume` stream with a prefetch of 256; the adapter receives with
//! `recv_batch(256)` and acks each delivery (and decodes it). 5 runs of `MESSAGES` messages,
//! ratios per run; both consumers read messages the adapter published.
//!
//! A second raw publisher also sends five `cloudEvents:*` application properties like the
//! adapter's (cloned per message), so that ratio shows the adapter's own per-message work
//! rather than the cost of the larger messages on the broker; a third adapter publisher uses
//! structured mode. `MESSAGING_BENCH_OUT=dir` also writes `dir/rabbit_throughput.json`.

#![allow(missing_docs)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use futures_util::future::join_all;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Connection, ConnectionProperties};
use messaging_core::ContentMode;
use messaging_core::{
    Delivery, EventBuilder, Publisher, SubscribeOptions, Subscriber, Subscription,
};
use messaging_rabbitmq::{RabbitBroker, RabbitConfig};
use messaging_testkit::bench::{Better, Comparison, Report};

#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

const URI: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
const MESSAGES: usize = 20_000;
const WINDOW: usize = 256;
const RUNS: usize = 5;

fn unique(prefix: &str) -> String {
    format!("bench-{prefix}-{}", uuid::Uuid::new_v4().simple())
}

/// Declares `<topic>.g` through the adapter (same queue either side).
async fn declare(broker: &RabbitBroker, topic: &str) {
    let mut s = broker
        .subscriber()
        .subscribe(topic, SubscribeOptions::new("g"))
        .await
        .expect("declare");
    s.close().await.expect("close");
}

async fn raw_publish(conn: &Connection, topic: &str, size: usize, with_headers: bool) -> Duration {
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirms");
    let template = vec![7u8; size];
    // The adapter's binary-mode attributes, when `with_headers` (see the crate docs above).
    let mut headers = FieldTable::default();
    for (k, v) in [
        ("cloudEvents:specversion", "1.0"),
        ("cloudEvents:id", "0f3c9a4e-5b1d-4c1e-9a55-2b7d8f6e1a20"),
        ("cloudEvents:source", "bench"),
        ("cloudEvents:type", "bench.event"),
        ("cloudEvents:time", "2026-11-28T13:15:00.123456Z"),
    ] {
        headers.insert(
            ShortString::from(k),
            lapin::types::AMQPValue::LongString(v.into()),
        );
    }
    let start = Instant::now();
    for _ in 0..MESSAGES / WINDOW {
        let mut confirms = Vec::with_capacity(WINDOW);
        for _ in 0..WINDOW {
            // A fresh payload per message, as the adapter side builds a fresh event.
            let body = template.clone();
            let c = ch
                .basic_publish(
                    ShortString::from(topic),
                    ShortString::from(""),
                    BasicPublishOptions::default(),
                    &body,
                    if with_headers {
                        BasicProperties::default()
                            .with_delivery_mode(2)
                            .with_headers(headers.clone())
                    } else {
                        BasicProperties::default().with_delivery_mode(2)
                    },
                )
                .await
                .expect("publish");
            confirms.push(c);
        }
        for c in join_all(confirms).await {
            assert!(c.expect("confirm").is_ack());
        }
    }
    start.elapsed()
}

async fn adapter_publish(broker: &RabbitBroker, topic: &str, size: usize) -> Duration {
    let publisher = broker.publisher();
    let template = EventBuilder::new("bench", "bench.event")
        .bytes(None, vec![7u8; size])
        .build()
        .expect("event");
    let start = Instant::now();
    for _ in 0..MESSAGES / WINDOW {
        let events = (0..WINDOW).map(|_| template.clone()).collect();
        publisher
            .publish_batch(topic, events)
            .await
            .expect("publish");
    }
    start.elapsed()
}

async fn raw_consume(conn: &Connection, topic: &str) -> Duration {
    let ch = conn.create_channel().await.expect("channel");
    ch.basic_qos(WINDOW as u16, BasicQosOptions::default())
        .await
        .expect("qos");
    let mut consumer = ch
        .basic_consume(
            ShortString::from(format!("{topic}.g")),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let start = Instant::now();
    for _ in 0..(MESSAGES / WINDOW) * WINDOW {
        let d = consumer.next().await.expect("open").expect("delivery");
        d.acker.ack(BasicAckOptions::default()).await.expect("ack");
    }
    let t = start.elapsed();
    let _ = ch.close(200, ShortString::from("done")).await;
    t
}

async fn adapter_consume(broker: &RabbitBroker, topic: &str) -> Duration {
    let mut sub = broker
        .subscriber()
        .subscribe(topic, SubscribeOptions::new("g").prefetch(WINDOW))
        .await
        .expect("subscribe");
    let start = Instant::now();
    let mut n = 0;
    while n < (MESSAGES / WINDOW) * WINDOW {
        for d in sub.recv_batch(WINDOW).await.expect("recv") {
            std::hint::black_box(d.event().expect("decodes"));
            d.ack().await.expect("ack");
            n += 1;
        }
    }
    let t = start.elapsed();
    sub.close().await.expect("close");
    t
}

fn rate(d: Duration) -> f64 {
    ((MESSAGES / WINDOW) * WINDOW) as f64 / d.as_secs_f64()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let conn = Connection::connect(URI, ConnectionProperties::default())
            .await
            .expect("RabbitMQ on 127.0.0.1:5672 (run scripts/brokers/rabbitmq.sh)");
        let connect = |mode| {
            RabbitBroker::connect(RabbitConfig {
                queue_expires: Some(Duration::from_secs(120)),
                content_mode: mode,
                ..RabbitConfig::new(URI)
            })
        };
        let broker = connect(ContentMode::Binary).await.expect("connect");
        let structured = connect(ContentMode::Structured).await.expect("connect");
        let n = (MESSAGES / WINDOW) * WINDOW;
        let mut report = Report::new(
            "rabbit_throughput",
            "RabbitMQ: raw lapin against the adapter",
            "cargo bench -p messaging-rabbitmq --bench rabbit_throughput",
        );
        report.setup(format!(
            "{n} persistent messages per run into a durable quorum queue behind a fanout \
             exchange, {WINDOW} confirms in flight and a prefetch of {WINDOW} on both sides, \
             {RUNS} runs with the order of the sides rotating"
        ));
        report.setup(
            "raw publish without properties sends only the payload; with properties it also sends \
             the five `cloudEvents:*` application properties the adapter's binary mode sends",
        );
        for size in [100, 1024] {
            let case = |op: &str| format!("{size} B {op}");
            let mut bare = Comparison::new(case("publish with confirms"), "msg/s", Better::Higher)
                .baseline_label("raw lapin, no properties")
                .goal(0.90);
            let mut same = Comparison::new(case("publish with confirms"), "msg/s", Better::Higher)
                .baseline_label("raw lapin, same `cloudEvents:*` properties")
                .goal(0.95);
            let mut structured_cmp = Comparison::new(
                case("publish with confirms, structured mode"),
                "msg/s",
                Better::Higher,
            )
            .baseline_label("raw lapin, no properties");
            let mut consume = Comparison::new(case("consume with acks"), "msg/s", Better::Higher)
                .baseline_label("raw lapin")
                .goal(0.95);
            for run in 0..RUNS {
                let mut rates = [0.0f64; 4];
                for k in 0..4 {
                    let side = (k + run) % 4;
                    let topic = unique("pub");
                    declare(&broker, &topic).await;
                    rates[side] = rate(match side {
                        0 => raw_publish(&conn, &topic, size, false).await,
                        1 => raw_publish(&conn, &topic, size, true).await,
                        2 => adapter_publish(&broker, &topic, size).await,
                        _ => adapter_publish(&structured, &topic, size).await,
                    });
                }
                bare.add(rates[0], rates[2]);
                same.add(rates[1], rates[2]);
                structured_cmp.add(rates[0], rates[3]);
                // Both consume messages the adapter published: the same bytes either side.
                let mut consumed = [0.0f64; 2];
                for k in 0..2 {
                    let side = (k + run) % 2;
                    let topic = unique("sub");
                    declare(&broker, &topic).await;
                    adapter_publish(&broker, &topic, size).await;
                    consumed[side] = rate(if side == 0 {
                        raw_consume(&conn, &topic).await
                    } else {
                        adapter_consume(&broker, &topic).await
                    });
                }
                consume.add(consumed[0], consumed[1]);
            }
            report.push(bare);
            report.push(same);
            report.push(structured_cmp);
            report.push(consume);
        }
        report.finish();
    });
}
