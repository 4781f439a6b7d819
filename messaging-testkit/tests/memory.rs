//! Behaviour of the in-memory broker beyond the conformance suite: faults, stale acks,
//! statistics, group settings.

use std::time::Duration;

use messaging_core::{
    AckErrorKind, AttributesReader, Delivery, EventBuilder, Publisher, ReceiveErrorKind,
    SubscribeErrorKind, SubscribeOptions, Subscriber, Subscription,
};
use messaging_testkit::{GroupStats, MemoryBroker};

fn event(n: usize) -> messaging_core::Event {
    EventBuilder::new("test", "t")
        .id(format!("e{n}"))
        .json(&n)
        .build()
        .unwrap()
}

async fn setup(group: SubscribeOptions) -> (MemoryBroker, messaging_testkit::MemorySubscription) {
    let broker = MemoryBroker::new();
    let sub = broker
        .subscriber()
        .subscribe("orders", group)
        .await
        .unwrap();
    (broker, sub)
}

#[tokio::test(start_paused = true)]
async fn stale_ack_after_redelivery_is_refused_and_hands_back() {
    let opts = SubscribeOptions::new("g").ack_deadline(Duration::from_secs(5));
    let (broker, mut sub) = setup(opts).await;
    broker
        .publisher()
        .publish("orders", event(1))
        .await
        .unwrap();
    let first = sub.recv().await.unwrap();
    let second = sub.recv().await.unwrap(); // after the deadline, under paused time
    assert_eq!(second.attempt(), 2);
    let err = first.ack().await.unwrap_err();
    assert_eq!(err.error.kind(), AckErrorKind::Expired);
    assert_eq!(err.delivery.attempt(), 1, "the delivery is handed back");
    second.ack().await.unwrap();
    assert_eq!(
        broker.group_stats("orders", "g"),
        Some(GroupStats::default())
    );
}

#[tokio::test(start_paused = true)]
async fn injected_ack_failure_is_transient_and_retryable() {
    let (broker, mut sub) = setup(SubscribeOptions::new("g")).await;
    broker
        .publisher()
        .publish("orders", event(1))
        .await
        .unwrap();
    broker.faults().fail_next_acks(1);
    let d = sub.recv().await.unwrap();
    let err = d.ack().await.unwrap_err();
    assert_eq!(err.error.kind(), AckErrorKind::Unavailable);
    assert!(err.is_transient());
    err.delivery.ack().await.unwrap();
    assert_eq!(broker.group_stats("orders", "g").unwrap().total(), 0);
}

#[tokio::test(start_paused = true)]
async fn injected_duplicate_is_delivered_twice() {
    let (broker, mut sub) = setup(SubscribeOptions::new("g")).await;
    broker.faults().duplicate_next_deliveries(1);
    broker
        .publisher()
        .publish("orders", event(1))
        .await
        .unwrap();
    broker
        .publisher()
        .publish("orders", event(2))
        .await
        .unwrap();
    let mut ids = Vec::new();
    for _ in 0..3 {
        let d = sub.recv().await.unwrap();
        ids.push(d.event().unwrap().id().to_owned());
        d.ack().await.unwrap();
    }
    assert_eq!(ids, ["e1", "e1", "e2"]);
}

#[tokio::test(start_paused = true)]
async fn broker_side_close_wakes_receivers_and_requeues() {
    let (broker, mut sub) = setup(SubscribeOptions::new("g")).await;
    broker
        .publisher()
        .publish("orders", event(1))
        .await
        .unwrap();
    let held = sub.recv().await.unwrap();
    let waiter = tokio::spawn(async move { sub.recv().await.map(|_| ()) });
    tokio::task::yield_now().await;
    broker.faults().close_subscriptions();
    let err = waiter.await.unwrap().unwrap_err();
    assert_eq!(err.kind(), ReceiveErrorKind::Closed);
    let err = held.ack().await.unwrap_err();
    assert_eq!(err.error.kind(), AckErrorKind::Closed);
    let stats = broker.group_stats("orders", "g").unwrap();
    assert_eq!(
        stats.ready, 1,
        "the unsettled message went back to the group"
    );
}

