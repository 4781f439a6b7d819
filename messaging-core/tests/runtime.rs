//! The consumer runtime and its middleware on the in-memory broker, under paused time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging_core::dead_letter::{self, DeadLetterMetadata, ReplayOptions};
use messaging_core::handler::{HandlerError, Incoming, handler_fn};
use messaging_core::middleware::idempotency::{IdempotencyLayer, MemoryStore};
use messaging_core::middleware::retry::{RetryMode, RetryPolicy};
use messaging_core::runtime::{Consumer, Correlated, Guarantee, RunReport};
use messaging_core::{
    AttributesReader, Delivery, Event, EventBuilder, EventExt, Publisher, RawMessage,
    SubscribeOptions, Subscriber, Subscription,
};
use messaging_testkit::MemoryBroker;
use tokio::time::Instant;

mod common;
use common::{dead_letters, event, policy, publisher, until, until_dead_lettered};

#[tokio::test(start_paused = true)]
async fn at_least_once_acks_every_success() {
    let broker = MemoryBroker::new();
    let handled = Arc::new(AtomicUsize::new(0));
    let h = handled.clone();
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("billing"),
    )
    .concurrency(4)
    .build(handler_fn(move |msg: Incoming| {
        let h = h.clone();
        async move {
            let v: serde_json::Value = msg.data()?;
            assert!(v["n"].is_u64());
            h.fetch_add(1, Ordering::SeqCst);
            Ok::<(), HandlerError>(())
        }
    }));
    let run = tokio::spawn(consumer.run(until({
        let h = handled.clone();
        move || h.load(Ordering::SeqCst) == 10
    })));
    tokio::time::sleep(Duration::from_millis(1)).await;
    for n in 0..10 {
        broker
            .publisher()
            .publish("orders", event(n))
            .await
            .unwrap();
    }
    let report = run.await.unwrap().unwrap();
    assert_eq!((report.received, report.acked), (10, 10));
    assert_eq!(broker.group_stats("orders", "billing").unwrap().total(), 0);
}

/// Calls of a handler: (instant, attempt) per event id.
type Calls = Arc<Mutex<HashMap<String, Vec<(Instant, u32)>>>>;

fn failing_handler(
    calls: Calls,
    fail_times: usize,
    permanent: bool,
) -> impl tower_service::Service<Incoming, Response = (), Error = HandlerError, Future = impl Send>
+ Clone
+ Send
+ 'static {
    handler_fn(move |msg: Incoming| {
        let calls = calls.clone();
        async move {
            let n = {
                let mut c = calls.lock().unwrap();
                let v = c.entry(msg.event().id().to_owned()).or_default();
                v.push((Instant::now(), msg.attempt()));
                v.len()
            };
            if n <= fail_times {
                if permanent {
                    return Err(HandlerError::permanent("invalid order"));
                }
                return Err(HandlerError::transient("payment provider unavailable"));
            }
            Ok(())
        }
    })
}

fn total_calls(calls: &Calls) -> usize {
    calls.lock().unwrap().values().map(Vec::len).sum()
}

