//! Upgrading across the injective queue names (issue 12, item 10) on moto at 127.0.0.1:4566
//! (started by `scripts/brokers/moto.sh`): a group whose queue an earlier version created
//! under the plain `<topic>-<group>` join keeps that queue — messages waiting in it are
//! delivered, nothing is stranded, no second queue is subscribed — unless the old queue is
//! also subscribed to another topic, and a queue kept that way is never shared with the pair
//! whose name it now is. Fresh names, bounded waits, a clear failure when moto is down.

use std::collections::HashMap;
use std::time::Duration;

use messaging_core::{
    AttributesReader, Delivery, Inspect, Publisher, SubscribeOptions, Subscriber, Subscription,
};
use messaging_sqs::{SqsBroker, SqsSubscription};

mod common;
use common::{WAIT, broker, event};

/// A fresh name with neither `-` nor `_`: the tests choose where separators go.
fn unique(what: &str) -> String {
    format!("lg{what}{}", uuid::Uuid::new_v4().simple())
}

/// What an earlier version declared for `group_queue` on `topic`: the SNS topic, the queue
/// under its plain name, the policy and a raw subscription. Returns the queue's URL.
async fn old_style_queue(b: &SqsBroker, topic: &str, queue: &str) -> String {
    let topic_arn = b
        .sns()
        .create_topic()
        .name(topic)
        .send()
        .await
        .unwrap()
        .topic_arn
        .unwrap();
    let url = b
        .sqs()
        .create_queue()
        .queue_name(queue)
        // As the adapter declared it under this test's configuration.
        .attributes(
            aws_sdk_sqs::types::QueueAttributeName::MessageRetentionPeriod,
            "3600",
        )
        .send()
        .await
        .unwrap()
        .queue_url
        .unwrap();
    let arn = b
        .sqs()
        .get_queue_attributes()
        .queue_url(&url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .send()
        .await
        .unwrap()
        .attributes
        .unwrap()
        .remove(&aws_sdk_sqs::types::QueueAttributeName::QueueArn)
        .unwrap();
    b.sns()
        .subscribe()
        .topic_arn(topic_arn)
        .protocol("sqs")
        .endpoint(arn)
        .attributes("RawMessageDelivery", "true")
        .send()
        .await
        .unwrap();
    url
}

async fn waiting(b: &SqsBroker, url: &str) -> u64 {
    let out = b
        .sqs()
        .get_queue_attributes()
        .queue_url(url)
        .attribute_names(aws_sdk_sqs::types::QueueAttributeName::ApproximateNumberOfMessages)
        .send()
        .await
        .unwrap();
    out.attributes()
        .and_then(|a| a.values().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Waits (bounded) until `url` holds `n` messages.
async fn until_waiting(b: &SqsBroker, url: &str, n: u64) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while waiting(b, url).await < n {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{url} did not receive {n} messages within {WAIT:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every event id delivered until nothing arrives for `idle`, acked, with its count.
async fn drain(sub: &mut SqsSubscription, idle: Duration) -> HashMap<String, u32> {
    let mut seen = HashMap::new();
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    while let Ok(r) = tokio::time::timeout(idle, sub.recv()).await {
        let d = r.expect("receive");
        *seen.entry(d.event().unwrap().id().to_owned()).or_default() += 1;
        d.ack().await.unwrap();
        assert!(tokio::time::Instant::now() < deadline, "no end: {seen:?}");
    }
    seen
}

fn ids(list: &[&str]) -> HashMap<String, u32> {
    list.iter().map(|s| ((*s).to_owned(), 1)).collect()
}

/// Topic `<u>-orders`, group `g`: an earlier version's queue is `<u>-orders-g`, subscribed
/// to the topic. A message published before the upgrade waits there; the upgraded group
/// keeps that queue, so the message is delivered (not stranded), later messages arrive once,
/// and no queue under the new name is created or subscribed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_earlier_versions_queue_is_kept_and_its_messages_delivered() {
    let b = broker().await;
    let u = unique("keep");
    let topic = format!("{u}-orders");
    let legacy = format!("{topic}-g");
    let legacy_url = old_style_queue(&b, &topic, &legacy).await;
    b.publisher()
        .publish(&topic, event("before-upgrade"))
        .await
        .unwrap();
    until_waiting(&b, &legacy_url, 1).await;

    let mut sub = b
        .subscriber()
        .subscribe(&topic, SubscribeOptions::new("g"))
        .await
        .unwrap();
    assert!(
        sub.queue_url().ends_with(&format!("/{legacy}")),
        "the group moved to {} and left {legacy} behind",
        sub.queue_url()
    );
    b.publisher()
        .publish(&topic, event("after-upgrade"))
        .await
        .unwrap();
    let got = drain(&mut sub, Duration::from_secs(3)).await;
    assert_eq!(got, ids(&["before-upgrade", "after-upgrade"]));
    assert_eq!(waiting(&b, &legacy_url).await, 0, "stranded in {legacy}");
    // No queue under the new (topic-first, `_`) name.
    let others = b
        .sqs()
        .list_queues()
        .queue_name_prefix(topic.replace('-', "_"))
        .send()
        .await
        .unwrap();
    assert!(
        others.queue_urls().is_empty(),
        "a second queue: {:?}",
        others.queue_urls()
    );
    assert_eq!(b.depth(&topic, "g").await.unwrap(), Some(0));
}

/// An earlier version's queue `<u>-b-c` belonged to (topic `<u>-b`, group `c`), which keeps
/// it; `<u>-b-c` is also today's name of (topic `<u>`, group `b-c`). That pair must get a
/// queue of its own, and each group only its own topic's messages.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kept_queue_is_not_shared_with_the_pair_now_named_like_it() {
    let b = broker().await;
    let u = unique("owner");
    let (t1, g1) = (format!("{u}-b"), "c");
    let (t2, g2) = (u.clone(), "b-c");
    let legacy = format!("{u}-b-c");
    let legacy_url = old_style_queue(&b, &t1, &legacy).await;
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
    assert_eq!(s1.queue_url(), legacy_url, "the earlier queue is kept");
    assert_ne!(s1.queue_url(), s2.queue_url(), "one queue for two groups");
    b.publisher().publish(&t1, event("one")).await.unwrap();
    b.publisher().publish(&t2, event("two")).await.unwrap();
    let idle = Duration::from_secs(3);
    assert_eq!(drain(&mut s1, idle).await, ids(&["one"]), "{g1} of {t1}");
    assert_eq!(drain(&mut s2, idle).await, ids(&["two"]), "{g2} of {t2}");
    // Settles the same way on the next start.
    let again = b
        .subscriber()
        .subscribe(&t2, SubscribeOptions::new(g2))
        .await
        .unwrap();
    assert_eq!(again.queue_url(), s2.queue_url());
}

/// An earlier version's colliding queue `<u>-b-c`, subscribed to both `<u>-b` and `<u>`:
/// (topic `<u>-b`, group `c`) does not keep it (it would go on receiving the other topic's
/// messages) and gets a queue of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_earlier_queue_is_not_kept() {
    let b = broker().await;
    let u = unique("shared");
    let (t1, g1) = (format!("{u}-b"), "c");
    let legacy = format!("{u}-b-c");
    let legacy_url = old_style_queue(&b, &t1, &legacy).await;
    assert_eq!(old_style_queue(&b, &u, &legacy).await, legacy_url);
    let mut s1 = b
        .subscriber()
        .subscribe(&t1, SubscribeOptions::new(g1))
        .await
        .unwrap();
    assert_ne!(s1.queue_url(), legacy_url, "kept a queue shared with {u}");
    b.publisher().publish(&u, event("other")).await.unwrap();
    b.publisher().publish(&t1, event("mine")).await.unwrap();
    assert_eq!(drain(&mut s1, Duration::from_secs(3)).await, ids(&["mine"]));
}