#[tokio::test(start_paused = true)]
async fn latency_slows_publish_and_receive() {
    let (broker, mut sub) = setup(SubscribeOptions::new("g")).await;
    broker.faults().set_latency(Duration::from_millis(250));
    let start = tokio::time::Instant::now();
    broker
        .publisher()
        .publish("orders", event(1))
        .await
        .unwrap();
    sub.recv().await.unwrap().ack().await.unwrap();
    assert!(start.elapsed() >= Duration::from_millis(500));
    broker.faults().clear();
    let start = tokio::time::Instant::now();
    broker
        .publisher()
        .publish("orders", event(2))
        .await
        .unwrap();
    sub.recv().await.unwrap().ack().await.unwrap();
    assert!(start.elapsed() < Duration::from_millis(1));
}

#[tokio::test(start_paused = true)]
async fn stats_count_every_state() {
    let opts = SubscribeOptions::new("g").ordered(true);
    let (broker, mut sub) = setup(opts).await;
    let publisher = broker.publisher();
    for n in 0..3 {
        let e = EventBuilder::new("t", "t")
            .ordering_key("k")
            .json(&n)
            .build()
            .unwrap();
        publisher.publish("orders", e).await.unwrap();
    }
    publisher.publish("orders", event(9)).await.unwrap();
    let d = sub.recv().await.unwrap();
    assert_eq!(
        broker.group_stats("orders", "g").unwrap(),
        GroupStats {
            ready: 1,
            in_flight: 1,
            delayed: 0,
            waiting_on_key: 2
        }
    );
    d.nack(Some(Duration::from_secs(10))).await.unwrap();
    let stats = broker.group_stats("orders", "g").unwrap();
    assert_eq!(
        (stats.delayed, stats.waiting_on_key, stats.total()),
        (1, 2, 4)
    );
}

#[tokio::test]
async fn conflicting_group_settings_are_rejected() {
    let (broker, _sub) = setup(SubscribeOptions::new("g")).await;
    let err = broker
        .subscriber()
        .subscribe("orders", SubscribeOptions::new("g").ordered(true))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), SubscribeErrorKind::Rejected);
}

#[tokio::test]
async fn raw_cloudevent_in_binary_mode_decodes() {
    let (broker, mut sub) = setup(SubscribeOptions::new("g")).await;
    let e = event(5);
    let raw = messaging_core::Binding::kafka()
        .encode(&e, messaging_core::ContentMode::Binary)
        .unwrap()
        .into_raw();
    broker.publish_raw("orders", raw);
    let d = sub.recv().await.unwrap();
    assert_eq!(d.event().unwrap().id(), "e5");
}

#[tokio::test(start_paused = true)]
async fn consumer_at_prefetch_limit_gets_its_expired_delivery_back() {
    let opts = SubscribeOptions::new("g")
        .prefetch(1)
        .ack_deadline(Duration::from_secs(5));
    let (broker, mut sub) = setup(opts).await;
    broker
        .publisher()
        .publish("orders", event(1))
        .await
        .unwrap();
    let first = sub.recv().await.unwrap();
    drop(first); // neither acked nor nacked
    let again = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("redelivered after the deadline although the prefetch was full")
        .unwrap();
    assert_eq!(again.attempt(), 2);
}

#[tokio::test(start_paused = true)]
async fn idle_consumer_wakes_to_redeliver_anothers_expired_delivery() {
    let opts = || SubscribeOptions::new("g").ack_deadline(Duration::from_secs(5));
    let (broker, a) = setup(opts()).await;
    let b = broker
        .subscriber()
        .subscribe("orders", opts())
        .await
        .unwrap();
    // Both consumers wait before anything is published; one gets the message and holds it
    // unacked, the other must wake when its deadline passes and get it again.
    let tasks: Vec<_> = [a, b]
        .into_iter()
        .map(|mut sub| {
            tokio::spawn(async move {
                let d = sub.recv().await.unwrap();
                (d.attempt(), d, sub)
            })
        })
        .collect();
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    broker
        .publisher()
        .publish("orders", event(1))
        .await
        .unwrap();
    let mut attempts = Vec::new();
    let mut keep = Vec::new();
    for t in tasks {
        let (attempt, d, sub) = tokio::time::timeout(Duration::from_secs(10), t)
            .await
            .expect("both consumers get a delivery")
            .unwrap();
        attempts.push(attempt);
        keep.push((d, sub));
    }
    attempts.sort_unstable();
    assert_eq!(attempts, [1, 2]);
}
