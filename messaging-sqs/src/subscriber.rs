//! Subscribing: a background poller per subscription long-polls the group's queue, a
//! settler coalesces acks and nacks into batch calls.

use base64::Engine as _;
use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName,
};
use messaging_core::chrono::Utc;
use messaging_core::dead_letter::{dead_letter_event, undecodable_event};
use messaging_core::handler::{DeadLetterReason, Failure, Origin};
use messaging_core::{
    AckError, AckErrorKind, DecodeError, Delivery, Event, Features, ReceiveError, ReceiveErrorKind,
    SettleError, SubscribeError, SubscribeOptions, Subscriber, Subscription,
};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc, oneshot};
use tokio::time::Instant;

use crate::broker::{Destination, Shared};
use crate::codec;
use crate::error;
use crate::publisher::MAX_BATCH;

/// Longest visibility timeout SQS accepts, in seconds (12 hours).
const MAX_VISIBILITY: u64 = 43_200;

/// Most messages received ahead of the consumer (received, not yet handed out by `recv`),
/// whatever the prefetch: two receives' worth. The poller receives only while the buffer has
/// room, so a slow consumer with a large prefetch does not hold hundreds of messages it will
/// not reach within their visibility timeout.
const READ_AHEAD: usize = 2 * MAX_BATCH;

/// Whole seconds for SQS, rounded up so a delay or deadline is never shortened.
fn secs(d: Duration) -> i32 {
    let s = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    i32::try_from(s.min(MAX_VISIBILITY)).unwrap_or(i32::MAX)
}

/// Opens subscriptions on SQS.
#[derive(Clone)]
pub struct SqsSubscriber {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for SqsSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqsSubscriber").finish_non_exhaustive()
    }
}

/// One settle request for the settler: delete (`visibility: None`) or change visibility.
struct SettleOp {
    receipt: String,
    visibility: Option<i32>,
    reply: oneshot::Sender<Result<(), AckError>>,
}

/// A message received and not settled yet: waiting in the buffer, or handed out.
struct Held {
    receipt: String,
    /// When its visibility timeout runs out, as far as this subscription knows.
    deadline: Instant,
    /// Received and not handed out yet: the keeper extends its visibility timeout.
    waiting: bool,
    /// The keeper has an extension of it in flight; settling and extending wait for it, so
    /// that a stale extension never lands after (and undoes) a nack or a longer extension.
    extending: bool,
}

/// What a subscription's deliveries share.
struct SubShared {
    shared: Arc<Shared>,
    url: String,
    topic: Arc<str>,
    closed: AtomicBool,
    settle: mpsc::UnboundedSender<SettleOp>,
    held: Mutex<HashMap<u64, Held>>,
    next: AtomicU64,
    /// Signalled when the keeper's extensions in flight have been answered.
    extended: tokio::sync::Notify,
}

impl SubShared {
    /// Marks the buffered delivery `key` as handed out, if it is still this subscription's to
    /// hand out: not past its visibility timeout (SQS may have handed it to someone else) and
    /// not given up by the keeper.
    fn hand_out(&self, key: u64) -> bool {
        let mut held = lock(&self.held);
        match held.get_mut(&key) {
            Some(h) if h.deadline > Instant::now() => {
                h.waiting = false;
                true
            }
            Some(_) => {
                held.remove(&key);
                false
            }
            None => false,
        }
    }

    /// Waits until the keeper has no extension of `key` in flight (bounded by the SDK's own
    /// timeouts: the keeper clears the mark when its call returns, whatever the outcome).
    async fn no_extension_in_flight(&self, key: u64) {
        loop {
            let notified = self.extended.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !lock(&self.held).get(&key).is_some_and(|h| h.extending) {
                return;
            }
            notified.await;
        }
    }
}

use messaging_core::sync::lock;

impl Subscriber for SqsSubscriber {
    type Subscription = SqsSubscription;

