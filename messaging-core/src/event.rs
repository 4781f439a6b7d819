//! The message model: every message is a CloudEvents 1.0 [`Event`].
//!
//! [`EventBuilder`] creates events with sensible defaults (a fresh UUID `id`, the current
//! `time`), typed JSON payloads and the extensions this crate uses:
//!
//! | extension | meaning |
//! |---|---|
//! | `correlationid` | the conversation an event belongs to; copied from cause to effect |
//! | `causationid` | the `id` of the event that caused this one |
//! | `traceparent` / `tracestate` | W3C trace context (CloudEvents Distributed Tracing extension) |
//! | `partitionkey` | the ordering key (CloudEvents Partitioning extension) |
//!
//! [`EventExt`] reads them back and decodes typed payloads.

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Utc};
use cloudevents::event::ExtensionValue;
use cloudevents::event::{EventBuilder as _, EventBuilderV10};
use cloudevents::{AttributesReader, Data, Event};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Extension holding the correlation ID.
pub const CORRELATION_ID: &str = "correlationid";
/// Extension holding the causation ID (the `id` of the event that caused this one).
pub const CAUSATION_ID: &str = "causationid";
/// Extension holding the W3C `traceparent`.
pub const TRACEPARENT: &str = "traceparent";
/// Extension holding the W3C `tracestate`.
pub const TRACESTATE: &str = "tracestate";
/// Extension holding the ordering key (CloudEvents Partitioning extension).
pub const PARTITION_KEY: &str = "partitionkey";

/// Content type set by [`EventBuilder::json`].
pub const JSON: &str = "application/json";
/// Content type set by [`EventBuilder::bytes`] when none is given.
pub const OCTET_STREAM: &str = "application/octet-stream";
/// Content type set by [`EventBuilder::text`].
pub const TEXT: &str = "text/plain; charset=utf-8";

/// Failure to build an event.
#[derive(Debug)]
pub struct BuildError(String);

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid event: {}", self.0)
    }
}

impl std::error::Error for BuildError {}

/// Failure to read an event's data as a typed value.
#[derive(Debug)]
pub enum DataError {
    /// The event has no data.
    Missing,
    /// The data does not deserialize into the requested type.
    Json(serde_json::Error),
    /// The data is not UTF-8 text.
    NotUtf8,
}

impl fmt::Display for DataError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Missing => f.write_str("event has no data"),
            Self::Json(e) => write!(f, "event data is not the expected json: {e}"),
            Self::NotUtf8 => f.write_str("event data is not utf-8 text"),
        }
    }
}

impl std::error::Error for DataError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Json(e) => Some(e),
            _ => None,
        }
    }
}

/// Builds a CloudEvents 1.0 event.
///
/// `id` defaults to a random UUID and `time` to now; `source` and `type` are required up front.
///
/// ```
/// use messaging_core::{EventBuilder, EventExt};
///
/// #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
/// #[serde(rename_all = "camelCase")]
/// struct OrderCreated { order_id: String, amount: f64, currency: String }
///
/// let order = OrderCreated { order_id: "ORD-5678".into(), amount: 99.99, currency: "USD".into() };
/// let event = EventBuilder::new("order-service", "order.created")
///     .json(&order)
///     .ordering_key("ORD-5678")
///     .correlation_id("checkout-42")
///     .build()?;
///
/// assert_eq!(event.ordering_key(), Some("ORD-5678"));
/// assert_eq!(event.data_json::<OrderCreated>()?, order);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct EventBuilder {
    id: Option<String>,
    source: String,
    ty: String,
    subject: Option<String>,
    time: Option<Option<DateTime<Utc>>>,
    content_type: Option<String>,
    schema: Option<url::Url>,
    data: Option<Data>,
    extensions: Vec<(String, ExtensionValue)>,
    error: Option<String>,
}

