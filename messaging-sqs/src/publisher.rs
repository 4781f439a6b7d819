//! Publishing: one call per event, or batches of 10 with every batch in flight at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt as _;
use futures_util::stream;
use messaging_core::publisher::BatchOutcome;
use messaging_core::telemetry::{SendTelemetry, semconv};
use messaging_core::{
    Event, Features, PublishBatchError, PublishError, PublishErrorKind, Publisher, Receipt,
    SubscribeError, SubscribeErrorKind,
};

use crate::broker::{Destination, Shared};
use crate::codec::{self, Outgoing};
use crate::config::Topology;
use crate::error;

/// Most entries of one `PublishBatch` / `SendMessageBatch`.
pub(crate) const MAX_BATCH: usize = 10;

/// Publishes to SNS topics (or, point-to-point, SQS queues). A publish returns once the
/// service accepted the message. A batch is split into calls of at most 10 entries (and at
/// most the configured batch bytes), all in flight at once; FIFO destinations send their calls
/// one after another so that every ordering key keeps its order.
#[derive(Clone)]
pub struct SqsPublisher {
    shared: Arc<Shared>,
    closed: Arc<AtomicBool>,
    telemetry: SendTelemetry,
}

impl std::fmt::Debug for SqsPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsPublisher").finish_non_exhaustive()
    }
}

pub(crate) fn from_subscribe(e: SubscribeError) -> PublishError {
    let kind = match e.kind() {
        SubscribeErrorKind::Unavailable => PublishErrorKind::Unavailable,
        SubscribeErrorKind::Timeout => PublishErrorKind::Timeout,
        SubscribeErrorKind::Forbidden => PublishErrorKind::Forbidden,
        _ => PublishErrorKind::Rejected,
    };
    PublishError::new(kind)
        .with_detail(format!("declaring the topic: {e}"))
        .with_source(e)
}

fn build_error(e: impl std::error::Error + Send + Sync + 'static) -> PublishError {
    PublishError::new(PublishErrorKind::Encode)
        .with_detail(e.to_string())
        .with_source(e)
}

/// A failed batch entry as a typed error: throttling and service faults are transient,
/// sender faults are not.
fn entry_error(code: &str, message: Option<&str>, sender_fault: bool) -> PublishError {
    let kind = error::class_of_code(code, sender_fault).publish_kind();
    PublishError::new(kind).with_detail(format!("{code}: {}", message.unwrap_or_default()))
}

fn sns_attributes(
    out: &Outgoing,
) -> Result<HashMap<String, aws_sdk_sns::types::MessageAttributeValue>, PublishError> {
    out.attributes
        .iter()
        .map(|(k, v)| {
            aws_sdk_sns::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .map(|a| (k.clone(), a))
                .map_err(build_error)
        })
        .collect()
}

pub(crate) fn sqs_attributes(
    out: &Outgoing,
) -> Result<HashMap<String, aws_sdk_sqs::types::MessageAttributeValue>, PublishError> {
    out.attributes
        .iter()
        .map(|(k, v)| {
            aws_sdk_sqs::types::MessageAttributeValue::builder()
                .data_type("String")
                .string_value(v)
                .build()
                .map(|a| (k.clone(), a))
                .map_err(build_error)
        })
        .collect()
}

fn receipt(message_id: Option<&str>, sequence_number: Option<&str>) -> Receipt {
    let mut r = Receipt::new();
    if let Some(id) = message_id {
        r = r.with_message_id(id);
    }
    if let Some(seq) = sequence_number {
        r = r.with_sequence_number(seq);
    }
    r
}

/// One result per entry of a batch call, by the entry's index.
type BatchResults = Vec<(usize, Result<Receipt, PublishError>)>;

/// The entries a batch response reported as sent and as failed, in one list.
fn answer(
    ok: impl Iterator<Item = (usize, Receipt)>,
    failed: impl Iterator<Item = (usize, PublishError)>,
) -> BatchResults {
    ok.map(|(i, r)| (i, Ok(r)))
        .chain(failed.map(|(i, e)| (i, Err(e))))
        .collect()
}

