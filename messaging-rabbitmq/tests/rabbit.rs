//! RabbitMQ-specific behaviour on the real broker: mandatory publishes, and a connection the
//! broker drops mid-stream.

use std::process::Command;
use std::time::Duration;

use messaging_core::{
    AckErrorKind, AttributesReader, Delivery, EventBuilder, PublishErrorKind, Publisher,
    SubscribeOptions, Subscriber, Subscription,
};
use messaging_rabbitmq::{RabbitBroker, RabbitConfig};

mod common;
use common::{config, connect};

fn unique(what: &str) -> String {
    common::unique("rt", what)
}

#[tokio::test]
async fn mandatory_publish_without_a_group_is_unroutable() {
    let broker = connect(RabbitConfig {
        mandatory: true,
        ..config()
    })
    .await;
    let topic = unique("nobody");
    let e = EventBuilder::new("t", "t").build().unwrap();
    let err = broker
        .publisher()
        .publish(&topic, e.clone())
        .await
        .unwrap_err();
    assert_eq!(err.kind(), PublishErrorKind::Unroutable, "{err}");
    assert!(!err.is_transient());
    // Once a group exists the same publish goes through.
    let _sub = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("g"))
        .await
        .unwrap();
    broker.publisher().publish(&topic, e).await.unwrap();
}

/// `rabbitmqctl` bounded to 60 s, so a wedged node fails the test instead of hanging it.
fn rabbitmqctl() -> Command {
    let mut c = Command::new("timeout");
    c.args(["60", "rabbitmqctl"]);
    c
}

/// Closes every connection with `name` from the broker's side, as a network failure would.
fn drop_connections(name: &str) {
    let out = rabbitmqctl()
        .args(["-q", "list_connections", "pid", "client_properties"])
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl list_connections failed or timed out: {}",
        out.status
    );
    let listing = String::from_utf8_lossy(&out.stdout);
    let mut closed = 0;
    for line in listing.lines().filter(|l| l.contains(name)) {
        let pid = line.split_whitespace().next().unwrap_or_default();
        let status = rabbitmqctl()
            .args(["-q", "close_connection", pid, "test drops the connection"])
            .status()
            .expect("rabbitmqctl runs");
        assert!(status.success(), "rabbitmqctl close_connection: {status}");
        closed += 1;
    }
    assert!(closed > 0, "no connection named {name}: {listing}");
}

#[tokio::test]
async fn dropped_connection_fails_stale_acks_and_loses_nothing() {
    let name = unique("conn");
    let broker = connect(RabbitConfig {
        connection_name: name.clone(),
        ..config()
    })
    .await;
    let topic = unique("drop");
    let mut sub = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("g"))
        .await
        .unwrap();
    let e = EventBuilder::new("t", "t").id("kept").build().unwrap();
    broker.publisher().publish(&topic, e).await.unwrap();
    let held = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .unwrap()
        .unwrap();
    drop_connections(&name);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let err = held
        .ack()
        .await
        .expect_err("the channel died with the connection");
    assert_eq!(err.error.kind(), AckErrorKind::Closed, "{}", err.error);

    // A fresh connection gets the unacked message again.
    let again = connect(config()).await;
    let mut sub2 = again
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("g"))
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), sub2.recv())
        .await
        .expect("redelivered")
        .unwrap();
    assert_eq!(d.event().unwrap().id(), "kept");
    assert!(d.attempt() >= 2, "the broker counted the first delivery");
    d.ack().await.unwrap();
}

