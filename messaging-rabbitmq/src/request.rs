//! Request-reply through RabbitMQ's direct reply-to (`amq.rabbitmq.reply-to`): no reply queue
//! is declared; the broker routes each reply straight to the requesting channel.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Confirmation};
use messaging_core::request::{PendingReplies, REPLY_TO, RequestError, Waited};
use messaging_core::{AttributesReader, Event, PublishError, PublishErrorKind};

use crate::broker::Shared;
use crate::{codec, error};

/// The pseudo-queue a requester consumes from, and the `reply_to` it sends.
pub(crate) const DIRECT_REPLY_TO: &str = "amq.rabbitmq.reply-to";

/// Whether `topic` is a direct reply-to address (`amq.rabbitmq.reply-to.<token>`), published
/// through the default exchange rather than a topic exchange.
pub(crate) fn is_reply_address(topic: &str) -> bool {
    topic
        .strip_prefix(DIRECT_REPLY_TO)
        .is_some_and(|rest| rest.starts_with('.'))
}

/// Sends requests and waits for their replies over direct reply-to; made by
/// [`RabbitBroker::requester`](crate::RabbitBroker::requester).
///
/// It owns one channel that consumes `amq.rabbitmq.reply-to` and publishes the requests (the
/// broker requires both on the same channel). Each request carries the AMQP `reply_to`
/// property, which the broker turns into an address of this channel; the responder's adapter
/// puts that address in the event's `replyto` extension, so the core's
/// [`reply`](messaging_core::request::reply) answers through it. A reply is matched to its
/// request by causation ID; late and unknown replies are dropped. Replies are not persisted:
/// if the requester is gone, the broker drops them.
///
/// When the channel is lost (the connection dropped, the broker restarted), the requests
/// waiting on it fail with [`RequestError::Disconnected`] (transient: the request may have
/// been handled, and its reply had nowhere to go), and the next request opens a new channel
/// on the adapter's current connection.
pub struct DirectRequester {
    shared: Arc<Shared>,
    session: tokio::sync::Mutex<Arc<Session>>,
}

impl std::fmt::Debug for DirectRequester {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DirectRequester").finish_non_exhaustive()
    }
}

/// One reply channel: it consumes direct reply-to, publishes the requests, and holds the
/// requests waiting for a reply on it.
struct Session {
    channel: Channel,
    pending: PendingReplies,
    listener: tokio::task::JoinHandle<()>,
}

impl Session {
    async fn open(shared: &Arc<Shared>) -> Result<Self, lapin::Error> {
        let channel = shared.open_channel().await?;
        let consuming = async {
            shared
                .bounded(channel.confirm_select(ConfirmSelectOptions::default()))
                .await?;
            shared
                .bounded(channel.basic_consume(
                    ShortString::from(DIRECT_REPLY_TO),
                    ShortString::from(""),
                    BasicConsumeOptions {
                        no_ack: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                ))
                .await
        };
        let mut consumer = match consuming.await {
            Ok(consumer) => consumer,
            Err(e) => {
                close(channel, "requester not started");
                return Err(e);
            }
        };
        let pending = PendingReplies::new();
        let listening = pending.clone();
        let binding = shared.clone();
        let listener = tokio::spawn(async move {
            while let Some(Ok(mut d)) = consumer.next().await {
                let data = std::mem::take(&mut d.data);
                let Ok(event) = codec::decode(&binding.binding, &d.properties, data) else {
                    tracing::debug!("undecodable reply dropped");
                    continue;
                };
                let id = event.id().to_owned();
                if !listening.deliver(event) {
                    tracing::debug!(%id, "late or unknown reply dropped");
                }
            }
            // The channel is gone: its waiters see their waits end.
            listening.clear();
        });
        Ok(Self {
            channel,
            pending,
            listener,
        })
    }

    /// Whether replies can still arrive on this channel.
    fn is_live(&self) -> bool {
        self.channel.status().connected() && !self.listener.is_finished()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.listener.abort();
        self.pending.clear();
        if self.channel.status().connected() {
            close(self.channel.clone(), "requester dropped");
        }
    }
}

/// Closes `channel` in the background, where a runtime is there to do it.
fn close(channel: Channel, reason: &'static str) {
    if let Ok(rt) = tokio::runtime::Handle::try_current() {
        rt.spawn(async move {
            let _ = channel.close(200, ShortString::from(reason)).await;
        });
    }
}

impl DirectRequester {
    pub(crate) async fn start(shared: Arc<Shared>) -> Result<Self, messaging_core::SubscribeError> {
        let session = Session::open(&shared).await.map_err(error::subscribe)?;
        Ok(Self {
            shared,
            session: tokio::sync::Mutex::new(Arc::new(session)),
        })
    }

