//! Consumers that keep running: lease renewal for long handlers, handler timeouts, the
//! prefetch on deadline brokers, and subscribing again after the subscription was lost — on
//! the in-memory broker, under paused time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging_core::handler::{HandlerError, Incoming, handler_fn};
use messaging_core::middleware::dead_letter::DeadLetterMetadata;
use messaging_core::runtime::{Consumer, LeasePolicy, RunError, RunReport};
use messaging_core::{AttributesReader, Publisher, SubscribeErrorKind, SubscribeOptions};
use messaging_testkit::MemoryBroker;

mod common;
use common::{dead_letters, event, policy, publisher, until};

type Runs = Arc<Mutex<HashMap<String, usize>>>;

/// A handler that records each run by event id and takes `work` of (paused) time.
fn slow_handler(
    runs: Runs,
    work: Duration,
) -> impl tower_service::Service<Incoming, Response = (), Error = HandlerError, Future = impl Send>
+ Clone
+ Send
+ 'static {
    handler_fn(move |msg: Incoming| {
        let runs = runs.clone();
        async move {
            *runs
                .lock()
                .unwrap()
                .entry(msg.event().id().to_owned())
                .or_default() += 1;
            tokio::time::sleep(work).await;
            Ok::<(), HandlerError>(())
        }
    })
}

fn total(runs: &Runs) -> usize {
    runs.lock().unwrap().values().sum()
}

