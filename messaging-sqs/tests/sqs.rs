//! SQS/SNS-specific behaviour against moto on 127.0.0.1:4566 (started by
//! `scripts/brokers/moto.sh`): batch splitting, payload and attribute limits, the redrive
//! backstop, dead-letter replay, point-to-point queues. Every test uses fresh names and
//! bounded waits, and fails with a clear message if moto is unreachable.

use std::collections::HashSet;
use std::time::Duration;

use messaging_core::dead_letter::{self, DEAD_LETTER_GROUP, DeadLetterMetadata, ReplayOptions};
use messaging_core::{
    AttributesReader, ContentMode, Delivery, Event, EventBuilder, EventExt, Inspect,
    PublishErrorKind, Publisher, SubscribeErrorKind, SubscribeOptions, Subscriber, Subscription,
};
use messaging_sqs::{SqsBroker, SqsConfig, SqsSubscription, Topology};

mod common;
use common::{WAIT, config, event};

fn unique(what: &str) -> String {
    common::unique(&format!("st-{what}"))
}

async fn broker(config: SqsConfig) -> SqsBroker {
    common::broker_with(config).await
}

async fn recv(sub: &mut SqsSubscription) -> messaging_sqs::SqsDelivery {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .expect("a delivery within 20 s")
        .expect("receive")
}

