//! One codec for the two CloudEvents content modes, shared by every transport.
//!
//! - **Binary mode**: context attributes travel as transport headers named with the binding's
//!   prefix (`ce_id` on Kafka, `cloudEvents:id` on AMQP), `datacontenttype` as the transport's
//!   content type, and the data as the body, byte for byte.
//! - **Structured mode**: the whole event is the body, in the CloudEvents JSON event format,
//!   with content type `application/cloudevents+json`.
//!
//! An adapter picks a [`Binding`] for its transport, calls [`Binding::encode`] on the way out and
//! [`Binding::decode`] on the way in, and maps [`Encoded`] / [`RawMessage`] onto its own header
//! model. Decoding never panics: input that is not a valid CloudEvent gives a [`DecodeError`] that
//! keeps the raw message, so the consumer runtime can dead-letter it without losing anything.
//!
//! In binary mode extension values travel as strings: integer and boolean extensions come back as
//! their canonical string form, as the CloudEvents protocol bindings specify.

use std::borrow::Cow;
use std::fmt;

use base64::Engine as _;
use chrono::{DateTime, SecondsFormat, Utc};
use cloudevents::event::ExtensionValue;
use cloudevents::event::{EventBuilder as _, EventBuilderV10};
use cloudevents::{AttributesReader, AttributesWriter, Data, Event};
use serde::ser::{SerializeMap, Serializer};

use crate::event::is_valid_extension_name;

/// Content type of a structured-mode message.
pub const STRUCTURED_CONTENT_TYPE: &str = "application/cloudevents+json";
const BATCH_CONTENT_TYPE: &str = "application/cloudevents-batch+json";

/// How an event is laid out on the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ContentMode {
    /// Attributes as headers, data as the body.
    #[default]
    Binary,
    /// The whole event as `application/cloudevents+json` in the body.
    Structured,
}

/// A message as a transport carries it: content type, headers and body. Header values are bytes
/// because some transports (Kafka) allow any bytes there.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RawMessage {
    /// The transport's content type (Kafka `content-type` header, AMQP `content-type` property,
    /// SQS attribute).
    pub content_type: Option<String>,
    /// Transport headers in arrival order.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The body.
    pub body: Vec<u8>,
}

impl RawMessage {
    /// The first header named `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_slice())
    }
}

/// One header value as a transport delivers it. Most transports carry strings (bytes); a typed
/// transport such as AMQP also carries native values, which the CloudEvents AMQP binding
/// requires a receiver to interpret like their canonical string forms: a timestamp or an
/// integer (milliseconds since the epoch, the AMQP 1.0 timestamp) for `time`, an integer or a
/// boolean for an extension of that type, binary data for a binary extension.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum HeaderValue<'a> {
    /// The canonical string form, as bytes (UTF-8 expected).
    Text(&'a [u8]),
    /// A boolean.
    Bool(bool),
    /// An integer. As `time`, milliseconds since the Unix epoch.
    Int(i64),
    /// A point in time.
    Time(DateTime<Utc>),
    /// Binary data (its canonical string form is base64).
    Binary(&'a [u8]),
}

impl<'a> From<&'a [u8]> for HeaderValue<'a> {
    fn from(bytes: &'a [u8]) -> Self {
        HeaderValue::Text(bytes)
    }
}

/// An encoded event borrowing from the event and the binding where it can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded<'a> {
    /// The transport content type to set.
    pub content_type: Option<Cow<'a, str>>,
    /// Headers to set, in order.
    pub headers: Vec<(Cow<'a, str>, Cow<'a, [u8]>)>,
    /// The body.
    pub body: Cow<'a, [u8]>,
}

impl Encoded<'_> {
    /// Bytes this message occupies on the wire, roughly: body plus header names and values.
    pub fn wire_size(&self) -> usize {
        self.body.len()
            + self.content_type.as_ref().map_or(0, |c| c.len())
            + self
                .headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
    }

    /// An owned copy.
    pub fn into_raw(self) -> RawMessage {
        RawMessage {
            content_type: self.content_type.map(Cow::into_owned),
            headers: self
                .headers
                .into_iter()
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
            body: self.body.into_owned(),
        }
    }
}

