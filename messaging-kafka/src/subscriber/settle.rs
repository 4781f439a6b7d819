//! Settling deliveries: ack, redelivery in place or later, and republishing to a retry topic.

use std::sync::Arc;
use std::time::Duration;

use messaging_core::{AckError, AckErrorKind};

use super::state::{Msg, Sub, closed_error, now_ms};
use crate::codec::{self, ATTEMPT_HEADER, GROUP_HEADER, NOT_BEFORE_HEADER, ORIGIN_HEADER};
use crate::publisher::prepare;

impl Sub {
    /// Settles `m` as done.
    pub(super) fn ack(self: &Arc<Self>, m: &Msg) -> Result<(), AckError> {
        let mut st = self.lock();
        if !st.valid(m) {
            return Err(closed_error());
        }
        let mut notify = false;
        if let Some(part) = st.part(&m.topic, m.partition) {
            part.tracker.settle(m.offset);
            part.out -= 1;
            part.busy = false;
            notify = part.revoking;
        }
        st.unsettled -= 1;
        self.dispatch(&mut st);
        drop(st);
        if notify {
            self.settled.notify_all();
        }
        Ok(())
    }

    /// Hands `m` out again with the next attempt number (it stays in flight).
    // The error hands the message back to the delivery; the path is cold.
    #[allow(clippy::result_large_err)]
    pub(super) fn redeliver(self: &Arc<Self>, mut m: Msg) -> Result<(), (AckError, Msg)> {
        let mut st = self.lock();
        if !st.valid(&m) {
            return Err((closed_error(), m));
        }
        drop(st);
        m.attempt = m.attempt.saturating_add(1);
        self.send(m);
        Ok(())
    }

    /// Redelivers `m` after `delay` without leaving the partition (ordered subscriptions, or
    /// no retry tiers configured).
    // The error hands the message back to the delivery; the path is cold.
    #[allow(clippy::result_large_err)]
    pub(super) fn redeliver_later(
        self: &Arc<Self>,
        m: Msg,
        delay: Duration,
    ) -> Result<(), (AckError, Msg)> {
        if !self.lock().valid(&m) {
            return Err((closed_error(), m));
        }
        let sub = self.clone();
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            // A revoked partition's message is redelivered by its new owner instead.
            let _ = sub.redeliver(m);
        });
        Ok(())
    }

    /// Republishes `m` to the retry topic for `delay`, then settles it.
    pub(super) async fn retry_via_topic(
        self: &Arc<Self>,
        m: &Msg,
        delay: Duration,
        retry_topic: &str,
    ) -> Result<(), AckError> {
        if !self.lock().valid(m) {
            return Err(closed_error());
        }
        let due = now_ms().saturating_add(i64::try_from(delay.as_millis()).unwrap_or(i64::MAX));
        let attempt = m.attempt.to_string();
        let due = due.to_string();
        let extra: [(&str, &[u8]); 4] = [
            (ATTEMPT_HEADER, attempt.as_bytes()),
            (NOT_BEFORE_HEADER, due.as_bytes()),
            (ORIGIN_HEADER, self.topic.as_bytes()),
            (GROUP_HEADER, self.group.as_bytes()),
        ];
        let producer = &self.broker.producer;
        let sent = match &m.payload {
            Ok(event) => {
                let record = prepare(&self.broker, event, self.broker.config.content_mode)
                    .map_err(|e| AckError::new(AckErrorKind::Unavailable).with_source(e))?;
                let headers = record.headers(&extra);
                producer
                    .send_one(retry_topic, record.key, &record.encoded.body, headers)
                    .await
            }
            Err(decode) => {
                let raw = decode.raw().cloned().unwrap_or_default();
                producer
                    .send_one(
                        retry_topic,
                        codec::raw_key(&raw),
                        &raw.body,
                        codec::raw_headers(&raw, &extra),
                    )
                    .await
            }
        };
        if let Err(e) = sent {
            return Err(AckError::new(AckErrorKind::Unavailable)
                .with_detail(format!(
                    "cannot publish to retry topic {retry_topic:?}: {e}"
                ))
                .with_source(e));
        }
        // Revoked meanwhile: the copy on the retry topic stands; the original is redelivered
        // by the partition's new owner too (at-least-once).
        let _ = self.ack(m);
        Ok(())
    }
}
