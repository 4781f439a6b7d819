//! Dead letters: one metadata format on every broker, replay, and depth.
//!
//! When the consumer runtime dead-letters a message — retries exhausted, a permanent failure,
//! or input that is not a CloudEvent — it publishes the original event to the dead-letter topic
//! (the policy's `dlq`, default `<topic>.dlq`) with these extension attributes, and only then
//! acks the original. If that publish fails, the original is not acked.
//!
//! | extension | value |
//! |---|---|
//! | `dlqreason` | `retries-exhausted`, `permanent-failure` or `undecodable` |
//! | `dlqerror` | the last error's text (at most 1 KiB) |
//! | `dlqattempts` | handler runs so far, across replays |
//! | `dlqtopic` / `dlqgroup` | where it was consumed |
//! | `dlqfirstfailure` / `dlqlastfailure` | RFC 3339 times |
//! | `dlqreplays` | how many times it was replayed (absent before the first replay) |
//! | `dlqrawheaders` | undecodable input only: the transport headers, as JSON of base64 |
//!
//! Undecodable input becomes an event of type `messaging.undecodable` whose data is the raw
//! body byte for byte. The dead-letter topic keeps its messages in the group
//! [`DEAD_LETTER_GROUP`], which the runtime creates before it consumes; [`replay`] and
//! [`depth`] read that group.

mod replay;

use std::collections::BTreeMap;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use cloudevents::Event;
use cloudevents::event::ExtensionValue;

use crate::codec::DecodeError;
use crate::event::{EventBuilder, EventExt};
use crate::handler::{Failure, Origin};
use crate::inspect::{Inspect, InspectError};

pub use replay::{ReplayError, ReplayOptions, ReplayReport, replay};

/// Group of a dead-letter topic that holds its messages.
pub const DEAD_LETTER_GROUP: &str = "dead-letters";
/// Extension: why the message was dead-lettered.
pub const REASON: &str = "dlqreason";
/// Extension: the last error.
pub const ERROR: &str = "dlqerror";
/// Extension: handler runs so far.
pub const ATTEMPTS: &str = "dlqattempts";
/// Extension: the topic it was consumed from.
pub const TOPIC: &str = "dlqtopic";
/// Extension: the group it was consumed by.
pub const GROUP: &str = "dlqgroup";
/// Extension: first failure time.
pub const FIRST_FAILURE: &str = "dlqfirstfailure";
/// Extension: last failure time.
pub const LAST_FAILURE: &str = "dlqlastfailure";
/// Extension: replays so far.
pub const REPLAYS: &str = "dlqreplays";
/// Extension: raw headers of undecodable input.
pub const RAW_HEADERS: &str = "dlqrawheaders";
/// Extension: the dead letter's data (this many bytes) was dropped because the broker refused
/// the whole dead letter (too large, say); the original is identified by `id`, `source`,
/// `dlqtopic` and `dlqgroup`.
pub const TRUNCATED: &str = "dlqtruncated";
/// Type of the event that carries undecodable input.
pub const UNDECODABLE_TYPE: &str = "messaging.undecodable";

const MAX_ERROR_LEN: usize = 1024;

