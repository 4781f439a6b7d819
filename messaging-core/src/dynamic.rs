//! Object-safe forms of the traits, for a broker chosen at run time.
//!
//! Every [`Publisher`], [`Subscriber`], [`Subscription`] and [`Delivery`] is also a
//! [`DynPublisher`], [`DynSubscriber`], [`DynSubscription`] and [`DynDelivery`], so it can sit
//! behind `Arc<dyn DynPublisher>` or `Box<dyn DynSubscriber>`; those boxed forms implement the
//! generic traits again, so code written against the generic traits accepts them.
//!
//! ```
//! use std::sync::Arc;
//! use messaging_core::{DynPublisher, Publisher};
//!
//! async fn announce(publisher: &impl Publisher) { /* ... */ }
//!
//! async fn run(chosen_at_runtime: Arc<dyn DynPublisher>) {
//!     announce(&chosen_at_runtime).await;
//! }
//! ```

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use cloudevents::Event;

use crate::codec::DecodeError;
use crate::delivery::{Coordinates, Delivery};
use crate::error::{AckError, PublishError, ReceiveError, SettleError, SubscribeError};
use crate::features::Features;
use crate::publisher::{PublishBatchError, Publisher, Receipt};
use crate::subscriber::{SubscribeOptions, Subscriber, Subscription};

/// A boxed, `Send` future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;
/// A delivery of any broker.
pub type BoxDelivery = Box<dyn DynDelivery>;
/// A subscription of any broker.
pub type BoxSubscription = Box<dyn DynSubscription>;

/// Object-safe [`Publisher`].
pub trait DynPublisher: Send + Sync {
    /// See [`Publisher::publish`].
    fn publish_dyn<'a>(
        &'a self,
        topic: &'a str,
        event: Event,
    ) -> BoxFuture<'a, Result<Receipt, PublishError>>;
    /// See [`Publisher::publish_batch`].
    fn publish_batch_dyn<'a>(
        &'a self,
        topic: &'a str,
        events: Vec<Event>,
    ) -> BoxFuture<'a, Result<Vec<Receipt>, PublishBatchError>>;
    /// See [`Publisher::close`].
    fn close_dyn(&self) -> BoxFuture<'_, Result<(), PublishError>>;
    /// See [`Publisher::features`].
    fn features_dyn(&self) -> Features;
}

impl<P: Publisher> DynPublisher for P {
    fn publish_dyn<'a>(
        &'a self,
        topic: &'a str,
        event: Event,
    ) -> BoxFuture<'a, Result<Receipt, PublishError>> {
        Box::pin(self.publish(topic, event))
    }
    fn publish_batch_dyn<'a>(
        &'a self,
        topic: &'a str,
        events: Vec<Event>,
    ) -> BoxFuture<'a, Result<Vec<Receipt>, PublishBatchError>> {
        Box::pin(self.publish_batch(topic, events))
    }
    fn close_dyn(&self) -> BoxFuture<'_, Result<(), PublishError>> {
        Box::pin(self.close())
    }
    fn features_dyn(&self) -> Features {
        self.features()
    }
}

macro_rules! dyn_publisher {
    ($ty:ty) => {
        impl Publisher for $ty {
            fn publish(
                &self,
                topic: &str,
                event: Event,
            ) -> impl Future<Output = Result<Receipt, PublishError>> + Send {
                async move { (**self).publish_dyn(topic, event).await }
            }
            fn publish_batch(
                &self,
                topic: &str,
                events: Vec<Event>,
            ) -> impl Future<Output = Result<Vec<Receipt>, PublishBatchError>> + Send {
                async move { (**self).publish_batch_dyn(topic, events).await }
            }
            fn close(&self) -> impl Future<Output = Result<(), PublishError>> + Send {
                (**self).close_dyn()
            }
            fn features(&self) -> Features {
                (**self).features_dyn()
            }
        }
    };
}
dyn_publisher!(Box<dyn DynPublisher>);
dyn_publisher!(Arc<dyn DynPublisher>);

/// Object-safe [`Subscriber`].
pub trait DynSubscriber: Send + Sync {
    /// See [`Subscriber::subscribe`].
    fn subscribe_dyn<'a>(
        &'a self,
        topic: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<BoxSubscription, SubscribeError>>;
    /// See [`Subscriber::declare`].
    fn declare_dyn<'a>(
        &'a self,
        topic: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<(), SubscribeError>>;
    /// See [`Subscriber::features`].
    fn features_dyn(&self) -> Features;
}

impl<S: Subscriber> DynSubscriber for S
where
    S::Subscription: 'static,
{
    fn subscribe_dyn<'a>(
        &'a self,
        topic: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<BoxSubscription, SubscribeError>> {
        Box::pin(async move {
            let sub = self.subscribe(topic, options).await?;
            Ok(Box::new(sub) as BoxSubscription)
        })
    }
    fn declare_dyn<'a>(
        &'a self,
        topic: &'a str,
        options: SubscribeOptions,
    ) -> BoxFuture<'a, Result<(), SubscribeError>> {
        Box::pin(self.declare(topic, options))
    }
    fn features_dyn(&self) -> Features {
        self.features()
    }
}

macro_rules! dyn_subscriber {
    ($ty:ty) => {
        impl Subscriber for $ty {
            type Subscription = BoxSubscription;
            fn subscribe(
                &self,
                topic: &str,
                options: SubscribeOptions,
            ) -> impl Future<Output = Result<BoxSubscription, SubscribeError>> + Send {
                async move { (**self).subscribe_dyn(topic, options).await }
            }
            fn declare(
                &self,
                topic: &str,
                options: SubscribeOptions,
            ) -> impl Future<Output = Result<(), SubscribeError>> + Send {
                async move { (**self).declare_dyn(topic, options).await }
            }
            fn features(&self) -> Features {
                (**self).features_dyn()
            }
        }
    };
}
dyn_subscriber!(Box<dyn DynSubscriber>);
dyn_subscriber!(Arc<dyn DynSubscriber>);

