//! Subscribing: a group is a durable queue bound to the topic's exchange.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Confirmation};
use messaging_core::{
    AckError, AckErrorKind, Coordinates, DecodeError, Delivery, Event, Features, ReceiveError,
    ReceiveErrorKind, SettleError, SubscribeError, SubscribeOptions, Subscriber, Subscription,
};

use crate::broker::Shared;
use crate::{codec, error, names};

/// Opens subscriptions on RabbitMQ.
#[derive(Clone)]
pub struct RabbitSubscriber {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for RabbitSubscriber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitSubscriber").finish_non_exhaustive()
    }
}

impl Subscriber for RabbitSubscriber {
    type Subscription = RabbitSubscription;

    async fn subscribe(
        &self,
        topic: &str,
        options: SubscribeOptions,
    ) -> Result<RabbitSubscription, SubscribeError> {
        self.check(&options)?;
        let c = self
            .shared
            .open_consumer(topic, &options)
            .await
            .map_err(error::subscribe)?;
        Ok(RabbitSubscription {
            shared: self.shared.clone(),
            conn: c.conn,
            channel: c.channel,
            consumer: c.consumer,
            topic: Arc::from(topic),
            queue: Arc::from(c.queue.as_str()),
            options,
            lost: false,
            closed: false,
        })
    }

    /// Declares the exchange and the group's queue on a short-lived channel, without a
    /// consumer: messages already in the queue stay untouched (a subscribe-and-close would be
    /// handed them and return them with a higher delivery count).
    async fn declare(&self, topic: &str, options: SubscribeOptions) -> Result<(), SubscribeError> {
        self.check(&options)?;
        self.shared
            .declare_group(topic, &options)
            .await
            .map(|_| ())
            .map_err(error::subscribe)
    }

    fn features(&self) -> Features {
        self.shared.features()
    }
}

impl RabbitSubscriber {
    /// Whether this adapter can serve `options`.
    fn check(&self, options: &SubscribeOptions) -> Result<(), SubscribeError> {
        options.validate(&self.shared.features())?;
        if options.is_ordered() && options.get_max_deliveries().is_some() {
            // Ordered groups are classic queues (see the crate docs), which have no delivery limit.
            return Err(
                SubscribeError::new(messaging_core::SubscribeErrorKind::Unsupported).with_detail(
                    "rabbitmq: an ordered group cannot have a broker-side delivery limit",
                ),
            );
        }
        Ok(())
    }
}

/// One consumer of a group's queue, on its own channel. Closing (or dropping) it closes the
/// channel, and RabbitMQ requeues its unacked deliveries.
///
/// When the connection is lost, `recv` fails with a transient error
/// ([`Unavailable`](ReceiveErrorKind::Unavailable)); the next `recv` consumes again on the
/// broker's new connection (declaring the queue again first), or fails transiently while
/// there is none yet.
pub struct RabbitSubscription {
    shared: Arc<Shared>,
    /// The connection the channel is on.
    conn: Arc<lapin::Connection>,
    channel: Channel,
    consumer: lapin::Consumer,
    topic: Arc<str>,
    queue: Arc<str>,
    options: SubscribeOptions,
    /// The connection or channel was lost: the next `recv` opens a new consumer.
    lost: bool,
    closed: bool,
}

impl std::fmt::Debug for RabbitSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitSubscription")
            .field("queue", &self.queue)
            .finish_non_exhaustive()
    }
}

impl RabbitSubscription {
    fn wrap(&self, d: lapin::message::Delivery) -> RabbitDelivery {
        RabbitDelivery::new(
            self.shared.clone(),
            self.topic.clone(),
            self.queue.clone(),
            d,
        )
    }

    fn closed() -> ReceiveError {
        ReceiveError::new(ReceiveErrorKind::Closed)
    }

    /// Consumes again, on a new channel of the connection in use, after the old one was lost.
    async fn resume(&mut self) -> Result<(), ReceiveError> {
        let c = self
            .shared
            .open_consumer(&self.topic, &self.options)
            .await
            .map_err(error::receive)?;
        tracing::info!(
            queue = c.queue,
            "consuming again after the connection was lost"
        );
        self.conn = c.conn;
        self.channel = c.channel;
        self.consumer = c.consumer;
        self.queue = Arc::from(c.queue.as_str());
        self.lost = false;
        Ok(())
    }

    /// Whether the consumer ended because its channel or connection went away (rather than
    /// the broker cancelling it: the queue was deleted).
    fn transport_lost(&self) -> bool {
        !self.channel.status().connected() && !self.conn.status().connected()
    }
}

impl Subscription for RabbitSubscription {
    type Delivery = RabbitDelivery;

