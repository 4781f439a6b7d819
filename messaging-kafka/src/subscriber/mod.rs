//! Consuming: one consumer-group member per subscription, polled on its own thread, with
//! per-message settlement mapped onto offsets.
//!
//! The poller thread reads messages, decodes them and records each offset in its partition's
//! [`Tracker`](crate::offsets::Tracker); deliveries go to the subscription through a channel while fewer than
//! `prefetch` are unsettled. Settling marks the offset; every few milliseconds the poller
//! stores each partition's commit position (the first unsettled offset) and librdkafka commits
//! stored offsets every `commit_interval`. Rebalance callbacks run on the same thread: a revoked
//! partition stops handing out messages, waits (bounded) for its in-flight ones, commits what is
//! settled and is released; an assigned partition starts at its committed offset, or — for a
//! new group — at the end (or the start) of the partition, which is committed at once so the
//! group exists from that point on.
//!
//! The files follow those roles: [`state`] (partitions, what is out and settled), [`intake`]
//! (reading and handing out), [`rebalance`] (start positions, assignment and revocation),
//! [`settle`] (ack, redelivery, retry topics), [`poller`] (the thread and the rebalance
//! callbacks) and [`delivery`] (the subscription and deliveries the application holds).

mod delivery;
mod intake;
mod poller;
mod rebalance;
mod settle;
mod state;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use messaging_core::{
    Features, StartFrom, SubscribeError, SubscribeErrorKind, SubscribeOptions, Subscriber,
    Subscription,
};
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use tokio::sync::{mpsc, watch};

use crate::KafkaConfig;
use crate::broker::Shared;
use crate::config::retry_topic;
use crate::error;
pub use delivery::{KafkaDelivery, KafkaSubscription};
use poller::{Ctx, poll_loop};
use state::{State, Status, Sub};

/// How long the poller blocks in one poll when nothing arrives.
const POLL: Duration = Duration::from_millis(20);
/// Messages the poller reads before handing them over under one lock.
const READ_BATCH: usize = 256;
/// How often the poller stores offsets, releases due retries and applies pauses.
const HOUSEKEEPING: Duration = Duration::from_millis(10);
/// Bound on the close's wait for the consumer to leave its group, besides the session.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on one broker request made on the poller thread to find start positions
/// (committed offsets, metadata, watermarks): the thread also polls the healthy partitions.
const CALL_TIMEOUT: Duration = Duration::from_secs(1);
/// Bound on all requests of one attempt to find start positions: a retry for pending
/// partitions holds up the healthy ones' polling and offset storing at most this long (far
/// below `max.poll.interval.ms`).
const ATTEMPT_BUDGET: Duration = Duration::from_secs(3);
/// First wait before fetching committed offsets again after a failure; it doubles up to
/// [`FETCH_RETRY_MAX`] and the fetch is retried until it succeeds or the partitions are
/// revoked.
const FETCH_RETRY_MIN: Duration = Duration::from_millis(100);
/// Longest wait between two fetches of committed offsets.
const FETCH_RETRY_MAX: Duration = Duration::from_secs(5);

/// Opens subscriptions on Kafka topics.
pub struct KafkaSubscriber {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for KafkaSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscriber").finish_non_exhaustive()
    }
}

impl KafkaSubscriber {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self { shared }
    }
}

impl Subscriber for KafkaSubscriber {
    type Subscription = KafkaSubscription;

