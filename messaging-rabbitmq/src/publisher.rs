//! Publishing with publisher confirms.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use futures_util::future::join_all;
use lapin::options::BasicPublishOptions;
use lapin::types::ShortString;
use lapin::{BasicProperties, Confirmation, PublisherConfirm};
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

    fn encode(&self, event: &Event) -> Result<(BasicProperties, Vec<u8>), PublishError> {
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

    async fn send(
        &self,
        topic: &str,
        props: BasicProperties,
        body: &[u8],
    ) -> Result<PublisherConfirm, PublishError> {
        let ch = self.shared.confirm_channel().await?;
        self.shared
            .ensure_exchange(&ch, topic)
            .await
            .map_err(error::publish)?;
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

    async fn confirmed(&self, confirm: PublisherConfirm) -> Result<Receipt, PublishError> {
        let timeout = self.shared.config.confirm_timeout;
        match tokio::time::timeout(timeout, confirm).await {
            Err(_) => Err(PublishError::new(PublishErrorKind::Timeout)
                .with_detail(format!("no confirm within {timeout:?}"))),
            Ok(Err(e)) => Err(error::publish(e)),
            Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => Ok(Receipt::new()),
            Ok(Ok(Confirmation::Ack(Some(returned)))) => Err(PublishError::new(
                PublishErrorKind::Unroutable,
            )
            .with_detail(format!(
                "no queue bound: {} {}",
                returned.reply_code, returned.reply_text
            ))),
            Ok(Ok(Confirmation::Nack(_))) => Err(PublishError::new(PublishErrorKind::Unavailable)
                .with_detail("broker nacked the message")),
        }
    }
}

impl Publisher for RabbitPublisher {
    async fn publish(&self, topic: &str, event: Event) -> Result<Receipt, PublishError> {
        let (props, body) = self.encode(&event)?;
        let confirm = self.send(topic, props, &body).await?;
        self.confirmed(confirm).await
    }

    async fn publish_batch(
        &self,
        topic: &str,
        events: Vec<Event>,
    ) -> Result<Vec<Receipt>, PublishBatchError> {
        // Send everything first, then wait for all confirms together.
        let mut pending = Vec::with_capacity(events.len());
        let mut failed = Vec::new();
        let mut kept = Vec::with_capacity(events.len());
        for (i, event) in events.into_iter().enumerate() {
            let sent = match self.encode(&event) {
                Ok((props, body)) => self.send(topic, props, &body).await,
                Err(e) => Err(e),
            };
            match sent {
                Ok(confirm) => {
                    pending.push((i, confirm));
                    kept.push((i, event));
                }
                Err(e) => failed.push((i, event, e)),
            }
        }
        let results = join_all(
            pending
                .into_iter()
                .map(|(i, c)| async move { (i, self.confirmed(c).await) }),
        )
        .await;
        let mut accepted = Vec::with_capacity(results.len());
        let mut events: std::collections::HashMap<usize, Event> = kept.into_iter().collect();
        for (i, r) in results {
            match r {
                Ok(receipt) => accepted.push((i, receipt)),
                Err(e) => {
                    if let Some(event) = events.remove(&i) {
                        failed.push((i, event, e));
                    }
                }
            }
        }
        if failed.is_empty() {
            accepted.sort_by_key(|(i, _)| *i);
            Ok(accepted.into_iter().map(|(_, r)| r).collect())
        } else {
            failed.sort_by_key(|(i, _, _)| *i);
            Err(PublishBatchError { accepted, failed })
        }
    }

    async fn close(&self) -> Result<(), PublishError> {
        self.closed.store(true, Ordering::Release);
        Ok(())
    }

    fn features(&self) -> Features {
        self.shared.features()
    }
}