#[tokio::test]
async fn the_same_broker_recovers_after_a_dropped_connection() {
    let name = unique("recover");
    let broker = connect(RabbitConfig {
        connection_name: name.clone(),
        ..config()
    })
    .await;
    let topic = unique("recover");
    let mut sub = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("g"))
        .await
        .unwrap();
    broker
        .publisher()
        .publish(
            &topic,
            EventBuilder::new("t", "t").id("before").build().unwrap(),
        )
        .await
        .unwrap();
    let held = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .unwrap()
        .unwrap();
    drop_connections(&name);
    drop(held);
    // Publishing works again once the connection has recovered.
    let mut published = false;
    for _ in 0..40 {
        let e = EventBuilder::new("t", "t").id("after").build().unwrap();
        match broker.publisher().publish(&topic, e).await {
            Ok(_) => {
                published = true;
                break;
            }
            Err(e) => {
                assert!(e.is_transient(), "a dropped connection is transient: {e}");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    assert!(published, "publisher did not recover");
    // The subscription resumes: both messages arrive (the first one redelivered).
    let mut ids = Vec::new();
    while ids.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .expect("consuming resumed")
        {
            Ok(d) => {
                ids.push(d.event().unwrap().id().to_owned());
                d.ack().await.unwrap();
            }
            Err(e) => {
                assert!(
                    e.is_transient() || e.kind() == messaging_core::ReceiveErrorKind::Closed,
                    "{e}"
                );
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
    ids.sort();
    assert_eq!(ids, ["after", "before"]);
}

/// Declares `queue` durable with arguments the adapter never uses, so the adapter's own
/// declaration of the same name fails with PRECONDITION_FAILED.
async fn declare_conflicting_queue(broker: &RabbitBroker, queue: &str) {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{AMQPValue, FieldTable, ShortString};
    let ch = broker.connection().create_channel().await.unwrap();
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongLongInt(120_000));
    ch.queue_declare(
        ShortString::from(queue),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .unwrap();
    let _ = ch.close(200, ShortString::from("declared")).await;
}

#[tokio::test]
async fn failed_delayed_nack_requeues_at_once() {
    let broker = connect(config()).await;
    let topic = unique("delayfail");
    let mut sub = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("g"))
        .await
        .unwrap();
    // The delay queue for 60 s exists with other arguments: the re-publish cannot happen.
    declare_conflicting_queue(&broker, &format!("{topic}.g~delay-60000ms")).await;
    let e = EventBuilder::new("t", "t").id("stuck?").build().unwrap();
    broker.publisher().publish(&topic, e).await.unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("delivered")
        .unwrap();
    d.nack(Some(Duration::from_secs(60)))
        .await
        .map_err(|e| e.error)
        .expect("falls back to an immediate requeue");
    let again = tokio::time::timeout(Duration::from_secs(5), sub.recv())
        .await
        .expect("redelivered at once, not held unacked until the channel closes")
        .unwrap();
    assert_eq!(again.event().unwrap().id(), "stuck?");
    assert_eq!(again.attempt(), 2);
    again.ack().await.unwrap();
}

/// Whether `queue` exists (a passive declare on a channel of its own).
async fn queue_exists(broker: &RabbitBroker, queue: &str) -> bool {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{FieldTable, ShortString};
    let ch = broker.connection().create_channel().await.unwrap();
    let found = ch
        .queue_declare(
            ShortString::from(queue),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await;
    match found {
        Ok(_) => {
            let _ = ch.close(200, ShortString::from("checked")).await;
            true
        }
        Err(e) if e.is_amqp_soft_error() => false,
        Err(e) => panic!("checking queue {queue}: {e}"),
    }
}

#[tokio::test]
async fn jittered_delays_share_one_delay_queue() {
    let broker = connect(config()).await;
    let topic = unique("jitter");
    let mut sub = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("g"))
        .await
        .unwrap();
    for id in ["a", "b"] {
        let e = EventBuilder::new("t", "t").id(id).build().unwrap();
        broker.publisher().publish(&topic, e).await.unwrap();
    }
    for delay_ms in [1001, 1150] {
        let d = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .expect("delivered")
            .unwrap();
        d.nack(Some(Duration::from_millis(delay_ms)))
            .await
            .map_err(|e| e.error)
            .unwrap();
    }
    // Both wait in the 1.2 s queue (the group's queue name plus `~delay-<ms>ms`).
    let shared = queue_exists(&broker, &format!("{topic}.g~delay-1200ms")).await;
    assert!(shared, "the 1.2 s delay queue exists");
    for own in [1001, 1150] {
        let name = format!("{topic}.g~delay-{own}ms");
        assert!(
            !queue_exists(&broker, &name).await,
            "no queue of its own for {own} ms"
        );
    }
    let mut ids = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .expect("redelivered after the delay")
            .unwrap();
        assert_eq!(d.attempt(), 2);
        ids.push(d.event().unwrap().id().to_owned());
        d.ack().await.unwrap();
    }
    ids.sort();
    assert_eq!(ids, ["a", "b"]);
}

#[tokio::test]
async fn unconfirmed_delayed_nack_gives_up_after_the_confirm_timeout() {
    // A confirm timeout of zero: the delay copy's confirm is checked once, at once. The broker
    // usually has not confirmed yet — the fallback (an immediate requeue) is what this test is
    // about — but a confirm already on hand is taken, and then the copy comes after its
    // delay. So each round accepts either outcome, checks the message comes back on the
    // path taken, and the fallback must be seen in one of ten rounds.
    let impatient = connect(RabbitConfig {
        confirm_timeout: Duration::ZERO,
        ..config()
    })
    .await;
    let publisher = connect(config()).await;
    let delay = Duration::from_secs(2);
    let mut fallbacks = 0;
    for round in 0..10 {
        let topic = unique("confirmwait");
        let mut sub = impatient
            .subscriber()
            .subscribe(&topic, SubscribeOptions::new("g"))
            .await
            .unwrap();
        let e = EventBuilder::new("t", "t").id("x").build().unwrap();
        publisher.publisher().publish(&topic, e).await.unwrap();
        let d = tokio::time::timeout(Duration::from_secs(10), sub.recv())
            .await
            .expect("delivered")
            .unwrap();
        let nacked_at = std::time::Instant::now();
        tokio::time::timeout(Duration::from_secs(5), d.nack(Some(delay)))
            .await
            .expect("the delayed nack is bounded by confirm_timeout")
            .map_err(|e| e.error)
            .expect("delayed, or falls back to an immediate requeue");
        let again = tokio::time::timeout(delay + Duration::from_secs(10), sub.recv())
            .await
            .unwrap_or_else(|_| panic!("round {round}: the message never came back"))
            .unwrap();
        assert_eq!(again.event().unwrap().id(), "x");
        if nacked_at.elapsed() < delay {
            fallbacks += 1; // not confirmed in time: requeued at once
        }
        again.ack().await.unwrap();
        let _ = sub.close().await;
        if fallbacks > 0 {
            break;
        }
    }
    assert!(
        fallbacks > 0,
        "no round took the immediate-requeue fallback"
    );
}

#[tokio::test]
async fn starting_a_consumer_leaves_waiting_dead_letters_untouched() {
    use std::sync::Arc;

    use messaging_core::DynPublisher;
    use messaging_core::dead_letter::DEAD_LETTER_GROUP;
    use messaging_core::handler::{HandlerError, Incoming, handler_fn};
    use messaging_core::runtime::Consumer;

    let broker = connect(config()).await;
    let topic = unique("dlqdeclare");
    let dlq = format!("{topic}.dlq");
    // A dead letter is already waiting when the consumer starts.
    broker
        .subscriber()
        .declare(&dlq, SubscribeOptions::new(DEAD_LETTER_GROUP))
        .await
        .unwrap();
    let e = EventBuilder::new("t", "t").id("dead").build().unwrap();
    broker.publisher().publish(&dlq, e).await.unwrap();
    let publisher: Arc<dyn DynPublisher> = Arc::new(broker.publisher());
    for _ in 0..2 {
        let consumer = Consumer::builder(
            broker.subscriber(),
            publisher.clone(),
            &topic,
            SubscribeOptions::new("g"),
        )
        .build(handler_fn(|_msg: Incoming| async {
            Ok::<(), HandlerError>(())
        }));
        consumer.run(async {}).await.unwrap();
    }
    let mut sub = broker
        .subscriber()
        .subscribe(&dlq, SubscribeOptions::new(DEAD_LETTER_GROUP))
        .await
        .unwrap();
    let d = tokio::time::timeout(Duration::from_secs(10), sub.recv())
        .await
        .expect("the dead letter is still there")
        .unwrap();
    assert_eq!(d.event().unwrap().id(), "dead");
    assert_eq!(
        d.attempt(),
        1,
        "declaring the dead-letter group did not hand the dead letter out"
    );
    d.ack().await.unwrap();
}

/// Request-reply over direct reply-to: the responder (the core runtime and `reply`, nothing
/// RabbitMQ-specific) sees the broker-generated `amq.rabbitmq.reply-to.…` address and answers
/// through it; an unanswered request times out; late replies do not disturb later requests.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn direct_reply_to_round_trip_without_a_reply_queue() {
    use std::sync::{Arc, Mutex};

    use messaging_core::handler::{HandlerError, Incoming, handler_fn};
    use messaging_core::request::{RequestError, reply, reply_to};
    use messaging_core::runtime::Consumer;
    use messaging_core::{DynPublisher, EventExt};

    let broker = connect(config()).await;
    let topic = unique("prices");
    broker
        .subscriber()
        .declare(&topic, SubscribeOptions::new("pricing"))
        .await
        .unwrap();
    let publisher: Arc<dyn DynPublisher> = Arc::new(broker.publisher());
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let (out, addresses) = (publisher.clone(), seen.clone());
    let server = Consumer::builder(
        broker.subscriber(),
        publisher.clone(),
        &topic,
        SubscribeOptions::new("pricing"),
    )
    .build(handler_fn(move |msg: Incoming| {
        let (out, addresses) = (out.clone(), addresses.clone());
        async move {
            addresses
                .lock()
                .unwrap()
                .push(reply_to(msg.event()).unwrap_or_default().to_owned());
            let sku: String = msg.data()?;
            reply(
                &*out,
                msg.event(),
                EventBuilder::new("pricing", "price.quoted").json(&format!("{sku}: 99.99")),
            )
            .await
            .map_err(HandlerError::transient)?;
            Ok::<(), HandlerError>(())
        }
    }));
    let (stop, mut stopped) = tokio::sync::watch::channel(false);
    let server = tokio::spawn(server.run(async move {
        let _ = stopped.wait_for(|s| *s).await;
    }));

    let requester = broker.requester().await.unwrap();
    for sku in ["ORD-1", "ORD-2"] {
        let question = EventBuilder::new("shop", "price.requested")
            .json(&sku)
            .build()
            .unwrap();
        let id = question.id().to_owned();
        let answer = requester
            .request(&topic, question, Duration::from_secs(30))
            .await
            .unwrap();
        assert_eq!(answer.causation_id(), Some(id.as_str()));
        assert_eq!(
            answer.data_json::<String>().unwrap(),
            format!("{sku}: 99.99")
        );
    }
    for address in seen.lock().unwrap().iter() {
        assert!(
            address.starts_with("amq.rabbitmq.reply-to."),
            "the responder got the broker's direct reply-to address, not {address:?}"
        );
    }
    // Two requests at once that share an id (a retried command, say) each get their own
    // reply: the direct reply-to requester kept one waiter per id, so the second replaced the
    // first, which failed at once with `Disconnected`.
    let twin = |sku: &str| {
        EventBuilder::new("shop", "price.requested")
            .id("same-id")
            .json(&sku)
            .build()
            .unwrap()
    };
    let (a, b) = tokio::join!(
        requester.request(&topic, twin("ORD-A"), Duration::from_secs(30)),
        requester.request(&topic, twin("ORD-B"), Duration::from_secs(30)),
    );
    let (a, b) = (
        a.expect("the first twin's reply"),
        b.expect("the second twin's reply"),
    );
    assert_eq!(a.data_json::<String>().unwrap(), "ORD-A: 99.99");
    assert_eq!(b.data_json::<String>().unwrap(), "ORD-B: 99.99");
    let nobody = unique("nobody");
    let err = requester
        .request(
            &nobody,
            EventBuilder::new("shop", "stock.requested")
                .build()
                .unwrap(),
            Duration::from_millis(300),
        )
        .await
        .unwrap_err();
    assert!(matches!(err, RequestError::Timeout(_)), "{err}");
    assert!(err.is_transient());
    stop.send_replace(true);
    server.await.unwrap().unwrap();
}

/// A batch that fails before anything is sent (here the exchange cannot be declared: names
/// beginning `amq.` are the broker's) fails every event with the cause, said once — the
/// adapters used to wrap the message in its own kind again ("broker rejected the message:
/// broker rejected the message: …").
#[tokio::test]
async fn a_batch_that_cannot_start_fails_every_event_with_the_cause_said_once() {
    let broker = connect(config()).await;
    let topic = format!("amq.{}", unique("reserved"));
    let events: Vec<_> = (0..3)
        .map(|n| {
            EventBuilder::new("t", "t")
                .id(format!("e{n}"))
                .build()
                .unwrap()
        })
        .collect();
    let err = broker
        .publisher()
        .publish_batch(&topic, events)
        .await
        .unwrap_err();
    assert!(err.accepted.is_empty());
    assert_eq!(err.failed.len(), 3, "{err}");
    for (i, (index, event, e)) in err.failed.iter().enumerate() {
        assert_eq!((*index, event.id()), (i, format!("e{i}").as_str()));
        let kind = e.kind().to_string();
        let message = e.to_string();
        assert_eq!(
            message.matches(&kind).count(),
            1,
            "the kind is said once: {message}"
        );
        assert!(message.len() > kind.len(), "the cause is kept: {message}");
    }
}