    async fn recv(&mut self) -> Result<RabbitDelivery, ReceiveError> {
        if self.closed {
            return Err(Self::closed());
        }
        if self.lost {
            self.resume().await?;
        }
        match self.consumer.next().await {
            Some(Ok(d)) => Ok(self.wrap(d)),
            Some(Err(e)) => {
                let e = error::receive(e);
                self.lost = e.is_transient();
                Err(e)
            }
            None if self.transport_lost() => {
                self.lost = true;
                Err(ReceiveError::new(ReceiveErrorKind::Unavailable)
                    .with_detail("the connection was lost; the next recv consumes again"))
            }
            None => Err(Self::closed().with_detail("consumer cancelled or channel closed")),
        }
    }

    async fn recv_batch(&mut self, max: usize) -> Result<Vec<RabbitDelivery>, ReceiveError> {
        let first = self.recv().await?;
        let mut out = vec![first];
        // Whatever else the prefetch already brought, without waiting.
        while out.len() < max {
            match self.consumer.next().now_or_never() {
                Some(Some(Ok(d))) => out.push(self.wrap(d)),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn close(&mut self) -> Result<(), ReceiveError> {
        if !self.closed {
            self.closed = true;
            if let Err(e) = self
                .shared
                .bounded(
                    self.channel
                        .close(200, ShortString::from("subscription closed")),
                )
                .await
            {
                tracing::debug!(error = %e, "closing the consumer channel");
            }
        }
        Ok(())
    }
}

impl Drop for RabbitSubscription {
    fn drop(&mut self) {
        if !self.closed && self.channel.status().connected() {
            let ch = self.channel.clone();
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(async move {
                    let _ = ch
                        .close(200, ShortString::from("subscription dropped"))
                        .await;
                });
            }
        }
    }
}

/// A delivery from RabbitMQ, settled on its channel.
pub struct RabbitDelivery {
    shared: Arc<Shared>,
    body: Result<Arc<Event>, DecodeError>,
    attempt: u32,
    topic: Arc<str>,
    queue: Arc<str>,
    inner: lapin::message::Delivery,
}

impl std::fmt::Debug for RabbitDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitDelivery")
            .field("queue", &self.queue)
            .field("attempt", &self.attempt)
            .finish_non_exhaustive()
    }
}

impl RabbitDelivery {
    fn new(
        shared: Arc<Shared>,
        topic: Arc<str>,
        queue: Arc<str>,
        mut inner: lapin::message::Delivery,
    ) -> Self {
        let props = &inner.properties;
        let before = codec::int_header(props, codec::ATTEMPT_HEADER).unwrap_or(0);
        let redeliveries =
            codec::int_header(props, codec::DELIVERY_COUNT).unwrap_or(i64::from(inner.redelivered));
        let attempt = u32::try_from(before + redeliveries + 1).unwrap_or(u32::MAX);
        let data = std::mem::take(&mut inner.data);
        let body = codec::decode(&shared.binding, &inner.properties, data).map(Arc::new);
        Self {
            shared,
            body,
            attempt,
            topic,
            queue,
            inner,
        }
    }

    fn fail(self, error: AckError) -> SettleError<Self> {
        SettleError {
            error,
            delivery: self,
        }
    }