/// One batch call to SNS or SQS, the same for both: `build` makes each entry (an entry that
/// cannot be built fails alone), `send` makes the call with the entries built and reports
/// what the service said of each. A failed call fails every entry it carried with the
/// call's error; an entry the response mentions neither way is not known to be published
/// (`Timeout`, retryable).
async fn batch_call<E, Fut>(
    entries: Vec<(usize, Outgoing)>,
    build: impl Fn(usize, Outgoing) -> Result<E, PublishError>,
    send: impl FnOnce(Vec<E>) -> Fut,
) -> BatchResults
where
    Fut: Future<Output = Result<BatchResults, PublishError>>,
{
    let mut results = BatchResults::new();
    let mut sent = Vec::new();
    let mut built = Vec::new();
    for (i, out) in entries {
        match build(i, out) {
            Ok(entry) => {
                built.push(entry);
                sent.push(i);
            }
            Err(e) => results.push((i, Err(e))),
        }
    }
    if built.is_empty() {
        return results;
    }
    match send(built).await {
        Err(e) => results.extend(sent.iter().map(|i| (*i, Err(e.repeated())))),
        Ok(answered) => {
            results.extend(answered.into_iter().filter(|(i, _)| sent.contains(i)));
            for i in sent {
                if !results.iter().any(|(j, _)| *j == i) {
                    results.push((
                        i,
                        Err(PublishError::new(PublishErrorKind::Timeout)
                            .with_detail("the batch response did not mention this entry")),
                    ));
                }
            }
        }
    }
    results
}

impl Shared {
    /// The limit on one message sent to `dest`.
    pub(crate) fn max_payload_for(&self, dest: &Destination) -> usize {
        match dest {
            Destination::Topic { .. } => self.config.max_sns_payload,
            Destination::Queue { .. } => self.config.max_sqs_payload,
        }
    }

    /// Sends one message.
    pub(crate) async fn send_one(
        &self,
        dest: &Destination,
        out: Outgoing,
    ) -> Result<Receipt, PublishError> {
        match dest {
            Destination::Topic { arn, fifo } => {
                let mut req = self
                    .sns
                    .publish()
                    .topic_arn(arn)
                    .set_message_attributes(Some(sns_attributes(&out)?))
                    .message(out.body);
                if *fifo {
                    req = req
                        .message_group_id(out.group_id)
                        .message_deduplication_id(out.dedup_id);
                }
                let r = req.send().await.map_err(error::publish)?;
                Ok(receipt(r.message_id(), r.sequence_number()))
            }
            Destination::Queue { url, fifo } => {
                let mut req = self
                    .sqs
                    .send_message()
                    .queue_url(url)
                    .set_message_attributes(Some(sqs_attributes(&out)?))
                    .message_body(out.body);
                if *fifo {
                    req = req
                        .message_group_id(out.group_id)
                        .message_deduplication_id(out.dedup_id);
                }
                let r = req.send().await.map_err(error::publish)?;
                Ok(receipt(r.message_id(), r.sequence_number()))
            }
        }
    }