fn rfc3339(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn truncate(s: &str) -> String {
    if s.len() <= MAX_ERROR_LEN {
        return s.to_owned();
    }
    let mut end = MAX_ERROR_LEN;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

fn int(e: &Event, name: &str) -> Option<i64> {
    match e.extension(name)? {
        ExtensionValue::Integer(i) => Some(*i),
        ExtensionValue::String(s) => s.parse().ok(),
        ExtensionValue::Boolean(_) => None,
    }
}

/// The dead-letter metadata of an event, as read back from its extensions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetterMetadata {
    /// `dlqreason`.
    pub reason: String,
    /// `dlqerror`.
    pub error: String,
    /// `dlqattempts`.
    pub attempts: u32,
    /// `dlqtopic`.
    pub topic: String,
    /// `dlqgroup`.
    pub group: String,
    /// `dlqfirstfailure`.
    pub first_failure: Option<DateTime<Utc>>,
    /// `dlqlastfailure`.
    pub last_failure: Option<DateTime<Utc>>,
    /// `dlqreplays`.
    pub replays: u32,
}

impl DeadLetterMetadata {
    /// Reads the metadata; `None` if the event was never dead-lettered.
    pub fn from_event(e: &Event) -> Option<Self> {
        let time = |name| {
            e.extension_str(name)
                .and_then(|s| DateTime::parse_from_rfc3339(s).ok())
                .map(|t| t.with_timezone(&Utc))
        };
        Some(Self {
            reason: e.extension_str(REASON)?.to_owned(),
            error: e.extension_str(ERROR).unwrap_or_default().to_owned(),
            attempts: int(e, ATTEMPTS)
                .and_then(|i| u32::try_from(i).ok())
                .unwrap_or(0),
            topic: e.extension_str(TOPIC).unwrap_or_default().to_owned(),
            group: e.extension_str(GROUP).unwrap_or_default().to_owned(),
            first_failure: time(FIRST_FAILURE),
            last_failure: time(LAST_FAILURE),
            replays: int(e, REPLAYS)
                .and_then(|i| u32::try_from(i).ok())
                .unwrap_or(0),
        })
    }
}

/// The event to publish to the dead-letter topic for `original`: the original with the
/// metadata set. Attempts add up and the first failure time is kept across replays.
pub fn dead_letter_event(original: &Event, failure: &Failure, origin: &Origin) -> Event {
    let mut e = original.clone();
    let before = DeadLetterMetadata::from_event(original);
    let attempts =
        i64::from(failure.attempts) + before.as_ref().map_or(0, |m| i64::from(m.attempts));
    let first = before
        .as_ref()
        .and_then(|m| m.first_failure)
        .map_or(failure.first_failure, |t| t.min(failure.first_failure));
    e.set_extension(REASON, failure.reason.as_str());
    e.set_extension(ERROR, truncate(&failure.error));
    e.set_extension(ATTEMPTS, attempts);
    e.set_extension(TOPIC, origin.topic.as_str());
    e.set_extension(GROUP, origin.group.as_str());
    e.set_extension(FIRST_FAILURE, rfc3339(&first));
    e.set_extension(LAST_FAILURE, rfc3339(&failure.last_failure));
    e
}

/// The event that carries input that did not decode: its raw body as data, its headers in
/// `dlqrawheaders`, and the metadata.
pub fn undecodable_event(error: &DecodeError, origin: &Origin, now: DateTime<Utc>) -> Event {
    let raw = error.raw().cloned().unwrap_or_default();
    let headers: BTreeMap<&str, String> = raw
        .headers
        .iter()
        .map(|(k, v)| {
            (
                k.as_str(),
                base64::engine::general_purpose::STANDARD.encode(v),
            )
        })
        .collect();
    let headers = serde_json::to_string(&headers).unwrap_or_default();
    let built = EventBuilder::new("urn:messaging:dead-letter", UNDECODABLE_TYPE)
        .time(now)
        .bytes(raw.content_type.as_deref(), raw.body)
        .extension(RAW_HEADERS, headers)
        .build();
    let event = match built {
        Ok(e) => e,
        // A transport content type the builder refuses: keep the bytes all the same.
        Err(_) => {
            let mut e = EventBuilder::new("urn:messaging:dead-letter", UNDECODABLE_TYPE)
                .time(now)
                .build()
                .unwrap_or_default();
            e.set_data(
                "application/octet-stream",
                error.raw().map(|r| r.body.clone()).unwrap_or_default(),
            );
            e
        }
    };
    let failure = Failure {
        reason: crate::handler::DeadLetterReason::Undecodable,
        error: error.to_string(),
        attempts: 0,
        first_failure: now,
        last_failure: now,
    };
    dead_letter_event(&event, &failure, origin)
}

/// A smaller dead letter for one the broker refused permanently: first `dead` without its data
/// (and without `dlqrawheaders`), then only its identity (`id`, `source`, `type`, `subject`,
/// `time`), correlation, trace context and dead-letter metadata. Each is marked with
/// [`TRUNCATED`], the size of the dropped data in bytes. `None` when `dead` is already the
/// smallest.
pub fn shrink(dead: &Event) -> Option<Event> {
    use cloudevents::{AttributesReader, AttributesWriter, Data};
    let data_len = |e: &Event| match e.data() {
        None => 0,
        Some(Data::Binary(b)) => b.len(),
        Some(Data::String(s)) => s.len(),
        Some(Data::Json(v)) => serde_json::to_vec(v).map_or(0, |b| b.len()),
    };
    let dropped = int(dead, TRUNCATED).unwrap_or_else(|| data_len(dead) as i64);
    if dead.data().is_some() || dead.extension(RAW_HEADERS).is_some() {
        let mut e = dead.clone();
        let _ = e.take_data();
        e.remove_extension(RAW_HEADERS);
        e.set_extension(TRUNCATED, dropped);
        return Some(e);
    }
    let keep = |name: &str| {
        name.starts_with("dlq")
            || matches!(
                name,
                crate::event::CORRELATION_ID
                    | crate::event::CAUSATION_ID
                    | crate::event::TRACEPARENT
                    | crate::event::TRACESTATE
                    | crate::event::PARTITION_KEY
            )
    };
    if dead.iter_extensions().all(|(name, _)| keep(name)) && dead.dataschema().is_none() {
        return None;
    }
    let mut e = EventBuilder::new(dead.source().to_string(), dead.ty())
        .id(dead.id())
        .build()
        .ok()?;
    e.set_subject(dead.subject());
    e.set_time(dead.time().copied());
    for (name, value) in dead.iter_extensions().filter(|(name, _)| keep(name)) {
        e.set_extension(name, value.clone());
    }
    e.set_extension(TRUNCATED, dropped);
    Some(e)
}

/// The event to publish when replaying `dead`: the same event with `dlqreplays` incremented
/// and the rest of the metadata kept as history.
pub fn replayed_event(dead: &Event) -> Event {
    let mut e = dead.clone();
    let replays = int(dead, REPLAYS).unwrap_or(0) + 1;
    e.set_extension(REPLAYS, replays);
    e
}

/// How many messages wait in the dead-letter topic `dlq_topic`, for alerting on depth > 0.
pub async fn depth<I: Inspect>(inspector: &I, dlq_topic: &str) -> Result<u64, InspectError> {
    Ok(inspector
        .depth(dlq_topic, DEAD_LETTER_GROUP)
        .await?
        .unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::RawMessage;
    use crate::handler::DeadLetterReason;
    use cloudevents::AttributesReader;

    fn origin() -> Origin {
        Origin {
            topic: "orders".into(),
            group: "billing".into(),
        }
    }

    fn failure(attempts: u32, first: &str, last: &str) -> Failure {
        Failure {
            reason: DeadLetterReason::RetriesExhausted,
            error: "payment provider down".into(),
            attempts,
            first_failure: first.parse().unwrap(),
            last_failure: last.parse().unwrap(),
        }
    }

    #[test]
    fn metadata_round_trips_and_accumulates_over_replays() {
        let e = EventBuilder::new("s", "order.created")
            .id("e1")
            .build()
            .unwrap();
        let f1 = failure(4, "2024-01-15T10:30:00Z", "2024-01-15T10:30:15Z");
        let dead = dead_letter_event(&e, &f1, &origin());
        let m = DeadLetterMetadata::from_event(&dead).unwrap();
        assert_eq!(m.reason, "retries-exhausted");
        assert_eq!(m.error, "payment provider down");
        assert_eq!(
            (m.attempts, m.topic.as_str(), m.group.as_str()),
            (4, "orders", "billing")
        );
        assert_eq!(m.first_failure, Some(f1.first_failure));
        assert_eq!(m.last_failure, Some(f1.last_failure));
        assert_eq!(m.replays, 0);
        assert_eq!(dead.id(), "e1", "the original event is kept");

        let replayed = replayed_event(&dead);
        let f2 = failure(2, "2024-01-16T08:00:00Z", "2024-01-16T08:00:03Z");
        let again = dead_letter_event(&replayed, &f2, &origin());
        let m = DeadLetterMetadata::from_event(&again).unwrap();
        assert_eq!(m.attempts, 6, "attempts add up across replays");
        assert_eq!(
            m.first_failure,
            Some(f1.first_failure),
            "first failure is kept"
        );
        assert_eq!(m.last_failure, Some(f2.last_failure));
        assert_eq!(m.replays, 1);
    }

    #[test]
    fn undecodable_input_keeps_body_and_headers() {
        let raw = RawMessage {
            content_type: Some("application/json".into()),
            headers: vec![("x-legacy".into(), vec![0xff, 0x00])],
            body: b"{\"legacy\":true}".to_vec(),
        };
        let err = DecodeError::new(crate::DecodeErrorKind::NotCloudEvent, "no ce_specversion")
            .with_raw(raw);
        let e = undecodable_event(&err, &origin(), Utc::now());
        assert_eq!(e.ty(), UNDECODABLE_TYPE);
        assert_eq!(e.data_bytes().unwrap().as_ref(), b"{\"legacy\":true}");
        let headers: BTreeMap<String, String> =
            serde_json::from_str(e.extension_str(RAW_HEADERS).unwrap()).unwrap();
        assert_eq!(headers["x-legacy"], "/wA=");
        let m = DeadLetterMetadata::from_event(&e).unwrap();
        assert_eq!(m.reason, "undecodable");
        assert!(m.error.contains("no ce_specversion"));
    }

    #[test]
    fn long_errors_are_truncated_on_a_char_boundary() {
        let s = "é".repeat(1000);
        let t = truncate(&s);
        assert!(t.len() <= MAX_ERROR_LEN + "…".len());
        assert!(t.ends_with('…'));
    }
}
