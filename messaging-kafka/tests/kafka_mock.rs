//! Kafka-specific behaviour that nisshi cannot show, on librdkafka's in-process mock cluster:
//! committed offsets that cannot be fetched when partitions are assigned (the mock cluster
//! injects request errors by API key).

mod common;

use std::time::Duration;

use common::{MockGuard, connect, test_config, unique};
use messaging_core::{
    Delivery, EventBuilder, EventExt as _, Publisher, StartFrom, SubscribeOptions, Subscriber,
    Subscription,
};
use messaging_kafka::{KafkaConfig, KafkaSubscription};
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};

const WAIT: Duration = Duration::from_secs(30);

fn event(i: usize) -> messaging_core::Event {
    EventBuilder::new("/test", "kafka.mock")
        .id(format!("e{i}"))
        .json(&i)
        .build()
        .expect("event")
}

async fn recv_index(sub: &mut KafkaSubscription) -> usize {
    let d = tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("a delivery in time: partitions whose committed offsets could not be fetched must not stall")
        .expect("recv");
    let i = d.event().expect("event").data_json().expect("json");
    d.ack().await.expect("ack");
    i
}

/// How often `messaging_kafka_offset_fetch_failures_total` was incremented since the last call
/// (through a process-wide recorder).
fn failures_counted() -> u64 {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
    static SNAPSHOTTER: std::sync::OnceLock<Snapshotter> = std::sync::OnceLock::new();
    let snapshotter = SNAPSHOTTER.get_or_init(|| {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        recorder.install().expect("install the metrics recorder");
        snapshotter
    });
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == "messaging_kafka_offset_fetch_failures_total")
        .map(|(.., value)| match value {
            DebugValue::Counter(n) => n,
            _ => 0,
        })
        .sum()
}

/// Item 5 of issue 12: the committed offsets of a new assignment cannot be fetched (the
/// coordinator answers OffsetFetch with errors). The partitions must not be assigned untracked
/// (every message read from them discarded, nothing committed): the fetch is retried with the
/// partitions paused, the failure is counted, and every message is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_offsets_that_cannot_be_fetched_are_retried_not_discarded() {
    let _ = env_logger::builder().is_test(true).try_init();
    failures_counted();
    let mock = MockGuard::start();
    let config = KafkaConfig {
        create_topics: false,
        retry_tiers: Vec::new(),
        ..test_config(&mock.servers)
    };
    let broker = connect(config).await;
    let topic = unique("fetchfail");
    let group = unique("g");
    mock.create(std::slice::from_ref(&topic));
    // Messages already on the topic: a new group starting at the earliest offset must get them.
    broker
        .publisher()
        .publish_batch(&topic, (0..10).map(event).collect())
        .await
        .expect("publish");
    mock.request_errors(
        RDKafkaApiKey::OffsetFetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED; 4],
    );
    let mut sub = broker
        .subscriber()
        .subscribe(
            &topic,
            SubscribeOptions::new(&group).start_from(StartFrom::Earliest),
        )
        .await
        .expect("subscribe");
    broker
        .publisher()
        .publish_batch(&topic, (10..20).map(event).collect())
        .await
        .expect("publish");
    let mut seen = Vec::new();
    for _ in 0..20 {
        seen.push(recv_index(&mut sub).await);
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..20).collect::<Vec<_>>(), "every message delivered");

    assert!(
        failures_counted() > 0,
        "the failed fetch of the first assignment is counted"
    );

    // A rebalance whose fetch fails too: a second member joins while OffsetFetch errors.
    mock.request_errors(
        RDKafkaApiKey::OffsetFetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED; 4],
    );
    let mut second = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new(&group))
        .await
        .expect("second member");
    broker
        .publisher()
        .publish_batch(&topic, (20..40).map(event).collect())
        .await
        .expect("publish");
    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while (20..40).any(|i| !seen.contains(&i)) {
        let d = tokio::select! {
            d = sub.recv() => d,
            d = second.recv() => d,
            () = tokio::time::sleep_until(deadline) => panic!(
                "only {} of 20 messages delivered after a rebalance whose fetch failed: {seen:?}",
                seen.len()
            ),
        }
        .expect("recv");
        let i: usize = d.event().expect("event").data_json().expect("json");
        // A delivery of a partition revoked meanwhile comes back to its new owner, and
        // messages of the first phase whose ack was not committed before the rebalance come
        // again (at least once).
        if d.ack().await.is_ok() && i >= 20 && !seen.contains(&i) {
            seen.push(i);
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, (20..40).collect::<Vec<_>>());
    // Redeliveries still on their way are settled too.
    loop {
        let d = tokio::select! {
            d = sub.recv() => d,
            d = second.recv() => d,
            () = tokio::time::sleep(Duration::from_secs(2)) => break,
        }
        .expect("recv");
        let _ = d.ack().await;
    }
    // Committed by the periodic commit (commits while the group rebalances on close can be
    // refused by the mock cluster, which makes the close's own commit best effort).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let lag = broker
        .lag(&topic, &group)
        .await
        .expect("lag")
        .expect("the group committed");
    assert_eq!(
        lag.iter().map(|l| l.lag).sum::<u64>(),
        0,
        "everything settled is committed: {lag:?}"
    );
    assert!(
        failures_counted() > 0,
        "the failed fetch of the rebalance is counted"
    );
    second.close().await.expect("close");
    sub.close().await.expect("close");
}

