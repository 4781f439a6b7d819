//! Broker-level cases: the traits' promises, without the runtime.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging_core::{
    AckErrorKind, AttributesReader, Delivery, DynPublisher, EventExt, ExtensionValue,
    PublishErrorKind, RawMessage, ReceiveErrorKind, StartFrom, SubscribeOptions, Subscription,
};
use tokio::time::Instant;

use crate::conformance::ctx::{ack, event_id, nack};
use crate::conformance::{CaseResult, Ctx};

fn sub_options(ctx: &Ctx, group: &str) -> SubscribeOptions {
    SubscribeOptions::new(ctx.group(group))
}

/// One event published is delivered once, intact, with attempt 1, and the publish returns a
/// receipt.
pub async fn publish_subscribe(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    let event = ctx.event(1);
    let receipt = ctx.publisher().publish_dyn(&topic, event.clone()).await?;
    let _ = receipt;
    let d = ctx.recv(&mut sub).await;
    let got = d.event()?;
    assert_eq!(got.id(), event.id());
    assert_eq!(got.source(), event.source());
    assert_eq!(got.ty(), event.ty());
    assert_eq!(
        got.data_json::<serde_json::Value>()?,
        serde_json::json!({"n": 1})
    );
    assert_eq!(d.attempt(), 1, "first delivery is attempt 1");
    assert_eq!(d.topic(), topic);
    ack(d).await;
    ctx.expect_nothing(&mut sub, "one publish, one delivery")
        .await;
    Ok(())
}

/// Publishing to a topic nobody subscribed to yet succeeds (topology is created as needed).
pub async fn publish_to_new_topic_succeeds(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("fresh");
    ctx.publisher().publish_dyn(&topic, ctx.event(1)).await?;
    let receipts = ctx
        .publisher()
        .publish_batch_dyn(&topic, vec![ctx.event(2), ctx.event(3)])
        .await?;
    assert_eq!(receipts.len(), 2);
    Ok(())
}

/// A batch publish returns one receipt per event, in order, and delivers every event once.
pub async fn batch_publish(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    let events: Vec<_> = (0..50).map(|n| ctx.event(n)).collect();
    let receipts = ctx.publisher().publish_batch_dyn(&topic, events).await?;
    assert_eq!(receipts.len(), 50);
    ctx.drain_exactly(&mut sub, &ctx.ids(0..50)).await;
    ctx.expect_nothing(&mut sub, "every event was delivered once")
        .await;
    Ok(())
}

/// Several topics at once: each subscription sees its own topic's messages only.
pub async fn many_topics(ctx: &Ctx) -> CaseResult {
    let mut subs = Vec::new();
    for t in 0..5 {
        let topic = ctx.topic(&format!("t{t}"));
        subs.push((
            topic.clone(),
            ctx.subscribe(&topic, sub_options(ctx, "g")).await,
        ));
    }
    for (t, (topic, _)) in subs.iter().enumerate() {
        ctx.publish_n(topic, t * 10..t * 10 + 5).await;
    }
    for (t, (_, sub)) in subs.iter_mut().enumerate() {
        ctx.drain_exactly(sub, &ctx.ids(t * 10..t * 10 + 5)).await;
    }
    Ok(())
}