/// Failure to encode an event for a transport.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EncodeError(String);

impl fmt::Display for EncodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "cannot encode event: {}", self.0)
    }
}

impl std::error::Error for EncodeError {}

impl From<EncodeError> for crate::PublishError {
    fn from(e: EncodeError) -> Self {
        crate::PublishError::new(crate::PublishErrorKind::Encode)
            .with_detail(e.0.clone())
            .with_source(e)
    }
}

/// Why an incoming message is not a valid CloudEvent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum DecodeErrorKind {
    /// Neither structured content type nor binary-mode `specversion` header.
    NotCloudEvent,
    /// `specversion` other than `1.0`.
    UnsupportedSpecVersion,
    /// A required attribute (`id`, `source`, `type`) is missing or empty.
    MissingAttribute,
    /// An attribute value or extension name is malformed.
    InvalidAttribute,
    /// A header value is not UTF-8.
    InvalidHeader,
    /// A structured-mode body is not a valid JSON event.
    InvalidStructured,
    /// A content mode this codec does not handle (batched mode).
    UnsupportedMode,
}

impl fmt::Display for DecodeErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::NotCloudEvent => "message is not a cloudevent",
            Self::UnsupportedSpecVersion => "unsupported cloudevents specversion",
            Self::MissingAttribute => "required cloudevents attribute missing",
            Self::InvalidAttribute => "invalid cloudevents attribute",
            Self::InvalidHeader => "header value is not utf-8",
            Self::InvalidStructured => "invalid structured-mode cloudevent",
            Self::UnsupportedMode => "unsupported cloudevents content mode",
        })
    }
}

/// An incoming message that is not a valid CloudEvent. Keeps the raw message, so the consumer
/// runtime can dead-letter it as it arrived. Never transient: the same bytes fail the same way.
#[derive(Debug, Clone)]
pub struct DecodeError {
    kind: DecodeErrorKind,
    detail: String,
    raw: Option<Box<RawMessage>>,
}

impl DecodeError {
    /// A decode error of `kind` with a detail message.
    pub fn new(kind: DecodeErrorKind, detail: impl Into<String>) -> Self {
        Self {
            kind,
            detail: detail.into(),
            raw: None,
        }
    }

    /// Attaches the raw message that failed to decode.
    #[must_use]
    pub fn with_raw(mut self, raw: RawMessage) -> Self {
        self.raw = Some(Box::new(raw));
        self
    }

    /// What is wrong.
    pub fn kind(&self) -> DecodeErrorKind {
        self.kind
    }

    /// Details, naming the offending attribute or header.
    pub fn detail(&self) -> &str {
        &self.detail
    }

    /// The raw message as it arrived.
    pub fn raw(&self) -> Option<&RawMessage> {
        self.raw.as_deref()
    }

    /// Always `false`: decoding the same bytes again fails again.
    pub fn is_transient(&self) -> bool {
        false
    }
}

impl fmt::Display for DecodeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.detail)
    }
}

impl std::error::Error for DecodeError {}

const ATTRS: [&str; 7] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "dataschema",
];

/// The position of `name` in [`ATTRS`], or `ATTRS.len()` for `datacontenttype`; `None` for an
/// extension. A `match` on the name: the compiler switches on its length first.
fn attribute_index(name: &str) -> Option<usize> {
    Some(match name {
        "specversion" => 0,
        "id" => 1,
        "source" => 2,
        "type" => 3,
        "subject" => 4,
        "time" => 5,
        "dataschema" => 6,
        "datacontenttype" => ATTRS.len(),
        _ => return None,
    })
}

