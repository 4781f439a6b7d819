//! Publishing with publisher confirms.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::future::join_all;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use std::borrow::Cow;

use lapin::{BasicProperties, Channel, Confirmation, PublisherConfirm};
use messaging_core::{
    Event, Features, PublishBatchError, PublishError, PublishErrorKind, Publisher, Receipt,
};

use crate::broker::Shared;
use crate::{codec, error};

/// Publishes to RabbitMQ: a topic is a durable fanout exchange (declared on first use). A
/// publish returns once the broker confirmed the message; a batch keeps all its confirms in
/// flight at once.
#[derive(Clone)]
pub struct RabbitPublisher {
    shared: Arc<Shared>,
    closed: Arc<AtomicBool>,
}

impl std::fmt::Debug for RabbitPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitPublisher").finish_non_exhaustive()
    }
}

impl RabbitPublisher {
    pub(crate) fn new(shared: Arc<Shared>) -> Self {
        Self {
            shared,
            closed: Arc::new(AtomicBool::new(false)),
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

    /// The confirm channel, with `topic`'s exchange declared.
    async fn channel(&self, topic: &str) -> Result<Channel, PublishError> {
        let ch = self.shared.confirm_channel().await?;
        self.shared
            .ensure_exchange(&ch, topic)
            .await
            .map_err(error::publish)?;
        Ok(ch)
    }

    async fn send(
        &self,
        ch: &Channel,
        topic: &str,
        props: BasicProperties,
        body: &[u8],
    ) -> Result<PublisherConfirm, PublishError> {
        ch.basic_publish(
            ShortString::from(topic),
            ShortString::from(""),
            BasicPublishOptions {
                mandatory: self.shared.config.mandatory,
                ..BasicPublishOptions::default()
            },
            body,
            props,
        )
        .await
        .map_err(error::publish)
    }

    fn timeout_error(&self) -> PublishError {
        PublishError::new(PublishErrorKind::Timeout).with_detail(format!(
            "no confirm within {:?}",
            self.shared.config.confirm_timeout
        ))
    }
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

impl Publisher for RabbitPublisher {
    async fn publish(&self, topic: &str, event: Event) -> Result<Receipt, PublishError> {
        let (props, body) = self.encode(&event)?;
        let ch = self.channel(topic).await?;
        let confirm = self.send(&ch, topic, props, &body).await?;
        match tokio::time::timeout(self.shared.config.confirm_timeout, confirm).await {
            Ok(result) => confirmation(result),
            Err(_) => Err(self.timeout_error()),
        }
    }

    async fn publish_batch(
        &self,
        topic: &str,
        events: Vec<Event>,
    ) -> Result<Vec<Receipt>, PublishBatchError> {
        // Send everything, then wait for all the confirms together, under one timeout.
        let ch = match self.channel(topic).await {
            Ok(ch) => ch,
            Err(e) => {
                let kind = e.kind();
                let detail = e.to_string();
                return Err(PublishBatchError::all(events, || {
                    PublishError::new(kind).with_detail(detail.clone())
                }));
            }
        };
        let mut pending = Vec::with_capacity(events.len());
        let mut failed = Vec::new();
        for (i, event) in events.iter().enumerate() {
            let sent = match self.encode(event) {
                Ok((props, body)) => self.send(&ch, topic, props, &body).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(confirm) => pending.push((i, confirm)),
                Err(e) => failed.push((i, e)),
            }
        }
        let indices: Vec<usize> = pending.iter().map(|(i, _)| *i).collect();
        let results: Vec<Result<Receipt, PublishError>> = match tokio::time::timeout(
            self.shared.config.confirm_timeout,
            join_all(pending.into_iter().map(|(_, c)| c)),
        )
        .await
        {
            Ok(results) => results.into_iter().map(confirmation).collect(),
            Err(_) => indices.iter().map(|_| Err(self.timeout_error())).collect(),
        };
        let mut accepted = Vec::with_capacity(results.len());
        for (i, r) in indices.into_iter().zip(results) {
            match r {
                Ok(receipt) => accepted.push((i, receipt)),
                Err(e) => failed.push((i, e)),
            }
        }
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
