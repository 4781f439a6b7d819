//! CloudEvents AMQP protocol binding: binary mode as `cloudEvents:` application properties
//! plus the `content-type` property; structured mode as `application/cloudevents+json`.

use std::borrow::Cow;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use messaging_core::codec::{Binding, ContentMode, EncodeError, HeaderValue};
use messaging_core::{DecodeError, Event, RawMessage};

/// The binding of this transport: `cloudEvents:` headers when encoding; `cloudEvents:`,
/// `cloudEvents_` (the AMQP binding's JMS-friendly form) and `ce-` (the RabbitMQ binding of
/// Knative Eventing and the Python SDK) when decoding.
pub(crate) fn binding() -> Binding {
    Binding::amqp().with_alternate_prefix("ce-")
}

/// Header carrying attempts made before a delayed redelivery re-published the message.
pub(crate) const ATTEMPT_HEADER: &str = "x-messaging-attempt";
/// Header quorum queues set to the number of earlier deliveries.
pub(crate) const DELIVERY_COUNT: &str = "x-delivery-count";

/// Properties and body for `event`.
pub(crate) fn encode<'a>(
    binding: &'a Binding,
    event: &'a Event,
    mode: ContentMode,
) -> Result<(BasicProperties, Cow<'a, [u8]>, usize), EncodeError> {
    let encoded = binding.encode(event, mode)?;
    let size = encoded.wire_size();
    let mut headers = FieldTable::default();
    for (name, value) in &encoded.headers {
        headers.insert(
            ShortString::from(name.as_ref()),
            AMQPValue::LongString(LongString::from(value.to_vec())),
        );
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(ct) = &encoded.content_type {
        props = props.with_content_type(ShortString::from(ct.as_ref()));
    }
    Ok((props, encoded.body, size))
}

/// Lays out a message that is not a CloudEvent: each header as a long string, the content
/// type as the `content-type` property, persistent; with its size as the broker counts it.
pub(crate) fn encode_raw(raw: &RawMessage) -> (BasicProperties, usize) {
    let mut headers = FieldTable::default();
    let mut size = raw.body.len();
    for (name, value) in &raw.headers {
        size += name.len() + value.len();
        headers.insert(
            ShortString::from(name.as_str()),
            AMQPValue::LongString(LongString::from(value.clone())),
        );
    }
    let mut props = BasicProperties::default()
        .with_delivery_mode(2)
        .with_headers(headers);
    if let Some(ct) = &raw.content_type {
        size += ct.len();
        props = props.with_content_type(ShortString::from(ct.as_str()));
    }
    (props, size)
}

/// A header's value in the codec's terms: strings as bytes, the AMQP types the CloudEvents
/// binding maps (boolean, integers, timestamp, binary) natively. Other types (floats, decimals,
/// arrays, tables, void) are no CloudEvents attribute type and are skipped.
fn header_value(v: &AMQPValue) -> Option<HeaderValue<'_>> {
    Some(match v {
        AMQPValue::LongString(s) => HeaderValue::Text(s.as_bytes()),
        AMQPValue::ShortString(s) => HeaderValue::Text(s.as_str().as_bytes()),
        AMQPValue::Boolean(b) => HeaderValue::Bool(*b),
        AMQPValue::ShortShortInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::ShortInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::ShortUInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::LongInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::LongUInt(n) => HeaderValue::Int(i64::from(*n)),
        AMQPValue::LongLongInt(n) => HeaderValue::Int(*n),
        // AMQP 0-9-1 timestamps are seconds since the epoch.
        AMQPValue::Timestamp(secs) => HeaderValue::Time(
            i64::try_from(*secs)
                .ok()
                .and_then(|s| messaging_core::chrono::DateTime::from_timestamp(s, 0))?,
        ),
        AMQPValue::ByteArray(b) => HeaderValue::Binary(b.as_slice()),
        _ => return None,
    })
}

/// The bytes a dead letter keeps of a header: the string form of what [`header_value`] reads.
fn value_bytes(v: &AMQPValue) -> Option<Cow<'_, [u8]>> {
    let text = |s: String| Some(Cow::Owned(s.into_bytes()));
    match header_value(v)? {
        HeaderValue::Text(b) | HeaderValue::Binary(b) => Some(Cow::Borrowed(b)),
        HeaderValue::Bool(b) => text(b.to_string()),
        HeaderValue::Int(n) => text(n.to_string()),
        HeaderValue::Time(_) => match v {
            AMQPValue::Timestamp(n) => text(n.to_string()),
            _ => None,
        },
        _ => None,
    }
}

/// An integer header, whatever integer type the broker chose.
pub(crate) fn int_header(props: &BasicProperties, name: &str) -> Option<i64> {
    let v = props.headers().as_ref()?.inner().get(name)?;
    match v {
        AMQPValue::ShortShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortInt(n) => Some(i64::from(*n)),
        AMQPValue::ShortUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongInt(n) => Some(i64::from(*n)),
        AMQPValue::LongUInt(n) => Some(i64::from(*n)),
        AMQPValue::LongLongInt(n) => Some(*n),
        _ => None,
    }
}