impl EventBuilder {
    /// Starts an event with its `source` and `type`.
    pub fn new(source: impl Into<String>, ty: impl Into<String>) -> Self {
        Self {
            id: None,
            source: source.into(),
            ty: ty.into(),
            subject: None,
            time: None,
            content_type: None,
            schema: None,
            data: None,
            extensions: Vec::new(),
            error: None,
        }
    }

    /// Sets the `id` (default: a random UUID).
    pub fn id(mut self, id: impl Into<String>) -> Self {
        self.id = Some(id.into());
        self
    }

    /// Sets the `subject`.
    pub fn subject(mut self, subject: impl Into<String>) -> Self {
        self.subject = Some(subject.into());
        self
    }

    /// Sets the `time` (default: now).
    pub fn time(mut self, time: DateTime<Utc>) -> Self {
        self.time = Some(Some(time));
        self
    }

    /// Leaves `time` unset.
    pub fn without_time(mut self) -> Self {
        self.time = Some(None);
        self
    }

    /// Serializes `value` as JSON data with `datacontenttype: application/json`.
    pub fn json<T: Serialize + ?Sized>(mut self, value: &T) -> Self {
        match serde_json::to_vec(value) {
            Ok(bytes) => {
                self.content_type = Some(JSON.into());
                self.data = Some(Data::Binary(bytes));
            }
            Err(e) => self.error = Some(format!("data does not serialize to json: {e}")),
        }
        self
    }

    /// Sets raw bytes as data with the given content type (`application/octet-stream` if `None`).
    pub fn bytes(mut self, content_type: Option<&str>, bytes: impl Into<Vec<u8>>) -> Self {
        self.content_type = Some(content_type.unwrap_or(OCTET_STREAM).to_owned());
        self.data = Some(Data::Binary(bytes.into()));
        self
    }

    /// Sets UTF-8 text as data with `datacontenttype: text/plain; charset=utf-8`.
    pub fn text(mut self, text: impl Into<String>) -> Self {
        self.content_type = Some(TEXT.into());
        self.data = Some(Data::String(text.into()));
        self
    }

    /// Sets data of any representation with its content type.
    pub fn data(mut self, content_type: impl Into<String>, data: impl Into<Data>) -> Self {
        self.content_type = Some(content_type.into());
        self.data = Some(data.into());
        self
    }

    /// Sets `dataschema` (must be an absolute URI; needs data).
    pub fn dataschema(mut self, schema: &str) -> Self {
        match url::Url::parse(schema) {
            Ok(u) => self.schema = Some(u),
            Err(e) => self.error = Some(format!("dataschema is not a uri: {e}")),
        }
        self
    }

    /// Sets an extension attribute. Names are 1-20 lowercase ASCII letters and digits.
    pub fn extension(mut self, name: &str, value: impl Into<ExtensionValue>) -> Self {
        if !is_valid_extension_name(name) {
            self.error = Some(format!(
                "extension name {name:?} must be 1-20 lowercase letters or digits and not a context attribute"
            ));
            return self;
        }
        self.extensions.retain(|(n, _)| n != name);
        self.extensions.push((name.to_owned(), value.into()));
        self
    }

    /// Sets the `correlationid` extension.
    pub fn correlation_id(self, id: impl Into<String>) -> Self {
        self.extension(CORRELATION_ID, id.into())
    }

    /// Sets the `causationid` extension.
    pub fn causation_id(self, id: impl Into<String>) -> Self {
        self.extension(CAUSATION_ID, id.into())
    }

    /// Sets the W3C `traceparent` extension.
    pub fn traceparent(self, traceparent: impl Into<String>) -> Self {
        self.extension(TRACEPARENT, traceparent.into())
    }

    /// Sets the ordering key (`partitionkey` extension): Kafka message key, SQS FIFO message
    /// group, on RabbitMQ an ordered group is a single-active-consumer queue.
    pub fn ordering_key(self, key: impl Into<String>) -> Self {
        self.extension(PARTITION_KEY, key.into())
    }

