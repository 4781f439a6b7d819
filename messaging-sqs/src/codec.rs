//! CloudEvents on SQS/SNS.
//!
//! - **Structured mode** (default): the body is the event in the CloudEvents JSON format, and
//!   one message attribute `content-type: application/cloudevents+json` marks it.
//! - **Binary mode**: every context attribute and extension is a `String` message attribute
//!   named `ce_<attribute>` (`ce_datacontenttype` for the content type), the data is the body.
//!   SQS bodies are text: data that is not valid SQS text (binary, control characters) or is
//!   empty travels base64-encoded or as a placeholder, flagged by the attribute
//!   `messaging-body: base64 | empty`. SQS delivers at most 10 message attributes, so an event
//!   that needs more (many extensions; a dead letter with its seven `dlq*` attributes) travels
//!   in structured mode instead: consumers decode both, and nothing fails to publish for it.

use std::borrow::Cow;

use base64::Engine as _;
use messaging_core::codec::{Binding, ContentMode, STRUCTURED_CONTENT_TYPE};
use messaging_core::{DecodeError, Event, EventExt, PublishError, PublishErrorKind, RawMessage};

use messaging_core::naming::full_hash;

use crate::names::fifo_id;

/// Message attribute with the transport content type (structured mode, raw producers).
pub(crate) const CONTENT_TYPE: &str = "content-type";
/// Message attribute saying how the body encodes binary-mode data.
pub(crate) const BODY_ENCODING: &str = "messaging-body";
/// Most message attributes SQS accepts on one message.
pub(crate) const MAX_ATTRIBUTES: usize = 10;
/// Prefix of binary-mode attributes.
pub(crate) const PREFIX: &str = "ce_";

/// The binding of this transport: `ce_` message attributes.
pub(crate) fn binding() -> Binding {
    Binding::new(PREFIX)
}

/// A message ready for SNS or SQS.
#[derive(Debug, Clone)]
pub(crate) struct Outgoing {
    pub(crate) body: String,
    pub(crate) attributes: Vec<(String, String)>,
    /// FIFO message group id: the ordering key, or the event id for events without one.
    pub(crate) group_id: String,
    /// FIFO deduplication id: SHA-256 (hex) of the event's `source` and `id` (plus the replay
    /// count of a replayed event).
    pub(crate) dedup_id: String,
    /// Bytes SQS/SNS count against their limit: body plus attribute names, types and values.
    pub(crate) size: usize,
}

/// Whether SQS accepts `s` as a message body (XML 1.0 characters).
fn is_sqs_text(s: &str) -> bool {
    s.chars().all(|c| {
        matches!(c, '\t' | '\n' | '\r' | '\u{20}'..='\u{D7FF}' | '\u{E000}'..='\u{FFFD}')
            || c >= '\u{10000}'
    })
}

/// The FIFO `MessageDeduplicationId` of `event`: CloudEvents identifies an event by `source`
/// and `id`, so both go in — 64 hex digits of SHA-256, within SQS's 128 characters whatever
/// they hold. A replayed dead letter (`dlqreplays` = n) adds n, so it is not dropped as a
/// duplicate of the original within the 5-minute window.
pub(crate) fn dedup_id(event: &Event) -> String {
    let source = event.source().to_string();
    match event.extension("dlqreplays") {
        Some(n) => full_hash(&[&source, event.id(), &n.to_string()]),
        None => full_hash(&[&source, event.id()]),
    }
}