async fn expect_nothing(sub: &mut SqsSubscription, period: Duration) {
    if let Ok(r) = tokio::time::timeout(period, sub.recv()).await {
        let d = r.expect("receive");
        panic!(
            "unexpected delivery of {:?}",
            d.event().map(|e| e.id().to_owned())
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_over_ten_are_split_and_delivered_once() {
    let b = broker(config()).await;
    let topic = unique("split");
    let mut sub = b
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("g"))
        .await
        .unwrap();
    let events: Vec<Event> = (0..35).map(|n| event(&format!("e{n}"))).collect();
    let receipts = b.publisher().publish_batch(&topic, events).await.unwrap();
    assert_eq!(receipts.len(), 35);
    let ids: HashSet<_> = receipts
        .iter()
        .map(|r| r.message_id.clone().expect("SNS assigns a message id"))
        .collect();
    assert_eq!(ids.len(), 35, "one message id per event");
    let mut seen = HashSet::new();
    while seen.len() < 35 {
        for d in tokio::time::timeout(WAIT, sub.recv_batch(10))
            .await
            .expect("batch in time")
            .unwrap()
        {
            assert!(seen.insert(d.event().unwrap().id().to_owned()), "duplicate");
            d.ack().await.unwrap();
        }
    }
    expect_nothing(&mut sub, Duration::from_millis(1500)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_entries_come_back_typed_with_their_events() {
    let b = broker(SqsConfig {
        max_sns_payload: 4096,
        ..config()
    })
    .await;
    let topic = unique("partial");
    let mut sub = b
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("g"))
        .await
        .unwrap();
    let mut events: Vec<Event> = (0..12).map(|n| event(&format!("e{n}"))).collect();
    events[3] = EventBuilder::new("urn:test", "test.event")
        .id("too-big")
        .bytes(None, vec![b'x'; 5000])
        .build()
        .unwrap();
    let err = b
        .publisher()
        .publish_batch(&topic, events)
        .await
        .expect_err("one event is over the limit");
    assert_eq!(err.accepted.len(), 11);
    assert_eq!(err.failed.len(), 1);
    let (i, back, e) = &err.failed[0];
    assert_eq!(*i, 3);
    assert_eq!(back.id(), "too-big", "the event is handed back");
    assert_eq!(e.kind(), PublishErrorKind::PayloadTooLarge, "{e}");
    assert!(!err.is_transient());
    let mut seen = HashSet::new();
    while seen.len() < 11 {
        let d = recv(&mut sub).await;
        let id = d.event().unwrap().id().to_owned();
        assert_ne!(id, "too-big");
        seen.insert(id);
        d.ack().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payload_limit_is_checked_before_the_call() {
    let b = broker(SqsConfig {
        max_sns_payload: 1000,
        ..config()
    })
    .await;
    assert_eq!(b.features().max_payload, Some(1000));
    let topic = unique("limit");
    let big = EventBuilder::new("urn:test", "test.event")
        .bytes(None, vec![b'x'; 1000])
        .build()
        .unwrap();
    let err = b.publisher().publish(&topic, big).await.unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::PayloadTooLarge, "{err}");
    assert!(!err.is_transient());
    assert!(err.to_string().contains("limit 1000"), "{err}");
    // The SQS side has its own limit, for point-to-point queues.
    let p2p = broker(SqsConfig {
        topology: Topology::PointToPoint,
        max_sqs_payload: 2000,
        ..config()
    })
    .await;
    assert_eq!(p2p.features().max_payload, Some(2000));
    let big = EventBuilder::new("urn:test", "test.event")
        .bytes(None, vec![b'x'; 2000])
        .build()
        .unwrap();
    let err = p2p.publisher().publish(&topic, big).await.unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::PayloadTooLarge, "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binary_mode_maps_attributes_and_falls_back_to_structured_past_ten() {
    let b = broker(SqsConfig {
        content_mode: ContentMode::Binary,
        ..config()
    })
    .await;
    let topic = unique("binary");
    let mut sub = b
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("g"))
        .await
        .unwrap();
    // 11 attributes in binary mode: more than SQS delivers. It travels structured, whole.
    let mut builder = EventBuilder::new("urn:test", "test.event")
        .id("wide-1")
        .json(&1)
        .subject("s");
    for n in 0..5 {
        builder = builder.extension(&format!("ext{n}"), "v");
    }
    let wide = builder.build().unwrap();
    b.publisher().publish(&topic, wide.clone()).await.unwrap();
    let d = recv(&mut sub).await;
    let got = d.event().unwrap();
    assert_eq!((got.id(), got.subject()), (wide.id(), wide.subject()));
    for n in 0..5 {
        assert_eq!(got.extension_str(&format!("ext{n}")), Some("v"));
    }
    assert_eq!(got.data_json::<i32>().unwrap(), 1);
    d.ack().await.unwrap();

    let ok = EventBuilder::new("urn:test", "test.event")
        .id("bin-1")
        .bytes(None, vec![0xff, 0x00, 0x10])
        .extension("tenant", "acme")
        .build()
        .unwrap();
    b.publisher().publish(&topic, ok).await.unwrap();
    // Read it raw: the attributes travel as SQS message attributes.
    let url = b
        .queue_url(&topic, "g")
        .await
        .unwrap()
        .expect("group queue");
    sub.close().await.unwrap();
    let mut found = None;
    for _ in 0..10 {
        let out = b
            .sqs()
            .receive_message()
            .queue_url(&url)
            .message_attribute_names("All")
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        if let Some(m) = out.messages.unwrap_or_default().into_iter().next() {
            found = Some(m);
            break;
        }
    }
    let m = found.expect("message in the group queue");
    let attrs = m.message_attributes.unwrap_or_default();
    assert_eq!(attrs["ce_id"].string_value(), Some("bin-1"));
    assert_eq!(attrs["ce_tenant"].string_value(), Some("acme"));
    assert_eq!(attrs["messaging-body"].string_value(), Some("base64"));
}

/// A consumer that crashes on a message never acks or nacks it: the adapter's poller is not
/// running either. SQS's redrive policy (maxReceiveCount = max_deliveries + 1) moves it to
/// the dead-letter topic's dead-letters queue by itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redrive_policy_is_the_backstop_for_crashing_consumers() {
    let b = broker(config()).await;
    let topic = unique("crash");
    let mut sub = b
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("g").max_deliveries(2))
        .await
        .unwrap();
    sub.close().await.unwrap();
    drop(sub);
    b.publisher()
        .publish(&topic, event("poison"))
        .await
        .unwrap();
    let url = b
        .queue_url(&topic, "g")
        .await
        .unwrap()
        .expect("group queue");
    let attrs = b
        .sqs()
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy)
        .send()
        .await
        .unwrap();
    let redrive: serde_json::Value = serde_json::from_str(
        attrs.attributes().unwrap()[&aws_sdk_sqs::types::QueueAttributeName::RedrivePolicy]
            .as_str(),
    )
    .unwrap();
    assert_eq!(redrive["maxReceiveCount"], 3);
    // Three receives that each "crash" (visibility 0, no delete).
    let mut receives = 0;
    let deadline = tokio::time::Instant::now() + WAIT;
    while receives < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "message not received 3 times"
        );
        let out = b
            .sqs()
            .receive_message()
            .queue_url(&url)
            .visibility_timeout(0)
            .wait_time_seconds(1)
            .send()
            .await
            .unwrap();
        receives += out.messages.unwrap_or_default().len();
    }
    // The next receive finds it over the limit: SQS moves it instead of delivering it.
    let out = b
        .sqs()
        .receive_message()
        .queue_url(&url)
        .wait_time_seconds(1)
        .send()
        .await
        .unwrap();
    assert!(
        out.messages.unwrap_or_default().is_empty(),
        "moved, not delivered"
    );
    let dlq = format!("{topic}.dlq");
    let mut dead = b
        .subscriber()
        .subscribe(&dlq, SubscribeOptions::new(DEAD_LETTER_GROUP))
        .await
        .unwrap();
    let d = recv(&mut dead).await;
    assert_eq!(d.event().unwrap().id(), "poison");
    d.ack().await.unwrap();
}

