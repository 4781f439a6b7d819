//! The publishing side of a drill: keyed, numbered events, and the list of those the broker
//! accepted.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging::Broker;
use messaging_core::{Event, EventBuilder, RawMessage};
use serde::{Deserialize, Serialize};

/// The event type drill events carry.
pub const TYPE: &str = "drill.tick";
/// Their source.
pub const SOURCE: &str = "messaging-drills";

/// What a drill event carries: its ordering key and its position among the key's events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tick {
    /// Ordering key.
    pub key: String,
    /// Position among the key's events, from 0.
    pub seq: u64,
    /// A poison event: what its handler does instead of its work (`panic`, `hang`, `fail`,
    /// `oversize`: fail, with data so large that its dead letter does not fit the broker).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poison: Option<String>,
    /// Padding of an `oversize` poison event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad: Option<String>,
}

/// The poison kinds, in the order a stream cycles through them: the handler panics, hangs,
/// fails permanently; `garbled` events' data is not a [`Tick`] (the handler cannot decode
/// it); `undecodable` ones are no CloudEvent at all (a plain text message published past the
/// codec, [`Broker::publish_raw`]: the runtime cannot make an event of it); `oversize` ones
/// (only with [`Workload::pad`]) fail with data so large that the dead letter, with its
/// metadata, is over the broker's limit.
pub const POISON: [&str; 6] = [
    "panic",
    "hang",
    "fail",
    "garbled",
    "undecodable",
    "oversize",
];

/// The body of an `undecodable` poison message: this prefix, then the event id it stands for
/// (so its dead letter, a `messaging.undecodable` event carrying the body, can be matched).
pub const UNDECODABLE_PREFIX: &str = "not a cloudevent: ";

/// An event the broker accepted (its publish returned `Ok`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    /// Event id: `<key>-<seq>`.
    pub id: String,
    /// Ordering key.
    pub key: String,
    /// Position among the key's events.
    pub seq: u64,
    /// Its poison kind, if it is a poison event.
    pub poison: Option<String>,
}

/// Ids of warm-up events: published before a drill's stream, until every worker handled
/// one, and left out of the drill's record (neither counted nor checked).
pub const WARM_UP: &str = "warm-";

/// The `n`th warm-up event: a clean event on a key of its own (`warm-k<n % 16>`), so that
/// warm-up reaches every partition a group's workers may own.
pub fn warm_up_event(n: usize) -> Event {
    let tick = Tick {
        key: format!("{WARM_UP}k{}", n % 16),
        seq: (n / 16) as u64,
        poison: None,
        pad: None,
    };
    EventBuilder::new(SOURCE, TYPE)
        .id(format!("{WARM_UP}{n}"))
        .ordering_key(tick.key.clone())
        .json(&tick)
        .build()
        .expect("a warm-up event is valid")
}

/// The shape of a drill's stream.
#[derive(Debug, Clone)]
pub struct Workload {
    /// Events in all.
    pub messages: usize,
    /// Ordering keys; event `n` has key `k<n % keys>`.
    pub keys: usize,
    /// Events per publish call.
    pub batch: usize,
    /// Time from one publish call's start to the next's (a call that takes longer delays the
    /// next one only): spreads the stream over `pace × calls`.
    pub pace: Duration,
    /// Every `poison_every`th event is a poison event (0: none), cycling through [`POISON`].
    pub poison_every: usize,
    /// Bytes of padding in `oversize` poison events (0: the cycle has no `oversize`).
    pub pad: usize,
}

