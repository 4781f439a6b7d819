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

/// Produces event `i` in structured mode straight to `partition`, with `headers` added (what
/// an earlier version of the adapter, or another producer, left on the topic).
async fn produce_raw(topic: &str, partition: i32, i: usize, headers: &[(&str, &str)]) {
    use rdkafka::message::{Header, OwnedHeaders};
    use rdkafka::producer::{FutureProducer, FutureRecord};
    let producer: FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::NISSHI)
        .create()
        .expect("raw producer");
    let body = serde_json::json!({
        "specversion": "1.0",
        "id": format!("e{i}"),
        "source": "/test",
        "type": "kafka.test",
        "datacontenttype": "application/json",
        "data": i,
    })
    .to_string();
    let mut h = OwnedHeaders::new().insert(Header {
        key: "content-type",
        value: Some("application/cloudevents+json"),
    });
    for (k, v) in headers {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    let record: FutureRecord<'_, (), str> = FutureRecord::to(topic)
        .partition(partition)
        .payload(body.as_str())
        .headers(h);
    producer
        .send(record, Duration::from_secs(10))
        .await
        .expect("raw produce");
}

/// Commits `offset` on `topic`'s `partition` for `group` without joining it (what the group
/// committed before, or under an earlier group id).
fn commit_raw(group: &str, topic: &str, partition: i32, offset: i64) {
    use rdkafka::consumer::{BaseConsumer, CommitMode};
    let consumer: BaseConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", common::NISSHI)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("raw consumer");
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(topic, partition, rdkafka::Offset::Offset(offset))
        .expect("offset");
    consumer
        .commit(&tpl, CommitMode::Sync)
        .expect("commit without joining the group");
}

/// Receives `n` deliveries from `sub`, acks them, and returns their indices sorted.
async fn drain(sub: &mut KafkaSubscription, n: usize) -> Vec<usize> {
    let mut seen = Vec::new();
    for _ in 0..n {
        let d = recv(sub).await;
        seen.push(index(&d));
        d.ack().await.expect("ack");
    }
    seen.sort_unstable();
    seen
}

/// Item 4 of issue 12. Partitions added to a topic have no commit of the group, and messages
/// produced to them before the group rebalances onto them must be delivered: a partition
/// without a commit starts at its earliest offset when the group has commits on the topic.
///
/// Neither nisshi 0.8 nor librdkafka's mock cluster implements CreatePartitions, so the state
/// the group finds after `kafka-topics --alter --partitions 2` is laid out directly: a
/// 2-partition topic on which the group has committed partition 0 only, and messages on
/// partition 1 that the group never saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partition_added_to_an_existing_group_is_read_from_its_start() {
    let broker = connect(KafkaConfig {
        partitions: 2,
        ..nisshi_config()
    })
    .await;
    let topic = unique("grown");
    let group = unique("g");
    broker.create_topic(&topic).await.expect("topic");
    // The group read partition 0 up to offset 3 while the topic had one partition.
    for i in 0..3 {
        produce_raw(&topic, 0, i, &[]).await;
    }
    commit_raw(&group, &topic, 0, 3);
    // The partition added since has messages the group has not seen, and so has partition 0.
    for i in 3..8 {
        produce_raw(&topic, 1, i, &[]).await;
    }
    for i in 8..10 {
        produce_raw(&topic, 0, i, &[]).await;
    }
    let mut sub = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new(&group))
        .await
        .expect("subscribe");
    assert_eq!(
        drain(&mut sub, 7).await,
        (3..10).collect::<Vec<_>>(),
        "the new partition from its start, partition 0 from its commit"
    );
    assert_quiet(&mut sub, Duration::from_secs(2)).await;
    sub.close().await.expect("close");
}

