//! Consumers that keep running: lease renewal for long handlers, handler timeouts, the
//! prefetch on deadline brokers, and subscribing again after the subscription was lost — on
//! the in-memory broker, under paused time.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging_core::dead_letter::DeadLetterMetadata;
use messaging_core::handler::{HandlerError, Incoming, handler_fn};
use messaging_core::middleware::retry::RetryMode;
use messaging_core::runtime::{
    CircuitBreaker, Consumer, ConsumerHandle, ConsumerState, LeasePolicy, RateLimit, RunError,
    RunReport,
};
use messaging_core::{AttributesReader, Publisher, SubscribeErrorKind, SubscribeOptions};
use messaging_testkit::MemoryBroker;

mod common;
use common::{dead_letters, event, policy, publish_order, publisher, report_of, until};

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
    publish_order(&broker, 1).await;
    let a = report_of(a, "consumer a stops").await;
    let b = report_of(b, "consumer b stops").await;
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
    publish_order(&broker, 1).await;
    let report = report_of(run, "the hanging handler was cut off, not waited for").await;
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
async fn an_aborted_run_cuts_its_handlers_off_and_gives_their_messages_back() {
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
    publish_order(&broker, 1).await;
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
        after < deadline,
        "handed out again {after:?} after the abort"
    );
    assert!(
        dropped.load(Ordering::SeqCst),
        "the crashed run's handler was stopped with it, not left running"
    );
    survivor.abort();
}

/// A consumer of "orders" running `handler` with `configure` applied, and its handle.
fn consumer_with<H>(
    broker: &MemoryBroker,
    configure: impl FnOnce(
        messaging_core::runtime::ConsumerBuilder<messaging_testkit::MemorySubscriber>,
    ) -> messaging_core::runtime::ConsumerBuilder<
        messaging_testkit::MemorySubscriber,
    >,
    handler: H,
) -> (
    Consumer<messaging_testkit::MemorySubscriber, messaging_core::middleware::retry::Retry<H>>,
    ConsumerHandle,
)
where
    H: tower_service::Service<Incoming, Response = (), Error = HandlerError>,
{
    let builder = Consumer::builder(
        broker.subscriber(),
        publisher(broker),
        "orders",
        SubscribeOptions::new("g"),
    );
    let consumer = configure(builder).build(handler);
    let handle = consumer.handle();
    (consumer, handle)
}

async fn publish_n(broker: &MemoryBroker, ids: std::ops::Range<usize>) {
    let events: Vec<_> = ids.map(event).collect();
    broker
        .publisher()
        .publish_batch("orders", events)
        .await
        .unwrap();
}

#[tokio::test(start_paused = true)]
async fn the_status_follows_the_run_from_starting_to_stopped() {
    let broker = MemoryBroker::new();
    let runs: Runs = Arc::default();
    let (consumer, handle) =
        consumer_with(&broker, |b| b, slow_handler(runs.clone(), Duration::ZERO));
    assert_eq!(handle.status().state, ConsumerState::Starting);
    assert!(!handle.status().is_ready());
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(consumer.run(async move {
        let _ = stop_rx.await;
    }));
    tokio::time::sleep(Duration::from_millis(10)).await;
    assert_eq!(handle.status().state, ConsumerState::Running);
    assert!(handle.status().is_ready());
    publish_n(&broker, 0..5).await;
    until(|| total(&runs) == 5).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let status = handle.status();
    assert_eq!((status.received, status.settled), (5, 5), "{status:?}");
    assert!(status.last_receive.is_some() && status.last_settle.is_some());
    assert_eq!(status.in_flight, 0);
    let json = serde_json::to_value(&status).unwrap();
    assert_eq!(json["state"], "running");
    assert_eq!(json["group"], "g");

    // A lost subscription shows as reconnecting while the broker refuses, then running.
    broker
        .faults()
        .refuse_subscribes(Some(SubscribeErrorKind::Unavailable));
    broker.faults().close_subscriptions();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(handle.status().state, ConsumerState::Reconnecting);
    assert!(!handle.status().is_ready());
    assert!(handle.status().is_live());
    broker.faults().refuse_subscribes(None);
    tokio::time::sleep(Duration::from_secs(31)).await;
    assert_eq!(handle.status().state, ConsumerState::Running);
    assert_eq!(handle.status().resubscribed, 1);

    stop_tx.send(()).unwrap();
    run.await.unwrap().unwrap();
    let status = handle.status();
    assert_eq!(status.state, ConsumerState::Stopped);
    assert!(status.error.is_none() && status.is_live() && !status.is_ready());
}

