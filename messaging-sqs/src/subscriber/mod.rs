//! Subscribing: a background poller per subscription long-polls the group's queue, a
//! settler coalesces acks and nacks into batch calls.
//!
//! One file per role: [`poller`] (receiving while there is room, forwarding native dead
//! letters), [`lease`] (keeping buffered messages' visibility extended), [`settler`](mod@settler) (batched
//! deletes and visibility changes), [`state`] (what they share) and [`delivery`] (the
//! subscription and deliveries the application holds).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging_core::{Features, SubscribeError, SubscribeOptions, Subscriber};
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::broker::Shared;
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

mod delivery;
mod lease;
mod poller;
mod settler;
mod state;

pub use delivery::{SqsDelivery, SqsSubscription};
use poller::Poller;
use settler::settler;
use state::SubShared;

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