    /// Re-publishes through a per-delay queue whose TTL dead-letters back to this queue:
    /// RabbitMQ has no delayed delivery without a plugin. The caller acks the original once
    /// this returns `Ok`.
    async fn redeliver_after(&self, delay: Duration) -> Result<(), DelayFailure> {
        let ms = delay_bucket_ms(delay);
        let delay_queue = names::delay_queue_name(&self.queue, ms);
        let ch = self.shared.confirm_channel().await.map_err(|e| {
            DelayFailure::NotPublished(
                AckError::new(AckErrorKind::Unavailable).with_detail(e.to_string()),
            )
        })?;
        let mut args = FieldTable::default();
        // Classic whatever the vhost's default queue type (quorum on some 4.x brokers): no
        // consumer ever reads a delay queue, its messages only expire back to the group's
        // queue, and a classic queue has no delivery limit to drop them by.
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("classic".into()),
        );
        let ttl = i64::try_from(ms).unwrap_or(i64::MAX);
        args.insert("x-message-ttl".into(), AMQPValue::LongLongInt(ttl));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(LongString::from(self.queue.as_bytes().to_vec())),
        );
        // Idle delay queues go away by themselves.
        args.insert(
            "x-expires".into(),
            AMQPValue::LongLongInt(ttl.saturating_add(60_000)),
        );
        self.shared
            .bounded(ch.queue_declare(
                ShortString::from(delay_queue.as_str()),
                QueueDeclareOptions {
                    durable: true,
                    ..QueueDeclareOptions::default()
                },
                args,
            ))
            .await
            .map_err(|e| DelayFailure::NotPublished(error::delay_unpublished(e)))?;
        // The body moved into the event: encode it again (or take the raw bytes back from
        // the decode error), and carry the attempt count across.
        let (props, body) = match &self.body {
            Ok(event) => {
                let (props, body, _) =
                    codec::encode(&self.shared.binding, event, self.shared.config.content_mode)
                        .map_err(|e| {
                            DelayFailure::NotPublished(
                                AckError::new(AckErrorKind::Unsupported).with_detail(e.to_string()),
                            )
                        })?;
                (props, body.into_owned())
            }
            Err(e) => (
                self.inner.properties.clone(),
                e.raw().map(|r| r.body.clone()).unwrap_or_default(),
            ),
        };
        let mut headers = props.headers().clone().unwrap_or_default();
        headers.insert(
            codec::ATTEMPT_HEADER.into(),
            AMQPValue::LongLongInt(i64::from(self.attempt)),
        );
        let props: BasicProperties = props.with_headers(headers);
        let limit = self.shared.config.operation_timeout;
        let sent = ch.basic_publish(
            ShortString::from(""),
            ShortString::from(delay_queue.as_str()),
            BasicPublishOptions::default(),
            &body,
            props,
        );
        let confirm = match tokio::time::timeout(limit, sent).await {
            Ok(sent) => {
                sent.map_err(|e| DelayFailure::NotPublished(error::delay_unpublished(e)))?
            }
            // The frame may still go out.
            Err(_) => {
                return Err(DelayFailure::MaybePublished(
                    AckError::new(AckErrorKind::Timeout).with_detail(format!(
                        "delayed redelivery not sent within {limit:?} (operation_timeout)"
                    )),
                ));
            }
        };
        // From here on a copy may be in the delay queue: retrying would add another.
        let timeout = self.shared.config.confirm_timeout;
        match tokio::time::timeout(timeout, confirm).await {
            Ok(Ok(Confirmation::Ack(None) | Confirmation::NotRequested)) => Ok(()),
            Ok(Ok(other)) => Err(DelayFailure::MaybePublished(
                AckError::new(AckErrorKind::Closed)
                    .with_detail(format!("delayed redelivery not confirmed: {other:?}")),
            )),
            Ok(Err(e)) => Err(DelayFailure::MaybePublished(error::ack(e))),
            Err(_) => Err(DelayFailure::MaybePublished(
                AckError::new(AckErrorKind::Timeout).with_detail(format!(
                    "delayed redelivery not confirmed within {timeout:?}"
                )),
            )),
        }
    }

    /// After a failed delayed redelivery: requeues the message at once (basic.nack with
    /// requeue) while the delivery's channel still lives, so it is redelivered promptly rather
    /// than held unacked until the channel closes.
    async fn requeue_instead(self, failure: DelayFailure) -> Result<(), SettleError<Self>> {
        let (cause, maybe_copy) = match failure {
            DelayFailure::NotPublished(e) => (e, false),
            DelayFailure::MaybePublished(e) => (e, true),
        };
        if !self.inner.acker.usable() {
            return Err(self.fail(AckError::new(AckErrorKind::Closed).with_detail(format!(
                "channel closed after the delayed redelivery failed ({cause}); the broker requeues the message"
            ))));
        }
        tracing::warn!(
            queue = %self.queue,
            error = %cause,
            maybe_copy,
            "delayed redelivery failed; requeueing the message for immediate redelivery"
        );
        let options = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        match self.shared.bounded(self.inner.acker.nack(options)).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.fail(AckError::new(AckErrorKind::Closed).with_detail(format!(
                "channel closed after the delayed redelivery failed ({cause}); the broker requeues the message"
            )))),
            Err(e) => Err(self.fail(error::ack(e))),
        }
    }
}

/// Steps of the delay ladder within one decade (×10ⁿ ms): consecutive steps are at most a
/// third apart.
const DELAY_STEPS: [u64; 10] = [10, 12, 15, 20, 25, 30, 40, 50, 60, 80];

/// The delay queue's TTL for a requested delay: the delay rounded **up** to the ladder
/// 10, 12, 15, 20, 25, 30, 40, 50, 60, 80 ms × 10ⁿ (10 ms at least). Each delay queue serves
/// one TTL, so without this every distinct jittered delay would declare a queue of its own;
/// on the ladder, delays within a decade share at most ten queues, and a message waits at most
/// a third longer than asked (never shorter).
pub(crate) fn delay_bucket_ms(delay: Duration) -> u64 {
    let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    let mut scale = 1u64;
    loop {
        for step in DELAY_STEPS {
            match step.checked_mul(scale) {
                Some(bucket) if bucket >= ms => return bucket,
                Some(_) => {}
                // Beyond the ladder (hundreds of millions of years): the delay as asked.
                None => return ms,
            }
        }
        scale = match scale.checked_mul(10) {
            Some(s) => s,
            None => return ms,
        };
    }
}

