//! Publishing: one librdkafka producer (idempotent, `acks=all`) shared by every publisher of a
//! broker. A batch hands all its messages to librdkafka before waiting, and its delivery
//! reports land in one shared slot array: no future, channel or task per message.

use std::future::poll_fn;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use futures_util::task::AtomicWaker;
use messaging_core::codec::ContentMode;
use messaging_core::publisher::BatchOutcome;
use messaging_core::telemetry::{SendTelemetry, semconv};
use messaging_core::{
    Event, Features, PublishBatchError, PublishError, PublishErrorKind, Publisher, Receipt,
};
use rdkafka::ClientContext;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Message as _, OwnedHeaders};
use rdkafka::producer::{
    BaseRecord, DeliveryResult, Producer as _, ProducerContext, ThreadedProducer,
};

use crate::broker::Shared;
use crate::codec::{self, Record};
use crate::config::KafkaConfig;
use crate::error;

/// Delivery reports of one publish call, by index.
pub(crate) struct Reports {
    slots: Mutex<Vec<Option<Result<Receipt, KafkaError>>>>,
    remaining: AtomicUsize,
    waker: AtomicWaker,
}

impl Reports {
    fn new(n: usize) -> Arc<Self> {
        Arc::new(Self {
            slots: Mutex::new((0..n).map(|_| None).collect()),
            remaining: AtomicUsize::new(n),
            waker: AtomicWaker::new(),
        })
    }

    fn set(&self, index: usize, result: Result<Receipt, KafkaError>) {
        messaging_core::sync::lock(&self.slots)[index] = Some(result);
        if self.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.waker.wake();
        }
    }

    async fn wait(&self) -> Vec<Option<Result<Receipt, KafkaError>>> {
        poll_fn(|cx| {
            if self.remaining.load(Ordering::Acquire) == 0 {
                return Poll::Ready(());
            }
            self.waker.register(cx.waker());
            if self.remaining.load(Ordering::Acquire) == 0 {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await;
        std::mem::take(&mut *messaging_core::sync::lock(&self.slots))
    }
}

/// Routes librdkafka's delivery reports to their publish call.
pub(crate) struct Reporter;

impl ClientContext for Reporter {}

impl ProducerContext for Reporter {
    type DeliveryOpaque = Box<(Arc<Reports>, usize)>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let (reports, index) = *opaque;
        let result = match result {
            Ok(m) => Ok(Receipt::new()
                .with_partition(m.partition())
                .with_offset(m.offset())),
            Err((e, _)) => Err(e.clone()),
        };
        reports.set(index, result);
    }
}

/// The shared producer.
pub(crate) struct Producer {
    inner: ThreadedProducer<Reporter>,
}

impl Producer {
    pub(crate) fn new(config: &KafkaConfig) -> Result<Self, KafkaError> {
        let mut c = config.client_config();
        c.set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                config.publish_timeout.as_millis().to_string(),
            )
            .set("message.max.bytes", message_max_bytes(config).to_string())
            .set("queue.buffering.max.messages", "1000000");
        // Properties the user set win over the defaults above.
        for (k, v) in &config.properties {
            c.set(k, v);
        }
        Ok(Self {
            inner: c.create_with_context(Reporter)?,
        })
    }

    /// Hands a message to librdkafka, waiting while its queue is full.
    pub(crate) async fn send(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        body: &[u8],
        headers: OwnedHeaders,
        reports: &Arc<Reports>,
        index: usize,
    ) -> Result<(), KafkaError> {
        let mut record = BaseRecord::with_opaque_to(topic, Box::new((reports.clone(), index)))
            .payload(body)
            .headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        loop {
            match self.inner.send(record) {
                Ok(()) => return Ok(()),
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                    record = back;
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// Publishes one prepared message and waits for the broker's acknowledgement.
    pub(crate) async fn send_one(
        &self,
        topic: &str,
        key: Option<&[u8]>,
        body: &[u8],
        headers: OwnedHeaders,
    ) -> Result<Receipt, KafkaError> {
        let reports = Reports::new(1);
        self.send(topic, key, body, headers, &reports, 0).await?;
        match reports.wait().await.pop().flatten() {
            Some(result) => result,
            None => Err(KafkaError::Canceled),
        }
    }

    fn flush(&self, timeout: Duration) -> Result<(), KafkaError> {
        self.inner.flush(timeout)
    }
}

/// The producer's `message.max.bytes`: room for the adapter's limit plus record overhead, so
/// the adapter's own check is the one that answers.
fn message_max_bytes(config: &KafkaConfig) -> usize {
    config.max_message_bytes.saturating_add(64 * 1024)
}

/// Publishes events to Kafka topics (created on first use). The ordering key is the message
/// key: messages with one key go to one partition, in order.
pub struct KafkaPublisher {
    shared: Arc<Shared>,
    closed: AtomicBool,
    telemetry: SendTelemetry,
}

impl std::fmt::Debug for KafkaPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPublisher")
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl KafkaPublisher {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let telemetry = SendTelemetry::new(semconv::system_for("kafka"))
            .with_server_of(&shared.config.bootstrap_servers, 9092);
        Self {
            shared,
            closed: AtomicBool::new(false),
            telemetry,
        }
    }

    fn check_open(&self) -> Result<(), PublishError> {
        if self.closed.load(Ordering::Acquire) {
            Err(PublishError::new(PublishErrorKind::Closed))
        } else {
            Ok(())
        }
    }

    /// Encodes and checks `event`, then hands it to librdkafka.
    async fn enqueue(
        &self,
        topic: &str,
        event: &Event,
        reports: &Arc<Reports>,
        index: usize,
    ) -> Result<(), PublishError> {
        let record = prepare(&self.shared, event, self.shared.config.content_mode)?;
        self.shared
            .producer
            .send(
                topic,
                record.key,
                &record.encoded.body,
                record.headers(&[]),
                reports,
                index,
            )
            .await
            .map_err(error::publish)
    }
}

/// Lays `event` out and checks its size against the limit.
pub(crate) fn prepare<'a>(
    shared: &'a Shared,
    event: &'a Event,
    mode: ContentMode,
) -> Result<Record<'a>, PublishError> {
    let record = codec::encode(&shared.binding, event, mode).map_err(|e| {
        PublishError::new(PublishErrorKind::Encode)
            .with_detail(e.to_string())
            .with_source(e)
    })?;
    let size = record.size();
    let max = shared.config.max_message_bytes;
    if size > max {
        return Err(PublishError::new(PublishErrorKind::PayloadTooLarge)
            .with_detail(format!("message of {size} bytes, limit {max}")));
    }
    Ok(record)
}