    /// Builds the event.
    pub fn build(self) -> Result<Event, BuildError> {
        if let Some(e) = self.error {
            return Err(BuildError(e));
        }
        let id = self.id.unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
        if self.source.is_empty() || self.ty.is_empty() || id.is_empty() {
            return Err(BuildError("id, source and type must not be empty".into()));
        }
        let mut b = EventBuilderV10::new()
            .id(id)
            .source(self.source)
            .ty(self.ty);
        if let Some(subject) = self.subject {
            b = b.subject(subject);
        }
        match self.time {
            None => b = b.time(Utc::now()),
            Some(Some(t)) => b = b.time(t),
            Some(None) => {}
        }
        b = match (self.data, self.schema) {
            (Some(data), Some(schema)) => {
                let ct = self.content_type.unwrap_or_else(|| OCTET_STREAM.into());
                b.data_with_schema(ct, schema, data)
            }
            (Some(data), None) => b.data(
                self.content_type.unwrap_or_else(|| OCTET_STREAM.into()),
                data,
            ),
            (None, Some(_)) => return Err(BuildError("dataschema needs data".into())),
            (None, None) => b,
        };
        for (name, value) in self.extensions {
            b = b.extension(&name, value);
        }
        b.build().map_err(|e| BuildError(e.to_string()))
    }
}

/// Context attribute names, which extensions may not reuse.
pub(crate) const ATTRIBUTE_NAMES: [&str; 11] = [
    "specversion",
    "id",
    "source",
    "type",
    "subject",
    "time",
    "datacontenttype",
    "dataschema",
    "data",
    "data_base64",
    "datacontentencoding",
];

/// Whether `name` is a valid CloudEvents extension name: 1-20 of `[a-z0-9]`, not a context
/// attribute name.
pub fn is_valid_extension_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 20
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && !ATTRIBUTE_NAMES.contains(&name)
}

/// Reading this crate's extensions and typed data from an [`Event`].
pub trait EventExt {
    /// The `correlationid` extension.
    fn correlation_id(&self) -> Option<&str>;
    /// The `causationid` extension.
    fn causation_id(&self) -> Option<&str>;
    /// The W3C `traceparent` extension.
    fn traceparent(&self) -> Option<&str>;
    /// The ordering key (`partitionkey` extension).
    fn ordering_key(&self) -> Option<&str>;
    /// A string extension by name (`None` if absent or not a string).
    fn extension_str(&self, name: &str) -> Option<&str>;
    /// The data as bytes, whatever its representation (JSON is serialized).
    fn data_bytes(&self) -> Option<Cow<'_, [u8]>>;
    /// The data deserialized from JSON into `T`.
    fn data_json<T: DeserializeOwned>(&self) -> Result<T, DataError>;
    /// The data as UTF-8 text.
    fn data_text(&self) -> Result<Cow<'_, str>, DataError>;
}

impl EventExt for Event {
    fn correlation_id(&self) -> Option<&str> {
        self.extension_str(CORRELATION_ID)
    }

    fn causation_id(&self) -> Option<&str> {
        self.extension_str(CAUSATION_ID)
    }

    fn traceparent(&self) -> Option<&str> {
        self.extension_str(TRACEPARENT)
    }

    fn ordering_key(&self) -> Option<&str> {
        self.extension_str(PARTITION_KEY)
    }

    fn extension_str(&self, name: &str) -> Option<&str> {
        match self.extension(name) {
            Some(ExtensionValue::String(s)) => Some(s),
            _ => None,
        }
    }