/// How one transport names CloudEvents attributes in its headers.
#[derive(Debug, Clone)]
pub struct Binding {
    prefixes: Vec<String>,
    names: [String; ATTRS.len()],
}

impl Binding {
    /// A binding whose binary-mode headers are `prefix` + attribute name.
    pub fn new(prefix: &str) -> Self {
        Self {
            prefixes: vec![prefix.to_owned()],
            names: ATTRS.map(|a| format!("{prefix}{a}")),
        }
    }

    /// Also accepts headers with `prefix` when decoding (encoding keeps the first prefix).
    #[must_use]
    pub fn with_alternate_prefix(mut self, prefix: &str) -> Self {
        self.prefixes.push(prefix.to_owned());
        self
    }

    /// Kafka protocol binding: `ce_` headers.
    pub fn kafka() -> Self {
        Self::new("ce_")
    }

    /// AMQP protocol binding: `cloudEvents:` application properties (`cloudEvents_` accepted).
    pub fn amqp() -> Self {
        Self::new("cloudEvents:").with_alternate_prefix("cloudEvents_")
    }

    /// HTTP protocol binding: `ce-` headers.
    pub fn http() -> Self {
        Self::new("ce-")
    }

    /// The header name for `attribute` in binary mode.
    pub fn header_name(&self, attribute: &str) -> String {
        format!("{}{attribute}", self.prefixes[0])
    }

