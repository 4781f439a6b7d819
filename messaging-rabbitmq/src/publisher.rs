//! Publishing with publisher confirms.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use std::borrow::Cow;
use std::future::Future;

use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use messaging_core::publisher::BatchOutcome;
use messaging_core::telemetry::{SendTelemetry, semconv};
use messaging_core::{
    Event, Features, PublishBatchError, PublishError, PublishErrorKind, Publisher, Receipt,
};

use crate::broker::Shared;
use crate::request::is_reply_address;
use crate::{codec, error};

/// Publishes to RabbitMQ: a topic is a durable fanout exchange (declared on first use). A
/// publish returns once the broker confirmed the message; a batch keeps all its confirms in
/// flight at once.
#[derive(Clone)]
pub struct RabbitPublisher {
    shared: Arc<Shared>,
    closed: Arc<AtomicBool>,
    telemetry: SendTelemetry,
}

impl std::fmt::Debug for RabbitPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitPublisher").finish_non_exhaustive()
    }
}

impl RabbitPublisher {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        let telemetry = SendTelemetry::new(semconv::system_for("rabbitmq"))
            .with_server_of(&shared.config.uri, 5672);
        Self {
            shared,
            closed: Arc::new(AtomicBool::new(false)),
            telemetry,
        }
    }

    fn encode<'a>(
        &'a self,
        event: &'a Event,
    ) -> Result<(BasicProperties, Cow<'a, [u8]>), PublishError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(PublishError::new(PublishErrorKind::Closed));
        }
        let (props, body, size) =
            codec::encode(&self.shared.binding, event, self.shared.config.content_mode)?;
        let max = self.shared.config.max_payload;
        if size > max {
            return Err(PublishError::new(PublishErrorKind::PayloadTooLarge)
                .with_detail(format!("{size} bytes, limit {max}")));
        }
        Ok((props, body))
    }

    /// The confirm channel, with `topic`'s exchange declared (a direct reply-to address
    /// needs none: it goes through the default exchange).
    async fn channel(&self, topic: &str) -> Result<Channel, PublishError> {
        let ch = self.shared.confirm_channel().await?;
        if !is_reply_address(topic) {
            self.shared
                .ensure_exchange(&ch, topic)
                .await
                .map_err(error::publish)?;
        }
        Ok(ch)
    }

    async fn send(
        &self,
        ch: &Channel,
        topic: &str,
        props: BasicProperties,
        body: &[u8],
    ) -> Result<PublisherConfirm, PublishError> {
        // A reply to a direct reply-to requester: the default exchange routes it by the
        // address the broker gave the request.
        let (exchange, routing_key) = if is_reply_address(topic) {
            ("", topic)
        } else {
            (topic, "")
        };
        let limit = self.shared.config.operation_timeout;
        let sent = ch.basic_publish(
            ShortString::from(exchange),
            ShortString::from(routing_key),
            BasicPublishOptions {
                mandatory: self.shared.config.mandatory,
                ..BasicPublishOptions::default()
            },
            body,
            props,
        );
        match tokio::time::timeout(limit, sent).await {
            Ok(sent) => sent.map_err(error::publish),
            // The frame may still go out: whether the broker got it is unknown.
            Err(_) => Err(PublishError::new(PublishErrorKind::Timeout)
                .with_detail(format!("not sent within {limit:?} (operation_timeout)"))),
        }
    }

    /// Publishes one laid-out message and waits for its confirm.
    pub(crate) async fn publish_props(
        &self,
        topic: &str,
        props: BasicProperties,
        body: &[u8],
    ) -> Result<Receipt, PublishError> {
        let ch = self.channel(topic).await?;
        let confirm = self.send(&ch, topic, props, body).await?;
        match tokio::time::timeout(self.shared.config.confirm_timeout, confirm).await {
            Ok(result) => confirmation(result),
            Err(_) => Err(self.timeout_error()),
        }
    }

    fn timeout_error(&self) -> PublishError {
        PublishError::new(PublishErrorKind::Timeout).with_detail(format!(
            "no confirm within {:?}",
            self.shared.config.confirm_timeout
        ))
    }
}