    /// The live reply channel, replacing a lost one with a new channel on the adapter's
    /// current connection.
    async fn session(&self) -> Result<Arc<Session>, PublishError> {
        let mut current = self.session.lock().await;
        if !current.is_live() {
            tracing::debug!("reply channel lost; opening a new one");
            *current = Arc::new(Session::open(&self.shared).await.map_err(error::publish)?);
        }
        Ok(current.clone())
    }

    /// Publishes `request` to `topic` and waits up to `timeout` for its reply.
    pub async fn request(
        &self,
        topic: &str,
        mut request: Event,
        timeout: Duration,
    ) -> Result<Event, RequestError> {
        request.set_extension(REPLY_TO, DIRECT_REPLY_TO);
        let session = self.session().await.map_err(RequestError::Publish)?;
        // Registered before encoding: registering stamps the request's reply token.
        let waiter = session.pending.register(&mut request);
        let (props, body, size) = codec::encode(
            &self.shared.binding,
            &request,
            self.shared.config.content_mode,
        )
        .map_err(|e| RequestError::Publish(e.into()))?;
        let max = self.shared.config.max_payload;
        if size > max {
            return Err(RequestError::Publish(
                PublishError::new(PublishErrorKind::PayloadTooLarge)
                    .with_detail(format!("{size} bytes, limit {max}")),
            ));
        }
        let props = props.with_reply_to(ShortString::from(DIRECT_REPLY_TO));
        let sent = async {
            self.shared
                .ensure_exchange(&session.channel, topic)
                .await
                .map_err(error::publish)?;
            let confirm = self
                .shared
                .bounded(session.channel.basic_publish(
                    ShortString::from(topic),
                    ShortString::from(""),
                    BasicPublishOptions::default(),
                    &body,
                    props,
                ))
                .await
                .map_err(error::publish)?;
            match tokio::time::timeout(self.shared.config.confirm_timeout, confirm).await {
                Ok(Ok(Confirmation::Ack(_) | Confirmation::NotRequested)) => Ok(()),
                Ok(Ok(Confirmation::Nack(_))) => {
                    Err(PublishError::new(PublishErrorKind::Unavailable)
                        .with_detail("broker nacked the request"))
                }
                Ok(Err(e)) => Err(error::publish(e)),
                Err(_) => Err(PublishError::new(PublishErrorKind::Timeout)
                    .with_detail("no confirm for the request")),
            }
        };
        sent.await.map_err(RequestError::Publish)?;
        waiter.wait(timeout).await.map_err(|w| match w {
            Waited::Timeout => RequestError::Timeout(timeout),
            // The listener ended with the channel: the reply has nowhere to arrive.
            Waited::Closed => RequestError::Disconnected,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reply_addresses_are_the_broker_generated_ones() {
        assert!(is_reply_address("amq.rabbitmq.reply-to.g1h2AA==.Wjg3NzE="));
        assert!(!is_reply_address("amq.rabbitmq.reply-to"));
        assert!(!is_reply_address("orders"));
        assert!(!is_reply_address("amq.rabbitmq.reply-tox.1"));
    }
}
