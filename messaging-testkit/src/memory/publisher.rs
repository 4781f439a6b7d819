//! Publishing to the in-memory broker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use messaging_core::event::approximate_size;
use messaging_core::telemetry::{SendTelemetry, semconv};
use messaging_core::{
    Event, Features, PublishBatchError, PublishError, PublishErrorKind, Publisher, Receipt,
};

use super::MemoryBroker;
use super::group::Payload;

/// Publishes to a [`MemoryBroker`]. A publish returns once every group of the topic holds the
/// message; the receipt's `offset` is the message's position in the topic.
#[derive(Debug, Clone)]
pub struct MemoryPublisher {
    broker: MemoryBroker,
    closed: Arc<AtomicBool>,
    telemetry: SendTelemetry,
}

impl MemoryPublisher {
    pub(crate) fn new(broker: MemoryBroker) -> Self {
        Self {
            broker,
            closed: Arc::new(AtomicBool::new(false)),
            telemetry: SendTelemetry::new(semconv::system_for("memory")),
        }
    }

    fn check(&self, event: &Event) -> Result<(), PublishError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PublishError::new(PublishErrorKind::Closed));
        }
        let max = self.broker.inner.max_payload();
        let size = approximate_size(event);
        if size > max {
            return Err(PublishError::new(PublishErrorKind::PayloadTooLarge)
                .with_detail(format!("{size} bytes, limit {max}")));
        }
        let faults = &self.broker.inner.faults;
        if faults.armed() && faults.take_publish_failure() {
            return Err(PublishError::new(PublishErrorKind::Unavailable)
                .with_detail("injected fault: publish failed"));
        }
        Ok(())
    }

    async fn latency(&self) {
        let faults = &self.broker.inner.faults;
        if faults.armed() {
            if let Some(d) = faults.latency() {
                tokio::time::sleep(d).await;
            }
        }
    }

    /// The payloads to store for `event`: one, or two under the duplicate fault.
    fn payloads(&self, event: Event) -> (Payload, Option<Payload>) {
        let faults = &self.broker.inner.faults;
        let twice = faults.armed() && faults.take_duplicate();
        let p = Payload::Event(Arc::new(event));
        let copy = twice.then(|| p.clone());
        (p, copy)
    }

    async fn flow_control(full: Vec<Arc<super::group::Group>>) {
        for g in full {
            g.wait_for_space().await;
        }
    }
}

impl MemoryPublisher {
    async fn send(&self, topic: &str, event: Event) -> Result<Receipt, PublishError> {
        self.latency().await;
        self.check(&event)?;
        let (p, copy) = self.payloads(event);
        let count = 1 + usize::from(copy.is_some());
        let (offset, full) = self
            .broker
            .inner
            .route(topic, std::iter::once(p).chain(copy), count);
        Self::flow_control(full).await;
        Ok(Receipt::new().with_offset(offset))
    }

    async fn send_batch(
        &self,
        topic: &str,
        events: Vec<Event>,
    ) -> Result<Vec<Receipt>, PublishBatchError> {
        self.latency().await;
        let mut failed = Vec::new();
        let mut accepted_idx = Vec::with_capacity(events.len());
        let mut payloads = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            match self.check(&event) {
                Ok(()) => {
                    accepted_idx.push(i);
                    let (p, copy) = self.payloads(event);
                    payloads.push(p);
                    payloads.extend(copy);
                }
                Err(e) => failed.push((i, event, e)),
            }
        }
        // With duplicated payloads (a fault) receipts' offsets are approximate.
        let count = payloads.len();
        let (first, full) = self.broker.inner.route(topic, payloads.into_iter(), count);
        Self::flow_control(full).await;
        let receipts: Vec<(usize, Receipt)> = accepted_idx
            .into_iter()
            .enumerate()
            .map(|(n, i)| {
                let n = i64::try_from(n).unwrap_or(i64::MAX);
                (i, Receipt::new().with_offset(first + n))
            })
            .collect();
        if failed.is_empty() {
            Ok(receipts.into_iter().map(|(_, r)| r).collect())
        } else {
            Err(PublishBatchError {
                accepted: receipts,
                failed,
            })
        }
    }
}

impl Publisher for MemoryPublisher {
    async fn publish(&self, topic: &str, event: Event) -> Result<Receipt, PublishError> {
        self.telemetry
            .publish(topic, event, |event| self.send(topic, event))
            .await
    }

    async fn publish_batch(
        &self,
        topic: &str,
        events: Vec<Event>,
    ) -> Result<Vec<Receipt>, PublishBatchError> {
        self.telemetry
            .publish_batch(topic, events, |events| self.send_batch(topic, events))
            .await
    }

    async fn close(&self) -> Result<(), PublishError> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }

    fn features(&self) -> Features {
        self.broker.features()
    }
}