#[tokio::test(start_paused = true)]
async fn in_place_retry_honours_backoff_delays() {
    let broker = MemoryBroker::new();
    let calls: Calls = Arc::default();
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .retry(policy(3, RetryMode::InPlace))
    .build(failing_handler(calls.clone(), 2, false));
    let c = calls.clone();
    let run = tokio::spawn(consumer.run(async move {
        until(|| c.lock().unwrap().get("e1").is_some_and(|v| v.len() == 3)).await;
    }));
    tokio::time::sleep(Duration::from_millis(1)).await;
    broker
        .publisher()
        .publish("orders", event(1))
        .await
        .unwrap();
    let report = run.await.unwrap().unwrap();
    let v = calls.lock().unwrap()["e1"].clone();
    let gaps: Vec<Duration> = v.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert_eq!(gaps, [Duration::from_secs(1), Duration::from_secs(2)]);
    assert!(
        v.iter().all(|(_, attempt)| *attempt == 1),
        "in place: one delivery"
    );
    assert_eq!((report.acked, report.redelivered), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn redelivery_retry_nacks_with_backoff_delays() {
    let broker = MemoryBroker::new();
    let calls: Calls = Arc::default();
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .retry(policy(3, RetryMode::Redelivery))
    .build(failing_handler(calls.clone(), 2, false));
    let c = calls.clone();
    let run = tokio::spawn(consumer.run(async move {
        until(|| c.lock().unwrap().get("e1").is_some_and(|v| v.len() == 3)).await;
    }));
    tokio::time::sleep(Duration::from_millis(1)).await;
    broker
        .publisher()
        .publish("orders", event(1))
        .await
        .unwrap();
    let report = run.await.unwrap().unwrap();
    let v = calls.lock().unwrap()["e1"].clone();
    let attempts: Vec<u32> = v.iter().map(|(_, a)| *a).collect();
    assert_eq!(attempts, [1, 2, 3], "each retry is a new delivery");
    let gaps: Vec<Duration> = v.windows(2).map(|w| w[1].0 - w[0].0).collect();
    assert!(
        gaps[0] >= Duration::from_secs(1) && gaps[0] < Duration::from_millis(1100),
        "{gaps:?}"
    );
    assert!(
        gaps[1] >= Duration::from_secs(2) && gaps[1] < Duration::from_millis(2100),
        "{gaps:?}"
    );
    assert_eq!((report.acked, report.redelivered), (1, 2));
}

#[tokio::test(start_paused = true)]
async fn exhausted_retries_dead_letter_once_with_metadata() {
    for mode in [RetryMode::InPlace, RetryMode::Redelivery] {
        let broker = MemoryBroker::new();
        let calls: Calls = Arc::default();
        let consumer = Consumer::builder(
            broker.subscriber(),
            publisher(&broker),
            "orders",
            SubscribeOptions::new("billing"),
        )
        .retry(policy(2, mode))
        .build(failing_handler(calls.clone(), usize::MAX, false));
        let b = broker.clone();
        let run = tokio::spawn(consumer.run(async move {
            until(|| {
                b.group_stats("orders.dlq", dead_letter::DEAD_LETTER_GROUP)
                    .is_some_and(|s| s.total() == 1)
            })
            .await;
        }));
        tokio::time::sleep(Duration::from_millis(1)).await;
        broker
            .publisher()
            .publish("orders", event(1))
            .await
            .unwrap();
        let report = run.await.unwrap().unwrap();
        assert_eq!(report.dead_lettered, 1, "{mode:?}");
        assert_eq!(
            total_calls(&calls),
            3,
            "{mode:?}: first attempt + 2 retries"
        );
        let dead = dead_letters(&broker, "orders.dlq", 1).await;
        assert_eq!(dead[0].id(), "e1");
        let m = DeadLetterMetadata::from_event(&dead[0]).unwrap();
        assert_eq!(m.reason, "retries-exhausted");
        assert!(
            m.error.contains("payment provider unavailable"),
            "{}",
            m.error
        );
        assert_eq!(
            (m.attempts, m.topic.as_str(), m.group.as_str()),
            (3, "orders", "billing")
        );
        assert!(m.first_failure.unwrap() < m.last_failure.unwrap(), "{m:?}");
        assert_eq!(
            broker.group_stats("orders", "billing").unwrap().total(),
            0,
            "original acked"
        );
        assert_eq!(dead_letter::depth(&broker, "orders.dlq").await.unwrap(), 1);
    }
}

#[tokio::test(start_paused = true)]
async fn permanent_failure_dead_letters_at_once_and_poison_does_not_block() {
    let broker = MemoryBroker::new();
    let calls: Calls = Arc::default();
    let c2 = calls.clone();
    let handler = handler_fn(move |msg: Incoming| {
        let calls = c2.clone();
        async move {
            calls
                .lock()
                .unwrap()
                .entry(msg.event().id().to_owned())
                .or_default()
                .push((Instant::now(), msg.attempt()));
            if msg.event().id() == "e0" {
                return Err(HandlerError::permanent("order total is negative"));
            }
            Ok(())
        }
    });
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .concurrency(1)
    .build(handler);
    let c = calls.clone();
    let run = tokio::spawn(consumer.run(async move { until(|| total_calls(&c) == 5).await }));
    tokio::time::sleep(Duration::from_millis(1)).await;
    for n in 0..5 {
        broker
            .publisher()
            .publish("orders", event(n))
            .await
            .unwrap();
    }
    let report = run.await.unwrap().unwrap();
    assert_eq!(
        calls.lock().unwrap()["e0"].len(),
        1,
        "a permanent failure is not retried"
    );
    assert_eq!((report.acked, report.dead_lettered), (5, 1));
    let dead = dead_letters(&broker, "orders.dlq", 1).await;
    assert_eq!(
        DeadLetterMetadata::from_event(&dead[0]).unwrap().reason,
        "permanent-failure"
    );
}

#[tokio::test(start_paused = true)]
async fn undecodable_input_is_dead_lettered_with_its_bytes() {
    let broker = MemoryBroker::new();
    let calls: Calls = Arc::default();
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .build(failing_handler(calls.clone(), 0, false));
    let run = tokio::spawn(consumer.run(until_dead_lettered(broker.clone(), "orders.dlq", 1)));
    tokio::time::sleep(Duration::from_millis(1)).await;
    broker.publish_raw(
        "orders",
        RawMessage {
            content_type: Some("text/csv".into()),
            headers: vec![],
            body: b"id,amount\n1,99.99\n".to_vec(),
        },
    );
    let report = run.await.unwrap().unwrap();
    assert_eq!((report.dead_lettered, total_calls(&calls)), (1, 0));
    let dead = dead_letters(&broker, "orders.dlq", 1).await;
    assert_eq!(dead[0].ty(), dead_letter::UNDECODABLE_TYPE);
    assert_eq!(
        dead[0].data_bytes().unwrap().as_ref(),
        b"id,amount\n1,99.99\n"
    );
    assert_eq!(dead[0].datacontenttype(), Some("text/csv"));
}

#[tokio::test(start_paused = true)]
async fn a_failed_dead_letter_publish_is_retried_before_the_original_is_acked() {
    let broker = MemoryBroker::new();
    let calls: Calls = Arc::default();
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .retry(RetryPolicy::no_retries())
    .build(failing_handler(calls.clone(), usize::MAX, false));
    let run = tokio::spawn(consumer.run(until_dead_lettered(broker.clone(), "orders.dlq", 1)));
    tokio::time::sleep(Duration::from_millis(1)).await;
    broker
        .publisher()
        .publish("orders", event(1))
        .await
        .unwrap();
    broker.faults().fail_next_publishes(1); // the first dead-letter publish
    let report = run.await.unwrap().unwrap();
    let attempts: Vec<u32> = calls.lock().unwrap()["e1"]
        .iter()
        .map(|(_, a)| *a)
        .collect();
    assert_eq!(
        attempts,
        [1],
        "the dead-letter publish is retried while the delivery is held; the handler runs once"
    );
    assert_eq!(report.dead_lettered, 1);
    assert_eq!(broker.group_stats("orders", "g").unwrap().total(), 0);
}

#[tokio::test(start_paused = true)]
async fn replay_delivers_dead_letters_again_with_history() {
    let broker = MemoryBroker::new();
    let broken = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let handled: Arc<Mutex<Vec<Event>>> = Arc::default();
    let (bk, hd) = (broken.clone(), handled.clone());
    let handler = handler_fn(move |msg: Incoming| {
        let (broken, handled) = (bk.clone(), hd.clone());
        async move {
            if broken.load(Ordering::SeqCst) {
                return Err(HandlerError::permanent("bug in the consumer"));
            }
            handled.lock().unwrap().push(msg.event().clone());
            Ok(())
        }
    });
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .build(handler);
    let h = handled.clone();
    let run =
        tokio::spawn(consumer.run(async move { until(|| h.lock().unwrap().len() == 2).await }));
    tokio::time::sleep(Duration::from_millis(1)).await;
    for n in 0..3 {
        broker
            .publisher()
            .publish("orders", event(n))
            .await
            .unwrap();
    }
    until(|| {
        broker
            .group_stats("orders.dlq", dead_letter::DEAD_LETTER_GROUP)
            .is_some_and(|s| s.total() == 3)
    })
    .await;
    assert_eq!(dead_letter::depth(&broker, "orders.dlq").await.unwrap(), 3);

    // The bug is fixed; replay two of them (filter + limit), leave e2.
    broken.store(false, Ordering::SeqCst);
    let dry = dead_letter::replay(
        &broker.subscriber(),
        &broker.publisher(),
        "orders.dlq",
        ReplayOptions::new().dry_run(true),
    )
    .await
    .unwrap();
    assert_eq!(dry.replayed, 3);
    assert_eq!(
        dead_letter::depth(&broker, "orders.dlq").await.unwrap(),
        3,
        "a dry run moves nothing"
    );
    let seen = Arc::new(Mutex::new(Vec::new()));
    let progress = seen.clone();
    let report = dead_letter::replay(
        &broker.subscriber(),
        &broker.publisher(),
        "orders.dlq",
        ReplayOptions::new()
            .filter(|e| e.id() != "e2")
            .limit(5)
            .on_progress(move |r| progress.lock().unwrap().push((r.replayed, r.skipped))),
    )
    .await
    .unwrap();
    assert_eq!((report.replayed, report.skipped), (2, 1));
    let seen = seen.lock().unwrap().clone();
    assert_eq!(seen.len(), 3, "one progress call per message: {seen:?}");
    assert_eq!(seen.last(), Some(&(2, 1)));
    run.await.unwrap().unwrap();
    let handled = handled.lock().unwrap().clone();
    let mut ids: Vec<&str> = handled.iter().map(|e| e.id()).collect();
    ids.sort_unstable();
    assert_eq!(ids, ["e0", "e1"]);
    let m = DeadLetterMetadata::from_event(&handled[0]).unwrap();
    assert_eq!(
        (m.replays, m.reason.as_str()),
        (1, "permanent-failure"),
        "history is kept"
    );
    assert_eq!(dead_letter::depth(&broker, "orders.dlq").await.unwrap(), 1);
}

#[tokio::test(start_paused = true)]
async fn duplicate_delivery_is_absorbed_by_the_idempotent_consumer() {
    let broker = MemoryBroker::new();
    let calls: Calls = Arc::default();
    let store = Arc::new(MemoryStore::new());
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .concurrency(2)
    .build_idempotent(
        IdempotencyLayer::new(store.clone()),
        failing_handler(calls.clone(), 0, false),
    );
    let (b, c) = (broker.clone(), calls.clone());
    let run = tokio::spawn(consumer.run(async move {
        until(|| {
            total_calls(&c) == 3 && b.group_stats("orders", "g").is_some_and(|s| s.total() == 0)
        })
        .await;
    }));
    tokio::time::sleep(Duration::from_millis(1)).await;
    broker.faults().duplicate_next_deliveries(2);
    for n in 0..3 {
        broker
            .publisher()
            .publish("orders", event(n))
            .await
            .unwrap();
    }
    let report = run.await.unwrap().unwrap();
    assert_eq!(
        (report.received, report.acked),
        (5, 5),
        "two duplicates delivered and acked"
    );
    let calls = calls.lock().unwrap();
    assert_eq!(calls.len(), 3);
    assert!(
        calls.values().all(|v| v.len() == 1),
        "each event handled once: {calls:?}"
    );
    assert_eq!(
        broker.group_stats("orders", "g").unwrap().total(),
        0,
        "both copies acked"
    );
}

#[tokio::test(start_paused = true)]
async fn at_most_once_acks_before_handling() {
    let broker = MemoryBroker::new();
    let calls: Calls = Arc::default();
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .guarantee(Guarantee::AtMostOnce)
    .retry(RetryPolicy {
        mode: RetryMode::Redelivery,
        ..policy(3, RetryMode::Redelivery)
    })
    .build(failing_handler(calls.clone(), usize::MAX, false));
    let c = calls.clone();
    let run = tokio::spawn(consumer.run(async move {
        until(|| total_calls(&c) == 1).await;
        tokio::time::sleep(Duration::from_secs(60)).await;
    }));
    tokio::time::sleep(Duration::from_millis(1)).await;
    broker
        .publisher()
        .publish("orders", event(1))
        .await
        .unwrap();
    let report = run.await.unwrap().unwrap();
    assert_eq!(
        total_calls(&calls),
        1,
        "a failed message is not redelivered at most once"
    );
    assert_eq!((report.acked, report.redelivered), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn graceful_shutdown_under_load_loses_nothing_and_acks_nothing_twice() {
    let broker = MemoryBroker::new();
    let handled = Arc::new(Mutex::new(HashMap::<String, usize>::new()));
    let make = |handled: Arc<Mutex<HashMap<String, usize>>>| {
        handler_fn(move |msg: Incoming| {
            let handled = handled.clone();
            async move {
                let n: usize = msg.data::<serde_json::Value>()?["n"].as_u64().unwrap_or(0) as usize;
                // Some handlers are slower than the drain timeout.
                tokio::time::sleep(Duration::from_millis(if n % 10 == 0 { 500 } else { 20 })).await;
                *handled
                    .lock()
                    .unwrap()
                    .entry(msg.event().id().to_owned())
                    .or_default() += 1;
                Ok::<(), HandlerError>(())
            }
        })
    };
    let first = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .concurrency(8)
    .drain_timeout(Duration::from_millis(100))
    .build(make(handled.clone()));
    let first = tokio::spawn(first.run(tokio::time::sleep(Duration::from_millis(150))));
    tokio::time::sleep(Duration::from_millis(1)).await;
    for n in 0..200 {
        broker
            .publisher()
            .publish("orders", event(n))
            .await
            .unwrap();
    }
    let r1: RunReport = first.await.unwrap().unwrap();
    assert!(r1.acked < 200, "shut down mid-load");
    assert!(
        r1.abandoned > 0,
        "slow handlers were cut off at the drain timeout"
    );
    let h = handled.clone();
    let second = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .concurrency(8)
    .build(make(handled.clone()));
    let r2 = second
        .run(until(move || h.lock().unwrap().len() == 200))
        .await
        .unwrap();
    assert_eq!(
        r1.acked + r2.acked,
        200,
        "every message acked exactly once across the restart"
    );
    assert_eq!(broker.group_stats("orders", "g").unwrap().total(), 0);
}

#[tokio::test(start_paused = true)]
async fn ordered_consumer_keeps_key_order_with_concurrency() {
    let broker = MemoryBroker::new();
    let log: Arc<Mutex<Vec<(String, u64)>>> = Arc::default();
    let active = Arc::new(AtomicUsize::new(0));
    let peak = Arc::new(AtomicUsize::new(0));
    let (l, a, p) = (log.clone(), active.clone(), peak.clone());
    let handler = handler_fn(move |msg: Incoming| {
        let (log, active, peak) = (l.clone(), a.clone(), p.clone());
        async move {
            let now = active.fetch_add(1, Ordering::SeqCst) + 1;
            peak.fetch_max(now, Ordering::SeqCst);
            let v: serde_json::Value = msg.data()?;
            tokio::time::sleep(Duration::from_millis(3 + v["n"].as_u64().unwrap_or(0) % 7)).await;
            log.lock().unwrap().push((
                msg.event().ordering_key().unwrap_or("").to_owned(),
                v["n"].as_u64().unwrap_or(0),
            ));
            active.fetch_sub(1, Ordering::SeqCst);
            Ok::<(), HandlerError>(())
        }
    });
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g").ordered(true),
    )
    .concurrency(4)
    .build(handler);
    let lg = log.clone();
    let run =
        tokio::spawn(consumer.run(async move { until(|| lg.lock().unwrap().len() == 100).await }));
    tokio::time::sleep(Duration::from_millis(1)).await;
    let keys = ["a", "b", "c", "d", "e", "f", "g", "h"];
    for n in 0..100 {
        let e = EventBuilder::new("t", "t")
            .ordering_key(keys[n % 8])
            .json(&serde_json::json!({"n": n}))
            .build()
            .unwrap();
        broker.publisher().publish("orders", e).await.unwrap();
    }
    run.await.unwrap().unwrap();
    let mut last: HashMap<String, u64> = HashMap::new();
    for (k, n) in log.lock().unwrap().iter() {
        if let Some(prev) = last.insert(k.clone(), *n) {
            assert!(*n > prev, "key {k}: {n} after {prev}");
        }
    }
    assert!(
        peak.load(Ordering::SeqCst) >= 2,
        "keys were handled concurrently"
    );
    assert!(
        peak.load(Ordering::SeqCst) <= 4,
        "at most `concurrency` at once"
    );
}

#[tokio::test(start_paused = true)]
async fn events_published_from_a_handler_carry_correlation_and_causation() {
    let broker = MemoryBroker::new();
    let out = Correlated(broker.publisher());
    let handler = handler_fn(move |msg: Incoming| {
        let out = out.clone();
        async move {
            let invoice = EventBuilder::new("billing", "invoice.issued")
                .json(&msg.data::<serde_json::Value>()?)
                .build()?;
            out.publish("invoices", invoice).await?;
            Ok::<(), HandlerError>(())
        }
    });
    let mut invoices = broker
        .subscriber()
        .subscribe("invoices", SubscribeOptions::new("audit"))
        .await
        .unwrap();
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .build(handler);
    let run = tokio::spawn(consumer.run(tokio::time::sleep(Duration::from_secs(1))));
    tokio::time::sleep(Duration::from_millis(1)).await;
    let order = EventBuilder::new("shop", "order.created")
        .id("o1")
        .correlation_id("checkout-7")
        .json(&1)
        .build()
        .unwrap();
    broker.publisher().publish("orders", order).await.unwrap();
    let d = invoices.recv().await.unwrap();
    let invoice = d.event().unwrap();
    assert_eq!(invoice.correlation_id(), Some("checkout-7"));
    assert_eq!(invoice.causation_id(), Some("o1"));
    run.await.unwrap().unwrap();
}

#[tokio::test(start_paused = true)]
async fn depth_monitor_sets_lag_and_dead_letter_gauges() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let broker = MemoryBroker::new();
    let _g = broker
        .subscriber()
        .subscribe("orders", SubscribeOptions::new("g"))
        .await
        .unwrap();
    let _d = broker
        .subscriber()
        .subscribe(
            "orders.dlq",
            SubscribeOptions::new(dead_letter::DEAD_LETTER_GROUP),
        )
        .await
        .unwrap();
    for n in 0..3 {
        broker
            .publisher()
            .publish("orders", event(n))
            .await
            .unwrap();
    }
    broker
        .publisher()
        .publish("orders.dlq", event(9))
        .await
        .unwrap();
    let monitor = messaging_core::runtime::monitor_depth(
        &broker,
        "orders",
        "g",
        "orders.dlq",
        Duration::from_secs(1),
        tokio::time::sleep(Duration::from_millis(1500)),
    );
    // The local recorder must be in place while the gauges are registered and set.
    let _guard = metrics::set_default_local_recorder(&recorder);
    monitor.await;
    let values: HashMap<String, f64> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter_map(|(key, _, _, v)| match v {
            DebugValue::Gauge(g) => Some((key.key().name().to_owned(), g.into_inner())),
            _ => None,
        })
        .collect();
    assert_eq!(values.get("messaging_consumer_lag"), Some(&3.0));
    assert_eq!(values.get("messaging_dead_letter_depth"), Some(&1.0));
}

#[tokio::test(start_paused = true)]
async fn late_replies_are_dropped_and_the_requester_keeps_working() {
    use messaging_core::request::{RequestError, Requester, reply};
    let broker = MemoryBroker::new();
    let p = publisher(&broker);
    let mut server = broker
        .subscriber()
        .subscribe("rpc", SubscribeOptions::new("server"))
        .await
        .unwrap();
    let requester = Requester::start(&broker.subscriber(), p.clone())
        .await
        .unwrap();
    let slow = tokio::spawn({
        let p = p.clone();
        async move {
            for delay in [Duration::from_secs(2), Duration::ZERO] {
                let d = server.recv().await.unwrap();
                tokio::time::sleep(delay).await;
                reply(
                    &*p,
                    d.event().unwrap(),
                    EventBuilder::new("srv", "answer").json(&delay.as_secs()),
                )
                .await
                .unwrap();
                d.ack().await.unwrap();
            }
        }
    });
    let err = requester
        .request("rpc", event(1), Duration::from_secs(1))
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Timeout(_)));
    tokio::time::sleep(Duration::from_secs(2)).await; // the late reply arrives and is dropped
    let answer = requester
        .request("rpc", event(2), Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(
        answer.data_json::<u64>().unwrap(),
        0,
        "the second request gets its own reply"
    );
    slow.await.unwrap();
}

/// Wraps a subscriber so that every nack of its deliveries never completes, as with a broker
/// that stops answering.
struct HangingNacks<S>(S);

impl<S: Subscriber> Subscriber for HangingNacks<S> {
    type Subscription = HangingNacks<S::Subscription>;

    async fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<Self::Subscription, messaging_core::SubscribeError> {
        Ok(HangingNacks(self.0.subscribe(topic, options).await?))
    }

    fn features(&self) -> messaging_core::Features {
        self.0.features()
    }
}

impl<S: Subscription> Subscription for HangingNacks<S> {
    type Delivery = HangingNacks<S::Delivery>;

    async fn recv(&mut self) -> Result<Self::Delivery, messaging_core::ReceiveError> {
        self.0.recv().await.map(HangingNacks)
    }

    async fn recv_batch(
        &mut self,
        max: usize,
    ) -> Result<Vec<Self::Delivery>, messaging_core::ReceiveError> {
        Ok(self
            .0
            .recv_batch(max)
            .await?
            .into_iter()
            .map(HangingNacks)
            .collect())
    }

    async fn close(&mut self) -> Result<(), messaging_core::ReceiveError> {
        self.0.close().await
    }
}

impl<D: Delivery> Delivery for HangingNacks<D> {
    fn payload(&self) -> Result<&Event, &messaging_core::DecodeError> {
        self.0.payload()
    }

    fn topic(&self) -> &str {
        self.0.topic()
    }

    fn attempt(&self) -> u32 {
        self.0.attempt()
    }

    async fn ack(self) -> Result<(), messaging_core::SettleError<Self>> {
        self.0.ack().await.map_err(|e| messaging_core::SettleError {
            error: e.error,
            delivery: HangingNacks(e.delivery),
        })
    }

    async fn nack(self, _delay: Option<Duration>) -> Result<(), messaging_core::SettleError<Self>> {
        std::future::pending().await
    }

    async fn extend_deadline(&mut self, by: Duration) -> Result<(), messaging_core::AckError> {
        self.0.extend_deadline(by).await
    }
}

fn never_finishing_handler(
    started: Arc<AtomicUsize>,
) -> impl tower_service::Service<Incoming, Response = (), Error = HandlerError, Future = impl Send>
+ Clone
+ Send
+ 'static {
    handler_fn(move |_msg: Incoming| {
        let started = started.clone();
        async move {
            started.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<Result<(), HandlerError>>().await
        }
    })
}

