//! The runtime when things go wrong: handlers that panic, dead letters the broker refuses,
//! hard stops with idempotency claims and queued ordered deliveries. Each test was written
//! against the defect it names (issue 12) and failed before the fix.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging_core::dead_letter::{self, DeadLetterMetadata, ReplayOptions};
use messaging_core::handler::{HandlerError, Incoming, handler_fn};
use messaging_core::middleware::idempotency::{
    Claim, IdempotencyLayer, IdempotencyStore, MemoryStore,
};
use messaging_core::middleware::retry::{RetryMode, RetryPolicy};
use messaging_core::runtime::{Consumer, Guarantee};
use messaging_core::{AttributesReader, EventBuilder, EventExt, Publisher, SubscribeOptions};
use messaging_testkit::MemoryBroker;

mod common;
use common::{
    dead_letters, event, failing_permanently, policy, publisher, until, until_dead_lettered,
};

/// Runs per event id.
type Runs = Arc<Mutex<HashMap<String, usize>>>;

fn count(runs: &Runs, id: &str) -> usize {
    runs.lock().unwrap().get(id).copied().unwrap_or(0)
}

/// Panics on `e0` every time; handles everything else.
fn panicking_on_e0(
    runs: Runs,
) -> impl tower_service::Service<Incoming, Response = (), Error = HandlerError, Future = impl Send>
+ Clone
+ Send
+ 'static {
    handler_fn(move |msg: Incoming| {
        let runs = runs.clone();
        async move {
            let id = msg.event().id().to_owned();
            *runs.lock().unwrap().entry(id.clone()).or_default() += 1;
            tokio::task::yield_now().await;
            if id == "e0" {
                panic!("boom on {id}");
            }
            Ok::<(), HandlerError>(())
        }
    })
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_is_retried_then_dead_lettered_and_the_consumer_keeps_running() {
    for mode in [RetryMode::InPlace, RetryMode::Redelivery] {
        let broker = MemoryBroker::new();
        let runs: Runs = Arc::default();
        let consumer = Consumer::builder(
            broker.subscriber(),
            publisher(&broker),
            "orders",
            SubscribeOptions::new("g"),
        )
        .concurrency(4)
        .retry(policy(2, mode))
        .build(panicking_on_e0(runs.clone()));
        let b = broker.clone();
        let r = runs.clone();
        let run = tokio::spawn(consumer.run(async move {
            until(|| {
                (1..6).all(|n| count(&r, &format!("e{n}")) == 1)
                    && b.group_stats("orders.dlq", dead_letter::DEAD_LETTER_GROUP)
                        .is_some_and(|s| s.total() == 1)
            })
            .await;
        }));
        tokio::time::sleep(Duration::from_millis(1)).await;
        for n in 0..6 {
            broker
                .publisher()
                .publish("orders", event(n))
                .await
                .unwrap();
        }
        let report = tokio::time::timeout(Duration::from_secs(300), run)
            .await
            .unwrap_or_else(|_| panic!("{mode:?}: the panicking message was never dead-lettered"))
            .unwrap()
            .unwrap();
        assert_eq!(count(&runs, "e0"), 3, "{mode:?}: first run and two retries");
        assert_eq!(report.dead_lettered, 1, "{mode:?}");
        let dead = dead_letters(&broker, "orders.dlq", 1).await;
        let meta = DeadLetterMetadata::from_event(&dead[0]).unwrap();
        assert_eq!(meta.reason, "handler-panicked", "{mode:?}");
        assert!(
            meta.error.contains("boom on e0"),
            "{mode:?}: {}",
            meta.error
        );
        assert_eq!(meta.attempts, 3, "{mode:?}");
        assert_eq!(broker.group_stats("orders", "g").unwrap().total(), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn a_panic_in_an_ordered_lane_does_not_stop_the_lane() {
    let broker = MemoryBroker::new();
    let runs: Runs = Arc::default();
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g").ordered(true),
    )
    .concurrency(2)
    .retry(RetryPolicy::no_retries())
    .build(panicking_on_e0(runs.clone()));
    let r = runs.clone();
    let run = tokio::spawn(consumer.run(async move {
        until(|| (1..10).all(|n| count(&r, &format!("e{n}")) == 1)).await;
    }));
    tokio::time::sleep(Duration::from_millis(1)).await;
    for n in 0..10 {
        let e = EventBuilder::new("test", "order.created")
            .id(format!("e{n}"))
            .ordering_key("one-key")
            .json(&serde_json::json!({ "n": n }))
            .build()
            .unwrap();
        broker.publisher().publish("orders", e).await.unwrap();
    }
    let report = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("the lane of the panicking key kept handling the key's later messages")
        .unwrap()
        .unwrap();
    assert_eq!(count(&runs, "e0"), 1);
    assert_eq!((report.acked, report.dead_lettered), (10, 1));
    let dead = dead_letters(&broker, "orders.dlq", 1).await;
    assert_eq!(
        DeadLetterMetadata::from_event(&dead[0]).unwrap().reason,
        "handler-panicked"
    );
}

#[tokio::test(start_paused = true)]
async fn a_dead_letter_too_large_for_the_broker_is_shrunk_not_looped() {
    // The original fits; its dead letter (the original plus metadata) does not.
    let broker = MemoryBroker::builder().max_payload(2_000).build();
    let runs = Arc::new(AtomicUsize::new(0));
    let handler = failing_permanently(runs.clone(), "rejected by a business rule");
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .build(handler);
    let run = tokio::spawn(consumer.run(until_dead_lettered(broker.clone(), "orders.dlq", 1)));
    tokio::time::sleep(Duration::from_millis(1)).await;
    let mut big = None;
    for filler in (1_000..2_000).rev().step_by(10) {
        let e = EventBuilder::new("test", "order.created")
            .id("big")
            .correlation_id("c-1")
            .json(&serde_json::json!({ "pad": "x".repeat(filler) }))
            .build()
            .unwrap();
        if broker
            .publisher()
            .publish("orders", e.clone())
            .await
            .is_ok()
        {
            big = Some(e);
            break;
        }
    }
    let big = big.expect("an event just under the limit");
    let report = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the dead letter was published within 2 minutes")
        .unwrap()
        .unwrap();
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the handler ran once, not in a loop"
    );
    assert_eq!(report.dead_lettered, 1);
    let dead = dead_letters(&broker, "orders.dlq", 1).await;
    let d = &dead[0];
    assert_eq!((d.id(), d.source()), (big.id(), big.source()));
    assert_eq!(d.correlation_id(), Some("c-1"), "correlation kept");
    assert!(d.data().is_none(), "the data was dropped");
    let dropped = d.extension("dlqtruncated").map(ToString::to_string);
    let size = serde_json::to_vec(&big.data_json::<serde_json::Value>().unwrap())
        .unwrap()
        .len();
    assert_eq!(
        dropped,
        Some(size.to_string()),
        "marked with the dropped size"
    );
    let meta = DeadLetterMetadata::from_event(d).unwrap();
    assert_eq!(meta.reason, "permanent-failure");
    assert_eq!(
        broker.group_stats("orders", "g").unwrap().total(),
        0,
        "acked"
    );
    // Replaying it would hand the handler an event without its data: replay leaves it alone
    // unless asked.
    let options = || ReplayOptions::new().idle(Duration::from_secs(1));
    let report = dead_letter::replay(
        &broker.subscriber(),
        &broker.publisher(),
        "orders.dlq",
        options(),
    )
    .await
    .unwrap();
    assert_eq!(
        (report.replayed, report.skipped, report.truncated),
        (0, 1, 1)
    );
    let report = dead_letter::replay(
        &broker.subscriber(),
        &broker.publisher(),
        "orders.dlq",
        options().include_truncated(true),
    )
    .await
    .unwrap();
    assert_eq!((report.replayed, report.truncated), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn transient_dead_letter_failures_are_retried_without_running_the_handler_again() {
    let broker = MemoryBroker::new();
    let runs = Arc::new(AtomicUsize::new(0));
    let handler = failing_permanently(runs.clone(), "bad order");
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .build(handler);
    let run = tokio::spawn(consumer.run(until_dead_lettered(broker.clone(), "orders.dlq", 1)));
    tokio::time::sleep(Duration::from_millis(1)).await;
    broker
        .publisher()
        .publish("orders", event(1))
        .await
        .unwrap();
    // More failures than one delivery retries in place: the delivery is given back once, and
    // its redelivery publishes the decided dead letter without running the handler.
    broker.faults().fail_next_publishes(10);
    let report = tokio::time::timeout(Duration::from_secs(300), run)
        .await
        .expect("dead-lettered once the broker took publishes again")
        .unwrap()
        .unwrap();
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the handler ran once");
    assert_eq!(report.dead_lettered, 1);
    assert_eq!(broker.group_stats("orders", "g").unwrap().total(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_hard_stop_releases_the_idempotency_claim_of_a_cut_off_handler() {
    let broker = MemoryBroker::new();
    let store = Arc::new(MemoryStore::new());
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let handler = handler_fn(move |_msg: Incoming| {
        let s = s.clone();
        async move {
            s.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
            Ok::<(), HandlerError>(())
        }
    });
    let layer = IdempotencyLayer::new(store.clone()).lease(Duration::from_secs(3600));
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .drain_timeout(Duration::from_secs(1))
    .build_idempotent(layer, handler);
    let st = started.clone();
    let run = tokio::spawn(consumer.run(async move {
        until(|| st.load(Ordering::SeqCst) == 1).await;
    }));
    tokio::time::sleep(Duration::from_millis(1)).await;
    broker
        .publisher()
        .publish("orders", event(1))
        .await
        .unwrap();
    let report = run.await.unwrap().unwrap();
    assert_eq!(report.abandoned, 1);
    tokio::time::sleep(Duration::from_millis(10)).await;
    let key = "messaging:idem:g:orders:test:e1";
    assert_eq!(
        store
            .begin(key, "next-consumer", Duration::from_secs(60))
            .await
            .unwrap(),
        Claim::Acquired,
        "the redelivery can claim the key at once, not after the hour-long lease"
    );
}

#[tokio::test(start_paused = true)]
async fn at_most_once_ordered_lanes_do_not_ack_queued_deliveries_at_hard_stop() {
    let broker = MemoryBroker::new();
    let started = Arc::new(AtomicUsize::new(0));
    let s = started.clone();
    let handler = handler_fn(move |_msg: Incoming| {
        let s = s.clone();
        async move {
            s.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
            Ok::<(), HandlerError>(())
        }
    });
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g").ordered(true).prefetch(8),
    )
    .guarantee(Guarantee::AtMostOnce)
    .concurrency(4)
    .drain_timeout(Duration::from_secs(1))
    .build(handler);
    let st = started.clone();
    let run = tokio::spawn(consumer.run(async move {
        until(|| st.load(Ordering::SeqCst) == 1).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }));
    tokio::time::sleep(Duration::from_millis(1)).await;
    for n in 0..5 {
        let e = EventBuilder::new("test", "t")
            .id(format!("e{n}"))
            .ordering_key("k")
            .build()
            .unwrap();
        broker.publisher().publish("orders", e).await.unwrap();
    }
    let report = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("shutdown is bounded")
        .unwrap()
        .unwrap();
    assert_eq!(started.load(Ordering::SeqCst), 1, "one handler started");
    assert!(
        report.received >= 2,
        "at least one delivery queued behind the started one in the key's lane: {report:?}"
    );
    assert_eq!(
        report.acked, 1,
        "only the started delivery was acked: {report:?}"
    );
    assert_eq!(
        broker.group_stats("orders", "g").unwrap().total(),
        4,
        "the queued and the never received ones are still in the group"
    );
}

/// Answers every request on `topic` with its own data, until aborted.
fn responder(broker: &MemoryBroker, topic: &'static str) -> tokio::task::JoinHandle<()> {
    responder_with(broker, topic, Duration::ZERO, |e| {
        e.data_json::<serde_json::Value>().unwrap()
    })
}

/// Answers every request on `topic` with `answer(request)`, after `delay`, until aborted.
fn responder_with(
    broker: &MemoryBroker,
    topic: &'static str,
    delay: Duration,
    answer: impl Fn(&messaging_core::Event) -> serde_json::Value + Send + 'static,
) -> tokio::task::JoinHandle<()> {
    let broker = broker.clone();
    tokio::spawn(async move {
        use messaging_core::{Delivery, Subscriber, Subscription};
        let publisher = broker.publisher();
        let mut sub = broker
            .subscriber()
            .subscribe(topic, SubscribeOptions::new("server"))
            .await
            .unwrap();
        while let Ok(d) = sub.recv().await {
            tokio::time::sleep(delay).await;
            let e = d.event().unwrap().clone();
            let reply = EventBuilder::new(topic, "answer").json(&answer(&e));
            messaging_core::request::reply(&publisher, &e, reply)
                .await
                .unwrap();
            d.ack().await.unwrap();
        }
    })
}

#[tokio::test(start_paused = true)]
async fn the_requester_keeps_listening_after_the_broker_closed_its_subscription() {
    use messaging_core::request::Requester;
    let broker = MemoryBroker::new();
    let server = responder(&broker, "prices");
    let requester = Requester::start(&broker.subscriber(), publisher(&broker))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let ask = |n: usize| {
        EventBuilder::new("shop", "price.requested")
            .json(&n)
            .build()
            .unwrap()
    };
    let first = requester
        .request("prices", ask(1), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(first.data_json::<usize>().unwrap(), 1);
    // A broker hiccup: every subscription (the server's too) is closed.
    broker.faults().close_subscriptions();
    server.abort();
    let _server = responder(&broker, "prices");
    tokio::time::sleep(Duration::from_secs(10)).await;
    let second = requester
        .request("prices", ask(2), Duration::from_secs(5))
        .await
        .expect("answered after the reply subscription was reopened");
    assert_eq!(second.data_json::<usize>().unwrap(), 2);
}

#[tokio::test(start_paused = true)]
async fn concurrent_requests_with_the_same_id_each_get_a_reply() {
    use messaging_core::request::Requester;
    let broker = MemoryBroker::new();
    let _server = responder(&broker, "prices");
    let requester = Arc::new(
        Requester::start(&broker.subscriber(), publisher(&broker))
            .await
            .unwrap(),
    );
    tokio::time::sleep(Duration::from_millis(1)).await;
    let ask = || {
        EventBuilder::new("shop", "price.requested")
            .id("same-id")
            .json(&7)
            .build()
            .unwrap()
    };
    let (a, b) = tokio::join!(
        requester.request("prices", ask(), Duration::from_secs(5)),
        requester.request("prices", ask(), Duration::from_secs(5)),
    );
    assert_eq!(a.expect("first answered").data_json::<u32>().unwrap(), 7);
    assert_eq!(b.expect("second answered").data_json::<u32>().unwrap(), 7);
}

#[tokio::test(start_paused = true)]
async fn requests_sharing_an_id_get_their_own_replies_not_the_first_to_arrive() {
    use messaging_core::request::Requester;
    let broker = MemoryBroker::new();
    let _slow = responder_with(&broker, "slow-service", Duration::from_secs(2), |_| {
        serde_json::json!("from slow")
    });
    let _fast = responder_with(&broker, "fast-service", Duration::from_millis(10), |_| {
        serde_json::json!("from fast")
    });
    let requester = Requester::start(&broker.subscriber(), publisher(&broker))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1)).await;
    let ask = || {
        EventBuilder::new("shop", "question")
            .id("shared-id")
            .build()
            .unwrap()
    };
    // The slow service's request is sent first; the fast service's reply arrives first.
    let (slow, fast) = tokio::join!(
        requester.request("slow-service", ask(), Duration::from_secs(10)),
        async {
            tokio::time::sleep(Duration::from_millis(1)).await;
            requester
                .request("fast-service", ask(), Duration::from_secs(10))
                .await
        },
    );
    assert_eq!(slow.unwrap().data_json::<String>().unwrap(), "from slow");
    assert_eq!(fast.unwrap().data_json::<String>().unwrap(), "from fast");
}
