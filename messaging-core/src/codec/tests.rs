use super::*;
use crate::event::{EventBuilder, EventExt};
use chrono::TimeZone;
use cloudevents::AttributesWriter;
use proptest::prelude::*;

fn kafka() -> Binding {
    Binding::kafka()
}

/// Events are equivalent when every attribute and extension matches and the data carries the
/// same bytes (the same JSON value, for JSON content types). `stringly` compares extensions in
/// their string form, as binary mode carries them.
fn assert_equivalent(a: &Event, b: &Event, stringly: bool) {
    assert_eq!(a.id(), b.id());
    assert_eq!(a.source(), b.source());
    assert_eq!(a.ty(), b.ty());
    assert_eq!(a.subject(), b.subject());
    assert_eq!(a.time(), b.time());
    assert_eq!(a.datacontenttype(), b.datacontenttype());
    assert_eq!(a.dataschema(), b.dataschema());
    let mut ea: Vec<_> = a
        .iter_extensions()
        .map(|(k, v)| {
            (
                k.to_owned(),
                if stringly {
                    ExtensionValue::String(v.to_string())
                } else {
                    v.clone()
                },
            )
        })
        .collect();
    let mut eb: Vec<_> = b
        .iter_extensions()
        .map(|(k, v)| (k.to_owned(), v.clone()))
        .collect();
    ea.sort_by(|x, y| x.0.cmp(&y.0));
    eb.sort_by(|x, y| x.0.cmp(&y.0));
    assert_eq!(ea, eb);
    match (a.data_bytes(), b.data_bytes()) {
        (None, None) => {}
        (Some(x), Some(y)) => {
            if is_json(a.datacontenttype()) {
                let vx: serde_json::Value = serde_json::from_slice(&x).expect("json data");
                let vy: serde_json::Value = serde_json::from_slice(&y).expect("json data");
                assert_eq!(vx, vy);
            } else {
                assert_eq!(x, y);
            }
        }
        (x, y) => panic!("data differs: {x:?} vs {y:?}"),
    }
}

fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        "\\PC{0,12}".prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(serde_json::Value::from),
            prop::collection::btree_map("[a-zA-Z]{1,6}", inner, 0..4)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

#[derive(Debug, Clone)]
enum Payload {
    None,
    Bytes(Vec<u8>),
    Text(String),
    Json(serde_json::Value),
    JsonBytes(serde_json::Value),
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        Just(Payload::None),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Payload::Bytes),
        "\\PC{0,32}".prop_map(Payload::Text),
        json_value().prop_map(Payload::Json),
        json_value().prop_map(Payload::JsonBytes),
    ]
}

fn extension_value() -> impl Strategy<Value = ExtensionValue> {
    prop_oneof![
        "\\PC{0,16}".prop_map(ExtensionValue::String),
        any::<bool>().prop_map(ExtensionValue::Boolean),
        any::<i64>().prop_map(ExtensionValue::Integer),
    ]
}

