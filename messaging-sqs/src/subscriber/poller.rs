//! The poller: long-polls the group's queue while the subscription has room, and forwards
//! what the broker dead-lettered natively.

use base64::Engine as _;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_sqs::types::MessageSystemAttributeName;
use messaging_core::chrono::Utc;
use messaging_core::dead_letter::{dead_letter_event, undecodable_event};
use messaging_core::handler::{DeadLetterReason, Failure, Origin};
use messaging_core::telemetry::{ReceiveTelemetry, error_type, semconv};
use messaging_core::{DecodeError, Event, ReceiveError};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument as _;

use super::delivery::{SqsDelivery, release};
use super::lease::keeper;
use super::secs;
use super::state::{Held, SubShared};
use crate::broker::Destination;
use crate::codec;
use crate::error;
use messaging_core::sync::lock;

/// Receives into the subscription's buffer while it has room (its prefetch).
pub(super) struct Poller {
    pub(super) sub: Arc<SubShared>,
    /// Fires on the first receive: a subscription opened only to declare the group (and
    /// closed right away) never polls, so it never takes a message from its group.
    pub(super) start: Option<oneshot::Receiver<()>>,
    pub(super) tx: mpsc::UnboundedSender<Result<Vec<SqsDelivery>, ReceiveError>>,
    /// Unsettled deliveries: the prefetch.
    pub(super) permits: Arc<Semaphore>,
    /// Deliveries received and not handed out yet: [`READ_AHEAD`](super::READ_AHEAD).
    pub(super) ahead: Arc<Semaphore>,
    pub(super) batch: usize,
    pub(super) prefetch: usize,
    pub(super) deadline: Duration,
    pub(super) wait: i32,
    pub(super) max_deliveries: Option<u32>,
    pub(super) dead_letter: Option<(String, Destination)>,
    pub(super) group: String,
}

