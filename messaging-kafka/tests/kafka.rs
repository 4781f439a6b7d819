//! Kafka-specific behaviour on nisshi (127.0.0.1:9092): resuming from a committed offset inside
//! a produced batch, commits that never pass an unsettled message, lag, retry topics that do not
//! block the partition, the key binding, and a consumer killed without closing.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{connect, nisshi_config, unique};
use messaging_core::{
    AttributesReader as _, ContentMode, Delivery, EventBuilder, EventExt as _, Publisher,
    StartFrom, SubscribeOptions, Subscriber, Subscription,
};
use messaging_kafka::{KafkaBroker, KafkaConfig, KafkaDelivery, KafkaSubscription};
use rdkafka::Message as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};

const WAIT: Duration = Duration::from_secs(30);

fn single_partition() -> KafkaConfig {
    KafkaConfig {
        partitions: 1,
        ..nisshi_config()
    }
}

fn event(i: usize) -> messaging_core::Event {
    EventBuilder::new("/test", "kafka.test")
        .id(format!("e{i}"))
        .json(&i)
        .build()
        .expect("event")
}

fn index(d: &KafkaDelivery) -> usize {
    d.event().expect("event").data_json().expect("json")
}

async fn recv(sub: &mut KafkaSubscription) -> KafkaDelivery {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("a delivery in time")
        .expect("recv")
}

/// Nothing more arrives within `quiet`.
async fn assert_quiet(sub: &mut KafkaSubscription, quiet: Duration) {
    if let Ok(d) = tokio::time::timeout(quiet, sub.recv()).await {
        panic!("unexpected delivery {:?}", d.map(|d| index(&d)));
    }
}

async fn publish_batch(broker: &KafkaBroker, topic: &str, n: usize) {
    broker
        .publisher()
        .publish_batch(topic, (0..n).map(event).collect())
        .await
        .expect("publish batch");
}