/// A brand-new group honours `StartFrom::New` on every partition, also when its members join
/// in the same rebalance: the partitions of one member do not look "added" because another
/// member has just committed its start positions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_new_group_joining_together_skip_the_history() {
    let broker = connect(nisshi_config()).await;
    let topic = unique("together");
    let group = unique("g");
    broker.create_topic(&topic).await.expect("topic");
    publish_batch(&broker, &topic, 40).await;
    let (sa, sb) = (broker.subscriber(), broker.subscriber());
    let (a, b) = tokio::join!(
        sa.subscribe(&topic, SubscribeOptions::new(&group)),
        sb.subscribe(&topic, SubscribeOptions::new(&group)),
    );
    let (mut a, mut b) = (a.expect("subscribe a"), b.expect("subscribe b"));
    // Let the group settle on its final assignment before publishing.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let fresh: Vec<_> = (100..120).map(event).collect();
    broker
        .publisher()
        .publish_batch(&topic, fresh)
        .await
        .expect("publish");
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < 20 {
        let d = tokio::select! {
            d = a.recv() => d,
            d = b.recv() => d,
            () = tokio::time::sleep_until(deadline) => panic!("only {seen:?} arrived"),
        }
        .expect("recv");
        let i = index(&d);
        assert!(
            i >= 100,
            "message {i} was published before the group existed"
        );
        if d.ack().await.is_ok() && !seen.contains(&i) {
            seen.push(i);
        }
    }
    a.close().await.expect("close");
    b.close().await.expect("close");
}

/// Item 6 of issue 12. Messages parked in a retry topic were already settled on the topic;
/// a subscription whose tiers changed, or that became ordered, still drains every retry topic
/// of its group, and depth counts what is parked there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_retries_survive_a_change_of_tiers_or_ordering() {
    let tiers = |secs: u64| KafkaConfig {
        retry_tiers: vec![Duration::from_secs(secs)],
        ..single_partition()
    };
    let before = connect(tiers(3)).await;
    let topic = unique("parked");
    let group = unique("g");
    let park = |ids: std::ops::Range<usize>| {
        let (before, topic, group) = (&before, &topic, &group);
        async move {
            let mut sub = before
                .subscriber()
                .subscribe(topic, SubscribeOptions::new(group))
                .await
                .expect("subscribe");
            publish_batch_from(before, topic, ids.clone()).await;
            for _ in ids {
                let d = recv(&mut sub).await;
                d.nack(Some(Duration::from_secs(2)))
                    .await
                    .expect("nack to the 3 s tier");
            }
            // Closed before the retries are due: they stay parked in the retry topic.
            sub.close().await.expect("close");
        }
    };
    park(0..2).await;
    settle_commits().await;

    let after = connect(tiers(5)).await;
    let depth = messaging_core::Inspect::depth(&after, &topic, &group)
        .await
        .expect("depth");
    assert_eq!(depth, Some(2), "depth counts the parked retries");
    let mut sub = after
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new(&group))
        .await
        .expect("subscribe with other tiers");
    for _ in 0..2 {
        let d = recv(&mut sub).await;
        assert!(
            d.kafka_topic().ends_with(".retry.3s"),
            "{}",
            d.kafka_topic()
        );
        assert_eq!(d.attempt(), 2);
        d.ack().await.expect("ack");
    }
    sub.close().await.expect("close");
    settle_commits().await;
    let depth = messaging_core::Inspect::depth(&after, &topic, &group)
        .await
        .expect("depth");
    assert_eq!(depth, Some(0));

    park(2..3).await;
    let mut ordered = before
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new(&group).ordered(true))
        .await
        .expect("subscribe ordered");
    let d = recv(&mut ordered).await;
    assert_eq!(
        (index(&d), d.attempt()),
        (2, 2),
        "drained by an ordered subscription"
    );
    d.ack().await.expect("ack");
    ordered.close().await.expect("close");
}

async fn publish_batch_from(broker: &KafkaBroker, topic: &str, ids: std::ops::Range<usize>) {
    broker
        .publisher()
        .publish_batch(topic, ids.map(event).collect())
        .await
        .expect("publish batch");
}