    fn data_bytes(&self) -> Option<Cow<'_, [u8]>> {
        match self.data()? {
            Data::Binary(b) => Some(Cow::Borrowed(b)),
            Data::String(s) => Some(Cow::Borrowed(s.as_bytes())),
            Data::Json(v) => Some(Cow::Owned(serde_json::to_vec(v).unwrap_or_default())),
        }
    }

    fn data_json<T: DeserializeOwned>(&self) -> Result<T, DataError> {
        match self.data().ok_or(DataError::Missing)? {
            Data::Binary(b) => serde_json::from_slice(b).map_err(DataError::Json),
            Data::String(s) => serde_json::from_str(s).map_err(DataError::Json),
            Data::Json(v) => T::deserialize(v).map_err(DataError::Json),
        }
    }

    fn data_text(&self) -> Result<Cow<'_, str>, DataError> {
        match self.data().ok_or(DataError::Missing)? {
            Data::Binary(b) => std::str::from_utf8(b)
                .map(Cow::Borrowed)
                .map_err(|_| DataError::NotUtf8),
            Data::String(s) => Ok(Cow::Borrowed(s)),
            Data::Json(v) => Ok(Cow::Owned(v.to_string())),
        }
    }
}

/// An approximation of the event's size on the wire: data plus attribute and extension
/// names and values. Brokers compare it with their maximum payload.
pub fn approximate_size(event: &Event) -> usize {
    let data = match event.data() {
        None => 0,
        Some(Data::Binary(b)) => b.len(),
        Some(Data::String(s)) => s.len(),
        Some(Data::Json(v)) => serde_json::to_vec(v).map(|v| v.len()).unwrap_or(0),
    };
    let mut attrs = event.id().len() + event.source().len() + event.ty().len() + 16;
    attrs += event.subject().map_or(0, str::len);
    attrs += event.datacontenttype().map_or(0, str::len);
    attrs += event.dataschema().map_or(0, |u| u.as_str().len());
    attrs += event.time().map_or(0, |_| 32);
    for (k, v) in event.iter_extensions() {
        attrs += k.len()
            + match v {
                ExtensionValue::String(s) => s.len(),
                ExtensionValue::Boolean(_) => 5,
                ExtensionValue::Integer(_) => 20,
            };
    }
    data + attrs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_defaults_and_extensions() {
        let e = EventBuilder::new("svc", "thing.happened")
            .text("hello")
            .correlation_id("c1")
            .causation_id("e0")
            .traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01")
            .ordering_key("k")
            .build()
            .unwrap();
        assert!(uuid::Uuid::parse_str(e.id()).is_ok());
        assert!(e.time().is_some());
        assert_eq!(e.correlation_id(), Some("c1"));
        assert_eq!(e.causation_id(), Some("e0"));
        assert_eq!(e.ordering_key(), Some("k"));
        assert_eq!(e.data_text().unwrap(), "hello");
    }

    #[test]
    fn invalid_extension_name_is_an_error() {
        let err = EventBuilder::new("svc", "t")
            .extension("Bad-Name", "x")
            .build()
            .unwrap_err();
        assert!(err.to_string().contains("Bad-Name"), "{err}");
        assert!(
            EventBuilder::new("svc", "t")
                .extension("id", "x")
                .build()
                .is_err()
        );
    }

    #[test]
    fn empty_required_attribute_is_an_error() {
        assert!(EventBuilder::new("", "t").build().is_err());
        assert!(EventBuilder::new("s", "").build().is_err());
    }

    #[test]
    fn typed_json_data() {
        let e = EventBuilder::new("s", "t")
            .json(&serde_json::json!({"a": 1}))
            .build()
            .unwrap();
        let v: serde_json::Value = e.data_json().unwrap();
        assert_eq!(v["a"], 1);
        assert_eq!(e.datacontenttype(), Some(JSON));
        assert!(matches!(
            e.data_json::<Vec<u8>>().unwrap_err(),
            DataError::Json(_)
        ));
    }

    #[test]
    fn dataschema_requires_uri() {
        let e = EventBuilder::new("s", "t")
            .json(&1)
            .dataschema("https://example.com/schema/v1")
            .build()
            .unwrap();
        assert_eq!(
            e.dataschema().unwrap().as_str(),
            "https://example.com/schema/v1"
        );
        assert_eq!(e.datacontenttype(), Some(JSON));
        assert!(
            EventBuilder::new("s", "t")
                .json(&1)
                .dataschema("not a uri")
                .build()
                .is_err()
        );
    }
}