/// Publishers on several tasks at once: nothing is lost or duplicated.
pub async fn concurrent_publishers(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    let mut tasks = Vec::new();
    for p in 0..4 {
        let publisher: Arc<dyn DynPublisher> = ctx.publisher().clone();
        let events: Vec<_> = (p * 25..p * 25 + 25).map(|n| ctx.event(n)).collect();
        let topic = topic.clone();
        tasks.push(tokio::spawn(async move {
            for e in events {
                publisher
                    .publish_dyn(&topic, e)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok::<_, String>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    ctx.drain_exactly(&mut sub, &ctx.ids(0..100)).await;
    Ok(())
}

/// Consumers of one group compete: each message goes to exactly one of them.
pub async fn competing_consumers_share_a_group(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut subs = Vec::new();
    for _ in 0..3 {
        subs.push(
            ctx.subscribe(&topic, sub_options(ctx, "g").prefetch(4))
                .await,
        );
    }
    ctx.publish_n(&topic, 0..60).await;
    let seen = Arc::new(Mutex::new(Vec::new()));
    let mut tasks = Vec::new();
    // Each consumer reads until every message was seen (bounded), then for one more quiet
    // period to catch a second delivery: a rebalance on a loaded machine can pause delivery
    // for longer than a quiet period.
    let quiet = ctx.settings.quiet * 2;
    let deadline = tokio::time::Instant::now() + ctx.settings.timeout * 2;
    let expected = ctx.ids(0..60);
    let started = tokio::time::Instant::now();
    for (consumer, mut sub) in subs.into_iter().enumerate() {
        let seen = seen.clone();
        let expected = expected.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                match tokio::time::timeout(quiet, sub.recv()).await {
                    Ok(Ok(d)) => {
                        seen.lock().unwrap_or_else(|e| e.into_inner()).push((
                            event_id(&d),
                            consumer,
                            started.elapsed(),
                        ));
                        ack(d).await;
                    }
                    Ok(Err(_)) => break,
                    Err(_) => {
                        let all = {
                            let seen = seen.lock().unwrap_or_else(|e| e.into_inner());
                            expected
                                .iter()
                                .all(|id| seen.iter().any(|(s, _, _)| s == id))
                        };
                        if all || tokio::time::Instant::now() > deadline {
                            break;
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let seen = seen.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let unique: HashSet<_> = seen.iter().map(|(id, _, _)| id.clone()).collect();
    if unique.len() != seen.len() {
        // Which consumer got each copy, and when: a rebalance shows as a run of copies.
        let copies: Vec<String> = seen
            .iter()
            .filter(|(id, _, _)| seen.iter().filter(|(other, _, _)| other == id).count() > 1)
            .map(|(id, c, at)| format!("{id}@{c}+{:.1}s", at.as_secs_f64()))
            .collect();
        panic!(
            "a message was delivered to two consumers: {} deliveries of {} messages; copies: {}",
            seen.len(),
            unique.len(),
            copies.join(" ")
        );
    }
    assert_eq!(unique, expected, "every message was delivered");
    Ok(())
}

/// Every group gets every message.
pub async fn every_group_gets_every_message(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut subs = Vec::new();
    for g in 0..3 {
        subs.push(
            ctx.subscribe(&topic, sub_options(ctx, &format!("g{g}")))
                .await,
        );
    }
    ctx.publish_n(&topic, 0..20).await;
    for sub in &mut subs {
        ctx.drain_exactly(sub, &ctx.ids(0..20)).await;
        ctx.expect_nothing_for(sub, ctx.settings.quiet / 3, "group got everything once")
            .await;
    }
    Ok(())
}

/// A new group sees messages published before it existed exactly when the broker replays
/// ([`Features::replay`](messaging_core::Features::replay)), and always sees later ones.
pub async fn new_group_and_older_messages(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut first = ctx.subscribe(&topic, sub_options(ctx, "first")).await;
    ctx.publish_n(&topic, 0..1).await;
    ctx.drain_exactly(&mut first, &ctx.ids(0..1)).await;
    let start = if ctx.features.replay {
        StartFrom::Earliest
    } else {
        StartFrom::New
    };
    let mut late = ctx
        .subscribe(&topic, sub_options(ctx, "late").start_from(start))
        .await;
    ctx.publish_n(&topic, 1..2).await;
    let expected = if ctx.features.replay {
        ctx.ids(0..2)
    } else {
        ctx.ids(1..2)
    };
    ctx.drain_exactly(&mut late, &expected).await;
    ctx.expect_nothing(
        &mut late,
        "older message must not reach a new group without replay",
    )
    .await;
    Ok(())
}

/// Every attribute and extension arrives as published.
pub async fn attributes_round_trip(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    let time = messaging_core::chrono::DateTime::parse_from_rfc3339("2024-01-15T10:30:00.123456Z")?
        .with_timezone(&messaging_core::chrono::Utc);
    let event = ctx
        .builder(1)
        .subject("orders/ORD-5678")
        .time(time)
        .json(&serde_json::json!({"orderId": "ORD-5678", "amount": 99.99, "currency": "USD"}))
        .dataschema("https://schemas.example.com/order-created/v1")
        .correlation_id("corr-1")
        .causation_id("cause-1")
        .traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
        .extension("tenant", "acme")
        .extension("priority", 7i64)
        .build()?;
    ctx.publisher().publish_dyn(&topic, event.clone()).await?;
    let d = ctx.recv(&mut sub).await;
    let got = d.event()?;
    assert_eq!(got.id(), event.id());
    assert_eq!(got.subject(), Some("orders/ORD-5678"));
    assert_eq!(got.time(), Some(&time));
    assert_eq!(got.datacontenttype(), Some("application/json"));
    assert_eq!(
        got.dataschema().map(|u| u.as_str()),
        Some("https://schemas.example.com/order-created/v1")
    );
    assert_eq!(got.correlation_id(), Some("corr-1"));
    assert_eq!(got.causation_id(), Some("cause-1"));
    assert_eq!(
        got.traceparent(),
        Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
    );
    assert_eq!(got.extension_str("tenant"), Some("acme"));
    // Binary-mode transports carry extension values as strings.
    match got.extension("priority") {
        Some(ExtensionValue::Integer(7)) => {}
        Some(ExtensionValue::String(s)) if s == "7" => {}
        other => panic!("priority extension arrived as {other:?}"),
    }
    assert_eq!(
        got.data_json::<serde_json::Value>()?,
        serde_json::json!({"orderId": "ORD-5678", "amount": 99.99, "currency": "USD"})
    );
    ack(d).await;
    Ok(())
}

#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
struct OrderCreated {
    order_id: String,
    amount: f64,
    currency: String,
}

/// A typed payload published as JSON comes back as the same value.
pub async fn typed_json_payload(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    let order = OrderCreated {
        order_id: "ORD-5678".into(),
        amount: 99.99,
        currency: "USD".into(),
    };
    let event = ctx.builder(1).json(&order).build()?;
    ctx.publisher().publish_dyn(&topic, event).await?;
    let d = ctx.recv(&mut sub).await;
    let got: OrderCreated = d.event()?.data_json()?;
    assert_eq!(got, order);
    ack(d).await;
    Ok(())
}

/// A body that is not UTF-8 arrives byte for byte.
pub async fn non_utf8_body(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    let body: Vec<u8> = vec![0xff, 0xfe, 0x00, 0x01, 0x80, 0xc3, 0x28, 0x00, 0xff];
    let event = ctx.builder(1).bytes(None, body.clone()).build()?;
    ctx.publisher().publish_dyn(&topic, event).await?;
    let d = ctx.recv(&mut sub).await;
    let got = d.event()?;
    assert_eq!(got.data_bytes().as_deref(), Some(&body[..]));
    assert_eq!(got.datacontenttype(), Some("application/octet-stream"));
    ack(d).await;
    Ok(())
}

/// An event without data, and one with empty data, both arrive.
pub async fn empty_body(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    let no_data = ctx.builder(1).build()?;
    let empty = ctx.builder(2).bytes(None, Vec::new()).build()?;
    ctx.publisher().publish_dyn(&topic, no_data).await?;
    ctx.publisher().publish_dyn(&topic, empty).await?;
    let mut got = HashMap::new();
    for _ in 0..2 {
        let d = ctx.recv(&mut sub).await;
        let e = d.event()?;
        got.insert(e.id().to_owned(), e.data_bytes().map(|b| b.len()));
        ack(d).await;
    }
    assert_eq!(got.get(&ctx.id(1)), Some(&None), "no data stays no data");
    assert!(
        matches!(got.get(&ctx.id(2)), Some(Some(0)) | Some(None)),
        "empty data arrives empty: {:?}",
        got.get(&ctx.id(2))
    );
    Ok(())
}

/// A payload of half the broker's limit (at most 256 KiB) arrives intact.
pub async fn large_payload_within_limit(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    let size = ctx
        .features
        .max_payload
        .map_or(256 * 1024, |m| (m / 2).min(256 * 1024));
    let body: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let event = ctx.builder(1).bytes(None, body.clone()).build()?;
    ctx.publisher().publish_dyn(&topic, event).await?;
    let d = ctx.recv(&mut sub).await;
    let got = d.event()?;
    assert!(
        got.data_bytes().as_deref() == Some(&body[..]),
        "large body changed in transit"
    );
    ack(d).await;
    Ok(())
}

/// A payload over the broker's limit fails with a typed, permanent error and is never
/// delivered; the next message still goes through.
pub async fn payload_over_limit_is_rejected(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    let max = ctx.features.max_payload.ok_or("no payload limit")?;
    let event = ctx.builder(1).bytes(None, vec![7u8; max + 1]).build()?;
    let err = ctx
        .publisher()
        .publish_dyn(&topic, event)
        .await
        .expect_err("oversized publish must fail");
    assert_eq!(err.kind(), PublishErrorKind::PayloadTooLarge, "{err}");
    assert!(
        !err.is_transient(),
        "retrying an oversized payload cannot help"
    );
    ctx.publish_n(&topic, 2..3).await;
    ctx.drain_exactly(&mut sub, &ctx.ids(2..3)).await;
    ctx.expect_nothing(&mut sub, "the oversized message must not be delivered")
        .await;
    Ok(())
}

/// Publishing through a closed publisher fails with a permanent `Closed` error; a batch
/// hands every event back.
pub async fn publish_after_close_fails(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let publisher = ctx.new_publisher().await;
    publisher.publish_dyn(&topic, ctx.event(1)).await?;
    publisher.close_dyn().await?;
    let err = publisher
        .publish_dyn(&topic, ctx.event(2))
        .await
        .expect_err("publish after close must fail");
    assert_eq!(err.kind(), PublishErrorKind::Closed, "{err}");
    assert!(!err.is_transient());
    let err = publisher
        .publish_batch_dyn(&topic, vec![ctx.event(3), ctx.event(4)])
        .await
        .expect_err("batch after close must fail");
    assert_eq!(err.failed.len(), 2, "every event comes back");
    assert!(err.accepted.is_empty());
    Ok(())
}

/// Receiving from a closed subscription fails with `Closed`.
pub async fn receive_after_close_fails(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    sub.close().await?;
    let r = tokio::time::timeout(ctx.settings.timeout, sub.recv()).await;
    match r {
        Ok(Err(e)) => assert_eq!(e.kind(), ReceiveErrorKind::Closed, "{e}"),
        Ok(Ok(_)) => panic!("received from a closed subscription"),
        Err(_) => panic!("receive on a closed subscription hung"),
    }
    Ok(())
}

/// A consumer that closes with an unsettled delivery: the message goes back to the group and a
/// new consumer of the group gets it, along with everything else. Settling the old delivery fails.
pub async fn close_then_continue(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    ctx.publish_n(&topic, 0..3).await;
    let held = ctx.recv(&mut sub).await;
    let held_id = event_id(&held);
    sub.close().await?;
    drop(sub);
    let mut again = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    let mut seen = HashSet::new();
    while seen.len() < 3 {
        let d = ctx.recv(&mut again).await;
        let id = event_id(&d);
        if id == held_id && ctx.features.counts_redeliveries_across_consumers {
            assert!(d.attempt() >= 2, "redelivery counts the first delivery");
        }
        seen.insert(id);
        ack(d).await;
    }
    assert_eq!(seen, ctx.ids(0..3));
    let stale = held
        .ack()
        .await
        .expect_err("acking a delivery of a closed subscription must fail");
    assert!(
        matches!(
            stale.error.kind(),
            AckErrorKind::Closed | AckErrorKind::Expired
        ),
        "stale ack: {}",
        stale.error
    );
    ctx.expect_nothing(&mut again, "everything was acked").await;
    Ok(())
}

/// A consumer acks half its messages and restarts: the new consumer gets exactly the other half.
pub async fn restart_loses_nothing(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    ctx.publish_n(&topic, 0..10).await;
    let mut acked = HashSet::new();
    let mut held = Vec::new();
    for _ in 0..10 {
        let d = ctx.recv(&mut sub).await;
        let id = event_id(&d);
        if acked.len() < 5 {
            acked.insert(id);
            ack(d).await;
        } else {
            held.push(d);
        }
    }
    sub.close().await?;
    drop(sub);
    drop(held);
    let mut again = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    let rest: HashSet<String> = ctx.ids(0..10).difference(&acked).cloned().collect();
    ctx.drain_exactly(&mut again, &rest).await;
    ctx.expect_nothing(&mut again, "acked messages must not come back")
        .await;
    Ok(())
}

/// A receive that is cancelled (timed out) loses nothing: a later receive gets the message.
pub async fn cancelled_receive_loses_nothing(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    for _ in 0..3 {
        let r = tokio::time::timeout(Duration::from_millis(50), sub.recv()).await;
        assert!(r.is_err(), "nothing was published yet");
    }
    ctx.publish_n(&topic, 0..1).await;
    ctx.drain_exactly(&mut sub, &ctx.ids(0..1)).await;
    Ok(())
}

/// `recv_batch(max)` returns between 1 and `max` deliveries.
pub async fn recv_batch_returns_up_to_max(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    ctx.publish_n(&topic, 0..10).await;
    let mut seen = HashSet::new();
    while seen.len() < 10 {
        let batch = tokio::time::timeout(ctx.settings.timeout, sub.recv_batch(4))
            .await
            .map_err(|_| "no batch in time")??;
        assert!((1..=4).contains(&batch.len()), "batch of {}", batch.len());
        for d in batch {
            assert!(seen.insert(event_id(&d)), "duplicate in batches");
            ack(d).await;
        }
    }
    assert_eq!(seen, ctx.ids(0..10));
    Ok(())
}

/// A subscription never holds more unsettled deliveries than its prefetch; settling one lets
/// the next through.
pub async fn prefetch_bounds_unsettled_deliveries(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx
        .subscribe(&topic, sub_options(ctx, "g").prefetch(2))
        .await;
    ctx.publish_n(&topic, 0..5).await;
    let a = ctx.recv(&mut sub).await;
    let b = ctx.recv(&mut sub).await;
    ctx.expect_nothing(&mut sub, "prefetch of 2 is full").await;
    ack(a).await;
    let c = ctx.recv(&mut sub).await;
    ack(b).await;
    ack(c).await;
    let mut rest = 0;
    while rest < 2 {
        ack(ctx.recv(&mut sub).await).await;
        rest += 1;
    }
    Ok(())
}

fn key_and_n(d: &messaging_core::BoxDelivery) -> (String, u64) {
    let e = d.payload().expect("decodes");
    let v: serde_json::Value = e.data_json().expect("json");
    (
        v["key"].as_str().unwrap_or_default().to_owned(),
        v["n"].as_u64().unwrap_or_default(),
    )
}

/// In an ordered group, each key's messages arrive in publish order.
pub async fn ordering_per_key(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx
        .subscribe(&topic, sub_options(ctx, "g").ordered(true))
        .await;
    let keys = ["alpha", "beta", "gamma"];
    let events: Vec<_> = (0..60).map(|n| ctx.keyed_event(n, keys[n % 3])).collect();
    ctx.publisher().publish_batch_dyn(&topic, events).await?;
    let mut last: HashMap<String, u64> = HashMap::new();
    for _ in 0..60 {
        let d = ctx.recv(&mut sub).await;
        let (key, n) = key_and_n(&d);
        if let Some(prev) = last.insert(key.clone(), n) {
            assert!(n > prev, "key {key}: {n} arrived after {prev}");
        }
        ack(d).await;
    }
    Ok(())
}

/// In an ordered group with several consumers, a key's next message is not handed out before
/// the previous one is settled.
pub async fn ordering_per_key_across_consumers(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut subs = Vec::new();
    for _ in 0..2 {
        subs.push(
            ctx.subscribe(&topic, sub_options(ctx, "g").ordered(true))
                .await,
        );
    }
    let keys = ["alpha", "beta", "gamma", "delta"];
    let events: Vec<_> = (0..40).map(|n| ctx.keyed_event(n, keys[n % 4])).collect();
    ctx.publisher().publish_batch_dyn(&topic, events).await?;
    let log = Arc::new(Mutex::new(Vec::new()));
    let idle = ctx.settings.quiet * 2;
    let mut tasks = Vec::new();
    for mut sub in subs {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            while let Ok(Ok(d)) = tokio::time::timeout(idle, sub.recv()).await {
                log.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(key_and_n(&d));
                tokio::task::yield_now().await;
                ack(d).await;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let log = log.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(log.len(), 40, "every message handled once");
    let mut last: HashMap<&str, u64> = HashMap::new();
    for (key, n) in &log {
        if let Some(prev) = last.insert(key, *n) {
            assert!(*n > prev, "key {key}: {n} handled after {prev}");
        }
    }
    Ok(())
}

/// A nacked message in an ordered group comes back before the rest of its key.
pub async fn ordering_survives_redelivery(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx
        .subscribe(&topic, sub_options(ctx, "g").ordered(true))
        .await;
    let events: Vec<_> = (0..5).map(|n| ctx.keyed_event(n, "k")).collect();
    ctx.publisher().publish_batch_dyn(&topic, events).await?;
    let first = ctx.recv(&mut sub).await;
    assert_eq!(key_and_n(&first).1, 0);
    nack(first, None).await;
    let again = ctx.recv(&mut sub).await;
    assert_eq!(key_and_n(&again).1, 0, "the nacked message comes first");
    assert_eq!(again.attempt(), 2);
    ack(again).await;
    for n in 1..5 {
        let d = ctx.recv(&mut sub).await;
        assert_eq!(key_and_n(&d).1, n);
        ack(d).await;
    }
    Ok(())
}

/// An acked message is never delivered again, not even after the ack deadline.
pub async fn ack_is_final(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    ctx.publish_n(&topic, 0..1).await;
    ack(ctx.recv(&mut sub).await).await;
    let wait = ctx.settings.ack_deadline * 2 + ctx.settings.quiet;
    ctx.expect_nothing_for(&mut sub, wait, "an acked message came back")
        .await;
    Ok(())
}

/// A nacked message is redelivered with the next attempt number.
pub async fn nack_redelivers_with_next_attempt(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    ctx.publish_n(&topic, 0..1).await;
    let d = ctx.recv(&mut sub).await;
    assert_eq!(d.attempt(), 1);
    nack(d, None).await;
    let d = ctx.recv(&mut sub).await;
    assert_eq!(event_id(&d), ctx.id(0));
    assert_eq!(d.attempt(), 2);
    nack(d, None).await;
    let d = ctx.recv(&mut sub).await;
    assert_eq!(d.attempt(), 3);
    ack(d).await;
    ctx.expect_nothing(&mut sub, "acked after the third attempt")
        .await;
    Ok(())
}

/// A nack with a delay is not redelivered before the delay, and is redelivered after it.
pub async fn nack_with_delay_waits(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    ctx.publish_n(&topic, 0..1).await;
    let d = ctx.recv(&mut sub).await;
    let delay = ctx.settings.delay;
    let nacked_at = Instant::now();
    nack(d, Some(delay)).await;
    ctx.expect_nothing_for(&mut sub, delay.mul_f64(0.8), "redelivered before the delay")
        .await;
    let d = ctx.recv(&mut sub).await;
    let waited = nacked_at.elapsed();
    assert!(
        waited >= delay.mul_f64(0.9),
        "redelivered after {waited:?}, delay {delay:?}"
    );
    assert_eq!(d.attempt(), 2);
    ack(d).await;
    Ok(())
}

/// A delivery that is neither acked nor nacked is redelivered after the ack deadline.
pub async fn unacked_redelivered_after_deadline(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    // Timed from before the publish: the deadline starts when the broker hands the message
    // out, which may be before `recv` returns it (prefetching adapters).
    let published_at = Instant::now();
    ctx.publish_n(&topic, 0..1).await;
    let stale = ctx.recv(&mut sub).await;
    let d = ctx.recv(&mut sub).await;
    let waited = published_at.elapsed();
    let deadline = ctx.settings.ack_deadline;
    assert!(
        waited >= deadline.mul_f64(0.9),
        "redelivered after {waited:?}, deadline {deadline:?}"
    );
    assert_eq!(event_id(&d), ctx.id(0));
    assert_eq!(d.attempt(), 2);
    ack(d).await;
    drop(stale);
    ctx.expect_nothing(&mut sub, "acked on the second attempt")
        .await;
    Ok(())
}

/// Extending the deadline keeps a slow delivery from being redelivered.
pub async fn extend_deadline_prevents_redelivery(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    ctx.publish_n(&topic, 0..1).await;
    let mut d = ctx.recv(&mut sub).await;
    let deadline = ctx.settings.ack_deadline;
    for _ in 0..3 {
        d.extend_deadline(deadline * 2).await?;
        ctx.expect_nothing_for(&mut sub, deadline, "extended delivery was redelivered")
            .await;
    }
    ack(d).await;
    ctx.expect_nothing(&mut sub, "acked").await;
    Ok(())
}

/// With a delivery limit, the broker moves a message that keeps failing to the dead-letter
/// topic, and the group stops receiving it.
pub async fn native_dead_letter_after_max_deliveries(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let dlq = format!("{topic}.dlq");
    let mut dead = ctx.subscribe(&dlq, sub_options(ctx, "dlq")).await;
    let mut sub = ctx
        .subscribe(&topic, sub_options(ctx, "g").max_deliveries(2))
        .await;
    ctx.publish_n(&topic, 0..2).await;
    let mut failures = 0;
    let mut good = false;
    while failures < 2 || !good {
        let d = ctx.recv(&mut sub).await;
        if event_id(&d) == ctx.id(0) {
            failures += 1;
            nack(d, None).await;
        } else {
            good = true;
            ack(d).await;
        }
    }
    // Keep receiving from the source meanwhile: some brokers (SQS) move a message to its
    // dead-letter queue only when a receive finds it over the limit.
    let deadline = Instant::now() + ctx.settings.timeout;
    loop {
        tokio::select! {
            d = dead.recv() => {
                let d = d?;
                assert_eq!(event_id(&d), ctx.id(0), "the failing message is dead-lettered");
                ack(d).await;
                break;
            }
            r = tokio::time::timeout(ctx.settings.quiet, sub.recv()) => {
                if let Ok(d) = r {
                    let d = d?;
                    panic!("{:?} delivered again (attempt {}) past the delivery limit", event_id(&d), d.attempt());
                }
            }
        }
        assert!(
            Instant::now() < deadline,
            "nothing reached the dead-letter topic"
        );
    }
    ctx.expect_nothing(&mut sub, "a dead-lettered message is not redelivered")
        .await;
    Ok(())
}

/// A message that is not a CloudEvent arrives as a decode error carrying the raw message, can
/// be acked, and does not block the messages behind it.
pub async fn undecodable_message_is_delivered_as_error(ctx: &Ctx) -> CaseResult {
    let topic = ctx.topic("t");
    let mut sub = ctx.subscribe(&topic, sub_options(ctx, "g")).await;
    let raw = RawMessage {
        content_type: Some("application/json".into()),
        headers: vec![("x-producer".into(), b"legacy".to_vec())],
        body: br#"{"legacy":true}"#.to_vec(),
    };
    ctx.publish_raw(&topic, raw).await;
    ctx.publish_n(&topic, 1..2).await;
    let mut decoded_error = false;
    let mut good = false;
    for _ in 0..2 {
        let d = ctx.recv(&mut sub).await;
        match d.payload() {
            Err(e) => {
                assert!(!e.is_transient());
                let raw = e.raw().expect("decode error keeps the raw message");
                assert_eq!(raw.body, br#"{"legacy":true}"#);
                decoded_error = true;
            }
            Ok(e) => {
                assert_eq!(e.id(), ctx.id(1));
                good = true;
            }
        }
        ack(d).await;
    }
    assert!(decoded_error && good);
    Ok(())
}