    /// Encodes `event` in `mode`.
    pub fn encode<'a>(
        &'a self,
        event: &'a Event,
        mode: ContentMode,
    ) -> Result<Encoded<'a>, EncodeError> {
        if event.specversion().as_str() != "1.0" {
            return Err(EncodeError("only cloudevents 1.0 is supported".into()));
        }
        for (name, _) in event.iter_extensions() {
            if !is_valid_extension_name(name) {
                return Err(EncodeError(format!(
                    "extension name {name:?} is not 1-20 lowercase letters or digits"
                )));
            }
        }
        match mode {
            ContentMode::Binary => {
                // A receiver would take such a content type for structured or batched mode.
                if event.datacontenttype().is_some_and(|ct| {
                    let ct = ct.trim_start();
                    starts_with_ignore_case(ct, STRUCTURED_CONTENT_TYPE)
                        || starts_with_ignore_case(ct, BATCH_CONTENT_TYPE)
                }) {
                    return Err(EncodeError(
                        "data of type application/cloudevents+json needs structured mode".into(),
                    ));
                }
                Ok(self.encode_binary(event))
            }
            ContentMode::Structured => Ok(Encoded {
                content_type: Some(Cow::Borrowed(STRUCTURED_CONTENT_TYPE)),
                headers: Vec::new(),
                body: Cow::Owned(encode_structured(event)),
            }),
        }
    }

    fn encode_binary<'a>(&'a self, event: &'a Event) -> Encoded<'a> {
        let n = &self.names;
        let mut headers: Vec<(Cow<'a, str>, Cow<'a, [u8]>)> =
            Vec::with_capacity(5 + event.iter_extensions().size_hint().0);
        let mut put =
            |name: &'a str, value: Cow<'a, [u8]>| headers.push((Cow::Borrowed(name), value));
        put(&n[0], Cow::Borrowed(b"1.0"));
        put(&n[1], Cow::Borrowed(event.id().as_bytes()));
        put(&n[2], Cow::Borrowed(event.source().as_bytes()));
        put(&n[3], Cow::Borrowed(event.ty().as_bytes()));
        if let Some(s) = event.subject() {
            put(&n[4], Cow::Borrowed(s.as_bytes()));
        }
        if let Some(t) = event.time() {
            put(&n[5], Cow::Owned(format_time(t).into_bytes()));
        }
        if let Some(s) = event.dataschema() {
            put(&n[6], Cow::Borrowed(s.as_str().as_bytes()));
        }
        for (name, value) in event.iter_extensions() {
            let value = match value {
                ExtensionValue::String(s) => Cow::Borrowed(s.as_bytes()),
                other => Cow::Owned(other.to_string().into_bytes()),
            };
            headers.push((Cow::Owned(format!("{}{name}", self.prefixes[0])), value));
        }
        let body = match event.data() {
            None => Cow::Borrowed(&[][..]),
            Some(Data::Binary(b)) => Cow::Borrowed(b.as_slice()),
            Some(Data::String(s)) => Cow::Borrowed(s.as_bytes()),
            Some(Data::Json(v)) => Cow::Owned(serde_json::to_vec(v).unwrap_or_default()),
        };
        Encoded {
            content_type: event.datacontenttype().map(Cow::Borrowed),
            headers,
            body,
        }
    }

    /// Decodes a raw message; on failure the error keeps `raw`.
    pub fn decode(&self, raw: RawMessage) -> Result<Event, DecodeError> {
        let result = self.decode_parts(
            raw.content_type.as_deref(),
            raw.headers.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
            &raw.body,
        );
        result.map_err(|e| e.with_raw(raw))
    }

    /// Decodes from borrowed parts, so an adapter need not build a [`RawMessage`] for a message
    /// that decodes fine. The error carries no raw message; attach it with
    /// [`DecodeError::with_raw`].
    ///
    /// Header values are bytes (`&[u8]`, the string form) or typed [`HeaderValue`]s.
    pub fn decode_parts<'h, V: Into<HeaderValue<'h>>>(
        &self,
        content_type: Option<&str>,
        headers: impl IntoIterator<Item = (&'h str, V)>,
        body: &[u8],
    ) -> Result<Event, DecodeError> {
        match Self::mode_of(content_type)? {
            ContentMode::Structured => decode_structured(body),
            ContentMode::Binary => match self.decode_binary(content_type, headers) {
                Ok((mut event, ct)) => {
                    attach(&mut event, ct, || body.to_vec(), body.is_empty());
                    Ok(event)
                }
                Err(e) if e.kind() == DecodeErrorKind::NotCloudEvent => {
                    sniff_structured(content_type, body).unwrap_or(Err(e))
                }
                Err(e) => Err(e),
            },
        }
    }

    /// Like [`decode_parts`](Self::decode_parts), taking the body by value: in binary mode the
    /// body becomes the event's data without a copy. On failure the body comes back with the
    /// error.
    pub fn decode_parts_owned<'h, V: Into<HeaderValue<'h>>>(
        &self,
        content_type: Option<&str>,
        headers: impl IntoIterator<Item = (&'h str, V)>,
        body: Vec<u8>,
    ) -> Result<Event, (DecodeError, Vec<u8>)> {
        let mode = match Self::mode_of(content_type) {
            Ok(m) => m,
            Err(e) => return Err((e, body)),
        };
        match mode {
            ContentMode::Structured => decode_structured(&body).map_err(|e| (e, body)),
            ContentMode::Binary => {
                let empty = body.is_empty();
                match self.decode_binary(content_type, headers) {
                    Ok((mut event, ct)) => {
                        attach(&mut event, ct, || body, empty);
                        Ok(event)
                    }
                    Err(e) if e.kind() == DecodeErrorKind::NotCloudEvent => {
                        match sniff_structured(content_type, &body) {
                            Some(result) => result.map_err(|e| (e, body)),
                            None => Err((e, body)),
                        }
                    }
                    Err(e) => Err((e, body)),
                }
            }
        }
    }

    fn mode_of(content_type: Option<&str>) -> Result<ContentMode, DecodeError> {
        if let Some(ct) = content_type {
            // No allocation: this runs for every message.
            let ct = ct.trim_start();
            if starts_with_ignore_case(ct, STRUCTURED_CONTENT_TYPE) {
                return Ok(ContentMode::Structured);
            }
            if starts_with_ignore_case(ct, BATCH_CONTENT_TYPE) {
                return Err(DecodeError::new(
                    DecodeErrorKind::UnsupportedMode,
                    "batched content mode is not supported",
                ));
            }
        }
        Ok(ContentMode::Binary)
    }

    fn attribute_of<'h>(&self, header: &'h str) -> Option<&'h str> {
        // Exact prefixes first: a byte comparison, for nearly every header.
        if let Some(attr) = self
            .prefixes
            .iter()
            .find_map(|p| header.strip_prefix(p.as_str()))
        {
            return Some(attr);
        }
        self.prefixes.iter().find_map(|p| {
            let head = header.get(..p.len())?;
            head.eq_ignore_ascii_case(p).then(|| &header[p.len()..])
        })
    }

    /// Every attribute but the data; returns the event and the data's content type.
    ///
    /// Values are collected first and the event is built once at the end, so the builder (a
    /// large value) is not moved through every header's match arm.
    fn decode_binary<'h, V: Into<HeaderValue<'h>>>(
        &self,
        content_type: Option<&str>,
        headers: impl IntoIterator<Item = (&'h str, V)>,
    ) -> Result<(Event, Option<String>), DecodeError> {
        let mut specversion = None;
        let mut seen: u16 = 0;
        let mut header_ct: Option<Cow<'h, str>> = None;
        let mut extensions: Vec<(String, Native<'h>)> = Vec::new();
        let mut schema = None;
        let (mut id, mut source, mut ty) = (None, None, None);
        let (mut subject, mut time) = (None, None);
        for (name, value) in headers {
            let Some(attr) = self.attribute_of(name) else {
                continue;
            };
            let value = Native::of(name, value.into())?;
            // Names are almost always lowercase already: matched as they are, and lowercased
            // (one allocation) only when they are not.
            let attr: Cow<'_, str> = if attr.bytes().any(|b| b.is_ascii_uppercase()) {
                Cow::Owned(attr.to_ascii_lowercase())
            } else {
                Cow::Borrowed(attr)
            };
            let Some(i) = attribute_index(&attr) else {
                if !is_valid_extension_name(&attr) {
                    return Err(invalid(format!(
                        "extension name {attr:?} is not 1-20 lowercase letters or digits"
                    )));
                }
                if extensions.iter().any(|(n, _)| *n == attr) {
                    return Err(invalid(format!("extension {attr:?} appears twice")));
                }
                extensions.push((attr.into_owned(), value));
                continue;
            };
            if i == ATTRS.len() {
                header_ct = Some(value.into_text());
                continue;
            }
            if seen & (1 << i) != 0 {
                return Err(invalid(format!("attribute {:?} appears twice", ATTRS[i])));
            }
            seen |= 1 << i;
            if (1..=3).contains(&i) && value.is_empty_text() {
                return Err(DecodeError::new(
                    DecodeErrorKind::MissingAttribute,
                    format!("attribute {:?} is empty", ATTRS[i]),
                ));
            }
            match i {
                0 => specversion = Some(value.into_text()),
                1 => id = Some(value.into_text()),
                2 => source = Some(value.into_text()),
                3 => ty = Some(value.into_text()),
                4 => subject = Some(value.into_text()),
                5 => time = Some(value.into_time()?),
                // `dataschema`, checked below, when the data is known.
                _ => schema = Some(value.into_text()),
            }
        }
        match specversion.as_deref() {
            None => {
                return Err(DecodeError::new(
                    DecodeErrorKind::NotCloudEvent,
                    format!(
                        "no structured content type and no {:?} header",
                        self.names[0]
                    ),
                ));
            }
            Some("1.0") => {}
            Some(other) => {
                return Err(DecodeError::new(
                    DecodeErrorKind::UnsupportedSpecVersion,
                    format!("specversion {other:?}"),
                ));
            }
        }
        let (Some(id), Some(source), Some(ty)) = (id, source, ty) else {
            let missing = [seen & 2, seen & 4, seen & 8]
                .iter()
                .position(|bit| *bit == 0)
                .unwrap_or(0);
            return Err(DecodeError::new(
                DecodeErrorKind::MissingAttribute,
                format!(
                    "attribute {:?} is missing",
                    ["id", "source", "type"][missing]
                ),
            ));
        };
        let ct = content_type
            .map(str::to_owned)
            .or(header_ct.map(Cow::into_owned));
        let schema = schema
            .map(|value| {
                url::Url::parse(&value)
                    .map_err(|e| invalid(format!("attribute \"dataschema\" is not a uri ({e})")))
            })
            .transpose()?;
        let mut b = EventBuilderV10::new()
            .id(id)
            .source(source.into_owned())
            .ty(ty);
        if let Some(subject) = subject {
            b = b.subject(subject);
        }
        if let Some(time) = time {
            b = b.time(time);
        }
        for (name, value) in extensions {
            b = b.extension(&name, value.into_extension());
        }
        let mut event = b.build().map_err(|e| invalid(e.to_string()))?;
        if schema.is_some() {
            event.set_dataschema(schema);
        }
        Ok((event, ct))
    }
}

