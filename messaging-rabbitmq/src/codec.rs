//! CloudEvents AMQP protocol binding: binary mode as `cloudEvents:` application properties
//! plus the `content-type` property; structured mode as `application/cloudevents+json`.

use std::borrow::Cow;

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use messaging_core::codec::{Binding, ContentMode, EncodeError};
use messaging_core::{DecodeError, Event, RawMessage};

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

fn value_bytes(v: &AMQPValue) -> Option<Cow<'_, [u8]>> {
    let text = |s: String| Some(Cow::Owned(s.into_bytes()));
    match v {
        AMQPValue::LongString(s) => Some(Cow::Borrowed(s.as_bytes())),
        AMQPValue::ShortString(s) => Some(Cow::Borrowed(s.as_str().as_bytes())),
        AMQPValue::Boolean(b) => text(b.to_string()),
        AMQPValue::ShortShortInt(n) => text(n.to_string()),
        AMQPValue::ShortShortUInt(n) => text(n.to_string()),
        AMQPValue::ShortInt(n) => text(n.to_string()),
        AMQPValue::ShortUInt(n) => text(n.to_string()),
        AMQPValue::LongInt(n) => text(n.to_string()),
        AMQPValue::LongUInt(n) => text(n.to_string()),
        AMQPValue::LongLongInt(n) => text(n.to_string()),
        AMQPValue::Timestamp(n) => text(n.to_string()),
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
    let headers: Vec<(&str, Cow<'_, [u8]>)> = props
        .headers()
        .as_ref()
        .map(|h| {
            h.inner()
                .iter()
                .filter_map(|(k, v)| value_bytes(v).map(|b| (k.as_str(), b)))
                .collect()
        })
        .unwrap_or_default();
    binding
        .decode_parts_owned(
            content_type,
            headers.iter().map(|(k, v)| (*k, v.as_ref())),
            body,
        )
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
                headers: headers
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.to_vec()))
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

    #[test]
    fn a_plain_amqp_message_is_a_decode_error_with_its_bytes() {
        let props = BasicProperties::default().with_content_type("text/plain".into());
        let err = decode(&Binding::amqp(), &props, b"hello".to_vec()).unwrap_err();
        assert_eq!(err.raw().unwrap().body, b"hello");
    }
}
