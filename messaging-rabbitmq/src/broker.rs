//! The connection, topology declarations and the shared confirm channel.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use lapin::options::{
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use messaging_core::middleware::dead_letter::DEAD_LETTER_GROUP;
use messaging_core::{
    Binding, DelaySupport, Features, Inspect, InspectError, PublishError, SubscribeOptions,
};

use crate::config::{QueueType, RabbitConfig, redact};
use crate::error;
use crate::publisher::RabbitPublisher;
use crate::subscriber::RabbitSubscriber;

/// A connection to RabbitMQ; hands out publishers and subscribers. Cheap to clone.
#[derive(Clone)]
pub struct RabbitBroker {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for RabbitBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RabbitBroker")
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

pub(crate) struct Shared {
    pub(crate) conn: Connection,
    pub(crate) config: RabbitConfig,
    pub(crate) binding: Binding,
    confirm: tokio::sync::Mutex<Option<Channel>>,
    exchanges: Mutex<HashSet<String>>,
}

/// Failure to connect.
#[derive(Debug)]
pub struct ConnectError {
    uri: String,
    source: lapin::Error,
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "cannot connect to RabbitMQ at {}: {}",
            self.uri, self.source
        )
    }
}

impl std::error::Error for ConnectError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.source)
    }
}

impl ConnectError {
    /// Whether connecting again later can succeed (the broker is down or unreachable, rather
    /// than refusing the credentials).
    pub fn is_transient(&self) -> bool {
        self.source.is_io_error()
    }
}

impl RabbitBroker {
    /// Connects, with lapin's automatic recovery enabled.
    pub async fn connect(config: RabbitConfig) -> Result<Self, ConnectError> {
        let props = ConnectionProperties::default()
            .with_connection_name(LongString::from(config.connection_name.as_str()))
            .enable_auto_recover();
        let conn = Connection::connect(&config.uri, props)
            .await
            .map_err(|source| ConnectError {
                uri: redact(&config.uri),
                source,
            })?;
        Ok(Self {
            shared: Arc::new(Shared {
                conn,
                config,
                binding: Binding::amqp(),
                confirm: tokio::sync::Mutex::new(None),
                exchanges: Mutex::default(),
            }),
        })
    }

    /// A requester over direct reply-to (`amq.rabbitmq.reply-to`): one channel, no reply
    /// queue; see [`DirectRequester`](crate::DirectRequester).
    pub async fn requester(
        &self,
    ) -> Result<crate::DirectRequester, messaging_core::SubscribeError> {
        crate::DirectRequester::start(self.shared.clone()).await
    }

    /// A publisher with publisher confirms.
    pub fn publisher(&self) -> RabbitPublisher {
        RabbitPublisher::new(self.shared.clone())
    }

    /// A subscriber.
    pub fn subscriber(&self) -> RabbitSubscriber {
        RabbitSubscriber {
            shared: self.shared.clone(),
        }
    }

    /// What this adapter can do with its configuration.
    pub fn features(&self) -> Features {
        self.shared.features()
    }

    /// The underlying lapin connection, for what this crate does not cover.
    pub fn connection(&self) -> &Connection {
        &self.shared.conn
    }
}

impl Shared {
    pub(crate) fn features(&self) -> Features {
        Features {
            consumer_groups: true,
            ordering: true,
            replay: false,
            delayed_redelivery: DelaySupport::Emulated,
            native_dead_letter: self.config.queue_type == QueueType::Quorum,
            ack_deadline: false,
            extend_deadline: false,
            max_payload: Some(self.config.max_payload),
            transactions: false,
            persistent: true,
            ..Features::new("rabbitmq")
        }
    }

    /// The shared channel with publisher confirms, reopened if it died.
    pub(crate) async fn confirm_channel(&self) -> Result<Channel, PublishError> {
        let mut slot = self.confirm.lock().await;
        if let Some(ch) = slot.as_ref() {
            if ch.status().connected() {
                return Ok(ch.clone());
            }
        }
        let ch = self.conn.create_channel().await.map_err(error::publish)?;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(error::publish)?;
        *slot = Some(ch.clone());
        Ok(ch)
    }

    /// Declares the fanout exchange for `topic` once per process (idempotent on the broker).
    pub(crate) async fn ensure_exchange(
        &self,
        ch: &Channel,
        topic: &str,
    ) -> Result<(), lapin::Error> {
        if self
            .exchanges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(topic)
        {
            return Ok(());
        }
        ch.exchange_declare(
            ShortString::from(topic),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
        self.exchanges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_owned());
        Ok(())
    }

    /// Declares the group's queue, bound to the topic's exchange, with the options' arguments;
    /// returns its name.
    pub(crate) async fn declare_group(
        &self,
        ch: &Channel,
        topic: &str,
        options: &SubscribeOptions,
    ) -> Result<String, lapin::Error> {
        self.ensure_exchange(ch, topic).await?;
        let queue = queue_name(topic, options.group());
        let mut args = FieldTable::default();
        // Quorum queues put a requeued message behind the others (RabbitMQ 3.x); classic
        // queues put it back in its place, which is what ordered groups need.
        let queue_type = match self.config.queue_type {
            QueueType::Quorum if !options.is_ordered() => "quorum",
            _ => "classic",
        };
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(queue_type.into()),
        );
        if options.is_ordered() {
            args.insert("x-single-active-consumer".into(), AMQPValue::Boolean(true));
        }
        if let Some(expires) = self.config.queue_expires {
            let ms = i64::try_from(expires.as_millis())
                .unwrap_or(i64::MAX)
                .max(1);
            args.insert("x-expires".into(), AMQPValue::LongLongInt(ms));
        }
        if let Some(max) = options.delivery_limit() {
            let dlq = options.dead_letter_topic_for(topic);
            // Dead letters are kept from the start, in the group the dead-letter tools read.
            let dlq_group = SubscribeOptions::new(DEAD_LETTER_GROUP);
            Box::pin(self.declare_group(ch, &dlq, &dlq_group)).await?;
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(dlq.as_str().into()),
            );
            // RabbitMQ counts redeliveries: a limit of N allows N + 1 deliveries.
            let limit = i64::from(max.saturating_sub(1));
            args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(limit));
        }
        ch.queue_declare(
            ShortString::from(queue.as_str()),
            QueueDeclareOptions {
                durable: true,
                ..QueueDeclareOptions::default()
            },
            args,
        )
        .await?;
        ch.queue_bind(
            ShortString::from(queue.as_str()),
            ShortString::from(topic),
            ShortString::from(""),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
        Ok(queue)
    }
}

/// The queue of `group` on `topic`.
pub(crate) fn queue_name(topic: &str, group: &str) -> String {
    format!("{topic}.{group}")
}

impl Inspect for RabbitBroker {
    /// Ready messages in the group's queue (RabbitMQ does not count unacked ones here).
    async fn depth(&self, topic: &str, group: &str) -> Result<Option<u64>, InspectError> {
        let ch = self
            .shared
            .conn
            .create_channel()
            .await
            .map_err(error::inspect)?;
        let queue = queue_name(topic, group);
        let result = ch
            .queue_declare(
                ShortString::from(queue.as_str()),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await;
        let depth = match result {
            Ok(q) => Some(u64::from(q.message_count())),
            // A passive declare of a missing queue closes the channel with NOT_FOUND.
            Err(e) if e.is_amqp_soft_error() => None,
            Err(e) => return Err(error::inspect(e)),
        };
        let _ = ch.close(200, ShortString::from("inspected")).await;
        Ok(depth)
    }
}