    async fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<SqsSubscription, SubscribeError> {
        options.validate(&self.shared.features())?;
        let group = self.shared.declare_group(topic, &options).await?;
        let (settle_tx, settle_rx) = mpsc::unbounded_channel();
        tokio::spawn(settler(
            self.shared.clone(),
            group.url.clone(),
            settle_rx,
            self.shared.config.max_in_flight.max(1),
        ));
        let sub = Arc::new(SubShared {
            shared: self.shared.clone(),
            url: group.url.clone(),
            topic: Arc::from(topic),
            closed: AtomicBool::new(false),
            settle: settle_tx,
            held: Mutex::default(),
            next: AtomicU64::new(0),
            extended: tokio::sync::Notify::new(),
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let permits = Arc::new(Semaphore::new(options.prefetch_limit()));
        let ahead = Arc::new(Semaphore::new(READ_AHEAD));
        let (start_tx, start_rx) = oneshot::channel();
        let poller = Poller {
            sub: sub.clone(),
            start: Some(start_rx),
            tx,
            permits: permits.clone(),
            ahead: ahead.clone(),
            // A FIFO queue hands out a message group's next message only once the previous one
            // is deleted or visible again; receiving one message per call keeps every key to
            // one unsettled delivery, so a nacked message comes back before the rest of its key.
            batch: if options.is_ordered() { 1 } else { MAX_BATCH },
            prefetch: options.prefetch_limit(),
            deadline: options.get_ack_deadline(),
            wait: secs(self.shared.config.wait_time.min(Duration::from_secs(20))),
            max_deliveries: options.get_max_deliveries(),
            dead_letter: group.dead_letter.clone(),
            group: options.group().to_owned(),
        };
        let poller = tokio::spawn(poller.run());
        Ok(SqsSubscription {
            poller: Some(poller),
            wait_time: self.shared.config.wait_time.min(Duration::from_secs(20)),
            sub,
            rx,
            buffer: VecDeque::new(),
            permits,
            ahead,
            start: Some(start_tx),
            closed: false,
            fifo: group.fifo,
        })
    }

    fn features(&self) -> Features {
        self.shared.features()
    }
}

/// Receives into the subscription's buffer while it has room (its prefetch).
struct Poller {
    sub: Arc<SubShared>,
    /// Fires on the first receive: a subscription opened only to declare the group (and
    /// closed right away) never polls, so it never takes a message from its group.
    start: Option<oneshot::Receiver<()>>,
    tx: mpsc::UnboundedSender<Result<Vec<SqsDelivery>, ReceiveError>>,
    /// Unsettled deliveries: the prefetch.
    permits: Arc<Semaphore>,
    /// Deliveries received and not handed out yet: [`READ_AHEAD`].
    ahead: Arc<Semaphore>,
    batch: usize,
    prefetch: usize,
    deadline: Duration,
    wait: i32,
    max_deliveries: Option<u32>,
    dead_letter: Option<(String, Destination)>,
    group: String,
}

impl Poller {
    async fn run(mut self) {
        if let Some(start) = self.start.take() {
            if start.await.is_err() {
                return;
            }
        }
        if !self.deadline.is_zero() {
            tokio::spawn(keeper(self.sub.clone(), self.deadline));
        }
        let shared = &self.sub.shared;
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
                .await;
            let received_at = Instant::now();
            let messages = match result {
                Ok(out) => out.messages.unwrap_or_default(),
                Err(e) => {
                    let e = error::receive(e);
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
    async fn give_back(&self, batch: Vec<SqsDelivery>) {
        let receipts = batch.iter().map(|d| d.receipt.clone()).collect();
        drop(batch);
        release(self.sub.shared.clone(), self.sub.url.clone(), receipts).await;
    }

    /// A message past the delivery limit: publish it to the dead-letter topic with the
    /// dead-letter metadata, then delete it. If that fails, SQS's redrive policy moves it one
    /// receive later.
    async fn forward_dead_letter(
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

/// Keeps the messages waiting in the buffer invisible. Every eighth of the ack deadline it
/// extends, to the full deadline, the visibility timeout of each waiting message with less
/// than five eighths of it left (`ChangeMessageVisibilityBatch`, 10 per call), so `recv`
/// hands out every delivery with at least about half its deadline ahead, however long it
/// waited. A message whose extension the service refuses (its receipt is no longer valid,
/// or the 12 hours since its receive are used up) is dropped at hand-out instead of being
/// handed out twice. Ends when the subscription closes.
async fn keeper(sub: Arc<SubShared>, deadline: Duration) {
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
async fn extend_waiting(
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

/// Settles in batches: takes every request queued so far, groups deletes and visibility
/// changes, and sends them 10 per call with up to `in_flight` calls at once.
async fn settler(
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

async fn settle_batch(shared: &Shared, url: &str, visibility: Option<i32>, ops: Vec<SettleOp>) {
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

/// One consumer of a group's queue. A background task long-polls the queue while the
/// subscription holds fewer unsettled deliveries than its prefetch. Closing (or dropping)
/// makes this consumer's unsettled deliveries visible again at once.
pub struct SqsSubscription {
    sub: Arc<SubShared>,
    rx: mpsc::UnboundedReceiver<Result<Vec<SqsDelivery>, ReceiveError>>,
    buffer: VecDeque<SqsDelivery>,
    permits: Arc<Semaphore>,
    ahead: Arc<Semaphore>,
    start: Option<oneshot::Sender<()>>,
    closed: bool,
    fifo: bool,
    /// The poller; `close` waits for it, so a receive in flight at close has given back
    /// what it got before `close` returns.
    poller: Option<tokio::task::JoinHandle<()>>,
    wait_time: Duration,
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
async fn release(shared: Arc<Shared>, url: String, receipts: Vec<String>) {
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
    sub: Arc<SubShared>,
    payload: Result<Arc<Event>, DecodeError>,
    attempt: u32,
    receipt: String,
    key: u64,
    _permit: OwnedSemaphorePermit,
    /// Held while the delivery waits in the subscription's buffer ([`READ_AHEAD`]).
    ahead: Option<OwnedSemaphorePermit>,
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