/// Waits until librdkafka has committed what the subscription stored.
async fn settle_commits() {
    tokio::time::sleep(Duration::from_millis(800)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_a_committed_offset_inside_a_batch() {
    let broker = connect(single_partition()).await;
    let topic = unique("resume");
    let group = unique("g");
    let options = SubscribeOptions::new(&group).prefetch(1000);
    let mut first = broker
        .subscriber()
        .subscribe(&topic, options.clone())
        .await
        .expect("subscribe");
    publish_batch(&broker, &topic, 100).await;
    let mut held = Vec::new();
    for expected in 0..100 {
        let d = recv(&mut first).await;
        assert_eq!(index(&d), expected, "one partition keeps publish order");
        held.push(d);
    }
    // Settle the first 37 (offsets 0..=36), in reverse order; keep the rest unsettled.
    let rest = held.split_off(37);
    for d in held.into_iter().rev() {
        d.ack().await.expect("ack");
    }
    settle_commits().await;
    drop(rest);
    first.close().await.expect("close");

    let mut second = broker
        .subscriber()
        .subscribe(&topic, options)
        .await
        .expect("subscribe again");
    for expected in 37..100 {
        let d = recv(&mut second).await;
        assert_eq!(
            index(&d),
            expected,
            "resumes exactly at the committed offset"
        );
        d.ack().await.expect("ack");
    }
    assert_quiet(&mut second, Duration::from_secs(2)).await;
    second.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn out_of_order_acks_never_commit_past_an_unsettled_message() {
    let broker = connect(single_partition()).await;
    let topic = unique("gap");
    let group = unique("g");
    let options = SubscribeOptions::new(&group).prefetch(1000);
    let mut first = broker
        .subscriber()
        .subscribe(&topic, options.clone())
        .await
        .expect("subscribe");
    publish_batch(&broker, &topic, 60).await;
    let mut unsettled = None;
    let mut later = Vec::new();
    for _ in 0..60 {
        let d = recv(&mut first).await;
        match index(&d) {
            20 => unsettled = Some(d),
            i if i < 40 => d.ack().await.expect("ack"),
            _ => later.push(d),
        }
    }
    settle_commits().await;
    let lag = broker
        .lag(&topic, &group)
        .await
        .expect("lag")
        .expect("the group exists");
    let main: Vec<_> = lag.iter().filter(|l| l.topic == topic).collect();
    assert_eq!(main.len(), 1);
    assert_eq!(
        main[0].committed,
        Some(20),
        "commit stops at the unsettled offset 20"
    );
    assert_eq!(main[0].high_watermark, 60);
    assert_eq!(main[0].lag, 40);
    // Close without settling 20 and 40..60: they go back to the group.
    first.close().await.expect("close");
    drop(unsettled);
    drop(later);

    let mut second = broker
        .subscriber()
        .subscribe(&topic, options)
        .await
        .expect("subscribe again");
    for expected in 20..60 {
        let d = recv(&mut second).await;
        assert_eq!(index(&d), expected);
        d.ack().await.expect("ack");
    }
    assert_quiet(&mut second, Duration::from_secs(2)).await;
    second.close().await.expect("close");
    settle_commits().await;
    let depth = messaging_core::Inspect::depth(&broker, &topic, &group)
        .await
        .expect("depth");
    assert_eq!(depth, Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_retry_does_not_block_the_partition() {
    let broker = connect(single_partition()).await;
    let topic = unique("retry");
    let mut sub = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new(unique("g")))
        .await
        .expect("subscribe");
    let publisher = broker.publisher();
    publisher.publish(&topic, event(0)).await.expect("publish");
    let first = recv(&mut sub).await;
    assert_eq!((index(&first), first.attempt()), (0, 1));
    let nacked_at = std::time::Instant::now();
    first
        .nack(Some(Duration::from_secs(3)))
        .await
        .expect("nack with delay");
    // Later messages of the same partition flow while the retry waits.
    publish_batch(&broker, &topic, 5).await;
    for expected in 0..5 {
        let d = recv(&mut sub).await;
        assert_eq!(index(&d), expected);
        assert_eq!(d.attempt(), 1);
        assert!(!d.kafka_topic().contains(".retry."));
        d.ack().await.expect("ack");
    }
    assert!(
        nacked_at.elapsed() < Duration::from_secs(3),
        "not blocked by the retry"
    );
    let retried = recv(&mut sub).await;
    assert!(
        nacked_at.elapsed() >= Duration::from_secs(3),
        "the delay is honoured"
    );
    assert_eq!(index(&retried), 0);
    assert_eq!(retried.attempt(), 2);
    assert_eq!(
        retried.topic(),
        topic,
        "the original topic, not the retry topic"
    );
    assert!(
        retried.kafka_topic().ends_with(".retry.10s"),
        "{}",
        retried.kafka_topic()
    );
    retried.ack().await.expect("ack");
    sub.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ordering_key_is_the_message_key_in_both_modes() {
    for mode in [ContentMode::Binary, ContentMode::Structured] {
        let broker = connect(KafkaConfig {
            content_mode: mode,
            ..nisshi_config()
        })
        .await;
        let topic = unique("key");
        broker.create_topic(&topic).await.expect("topic");
        let raw: StreamConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", common::NISSHI)
            .set("group.id", unique("raw"))
            .set("auto.offset.reset", "earliest")
            .create()
            .expect("raw consumer");
        raw.subscribe(&[&topic]).expect("subscribe");
        let e = EventBuilder::new("/test", "kafka.key")
            .ordering_key("customer-42")
            .text("hello")
            .build()
            .expect("event");
        broker
            .publisher()
            .publish(&topic, e.clone())
            .await
            .expect("publish");
        let m = tokio::time::timeout(WAIT, raw.recv())
            .await
            .expect("in time")
            .expect("message");
        assert_eq!(m.key(), Some(&b"customer-42"[..]), "{mode:?}");
        let ct = m
            .headers()
            .and_then(|h| {
                use rdkafka::message::Headers as _;
                h.iter()
                    .find(|h| h.key == "content-type")
                    .and_then(|h| h.value)
            })
            .map(|v| String::from_utf8_lossy(v).into_owned());
        match mode {
            ContentMode::Structured => {
                assert_eq!(ct.as_deref(), Some("application/cloudevents+json"));
            }
            ContentMode::Binary => assert_eq!(ct.as_deref(), Some("text/plain; charset=utf-8")),
        }
        // And the adapter reads it back with the key as the ordering key.
        let mut sub = broker
            .subscriber()
            .subscribe(
                &topic,
                SubscribeOptions::new(unique("g")).start_from(StartFrom::Earliest),
            )
            .await
            .expect("subscribe");
        let d = recv(&mut sub).await;
        assert_eq!(
            d.event().expect("event").ordering_key(),
            Some("customer-42")
        );
        assert_eq!(d.event().expect("event").id(), e.id());
        d.ack().await.expect("ack");
        sub.close().await.expect("close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_over_the_limit_is_refused_before_sending() {
    let broker = connect(KafkaConfig {
        max_message_bytes: 10_000,
        ..nisshi_config()
    })
    .await;
    let topic = unique("limit");
    let big = EventBuilder::new("/test", "kafka.big")
        .bytes(None, vec![1u8; 10_001])
        .build()
        .expect("event");
    let e = broker
        .publisher()
        .publish(&topic, big)
        .await
        .expect_err("too large");
    assert_eq!(e.kind(), messaging_core::PublishErrorKind::PayloadTooLarge);
    assert!(!e.is_transient());
}

/// The victim of `a_killed_consumer_is_replaced_and_its_messages_redelivered`, run in a child
/// process: receives without settling, then waits to be killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "run by a_killed_consumer_is_replaced_and_its_messages_redelivered"]
async fn victim_consumer() {
    let (Ok(topic), Ok(group)) = (
        std::env::var("KAFKA_VICTIM_TOPIC"),
        std::env::var("KAFKA_VICTIM_GROUP"),
    ) else {
        panic!("run by a_killed_consumer_is_replaced_and_its_messages_redelivered");
    };
    let broker = connect(single_partition()).await;
    let mut sub = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new(group))
        .await
        .expect("subscribe");
    println!("SUBSCRIBED");
    let mut held = Vec::new();
    for _ in 0..10 {
        held.push(recv(&mut sub).await);
    }
    println!("HOLDING");
    tokio::time::sleep(Duration::from_secs(600)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_consumer_is_replaced_and_its_messages_redelivered() {
    use std::io::BufRead as _;

    let broker = connect(single_partition()).await;
    let topic = unique("kill");
    let group = unique("g");
    broker.create_topic(&topic).await.expect("topic");
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "victim_consumer", "--ignored", "--nocapture"])
        .env("KAFKA_VICTIM_TOPIC", &topic)
        .env("KAFKA_VICTIM_GROUP", &group)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the victim");
    let stdout = child.stdout.take().expect("stdout");
    let (lines_tx, mut lines) = tokio::sync::mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = lines_tx.send(line);
        }
    });
    wait_for(&mut lines, "SUBSCRIBED").await;
    publish_batch(&broker, &topic, 10).await;
    wait_for(&mut lines, "HOLDING").await;
    // SIGKILL: no close, no commit, no leave-group.
    child.kill().expect("kill");
    let _ = child.wait();

    let started = std::time::Instant::now();
    let mut heir = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new(&group))
        .await
        .expect("subscribe");
    let mut seen = Vec::new();
    for _ in 0..10 {
        let d = recv(&mut heir).await;
        seen.push(index(&d));
        d.ack().await.expect("ack");
    }
    seen.sort_unstable();
    assert_eq!(
        seen,
        (0..10).collect::<Vec<_>>(),
        "every unsettled message comes back"
    );
    eprintln!(
        "partitions taken over after {:?} (session timeout {:?})",
        started.elapsed(),
        nisshi_config().session_timeout
    );
    heir.close().await.expect("close");
}

/// Waits for the child's stdout to show `want`.
async fn wait_for(lines: &mut tokio::sync::mpsc::UnboundedReceiver<String>, want: &str) {
    tokio::time::timeout(WAIT, async {
        while let Some(line) = lines.recv().await {
            if line.contains(want) {
                return;
            }
        }
        panic!("the victim exited before printing {want}");
    })
    .await
    .unwrap_or_else(|_| panic!("the victim did not print {want}"));
}
