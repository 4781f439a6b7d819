//! What the adapter declares on the real RabbitMQ, and where messages go because of it: every
//! quorum queue dead-letters to its group's dead-letter topic under an explicit delivery limit
//! (RabbitMQ 4.x drops a message past its default limit of 20 when a queue has no dead-letter
//! exchange), the dead-letter queue itself never loops, queues declared by older versions are
//! still used, and names derived from a topic and a group never collide.

use std::process::Command;
use std::time::{Duration, Instant};

use lapin::options::{BasicConsumeOptions, BasicRejectOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use messaging_core::dead_letter::DEAD_LETTER_GROUP;
use messaging_core::{
    AttributesReader, Delivery, EventBuilder, Inspect, Publisher, SubscribeErrorKind,
    SubscribeOptions, Subscriber, Subscription,
};
use messaging_rabbitmq::{RabbitBroker, RabbitConfig};

mod common;
use common::{config, connect};
use serde_json::Value;

/// Every wait for a message is bounded by this.
const WAIT: Duration = Duration::from_secs(10);

fn unique(what: &str) -> String {
    common::unique("tp", what)
}

/// The arguments of `queue` as `rabbitmqctl list_queues` shows them (name → value), or `None`
/// if there is no such queue. Bounded to 60 s, so a wedged node fails the test.
fn queue_arguments(queue: &str) -> Option<serde_json::Map<String, Value>> {
    let out = Command::new("timeout")
        .args([
            "60",
            "rabbitmqctl",
            "-q",
            "list_queues",
            "name",
            "arguments",
        ])
        .args(["--formatter", "json"])
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl list_queues failed or timed out: {} {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let listing: Vec<Value> = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "rabbitmqctl output is not JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    });
    let q = listing.iter().find(|q| q["name"] == queue)?;
    // Each argument is [name, type, value].
    let args = q["arguments"].as_array().expect("arguments is a list");
    Some(
        args.iter()
            .map(|a| (a[0].as_str().unwrap().to_owned(), a[2].clone()))
            .collect(),
    )
}

async fn publish(broker: &RabbitBroker, topic: &str, id: &str) {
    let e = EventBuilder::new("t", "t").id(id).build().unwrap();
    broker.publisher().publish(topic, e).await.unwrap();
}

async fn recv<S: Subscription>(sub: &mut S, what: &str) -> S::Delivery {
    tokio::time::timeout(WAIT, sub.recv())
        .await
        .unwrap_or_else(|_| panic!("{what}: nothing within {WAIT:?}"))
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Asserts that nothing arrives on `sub` for `quiet`.
async fn nothing_more<S: Subscription>(sub: &mut S, quiet: Duration, what: &str) {
    if let Ok(got) = tokio::time::timeout(quiet, sub.recv()).await {
        let id = got
            .ok()
            .and_then(|d| d.event().ok().map(|e| e.id().to_owned()));
        panic!("{what}: unexpected delivery {id:?}");
    }
}

/// Declares `queue` durable with `args` on a channel of its own, as an older version of the
/// adapter (or another tool) would have.
async fn declare_raw(broker: &RabbitBroker, queue: &str, args: &[(&str, AMQPValue)]) {
    let ch = broker.connection().create_channel().await.unwrap();
    let mut table = FieldTable::default();
    for (k, v) in args {
        table.insert((*k).into(), v.clone());
    }
    ch.queue_declare(
        ShortString::from(queue),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        table,
    )
    .await
    .unwrap();
    let _ = ch.close(200, ShortString::from("declared")).await;
}

fn quorum() -> (&'static str, AMQPValue) {
    ("x-queue-type", AMQPValue::LongString("quorum".into()))
}

fn test_expiry() -> (&'static str, AMQPValue) {
    ("x-expires", AMQPValue::LongLongInt(120_000))
}

/// Item 3: a group without `max_deliveries` still gets a dead-letter exchange (its dead-letter
/// topic) and an explicit delivery limit (the default, 20 deliveries); the dead-letter topic's
/// own queue gets an explicit limit that peeks never exhaust and no dead-letter exchange, so it
/// cannot loop into itself.
#[tokio::test]
async fn every_quorum_queue_dead_letters_under_an_explicit_limit() {
    let broker = connect(config()).await;
    let topic = unique("args");
    let _sub = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("g"))
        .await
        .unwrap();
    let group = queue_arguments(&format!("{topic}.g")).expect("the group queue exists");
    assert_eq!(group["x-queue-type"], "quorum", "{group:?}");
    assert_eq!(
        group.get("x-dead-letter-exchange"),
        Some(&Value::from(format!("{topic}.dlq"))),
        "dead-letters to the group's dead-letter topic: {group:?}"
    );
    assert_eq!(
        group.get("x-delivery-limit"),
        Some(&Value::from(19)),
        "20 deliveries by default (RabbitMQ counts redeliveries): {group:?}"
    );

    let dlq = queue_arguments(&format!("{topic}.dlq.{DEAD_LETTER_GROUP}"))
        .expect("the dead-letter topic's queue is declared before the group's");
    assert_eq!(dlq["x-queue-type"], "quorum", "{dlq:?}");
    assert_eq!(
        dlq.get("x-delivery-limit"),
        Some(&Value::from(i64::from(i32::MAX))),
        "explicit, so RabbitMQ 4's default of 20 does not apply: {dlq:?}"
    );
    assert_eq!(
        dlq.get("x-dead-letter-exchange"),
        None,
        "the dead-letter queue never dead-letters (into itself or anywhere): {dlq:?}"
    );
}

/// Item 3, the routing: a message requeued until the limit is moved to the dead-letter topic,
/// not redelivered forever (RabbitMQ 3.x) nor dropped (4.x).
#[tokio::test]
async fn requeued_past_the_default_limit_reaches_the_dead_letter_topic() {
    let broker = connect(config()).await;
    let topic = unique("limit");
    let mut sub = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("g"))
        .await
        .unwrap();
    publish(&broker, &topic, "poison").await;
    for n in 1..=20 {
        let d = recv(&mut sub, &format!("delivery {n}")).await;
        assert_eq!(d.event().unwrap().id(), "poison");
        assert_eq!(d.attempt(), n);
        d.nack(None).await.map_err(|e| e.error).unwrap();
    }
    nothing_more(
        &mut sub,
        Duration::from_secs(1),
        "a 21st delivery past the limit",
    )
    .await;
    let mut dead = broker
        .subscriber()
        .subscribe(
            &format!("{topic}.dlq"),
            SubscribeOptions::new(DEAD_LETTER_GROUP),
        )
        .await
        .unwrap();
    let d = recv(&mut dead, "the dead letter").await;
    assert_eq!(d.event().unwrap().id(), "poison");
    d.ack().await.unwrap();
}

/// Item 3: a message rejected without requeue (by a tool, or an operator's client) reaches
/// the dead-letter topic instead of vanishing.
#[tokio::test]
async fn rejected_without_requeue_reaches_the_dead_letter_topic() {
    use futures_util::StreamExt;
    let broker = connect(config()).await;
    let topic = unique("reject");
    broker
        .subscriber()
        .declare(&topic, SubscribeOptions::new("g"))
        .await
        .unwrap();
    publish(&broker, &topic, "rejected").await;
    let ch = broker.connection().create_channel().await.unwrap();
    let mut raw = ch
        .basic_consume(
            ShortString::from(format!("{topic}.g").as_str()),
            ShortString::from(""),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let d = tokio::time::timeout(WAIT, raw.next())
        .await
        .expect("delivered")
        .expect("consumer open")
        .unwrap();
    d.acker
        .reject(BasicRejectOptions { requeue: false })
        .await
        .unwrap();
    let mut dead = broker
        .subscriber()
        .subscribe(
            &format!("{topic}.dlq"),
            SubscribeOptions::new(DEAD_LETTER_GROUP),
        )
        .await
        .unwrap();
    let d = recv(&mut dead, "the rejected message").await;
    assert_eq!(d.event().unwrap().id(), "rejected");
    d.ack().await.unwrap();
    let _ = ch.close(200, ShortString::from("done")).await;
}

/// Item 3: the limit of groups without `max_deliveries` is `RabbitConfig::max_deliveries`;
/// `SubscribeOptions::max_deliveries` still wins.
#[tokio::test]
async fn the_default_limit_is_configurable() {
    let broker = connect(RabbitConfig {
        max_deliveries: 3,
        ..config()
    })
    .await;
    let topic = unique("cfglimit");
    let mut sub = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("g"))
        .await
        .unwrap();
    let _explicit = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("h").max_deliveries(5))
        .await
        .unwrap();
    let g = queue_arguments(&format!("{topic}.g")).expect("group g");
    assert_eq!(g.get("x-delivery-limit"), Some(&Value::from(2)), "{g:?}");
    let h = queue_arguments(&format!("{topic}.h")).expect("group h");
    assert_eq!(h.get("x-delivery-limit"), Some(&Value::from(4)), "{h:?}");

    publish(&broker, &topic, "poison").await;
    for n in 1..=3 {
        let d = recv(&mut sub, &format!("delivery {n}")).await;
        d.nack(None).await.map_err(|e| e.error).unwrap();
    }
    nothing_more(&mut sub, Duration::from_secs(1), "a 4th delivery").await;
    let mut dead = broker
        .subscriber()
        .subscribe(
            &format!("{topic}.dlq"),
            SubscribeOptions::new(DEAD_LETTER_GROUP),
        )
        .await
        .unwrap();
    let d = recv(&mut dead, "the dead letter").await;
    assert_eq!(d.event().unwrap().id(), "poison");
    d.ack().await.unwrap();
}

