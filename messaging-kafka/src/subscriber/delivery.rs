//! The subscription and its deliveries as the application sees them.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;

use messaging_core::{
    AckError, AckErrorKind, Coordinates, DecodeError, Delivery, Event, ReceiveError,
    ReceiveErrorKind, SettleError, Subscription,
};
use tokio::sync::{mpsc, watch};

use super::REQUEST_TIMEOUT;
use super::state::{Msg, Status, Sub};

/// One member of a consumer group, reading a topic (and the group's retry topics).
pub struct KafkaSubscription {
    pub(super) sub: Arc<Sub>,
    pub(super) rx: mpsc::UnboundedReceiver<KafkaDelivery>,
    pub(super) status: watch::Receiver<Status>,
    pub(super) thread: Option<JoinHandle<()>>,
    pub(super) closed: bool,
}

impl std::fmt::Debug for KafkaSubscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaSubscription")
            .field("topic", &self.sub.topic)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}

impl KafkaSubscription {
    fn failure(&self) -> Option<ReceiveError> {
        match &*self.status.borrow() {
            Status::Failed { detail, transient } => Some(
                ReceiveError::new(if *transient {
                    ReceiveErrorKind::Unavailable
                } else {
                    ReceiveErrorKind::Closed
                })
                .with_detail(detail.clone()),
            ),
            Status::Stopped => Some(ReceiveError::new(ReceiveErrorKind::Closed)),
            _ => None,
        }
    }
}

impl Subscription for KafkaSubscription {
    type Delivery = KafkaDelivery;

    async fn recv(&mut self) -> Result<KafkaDelivery, ReceiveError> {
        if self.closed {
            return Err(ReceiveError::new(ReceiveErrorKind::Closed));
        }
        loop {
            if let Some(e) = self.failure() {
                return Err(e);
            }
            tokio::select! {
                biased;
                d = self.rx.recv() => {
                    return d.ok_or_else(|| ReceiveError::new(ReceiveErrorKind::Closed));
                }
                changed = self.status.changed() => {
                    if changed.is_err() {
                        return Err(ReceiveError::new(ReceiveErrorKind::Closed));
                    }
                }
            }
        }
    }

    async fn recv_batch(&mut self, max: usize) -> Result<Vec<KafkaDelivery>, ReceiveError> {
        let first = self.recv().await?;
        let mut batch = Vec::with_capacity(max.clamp(1, 1024));
        batch.push(first);
        while batch.len() < max {
            match self.rx.try_recv() {
                Ok(d) => batch.push(d),
                Err(_) => break,
            }
        }
        Ok(batch)
    }

    async fn close(&mut self) -> Result<(), ReceiveError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        self.sub.stop.store(true, Ordering::Release);
        self.sub.settled.notify_all();
        if let Some(thread) = self.thread.take() {
            let bound = self.sub.broker.config.session_timeout + REQUEST_TIMEOUT;
            let joined =
                tokio::time::timeout(bound, tokio::task::spawn_blocking(move || thread.join()))
                    .await;
            if joined.is_err() {
                return Err(ReceiveError::new(ReceiveErrorKind::Timeout)
                    .with_detail("the consumer did not leave its group in time"));
            }
        }
        self.sub.lock().closed = true;
        self.rx.close();
        while let Ok(mut d) = self.rx.try_recv() {
            d.msg = None;
        }
        Ok(())
    }
}

impl Drop for KafkaSubscription {
    fn drop(&mut self) {
        self.sub.stop.store(true, Ordering::Release);
        self.sub.lock().closed = true;
        self.sub.settled.notify_all();
    }
}

/// One delivery of a Kafka message. Settling marks its offset; the partition's committed
/// offset moves past it once every earlier message is settled too.
pub struct KafkaDelivery {
    pub(super) msg: Option<Msg>,
    pub(super) sub: Arc<Sub>,
}

impl std::fmt::Debug for KafkaDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let m = self.msg();
        f.debug_struct("KafkaDelivery")
            .field("topic", &m.topic)
            .field("partition", &m.partition)
            .field("offset", &m.offset)
            .field("attempt", &m.attempt)
            .finish_non_exhaustive()
    }
}

impl KafkaDelivery {
    fn msg(&self) -> &Msg {
        // Only settling and dropping take the message, and both consume the delivery.
        self.msg
            .as_ref()
            .unwrap_or_else(|| unreachable!("delivery without message"))
    }

    /// The Kafka topic the message was read from: the published topic, or the group's retry
    /// topic for a message nacked with a delay.
    pub fn kafka_topic(&self) -> &str {
        &self.msg().topic
    }

    /// The partition the message was read from.
    pub fn partition(&self) -> i32 {
        self.msg().partition
    }

    /// The message's offset in its partition.
    pub fn offset(&self) -> i64 {
        self.msg().offset
    }

    fn settle_error(mut self, error: AckError, m: Msg) -> SettleError<Self> {
        self.msg = Some(m);
        SettleError {
            error,
            delivery: self,
        }
    }
}

impl Delivery for KafkaDelivery {
    fn payload(&self) -> Result<&Event, &DecodeError> {
        self.msg().payload.as_ref().map(|e| &**e)
    }

    fn shared_event(&self) -> Result<Arc<Event>, DecodeError> {
        self.msg().payload.clone()
    }

    fn topic(&self) -> &str {
        &self.sub.topic
    }

    fn attempt(&self) -> u32 {
        self.msg().attempt
    }

    fn coordinates(&self) -> Coordinates<'_> {
        let m = self.msg();
        Coordinates {
            partition: Some(m.partition),
            offset: Some(m.offset),
            ..Coordinates::default()
        }
    }

    async fn ack(mut self) -> Result<(), SettleError<Self>> {
        let Some(m) = self.msg.take() else {
            return Ok(());
        };
        match self.sub.ack(&m) {
            Ok(()) => Ok(()),
            Err(e) => Err(self.settle_error(e, m)),
        }
    }

    async fn nack(mut self, delay: Option<Duration>) -> Result<(), SettleError<Self>> {
        let Some(m) = self.msg.take() else {
            return Ok(());
        };
        let sub = self.sub.clone();
        let delay = delay.filter(|d| !d.is_zero());
        let result = match delay {
            None => sub.redeliver(m),
            Some(d) => {
                let tier = sub.broker.config.tier_for(d).and_then(|tier| {
                    sub.retry_topics
                        .iter()
                        .find(|(t, _)| *t == tier)
                        .map(|(_, name)| name.clone())
                });
                match tier {
                    None => sub.redeliver_later(m, d),
                    Some(topic) => match sub.retry_via_topic(&m, d, &topic).await {
                        Ok(()) => Ok(()),
                        Err(e) => Err((e, m)),
                    },
                }
            }
        };
        result.map_err(|(e, m)| self.settle_error(e, m))
    }

    async fn extend_deadline(&mut self, _by: Duration) -> Result<(), AckError> {
        Err(AckError::new(AckErrorKind::Unsupported)
            .with_detail("Kafka has no per-message ack deadline"))
    }
}

impl Drop for KafkaDelivery {
    /// An unsettled delivery dropped is handed out again (Kafka has no ack deadline to do it).
    fn drop(&mut self) {
        if let Some(m) = self.msg.take() {
            if !self.sub.tx.is_closed() {
                let _ = self.sub.redeliver(m);
            }
        }
    }
}
