//! `publish`: events from flags or from JSON CloudEvents on stdin.

use std::io::{BufRead, Write};

use messaging::{AttributesReader, Broker, Event, Publisher};

use super::build_event;
use crate::args::EventArgs;
use crate::error::{CliError, failed};

/// The events to publish: from the flags, or JSON CloudEvents from `input`.
pub(crate) fn publish_events(
    e: &EventArgs,
    input: &mut dyn BufRead,
) -> Result<Vec<Event>, CliError> {
    if e.ty.is_some() {
        return Ok(vec![build_event(e)?]);
    }
    let mut text = String::new();
    input
        .read_to_string(&mut text)
        .map_err(|err| CliError::Input(format!("cannot read stdin: {err}")))?;
    let events = parse_events(&text)?;
    if events.is_empty() {
        return Err(CliError::Input(
            "nothing to publish: give --type (and --data), or CloudEvents JSON on stdin".into(),
        ));
    }
    Ok(events)
}

/// One JSON event, a JSON array of events, or one event per line.
fn parse_events(text: &str) -> Result<Vec<Event>, CliError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let bad = |what: String, e: serde_json::Error| {
        CliError::Input(format!("{what} is not a CloudEvent in JSON format: {e}"))
    };
    if trimmed.starts_with('[') {
        return serde_json::from_str(trimmed).map_err(|e| bad("stdin".into(), e));
    }
    // A single (possibly pretty-printed) event, else JSON lines.
    if let Ok(event) = serde_json::from_str::<Event>(trimmed) {
        return Ok(vec![event]);
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| bad(format!("stdin line {}", i + 1), e))
        })
        .collect()
}

pub(crate) async fn publish(
    broker: &Broker,
    topic: &str,
    events: Vec<Event>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    let ids: Vec<String> = events.iter().map(|e| e.id().to_owned()).collect();
    let publisher = broker.publisher();
    let result = if events.len() == 1 {
        let event = events.into_iter().next().expect("one");
        publisher
            .publish(topic, event)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    } else {
        publisher
            .publish_batch(topic, events)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    result.map_err(|e| CliError::Failed(format!("publish to {topic} failed: {e}")))?;
    for id in &ids {
        writeln!(out, "{id}").map_err(failed)?;
    }
    writeln!(
        err,
        "published {} event(s) to {topic} on {}",
        ids.len(),
        broker.features().broker
    )
    .map_err(failed)?;
    Ok(())
}