/// Item 3: peeking at a dead letter (`dlq inspect`, `consume --peek` nack with requeue) many
/// times neither drops it nor moves it anywhere.
#[tokio::test]
async fn dead_letters_survive_repeated_peeks() {
    let broker = connect(config()).await;
    let dlq = format!("{}.dlq", unique("peek"));
    let mut dead = broker
        .subscriber()
        .subscribe(&dlq, SubscribeOptions::new(DEAD_LETTER_GROUP))
        .await
        .unwrap();
    publish(&broker, &dlq, "dead").await;
    for n in 1..=25 {
        let d = recv(&mut dead, &format!("peek {n}")).await;
        assert_eq!(d.event().unwrap().id(), "dead");
        d.nack(None).await.map_err(|e| e.error).unwrap();
    }
    let d = recv(&mut dead, "after 25 peeks").await;
    assert_eq!(d.event().unwrap().id(), "dead");
    assert_eq!(d.attempt(), 26);
    d.ack().await.unwrap();
}

/// Item 3, upgrades: queues an older version declared without a dead-letter exchange and
/// delivery limit are used as they are (RabbitMQ refuses to redeclare them with other
/// arguments: PRECONDITION_FAILED); the adapter logs how to add them by policy.
#[tokio::test]
async fn queues_declared_by_an_older_version_are_still_used() {
    let broker = connect(config()).await;
    let topic = unique("legacy");
    declare_raw(&broker, &format!("{topic}.g"), &[quorum(), test_expiry()]).await;
    declare_raw(
        &broker,
        &format!("{topic}.dlq.{DEAD_LETTER_GROUP}"),
        &[quorum(), test_expiry()],
    )
    .await;
    broker
        .subscriber()
        .declare(&topic, SubscribeOptions::new("g"))
        .await
        .expect("declare accepts the older queue");
    let mut sub = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("g"))
        .await
        .expect("subscribe accepts the older queue");
    publish(&broker, &topic, "still-flows").await;
    let d = recv(&mut sub, "through the older queue").await;
    assert_eq!(d.event().unwrap().id(), "still-flows");
    d.ack().await.unwrap();
    let g = queue_arguments(&format!("{topic}.g")).expect("group queue");
    assert_eq!(
        g.get("x-dead-letter-exchange"),
        None,
        "left as it was: {g:?}"
    );
}

