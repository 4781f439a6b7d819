//! What the poller, the settler and the subscription share.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::{Arc, Mutex};

use messaging_core::AckError;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::broker::Shared;

/// One settle request for the settler: delete (`visibility: None`) or change visibility.
pub(super) struct SettleOp {
    pub(super) receipt: String,
    pub(super) visibility: Option<i32>,
    pub(super) reply: oneshot::Sender<Result<(), AckError>>,
}

/// A message received and not settled yet: waiting in the buffer, or handed out.
pub(super) struct Held {
    pub(super) receipt: String,
    /// When its visibility timeout runs out, as far as this subscription knows.
    pub(super) deadline: Instant,
    /// Received and not handed out yet: the keeper extends its visibility timeout.
    pub(super) waiting: bool,
    /// The keeper has an extension of it in flight; settling and extending wait for it, so
    /// that a stale extension never lands after (and undoes) a nack or a longer extension.
    pub(super) extending: bool,
}

/// What a subscription's deliveries share.
pub(super) struct SubShared {
    pub(super) shared: Arc<Shared>,
    pub(super) url: String,
    pub(super) topic: Arc<str>,
    pub(super) closed: AtomicBool,
    pub(super) settle: mpsc::UnboundedSender<SettleOp>,
    pub(super) held: Mutex<HashMap<u64, Held>>,
    pub(super) next: AtomicU64,
    /// Signalled when the keeper's extensions in flight have been answered.
    pub(super) extended: tokio::sync::Notify,
}

impl SubShared {
    /// Marks the buffered delivery `key` as handed out, if it is still this subscription's to
    /// hand out: not past its visibility timeout (SQS may have handed it to someone else) and
    /// not given up by the keeper.
    pub(super) fn hand_out(&self, key: u64) -> bool {
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
    pub(super) async fn no_extension_in_flight(&self, key: u64) {
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