#[tokio::test(start_paused = true)]
async fn shutdown_is_bounded_when_the_broker_never_settles_the_cut_off_nack() {
    let broker = MemoryBroker::new();
    let started = Arc::new(AtomicUsize::new(0));
    let consumer = Consumer::builder(
        HangingNacks(broker.subscriber()),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .drain_timeout(Duration::from_secs(1))
    .build(never_finishing_handler(started.clone()));
    let s = started.clone();
    let run = tokio::spawn(consumer.run(async move {
        until(|| s.load(Ordering::SeqCst) == 1).await;
    }));
    tokio::time::sleep(Duration::from_millis(1)).await;
    broker
        .publisher()
        .publish("orders", event(1))
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("shutdown finished although the cut-off delivery's nack never completed")
        .unwrap()
        .unwrap();
    assert_eq!(report.abandoned, 1);
    assert_eq!(
        broker.group_stats("orders", "g").unwrap().total(),
        1,
        "the unsettled message went back to the group"
    );
}

#[tokio::test(start_paused = true)]
async fn at_most_once_handlers_are_cut_off_at_the_drain_timeout() {
    let broker = MemoryBroker::new();
    let started = Arc::new(AtomicUsize::new(0));
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .guarantee(Guarantee::AtMostOnce)
    .drain_timeout(Duration::from_secs(1))
    .build(never_finishing_handler(started.clone()));
    let s = started.clone();
    let run = tokio::spawn(consumer.run(async move {
        until(|| s.load(Ordering::SeqCst) == 1).await;
    }));
    tokio::time::sleep(Duration::from_millis(1)).await;
    broker
        .publisher()
        .publish("orders", event(1))
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("shutdown finished although the at-most-once handler never returns")
        .unwrap()
        .unwrap();
    assert_eq!((report.acked, report.abandoned), (1, 1));
}

/// Counts declarations, declaring through the inner subscriber.
struct CountingDeclares<S>(S, Arc<AtomicUsize>);

impl<S: Subscriber> Subscriber for CountingDeclares<S> {
    type Subscription = S::Subscription;

    async fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<Self::Subscription, messaging_core::SubscribeError> {
        self.0.subscribe(topic, options).await
    }

    async fn declare(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<(), messaging_core::SubscribeError> {
        self.1.fetch_add(1, Ordering::SeqCst);
        self.0.declare(topic, options).await
    }

    fn features(&self) -> messaging_core::Features {
        self.0.features()
    }
}

#[tokio::test(start_paused = true)]
async fn the_runtime_declares_the_dead_letter_group_through_the_dyn_subscriber() {
    let broker = MemoryBroker::new();
    let declares = Arc::new(AtomicUsize::new(0));
    let subscriber: Arc<dyn messaging_core::DynSubscriber> =
        Arc::new(CountingDeclares(broker.subscriber(), declares.clone()));
    let consumer = Consumer::builder(
        subscriber,
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .build(handler_fn(|_msg: Incoming| async {
        Ok::<(), HandlerError>(())
    }));
    consumer.run(async {}).await.unwrap();
    assert_eq!(
        declares.load(Ordering::SeqCst),
        1,
        "declared, not subscribed, and the dyn form forwards the adapter's declare"
    );
    assert!(
        broker
            .group_stats("orders.dlq", dead_letter::DEAD_LETTER_GROUP)
            .is_some(),
        "the dead-letter group exists"
    );
}

#[tokio::test(start_paused = true)]
async fn declared_requirements_fail_start_up_naming_broker_and_capability() {
    use messaging_core::Requirements;
    use messaging_core::runtime::RunError;

    let broker = MemoryBroker::builder().max_payload(1024).build();
    let needs = Requirements {
        payload: Some(4096),
        transactions: true,
        effectively_once: true,
        ..Requirements::default()
    };
    let ok = handler_fn(|_: Incoming| async { Ok::<(), HandlerError>(()) });
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .requires(needs.clone())
    .build(ok.clone());
    let Err(RunError::Subscribe(err)) = consumer.run(async {}).await else {
        panic!("start-up must fail");
    };
    let shown = err.to_string();
    for part in [
        "\"memory\"",
        "payloads of 4096 bytes (limit 1024)",
        "transactions",
        "idempotency layer",
        "\"orders\"",
    ] {
        assert!(shown.contains(part), "{part} missing from: {shown}");
    }
    assert!(!err.is_transient());
    assert!(
        broker.group_stats("orders", "g").is_none(),
        "nothing was subscribed"
    );

    // The same needs without the broker-level gaps, met by an idempotency layer.
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .requires(Requirements {
        payload: Some(512),
        effectively_once: true,
        ..Requirements::default()
    })
    .build_idempotent(IdempotencyLayer::new(Arc::new(MemoryStore::new())), ok);
    let report = consumer.run(async {}).await.unwrap();
    assert_eq!(report.acked, 0);
}

/// A layer that logs `tag` for every call through it.
#[derive(Clone)]
struct Tag(&'static str, Arc<Mutex<Vec<&'static str>>>);

impl<S> tower_layer::Layer<S> for Tag {
    type Service = Tagged<S>;
    fn layer(&self, inner: S) -> Tagged<S> {
        Tagged(self.clone(), inner)
    }
}

#[derive(Clone)]
struct Tagged<S>(Tag, S);

impl<S: tower_service::Service<Incoming>> tower_service::Service<Incoming> for Tagged<S> {
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;
    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), S::Error>> {
        self.1.poll_ready(cx)
    }
    fn call(&mut self, msg: Incoming) -> S::Future {
        self.0.1.lock().unwrap().push(self.0.0);
        self.1.call(msg)
    }
}

/// User layers run under the one retry layer, around every attempt, the first added
/// outermost; the retry layer is built from the consumer's policy, the one that names the
/// dead-letter topic, so the attempts the layers see are the policy's.
#[tokio::test(start_paused = true)]
async fn user_layers_run_under_the_retry_layer_built_from_the_consumer_policy() {
    let broker = MemoryBroker::new();
    let calls: Calls = Arc::default();
    let log = Arc::new(Mutex::new(Vec::new()));
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .retry(RetryPolicy {
        dlq: Some("orders-parked".into()),
        ..policy(2, RetryMode::InPlace)
    })
    .layer(Tag("outer", log.clone()))
    .layer(Tag("inner", log.clone()))
    .build(failing_handler(calls.clone(), usize::MAX, false));
    let run = tokio::spawn(consumer.run(until_dead_lettered(broker.clone(), "orders-parked", 1)));
    tokio::time::sleep(Duration::from_millis(1)).await;
    broker
        .publisher()
        .publish("orders", event(1))
        .await
        .unwrap();
    let report = run.await.unwrap().unwrap();
    assert_eq!(
        total_calls(&calls),
        3,
        "the first attempt and max_retries 2"
    );
    assert_eq!(
        *log.lock().unwrap(),
        ["outer", "inner", "outer", "inner", "outer", "inner"],
        "every attempt passes through both layers, the first added outermost"
    );
    assert_eq!(report.dead_lettered, 1);
}