/// A queue that differs in what the group asks for (here: classic instead of quorum) is still
/// refused, not silently used.
#[tokio::test]
async fn a_queue_of_another_kind_is_still_refused() {
    let broker = connect(config()).await;
    let topic = unique("conflict");
    declare_raw(
        &broker,
        &format!("{topic}.g"),
        &[
            ("x-queue-type", AMQPValue::LongString("classic".into())),
            test_expiry(),
        ],
    )
    .await;
    let err = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("g"))
        .await
        .expect_err("a classic queue cannot serve a quorum group");
    assert_eq!(err.kind(), SubscribeErrorKind::Rejected, "{err}");
}

/// Publishes three messages to `topic`: `mine` (group `group`) gets them all, `theirs` none.
async fn only_mine<S: Subscription>(
    broker: &RabbitBroker,
    topic: &str,
    group: &str,
    mine: &mut S,
    theirs: &mut S,
) {
    for n in 0..3 {
        publish(broker, topic, &format!("{group}-{n}")).await;
    }
    for n in 0..3 {
        let d = recv(mine, &format!("group {group}, message {n}")).await;
        assert_eq!(d.event().unwrap().id(), format!("{group}-{n}"));
        d.ack().await.unwrap();
    }
    let what = format!("the other group, {group}'s messages");
    nothing_more(theirs, Duration::from_secs(1), &what).await;
}