/// Why a delayed redelivery failed.
enum DelayFailure {
    /// Nothing reached the delay queue.
    NotPublished(AckError),
    /// The copy was sent but not confirmed: it may wait in the delay queue, so publishing
    /// again could duplicate it.
    MaybePublished(AckError),
}

impl Delivery for RabbitDelivery {
    fn payload(&self) -> Result<&Event, &DecodeError> {
        self.body.as_deref()
    }

    fn shared_event(&self) -> Result<Arc<Event>, DecodeError> {
        self.body.clone()
    }

    fn topic(&self) -> &str {
        &self.topic
    }

    fn attempt(&self) -> u32 {
        self.attempt
    }

    fn coordinates(&self) -> Coordinates<'_> {
        Coordinates {
            delivery_tag: Some(self.inner.delivery_tag),
            ..Coordinates::default()
        }
    }

    async fn ack(self) -> Result<(), SettleError<Self>> {
        match self
            .shared
            .bounded(self.inner.acker.ack(BasicAckOptions::default()))
            .await
        {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.fail(
                AckError::new(AckErrorKind::Closed)
                    .with_detail("channel closed; the message was requeued"),
            )),
            Err(e) => Err(self.fail(error::ack(e))),
        }
    }

    async fn nack(self, delay: Option<Duration>) -> Result<(), SettleError<Self>> {
        if let Some(delay) = delay.filter(|d| !d.is_zero()) {
            if !self.inner.acker.usable() {
                return Err(self.fail(AckError::new(AckErrorKind::Closed)));
            }
            if let Err(failure) = self.redeliver_after(delay).await {
                return self.requeue_instead(failure).await;
            }
            return match self
                .shared
                .bounded(self.inner.acker.ack(BasicAckOptions::default()))
                .await
            {
                Ok(true) => Ok(()),
                // The copy waits in the delay queue and the original is requeued: a duplicate,
                // never a loss.
                Ok(false) => Err(self.fail(AckError::new(AckErrorKind::Closed))),
                Err(e) => Err(self.fail(error::ack(e))),
            };
        }
        let options = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        match self.shared.bounded(self.inner.acker.nack(options)).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(self.fail(AckError::new(AckErrorKind::Closed))),
            Err(e) => Err(self.fail(error::ack(e))),
        }
    }

    async fn extend_deadline(&mut self, _by: Duration) -> Result<(), AckError> {
        Err(AckError::new(AckErrorKind::Unsupported)
            .with_detail("RabbitMQ has no per-delivery deadline to extend"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn delays_round_up_to_the_ladder() {
        let ms = |n| delay_bucket_ms(Duration::from_millis(n));
        assert_eq!(ms(0), 10);
        assert_eq!(ms(1), 10);
        assert_eq!(ms(10), 10);
        assert_eq!(ms(11), 12);
        assert_eq!(ms(1000), 1000);
        assert_eq!(ms(1001), 1200);
        assert_eq!(ms(30_000), 30_000);
        assert_eq!(ms(61_000), 80_000);
        assert_eq!(ms(81_000), 100_000);
        assert_eq!(delay_bucket_ms(Duration::MAX), u64::MAX);
        for n in [1u64, 7, 99, 101, 999, 4_321, 59_999, 3_600_001, 86_400_000] {
            let b = ms(n);
            assert!(b >= n, "{n} ms waits {b} ms: never shorter");
            assert!(
                n < 10 || b * 3 <= n * 4,
                "{n} ms waits {b} ms: at most a third longer"
            );
        }
    }

    #[test]
    fn jittered_delays_share_few_queues() {
        // Exponential backoff 1 s, 2 s, 4 s, 8 s, 16 s with ±50 % jitter, 10 000 delays: a queue
        // per distinct millisecond would be thousands of queues.
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut queues = HashSet::new();
        let mut distinct_ms = HashSet::new();
        for i in 0..10_000u64 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let base = (1000u64 << (i % 5)).min(30_000);
            let jittered = base / 2 + state % base;
            distinct_ms.insert(jittered);
            queues.insert(delay_bucket_ms(Duration::from_millis(jittered)));
        }
        assert!(distinct_ms.len() > 1000);
        assert!(
            queues.len() <= 20,
            "{} delay queues: {queues:?}",
            queues.len()
        );
    }
}