impl Poller {
    pub(super) async fn run(mut self) {
        if let Some(start) = self.start.take() {
            if start.await.is_err() {
                return;
            }
        }
        if !self.deadline.is_zero() {
            tokio::spawn(keeper(self.sub.clone(), self.deadline));
        }
        let shared = &self.sub.shared;
        let telemetry =
            ReceiveTelemetry::new(semconv::system_for("sqs"), &self.sub.topic, &self.group);
        loop {
            let Ok(first) = self.permits.clone().acquire_owned().await else {
                return;
            };
            let Ok(first_ahead) = self.ahead.clone().acquire_owned().await else {
                return;
            };
            if self.sub.closed.load(Ordering::Acquire) {
                return;
            }
            let mut permits = vec![(first, first_ahead)];
            while permits.len() < self.batch {
                let Ok(p) = self.permits.clone().try_acquire_owned() else {
                    break;
                };
                let Ok(a) = self.ahead.clone().try_acquire_owned() else {
                    break;
                };
                permits.push((p, a));
            }
            let mut op = telemetry.start();
            let result = shared
                .sqs
                .receive_message()
                .queue_url(&self.sub.url)
                .max_number_of_messages(i32::try_from(permits.len()).unwrap_or(10))
                .wait_time_seconds(self.wait)
                .visibility_timeout(secs(self.deadline))
                .message_system_attribute_names(MessageSystemAttributeName::ApproximateReceiveCount)
                .message_attribute_names("All")
                .send()
                .instrument(op.span().clone())
                .await;
            op.returned();
            let received_at = Instant::now();
            let messages = match result {
                Ok(out) => out.messages.unwrap_or_default(),
                Err(e) => {
                    let e = error::receive(e);
                    op.finish(0, Some(error_type(e.kind())));
                    let fatal = !e.is_transient();
                    tracing::debug!(error = %e, queue = %self.sub.url, "receive failed");
                    if self.tx.send(Err(e)).is_err() || fatal {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                    continue;
                }
            };
            let mut batch = Vec::with_capacity(messages.len());
            for m in messages {
                let Some((permit, ahead)) = permits.pop() else {
                    // The service sent more than asked for: take them anyway, they are
                    // received and would otherwise wait out their deadline.
                    tracing::warn!("ReceiveMessage returned more messages than requested");
                    break;
                };
                let Some(receipt) = m.receipt_handle else {
                    continue;
                };
                let attempt = m
                    .attributes
                    .as_ref()
                    .and_then(|a| a.get(&MessageSystemAttributeName::ApproximateReceiveCount))
                    .and_then(|c| c.parse::<u32>().ok())
                    .unwrap_or(1)
                    .max(1);
                let attributes = m
                    .message_attributes
                    .unwrap_or_default()
                    .into_iter()
                    .filter_map(|(k, v)| {
                        // A `Binary` attribute as its CloudEvents string form, base64.
                        let bytes = match (v.string_value, v.binary_value) {
                            (Some(s), _) => s.into_bytes(),
                            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                                .encode(b.as_ref())
                                .into_bytes(),
                            (None, None) => return None,
                        };
                        Some((k, bytes))
                    })
                    .collect();
                let payload =
                    codec::decode(&shared.binding, m.body.unwrap_or_default(), attributes)
                        .map(Arc::new);
                if let (Some(max), Some((dlq_topic, dest))) =
                    (self.max_deliveries, &self.dead_letter)
                {
                    if attempt > max {
                        self.forward_dead_letter(dlq_topic, dest, &payload, attempt, receipt)
                            .await;
                        continue;
                    }
                }
                let key = self.sub.next.fetch_add(1, Ordering::Relaxed);
                {
                    let mut held = lock(&self.sub.held);
                    if held.len() > 4 * self.prefetch + 64 {
                        let now = Instant::now();
                        held.retain(|_, h| h.deadline > now);
                    }
                    held.insert(
                        key,
                        Held {
                            receipt: receipt.clone(),
                            deadline: received_at + self.deadline,
                            waiting: true,
                            extending: false,
                        },
                    );
                }
                batch.push(SqsDelivery {
                    sub: self.sub.clone(),
                    payload,
                    attempt,
                    receipt,
                    key,
                    _permit: permit,
                    ahead: Some(ahead),
                });
            }
            for d in &batch {
                if let Ok(event) = &d.payload {
                    op.link(event);
                }
            }
            op.finish(batch.len(), None);
            if batch.is_empty() {
                continue;
            }
            // Closed while this receive was in flight: what it got goes straight back.
            if self.sub.closed.load(Ordering::Acquire) {
                self.give_back(batch).await;
                return;
            }
            // One channel item per receive: a consumer's `recv_batch` gets the whole batch.
            if let Err(mpsc::error::SendError(Ok(batch))) = self.tx.send(Ok(batch)) {
                self.give_back(batch).await;
                return;
            }
        }
    }

    /// Makes deliveries nobody will see visible again.
    pub(super) async fn give_back(&self, batch: Vec<SqsDelivery>) {
        let receipts = batch.iter().map(|d| d.receipt.clone()).collect();
        drop(batch);
        release(self.sub.shared.clone(), self.sub.url.clone(), receipts).await;
    }

    /// A message past the delivery limit: publish it to the dead-letter topic with the
    /// dead-letter metadata, then delete it. If that fails, SQS's redrive policy moves it one
    /// receive later.
    pub(super) async fn forward_dead_letter(
        &self,
        dlq_topic: &str,
        dest: &Destination,
        payload: &Result<Arc<Event>, DecodeError>,
        attempt: u32,
        receipt: String,
    ) {
        let shared = &self.sub.shared;
        let now = Utc::now();
        let origin = Origin {
            topic: self.sub.topic.to_string(),
            group: self.group.clone(),
        };
        let event = match payload {
            Ok(event) => {
                let failure = Failure {
                    reason: DeadLetterReason::RetriesExhausted,
                    error: format!(
                        "delivery limit of {} reached: delivered {} times without an ack",
                        attempt - 1,
                        attempt - 1
                    ),
                    attempts: attempt - 1,
                    first_failure: now,
                    last_failure: now,
                };
                dead_letter_event(event, &failure, &origin)
            }
            Err(e) => undecodable_event(e, &origin, now),
        };
        let max = shared.max_payload_for(dest);
        let sent = match codec::encode(&shared.binding, &event, shared.config.content_mode, max) {
            Ok(out) => shared.send_one(dest, out).await.map(|_| ()),
            Err(e) => Err(e),
        };
        match sent {
            Ok(()) => {
                let deleted = shared
                    .sqs
                    .delete_message()
                    .queue_url(&self.sub.url)
                    .receipt_handle(receipt)
                    .send()
                    .await;
                if let Err(e) = deleted {
                    tracing::warn!(error = %error::ack(e), "dead-lettered message not deleted; it may be dead-lettered twice");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, topic = dlq_topic, "forwarding to the dead-letter topic failed; the queue's redrive policy will move it");
            }
        }
    }
}