/// A header value checked for what the CloudEvents type system can take from it.
enum Native<'h> {
    Text(Cow<'h, str>),
    Bool(bool),
    Int(i64),
    Time(DateTime<Utc>),
}

impl<'h> Native<'h> {
    fn of(name: &str, value: HeaderValue<'h>) -> Result<Self, DecodeError> {
        Ok(match value {
            HeaderValue::Text(bytes) => {
                Native::Text(Cow::Borrowed(std::str::from_utf8(bytes).map_err(|_| {
                    DecodeError::new(
                        DecodeErrorKind::InvalidHeader,
                        format!("header {name:?} is not utf-8"),
                    )
                })?))
            }
            HeaderValue::Bool(b) => Native::Bool(b),
            HeaderValue::Int(i) => Native::Int(i),
            HeaderValue::Time(t) => Native::Time(t),
            HeaderValue::Binary(bytes) => Native::Text(Cow::Owned(
                base64::engine::general_purpose::STANDARD.encode(bytes),
            )),
        })
    }

    fn is_empty_text(&self) -> bool {
        matches!(self, Native::Text(t) if t.is_empty())
    }

    /// The canonical string form.
    fn into_text(self) -> Cow<'h, str> {
        match self {
            Native::Text(t) => t,
            Native::Bool(b) => Cow::Borrowed(if b { "true" } else { "false" }),
            Native::Int(i) => Cow::Owned(i.to_string()),
            Native::Time(t) => Cow::Owned(format_time(&t)),
        }
    }

    /// `time`: an RFC 3339 string, a timestamp, or milliseconds since the epoch.
    fn into_time(self) -> Result<DateTime<Utc>, DecodeError> {
        match self {
            Native::Text(value) => DateTime::parse_from_rfc3339(&value)
                .map(|t| t.with_timezone(&Utc))
                .map_err(|e| {
                    invalid(format!(
                        "attribute \"time\" is not rfc 3339 ({e}): {value:?}"
                    ))
                }),
            Native::Time(t) => Ok(t),
            Native::Int(ms) => DateTime::from_timestamp_millis(ms).ok_or_else(|| {
                invalid(format!(
                    "attribute \"time\" {ms} ms since the epoch is out of range"
                ))
            }),
            Native::Bool(b) => Err(invalid(format!(
                "attribute \"time\" is the boolean {b}, not a timestamp"
            ))),
        }
    }

    fn into_extension(self) -> ExtensionValue {
        match self {
            Native::Text(t) => ExtensionValue::String(t.into_owned()),
            Native::Bool(b) => ExtensionValue::Boolean(b),
            Native::Int(i) => ExtensionValue::Integer(i),
            Native::Time(t) => ExtensionValue::String(format_time(&t)),
        }
    }
}