/// Item 10 of issue 12. (topic `<u>.a.b`, group `c`) and (topic `<u>.a`, group `b.c`) shared
/// the retry topic `<u>.a.b.c.retry.<tier>`, so each group got the other's retries. They no
/// longer share one; messages an earlier version parked on the shared name reach only the
/// group of their origin topic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_topic_and_group_names_never_share_a_retry_topic() {
    let broker = connect(KafkaConfig {
        retry_tiers: vec![Duration::from_secs(1)],
        ..single_partition()
    })
    .await;
    let u = unique("n");
    let v = uuid::Uuid::new_v4().simple().to_string();
    let (t1, g1) = (format!("{u}.a.b"), format!("c{v}"));
    let (t2, g2) = (format!("{u}.a"), format!("b.c{v}"));
    // What the previous naming left behind: both pairs' retries on one topic.
    let shared = format!("{u}.a.b.c{v}.retry.1s");
    broker.create_topic(&shared).await.expect("topic");
    produce_raw(
        &shared,
        0,
        10,
        &[("messaging-topic", &t1), ("messaging-attempt", "1")],
    )
    .await;
    produce_raw(
        &shared,
        0,
        20,
        &[("messaging-topic", &t2), ("messaging-attempt", "1")],
    )
    .await;

    let mut s1 = broker
        .subscriber()
        .subscribe(&t1, SubscribeOptions::new(&g1))
        .await
        .expect("subscribe 1");
    let mut s2 = broker
        .subscriber()
        .subscribe(&t2, SubscribeOptions::new(&g2))
        .await
        .expect("subscribe 2");
    broker
        .publisher()
        .publish(&t1, event(11))
        .await
        .expect("publish");
    broker
        .publisher()
        .publish(&t2, event(21))
        .await
        .expect("publish");
    let mut retry_topics = Vec::new();
    for (sub, parked, fresh) in [(&mut s1, 10, 11), (&mut s2, 20, 21)] {
        let mut got = Vec::new();
        while got.len() < 2 {
            let d = recv(sub).await;
            let i = index(&d);
            if i == fresh && d.attempt() == 1 {
                d.nack(Some(Duration::from_millis(500)))
                    .await
                    .expect("nack with delay");
                continue;
            }
            if i == fresh {
                retry_topics.push(d.kafka_topic().to_owned());
            }
            got.push(i);
            d.ack().await.expect("ack");
        }
        got.sort_unstable();
        assert_eq!(
            got,
            vec![parked, fresh],
            "each group gets its own parked retry and its own messages, nothing of the other's"
        );
    }
    assert_ne!(retry_topics[0], retry_topics[1], "{retry_topics:?}");
    assert_quiet(&mut s1, Duration::from_secs(2)).await;
    assert_quiet(&mut s2, Duration::from_millis(100)).await;
    s1.close().await.expect("close");
    s2.close().await.expect("close");
}

/// The framework's own groups — the dead-letter group, the requester's — are one Kafka
/// consumer group per topic: two services' dead-letter consumers no longer rebalance each
/// other (a delivery held by one is not revoked when the other subscribes).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_groups_of_different_topics_do_not_rebalance_each_other() {
    use messaging_core::dead_letter::DEAD_LETTER_GROUP;
    let broker = connect(single_partition()).await;
    let (dlq1, dlq2) = (unique("svc1") + ".dlq", unique("svc2") + ".dlq");
    let mut s1 = broker
        .subscriber()
        .subscribe(&dlq1, SubscribeOptions::new(DEAD_LETTER_GROUP))
        .await
        .expect("subscribe 1");
    broker
        .publisher()
        .publish(&dlq1, event(1))
        .await
        .expect("publish");
    let held = recv(&mut s1).await;
    let mut s2 = broker
        .subscriber()
        .subscribe(&dlq2, SubscribeOptions::new(DEAD_LETTER_GROUP))
        .await
        .expect("subscribe 2");
    held.ack()
        .await
        .expect("the first service's delivery was not revoked by the second's subscribe");
    s1.close().await.expect("close");
    s2.close().await.expect("close");
}

/// The dead-letter group's commits under its former cluster-wide id carry over: dead letters
/// replayed before the upgrade are not handed out again, and depth counts from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dead_letter_group_continues_from_its_legacy_commits() {
    use messaging_core::dead_letter::DEAD_LETTER_GROUP;
    let broker = connect(single_partition()).await;
    let dlq = unique("legacy") + ".dlq";
    broker.create_topic(&dlq).await.expect("topic");
    publish_batch(&broker, &dlq, 5).await;
    commit_raw(DEAD_LETTER_GROUP, &dlq, 0, 3);
    let depth = messaging_core::Inspect::depth(&broker, &dlq, DEAD_LETTER_GROUP)
        .await
        .expect("depth");
    assert_eq!(depth, Some(2));
    let mut sub = broker
        .subscriber()
        .subscribe(&dlq, SubscribeOptions::new(DEAD_LETTER_GROUP))
        .await
        .expect("subscribe");
    assert_eq!(drain(&mut sub, 2).await, vec![3, 4]);
    assert_quiet(&mut sub, Duration::from_secs(2)).await;
    sub.close().await.expect("close");
}

