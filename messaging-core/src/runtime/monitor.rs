//! Depth and lag gauges for brokers that can tell.

use std::future::Future;
use std::time::Duration;

use crate::dead_letter::DEAD_LETTER_GROUP;
use crate::inspect::Inspect;

/// Until `stop` completes, sets every `interval`:
/// `messaging_consumer_lag{topic, group}` (messages the group still holds; on log brokers,
/// high watermark minus committed offset) and `messaging_dead_letter_depth{topic}` (messages
/// waiting in the dead-letter topic — to alert on a depth above 0). A failed reading
/// is logged and skipped.
pub async fn monitor_depth<I: Inspect>(
    inspector: &I,
    topic: &str,
    group: &str,
    dlq_topic: &str,
    interval: Duration,
    stop: impl Future<Output = ()>,
) {
    let labels = [("topic", topic.to_owned()), ("group", group.to_owned())];
    let lag = metrics::gauge!("messaging_consumer_lag", &labels);
    let dlq = metrics::gauge!("messaging_dead_letter_depth", "topic" => dlq_topic.to_owned());
    tokio::pin!(stop);
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            () = &mut stop => return,
            _ = tick.tick() => {}
        }
        match inspector.depth(topic, group).await {
            Ok(Some(n)) => lag.set(n as f64),
            Ok(None) => lag.set(0.0),
            Err(e) => tracing::warn!(topic, group, error = %e, "cannot read consumer lag"),
        }
        match inspector.depth(dlq_topic, DEAD_LETTER_GROUP).await {
            Ok(n) => dlq.set(n.unwrap_or(0) as f64),
            Err(e) => tracing::warn!(dlq_topic, error = %e, "cannot read dead-letter depth"),
        }
    }
}