    /// Sends up to 10 messages in one call; one result per entry, by the entry's index.
    pub(crate) async fn send_batch(
        &self,
        dest: &Destination,
        entries: Vec<(usize, Outgoing)>,
    ) -> Vec<(usize, Result<Receipt, PublishError>)> {
        match dest {
            Destination::Topic { arn, fifo } => {
                let fifo = *fifo;
                batch_call(
                    entries,
                    |i, out| {
                        let mut b = aws_sdk_sns::types::PublishBatchRequestEntry::builder()
                            .id(i.to_string())
                            .set_message_attributes(Some(sns_attributes(&out)?))
                            .message(out.body);
                        if fifo {
                            b = b
                                .message_group_id(out.group_id)
                                .message_deduplication_id(out.dedup_id);
                        }
                        b.build().map_err(build_error)
                    },
                    |built| async move {
                        let r = self
                            .sns
                            .publish_batch()
                            .topic_arn(arn)
                            .set_publish_batch_request_entries(Some(built))
                            .send()
                            .await
                            .map_err(error::publish)?;
                        let ok = r.successful().iter().filter_map(|ok| {
                            let i = ok.id()?.parse().ok()?;
                            Some((i, receipt(ok.message_id(), ok.sequence_number())))
                        });
                        let failed = r.failed().iter().filter_map(|f| {
                            let i = f.id().parse().ok()?;
                            Some((i, entry_error(f.code(), f.message(), f.sender_fault())))
                        });
                        Ok(answer(ok, failed))
                    },
                )
                .await
            }
            Destination::Queue { url, fifo } => {
                let fifo = *fifo;
                batch_call(
                    entries,
                    |i, out| {
                        let mut b = aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                            .id(i.to_string())
                            .set_message_attributes(Some(sqs_attributes(&out)?))
                            .message_body(out.body);
                        if fifo {
                            b = b
                                .message_group_id(out.group_id)
                                .message_deduplication_id(out.dedup_id);
                        }
                        b.build().map_err(build_error)
                    },
                    |built| async move {
                        let r = self
                            .sqs
                            .send_message_batch()
                            .queue_url(url)
                            .set_entries(Some(built))
                            .send()
                            .await
                            .map_err(error::publish)?;
                        let ok = r.successful().iter().filter_map(|ok| {
                            let i = ok.id().parse().ok()?;
                            Some((i, receipt(Some(ok.message_id()), ok.sequence_number())))
                        });
                        let failed = r.failed().iter().filter_map(|f| {
                            let i = f.id().parse().ok()?;
                            Some((i, entry_error(f.code(), f.message(), f.sender_fault())))
                        });
                        Ok(answer(ok, failed))
                    },
                )
                .await
            }
        }
    }

    /// Largest total bytes of one batch call to `dest`.
    fn batch_bytes(&self, dest: &Destination) -> usize {
        match dest {
            Destination::Topic { .. } => self.config.max_sns_batch_bytes,
            Destination::Queue { .. } => self.config.max_sqs_batch_bytes,
        }
    }

    /// Sends `entries` in calls of at most 10 and at most the batch byte limit, concurrently
    /// (one after another to a FIFO destination).
    pub(crate) async fn send_all(
        &self,
        dest: &Destination,
        entries: Vec<(usize, Outgoing)>,
    ) -> Vec<(usize, Result<Receipt, PublishError>)> {
        let max_bytes = self.batch_bytes(dest);
        let mut chunks: Vec<Vec<(usize, Outgoing)>> = Vec::new();
        let mut current: Vec<(usize, Outgoing)> = Vec::new();
        let mut bytes = 0;
        for (i, out) in entries {
            if !current.is_empty() && (current.len() == MAX_BATCH || bytes + out.size > max_bytes) {
                chunks.push(std::mem::take(&mut current));
                bytes = 0;
            }
            bytes += out.size;
            current.push((i, out));
        }
        if !current.is_empty() {
            chunks.push(current);
        }
        if dest.is_fifo() {
            return self.send_fifo(dest, chunks).await;
        }
        let in_flight = self.config.max_in_flight.max(1);
        stream::iter(chunks)
            .map(|chunk| async move {
                if chunk.len() == 1 {
                    let mut chunk = chunk;
                    let (i, out) = chunk.remove(0);
                    vec![(i, self.send_one(dest, out).await)]
                } else {
                    self.send_batch(dest, chunk).await
                }
            })
            .buffer_unordered(in_flight)
            .flat_map(stream::iter)
            .collect()
            .await
    }
}