prop_compose! {
    fn event()(
        id in "\\PC{1,24}",
        source in "\\PC{1,24}",
        ty in "[a-z.]{1,16}",
        subject in proptest::option::of("\\PC{0,16}"),
        time in proptest::option::of((0i64..4_102_444_800, 0u32..1_000_000_000)),
        payload in payload(),
        schema in proptest::option::of("[a-z]{1,8}"),
        extensions in prop::collection::btree_map("[a-z0-9]{1,20}", extension_value(), 0..5),
    ) -> Event {
        let mut b = EventBuilder::new(source, ty).id(id);
        b = match time {
            Some((s, n)) => b.time(Utc.timestamp_opt(s, n).unwrap()),
            None => b.without_time(),
        };
        if let Some(s) = subject { b = b.subject(s); }
        let has_data = !matches!(payload, Payload::None);
        b = match payload {
            Payload::None => b,
            Payload::Bytes(v) => b.bytes(None, v),
            Payload::Text(t) => b.text(t),
            Payload::Json(v) => b.data("application/json", v),
            Payload::JsonBytes(v) => b.json(&v),
        };
        if let (true, Some(s)) = (has_data, schema) {
            b = b.dataschema(&format!("https://schemas.example.com/{s}"));
        }
        for (k, v) in extensions {
            if !crate::event::ATTRIBUTE_NAMES.contains(&k.as_str()) {
                b = b.extension(&k, v);
            }
        }
        b.build().expect("generated event is valid")
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn binary_round_trip(e in event()) {
        for binding in [Binding::kafka(), Binding::amqp(), Binding::http()] {
            let raw = binding.encode(&e, ContentMode::Binary).unwrap().into_raw();
            let back = binding.decode(raw).unwrap();
            assert_equivalent(&e, &back, true);
        }
    }

    #[test]
    fn structured_round_trip(e in event()) {
        let raw = kafka().encode(&e, ContentMode::Structured).unwrap().into_raw();
        prop_assert_eq!(raw.content_type.as_deref(), Some(STRUCTURED_CONTENT_TYPE));
        let back = kafka().decode(raw).unwrap();
        assert_equivalent(&e, &back, false);
    }

    #[test]
    fn arbitrary_binary_input_never_panics(
        ct in proptest::option::of(prop_oneof![
            Just("application/cloudevents+json".to_owned()),
            Just("application/json".to_owned()),
            "\\PC{0,12}",
        ]),
        headers in prop::collection::vec((
            prop_oneof![
                Just("ce_specversion".to_owned()), Just("ce_id".to_owned()),
                Just("ce_source".to_owned()), Just("ce_type".to_owned()),
                Just("ce_time".to_owned()), Just("ce_dataschema".to_owned()),
                Just("ce_subject".to_owned()), Just("CE_ID".to_owned()),
                "ce_\\PC{0,8}", "\\PC{0,8}",
            ],
            prop_oneof![
                Just(b"1.0".to_vec()), Just(b"0.3".to_vec()),
                Just(b"2024-01-15T10:30:00Z".to_vec()),
                prop::collection::vec(any::<u8>(), 0..16),
            ],
        ), 0..10),
        body in prop::collection::vec(any::<u8>(), 0..64),
    ) {
        let raw = RawMessage { content_type: ct, headers, body };
        match kafka().decode(raw.clone()) {
            Ok(event) => {
                // Whatever decodes must encode again.
                kafka().encode(&event, ContentMode::Binary).unwrap();
                kafka().encode(&event, ContentMode::Structured).unwrap();
            }
            Err(e) => prop_assert_eq!(e.raw(), Some(&raw)),
        }
    }

    #[test]
    fn arbitrary_structured_input_never_panics(
        body in prop_oneof![
            prop::collection::vec(any::<u8>(), 0..64),
            json_value().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            (json_value(), "\\PC{0,8}", "\\PC{0,8}").prop_map(|(data, id, v)| serde_json::to_vec(
                &serde_json::json!({"specversion": v, "id": id, "source": "s", "type": "t", "data": data})
            ).unwrap()),
            (json_value(), "\\PC{0,8}").prop_map(|(data, id)| serde_json::to_vec(
                &serde_json::json!({"specversion": "1.0", "id": id, "source": "s", "type": "t", "data": data, "datacontenttype": "text/plain", "ext": data})
            ).unwrap()),
        ],
    ) {
        let raw = RawMessage {
            content_type: Some(STRUCTURED_CONTENT_TYPE.into()),
            headers: vec![],
            body,
        };
        if let Ok(event) = kafka().decode(raw) {
            kafka().encode(&event, ContentMode::Structured).unwrap();
        }
    }
}

fn order_created() -> Event {
    EventBuilder::new("order-service", "order.created")
        .id("evt-uuid-1234")
        .time(Utc.with_ymd_and_hms(2024, 1, 15, 10, 30, 0).unwrap())
        .json(&serde_json::json!({"orderId": "ORD-5678", "amount": 99.99, "currency": "USD"}))
        .ordering_key("ORD-5678")
        .build()
        .unwrap()
}

#[test]
fn kafka_binary_headers_follow_the_binding() {
    let e = order_created();
    let raw = kafka().encode(&e, ContentMode::Binary).unwrap().into_raw();
    assert_eq!(raw.content_type.as_deref(), Some("application/json"));
    assert_eq!(raw.header("ce_specversion"), Some(&b"1.0"[..]));
    assert_eq!(raw.header("ce_id"), Some(&b"evt-uuid-1234"[..]));
    assert_eq!(raw.header("ce_type"), Some(&b"order.created"[..]));
    assert_eq!(raw.header("ce_time"), Some(&b"2024-01-15T10:30:00Z"[..]));
    assert_eq!(raw.header("ce_partitionkey"), Some(&b"ORD-5678"[..]));
    let v: serde_json::Value = serde_json::from_slice(&raw.body).unwrap();
    assert_eq!(v["orderId"], "ORD-5678");
}

#[test]
fn amqp_accepts_underscore_prefix() {
    let e = order_created();
    let mut raw = Binding::amqp()
        .encode(&e, ContentMode::Binary)
        .unwrap()
        .into_raw();
    assert!(raw.header("cloudEvents:id").is_some());
    for (k, _) in &mut raw.headers {
        *k = k.replace("cloudEvents:", "cloudEvents_");
    }
    let back = Binding::amqp().decode(raw).unwrap();
    assert_eq!(back.id(), "evt-uuid-1234");
    assert_eq!(back.ordering_key(), Some("ORD-5678"));
}

#[test]
fn structured_body_is_the_json_event_format() {
    let e = order_created();
    let raw = kafka()
        .encode(&e, ContentMode::Structured)
        .unwrap()
        .into_raw();
    let v: serde_json::Value = serde_json::from_slice(&raw.body).unwrap();
    assert_eq!(v["specversion"], "1.0");
    assert_eq!(v["type"], "order.created");
    assert_eq!(v["data"]["amount"], 99.99);
    assert_eq!(v["partitionkey"], "ORD-5678");
    assert!(v.get("data_base64").is_none());
}

#[test]
fn binary_data_uses_base64_in_structured_mode() {
    let e = EventBuilder::new("s", "t")
        .bytes(None, vec![0xff, 0, 1])
        .build()
        .unwrap();
    let raw = kafka()
        .encode(&e, ContentMode::Structured)
        .unwrap()
        .into_raw();
    let v: serde_json::Value = serde_json::from_slice(&raw.body).unwrap();
    assert_eq!(v["data_base64"], "/wAB");
    let back = kafka().decode(raw).unwrap();
    assert_eq!(back.data_bytes().unwrap().as_ref(), &[0xff, 0, 1]);
}

fn headers(pairs: &[(&str, &str)]) -> Vec<(String, Vec<u8>)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.as_bytes().to_vec()))
        .collect()
}