/// A structured JSON event that arrived without a structured content type (producers that set
/// no content type, or `application/json`): recognised by its body, a JSON object with a
/// `specversion`. `None` when the body is not such an object.
fn sniff_structured(content_type: Option<&str>, body: &[u8]) -> Option<Result<Event, DecodeError>> {
    if content_type.is_some_and(|ct| !is_json(Some(ct))) {
        return None;
    }
    let start = body.iter().position(|b| !b.is_ascii_whitespace())?;
    if body[start] != b'{' {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    if !value.as_object()?.contains_key("specversion") {
        return None;
    }
    Some(structured_from_value(value))
}

/// Sets the body as the event's data: no content type and no body means no data. Data of a
/// text content type that is valid UTF-8 becomes text, as structured mode would give it.
fn attach(event: &mut Event, ct: Option<String>, body: impl FnOnce() -> Vec<u8>, empty: bool) {
    if ct.is_some() || !empty {
        let body = body();
        let data = if is_text(ct.as_deref()) {
            match String::from_utf8(body) {
                Ok(text) => Data::String(text),
                Err(e) => Data::Binary(e.into_bytes()),
            }
        } else {
            Data::Binary(body)
        };
        event.set_data_unchecked(data);
        event.set_datacontenttype(ct);
    }
}

/// Whether `ct` names text other than JSON: `text/*`, XML and YAML types, or any type with a
/// UTF-8 (or US-ASCII) `charset`. A charset other than those keeps the data binary.
fn is_text(ct: Option<&str>) -> bool {
    let Some(ct) = ct else {
        return false;
    };
    if is_json(Some(ct)) {
        return false;
    }
    // No allocation: this runs for every binary-mode message with a content type.
    let mut parts = ct.split(';');
    let essence = parts.next().unwrap_or_default().trim();
    let charset = parts.filter_map(|p| p.split_once('=')).find_map(|(k, v)| {
        k.trim()
            .eq_ignore_ascii_case("charset")
            .then(|| v.trim().trim_matches('"'))
    });
    // `get`, not indexing: a content type that is not ASCII must not panic.
    let ends_with = |s: &str, suffix: &str| {
        s.len()
            .checked_sub(suffix.len())
            .and_then(|i| s.get(i..))
            .is_some_and(|t| t.eq_ignore_ascii_case(suffix))
    };
    match charset {
        Some(c) => ["utf-8", "utf8", "us-ascii"]
            .iter()
            .any(|u| c.eq_ignore_ascii_case(u)),
        None => {
            essence
                .get(..5)
                .is_some_and(|t| t.eq_ignore_ascii_case("text/"))
                || ends_with(essence, "+xml")
                || ["application/xml", "application/yaml", "application/x-yaml"]
                    .iter()
                    .any(|t| essence.eq_ignore_ascii_case(t))
        }
    }
}

/// `s` starts with `prefix`, ASCII case ignored, without allocating.
fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.as_bytes()
        .get(..prefix.len())
        .is_some_and(|head| head.eq_ignore_ascii_case(prefix.as_bytes()))
}