/// Encodes `event` for SQS/SNS, checking the attribute count and the size against `max`.
pub(crate) fn encode(
    binding: &Binding,
    event: &Event,
    mode: ContentMode,
    max: usize,
) -> Result<Outgoing, PublishError> {
    let encoded = binding.encode(event, mode)?;
    let mut attributes: Vec<(String, String)> = Vec::with_capacity(encoded.headers.len() + 2);
    let body = match mode {
        ContentMode::Structured => {
            attributes.push((CONTENT_TYPE.into(), STRUCTURED_CONTENT_TYPE.into()));
            // The JSON event format is UTF-8 with control characters escaped.
            String::from_utf8(encoded.body.into_owned()).map_err(|_| {
                PublishError::new(PublishErrorKind::Encode)
                    .with_detail("structured event is not utf-8")
            })?
        }
        ContentMode::Binary => {
            for (name, value) in &encoded.headers {
                let value = std::str::from_utf8(value).map_err(|_| {
                    PublishError::new(PublishErrorKind::Encode)
                        .with_detail(format!("attribute {name} is not utf-8"))
                })?;
                attributes.push((name.to_string(), value.to_owned()));
            }
            if let Some(ct) = &encoded.content_type {
                attributes.push((format!("{PREFIX}datacontenttype"), ct.to_string()));
            }
            match std::str::from_utf8(&encoded.body) {
                Ok("") => {
                    attributes.push((BODY_ENCODING.into(), "empty".into()));
                    // SQS and SNS refuse empty bodies.
                    "-".to_owned()
                }
                Ok(text) if is_sqs_text(text) => text.to_owned(),
                _ => {
                    attributes.push((BODY_ENCODING.into(), "base64".into()));
                    base64::engine::general_purpose::STANDARD.encode(&encoded.body)
                }
            }
        }
    };
    if attributes.len() > MAX_ATTRIBUTES {
        // Binary mode cannot carry this event on SQS; the structured form always fits in one
        // attribute, and consumers read both.
        return encode(binding, event, ContentMode::Structured, max);
    }
    let size = body.len()
        + attributes
            .iter()
            .map(|(k, v)| k.len() + "String".len() + v.len())
            .sum::<usize>();
    if size > max {
        return Err(PublishError::new(PublishErrorKind::PayloadTooLarge)
            .with_detail(format!("{size} bytes with attributes, limit {max}")));
    }
    let group_id = fifo_id(event.ordering_key().unwrap_or_else(|| event.id()));
    let dedup_id = dedup_id(event);
    Ok(Outgoing {
        body,
        attributes,
        group_id,
        dedup_id,
        size,
    })
}

/// Lays out a message that is not a CloudEvent, as a plain producer sends it: the body as it
/// is (it must be SQS text: UTF-8 without control characters), each header as a `String`
/// attribute, the content type as the `content-type` attribute. On FIFO destinations it is its
/// own message group, deduplicated by the SHA-256 of its body and attributes.
pub(crate) fn encode_raw(raw: &RawMessage, max: usize) -> Result<Outgoing, PublishError> {
    let body = std::str::from_utf8(&raw.body)
        .ok()
        .filter(|b| !b.is_empty() && is_sqs_text(b))
        .ok_or_else(|| {
            PublishError::new(PublishErrorKind::Encode)
                .with_detail("an SQS body must be non-empty UTF-8 text without control characters")
        })?
        .to_owned();
    let mut attributes = Vec::with_capacity(raw.headers.len() + 1);
    if let Some(ct) = &raw.content_type {
        attributes.push((CONTENT_TYPE.to_owned(), ct.clone()));
    }
    for (name, value) in &raw.headers {
        let value = String::from_utf8(value.clone()).map_err(|_| {
            PublishError::new(PublishErrorKind::Encode)
                .with_detail(format!("attribute {name} is not utf-8"))
        })?;
        attributes.push((name.clone(), value));
    }
    if attributes.len() > MAX_ATTRIBUTES {
        return Err(
            PublishError::new(PublishErrorKind::Encode).with_detail(format!(
                "{} attributes, SQS delivers at most {MAX_ATTRIBUTES}",
                attributes.len()
            )),
        );
    }
    let size = body.len()
        + attributes
            .iter()
            .map(|(k, v)| k.len() + "String".len() + v.len())
            .sum::<usize>();
    if size > max {
        return Err(PublishError::new(PublishErrorKind::PayloadTooLarge)
            .with_detail(format!("{size} bytes with attributes, limit {max}")));
    }
    let mut parts: Vec<&str> = vec![&body];
    for (k, v) in &attributes {
        parts.push(k);
        parts.push(v);
    }
    let dedup_id = full_hash(&parts);
    Ok(Outgoing {
        body,
        attributes,
        group_id: dedup_id.clone(),
        dedup_id,
        size,
    })
}

use messaging_core::AttributesReader as _;