/// Review of issue 12 item 5: pending partitions are retried on the poller thread, which also
/// polls the healthy partitions and stores their offsets. While the coordinator cannot answer
/// OffsetFetch, a retry must not hold up the healthy partitions for long (each request of an
/// attempt is bounded by 1 s, an attempt by 3 s): their messages keep arriving within a few
/// seconds, and the pending partitions' messages arrive once the fetch succeeds.
///
/// Two members of a cooperative-sticky group share a 4-partition topic; the second leaves
/// while OffsetFetch answers with retriable errors, so the first keeps its own partitions
/// (healthy) and gets the second's incrementally (pending).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn healthy_partitions_keep_flowing_while_others_are_pending() {
    use std::collections::{HashMap, HashSet};
    use tokio::time::Instant;

    let _ = env_logger::builder().is_test(true).try_init();
    let mock = MockGuard::start();
    let config = KafkaConfig {
        create_topics: false,
        retry_tiers: Vec::new(),
        ..test_config(&mock.servers)
    }
    .property("partition.assignment.strategy", "cooperative-sticky");
    let broker = connect(config).await;
    let topic = unique("healthy");
    let group = unique("g");
    mock.create(std::slice::from_ref(&topic));
    let mut first = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new(&group))
        .await
        .expect("subscribe");
    let mut second = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new(&group))
        .await
        .expect("second member");
    // Learn which partitions each member has (the second's assignment took some of the
    // first's, cooperatively).
    let mut mine = HashSet::new();
    let mut theirs = HashSet::new();
    let deadline = Instant::now() + WAIT;
    let mut next = 0;
    while mine.is_empty() || theirs.is_empty() {
        assert!(Instant::now() < deadline, "both members get partitions");
        broker
            .publisher()
            .publish_batch(&topic, (next..next + 8).map(event).collect())
            .await
            .expect("publish");
        next += 8;
        let quiet = tokio::time::sleep(Duration::from_millis(1500));
        tokio::pin!(quiet);
        loop {
            tokio::select! {
                d = first.recv() => {
                    let d = d.expect("recv");
                    mine.insert(d.partition());
                    d.ack().await.expect("ack");
                }
                d = second.recv() => {
                    let d = d.expect("recv");
                    theirs.insert(d.partition());
                    let _ = d.ack().await;
                }
                () = &mut quiet => break,
            }
        }
    }
    assert!(mine.is_disjoint(&theirs), "{mine:?} {theirs:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;

    // The coordinator answers OffsetFetch with retriable errors for a while; the second
    // member leaves, its partitions go to the first, whose fetch for them fails.
    mock.request_errors(
        RDKafkaApiKey::OffsetFetch,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_COORDINATOR_LOAD_IN_PROGRESS; 300],
    );
    second.close().await.expect("close");
    // Wait for the rebalance to hand the first member the second's partitions.
    tokio::time::sleep(Duration::from_secs(2)).await;

    // Publish one message every 100 ms for 8 s; messages of the healthy partitions must keep
    // arriving promptly.
    let publisher = broker.publisher();
    let start = Instant::now();
    let sent: HashMap<usize, Instant> = HashMap::new();
    let sent = std::sync::Arc::new(std::sync::Mutex::new(sent));
    let producer = {
        let sent = sent.clone();
        let topic = topic.clone();
        tokio::spawn(async move {
            for i in 1000..1080 {
                sent.lock().unwrap().insert(i, Instant::now());
                publisher.publish(&topic, event(i)).await.expect("publish");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let mut got = HashSet::new();
    let mut worst = Duration::ZERO;
    let mut healthy = 0;
    let mut cleared = false;
    let deadline = start + Duration::from_secs(60);
    while got.len() < 80 {
        let d = tokio::select! {
            d = first.recv() => d.expect("recv"),
            () = tokio::time::sleep_until(start + Duration::from_secs(10)), if !cleared => {
                // Let the pending partitions through in the end.
                mock.clear_request_errors(RDKafkaApiKey::OffsetFetch);
                cleared = true;
                continue;
            }
            () = tokio::time::sleep_until(deadline) => {
                panic!("only {} of 80 delivered: {got:?}", got.len())
            }
        };
        let i: usize = d.event().expect("event").data_json().expect("json");
        if i >= 1000 {
            let latency = sent.lock().unwrap()[&i].elapsed();
            if mine.contains(&d.partition()) {
                healthy += 1;
                worst = worst.max(latency);
            }
            got.insert(i);
        }
        d.ack().await.expect("ack");
    }
    producer.await.expect("producer");
    eprintln!("healthy deliveries: {healthy}, worst latency {worst:?}");
    assert!(
        healthy > 0,
        "messages went to the healthy partitions {mine:?}"
    );
    assert!(
        worst < Duration::from_millis(3500),
        "a healthy partition's message waited {worst:?} while other partitions were pending"
    );
    first.close().await.expect("close");
}

/// A new group's start positions are committed when its first assignment comes; if that
/// commit fails (the coordinator refuses commits while the group rebalances, as it did while
/// five members of one group joined in `conformance_mock::many_topics`), the next assignment
/// must not decide again that the group is new and start at the then end of the topic: the
/// messages published after `subscribe` returned would be skipped for good.
///
/// One member subscribes while every OffsetCommit fails; messages are published; a second
/// member of the group (on another topic) joins, so the eager rebalance revokes and
/// re-assigns the first member's partitions. Every message must still be delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_groups_start_survives_a_failed_commit_of_it() {
    let _ = env_logger::builder().is_test(true).try_init();
    let mock = MockGuard::start();
    let config = KafkaConfig {
        create_topics: false,
        retry_tiers: Vec::new(),
        ..test_config(&mock.servers)
    };
    let broker = connect(config).await;
    let topic = unique("startcommit");
    let other_topic = unique("startcommit-other");
    let group = unique("g");
    mock.create(&[topic.clone(), other_topic.clone()]);
    mock.request_errors(
        RDKafkaApiKey::OffsetCommit,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_REBALANCE_IN_PROGRESS; 1000],
    );
    let mut sub = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new(&group))
        .await
        .expect("subscribe");
    broker
        .publisher()
        .publish_batch(&topic, (0..8).map(event).collect())
        .await
        .expect("publish");
    // Let the first member read them before the rebalance (they are refused after it).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut other = broker
        .subscriber()
        .subscribe(&other_topic, SubscribeOptions::new(&group))
        .await
        .expect("second member");
    mock.clear_request_errors(RDKafkaApiKey::OffsetCommit);

    let mut seen = Vec::new();
    let deadline = tokio::time::Instant::now() + WAIT;
    while seen.len() < 8 {
        let d = tokio::select! {
            d = sub.recv() => d.expect("recv"),
            () = tokio::time::sleep_until(deadline) => panic!(
                "only {seen:?} of 8 messages delivered: the re-assigned partitions started past them"
            ),
        };
        let i: usize = d.event().expect("event").data_json().expect("json");
        // A delivery read before the rebalance is refused and comes again.
        if d.ack().await.is_ok() && !seen.contains(&i) {
            seen.push(i);
        }
    }
    seen.sort_unstable();
    assert_eq!(seen, (0..8).collect::<Vec<_>>());
    other.close().await.expect("close");
    sub.close().await.expect("close");
}
