//! Publishing: one call per event, or batches of 10 with every batch in flight at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::StreamExt as _;
use futures_util::stream;
use messaging_core::{
    Event, Features, PublishBatchError, PublishError, PublishErrorKind, Publisher, Receipt,
    SubscribeError, SubscribeErrorKind,
};

use crate::broker::{Destination, Shared};
use crate::codec::{self, Outgoing};
use crate::error::{self, Class};

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
    let kind = match error::class_of_code(code, sender_fault) {
        Class::Throttled => PublishErrorKind::Throttled,
        Class::Unavailable => PublishErrorKind::Unavailable,
        Class::Timeout => PublishErrorKind::Timeout,
        Class::NotFound | Class::Rejected => PublishErrorKind::Rejected,
    };
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
        let indices: Vec<usize> = entries.iter().map(|(i, _)| *i).collect();
        let all_failed = |e: PublishError| {
            let kind = e.kind();
            let detail = e.to_string();
            indices
                .iter()
                .map(|i| (*i, Err(PublishError::new(kind).with_detail(detail.clone()))))
                .collect::<Vec<_>>()
        };
        let mut results: Vec<(usize, Result<Receipt, PublishError>)> = Vec::new();
        match dest {
            Destination::Topic { arn, fifo } => {
                let mut req = self.sns.publish_batch().topic_arn(arn);
                for (i, out) in entries {
                    let attrs = match sns_attributes(&out) {
                        Ok(a) => a,
                        Err(e) => {
                            results.push((i, Err(e)));
                            continue;
                        }
                    };
                    let mut b = aws_sdk_sns::types::PublishBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message(out.body)
                        .set_message_attributes(Some(attrs));
                    if *fifo {
                        b = b
                            .message_group_id(out.group_id)
                            .message_deduplication_id(out.dedup_id);
                    }
                    match b.build() {
                        Ok(entry) => req = req.publish_batch_request_entries(entry),
                        Err(e) => results.push((i, Err(build_error(e)))),
                    }
                }
                if results.len() == indices.len() {
                    return results;
                }
                match req.send().await {
                    Err(e) => return all_failed(error::publish(e)),
                    Ok(r) => {
                        for ok in r.successful() {
                            if let Some(i) = ok.id().and_then(|id| id.parse().ok()) {
                                results
                                    .push((i, Ok(receipt(ok.message_id(), ok.sequence_number()))));
                            }
                        }
                        for failed in r.failed() {
                            if let Ok(i) = failed.id().parse() {
                                results.push((
                                    i,
                                    Err(entry_error(
                                        failed.code(),
                                        failed.message(),
                                        failed.sender_fault(),
                                    )),
                                ));
                            }
                        }
                    }
                }
            }
            Destination::Queue { url, fifo } => {
                let mut req = self.sqs.send_message_batch().queue_url(url);
                for (i, out) in entries {
                    let attrs = match sqs_attributes(&out) {
                        Ok(a) => a,
                        Err(e) => {
                            results.push((i, Err(e)));
                            continue;
                        }
                    };
                    let mut b = aws_sdk_sqs::types::SendMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .message_body(out.body)
                        .set_message_attributes(Some(attrs));
                    if *fifo {
                        b = b
                            .message_group_id(out.group_id)
                            .message_deduplication_id(out.dedup_id);
                    }
                    match b.build() {
                        Ok(entry) => req = req.entries(entry),
                        Err(e) => results.push((i, Err(build_error(e)))),
                    }
                }
                if results.len() == indices.len() {
                    return results;
                }
                match req.send().await {
                    Err(e) => return all_failed(error::publish(e)),
                    Ok(r) => {
                        for ok in r.successful() {
                            if let Ok(i) = ok.id().parse() {
                                results.push((
                                    i,
                                    Ok(receipt(Some(ok.message_id()), ok.sequence_number())),
                                ));
                            }
                        }
                        for failed in r.failed() {
                            if let Ok(i) = failed.id().parse() {
                                results.push((
                                    i,
                                    Err(entry_error(
                                        failed.code(),
                                        failed.message(),
                                        failed.sender_fault(),
                                    )),
                                ));
                            }
                        }
                    }
                }
            }
        }
        // An entry the service answered neither way is not known to be published.
        for i in indices {
            if !results.iter().any(|(j, _)| *j == i) {
                results.push((
                    i,
                    Err(PublishError::new(PublishErrorKind::Timeout)
                        .with_detail("the batch response did not mention this entry")),
                ));
            }
        }
        results
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
        Self {
            shared,
            closed: Arc::new(AtomicBool::new(false)),
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

impl Publisher for SqsPublisher {
    async fn publish(&self, topic: &str, event: Event) -> Result<Receipt, PublishError> {
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

    async fn publish_batch(
        &self,
        topic: &str,
        events: Vec<Event>,
    ) -> Result<Vec<Receipt>, PublishBatchError> {
        if let Err(e) = self.check_open() {
            let kind = e.kind();
            return Err(PublishBatchError::all(events, || PublishError::new(kind)));
        }
        let dest = match self.destination(topic).await {
            Ok(d) => d,
            Err(e) => {
                let kind = e.kind();
                let detail = e.to_string();
                return Err(PublishBatchError::all(events, || {
                    PublishError::new(kind).with_detail(detail.clone())
                }));
            }
        };
        let max = self.shared.max_payload_for(&dest);
        let mode = self.shared.config.content_mode;
        let mut failed: Vec<(usize, PublishError)> = Vec::new();
        let mut entries = Vec::with_capacity(events.len());
        for (i, event) in events.iter().enumerate() {
            match codec::encode(&self.shared.binding, event, mode, max) {
                Ok(out) => entries.push((i, out)),
                Err(e) => failed.push((i, e)),
            }
        }
        let mut accepted = Vec::with_capacity(entries.len());
        for (i, r) in self.shared.send_all(&dest, entries).await {
            match r {
                Ok(receipt) => accepted.push((i, receipt)),
                Err(e) => failed.push((i, e)),
            }
        }
        accepted.sort_by_key(|(i, _)| *i);
        if failed.is_empty() {
            return Ok(accepted.into_iter().map(|(_, r)| r).collect());
        }
        failed.sort_by_key(|(i, _)| *i);
        let mut events: Vec<Option<Event>> = events.into_iter().map(Some).collect();
        let failed = failed
            .into_iter()
            .filter_map(|(i, e)| events[i].take().map(|event| (i, event, e)))
            .collect();
        Err(PublishBatchError { accepted, failed })
    }

    async fn close(&self) -> Result<(), PublishError> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }

    fn features(&self) -> Features {
        self.shared.features()
    }
}