fn decode_err(ct: Option<&str>, h: &[(&str, &str)], body: &[u8]) -> DecodeError {
    let raw = RawMessage {
        content_type: ct.map(Into::into),
        headers: headers(h),
        body: body.to_vec(),
    };
    let err = kafka().decode(raw.clone()).unwrap_err();
    assert_eq!(err.raw(), Some(&raw), "decode error keeps the raw message");
    assert!(!err.is_transient());
    err
}

#[test]
fn plain_message_is_not_a_cloudevent() {
    let err = decode_err(Some("application/json"), &[("foo", "bar")], b"{}");
    assert_eq!(err.kind(), DecodeErrorKind::NotCloudEvent);
}

#[test]
fn missing_required_attribute() {
    let err = decode_err(
        None,
        &[("ce_specversion", "1.0"), ("ce_id", "1"), ("ce_type", "t")],
        b"",
    );
    assert_eq!(err.kind(), DecodeErrorKind::MissingAttribute);
    assert!(err.detail().contains("source"), "{err}");
    let err = decode_err(
        None,
        &[
            ("ce_specversion", "1.0"),
            ("ce_id", ""),
            ("ce_source", "s"),
            ("ce_type", "t"),
        ],
        b"",
    );
    assert_eq!(err.kind(), DecodeErrorKind::MissingAttribute);
}

#[test]
fn wrong_specversion_and_bad_time() {
    let err = decode_err(
        None,
        &[
            ("ce_specversion", "0.3"),
            ("ce_id", "1"),
            ("ce_source", "s"),
            ("ce_type", "t"),
        ],
        b"",
    );
    assert_eq!(err.kind(), DecodeErrorKind::UnsupportedSpecVersion);
    let err = decode_err(
        None,
        &[
            ("ce_specversion", "1.0"),
            ("ce_id", "1"),
            ("ce_source", "s"),
            ("ce_type", "t"),
            ("ce_time", "yesterday"),
        ],
        b"",
    );
    assert_eq!(err.kind(), DecodeErrorKind::InvalidAttribute);
    assert!(err.detail().contains("time"), "{err}");
}

