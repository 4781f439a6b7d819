//! The subscription and its deliveries as the application sees them.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_sqs::types::ChangeMessageVisibilityBatchRequestEntry;
use messaging_core::{
    AckError, AckErrorKind, DecodeError, Delivery, Event, ReceiveError, ReceiveErrorKind,
    SettleError, Subscription,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use super::secs;
use super::state::{SettleOp, SubShared};
use crate::broker::Shared;
use crate::error;
use crate::publisher::MAX_BATCH;
use messaging_core::sync::lock;

/// One consumer of a group's queue. A background task long-polls the queue while the
/// subscription holds fewer unsettled deliveries than its prefetch. Closing (or dropping)
/// makes this consumer's unsettled deliveries visible again at once.
pub struct SqsSubscription {
    pub(super) sub: Arc<SubShared>,
    pub(super) rx: mpsc::UnboundedReceiver<Result<Vec<SqsDelivery>, ReceiveError>>,
    pub(super) buffer: VecDeque<SqsDelivery>,
    pub(super) permits: Arc<Semaphore>,
    pub(super) ahead: Arc<Semaphore>,
    pub(super) start: Option<oneshot::Sender<()>>,
    pub(super) closed: bool,
    pub(super) fifo: bool,
    /// The poller; `close` waits for it, so a receive in flight at close has given back
    /// what it got before `close` returns.
    pub(super) poller: Option<tokio::task::JoinHandle<()>>,
    pub(super) wait_time: Duration,
}

impl std::fmt::Debug for SqsSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsSubscription")
            .field("queue", &self.sub.url)
            .field("fifo", &self.fifo)
            .finish_non_exhaustive()
    }
}

impl SqsSubscription {
    /// The URL of the queue this subscription reads.
    pub fn queue_url(&self) -> &str {
        &self.sub.url
    }

    /// The next buffered delivery that is still this subscription's to hand out; those past
    /// their visibility timeout are dropped (SQS hands them out again).
    fn next_buffered(&mut self) -> Option<SqsDelivery> {
        while let Some(mut d) = self.buffer.pop_front() {
            if self.sub.hand_out(d.key) {
                d.ahead = None;
                return Some(d);
            }
            tracing::debug!(queue = %self.sub.url, "a buffered message's visibility timeout ran out before it was handed out; it will be delivered again");
        }
        None
    }

    /// Stops the poller and returns what it holds: receipts to make visible again. A receive
    /// in flight finishes in the background and gives back what it got.
    fn stop(&mut self) -> Vec<String> {
        self.closed = true;
        self.sub.closed.store(true, Ordering::Release);
        self.start = None;
        self.permits.close();
        self.ahead.close();
        self.rx.close();
        while self.rx.try_recv().is_ok() {}
        self.buffer.clear();
        let now = Instant::now();
        lock(&self.sub.held)
            .drain()
            .filter(|(_, h)| h.deadline > now)
            .map(|(_, h)| h.receipt)
            .collect()
    }
}

/// Makes `receipts` visible again, 10 per call.
pub(super) async fn release(shared: Arc<Shared>, url: String, receipts: Vec<String>) {
    for chunk in receipts.chunks(MAX_BATCH) {
        let mut req = shared.sqs.change_message_visibility_batch().queue_url(&url);
        for (i, r) in chunk.iter().enumerate() {
            if let Ok(e) = ChangeMessageVisibilityBatchRequestEntry::builder()
                .id(i.to_string())
                .receipt_handle(r)
                .visibility_timeout(0)
                .build()
            {
                req = req.entries(e);
            }
        }
        if let Err(e) = req.send().await {
            // They come back after their visibility timeout all the same.
            tracing::debug!(error = %error::ack(e), "returning unsettled deliveries");
        }
    }
}

impl Subscription for SqsSubscription {
    type Delivery = SqsDelivery;

    async fn recv(&mut self) -> Result<SqsDelivery, ReceiveError> {
        if self.closed {
            return Err(ReceiveError::new(ReceiveErrorKind::Closed));
        }
        if let Some(start) = self.start.take() {
            let _ = start.send(());
        }
        loop {
            if let Some(d) = self.next_buffered() {
                return Ok(d);
            }
            match self.rx.recv().await {
                Some(Ok(batch)) => self.buffer.extend(batch),
                Some(Err(e)) => return Err(e),
                None => {
                    return Err(ReceiveError::new(ReceiveErrorKind::Closed)
                        .with_detail("the queue's poller stopped"));
                }
            }
        }
    }