    async fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<KafkaSubscription, SubscribeError> {
        let features = self.shared.features();
        options.validate(&features)?;
        let config = &self.shared.config;
        let group = options.group();
        let retry_topics: Vec<(Duration, Arc<str>)> = if options.is_ordered() {
            Vec::new()
        } else {
            config
                .retry_tiers
                .iter()
                .map(|t| (*t, Arc::from(retry_topic(topic, group, *t))))
                .collect()
        };
        let created: Vec<&str> = std::iter::once(topic)
            .chain(retry_topics.iter().map(|(_, t)| &**t))
            .collect();
        self.shared.ensure_topics(&created).await.map_err(|e| {
            SubscribeError::new(if e.is_transient() {
                SubscribeErrorKind::Unavailable
            } else {
                SubscribeErrorKind::Rejected
            })
            .with_detail(e.to_string())
            .with_source(e)
        })?;
        // Every retry topic of the group on the cluster is read, whatever the tiers or the
        // ordering are now: messages parked there were already settled on the topic.
        let mut drained: Vec<Arc<str>> = retry_topics.iter().map(|(_, t)| t.clone()).collect();
        let mut headerless = drained.clone();
        let found = self
            .shared
            .group_retry_topics(topic, group)
            .await
            .map_err(|e| {
                SubscribeError::new(SubscribeErrorKind::Unavailable)
                    .with_detail(format!(
                        "cannot list the retry topics of group {group:?} on {topic:?}, whose \
                         parked messages the subscription must drain: {e}"
                    ))
                    .with_source(e)
            })?;
        for (t, own) in found {
            if !drained.iter().any(|d| **d == *t) {
                tracing::info!(topic, group, retry_topic = %t, "draining a retry topic of the group");
                let t: Arc<str> = Arc::from(t);
                if own {
                    headerless.push(t.clone());
                }
                drained.push(t);
            }
        }
        let topics: Vec<String> = std::iter::once(topic.to_owned())
            .chain(drained.iter().map(|t| t.to_string()))
            .collect();

        let legacy = match config.legacy_group_id(group) {
            None => None,
            Some(id) => Some(
                config
                    .client_config()
                    .set("group.id", id)
                    .set("enable.auto.commit", "false")
                    .create::<BaseConsumer>()
                    .map_err(error::subscribe)?,
            ),
        };
        let c = consumer_config(config, topic, group, &options);

        let (tx, rx) = mpsc::unbounded_channel();
        let (status, mut status_rx) = watch::channel(Status::Starting);
        let sub = Arc::new(Sub {
            broker: self.shared.clone(),
            topic: Arc::from(topic),
            ordered: options.is_ordered(),
            prefetch: options.prefetch_limit(),
            start: options.get_start_from(),
            group: group.to_owned(),
            retry_topics,
            drained,
            headerless,
            legacy,
            state: Mutex::new(State::default()),
            settled: Condvar::new(),
            tx,
            status,
            stop: AtomicBool::new(false),
        });
        let consumer: BaseConsumer<Ctx> = c
            .create_with_context(Ctx { sub: sub.clone() })
            .map_err(error::subscribe)?;
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        consumer.subscribe(&topics).map_err(error::subscribe)?;
        let thread = std::thread::Builder::new()
            .name(format!("kafka-consumer-{group}"))
            .spawn({
                let sub = sub.clone();
                move || poll_loop(consumer, sub)
            })
            .map_err(|e| SubscribeError::new(SubscribeErrorKind::Unavailable).with_source(e))?;
        let mut subscription = KafkaSubscription {
            sub,
            rx,
            status: status_rx.clone(),
            thread: Some(thread),
            closed: false,
        };
        let started = tokio::time::timeout(
            config.subscribe_timeout,
            status_rx.wait_for(|s| !matches!(s, Status::Starting)),
        )
        .await
        .map(|r| r.map(|s| s.clone()));
        let failure = match started {
            Ok(Ok(s)) => match &s {
                Status::Running => None,
                Status::Failed { detail, transient } => Some(
                    SubscribeError::new(if *transient {
                        SubscribeErrorKind::Unavailable
                    } else {
                        SubscribeErrorKind::Rejected
                    })
                    .with_detail(detail.clone()),
                ),
                _ => Some(SubscribeError::new(SubscribeErrorKind::Closed)),
            },
            Ok(Err(_)) => Some(SubscribeError::new(SubscribeErrorKind::Closed)),
            Err(_) => Some(
                SubscribeError::new(SubscribeErrorKind::Timeout).with_detail(
                    match subscription.sub.lock().fetch_error.clone() {
                        Some(e) => format!(
                            "group {group:?} could not read its committed offsets on {topic:?} \
                             within {:?}: {e}",
                            config.subscribe_timeout
                        ),
                        None => format!(
                            "group {group:?} assigned no partitions of {topic:?} within {:?}",
                            config.subscribe_timeout
                        ),
                    },
                ),
            ),
        };
        match failure {
            None => Ok(subscription),
            Some(e) => {
                let _ = subscription.close().await;
                Err(e)
            }
        }
    }

    fn features(&self) -> Features {
        self.shared.features()
    }
}

/// The group consumer's librdkafka settings; the user's `properties` come last and win.
fn consumer_config(
    config: &KafkaConfig,
    topic: &str,
    group: &str,
    options: &SubscribeOptions,
) -> ClientConfig {
    let mut c = config.client_config();
    let session = config.session_timeout.as_millis().max(1000);
    c.set("group.id", config.group_id(topic, group))
        .set("enable.auto.commit", "true")
        .set(
            "auto.commit.interval.ms",
            config.commit_interval.as_millis().max(1).to_string(),
        )
        .set("enable.auto.offset.store", "false")
        .set(
            "auto.offset.reset",
            match options.get_start_from() {
                StartFrom::Earliest => "earliest",
                StartFrom::New => "latest",
            },
        )
        .set("session.timeout.ms", session.to_string())
        .set("heartbeat.interval.ms", (session / 4).max(100).to_string())
        .set("enable.partition.eof", "false")
        // Once librdkafka's local queue holds `queued.min.messages` (100 000), it postpones
        // the partition's next fetch by this much (default 1 s) instead of fetching when the
        // queue drains. A consumer with a backlog then empties the queue and idles for the rest
        // of the second: on nisshi, 100 B messages, 160 k msg/s with the default against 500 k
        // with 10 ms (kafka_throughput bench). 10 ms costs a queue check per partition.
        .set("fetch.queue.backoff.ms", FETCH_QUEUE_BACKOFF_MS);
    for (k, v) in &config.properties {
        c.set(k, v);
    }
    c
}

/// See [`consumer_config`].
const FETCH_QUEUE_BACKOFF_MS: &str = "10";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumer_with_a_backlog_fetches_again_soon_after_its_queue_drains() {
        let options = SubscribeOptions::new("g");
        let c = consumer_config(&KafkaConfig::new("127.0.0.1:9"), "t", "g", &options);
        assert_eq!(
            c.get("fetch.queue.backoff.ms"),
            Some(FETCH_QUEUE_BACKOFF_MS)
        );
        assert!(FETCH_QUEUE_BACKOFF_MS.parse::<u32>().expect("a number") <= 50);
        // The user's tuning wins.
        let config = KafkaConfig::new("127.0.0.1:9").property("fetch.queue.backoff.ms", "250");
        let c = consumer_config(&config, "t", "g", &options);
        assert_eq!(c.get("fetch.queue.backoff.ms"), Some("250"));
    }
}
