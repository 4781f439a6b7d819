//! The settler: coalesces acks and nacks into batch calls.

use std::collections::HashMap;
use std::sync::Arc;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
};
use messaging_core::{AckError, AckErrorKind};
use tokio::sync::{Semaphore, mpsc};

use super::state::SettleOp;
use crate::broker::Shared;
use crate::error;
use crate::publisher::MAX_BATCH;

/// Settles in batches: takes every request queued so far, groups deletes and visibility
/// changes, and sends them 10 per call with up to `in_flight` calls at once.
pub(super) async fn settler(
    shared: Arc<Shared>,
    url: String,
    mut rx: mpsc::UnboundedReceiver<SettleOp>,
    in_flight: usize,
) {
    let limit = Arc::new(Semaphore::new(in_flight));
    while let Some(first) = rx.recv().await {
        // Let the other acks of the same wave (a `join_all` over a batch, handlers finishing
        // together) queue up: a few yields, never a timer.
        let mut ops = vec![first];
        for _ in 0..3 {
            tokio::task::yield_now().await;
            while ops.len() < 256 {
                match rx.try_recv() {
                    Ok(op) => ops.push(op),
                    Err(_) => break,
                }
            }
            if ops.len() % MAX_BATCH == 0 {
                break;
            }
        }
        let mut by_kind: HashMap<Option<i32>, Vec<SettleOp>> = HashMap::new();
        for op in ops {
            by_kind.entry(op.visibility).or_default().push(op);
        }
        for (visibility, ops) in by_kind {
            let mut ops = ops.into_iter().peekable();
            while ops.peek().is_some() {
                let chunk: Vec<SettleOp> = ops.by_ref().take(MAX_BATCH).collect();
                let Ok(permit) = limit.clone().acquire_owned().await else {
                    return;
                };
                let shared = shared.clone();
                let url = url.clone();
                tokio::spawn(async move {
                    settle_batch(&shared, &url, visibility, chunk).await;
                    drop(permit);
                });
            }
        }
    }
}

pub(super) async fn settle_batch(
    shared: &Shared,
    url: &str,
    visibility: Option<i32>,
    ops: Vec<SettleOp>,
) {
    let mut results: Vec<Option<Result<(), AckError>>> = ops.iter().map(|_| None).collect();
    let outcome = match visibility {
        None => {
            let mut req = shared.sqs.delete_message_batch().queue_url(url);
            for (i, op) in ops.iter().enumerate() {
                if let Ok(e) = DeleteMessageBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&op.receipt)
                    .build()
                {
                    req = req.entries(e);
                }
            }
            req.send()
                .await
                .map(|out| {
                    let ok: Vec<String> =
                        out.successful().iter().map(|s| s.id().to_owned()).collect();
                    (ok, out.failed().to_vec())
                })
                .map_err(error::ack)
        }
        Some(secs) => {
            let mut req = shared.sqs.change_message_visibility_batch().queue_url(url);
            for (i, op) in ops.iter().enumerate() {
                if let Ok(e) = ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(&op.receipt)
                    .visibility_timeout(secs)
                    .build()
                {
                    req = req.entries(e);
                }
            }
            req.send()
                .await
                .map(|out| {
                    let ok: Vec<String> =
                        out.successful().iter().map(|s| s.id().to_owned()).collect();
                    (ok, out.failed().to_vec())
                })
                .map_err(error::ack)
        }
    };
    match outcome {
        Err(e) => {
            for r in &mut results {
                *r = Some(Err(AckError::new(e.kind()).with_detail(e.to_string())));
            }
        }
        Ok((ok, failed)) => {
            for id in ok {
                if let Some(r) = id.parse::<usize>().ok().and_then(|i| results.get_mut(i)) {
                    *r = Some(Ok(()));
                }
            }
            for f in failed {
                if let Some(r) = f.id.parse::<usize>().ok().and_then(|i| results.get_mut(i)) {
                    let class = error::class_of_code(&f.code, f.sender_fault);
                    *r = Some(Err(AckError::new(error::ack_kind(class, &f.code))
                        .with_detail(format!(
                            "{}: {}",
                            f.code,
                            f.message.unwrap_or_default()
                        ))));
                }
            }
        }
    }
    for (op, r) in ops.into_iter().zip(results) {
        let r = r.unwrap_or_else(|| {
            Err(AckError::new(AckErrorKind::Timeout)
                .with_detail("the batch response did not mention this receipt"))
        });
        let _ = op.reply.send(r);
    }
}