impl Publisher for KafkaPublisher {
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
        let shared = self.shared.clone();
        let timeout = shared.config.publish_timeout;
        tokio::task::spawn_blocking(move || shared.producer.flush(timeout))
            .await
            .map_err(|e| PublishError::new(PublishErrorKind::Unavailable).with_source(e))?
            .map_err(error::publish)
    }

    fn features(&self) -> Features {
        self.shared.features()
    }
}

impl KafkaPublisher {
    async fn send(&self, topic: &str, event: Event) -> Result<Receipt, PublishError> {
        self.check_open()?;
        self.shared.ensure_topics(&[topic]).await?;
        let record = prepare(&self.shared, &event, self.shared.config.content_mode)?;
        self.shared
            .producer
            .send_one(topic, record.key, &record.encoded.body, record.headers(&[]))
            .await
            .map_err(error::publish)
    }

    async fn send_batch(
        &self,
        topic: &str,
        events: Vec<Event>,
    ) -> Result<Vec<Receipt>, PublishBatchError> {
        if let Err(e) = self.check_open() {
            return Err(PublishBatchError::all_failed(events, &e));
        }
        if let Err(e) = self.shared.ensure_topics(&[topic]).await {
            return Err(PublishBatchError::all_failed(events, &e));
        }
        let reports = Reports::new(events.len());
        let mut outcome = BatchOutcome::new(events.len());
        // Failures before librdkafka took the message (encoding, size, a dead client).
        let mut early = vec![false; events.len()];
        for (i, event) in events.iter().enumerate() {
            if let Err(e) = self.enqueue(topic, event, &reports, i).await {
                outcome.fail(i, e);
                early[i] = true;
                reports.set(i, Err(KafkaError::Canceled));
            }
        }
        let slots = reports.wait().await;
        for (i, slot) in slots.into_iter().enumerate() {
            if early[i] {
                continue;
            }
            match slot {
                Some(Ok(receipt)) => outcome.accept(i, receipt),
                Some(Err(e)) => outcome.fail(i, error::publish(e)),
                None => outcome.fail(i, PublishError::new(PublishErrorKind::Closed)),
            }
        }
        outcome.finish(events)
    }
}