/// Decodes a received message; a failure keeps the raw message (attributes as headers).
pub(crate) fn decode(
    binding: &Binding,
    body: String,
    attributes: Vec<(String, Vec<u8>)>,
) -> Result<Event, DecodeError> {
    let find = |name: &str| {
        attributes
            .iter()
            .find(|(k, _)| k == name)
            .and_then(|(_, v)| std::str::from_utf8(v).ok())
    };
    let content_type = find(CONTENT_TYPE).map(str::to_owned);
    let body: Vec<u8> = match find(BODY_ENCODING) {
        Some("empty") => Vec::new(),
        Some("base64") => match base64::engine::general_purpose::STANDARD.decode(body.as_bytes()) {
            Ok(b) => b,
            Err(_) => body.into_bytes(),
        },
        _ => body.into_bytes(),
    };
    let headers: Vec<(&str, Cow<'_, [u8]>)> = attributes
        .iter()
        .map(|(k, v)| (k.as_str(), Cow::Borrowed(v.as_slice())))
        .collect();
    binding
        .decode_parts_owned(
            content_type.as_deref(),
            headers.iter().map(|(k, v)| (*k, v.as_ref())),
            body,
        )
        .map_err(|(e, body)| {
            e.with_raw(RawMessage {
                content_type: content_type.clone(),
                headers: attributes.clone(),
                body,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use messaging_core::EventBuilder;

    fn round_trip(e: &Event, mode: ContentMode) -> Event {
        let b = binding();
        let out = encode(&b, e, mode, usize::MAX).unwrap();
        let attrs = out
            .attributes
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes()))
            .collect();
        decode(&b, out.body, attrs).unwrap()
    }

    #[test]
    fn both_modes_round_trip_binary_and_empty_data() {
        for mode in [ContentMode::Structured, ContentMode::Binary] {
            let e = EventBuilder::new("s", "t")
                .id("e1")
                .bytes(None, vec![0xff, 0, 1])
                .ordering_key("k")
                .build()
                .unwrap();
            let back = round_trip(&e, mode);
            assert_eq!(back.data_bytes().as_deref(), Some(&[0xff, 0, 1][..]));
            assert_eq!(back.ordering_key(), Some("k"));
            let empty = EventBuilder::new("s", "t")
                .bytes(None, Vec::new())
                .build()
                .unwrap();
            let back = round_trip(&empty, mode);
            assert!(back.data_bytes().is_none_or(|b| b.is_empty()));
        }
    }

    #[test]
    fn binary_mode_past_ten_attributes_falls_back_to_structured() {
        let mut b = EventBuilder::new("s", "t").json(&1);
        for i in 0..6 {
            b = b.extension(&format!("ext{i}"), "v");
        }
        let e = b.build().unwrap();
        let out = encode(&binding(), &e, ContentMode::Binary, usize::MAX).unwrap();
        assert_eq!(
            out.attributes,
            [(CONTENT_TYPE.to_owned(), STRUCTURED_CONTENT_TYPE.to_owned())],
            "one attribute: the structured content type"
        );
        let structured = encode(&binding(), &e, ContentMode::Structured, usize::MAX).unwrap();
        assert_eq!(out.body, structured.body);
        // Narrow events stay binary.
        let narrow = EventBuilder::new("s", "t").json(&1).build().unwrap();
        let out = encode(&binding(), &narrow, ContentMode::Binary, usize::MAX).unwrap();
        assert!(
            out.attributes.iter().any(|(k, _)| k == "ce_id"),
            "{:?}",
            out.attributes
        );
    }

    #[test]
    fn size_is_checked_before_sending() {
        let e = EventBuilder::new("s", "t")
            .bytes(None, vec![b'a'; 100])
            .build()
            .unwrap();
        let err = encode(&binding(), &e, ContentMode::Binary, 50).unwrap_err();
        assert_eq!(err.kind(), PublishErrorKind::PayloadTooLarge);
    }

    #[test]
    fn fifo_ids_come_from_key_and_id() {
        let e = EventBuilder::new("s", "t")
            .id("e1")
            .ordering_key("k")
            .build()
            .unwrap();
        let out = encode(&binding(), &e, ContentMode::Structured, usize::MAX).unwrap();
        assert_eq!(out.group_id, "k");
        assert_eq!(out.dedup_id, full_hash(&["s", "e1"]));
        // Same id from another source: another event, another deduplication id.
        let other = EventBuilder::new("s2", "t").id("e1").build().unwrap();
        assert_ne!(dedup_id(&other), out.dedup_id);
        // A replayed copy is not a duplicate of the original.
        let replayed = EventBuilder::new("s", "t")
            .id("e1")
            .extension("dlqreplays", 1)
            .build()
            .unwrap();
        assert_ne!(dedup_id(&replayed), out.dedup_id);
        // Any id and source fit SQS's 128 printable ASCII characters.
        let wild = EventBuilder::new("urn:ü ber", "t")
            .id("x".repeat(500))
            .build()
            .unwrap();
        let id = dedup_id(&wild);
        assert!(id.len() <= 128 && id.bytes().all(|b| b.is_ascii_graphic()));
    }

    #[test]
    fn a_plain_message_is_a_decode_error_with_its_bytes() {
        let err = decode(
            &binding(),
            "{\"legacy\":true}".into(),
            vec![(CONTENT_TYPE.into(), b"application/json".to_vec())],
        )
        .unwrap_err();
        assert_eq!(err.raw().unwrap().body, b"{\"legacy\":true}");
    }
}