/// With the poller running, a message past the limit is forwarded to the dead-letter topic
/// with the dead-letter metadata, and the core's replay (receive, publish, delete — no
/// `StartMessageMoveTask`) brings it back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_carry_metadata_and_replay_back() {
    let b = broker(config()).await;
    let topic = unique("replay");
    let dlq = format!("{topic}.dlq");
    let mut sub = b
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("g").max_deliveries(2))
        .await
        .unwrap();
    assert_eq!(b.depth(&dlq, DEAD_LETTER_GROUP).await.unwrap(), Some(0));
    assert_eq!(b.depth(&dlq, "no-such-group").await.unwrap(), None);
    b.publisher().publish(&topic, event("bad")).await.unwrap();
    for attempt in 1..=2 {
        let d = recv(&mut sub).await;
        assert_eq!(d.attempt(), attempt);
        d.nack(None).await.unwrap();
    }
    expect_nothing(&mut sub, Duration::from_secs(2)).await;
    let deadline = tokio::time::Instant::now() + WAIT;
    while dead_letter::depth(&b, &dlq).await.unwrap() == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = dead_letter::replay(
        &b.subscriber(),
        &b.publisher(),
        &dlq,
        ReplayOptions::new().idle(Duration::from_secs(3)),
    )
    .await
    .unwrap();
    assert_eq!(report.replayed, 1, "{report:?}");
    let d = recv(&mut sub).await;
    let e = d.event().unwrap();
    assert_eq!(e.id(), "bad");
    let meta = DeadLetterMetadata::from_event(e).expect("metadata");
    assert_eq!(meta.reason, "retries-exhausted");
    assert_eq!(meta.topic, topic);
    assert_eq!(meta.group, "g");
    assert_eq!(meta.replays, 1);
    d.ack().await.unwrap();
    assert_eq!(dead_letter::depth(&b, &dlq).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_to_point_queues_without_sns() {
    let b = broker(SqsConfig {
        topology: Topology::PointToPoint,
        ..config()
    })
    .await;
    assert!(!b.features().consumer_groups);
    let queue = unique("jobs");
    let mut a = b
        .subscriber()
        .subscribe(&queue, SubscribeOptions::new("a").prefetch(1))
        .await
        .unwrap();
    let mut c = b
        .subscriber()
        .subscribe(&queue, SubscribeOptions::new("b").prefetch(1))
        .await
        .unwrap();
    let events: Vec<Event> = (0..12).map(|n| event(&format!("j{n}"))).collect();
    b.publisher().publish_batch(&queue, events).await.unwrap();
    let mut seen = HashSet::new();
    while seen.len() < 12 {
        tokio::select! {
            d = a.recv() => { let d = d.unwrap(); assert!(seen.insert(d.event().unwrap().id().to_owned())); d.ack().await.unwrap(); }
            d = c.recv() => { let d = d.unwrap(); assert!(seen.insert(d.event().unwrap().id().to_owned())); d.ack().await.unwrap(); }
            _ = tokio::time::sleep(WAIT) => panic!("only {} of 12 jobs arrived", seen.len()),
        }
    }
    // Ordering on a plain queue needs a FIFO queue.
    let err = b
        .subscriber()
        .subscribe(&queue, SubscribeOptions::new("a").ordered(true))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SubscribeErrorKind::Unsupported, "{err}");
    let fifo = format!("{}.fifo", unique("ordered"));
    let mut o = b
        .subscriber()
        .subscribe(&fifo, SubscribeOptions::new("a").ordered(true))
        .await
        .unwrap();
    let keyed: Vec<Event> = (0..5)
        .map(|n| {
            EventBuilder::new("urn:test", "test.event")
                .id(format!("k{n}"))
                .ordering_key("k")
                .build()
                .unwrap()
        })
        .collect();
    let receipts = b.publisher().publish_batch(&fifo, keyed).await.unwrap();
    assert!(receipts.iter().all(|r| r.sequence_number.is_some()));
    for n in 0..5 {
        let d = recv(&mut o).await;
        assert_eq!(d.event().unwrap().id(), format!("k{n}"));
        d.ack().await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_group_on_an_existing_standard_topic_is_refused() {
    let b = broker(config()).await;
    let topic = unique("std");
    b.publisher().publish(&topic, event("x")).await.unwrap();
    // A second broker (another process) finds the standard topic.
    let other = broker(config()).await;
    let err = other
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("g").ordered(true))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SubscribeErrorKind::Unsupported, "{err}");
    assert!(err.to_string().contains("standard SNS topic"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_of_a_batch_settle_together_and_stay_settled() {
    let b = broker(config()).await;
    let topic = unique("acks");
    let mut sub = b
        .subscriber()
        .subscribe(
            &topic,
            SubscribeOptions::new("g").ack_deadline(Duration::from_secs(2)),
        )
        .await
        .unwrap();
    let events: Vec<Event> = (0..30).map(|n| event(&format!("a{n}"))).collect();
    b.publisher().publish_batch(&topic, events).await.unwrap();
    let mut n = 0;
    while n < 30 {
        let batch = tokio::time::timeout(WAIT, sub.recv_batch(10))
            .await
            .expect("batch")
            .unwrap();
        n += batch.len();
        let results = futures_util::future::join_all(batch.into_iter().map(Delivery::ack)).await;
        assert!(results.iter().all(Result::is_ok));
    }
    // Past the ack deadline nothing comes back: every delete took effect.
    expect_nothing(&mut sub, Duration::from_secs(4)).await;
    assert_eq!(b.depth(&topic, "g").await.unwrap(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn point_to_point_dead_letters_go_to_the_dead_letter_queue() {
    let b = broker(SqsConfig {
        topology: Topology::PointToPoint,
        ..config()
    })
    .await;
    let queue = unique("p2p-dlq");
    let dlq = format!("{queue}.dlq");
    let mut sub = b
        .subscriber()
        .subscribe(&queue, SubscribeOptions::new("w").max_deliveries(1))
        .await
        .unwrap();
    b.publisher().publish(&queue, event("once")).await.unwrap();
    let d = recv(&mut sub).await;
    assert_eq!(d.attempt(), 1);
    d.nack(None).await.unwrap();
    expect_nothing(&mut sub, Duration::from_secs(2)).await;
    let mut dead = b
        .subscriber()
        .subscribe(&dlq, SubscribeOptions::new("any"))
        .await
        .unwrap();
    let d = recv(&mut dead).await;
    let e = d.event().unwrap();
    assert_eq!(e.id(), "once");
    assert_eq!(DeadLetterMetadata::from_event(e).unwrap().topic, queue);
    d.ack().await.unwrap();
}

/// A receive in flight when the subscription closes gives back what it got before `close`
/// returns, so a process that exits right after closing strands nothing until its visibility
/// timeout (the `messaging dlq inspect` case: peek, nack, close, exit). Each round runs on its
/// own runtime, dropped right after `close` as a process exit would.
#[test]
fn close_waits_for_the_receive_in_flight_and_gives_its_messages_back() {
    let rt = || {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap()
    };
    let topic = unique("close");
    let options = SubscribeOptions::new("g")
        .prefetch(2)
        .ack_deadline(Duration::from_secs(60));
    let url = rt().block_on(async {
        let broker = broker(config()).await;
        broker
            .subscriber()
            .declare(&topic, options.clone())
            .await
            .unwrap();
        let ids: Vec<String> = (0..2).map(|i| format!("c{i}")).collect();
        broker
            .publisher()
            .publish_batch(&topic, ids.iter().map(|i| event(i)).collect())
            .await
            .unwrap();
        broker.queue_url(&topic, "g").await.unwrap().expect("queue")
    });
    for round in 0..5 {
        rt().block_on(async {
            let broker = broker(config()).await;
            let mut sub = broker
                .subscriber()
                .subscribe(&topic, options.clone())
                .await
                .unwrap();
            // Peek at both and give them back: each nack frees a permit, so the poller
            // receives again at once, racing the close.
            let (a, b) = (recv(&mut sub).await, recv(&mut sub).await);
            a.nack(None).await.unwrap();
            b.nack(None).await.unwrap();
            sub.close().await.unwrap();
        });
        let hidden = rt().block_on(async {
            let name =
                aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessagesNotVisible;
            let broker = broker(config()).await;
            let attrs = broker
                .sqs()
                .get_queue_attributes()
                .queue_url(&url)
                .attribute_names(name.clone())
                .send()
                .await
                .unwrap();
            attrs.attributes().and_then(|a| a.get(&name)).cloned()
        });
        assert_eq!(
            hidden.as_deref(),
            Some("0"),
            "round {round}: messages left invisible after close"
        );
    }
}

/// Receives until `idle` passes without a delivery, acking everything; returns how often each
/// event id arrived.
async fn drain_counting(
    sub: &mut SqsSubscription,
    idle: Duration,
    bound: Duration,
) -> std::collections::HashMap<String, usize> {
    let mut seen = std::collections::HashMap::new();
    let end = tokio::time::Instant::now() + bound;
    loop {
        assert!(
            tokio::time::Instant::now() < end,
            "still receiving after {bound:?}: {} distinct so far",
            seen.len()
        );
        match tokio::time::timeout(idle, sub.recv_batch(10)).await {
            Err(_) => return seen,
            Ok(r) => {
                for d in r.expect("receive") {
                    *seen.entry(d.event().unwrap().id().to_owned()).or_insert(0) += 1;
                    d.ack().await.expect("ack");
                }
            }
        }
    }
}

/// A slow consumer with a large prefetch: messages the poller received ahead must not sit in
/// the buffer past their visibility timeout, or SQS hands them out again (a second copy in
/// the same buffer, attempt 2). Each message is handed out once, at attempt 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_waiting_in_the_prefetch_buffer_stay_invisible() {
    let b = broker(config()).await;
    let topic = unique("slow");
    let mut sub = b
        .subscriber()
        .subscribe(
            &topic,
            SubscribeOptions::new("g")
                .prefetch(1000)
                // 4 s, not less: on two cores busy compiling, moto and this process can stall
                // for a second, and a 2 s timeout then ran out under a handed-out message.
                .ack_deadline(Duration::from_secs(4)),
        )
        .await
        .unwrap();
    let events: Vec<Event> = (0..40).map(|n| event(&format!("s{n}"))).collect();
    b.publisher().publish_batch(&topic, events).await.unwrap();
    let mut seen: std::collections::HashMap<String, Vec<u32>> = Default::default();
    // 40 × 300 ms: three times the visibility timeout.
    while seen.len() < 40 {
        let d = recv(&mut sub).await;
        seen.entry(d.event().unwrap().id().to_owned())
            .or_default()
            .push(d.attempt());
        tokio::time::sleep(Duration::from_millis(300)).await;
        d.ack().await.unwrap();
    }
    expect_nothing(&mut sub, Duration::from_secs(3)).await;
    let again: Vec<_> = seen.iter().filter(|(_, a)| a != &&vec![1]).collect();
    assert!(again.is_empty(), "handed out more than once: {again:?}");
    assert_eq!(b.depth(&topic, "g").await.unwrap(), Some(0));
}

/// Replay reads the dead-letter topic with a large prefetch (it holds skipped messages) and
/// publishes + deletes one message at a time: far slower than the poller receives. With a
/// 2 s visibility timeout, 300 dead letters (plus 20 the filter skips) arrive at the target
/// exactly once each, the report counts each once, and only the skipped ones stay behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replay_of_300_dead_letters_delivers_each_exactly_once() {
    let b = broker(config()).await;
    let source = unique("origin");
    let dlq = format!("{source}.dlq");
    let target = unique("target");
    b.subscriber()
        .declare(&dlq, SubscribeOptions::new(DEAD_LETTER_GROUP))
        .await
        .unwrap();
    let mut at_target = b
        .subscriber()
        .subscribe(&target, SubscribeOptions::new("g"))
        .await
        .unwrap();
    let dead: Vec<Event> = (0..300)
        .map(|n| event(&format!("r{n}")))
        .chain((0..20).map(|n| event(&format!("skip{n}"))))
        .collect();
    b.publisher().publish_batch(&dlq, dead).await.unwrap();
    let deadline = tokio::time::Instant::now() + WAIT;
    while dead_letter::depth(&b, &dlq).await.unwrap() < 320 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "dead letters not in place"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let report = tokio::time::timeout(
        Duration::from_secs(300),
        dead_letter::replay(
            &b.subscriber(),
            &b.publisher(),
            &dlq,
            ReplayOptions::new()
                .target(target.clone())
                .filter(|e| !e.id().starts_with("skip"))
                .ack_deadline(Duration::from_secs(2))
                .idle(Duration::from_secs(3)),
        ),
    )
    .await
    .expect("replay ends")
    .unwrap();
    let seen = drain_counting(
        &mut at_target,
        Duration::from_secs(3),
        Duration::from_secs(120),
    )
    .await;
    let twice: Vec<_> = seen.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "replayed more than once: {twice:?}");
    assert_eq!(seen.len(), 300, "every dead letter arrives at the target");
    assert!(seen.keys().all(|id| id.starts_with('r')));
    assert_eq!(
        report,
        dead_letter::ReplayReport {
            replayed: 300,
            skipped: 20,
            truncated: 0,
        }
    );
    assert_eq!(dead_letter::depth(&b, &dlq).await.unwrap(), 20);
}

/// CloudEvents identifies an event by `source` + `id`: two producers' events with the same
/// id are different events, and a FIFO topic or queue must deliver both; a true duplicate
/// (same source, same id) is still dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifo_deduplication_tells_sources_apart() {
    let sourced = |source: &str| {
        EventBuilder::new(source, "test.event")
            .id("same-id")
            .json(&serde_json::json!({"from": source}))
            .build()
            .unwrap()
    };
    let fanout = broker(config()).await;
    let p2p = broker(SqsConfig {
        topology: Topology::PointToPoint,
        ..config()
    })
    .await;
    for (b, topic) in [
        (&fanout, unique("dedup")),
        (&p2p, format!("{}.fifo", unique("dedup"))),
    ] {
        let mut sub = b
            .subscriber()
            .subscribe(&topic, SubscribeOptions::new("g").ordered(true))
            .await
            .unwrap();
        let publisher = b.publisher();
        publisher.publish(&topic, sourced("urn:a")).await.unwrap();
        publisher.publish(&topic, sourced("urn:b")).await.unwrap();
        // The same event again (same source and id): deduplicated.
        publisher.publish(&topic, sourced("urn:a")).await.unwrap();
        let mut sources = Vec::new();
        for _ in 0..2 {
            let d = recv(&mut sub).await;
            sources.push(d.event().unwrap().source().to_string());
            d.ack().await.unwrap();
        }
        sources.sort();
        assert_eq!(sources, ["urn:a", "urn:b"], "{topic}");
        expect_nothing(&mut sub, Duration::from_secs(2)).await;
    }
}

/// `{topic}-{group}` is not injective: (topic `<u>-a-b`, group `c`) and (topic `<u>-a`, group
/// `b-c`) both joined to `<u>-a-b-c`, one queue subscribed to both topics. Each pair must get
/// its own queue, and each group only its own topic's messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queue_names_keep_topic_and_group_apart() {
    let b = broker(config()).await;
    let u = unique("names");
    let (t1, g1) = (format!("{u}-a-b"), "c");
    let (t2, g2) = (format!("{u}-a"), "b-c");
    let mut s1 = b
        .subscriber()
        .subscribe(&t1, SubscribeOptions::new(g1))
        .await
        .unwrap();
    let mut s2 = b
        .subscriber()
        .subscribe(&t2, SubscribeOptions::new(g2))
        .await
        .unwrap();
    assert_ne!(s1.queue_url(), s2.queue_url(), "one queue for two groups");
    let publisher = b.publisher();
    let ones: Vec<Event> = (0..5).map(|n| event(&format!("one{n}"))).collect();
    let twos: Vec<Event> = (0..5).map(|n| event(&format!("two{n}"))).collect();
    publisher.publish_batch(&t1, ones).await.unwrap();
    publisher.publish_batch(&t2, twos).await.unwrap();
    let idle = Duration::from_secs(2);
    let got1 = drain_counting(&mut s1, idle, WAIT * 2).await;
    let got2 = drain_counting(&mut s2, idle, WAIT * 2).await;
    let expect = |prefix: &str| {
        (0..5)
            .map(|n| (format!("{prefix}{n}"), 1))
            .collect::<std::collections::HashMap<_, _>>()
    };
    assert_eq!(got1, expect("one"), "group {g1} of {t1}");
    assert_eq!(got2, expect("two"), "group {g2} of {t2}");
}

/// An ordered group's queue is FIFO, and so must be its redrive target: a delivery limit on
/// an ordered group whose dead-letter topic already exists as a standard topic is refused,
/// naming the dead-letter topic and what to do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ordered_group_with_a_standard_dead_letter_topic_is_refused_clearly() {
    let b = broker(config()).await;
    let topic = unique("ordered-std-dlq");
    let dlq = format!("{topic}.dlq");
    b.subscriber()
        .declare(&dlq, SubscribeOptions::new(DEAD_LETTER_GROUP))
        .await
        .unwrap();
    let err = b
        .subscriber()
        .subscribe(
            &topic,
            SubscribeOptions::new("g").ordered(true).max_deliveries(2),
        )
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SubscribeErrorKind::Unsupported, "{err}");
    let text = err.to_string();
    assert!(
        text.contains(&format!("dead-letter topic {dlq:?}")),
        "{text}"
    );
    assert!(text.contains("must be an SNS FIFO topic"), "{text}");
    // Without a delivery limit the ordered group needs no FIFO dead-letter topic.
    b.subscriber()
        .declare(&topic, SubscribeOptions::new("h").ordered(true))
        .await
        .unwrap();
}