fn invalid(detail: String) -> DecodeError {
    DecodeError::new(DecodeErrorKind::InvalidAttribute, detail)
}

fn format_time(t: &DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
}

fn is_json(ct: Option<&str>) -> bool {
    match ct {
        None => true,
        // What nearly every JSON event carries: one comparison.
        Some("application/json") => true,
        Some(ct) => {
            let ct = ct.split(';').next().unwrap_or_default().trim();
            ct.eq_ignore_ascii_case("application/json")
                || ct.eq_ignore_ascii_case("text/json")
                || ct
                    .len()
                    .checked_sub(5)
                    .and_then(|i| ct.get(i..))
                    .is_some_and(|t| t.eq_ignore_ascii_case("+json"))
        }
    }
}

struct Structured<'a>(&'a Event);

impl serde::Serialize for Structured<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.0;
        let mut m = s.serialize_map(None)?;
        m.serialize_entry("specversion", "1.0")?;
        m.serialize_entry("id", e.id())?;
        m.serialize_entry("source", e.source())?;
        m.serialize_entry("type", e.ty())?;
        if let Some(v) = e.subject() {
            m.serialize_entry("subject", v)?;
        }
        if let Some(t) = e.time() {
            m.serialize_entry("time", &format_time(t))?;
        }
        if let Some(v) = e.datacontenttype() {
            m.serialize_entry("datacontenttype", v)?;
        }
        if let Some(v) = e.dataschema() {
            m.serialize_entry("dataschema", v.as_str())?;
        }
        for (k, v) in e.iter_extensions() {
            m.serialize_entry(k, v)?;
        }
        let json_ct = is_json(e.datacontenttype());
        match e.data() {
            None => {}
            Some(Data::Json(v)) => m.serialize_entry("data", v)?,
            Some(Data::String(text)) => {
                match json_ct
                    .then(|| serde_json::from_str::<&serde_json::value::RawValue>(text).ok())
                    .flatten()
                {
                    Some(raw) => m.serialize_entry("data", raw)?,
                    None if !json_ct => m.serialize_entry("data", text)?,
                    None => m.serialize_entry(
                        "data_base64",
                        &base64::engine::general_purpose::STANDARD.encode(text),
                    )?,
                }
            }
            Some(Data::Binary(bytes)) => {
                match json_ct
                    .then(|| serde_json::from_slice::<&serde_json::value::RawValue>(bytes).ok())
                    .flatten()
                {
                    Some(raw) => m.serialize_entry("data", raw)?,
                    None => m.serialize_entry(
                        "data_base64",
                        &base64::engine::general_purpose::STANDARD.encode(bytes),
                    )?,
                }
            }
        }
        m.end()
    }
}