/// Item 10: (topic `a.b`, group `c`) and (topic `a`, group `b.c`) have queues of their own.
#[tokio::test]
async fn dotted_groups_do_not_share_a_queue() {
    let broker = connect(config()).await;
    let base = unique("names");
    let (t1, t2) = (format!("{base}.a.b"), format!("{base}.a"));
    let mut s1 = broker
        .subscriber()
        .subscribe(&t1, SubscribeOptions::new("c"))
        .await
        .unwrap();
    let mut s2 = broker
        .subscriber()
        .subscribe(&t2, SubscribeOptions::new("b.c"))
        .await
        .unwrap();
    // Each group gets all of its own topic's messages and none of the other's (a shared
    // queue would hand them round-robin to both consumers).
    only_mine(&broker, &t1, "c", &mut s1, &mut s2).await;
    only_mine(&broker, &t2, "b.c", &mut s2, &mut s1).await;
    // The unambiguous pair keeps the plain name existing deployments have.
    assert!(queue_arguments(&format!("{t1}.c")).is_some());
}

/// Item 10: a delay queue's name is never a group queue's name — the delay queue of
/// (topic `T`, group `c`) used to be `T.c.delay.1000`, the queue of (topic `T.c.delay`, group
/// `1000`).
#[tokio::test]
async fn delay_queues_never_take_a_group_queue_name() {
    let broker = connect(config()).await;
    let topic = unique("delayname");
    let mut other = broker
        .subscriber()
        .subscribe(&format!("{topic}.c.delay"), SubscribeOptions::new("1000"))
        .await
        .unwrap();
    let mut sub = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("c"))
        .await
        .unwrap();
    publish(&broker, &topic, "later").await;
    let d = recv(&mut sub, "first delivery").await;
    let nacked = Instant::now();
    d.nack(Some(Duration::from_millis(1000)))
        .await
        .map_err(|e| e.error)
        .unwrap();
    let again = recv(&mut sub, "after the delay").await;
    let waited = nacked.elapsed();
    assert_eq!(again.event().unwrap().id(), "later");
    assert!(
        waited >= Duration::from_millis(900),
        "came back after {waited:?}: the delay queue could not be declared"
    );
    again.ack().await.unwrap();
    nothing_more(&mut other, Duration::from_millis(500), "the other group").await;
    let delay = queue_arguments(&format!("{topic}.c~delay-1000ms")).expect("the delay queue");
    assert_eq!(delay["x-queue-type"], "classic", "{delay:?}");
    assert_eq!(delay["x-dead-letter-routing-key"], format!("{topic}.c"));
}

