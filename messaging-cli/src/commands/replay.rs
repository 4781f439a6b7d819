//! `dlq replay`: publish dead letters back to their origin topic, with a progress bar.

use std::io::Write;

use messaging::dead_letter::{self, DeadLetterMetadata};
use messaging::{AttributesReader, Broker};

use crate::args::ReplayArgs;
use crate::error::{CliError, failed};

pub(crate) async fn replay(
    broker: &Broker,
    r: ReplayArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    // The bar's length: what waits now (the depth), capped by the limit.
    let depth = dead_letter::depth(broker, &r.topic).await.unwrap_or(0);
    let total = r.limit.map_or(depth, |l| depth.min(l as u64));
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} replaying [{bar:40}] {pos}/{len} {msg} ({per_sec}, eta {eta})",
        )
        .map_err(failed)?
        .progress_chars("=> "),
    );
    let progress = bar.clone();
    let (types, ids, reason, origin) = (r.types, r.ids, r.reason, r.origin);
    let mut options = dead_letter::ReplayOptions::new()
        .idle(r.idle)
        .dry_run(r.dry_run)
        .include_truncated(r.include_truncated)
        .filter(move |e| {
            let m = DeadLetterMetadata::from_event(e);
            (types.is_empty() || types.iter().any(|t| t == e.ty()))
                && (ids.is_empty() || ids.iter().any(|i| i == e.id()))
                && reason
                    .as_ref()
                    .is_none_or(|want| m.as_ref().is_some_and(|m| &m.reason == want))
                && origin
                    .as_ref()
                    .is_none_or(|want| m.as_ref().is_some_and(|m| &m.topic == want))
        })
        .on_progress(move |report| {
            progress.set_position(report.replayed as u64);
            progress.set_message(format!("{} skipped", report.skipped));
        });
    if let Some(limit) = r.limit {
        options = options.limit(limit);
    }
    if let Some(target) = r.target {
        options = options.target(target);
    }
    let result =
        dead_letter::replay(&broker.subscriber(), &broker.publisher(), &r.topic, options).await;
    bar.finish_and_clear();
    let report = result.map_err(failed)?;
    writeln!(
        out,
        "{} {}, {} skipped (left in {}){}",
        if r.dry_run {
            "would replay"
        } else {
            "replayed"
        },
        report.replayed,
        report.skipped,
        r.topic,
        if report.truncated > 0 {
            format!(
                "; {} of them truncated dead letters without their data (--include-truncated replays them)",
                report.truncated
            )
        } else {
            String::new()
        }
    )
    .map_err(failed)?;
    let _ = err.flush();
    Ok(())
}
