//! CloudEvents Kafka protocol binding: binary mode as `ce_` headers plus a `content-type`
//! header, structured mode as `application/cloudevents+json`; the message key is the
//! `partitionkey` extension.

use messaging_core::codec::{Binding, ContentMode, EncodeError, Encoded};
use messaging_core::event::PARTITION_KEY;
use messaging_core::{DecodeError, Event, EventExt as _, RawMessage};
use rdkafka::message::{BorrowedMessage, Header, Headers as _, Message as _, OwnedHeaders};

/// Header with the content type, as the Kafka binding names it.
pub(crate) const CONTENT_TYPE: &str = "content-type";
/// Attempts made before a delayed redelivery re-published the message to a retry topic.
pub(crate) const ATTEMPT_HEADER: &str = "messaging-attempt";
/// When a message on a retry topic may be delivered again (Unix milliseconds).
pub(crate) const NOT_BEFORE_HEADER: &str = "messaging-not-before";
/// The topic a retried message was first published to.
pub(crate) const ORIGIN_HEADER: &str = "messaging-topic";
/// The subscription group that parked a message on a retry topic: a retry topic can be read
/// by more than one group (a group's legacy name can be another group's current one), and
/// each handles only its own copies.
pub(crate) const GROUP_HEADER: &str = "messaging-group";

/// An event laid out for Kafka: key, headers, body.
pub(crate) struct Record<'a> {
    pub(crate) key: Option<&'a [u8]>,
    pub(crate) encoded: Encoded<'a>,
}

impl Record<'_> {
    /// Key, headers and body size, as the broker counts a message against its limit.
    pub(crate) fn size(&self) -> usize {
        self.encoded.wire_size() + self.key.map_or(0, <[u8]>::len) + CONTENT_TYPE.len()
    }

    /// The headers as librdkafka takes them, plus `extra` ones.
    pub(crate) fn headers(&self, extra: &[(&str, &[u8])]) -> OwnedHeaders {
        let e = &self.encoded;
        let mut h = OwnedHeaders::new_with_capacity(e.headers.len() + 1 + extra.len());
        if let Some(ct) = &e.content_type {
            h = h.insert(Header {
                key: CONTENT_TYPE,
                value: Some(ct.as_bytes()),
            });
        }
        for (k, v) in &e.headers {
            h = h.insert(Header {
                key: k.as_ref(),
                value: Some(v.as_ref()),
            });
        }
        for (k, v) in extra {
            h = h.insert(Header {
                key: k,
                value: Some(*v),
            });
        }
        h
    }
}

/// Lays `event` out in `mode`.
pub(crate) fn encode<'a>(
    binding: &'a Binding,
    event: &'a Event,
    mode: ContentMode,
) -> Result<Record<'a>, EncodeError> {
    Ok(Record {
        key: event.ordering_key().map(str::as_bytes),
        encoded: binding.encode(event, mode)?,
    })
}

/// The first header named `name`.
pub(crate) fn header<'m>(msg: &'m BorrowedMessage<'_>, name: &str) -> Option<&'m [u8]> {
    msg.headers()?
        .iter()
        .find(|h| h.key == name)
        .and_then(|h| h.value)
}

/// An integer header.
pub(crate) fn int_header(msg: &BorrowedMessage<'_>, name: &str) -> Option<i64> {
    std::str::from_utf8(header(msg, name)?).ok()?.parse().ok()
}

/// Decodes a consumed message; a message that is not a CloudEvent comes back as an error
/// carrying its headers and body (the key as header `key` if it has one).
pub(crate) fn decode(binding: &Binding, msg: &BorrowedMessage<'_>) -> Result<Event, DecodeError> {
    let content_type = header(msg, CONTENT_TYPE).and_then(|v| std::str::from_utf8(v).ok());
    let body = msg.payload().unwrap_or_default();
    let headers = msg.headers();
    let pairs = headers
        .into_iter()
        .flat_map(|h| h.iter())
        .filter_map(|h| Some((h.key, h.value?)));
    match binding.decode_parts(content_type, pairs, body) {
        Ok(mut event) => {
            // The binding maps the key to `partitionkey`: a producer that set only the key
            // still gets its ordering key through.
            if event.ordering_key().is_none() {
                if let Some(key) = msg.key().and_then(|k| std::str::from_utf8(k).ok()) {
                    event.set_extension(PARTITION_KEY, key);
                }
            }
            Ok(event)
        }
        Err(e) => Err(e.with_raw(raw(msg))),
    }
}

/// An owned copy of a consumed message.
pub(crate) fn raw(msg: &BorrowedMessage<'_>) -> RawMessage {
    let mut headers: Vec<(String, Vec<u8>)> = msg
        .headers()
        .into_iter()
        .flat_map(|h| h.iter())
        .filter(|h| h.key != CONTENT_TYPE)
        .map(|h| (h.key.to_owned(), h.value.unwrap_or_default().to_vec()))
        .collect();
    if let Some(key) = msg.key() {
        headers.push(("key".to_owned(), key.to_vec()));
    }
    RawMessage {
        content_type: header(msg, CONTENT_TYPE).map(|v| String::from_utf8_lossy(v).into_owned()),
        headers,
        body: msg.payload().unwrap_or_default().to_vec(),
    }
}

/// The headers of a raw message as librdkafka takes them, plus `extra` ones.
pub(crate) fn raw_headers(raw: &RawMessage, extra: &[(&str, &[u8])]) -> OwnedHeaders {
    let mut h = OwnedHeaders::new_with_capacity(raw.headers.len() + 1 + extra.len());
    if let Some(ct) = &raw.content_type {
        h = h.insert(Header {
            key: CONTENT_TYPE,
            value: Some(ct.as_bytes()),
        });
    }
    for (k, v) in raw.headers.iter().filter(|(k, _)| k != "key") {
        h = h.insert(Header {
            key: k,
            value: Some(v.as_slice()),
        });
    }
    for (k, v) in extra {
        h = h.insert(Header {
            key: k,
            value: Some(*v),
        });
    }
    h
}

/// The key a raw message had (see [`raw`]).
pub(crate) fn raw_key(raw: &RawMessage) -> Option<&[u8]> {
    raw.header("key")
}