#[tokio::test(start_paused = true)]
async fn work_waiting_without_a_settle_is_stalled_and_recovers() {
    let broker = MemoryBroker::new();
    let release = Arc::new(tokio::sync::Notify::new());
    let r = release.clone();
    let handler = handler_fn(move |_msg: Incoming| {
        let r = r.clone();
        async move {
            r.notified().await;
            Ok::<(), HandlerError>(())
        }
    });
    let (consumer, handle) = consumer_with(
        &broker,
        |b| {
            b.stall_after(Duration::from_secs(60))
                .lease(LeasePolicy::default())
        },
        handler,
    );
    let run = tokio::spawn(consumer.run(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    publish_n(&broker, 0..1).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(handle.status().state, ConsumerState::Running, "not yet");
    assert_eq!(handle.status().in_flight, 1);
    tokio::time::sleep(Duration::from_secs(32)).await;
    let status = handle.status();
    assert_eq!(status.state, ConsumerState::Stalled, "{status:?}");
    assert!(!status.is_live() && !status.is_ready());
    release.notify_waiters();
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(handle.status().state, ConsumerState::Running);
    run.abort();
}

#[tokio::test(start_paused = true)]
async fn a_paused_consumer_takes_nothing_and_finishes_what_it_has() {
    let broker = MemoryBroker::new();
    let runs: Runs = Arc::default();
    let (consumer, handle) = consumer_with(
        &broker,
        |b| b.concurrency(2),
        slow_handler(runs.clone(), Duration::from_secs(1)),
    );
    let run = tokio::spawn(consumer.run(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    publish_n(&broker, 0..10).await;
    until(|| total(&runs) == 2).await;
    handle.pause();
    assert!(handle.is_paused());
    tokio::time::sleep(Duration::from_secs(30)).await;
    let stats = broker.group_stats("orders", "g").unwrap();
    assert_eq!(total(&runs), 2, "nothing new taken while paused");
    assert_eq!(
        (stats.ready, stats.in_flight),
        (8, 0),
        "the two in flight were finished and acked, the rest wait in the queue"
    );
    assert_eq!(handle.status().state, ConsumerState::Paused);
    assert!(handle.status().is_ready(), "paused on purpose is ready");
    handle.resume();
    until(|| total(&runs) == 10).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(broker.group_stats("orders", "g").unwrap().total(), 0);
    assert_eq!(handle.status().state, ConsumerState::Running);
    let dead = broker.group_stats("orders.dlq", "dead-letters");
    assert!(
        dead.is_none_or(|s| s.total() == 0),
        "the pause dead-lettered nothing"
    );
    run.abort();
}

/// A consumer without retries behind a circuit breaker (ratio 0.5 over a minute, `min_calls`,
/// `cooldown`), whose handler records its runs in `runs` (if given) and fails while `healthy`
/// is false — transiently when it records runs, permanently otherwise (so nothing is held back
/// for redelivery).
fn breaker_consumer(
    broker: &MemoryBroker,
    healthy: &Arc<std::sync::atomic::AtomicBool>,
    runs: Option<&Runs>,
    min_calls: u32,
    cooldown: Duration,
) -> (
    Consumer<
        messaging_testkit::MemorySubscriber,
        messaging_core::middleware::retry::Retry<
            impl tower_service::Service<
                Incoming,
                Response = (),
                Error = HandlerError,
                Future = impl Send,
            > + Clone
            + Send
            + 'static,
        >,
    >,
    ConsumerHandle,
) {
    let (h, r) = (healthy.clone(), runs.cloned());
    let handler = handler_fn(move |msg: Incoming| {
        let (h, r) = (h.clone(), r.clone());
        async move {
            if let Some(r) = &r {
                *r.lock()
                    .unwrap()
                    .entry(msg.event().id().to_owned())
                    .or_default() += 1;
            }
            match (h.load(std::sync::atomic::Ordering::SeqCst), r.is_some()) {
                (true, _) => Ok(()),
                (false, true) => Err(HandlerError::transient("downstream is down")),
                (false, false) => Err(HandlerError::permanent("downstream refuses")),
            }
        }
    });
    let breaker = CircuitBreaker {
        failure_ratio: 0.5,
        min_calls,
        window: Duration::from_secs(60),
        cooldown,
    };
    consumer_with(
        broker,
        |b| {
            b.retry(policy(0, RetryMode::InPlace))
                .circuit_breaker(breaker)
        },
        handler,
    )
}

#[tokio::test(start_paused = true)]
async fn the_circuit_opens_on_failures_holds_messages_back_and_closes_after_a_good_trial() {
    let broker = MemoryBroker::new();
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let runs: Runs = Arc::default();
    let (consumer, handle) =
        breaker_consumer(&broker, &healthy, Some(&runs), 4, Duration::from_secs(20));
    let run = tokio::spawn(consumer.run(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    publish_n(&broker, 0..30).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let status = handle.status();
    assert_eq!(status.circuit, Some("open"), "{status:?}");
    assert_eq!(status.state, ConsumerState::Paused);
    let handled = total(&runs);
    assert!(
        (4..=5).contains(&handled),
        "intake stopped after the failures that opened it: {handled}"
    );
    let dead = broker
        .group_stats("orders.dlq", "dead-letters")
        .map_or(0, |s| s.total());
    assert!(
        dead <= 4,
        "the rest stayed in the queue: {dead} dead letters"
    );
    // The trial after the cooldown fails: open again, one more run.
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert_eq!(total(&runs), handled + 1, "one trial");
    assert_eq!(handle.status().circuit, Some("open"));
    // Downstream back: the next trial closes the circuit and the queue drains.
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(21)).await;
    assert_eq!(handle.status().circuit, Some("closed"));
    until(|| {
        broker
            .group_stats("orders", "g")
            .is_some_and(|s| s.total() == 0)
    })
    .await;
    let dead_after = broker
        .group_stats("orders.dlq", "dead-letters")
        .map_or(0, |s| s.total());
    assert_eq!(
        dead_after, dead,
        "nothing dead-lettered while the circuit was open"
    );
    run.abort();
}

#[tokio::test(start_paused = true)]
async fn intake_is_held_to_the_rate_limit() {
    let broker = MemoryBroker::new();
    let runs: Runs = Arc::default();
    let (consumer, _handle) = consumer_with(
        &broker,
        |b| {
            b.concurrency(8).rate_limit(RateLimit {
                per_second: 10.0,
                burst: Some(5),
            })
        },
        slow_handler(runs.clone(), Duration::ZERO),
    );
    let run = tokio::spawn(consumer.run(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    publish_n(&broker, 0..100).await;
    let started = tokio::time::Instant::now();
    tokio::time::timeout(Duration::from_secs(60), until(|| total(&runs) >= 55))
        .await
        .unwrap_or_else(|_| panic!("only {} handled in 60 s", total(&runs)));
    let took = started.elapsed();
    // 5 at once, then 10 a second: 50 more take 5 s.
    assert!(
        took >= Duration::from_millis(4900) && took <= Duration::from_millis(5200),
        "{took:?}"
    );
    run.abort();
}

/// `GET path` over a plain HTTP/1.1 connection: the status code and the body.
#[cfg(feature = "http-probes")]
async fn http_get(addr: std::net::SocketAddr, path: &str) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: probe\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (code, body)
}

#[cfg(feature = "http-probes")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_over_http_follow_the_consumers() {
    let broker = MemoryBroker::new();
    let (consumer, handle) =
        consumer_with(&broker, |b| b, slow_handler(Arc::default(), Duration::ZERO));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(messaging_core::runtime::probes::serve(
        listener,
        vec![handle.clone()],
        std::future::pending(),
    ));
    // Not started: live, not ready.
    assert_eq!(http_get(addr, "/livez").await.0, 200);
    let (code, body) = http_get(addr, "/readyz").await;
    assert_eq!(code, 503);
    assert!(body.contains("orders (g): starting"), "{body}");

    let run = tokio::spawn(consumer.run(std::future::pending()));
    let end = tokio::time::Instant::now() + Duration::from_secs(10);
    while http_get(addr, "/readyz").await.0 != 200 && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(http_get(addr, "/readyz").await.0, 200);
    let (code, body) = http_get(addr, "/consumers").await;
    assert_eq!(code, 200);
    let list: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(list[0]["state"], "running", "{body}");
    assert_eq!(list[0]["topic"], "orders");

    // The broker is lost: readiness fails within a bounded time, liveness holds.
    broker
        .faults()
        .refuse_subscribes(Some(SubscribeErrorKind::Unavailable));
    let lost_at = tokio::time::Instant::now();
    broker.faults().close_subscriptions();
    while http_get(addr, "/readyz").await.0 == 200 && lost_at.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (code, body) = http_get(addr, "/readyz").await;
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("reconnecting"), "{body}");
    assert!(
        lost_at.elapsed() < Duration::from_secs(1),
        "readiness failed {:?} after the loss",
        lost_at.elapsed()
    );
    assert_eq!(http_get(addr, "/livez").await.0, 200);
    broker.faults().refuse_subscribes(None);
    let end = tokio::time::Instant::now() + Duration::from_secs(40);
    while http_get(addr, "/readyz").await.0 != 200 && tokio::time::Instant::now() < end {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(http_get(addr, "/readyz").await.0, 200, "ready again");
    run.abort();
    server.abort();
}

#[tokio::test(start_paused = true)]
async fn deliveries_waiting_for_their_lane_keep_their_lease() {
    // Ordered: deliveries whose keys share a lane wait behind each other inside the runtime;
    // their deadlines must not run out while they wait.
    let broker = MemoryBroker::new();
    let runs: Runs = Arc::default();
    let consumer = Consumer::builder(
        broker.subscriber(),
        publisher(&broker),
        "orders",
        SubscribeOptions::new("g")
            .ordered(true)
            .ack_deadline(Duration::from_secs(2)),
    )
    .concurrency(4)
    .build(slow_handler(runs.clone(), Duration::from_millis(1500)));
    let b = broker.clone();
    let run = tokio::spawn(consumer.run(async move {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let settled = until(|| b.group_stats("orders", "g").is_some_and(|s| s.total() == 0));
        let _ = tokio::time::timeout(Duration::from_secs(60), settled).await;
    }));
    tokio::time::sleep(Duration::from_millis(10)).await;
    let events: Vec<_> = (0..12)
        .map(|n| {
            messaging_core::EventBuilder::new("test", "order.created")
                .id(format!("e{n}"))
                .ordering_key(format!("customer-{n}"))
                .build()
                .unwrap()
        })
        .collect();
    broker
        .publisher()
        .publish_batch("orders", events)
        .await
        .unwrap();
    let report = report_of(run, "the consumer stops").await;
    let runs = runs.lock().unwrap().clone();
    assert_eq!(runs.len(), 12, "{runs:?}");
    assert!(
        runs.values().all(|n| *n == 1),
        "each handled once: {runs:?} {report:?}"
    );
    assert_eq!(report.acked, 12, "{report:?}");
}

#[tokio::test(start_paused = true)]
async fn a_lease_no_longer_renewed_runs_out_within_one_deadline() {
    // What happens to a crashed process's messages: renewal extends by one deadline at a time,
    // so once it stops (here at the lease's maximum) the message is back within one deadline.
    let broker = MemoryBroker::new();
    let deadline = Duration::from_secs(2);
    let max = Duration::from_secs(5);
    let options = SubscribeOptions::new("g").ack_deadline(deadline);
    let handled_at: Arc<Mutex<Vec<tokio::time::Instant>>> = Arc::default();
    let h = handled_at.clone();
    let handler = handler_fn(move |_msg: Incoming| {
        let h = h.clone();
        async move {
            h.lock().unwrap().push(tokio::time::Instant::now());
            std::future::pending::<Result<(), HandlerError>>().await
        }
    });
    let consumer = |handler| {
        Consumer::builder(
            broker.subscriber(),
            publisher(&broker),
            "orders",
            options.clone(),
        )
        .lease(LeasePolicy {
            max,
            ..LeasePolicy::default()
        })
        .build(handler)
    };
    let a = tokio::spawn(consumer(handler.clone()).run(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    publish_order(&broker, 1).await;
    until(|| handled_at.lock().unwrap().len() == 1).await;
    let b = tokio::spawn(consumer(handler).run(std::future::pending()));
    until(|| handled_at.lock().unwrap().len() == 2).await;
    let times = handled_at.lock().unwrap().clone();
    let gap = times[1] - times[0];
    assert!(
        gap >= max && gap <= max + deadline,
        "handed out again {gap:?} after the first delivery (renewed for {max:?}, deadline {deadline:?})"
    );
    a.abort();
    b.abort();
}

#[tokio::test(start_paused = true)]
async fn a_half_open_trial_spent_on_an_undecodable_message_is_given_back() {
    // The trial delivery after the cooldown is not a CloudEvent: it is dead-lettered without
    // running the handler, which says nothing about the downstream; another trial follows.
    let broker = MemoryBroker::new();
    let healthy = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let (consumer, handle) = breaker_consumer(&broker, &healthy, None, 2, Duration::from_secs(10));
    let run = tokio::spawn(consumer.run(std::future::pending()));
    tokio::time::sleep(Duration::from_millis(10)).await;
    publish_n(&broker, 0..2).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(handle.status().circuit, Some("open"));
    healthy.store(true, std::sync::atomic::Ordering::SeqCst);
    broker.publish_raw(
        "orders",
        messaging_core::RawMessage {
            body: b"not a cloudevent".to_vec(),
            ..Default::default()
        },
    );
    tokio::time::sleep(Duration::from_millis(10)).await;
    publish_n(&broker, 2..3).await;
    assert_eq!(
        broker.group_stats("orders", "g").map(|s| s.ready),
        Some(2),
        "the open circuit took nothing in, also not while the loop waited for a permit"
    );
    tokio::time::sleep(Duration::from_secs(15)).await;
    assert_eq!(
        handle.status().circuit,
        Some("closed"),
        "a second trial, on a real message, closed the circuit: {:?}",
        handle.status()
    );
    until(|| {
        broker
            .group_stats("orders", "g")
            .is_some_and(|s| s.total() == 0)
    })
    .await;
    run.abort();
}