impl Workload {
    /// The `n`th event of the stream.
    pub fn event(&self, n: usize) -> (Tick, Event) {
        let kinds = if self.pad > 0 {
            POISON.len()
        } else {
            POISON.len() - 1
        };
        let poison = (self.poison_every > 0 && n % self.poison_every == self.poison_every - 1)
            .then(|| POISON[(n / self.poison_every) % kinds].to_owned());
        let pad = (poison.as_deref() == Some("oversize")).then(|| "x".repeat(self.pad));
        let tick = Tick {
            key: format!("k{}", n % self.keys.max(1)),
            seq: (n / self.keys.max(1)) as u64,
            poison,
            pad,
        };
        let builder = EventBuilder::new(SOURCE, TYPE)
            .id(format!("{}-{}", tick.key, tick.seq))
            .ordering_key(tick.key.clone());
        let builder = if tick.poison.as_deref() == Some("garbled") {
            builder.json(&serde_json::json!({ "garbled": tick.key }))
        } else {
            builder.json(&tick)
        };
        (tick, builder.build().expect("a drill event is valid"))
    }

    /// The `n`th event's transport message if it is an `undecodable` poison event: plain text,
    /// no CloudEvents attribute.
    pub fn raw(&self, tick: &Tick) -> Option<RawMessage> {
        (tick.poison.as_deref() == Some("undecodable")).then(|| RawMessage {
            content_type: Some("text/plain".into()),
            headers: Vec::new(),
            body: format!("{UNDECODABLE_PREFIX}{}-{}", tick.key, tick.seq).into_bytes(),
        })
    }
}

/// Publishes the workload to `topic` in order, recording each accepted event in `out` as its
/// publish returns. A batch the broker refuses in part is published again from its first
/// refused event (keeping each key's order), up to `retries` times with a growing pause;
/// returns how many publish calls failed. An `undecodable` poison event ends a batch and is
/// published on its own, raw.
pub async fn publish(
    broker: Broker,
    topic: &str,
    workload: &Workload,
    out: Arc<Mutex<Vec<Published>>>,
    retries: u32,
) -> Result<u64, String> {
    let publisher = broker.publisher();
    let mut failures = 0;
    let mut next = 0;
    let mut attempt = 0;
    let mut tick = tokio::time::interval(workload.pace.max(Duration::from_micros(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    while next < workload.messages {
        if !workload.pace.is_zero() {
            tick.tick().await;
        }
        let mut end = (next + workload.batch).min(workload.messages);
        let (mut ticks, mut events): (Vec<Tick>, Vec<Event>) =
            (next..end).map(|n| workload.event(n)).unzip();
        let raw = match ticks.iter().position(|t| workload.raw(t).is_some()) {
            // The raw one alone.
            Some(0) => {
                end = next + 1;
                ticks.truncate(1);
                workload.raw(&ticks[0])
            }
            // Up to the raw one.
            Some(i) => {
                end = next + i;
                ticks.truncate(i);
                events.truncate(i);
                None
            }
            None => None,
        };
        let sent = match raw {
            Some(raw) => broker
                .publish_raw(topic, &raw)
                .await
                .map(|_| ())
                .map_err(|e| (e.is_transient(), 0, e.to_string())),
            None => publisher
                .publish_batch_dyn(topic, events)
                .await
                .map(|_| ())
                .map_err(|e| {
                    // Accepted events before the first refused one stand; the rest go again.
                    let first_failed = e.failed.iter().map(|f| f.0).min().unwrap_or(0);
                    let why = format!("{:?}", e.failed.first().map(|f| &f.2));
                    (e.is_transient(), first_failed, why)
                }),
        };
        let accepted = match sent {
            Ok(()) => ticks.len(),
            Err((transient, first_failed, why)) => {
                failures += 1;
                attempt += 1;
                if attempt > retries || !transient {
                    return Err(format!("publishing events {next}..{end}: {why}"));
                }
                tokio::time::sleep(Duration::from_millis(100) * attempt.min(20)).await;
                first_failed
            }
        };
        if accepted == ticks.len() {
            attempt = 0;
        }
        out.lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(ticks.into_iter().take(accepted).map(|t| Published {
                id: format!("{}-{}", t.key, t.seq),
                key: t.key,
                seq: t.seq,
                poison: t.poison,
            }));
        next += accepted;
    }
    Ok(failures)
}