/// Two consumers of one group, each running `lease`; one message whose handler takes `work`,
/// three times the ack deadline. Both stop once the message is settled, or after 30 s (a
/// message handed out again every deadline is never settled: each handler outlives it).
/// Returns the handler runs and both reports.
async fn two_consumers_one_long_handler(lease: LeasePolicy) -> (usize, RunReport, RunReport) {
    let broker = MemoryBroker::new();
    let deadline = Duration::from_secs(2);
    let work = deadline * 3;
    let runs: Runs = Arc::default();
    let options = SubscribeOptions::new("g").ack_deadline(deadline);
    let consumer = |lease: LeasePolicy| {
        Consumer::builder(
            broker.subscriber(),
            publisher(&broker),
            "orders",
            options.clone(),
        )
        .lease(lease)
        .build(slow_handler(runs.clone(), work))
    };
    let stop = {
        let b = broker.clone();
        move || {
            let b = b.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let settled =
                    until(|| b.group_stats("orders", "g").is_some_and(|s| s.total() == 0));
                let _ = tokio::time::timeout(Duration::from_secs(30), settled).await;
            }
        }
    };
    let a = tokio::spawn(consumer(lease.clone()).run(stop()));
    let b = tokio::spawn(consumer(lease).run(stop()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    broker
        .publisher()
        .publish("orders", event(1))
        .await
        .unwrap();
    let a = tokio::time::timeout(Duration::from_secs(600), a)
        .await
        .expect("consumer a stops")
        .unwrap()
        .unwrap();
    let b = tokio::time::timeout(Duration::from_secs(600), b)
        .await
        .expect("consumer b stops")
        .unwrap()
        .unwrap();
    (total(&runs), a, b)
}

#[tokio::test(start_paused = true)]
async fn a_handler_running_three_deadlines_is_not_handed_to_a_second_consumer() {
    let (runs, a, b) = two_consumers_one_long_handler(LeasePolicy::default()).await;
    assert_eq!(runs, 1, "handled once: {a:?} {b:?}");
    assert_eq!(a.acked + b.acked, 1);
    assert_eq!(a.settle_failures + b.settle_failures, 0);
}

#[tokio::test(start_paused = true)]
async fn without_renewal_the_second_consumer_gets_it_while_the_first_still_works() {
    // The control for the test above: what renewal prevents does happen without it.
    let (runs, a, b) = two_consumers_one_long_handler(LeasePolicy::disabled()).await;
    assert!(runs >= 2, "handed out again at the deadline: {a:?} {b:?}");
    assert!(
        a.settle_failures + b.settle_failures >= 1,
        "the first handler's ack came too late: {a:?} {b:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn renewal_gives_up_after_its_maximum() {
    let lease = LeasePolicy {
        max: Duration::from_secs(3),
        ..LeasePolicy::default()
    };
    let (runs, a, b) = two_consumers_one_long_handler(lease).await;
    assert!(
        runs >= 2,
        "after 3 s of renewal the lease ran out and another consumer got it: {a:?} {b:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn a_hanging_handler_is_timed_out_retried_and_dead_lettered() {
    let broker = MemoryBroker::new();
    let runs: Runs = Arc::default();
    let retry = messaging_core::middleware::retry::RetryPolicy {
        handler_timeout: Some(Duration::from_secs(5)),
        ..policy(1, messaging_core::middleware::retry::RetryMode::InPlace)
    };
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .retry(retry)
    .build(slow_handler(runs.clone(), Duration::from_secs(86_400)));
    let b = broker.clone();
    let run = tokio::spawn(consumer.run(async move {
        until(|| {
            b.group_stats("orders.dlq", "dead-letters")
                .is_some_and(|s| s.total() == 1)
        })
        .await;
    }));
    tokio::time::sleep(Duration::from_millis(10)).await;
    broker
        .publisher()
        .publish("orders", event(1))
        .await
        .unwrap();
    let report = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("the hanging handler was cut off, not waited for")
        .unwrap()
        .unwrap();
    assert_eq!(total(&runs), 2, "run, timed out, retried once");
    assert_eq!(report.dead_lettered, 1);
    let dead = dead_letters(&broker, "orders.dlq", 1).await;
    let meta = DeadLetterMetadata::from_event(&dead[0]).unwrap();
    assert!(meta.error.contains("timed out"), "{}", meta.error);
}

/// A subscriber that records the options each subscribe was given.
#[derive(Clone)]
struct Recording {
    inner: messaging_testkit::MemorySubscriber,
    options: Arc<Mutex<Vec<SubscribeOptions>>>,
}

impl messaging_core::Subscriber for Recording {
    type Subscription = messaging_testkit::MemorySubscription;

    async fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<Self::Subscription, messaging_core::SubscribeError> {
        self.options.lock().unwrap().push(options.clone());
        self.inner.subscribe(topic, options).await
    }

    fn features(&self) -> messaging_core::Features {
        self.inner.features()
    }
}

/// The prefetch the runtime subscribes with, for `options` and `concurrency`.
async fn prefetch_of(options: SubscribeOptions, concurrency: usize) -> usize {
    let broker = MemoryBroker::new();
    let recording = Recording {
        inner: broker.subscriber(),
        options: Arc::default(),
    };
    let consumer = Consumer::builder(recording.clone(), publisher(&broker), "orders", options)
        .concurrency(concurrency)
        .build(slow_handler(Arc::default(), Duration::ZERO));
    let run = tokio::spawn(consumer.run(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    run.abort();
    let seen = recording.options.lock().unwrap();
    seen.first().expect("subscribed").prefetch_limit()
}

#[tokio::test(start_paused = true)]
async fn the_default_prefetch_on_a_deadline_broker_is_concurrency_plus_one_batch() {
    assert_eq!(prefetch_of(SubscribeOptions::new("g"), 4).await, 14);
    assert_eq!(
        prefetch_of(SubscribeOptions::new("g").prefetch(100), 4).await,
        100,
        "an explicit prefetch is kept"
    );
    assert_eq!(
        prefetch_of(SubscribeOptions::new("g").prefetch(2), 4).await,
        4,
        "and raised to the concurrency"
    );
}

#[tokio::test(start_paused = true)]
async fn the_consumer_subscribes_again_after_its_subscription_is_lost() {
    let broker = MemoryBroker::new();
    let runs: Runs = Arc::default();
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .build(slow_handler(runs.clone(), Duration::from_millis(1)));
    let r = runs.clone();
    let run = tokio::spawn(consumer.run(async move {
        until(|| r.lock().unwrap().len() == 20).await;
    }));
    tokio::time::sleep(Duration::from_millis(10)).await;
    for n in 0..10 {
        broker
            .publisher()
            .publish("orders", event(n))
            .await
            .unwrap();
    }
    until(|| runs.lock().unwrap().len() == 10).await;
    broker.faults().close_subscriptions();
    tokio::time::sleep(Duration::from_millis(10)).await;
    for n in 10..20 {
        broker
            .publisher()
            .publish("orders", event(n))
            .await
            .unwrap();
    }
    let report = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("consuming resumed after the subscription was lost")
        .unwrap()
        .expect("a lost subscription does not end the run");
    assert_eq!(report.resubscribed, 1);
    assert_eq!(report.acked, 20);
}

#[tokio::test(start_paused = true)]
async fn a_subscription_lost_for_good_ends_the_run_saying_why() {
    let broker = MemoryBroker::new();
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g"),
    )
    .build(slow_handler(Arc::default(), Duration::from_millis(1)));
    let run = tokio::spawn(consumer.run(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    // Down for a while (retried), then refusing for good.
    broker
        .faults()
        .refuse_subscribes(Some(SubscribeErrorKind::Unavailable));
    broker.faults().close_subscriptions();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        !run.is_finished(),
        "a broker that is down for a while is waited for"
    );
    broker
        .faults()
        .refuse_subscribes(Some(SubscribeErrorKind::Rejected));
    let err = tokio::time::timeout(Duration::from_secs(600), run)
        .await
        .expect("the run ended")
        .unwrap()
        .expect_err("a refused subscribe ends the run");
    match &err {
        RunError::Resubscribe { error, .. } => assert!(!error.is_transient(), "{error}"),
        other => panic!("unexpected: {other}"),
    }
    assert!(
        err.to_string().contains("subscribing again failed"),
        "{err}"
    );
}

/// Sets its flag when dropped.
struct DropFlag(Arc<std::sync::atomic::AtomicBool>);

impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test(start_paused = true)]
async fn a_crashed_consumers_message_is_handed_out_again_within_one_deadline() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let broker = MemoryBroker::new();
    let deadline = Duration::from_secs(2);
    let options = SubscribeOptions::new("g").ack_deadline(deadline);
    let (started, dropped) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (s, d) = (started.clone(), dropped.clone());
    let hanging = handler_fn(move |_msg: Incoming| {
        let (s, d) = (s.clone(), d.clone());
        async move {
            let _flag = DropFlag(d);
            s.store(true, Ordering::SeqCst);
            std::future::pending::<Result<(), HandlerError>>().await
        }
    });
    let crashing = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        options.clone(),
    )
    .build(hanging);
    let crashing = tokio::spawn(crashing.run(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    broker
        .publisher()
        .publish("orders", event(1))
        .await
        .unwrap();
    until(|| started.load(Ordering::SeqCst)).await;
    // Renewed a few times, then the consumer dies.
    tokio::time::sleep(deadline * 3).await;
    let runs: Runs = Arc::default();
    let survivor = Consumer::builder(broker.subscriber(), publisher(&broker), "orders", options)
        .build(slow_handler(runs.clone(), Duration::ZERO));
    let survivor = tokio::spawn(survivor.run(std::future::pending()));
    let crashed_at = tokio::time::Instant::now();
    crashing.abort();
    until(|| total(&runs) == 1).await;
    let after = crashed_at.elapsed();
    assert!(
        after <= deadline,
        "handed out again {after:?} after the crash"
    );
    assert!(
        dropped.load(Ordering::SeqCst),
        "the crashed run's handler was stopped with it, not left running"
    );
    survivor.abort();
}
