//! The commands, one module each, and the helpers several of them share.

use std::io::Write;

use messaging::{AttributesReader, Delivery, Event, EventBuilder};

use crate::args::EventArgs;
use crate::error::CliError;

pub(crate) mod consume;
pub(crate) mod inspect;
pub(crate) mod lag;
pub(crate) mod publish;
pub(crate) mod replay;
pub(crate) mod request;

/// `event` as one line of the CloudEvents JSON format. Data that arrived as bytes with a JSON
/// content type (binary mode) is written as JSON `data`, as a structured-mode event would
/// carry it, rather than as `data_base64`.
pub fn to_json_line(event: &Event) -> Result<String, serde_json::Error> {
    let is_json = event
        .datacontenttype()
        .is_none_or(|ct| ct.starts_with("application/json") || ct.contains("+json"));
    if let (true, Some(messaging::Data::Binary(bytes))) = (is_json, event.data()) {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
            let mut event = event.clone();
            event.set_data_unchecked(value);
            return serde_json::to_string(&event);
        }
    }
    serde_json::to_string(event)
}

pub(crate) fn build_event(e: &EventArgs) -> Result<Event, CliError> {
    let ty = e.ty.as_deref().unwrap_or_default();
    let mut b = EventBuilder::new(e.source.clone(), ty);
    if let Some(id) = &e.id {
        b = b.id(id.clone());
    }
    if let Some(key) = &e.key {
        b = b.ordering_key(key.clone());
    }
    if let Some(subject) = &e.subject {
        b = b.subject(subject.clone());
    }
    if let Some(data) = &e.data {
        let value: serde_json::Value = serde_json::from_str(data)
            .map_err(|err| CliError::Input(format!("--data is not valid JSON: {err}")))?;
        b = b.json(&value);
    }
    if let Some(text) = &e.text {
        b = b.text(text.clone());
    }
    for (name, value) in &e.extensions {
        b = b.extension(name, value.clone());
    }
    b.build()
        .map_err(|err| CliError::Input(format!("invalid event: {err}")))
}

/// Returns deliveries to their group; one that cannot be returned comes back by itself after
/// its ack deadline, which is said.
pub(crate) async fn give_back(held: Vec<messaging::BoxDelivery>, err: &mut dyn Write) {
    for d in held {
        if let Err(e) = d.nack(None).await {
            let _ = writeln!(
                err,
                "messaging: a message could not be returned at once ({}); the broker redelivers it after its ack deadline",
                e.error
            );
        }
    }
}
