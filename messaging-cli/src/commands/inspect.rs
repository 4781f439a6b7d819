//! `dlq inspect`: show dead letters with their failure metadata, leaving them in place.

use std::io::Write;
use std::time::Duration;

use messaging::dead_letter::{DEAD_LETTER_GROUP, DeadLetterMetadata};
use messaging::{
    AttributesReader, Broker, Delivery, Event, SubscribeOptions, Subscriber, Subscription,
};

use super::{give_back, to_json_line};
use crate::error::{CliError, failed};

pub(crate) async fn inspect(
    broker: &Broker,
    topic: &str,
    max: usize,
    timeout: Duration,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    let options = SubscribeOptions::new(DEAD_LETTER_GROUP).prefetch(max.max(1));
    let mut sub = broker
        .subscriber()
        .subscribe(topic, options)
        .await
        .map_err(|e| CliError::Failed(format!("cannot read {topic}: {e}")))?;
    let mut held = Vec::new();
    let mut rows = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut result = Ok(());
    while held.len() < max {
        let d = match tokio::time::timeout(timeout, sub.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => {
                result = Err(CliError::Failed(format!("receive failed: {e}")));
                break;
            }
            Ok(Ok(d)) => d,
        };
        let row = match d.payload() {
            Ok(event) => {
                if !seen.insert(event.id().to_owned()) {
                    held.push(d);
                    break; // came round again: everything was seen
                }
                if json {
                    to_json_line(event).map_err(failed)?
                } else {
                    table_row(event)
                }
            }
            Err(e) => format!("(undecodable: {e})"),
        };
        rows.push(row);
        held.push(d);
    }
    give_back(held, &mut *err).await;
    let _ = sub.close().await;
    result?;
    let write = |out: &mut dyn Write| -> std::io::Result<()> {
        if !json {
            writeln!(
                out,
                "{:<36}  {:<20}  {:<18}  {:>8}  {:<28}  {:<24}  {:<24}  {:>7}  ERROR",
                "ID",
                "TYPE",
                "REASON",
                "ATTEMPTS",
                "ORIGIN",
                "FIRST FAILURE",
                "LAST FAILURE",
                "REPLAYS"
            )?;
        }
        for row in &rows {
            writeln!(out, "{row}")?;
        }
        Ok(())
    };
    write(out).map_err(failed)
}

fn table_row(event: &Event) -> String {
    let m = DeadLetterMetadata::from_event(event);
    let time = |t: Option<messaging::chrono::DateTime<messaging::chrono::Utc>>| {
        t.map(|t| t.to_rfc3339_opts(messaging::chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| "-".into())
    };
    match m {
        Some(m) => format!(
            "{:<36}  {:<20}  {:<18}  {:>8}  {:<28}  {:<24}  {:<24}  {:>7}  {}",
            event.id(),
            event.ty(),
            m.reason,
            m.attempts,
            format!("{}/{}", m.topic, m.group),
            time(m.first_failure),
            time(m.last_failure),
            m.replays,
            m.error.replace('\n', " ")
        ),
        None => format!(
            "{:<36}  {:<20}  {:<18}  {:>8}  {:<28}  {:<24}  {:<24}  {:>7}  (no dead-letter metadata)",
            event.id(),
            event.ty(),
            "-",
            "-",
            "-",
            "-",
            "-",
            "-"
        ),
    }
}