/// Object-safe [`Subscription`].
pub trait DynSubscription: Send {
    /// See [`Subscription::recv`].
    fn recv_dyn(&mut self) -> BoxFuture<'_, Result<BoxDelivery, ReceiveError>>;
    /// See [`Subscription::recv_batch`].
    fn recv_batch_dyn(
        &mut self,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<BoxDelivery>, ReceiveError>>;
    /// See [`Subscription::close`].
    fn close_dyn(&mut self) -> BoxFuture<'_, Result<(), ReceiveError>>;
}

impl<S: Subscription> DynSubscription for S {
    fn recv_dyn(&mut self) -> BoxFuture<'_, Result<BoxDelivery, ReceiveError>> {
        Box::pin(async move { Ok(Box::new(self.recv().await?) as BoxDelivery) })
    }
    fn recv_batch_dyn(
        &mut self,
        max: usize,
    ) -> BoxFuture<'_, Result<Vec<BoxDelivery>, ReceiveError>> {
        Box::pin(async move {
            let batch = self.recv_batch(max).await?;
            Ok(batch
                .into_iter()
                .map(|d| Box::new(d) as BoxDelivery)
                .collect())
        })
    }
    fn close_dyn(&mut self) -> BoxFuture<'_, Result<(), ReceiveError>> {
        Box::pin(self.close())
    }
}

impl Subscription for BoxSubscription {
    type Delivery = BoxDelivery;
    fn recv(&mut self) -> impl Future<Output = Result<BoxDelivery, ReceiveError>> + Send {
        (**self).recv_dyn()
    }
    fn recv_batch(
        &mut self,
        max: usize,
    ) -> impl Future<Output = Result<Vec<BoxDelivery>, ReceiveError>> + Send {
        (**self).recv_batch_dyn(max)
    }
    fn close(&mut self) -> impl Future<Output = Result<(), ReceiveError>> + Send {
        (**self).close_dyn()
    }
}

/// Object-safe [`Delivery`].
pub trait DynDelivery: Send + Sync + 'static {
    /// See [`Delivery::payload`].
    fn payload_dyn(&self) -> Result<&Event, &DecodeError>;
    /// See [`Delivery::shared_event`].
    fn shared_event_dyn(&self) -> Result<Arc<Event>, DecodeError>;
    /// See [`Delivery::topic`].
    fn topic_dyn(&self) -> &str;
    /// See [`Delivery::attempt`].
    fn attempt_dyn(&self) -> u32;
    /// See [`Delivery::coordinates`].
    fn coordinates_dyn(&self) -> Coordinates<'_>;
    /// See [`Delivery::ack`].
    fn ack_dyn(self: Box<Self>) -> BoxFuture<'static, Result<(), SettleError<BoxDelivery>>>;
    /// See [`Delivery::nack`].
    fn nack_dyn(
        self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), SettleError<BoxDelivery>>>;
    /// See [`Delivery::extend_deadline`].
    fn extend_deadline_dyn(&mut self, by: Duration) -> BoxFuture<'_, Result<(), AckError>>;
}

fn rebox<D: Delivery>(e: SettleError<D>) -> SettleError<BoxDelivery> {
    SettleError {
        error: e.error,
        delivery: Box::new(e.delivery),
    }
}

impl<D: Delivery> DynDelivery for D {
    fn payload_dyn(&self) -> Result<&Event, &DecodeError> {
        self.payload()
    }
    fn shared_event_dyn(&self) -> Result<Arc<Event>, DecodeError> {
        self.shared_event()
    }
    fn topic_dyn(&self) -> &str {
        self.topic()
    }
    fn attempt_dyn(&self) -> u32 {
        self.attempt()
    }
    fn coordinates_dyn(&self) -> Coordinates<'_> {
        self.coordinates()
    }
    fn ack_dyn(self: Box<Self>) -> BoxFuture<'static, Result<(), SettleError<BoxDelivery>>> {
        Box::pin(async move { (*self).ack().await.map_err(rebox) })
    }
    fn nack_dyn(
        self: Box<Self>,
        delay: Option<Duration>,
    ) -> BoxFuture<'static, Result<(), SettleError<BoxDelivery>>> {
        Box::pin(async move { (*self).nack(delay).await.map_err(rebox) })
    }
    fn extend_deadline_dyn(&mut self, by: Duration) -> BoxFuture<'_, Result<(), AckError>> {
        Box::pin(self.extend_deadline(by))
    }
}

impl Delivery for BoxDelivery {
    fn payload(&self) -> Result<&Event, &DecodeError> {
        (**self).payload_dyn()
    }
    fn shared_event(&self) -> Result<Arc<Event>, DecodeError> {
        (**self).shared_event_dyn()
    }
    fn topic(&self) -> &str {
        (**self).topic_dyn()
    }
    fn attempt(&self) -> u32 {
        (**self).attempt_dyn()
    }
    fn coordinates(&self) -> Coordinates<'_> {
        (**self).coordinates_dyn()
    }
    fn ack(self) -> impl Future<Output = Result<(), SettleError<Self>>> + Send {
        <dyn DynDelivery>::ack_dyn(self)
    }
    fn nack(
        self,
        delay: Option<Duration>,
    ) -> impl Future<Output = Result<(), SettleError<Self>>> + Send {
        <dyn DynDelivery>::nack_dyn(self, delay)
    }
    fn extend_deadline(
        &mut self,
        by: Duration,
    ) -> impl Future<Output = Result<(), AckError>> + Send {
        (**self).extend_deadline_dyn(by)
    }
}