    async fn recv_batch(&mut self, max: usize) -> Result<Vec<SqsDelivery>, ReceiveError> {
        let first = self.recv().await?;
        let mut out = vec![first];
        while out.len() < max {
            if let Some(d) = self.next_buffered() {
                out.push(d);
                continue;
            }
            match self.rx.try_recv() {
                Ok(Ok(batch)) => self.buffer.extend(batch),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn close(&mut self) -> Result<(), ReceiveError> {
        if self.closed {
            return Ok(());
        }
        let receipts = self.stop();
        release(self.sub.shared.clone(), self.sub.url.clone(), receipts).await;
        // A long poll in flight returns within the wait time; what it got goes straight back.
        if let Some(poller) = self.poller.take() {
            let bound = self.wait_time + Duration::from_secs(10);
            if tokio::time::timeout(bound, poller).await.is_err() {
                tracing::debug!(queue = %self.sub.url, "poller still busy after close");
            }
        }
        Ok(())
    }
}

impl Drop for SqsSubscription {
    fn drop(&mut self) {
        if self.closed {
            return;
        }
        let receipts = self.stop();
        if receipts.is_empty() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(release(
                self.sub.shared.clone(),
                self.sub.url.clone(),
                receipts,
            ));
        }
    }
}

/// A message received from SQS, settled through its receipt handle.
pub struct SqsDelivery {
    pub(super) sub: Arc<SubShared>,
    pub(super) payload: Result<Arc<Event>, DecodeError>,
    pub(super) attempt: u32,
    pub(super) receipt: String,
    pub(super) key: u64,
    pub(super) _permit: OwnedSemaphorePermit,
    /// Held while the delivery waits in the subscription's buffer ([`READ_AHEAD`](super::READ_AHEAD)).
    pub(super) ahead: Option<OwnedSemaphorePermit>,
}

impl std::fmt::Debug for SqsDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsDelivery")
            .field("topic", &self.sub.topic)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl SqsDelivery {
    /// The receipt handle of this delivery.
    pub fn receipt_handle(&self) -> &str {
        &self.receipt
    }

    fn fail(self, error: AckError) -> SettleError<Self> {
        SettleError {
            error,
            delivery: self,
        }
    }

    fn closed_error() -> AckError {
        AckError::new(AckErrorKind::Closed)
            .with_detail("the subscription is closed; the message was made visible again")
    }

    /// Queues a settle request for the settler and waits for its batch.
    async fn settle(self, visibility: Option<i32>) -> Result<(), SettleError<Self>> {
        if self.sub.closed.load(Ordering::Acquire) {
            return Err(self.fail(Self::closed_error()));
        }
        self.sub.no_extension_in_flight(self.key).await;
        let (reply, answer) = oneshot::channel();
        let op = SettleOp {
            receipt: self.receipt.clone(),
            visibility,
            reply,
        };
        if self.sub.settle.send(op).is_err() {
            return Err(self.fail(Self::closed_error()));
        }
        match answer.await {
            Ok(Ok(())) => {
                lock(&self.sub.held).remove(&self.key);
                Ok(())
            }
            Ok(Err(e)) => Err(self.fail(e)),
            Err(_) => Err(self.fail(Self::closed_error())),
        }
    }
}

impl Delivery for SqsDelivery {
    fn payload(&self) -> Result<&Event, &DecodeError> {
        self.payload.as_deref()
    }

    fn shared_event(&self) -> Result<Arc<Event>, DecodeError> {
        self.payload.clone()
    }

    fn topic(&self) -> &str {
        &self.sub.topic
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Deletes the message (batched with other acks into `DeleteMessageBatch`).
    async fn ack(self) -> Result<(), SettleError<Self>> {
        self.settle(None).await
    }

    /// Makes the message visible again, after `delay` (whole seconds, rounded up, at most
    /// 12 hours) — batched into `ChangeMessageVisibilityBatch`.
    async fn nack(self, delay: Option<Duration>) -> Result<(), SettleError<Self>> {
        let visibility = delay.map_or(0, secs);
        self.settle(Some(visibility)).await
    }

    /// `ChangeMessageVisibility`: the message stays invisible for at least `by` from now.
    /// Never shortens: if the adapter already keeps it invisible for longer (the ack
    /// deadline, an earlier extension), the visibility timeout is set to what is left of
    /// that instead.
    async fn extend_deadline(&mut self, by: Duration) -> Result<(), AckError> {
        if self.sub.closed.load(Ordering::Acquire) {
            return Err(Self::closed_error());
        }
        self.sub.no_extension_in_flight(self.key).await;
        let now = Instant::now();
        let tracked = lock(&self.sub.held).get(&self.key).map(|h| h.deadline);
        let target = tracked.map_or(now + by, |d| d.max(now + by));
        self.sub
            .shared
            .sqs
            .change_message_visibility()
            .queue_url(&self.sub.url)
            .receipt_handle(&self.receipt)
            .visibility_timeout(secs(target - now))
            .send()
            .await
            .map_err(error::ack)?;
        if let Some(h) = lock(&self.sub.held).get_mut(&self.key) {
            h.deadline = h.deadline.max(target);
        }
        Ok(())
    }
}