/// Review of issue 12 item 6: groups `<u>g/v1` and `<u>g_v1` on one topic. The legacy retry
/// topic of `<u>g/v1` (its group sanitized) is `<topic>.<u>g_v1.retry.1s`, the current retry
/// topic of `<u>g_v1`; `<u>g/v1` drains it, and must not handle what `<u>g_v1` parks there.
/// Each group parks one retry and gets back only its own. A copy an older version parked there
/// (no group header) goes to `<u>g_v1`, whose current name it is and which is using it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_never_handles_another_groups_retries_on_its_legacy_retry_topic() {
    let broker = connect(KafkaConfig {
        retry_tiers: vec![Duration::from_secs(1)],
        ..single_partition()
    })
    .await;
    let topic = unique("foreign");
    let u = uuid::Uuid::new_v4().simple().to_string();
    let (slash, underscore) = (format!("{u}g/v1"), format!("{u}g_v1"));
    let shared = format!("{topic}.{underscore}.retry.1s");
    broker.create_topic(&topic).await.expect("topic");
    // `<u>g_v1` subscribes first: its retry topic exists when `<u>g/v1` looks for legacy ones.
    let mut b = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new(&underscore))
        .await
        .expect("subscribe g_v1");
    // What an older version parked on the shared name: no group header.
    produce_raw(
        &shared,
        0,
        30,
        &[("messaging-topic", &topic), ("messaging-attempt", "1")],
    )
    .await;
    let mut a = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new(&slash))
        .await
        .expect("subscribe g/v1");
    publish_batch_from(&broker, &topic, 0..2).await;
    // Group g/v1 parks message 0, group g_v1 parks message 1; each acks the other one.
    for (sub, mine, legacy) in [(&mut a, 0, None), (&mut b, 1, Some(30))] {
        let mut got = Vec::new();
        let mut want = vec![0, 1, mine];
        want.extend(legacy);
        want.sort_unstable();
        while got.len() < want.len() {
            let d = recv(sub).await;
            let i = index(&d);
            if i == mine && d.attempt() == 1 {
                d.nack(Some(Duration::from_millis(500)))
                    .await
                    .expect("nack with delay");
            } else {
                d.ack().await.expect("ack");
            }
            got.push(i);
        }
        got.sort_unstable();
        assert_eq!(
            got, want,
            "a group gets its own retry and the older version's copy only where it is the owner"
        );
    }
    assert_quiet(&mut a, Duration::from_secs(3)).await;
    assert_quiet(&mut b, Duration::from_millis(200)).await;
    a.close().await.expect("close");
    b.close().await.expect("close");
}

/// A handler running longer than `max.poll.interval.ms` keeps the group membership: the
/// adapter polls on its own thread whatever the handler does, so the partition is not
/// rebalanced to the group's other consumer and the message is handled once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_longer_than_the_poll_interval_keeps_its_partition() {
    use std::sync::{Arc, Mutex};

    use messaging_core::handler::{HandlerError, Incoming, handler_fn};
    use messaging_core::runtime::{Consumer, ConsumerState};

    // Long enough that a member whose heartbeats are late on a loaded machine is not evicted
    // (an eviction hands the message out again, whatever the poll interval).
    let poll_interval = Duration::from_secs(10);
    let config = KafkaConfig {
        // Every client of the broker gets these; librdkafka checks the pair on each.
        properties: vec![
            (
                "max.poll.interval.ms".into(),
                poll_interval.as_millis().to_string(),
            ),
            (
                "session.timeout.ms".into(),
                poll_interval.as_millis().to_string(),
            ),
        ],
        ..single_partition()
    };
    let broker = connect(config).await;
    let topic = unique("long-handler");
    let group = unique("g");
    let options = SubscribeOptions::new(&group).start_from(StartFrom::Earliest);
    let runs: Arc<Mutex<Vec<&'static str>>> = Arc::default();
    let consumer = |name: &'static str| {
        let runs = runs.clone();
        Consumer::builder(
            broker.subscriber(),
            Arc::new(broker.publisher()),
            &topic,
            options.clone(),
        )
        .build(handler_fn(move |_msg: Incoming| {
            let runs = runs.clone();
            async move {
                runs.lock().unwrap().push(name);
                tokio::time::sleep(poll_interval * 2).await;
                Ok::<(), HandlerError>(())
            }
        }))
    };
    let stop = |runs: Arc<Mutex<Vec<&'static str>>>| async move {
        let end = tokio::time::Instant::now() + WAIT * 2;
        while runs.lock().unwrap().is_empty() && tokio::time::Instant::now() < end {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The handler's two intervals, and one more for a rebalance to hand it out again.
        tokio::time::sleep(poll_interval * 3).await;
    };
    let (a, b) = (consumer("a"), consumer("b"));
    let (ha, hb) = (a.handle(), b.handle());
    let a = tokio::spawn(a.run(stop(runs.clone())));
    // The second member joins once the first is in: a join rebalances the group, which would
    // hand an unsettled message out again whatever the poll interval.
    let end = tokio::time::Instant::now() + WAIT;
    while ha.status().state != ConsumerState::Running && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let b = tokio::spawn(b.run(stop(runs.clone())));
    while hb.status().state != ConsumerState::Running && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        ha.status().is_ready() && hb.status().is_ready(),
        "both members subscribed: {:?} {:?}",
        ha.status(),
        hb.status()
    );
    // Let the join's rebalance settle before the message is there to be handed out.
    tokio::time::sleep(poll_interval).await;
    publish_batch(&broker, &topic, 1).await;
    let a = a.await.unwrap().expect("consumer a runs");
    let b = b.await.unwrap().expect("consumer b runs");
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 1, "handled once: {runs:?} {a:?} {b:?}");
    assert_eq!(a.acked + b.acked, 1, "{a:?} {b:?}");
}