impl Shared {
    /// FIFO: one call after another; once an event fails, later events with its message
    /// group (ordering key) are not sent, so a retry of the failed ones keeps the key's order.
    async fn send_fifo(
        &self,
        dest: &Destination,
        chunks: Vec<Vec<(usize, Outgoing)>>,
    ) -> Vec<(usize, Result<Receipt, PublishError>)> {
        let mut results = Vec::new();
        let mut failed_groups: HashMap<String, PublishErrorKind> = HashMap::new();
        for chunk in chunks {
            let mut send = Vec::with_capacity(chunk.len());
            let mut groups = HashMap::new();
            for (i, out) in chunk {
                if let Some(kind) = failed_groups.get(&out.group_id) {
                    results.push((
                        i,
                        Err(PublishError::new(*kind).with_detail(
                            "not sent: an earlier event with the same ordering key failed",
                        )),
                    ));
                } else {
                    groups.insert(i, out.group_id.clone());
                    send.push((i, out));
                }
            }
            if send.is_empty() {
                continue;
            }
            for (i, r) in self.send_batch(dest, send).await {
                if let (Err(e), Some(group)) = (&r, groups.get(&i)) {
                    failed_groups.entry(group.clone()).or_insert(e.kind());
                }
                results.push((i, r));
            }
        }
        results
    }
}

impl SqsPublisher {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let system = match shared.config.topology {
            Topology::SnsFanout => semconv::system_for("sns"),
            Topology::PointToPoint => semconv::system_for("sqs"),
        };
        let telemetry = match &shared.config.endpoint_url {
            Some(endpoint) => SendTelemetry::new(system).with_server_of(endpoint, 443),
            None => SendTelemetry::new(system),
        };
        Self {
            shared,
            closed: Arc::new(AtomicBool::new(false)),
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

    async fn destination(&self, topic: &str) -> Result<Destination, PublishError> {
        self.shared
            .destination(topic, false)
            .await
            .map_err(from_subscribe)
    }
}

impl SqsPublisher {
    async fn publish_one(&self, topic: &str, event: Event) -> Result<Receipt, PublishError> {
        self.check_open()?;
        let max = self.shared.config.max_payload();
        let out = codec::encode(
            &self.shared.binding,
            &event,
            self.shared.config.content_mode,
            max,
        )?;
        let dest = self.destination(topic).await?;
        self.shared.send_one(&dest, out).await
    }

    async fn publish_many(
        &self,
        topic: &str,
        events: Vec<Event>,
    ) -> Result<Vec<Receipt>, PublishBatchError> {
        if let Err(e) = self.check_open() {
            return Err(PublishBatchError::all_failed(events, &e));
        }
        let dest = match self.destination(topic).await {
            Ok(d) => d,
            Err(e) => return Err(PublishBatchError::all_failed(events, &e)),
        };
        let max = self.shared.max_payload_for(&dest);
        let mode = self.shared.config.content_mode;
        let mut outcome = BatchOutcome::new(events.len());
        let mut entries = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            match codec::encode(&self.shared.binding, event, mode, max) {
                Ok(out) => entries.push((i, out)),
                Err(e) => outcome.fail(i, e),
            }
        }
        for (i, r) in self.shared.send_all(&dest, entries).await {
            outcome.record(i, r);
        }
        outcome.finish(events)
    }
}

impl Publisher for SqsPublisher {
    async fn publish(&self, topic: &str, event: Event) -> Result<Receipt, PublishError> {
        self.telemetry
            .publish(topic, event, |event| self.publish_one(topic, event))
            .await
    }

    async fn publish_batch(
        &self,
        topic: &str,
        events: Vec<Event>,
    ) -> Result<Vec<Receipt>, PublishBatchError> {
        self.telemetry
            .publish_batch(topic, events, |events| self.publish_many(topic, events))
            .await
    }

    async fn close(&self) -> Result<(), PublishError> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }

    fn features(&self) -> Features {
        self.shared.features()
    }
}