fn encode_structured(event: &Event) -> Vec<u8> {
    // Serializing a map of strings and already-valid JSON cannot fail.
    serde_json::to_vec(&Structured(event)).unwrap_or_default()
}

fn decode_structured(body: &[u8]) -> Result<Event, DecodeError> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(|e| {
        DecodeError::new(
            DecodeErrorKind::InvalidStructured,
            format!("body is not json: {e}"),
        )
    })?;
    structured_from_value(value)
}

fn structured_from_value(value: serde_json::Value) -> Result<Event, DecodeError> {
    let Some(obj) = value.as_object() else {
        return Err(DecodeError::new(
            DecodeErrorKind::InvalidStructured,
            "body is not a json object",
        ));
    };
    match obj.get("specversion").and_then(|v| v.as_str()) {
        Some("1.0") => {}
        Some(other) => {
            return Err(DecodeError::new(
                DecodeErrorKind::UnsupportedSpecVersion,
                format!("specversion {other:?}"),
            ));
        }
        None => {
            return Err(DecodeError::new(
                DecodeErrorKind::MissingAttribute,
                "attribute \"specversion\" is missing",
            ));
        }
    }
    for name in ["id", "source", "type"] {
        match obj.get(name) {
            Some(serde_json::Value::String(s)) if !s.is_empty() => {}
            _ => {
                return Err(DecodeError::new(
                    DecodeErrorKind::MissingAttribute,
                    format!("attribute {name:?} is missing, empty or not a string"),
                ));
            }
        }
    }
    for name in obj.keys() {
        if !crate::event::ATTRIBUTE_NAMES.contains(&name.as_str()) && !is_valid_extension_name(name)
        {
            return Err(invalid(format!(
                "extension name {name:?} is not 1-20 lowercase letters or digits"
            )));
        }
    }
    if obj.contains_key("datacontentencoding") {
        return Err(invalid("datacontentencoding is not a 1.0 attribute".into()));
    }
    serde_json::from_value::<Event>(value).map_err(|e| {
        DecodeError::new(
            DecodeErrorKind::InvalidStructured,
            format!("invalid json event: {e}"),
        )
    })
}

#[cfg(test)]
mod tests;
