//! Leases: keeps the visibility of received, not yet handed out messages extended.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry;
use tokio::time::Instant;

use super::secs;
use super::state::SubShared;
use crate::error;
use crate::publisher::MAX_BATCH;
use messaging_core::sync::lock;

/// Keeps the messages waiting in the buffer invisible. Every eighth of the ack deadline it
/// extends, to the full deadline, the visibility timeout of each waiting message with less
/// than five eighths of it left (`ChangeMessageVisibilityBatch`, 10 per call), so `recv`
/// hands out every delivery with at least about half its deadline ahead, however long it
/// waited. A message whose extension the service refuses (its receipt is no longer valid,
/// or the 12 hours since its receive are used up) is dropped at hand-out instead of being
/// handed out twice. Ends when the subscription closes.
pub(super) async fn keeper(sub: Arc<SubShared>, deadline: Duration) {
    let tick = (deadline / 8).max(Duration::from_millis(50));
    let visibility = secs(deadline);
    loop {
        tokio::time::sleep(tick).await;
        if sub.closed.load(Ordering::Acquire) {
            return;
        }
        let due_by = Instant::now() + deadline * 5 / 8;
        let due: Vec<u64> = lock(&sub.held)
            .iter()
            .filter(|(_, h)| h.waiting && h.deadline < due_by)
            .map(|(k, _)| *k)
            .collect();
        for keys in due.chunks(MAX_BATCH) {
            // Only what is still waiting now: a message handed out (and perhaps nacked or
            // acked) since the list was made is the handler's to settle, never extended here.
            let chunk: Vec<(u64, String)> = {
                let mut held = lock(&sub.held);
                keys.iter()
                    .filter_map(|k| {
                        let h = held.get_mut(k).filter(|h| h.waiting)?;
                        h.extending = true;
                        Some((*k, h.receipt.clone()))
                    })
                    .collect()
            };
            if chunk.is_empty() {
                continue;
            }
            // On failure the entries keep their deadline; the next tick tries again, and one
            // that runs out meanwhile is dropped at hand-out.
            extend_waiting(&sub, &chunk, deadline, visibility).await;
            {
                let mut held = lock(&sub.held);
                for (k, _) in &chunk {
                    if let Some(h) = held.get_mut(k) {
                        h.extending = false;
                    }
                }
            }
            sub.extended.notify_waiters();
        }
    }
}

/// One `ChangeMessageVisibilityBatch` of the keeper over `chunk` (at most 10 entries).
pub(super) async fn extend_waiting(
    sub: &SubShared,
    chunk: &[(u64, String)],
    deadline: Duration,
    visibility: i32,
) {
    let mut req = sub
        .shared
        .sqs
        .change_message_visibility_batch()
        .queue_url(&sub.url);
    for (i, (_, receipt)) in chunk.iter().enumerate() {
        if let Ok(e) = ChangeMessageVisibilityBatchRequestEntry::builder()
            .id(i.to_string())
            .receipt_handle(receipt)
            .visibility_timeout(visibility)
            .build()
        {
            req = req.entries(e);
        }
    }
    let sent_at = Instant::now();
    let out = match req.send().await {
        Ok(out) => out,
        Err(e) => {
            // The entries keep their deadline; the next tick tries again, and one
            // that runs out meanwhile is dropped at hand-out.
            tracing::debug!(error = %error::ack(e), queue = %sub.url, "extending buffered messages failed");
            return;
        }
    };
    let key_of = |id: &str| id.parse::<usize>().ok().and_then(|i| chunk.get(i));
    let mut held = lock(&sub.held);
    for ok in out.successful() {
        if let Some(h) = key_of(ok.id()).and_then(|(k, _)| held.get_mut(k)) {
            h.deadline = h.deadline.max(sent_at + deadline);
        }
    }
    for failed in out.failed() {
        if let Some((k, _)) = key_of(&failed.id) {
            if held.get(k).is_some_and(|h| h.waiting) {
                tracing::debug!(code = %failed.code, queue = %sub.url, "a buffered message could not be kept invisible; it will be delivered again");
                held.remove(k);
            }
        }
    }
}