/// What an earlier version declared for `group` on `topic`: the topic's fanout exchange and
/// the queue under the plain join `<topic>.<group>`, bound to it. Returns the queue's name.
async fn old_style_queue(broker: &RabbitBroker, topic: &str, group: &str) -> String {
    let queue = format!("{topic}.{group}");
    let ch = broker.connection().create_channel().await.unwrap();
    ch.exchange_declare(
        ShortString::from(topic),
        lapin::ExchangeKind::Fanout,
        lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let _ = ch.close(200, ShortString::from("declared")).await;
    declare_raw(broker, &queue, &[quorum(), test_expiry()]).await;
    let ch = broker.connection().create_channel().await.unwrap();
    ch.queue_bind(
        ShortString::from(queue.as_str()),
        ShortString::from(topic),
        ShortString::from(""),
        lapin::options::QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    let _ = ch.close(200, ShortString::from("bound")).await;
    queue
}

/// Item 10, upgrades: group `com.acme.billing` had the queue `<topic>.com.acme.billing`
/// under earlier versions. A message published before the upgrade waits there; the upgraded
/// group keeps that queue (no second queue bound to the topic), so the message is delivered,
/// and so is every later one, once.
#[tokio::test]
async fn a_dotted_groups_earlier_queue_is_kept_and_its_messages_delivered() {
    let broker = connect(config()).await;
    let topic = unique("keep");
    let group = "com.acme.billing";
    let legacy = old_style_queue(&broker, &topic, group).await;
    publish(&broker, &topic, "before-upgrade").await;
    let mut sub = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new(group))
        .await
        .unwrap();
    let d = recv(&mut sub, "the message waiting in the earlier queue").await;
    assert_eq!(d.event().unwrap().id(), "before-upgrade");
    d.ack().await.unwrap();
    publish(&broker, &topic, "after-upgrade").await;
    let d = recv(&mut sub, "a message after the upgrade").await;
    assert_eq!(d.event().unwrap().id(), "after-upgrade");
    d.ack().await.unwrap();
    nothing_more(&mut sub, Duration::from_secs(1), "after the upgrade").await;
    assert_eq!(
        broker.depth(&topic, group).await.unwrap(),
        Some(0),
        "depth reads {legacy}"
    );
    // The only queue of this topic's groups is the earlier one.
    let out = Command::new("timeout")
        .args(["60", "rabbitmqctl", "-q", "list_queues", "name"])
        .output()
        .expect("rabbitmqctl runs");
    let names = String::from_utf8_lossy(&out.stdout);
    let mine: Vec<&str> = names
        .lines()
        .map(str::trim)
        .filter(|n| n.starts_with(&format!("{topic}.com")))
        .collect();
    assert_eq!(mine, vec![legacy.as_str()], "queues of {topic}'s group");
}

/// Item 10, upgrades: the kept queue `<t>.com.acme.billing` is also the plain name of
/// (topic `<t>.com.acme`, group `billing`). When this process subscribes both, they still
/// get a queue each and each only its own topic's messages, whichever comes first.
#[tokio::test]
async fn a_kept_queue_is_not_shared_with_the_group_now_named_like_it() {
    let broker = connect(config()).await;
    let topic = unique("kept");
    let legacy = old_style_queue(&broker, &topic, "com.acme.billing").await;
    let mut kept = broker
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("com.acme.billing"))
        .await
        .unwrap();
    let other_topic = format!("{topic}.com.acme");
    let mut other = broker
        .subscriber()
        .subscribe(&other_topic, SubscribeOptions::new("billing"))
        .await
        .unwrap();
    only_mine(&broker, &topic, "com.acme.billing", &mut kept, &mut other).await;
    only_mine(&broker, &other_topic, "billing", &mut other, &mut kept).await;
    assert!(queue_arguments(&legacy).is_some());
}