#[test]
fn non_utf8_header_value() {
    let raw = RawMessage {
        content_type: None,
        headers: vec![
            ("ce_specversion".into(), b"1.0".to_vec()),
            ("ce_id".into(), vec![0xff, 0xfe]),
        ],
        body: vec![],
    };
    let err = kafka().decode(raw).unwrap_err();
    assert_eq!(err.kind(), DecodeErrorKind::InvalidHeader);
}

#[test]
fn invalid_structured_bodies() {
    let ct = Some(STRUCTURED_CONTENT_TYPE);
    assert_eq!(
        decode_err(ct, &[], b"not json").kind(),
        DecodeErrorKind::InvalidStructured
    );
    assert_eq!(
        decode_err(ct, &[], b"[1,2]").kind(),
        DecodeErrorKind::InvalidStructured
    );
    assert_eq!(
        decode_err(ct, &[], br#"{"specversion":"1.0","source":"s","type":"t"}"#).kind(),
        DecodeErrorKind::MissingAttribute
    );
    assert_eq!(
        decode_err(
            ct,
            &[],
            br#"{"specversion":"1.0","id":"1","source":"s","type":"t","Bad":1}"#
        )
        .kind(),
        DecodeErrorKind::InvalidAttribute
    );
    assert_eq!(
        decode_err(Some("application/cloudevents-batch+json"), &[], b"[]").kind(),
        DecodeErrorKind::UnsupportedMode
    );
}

#[test]
fn encode_rejects_invalid_extension_names() {
    let mut e = order_created();
    e.set_extension("Not-Valid", "x");
    let err = kafka().encode(&e, ContentMode::Binary).unwrap_err();
    assert!(err.to_string().contains("Not-Valid"));
    let publish: crate::PublishError = err.into();
    assert_eq!(publish.kind(), crate::PublishErrorKind::Encode);
}

#[test]
fn dataschema_without_data_round_trips() {
    let mut e = EventBuilder::new("s", "t").id("1").build().unwrap();
    e.set_dataschema(Some(
        url::Url::parse("https://schemas.example.com/x").unwrap(),
    ));
    let raw = kafka().encode(&e, ContentMode::Binary).unwrap().into_raw();
    let back = kafka().decode(raw).unwrap();
    assert_equivalent(&e, &back, true);
}

#[test]
fn binary_mode_refuses_cloudevents_content_type_data() {
    let e = EventBuilder::new("s", "t")
        .data("application/cloudevents+json", serde_json::json!({}))
        .build()
        .unwrap();
    assert!(kafka().encode(&e, ContentMode::Binary).is_err());
    assert!(kafka().encode(&e, ContentMode::Structured).is_ok());
}

#[test]
fn text_data_in_binary_mode_comes_back_as_text() {
    for ct in [
        "text/plain",
        "text/plain; charset=utf-8",
        "text/csv",
        "application/xml",
        "application/atom+xml",
    ] {
        let raw = RawMessage {
            content_type: Some(ct.into()),
            headers: headers(&[
                ("ce_specversion", "1.0"),
                ("ce_id", "1"),
                ("ce_source", "s"),
                ("ce_type", "t"),
            ]),
            body: "héllo <b/>".as_bytes().to_vec(),
        };
        let e = kafka().decode(raw).unwrap();
        assert_eq!(
            e.data(),
            Some(&Data::String("héllo <b/>".into())),
            "{ct} data is text"
        );
        let structured: serde_json::Value = serde_json::from_slice(&encode_structured(&e)).unwrap();
        assert_eq!(structured["data"], "héllo <b/>", "{ct}: {structured}");
        assert!(structured.get("data_base64").is_none());
    }
    // Bytes that are not UTF-8, a charset other than UTF-8 and non-text types stay binary.
    for (ct, body) in [
        ("text/plain", &[0xff, 0xfe][..]),
        ("text/plain; charset=iso-8859-1", b"caf\xe9"),
        ("application/octet-stream", b"hello"),
    ] {
        let raw = RawMessage {
            content_type: Some(ct.into()),
            headers: headers(&[
                ("ce_specversion", "1.0"),
                ("ce_id", "1"),
                ("ce_source", "s"),
                ("ce_type", "t"),
            ]),
            body: body.to_vec(),
        };
        let e = kafka().decode(raw).unwrap();
        assert_eq!(e.data(), Some(&Data::Binary(body.to_vec())), "{ct}");
    }
}

#[test]
fn a_structured_json_event_without_a_content_type_is_recognised_by_its_body() {
    let body =
        br#" {"specversion":"1.0","id":"e1","source":"boto3","type":"t","ext":7,"data":{"a":1}}"#;
    for ct in [
        None,
        Some("application/json"),
        Some("application/json; charset=utf-8"),
    ] {
        let raw = RawMessage {
            content_type: ct.map(Into::into),
            headers: Vec::new(),
            body: body.to_vec(),
        };
        let e = kafka()
            .decode(raw)
            .unwrap_or_else(|err| panic!("{ct:?}: {err}"));
        assert_eq!((e.id(), e.ty()), ("e1", "t"));
        assert_eq!(e.extension("ext"), Some(&ExtensionValue::Integer(7)));
        assert_eq!(
            e.data_json::<serde_json::Value>().unwrap(),
            serde_json::json!({"a": 1})
        );
    }
    // A JSON object that names a specversion but is not a valid event says why.
    let err = decode_err(None, &[], br#"{"specversion":"1.0","id":"e1"}"#);
    assert_eq!(err.kind(), DecodeErrorKind::MissingAttribute);
    // JSON without specversion, and a JSON event under a non-JSON content type, are not events.
    let err = decode_err(None, &[], br#"{"id":"e1","source":"s","type":"t"}"#);
    assert_eq!(err.kind(), DecodeErrorKind::NotCloudEvent);
    let err = decode_err(Some("text/plain"), &[], body);
    assert_eq!(err.kind(), DecodeErrorKind::NotCloudEvent);
    // Binary-mode headers win over the body.
    let raw = RawMessage {
        content_type: None,
        headers: headers(&[
            ("ce_specversion", "1.0"),
            ("ce_id", "h"),
            ("ce_source", "s"),
            ("ce_type", "t"),
        ]),
        body: body.to_vec(),
    };
    assert_eq!(kafka().decode(raw).unwrap().id(), "h");
}

#[test]
fn header_names_match_exactly_or_case_insensitively_and_attributes_once() {
    let base: &[(&str, &[u8])] = &[
        ("ce_specversion", b"1.0"),
        ("CE_ID", b"1"),
        ("Ce_Source", b"/s"),
        ("ce_TYPE", b"t"),
        ("ce_datacontenttype", b"text/plain"),
        ("ce_datacontenttype", b"application/json"),
        ("ce_Traceid", b"abc"),
        ("other", b"ignored"),
    ];
    let event = kafka()
        .decode_parts(None, base.iter().copied(), b"{}")
        .expect("decodes");
    assert_eq!(
        (event.id(), event.source().as_str(), event.ty()),
        ("1", "/s", "t")
    );
    // The last `datacontenttype` header wins, as it always has.
    assert_eq!(event.datacontenttype(), Some("application/json"));
    assert_eq!(
        event.extension("traceid").map(ToString::to_string),
        Some("abc".to_owned())
    );

    for (twice, name) in [("ce_id", "id"), ("CE_TIME", "time"), ("ce_x1", "x1")] {
        let mut headers = base.to_vec();
        let value: &[u8] = if name == "time" {
            b"2026-12-07T20:00:00Z"
        } else {
            b"2"
        };
        headers.push((twice, value));
        headers.push((twice, value));
        let err = kafka()
            .decode_parts(None, headers.iter().copied(), b"{}")
            .expect_err("an attribute twice");
        assert_eq!(err.kind(), DecodeErrorKind::InvalidAttribute, "{err}");
        assert!(
            err.to_string().contains(&format!("{name:?} appears twice")),
            "{err}"
        );
    }
}

#[test]
fn attribute_index_follows_the_attribute_table() {
    for (i, name) in ATTRS.iter().enumerate() {
        assert_eq!(attribute_index(name), Some(i), "{name}");
    }
    assert_eq!(attribute_index("datacontenttype"), Some(ATTRS.len()));
    assert_eq!(attribute_index("traceparent"), None);
}