/// Waits for every confirm until `deadline`, each on its own: a confirm that arrived in time
/// counts even when others did not (`None`). In order, since confirms arrive roughly in order:
/// once the first ones came, the rest are usually ready without waiting (or a timer).
async fn await_confirms<K, F: Future>(
    confirms: Vec<(K, F)>,
    deadline: tokio::time::Instant,
) -> Vec<(K, Option<F::Output>)> {
    let mut out = Vec::with_capacity(confirms.len());
    for (k, confirm) in confirms {
        // `timeout_at` polls the confirm before the deadline: past the deadline, a confirm
        // that already arrived still counts.
        out.push((k, tokio::time::timeout_at(deadline, confirm).await.ok()));
    }
    out
}

fn confirmation(result: lapin::Result<Confirmation>) -> Result<Receipt, PublishError> {
    match result {
        Err(e) => Err(error::publish(e)),
        Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => Ok(Receipt::new()),
        Ok(Confirmation::Ack(Some(returned))) => Err(PublishError::new(
            PublishErrorKind::Unroutable,
        )
        .with_detail(format!(
            "no queue bound: {} {}",
            returned.reply_code, returned.reply_text
        ))),
        Ok(Confirmation::Nack(_)) => Err(PublishError::new(PublishErrorKind::Unavailable)
            .with_detail("broker nacked the message")),
    }
}

impl RabbitPublisher {
    async fn publish_one(&self, topic: &str, event: Event) -> Result<Receipt, PublishError> {
        let (props, body) = self.encode(&event)?;
        self.publish_props(topic, props, &body).await
    }

    async fn publish_many(
        &self,
        topic: &str,
        events: Vec<Event>,
    ) -> Result<Vec<Receipt>, PublishBatchError> {
        // Send everything, then wait for the confirms, each until confirm_timeout from now:
        // only the unconfirmed ones fail with Timeout.
        let ch = match self.channel(topic).await {
            Ok(ch) => ch,
            Err(e) => return Err(PublishBatchError::all_failed(events, &e)),
        };
        let mut pending = Vec::with_capacity(events.len());
        let mut outcome = BatchOutcome::new(events.len());
        for (i, event) in events.iter().enumerate() {
            let sent = match self.encode(event) {
                Ok((props, body)) => self.send(&ch, topic, props, &body).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(confirm) => pending.push((i, confirm)),
                Err(e) => outcome.fail(i, e),
            }
        }
        let deadline = tokio::time::Instant::now() + self.shared.config.confirm_timeout;
        for (i, confirmed) in await_confirms(pending, deadline).await {
            outcome.record(
                i,
                confirmed.map_or_else(|| Err(self.timeout_error()), confirmation),
            );
        }
        outcome.finish(events)
    }
}

impl Publisher for RabbitPublisher {
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn only_confirms_missing_at_the_deadline_time_out() {
        // Like lapin's confirms, these resolve whether or not anyone polls them.
        let after = |ms: u64, v: u32| {
            let (tx, rx) = tokio::sync::oneshot::channel();
            tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                let _ = tx.send(v);
            });
            rx
        };
        let confirms = vec![
            (0, after(0, 10)),
            (1, after(1_000, 11)),     // too late
            (2, after(3_600_000, 12)), // never in time
            (3, after(50, 13)),        // in time, behind late ones
        ];
        let started = tokio::time::Instant::now();
        let deadline = started + Duration::from_millis(300);
        let results: Vec<(i32, Option<u32>)> = await_confirms(confirms, deadline)
            .await
            .into_iter()
            .map(|(i, r)| (i, r.and_then(Result::ok)))
            .collect();
        assert_eq!(
            results,
            [(0, Some(10)), (1, None), (2, None), (3, Some(13))]
        );
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "waited until the deadline only, not for each confirm in turn"
        );
    }
}