/// A partition revoked while a delivery is in flight waits for it (`revoke_timeout`), and the
/// ack given during that wait is committed for good: the partition's next owner starts after
/// it. (Found by the scale drill: every partition's last in-flight message was handled again
/// after a graceful rebalance.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_given_while_its_partition_is_revoked_stays_committed() {
    // Two partitions, so that the joining member is assigned one; the messages share a key
    // and so a partition.
    let config = KafkaConfig {
        revoke_timeout: Duration::from_secs(30),
        partitions: 2,
        // A member whose heartbeats are late on a loaded machine must not be evicted: the
        // test is about a revocation, not an expiry.
        session_timeout: Duration::from_secs(20),
        ..nisshi_config()
    };
    let broker = connect(config.clone()).await;
    let topic = unique("revoke");
    let options = SubscribeOptions::new(unique("g"));
    let mut first = broker
        .subscriber()
        .subscribe(&topic, options.clone())
        .await
        .expect("subscribe");
    let keyed = |i: usize| {
        EventBuilder::new("/test", "kafka.test")
            .id(format!("e{i}"))
            .ordering_key("one-partition")
            .json(&i)
            .build()
            .expect("event")
    };
    // Two messages: nothing but the held one is in flight when the revocation comes.
    broker
        .publisher()
        .publish_batch(&topic, vec![keyed(0), keyed(1)])
        .await
        .expect("publish");
    let d0 = recv(&mut first).await;
    assert_eq!(index(&d0), 0);
    d0.ack().await.expect("ack 0");
    let held = recv(&mut first).await;
    assert_eq!(index(&held), 1);
    settle_commits().await;
    // A second member joins: the first one's partition is revoked, and the revocation waits
    // for the held delivery.
    let other = connect(config).await;
    let joining = {
        let (topic, options) = (topic.clone(), options.clone());
        tokio::spawn(async move { other.subscriber().subscribe(&topic, options).await })
    };
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !joining.is_finished(),
        "the rebalance waits for the in-flight delivery"
    );
    held.ack().await.expect("ack 1 during the revocation");
    let mut second = tokio::time::timeout(WAIT, joining)
        .await
        .expect("the rebalance completes once the delivery is settled")
        .expect("join")
        .expect("subscribe");
    broker
        .publisher()
        .publish(&topic, keyed(2))
        .await
        .expect("publish");
    let next = tokio::time::timeout(WAIT, async {
        tokio::select! {
            d = first.recv() => d,
            d = second.recv() => d,
        }
    })
    .await
    .expect("a delivery in time")
    .expect("recv");
    assert_eq!(
        index(&next),
        2,
        "the ack given during the revocation was lost"
    );
    next.ack().await.expect("ack 2");
    first.close().await.expect("close");
    second.close().await.expect("close");
}
