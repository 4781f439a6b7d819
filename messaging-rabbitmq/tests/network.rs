//! Network faults between the adapter and the real RabbitMQ node, through a proxy
//! (`messaging_testkit::netfault`): while the link is stalled (a partition: nothing gets
//! through, nothing is closed) every call of the adapter returns within its bound with a
//! transient error instead of hanging, and once the link heals the same broker handle
//! publishes and consumes again.

use std::time::{Duration, Instant};

use messaging_core::{
    AttributesReader as _, Delivery as _, EventBuilder, Publisher, SubscribeOptions, Subscriber,
    Subscription,
};
use messaging_rabbitmq::{RabbitBroker, RabbitConfig};
use messaging_testkit::netfault::TcpProxy;

const RABBITMQ: &str = "127.0.0.1:5672";

fn event(id: &str) -> messaging_core::Event {
    EventBuilder::new("/test", "net.test")
        .id(id)
        .build()
        .expect("event")
}

/// Every call is bounded by the operation timeout (or the confirm timeout), plus slack for a
/// loaded machine.
const OPERATION: Duration = Duration::from_secs(3);

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    let bound = OPERATION * 2 + Duration::from_secs(5);
    let started = Instant::now();
    let out = tokio::time::timeout(bound, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not return within {bound:?} on a stalled link"));
    eprintln!("{what}: returned after {:?}", started.elapsed());
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_link_fails_every_call_in_bounded_time_and_heals() {
    let proxy = TcpProxy::start(RABBITMQ.parse().unwrap()).expect("proxy");
    let config = RabbitConfig {
        confirm_timeout: OPERATION,
        operation_timeout: OPERATION,
        queue_expires: Some(Duration::from_secs(120)),
        // Heartbeats every 2 s: a dead link is noticed within seconds.
        ..RabbitConfig::new(format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f?heartbeat=4",
            proxy.port()
        ))
    };
    let broker = RabbitBroker::connect(config).await.unwrap_or_else(|e| {
        panic!("RabbitMQ is not reachable at {RABBITMQ} (run scripts/brokers/rabbitmq.sh): {e}")
    });
    let topic = format!("net-{}", uuid::Uuid::new_v4().simple());
    let options = SubscribeOptions::new("g");
    let mut sub = broker
        .subscriber()
        .subscribe(&topic, options.clone())
        .await
        .expect("subscribe");
    broker
        .publisher()
        .publish(&topic, event("before"))
        .await
        .expect("publish");
    let held = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("delivered")
        .expect("recv");

    proxy.stall();
    let stalled = Instant::now();
    let published = within(
        "publish",
        broker.publisher().publish(&topic, event("during")),
    )
    .await;
    let e = published.expect_err("nothing is confirmed through a stalled link");
    assert!(e.is_transient(), "a stalled link is transient: {e}");
    let other = format!("{topic}-other");
    let subscribed = within(
        "subscribe",
        broker.subscriber().subscribe(&other, options.clone()),
    )
    .await;
    let e = subscribed.expect_err("no channel opens through a stalled link");
    assert!(e.is_transient(), "a stalled link is transient: {e}");
    // The held delivery's ack cannot reach the broker; it returns all the same.
    let _ = within("ack", held.ack()).await;
    let _ = within("close", sub.close()).await;

    // Long enough for both ends to miss their heartbeats: the node drops the connection and
    // requeues what it had handed out.
    tokio::time::sleep_until((stalled + Duration::from_secs(15)).into()).await;
    proxy.heal();
    let healed = Instant::now();
    let deadline = healed + Duration::from_secs(60);
    loop {
        match broker.publisher().publish(&topic, event("after")).await {
            Ok(_) => break,
            Err(e) => {
                assert!(e.is_transient(), "{e}");
                assert!(
                    Instant::now() < deadline,
                    "publishing did not resume within 60 s of the link healing: {e}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    eprintln!(
        "publishing resumed {:?} after the link healed",
        healed.elapsed()
    );
    // The same broker handle subscribes again and gets everything it did not ack.
    let mut seen = Vec::new();
    while !seen.iter().any(|id| id == "after") {
        assert!(
            Instant::now() < deadline,
            "consuming did not resume within 60 s of the link healing: {seen:?}"
        );
        let Ok(mut sub) = broker.subscriber().subscribe(&topic, options.clone()).await else {
            tokio::time::sleep(Duration::from_millis(250)).await;
            continue;
        };
        while let Ok(Ok(d)) = tokio::time::timeout(Duration::from_secs(3), sub.recv()).await {
            seen.push(d.event().expect("event").id().to_owned());
            let _ = d.ack().await;
        }
        let _ = sub.close().await;
    }
    assert!(
        seen.iter().any(|id| id == "before"),
        "the delivery whose ack never reached the broker comes again: {seen:?}"
    );
}

/// A direct reply-to requester made before its connection was lost works again once the
/// link is back: its channel moves to the adapter's new connection. (Before, every request
/// after a loss failed with `Closed`, for as long as the requester lived.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_requester_works_again_after_its_connection_is_replaced() {
    use messaging_core::handler::{HandlerError, Incoming, handler_fn};
    use messaging_core::request::reply;
    use messaging_core::runtime::Consumer;
    use messaging_core::{DynPublisher, EventExt as _};
    use std::sync::Arc;

    let proxy = TcpProxy::start(RABBITMQ.parse().unwrap()).expect("proxy");
    let through_proxy = RabbitConfig {
        confirm_timeout: OPERATION,
        operation_timeout: OPERATION,
        ..RabbitConfig::new(format!(
            "amqp://guest:guest@127.0.0.1:{}/%2f?heartbeat=4",
            proxy.port()
        ))
    };
    let requesting = RabbitBroker::connect(through_proxy)
        .await
        .unwrap_or_else(|e| {
            panic!("RabbitMQ is not reachable at {RABBITMQ} (run scripts/brokers/rabbitmq.sh): {e}")
        });
    // The responder talks to the node directly: only the requester's link fails.
    let responding = RabbitBroker::connect(RabbitConfig {
        queue_expires: Some(Duration::from_secs(120)),
        ..RabbitConfig::new(format!("amqp://guest:guest@{RABBITMQ}/%2f"))
    })
    .await
    .expect("connect");
    let topic = format!("net-req-{}", uuid::Uuid::new_v4().simple());
    let group = SubscribeOptions::new("pricing");
    responding
        .subscriber()
        .declare(&topic, group.clone())
        .await
        .expect("declare");
    let out: Arc<dyn DynPublisher> = Arc::new(responding.publisher());
    let answers = out.clone();
    let server = Consumer::builder(responding.subscriber(), out, &topic, group).build(handler_fn(
        move |msg: Incoming| {
            let out = answers.clone();
            async move {
                reply(
                    &*out,
                    msg.event(),
                    EventBuilder::new("pricing", "price.quoted").json(&"9.99"),
                )
                .await
                .map_err(HandlerError::transient)?;
                Ok::<(), HandlerError>(())
            }
        },
    ));
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(server.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));

    let requester = requesting.requester().await.expect("requester");
    let ask = || event(&uuid::Uuid::new_v4().to_string());
    let first = requester
        .request(&topic, ask(), Duration::from_secs(20))
        .await
        .expect("a reply before the fault");
    assert_eq!(first.data_json::<String>().unwrap(), "9.99");

    // Every connection through the proxy is reset, and new ones are refused for a while.
    proxy.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    proxy.heal();
    let healed = Instant::now();
    let deadline = healed + Duration::from_secs(60);
    loop {
        match requester
            .request(&topic, ask(), Duration::from_secs(5))
            .await
        {
            Ok(answer) => {
                assert_eq!(answer.data_json::<String>().unwrap(), "9.99");
                break;
            }
            Err(e) => {
                assert!(e.is_transient(), "a lost connection is transient: {e}");
                assert!(
                    Instant::now() < deadline,
                    "the requester did not answer again within 60 s of the link healing: {e}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    eprintln!(
        "the requester answered again {:?} after the link healed",
        healed.elapsed()
    );
    stop.send_replace(true);
    server.await.unwrap().unwrap();
}