/// The event in a delivery (the body moves into its data), or a decode error carrying the raw
/// message.
pub(crate) fn decode(
    binding: &Binding,
    props: &BasicProperties,
    body: Vec<u8>,
) -> Result<Event, DecodeError> {
    let content_type = props.content_type().as_ref().map(ShortString::as_str);
    let table = props.headers().as_ref().map(FieldTable::inner);
    let headers = table
        .into_iter()
        .flatten()
        .filter_map(|(k, v)| header_value(v).map(|v| (k.as_str(), v)));
    binding
        .decode_parts_owned(content_type, headers, body)
        .map(|mut event| {
            // A request through direct reply-to: the broker's address for the reply is the
            // AMQP `reply_to` property, which the core's `reply` reads as `replyto`.
            if let Some(address) = props
                .reply_to()
                .as_ref()
                .map(ShortString::as_str)
                .filter(|r| crate::request::is_reply_address(r))
            {
                event.set_extension(messaging_core::request::REPLY_TO, address);
            }
            event
        })
        .map_err(|(e, body)| {
            e.with_raw(RawMessage {
                content_type: content_type.map(str::to_owned),
                headers: table
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| value_bytes(v).map(|b| (k.to_string(), b.into_owned())))
                    .collect(),
                body,
            })
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use messaging_core::{AttributesReader, EventBuilder, EventExt};

    #[test]
    fn binary_mode_uses_cloudevents_prefixed_application_properties() {
        let e = EventBuilder::new("shop", "order.created")
            .id("e1")
            .json(&1)
            .ordering_key("k")
            .build()
            .unwrap();
        let binding = Binding::amqp();
        let (props, body, _) = encode(&binding, &e, ContentMode::Binary).unwrap();
        let headers = props.headers().as_ref().unwrap().inner();
        assert!(headers.contains_key("cloudEvents:id"));
        assert!(headers.contains_key("cloudEvents:partitionkey"));
        assert_eq!(
            props.content_type().as_ref().unwrap().as_str(),
            "application/json"
        );
        let back = decode(&Binding::amqp(), &props, body.into_owned()).unwrap();
        assert_eq!((back.id(), back.ordering_key()), ("e1", Some("k")));
    }

    /// The AMQP binding: a receiver interprets the native AMQP type of each attribute as well as
    /// its string form, under either prefix.
    #[test]
    fn native_amqp_types_decode_like_their_string_forms() {
        use messaging_core::ExtensionValue;
        let millis: i64 = 1_764_000_000_123;
        for prefix in ["cloudEvents:", "cloudEvents_", "ce-"] {
            let mut headers = FieldTable::default();
            let mut put = |name: &str, v: AMQPValue| {
                headers.insert(ShortString::from(format!("{prefix}{name}")), v);
            };
            put("specversion", AMQPValue::LongString("1.0".into()));
            put("id", AMQPValue::LongString("e1".into()));
            put("source", AMQPValue::ShortString("urn:python".into()));
            put("type", AMQPValue::LongString("t".into()));
            // What the Python SDK's AMQP binding sends: milliseconds since the epoch.
            put("time", AMQPValue::LongLongInt(millis));
            put("count", AMQPValue::LongInt(42));
            put("big", AMQPValue::LongLongInt(1 << 40));
            put("flag", AMQPValue::Boolean(true));
            put("blob", AMQPValue::ByteArray(vec![0, 1, 255].into()));
            put("stamp", AMQPValue::Timestamp(1_764_000_000));
            let props = BasicProperties::default()
                .with_content_type("text/plain".into())
                .with_headers(headers);
            let e = decode(&binding(), &props, b"hi".to_vec())
                .unwrap_or_else(|err| panic!("{prefix}: {err}"));
            assert_eq!(e.id(), "e1");
            assert_eq!(
                e.time().map(|t| t.timestamp_millis()),
                Some(millis),
                "{prefix}"
            );
            assert_eq!(e.extension("count"), Some(&ExtensionValue::Integer(42)));
            assert_eq!(e.extension("big"), Some(&ExtensionValue::Integer(1 << 40)));
            assert_eq!(e.extension("flag"), Some(&ExtensionValue::Boolean(true)));
            assert_eq!(
                e.extension("blob"),
                Some(&ExtensionValue::String("AAH/".into()))
            );
            assert_eq!(
                e.extension("stamp"),
                Some(&ExtensionValue::String("2025-11-24T16:00:00Z".into()))
            );
        }
        // An AMQP 0-9-1 timestamp (seconds) as the event time.
        let mut headers = FieldTable::default();
        for (k, v) in [
            ("specversion", "1.0"),
            ("id", "e2"),
            ("source", "s"),
            ("type", "t"),
        ] {
            headers.insert(
                ShortString::from(format!("cloudEvents:{k}")),
                AMQPValue::LongString(v.into()),
            );
        }
        headers.insert(
            "cloudEvents:time".into(),
            AMQPValue::Timestamp(1_764_000_000),
        );
        let props = BasicProperties::default().with_headers(headers);
        let e = decode(&Binding::amqp(), &props, Vec::new()).unwrap();
        assert_eq!(e.time().map(|t| t.timestamp()), Some(1_764_000_000));
    }

    #[test]
    fn a_plain_amqp_message_is_a_decode_error_with_its_bytes() {
        let props = BasicProperties::default().with_content_type("text/plain".into());
        let err = decode(&Binding::amqp(), &props, b"hello".to_vec()).unwrap_err();
        assert_eq!(err.raw().unwrap().body, b"hello");
    }
}
