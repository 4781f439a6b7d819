//! The connection, topology declarations and the shared confirm channel.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{Channel, Connection, ConnectionProperties, ExchangeKind};
use messaging_core::connect::{
    Adapter, BrokerUrl, ConfigError, ConnectError, Options, probe_tcp, redact_url,
};
use messaging_core::dead_letter::DEAD_LETTER_GROUP;
use messaging_core::{
    Binding, DelaySupport, Features, Inspect, InspectError, PublishError, SubscribeOptions,
};

use crate::config::{QueueType, RabbitConfig};
use crate::error;
use crate::names::{self, queue_name};
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
    /// The connection in use, replaced by a new one once it failed; see
    /// [`Shared::connection`].
    conn: RwLock<Arc<Connection>>,
    /// Held while a failed connection is being replaced (one caller replaces it), with
    /// when the next attempt may be made after failed ones.
    reconnect: tokio::sync::Mutex<Backoff>,
    pub(crate) config: RabbitConfig,
    pub(crate) binding: Binding,
    confirm: tokio::sync::Mutex<Option<Channel>>,
    exchanges: Mutex<HashSet<String>>,
    /// Queues already reported as declared by an earlier version.
    warned: Mutex<HashSet<String>>,
    /// Queue names this process uses, with the (topic, group) using each: an earlier
    /// version's queue kept by one group is never also the plain queue of another.
    queues: Mutex<HashMap<String, (String, String)>>,
}

impl RabbitBroker {
    /// Connects, bounded by [`RabbitConfig::operation_timeout`]. A connection lost later is
    /// replaced by a new one on the next call that needs it (see the crate docs, "Recovery").
    ///
    /// A TCP connection to the URI's host is tried first, so a broker that is down fails at
    /// once (transient, [`ConnectError::Unreachable`]). Refused credentials fail as
    /// [`ConnectError::Authentication`], a virtual host the user may not use (or that does not
    /// exist) as [`ConnectError::Forbidden`], and a TLS handshake that fails (a certificate
    /// that does not verify, a server that does not speak TLS) as [`ConnectError::Tls`]; none
    /// of them is transient. TLS files that cannot be read fail as
    /// [`ConnectError::Config`] before any connection is made.
    pub async fn connect(config: RabbitConfig) -> Result<Self, ConnectError> {
        let shown = redact_url(&config.uri);
        config.tls.read_ca()?;
        config.tls.read_identity()?;
        if let Ok(url) = BrokerUrl::parse(&config.uri) {
            let port = if url.scheme() == "amqps" { 5671 } else { 5672 };
            probe_tcp("rabbitmq", &shown, url.hosts(), port).await?;
        }
        let conn = connect(&config)
            .await
            .map_err(|source| crate::error::connect(shown, source))?;
        Ok(Self {
            shared: Arc::new(Shared {
                conn: RwLock::new(Arc::new(conn)),
                reconnect: tokio::sync::Mutex::new(Backoff::new(config.reconnect_max_delay)),
                config,
                binding: crate::codec::binding(),
                confirm: tokio::sync::Mutex::new(None),
                exchanges: Mutex::default(),
                warned: Mutex::default(),
                queues: Mutex::default(),
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

    /// Publishes `raw` as it is, past the CloudEvents codec, to `topic`'s exchange (declared
    /// on first use, like [`publisher`](Self::publisher) does), with a publisher confirm:
    /// the body as it is, each header as a long-string header, the content type as the
    /// `content-type` property — what a producer that does not speak CloudEvents sends. For
    /// bridging such producers and for testing what consumers do with their messages (a
    /// consumer runtime dead-letters a message it cannot decode as `messaging.undecodable`).
    /// A message over `max_payload` is refused (`PayloadTooLarge`).
    pub async fn publish_raw(
        &self,
        topic: &str,
        raw: &messaging_core::RawMessage,
    ) -> Result<messaging_core::Receipt, PublishError> {
        let (props, size) = crate::codec::encode_raw(raw);
        let max = self.shared.config.max_payload;
        if size > max {
            return Err(
                PublishError::new(messaging_core::PublishErrorKind::PayloadTooLarge)
                    .with_detail(format!("{size} bytes, limit {max}")),
            );
        }
        self.publisher()
            .publish_props(topic, props, &raw.body)
            .await
    }

    /// The lapin connection in use, for what this crate does not cover. The adapter
    /// replaces it with a new one when it fails for good, so hold it only briefly.
    pub fn connection(&self) -> Arc<Connection> {
        self.shared.current()
    }
}

/// A new connection. lapin's own recovery stays off: it can stop for good (it gives up after
/// 16 attempts, and a failure while restoring a channel fails the connection) or, seen on
/// 4.12 after a node restart, wait forever with no socket; the adapter replaces a failed
/// connection itself, and subscriptions consume again on the new one.
///
/// The TLS files are read on every connection, so a replaced connection uses rotated
/// certificates.
async fn connect(config: &RabbitConfig) -> Result<Connection, lapin::Error> {
    use lapin::Connect as _;
    let props = ConnectionProperties::default()
        .with_connection_name(LongString::from(config.connection_name.as_str()));
    let tls = tls_config(&config.tls).map_err(lapin::Error::from)?;
    let runtime = lapin::runtime::default_runtime()?;
    bounded(
        config.operation_timeout,
        config.uri.as_str().connect_with_config(props, tls, runtime),
    )
    .await
}

/// lapin's TLS settings from the files: the CA added to the trusted roots, the client
/// certificate and key as a PEM identity.
fn tls_config(
    files: &messaging_core::connect::TlsFiles,
) -> std::io::Result<lapin::tcp::OwnedTLSConfig> {
    let cert_chain = files
        .read_ca()
        .map_err(std::io::Error::other)?
        .map(|pem| {
            String::from_utf8(pem).map_err(|_| {
                std::io::Error::new(
                    std::io::ErrorKind::InvalidData,
                    "tls_ca_file is not PEM text",
                )
            })
        })
        .transpose()?;
    let identity = files
        .read_identity()
        .map_err(std::io::Error::other)?
        .map(|id| lapin::tcp::OwnedIdentity::PKCS8 {
            pem: id.cert_pem,
            key: id.key_pem,
        });
    Ok(lapin::tcp::OwnedTLSConfig {
        identity,
        cert_chain,
    })
}

/// A consumer of a group's queue, on its own channel.
pub(crate) struct Consuming {
    /// The connection the channel is on.
    pub(crate) conn: Arc<Connection>,
    pub(crate) channel: Channel,
    pub(crate) consumer: lapin::Consumer,
    pub(crate) queue: String,
}

/// When a failed connection may be replaced next: 100 ms after a failed attempt, doubling up
/// to `reconnect_max_delay`, jittered (backon, as `messaging_core::resubscribe`), so that a
/// fleet of clients does not reconnect in step.
#[derive(Debug)]
struct Backoff {
    failures: u32,
    delays: backon::ExponentialBackoff,
    next: Option<tokio::time::Instant>,
}

impl Backoff {
    fn new(max: Duration) -> Self {
        use backon::BackoffBuilder as _;
        Self {
            failures: 0,
            // backon's jitter adds up to the delay again: halved, each wait is in the upper
            // half of 100 ms × 2ⁿ, capped at `max`.
            delays: backon::ExponentialBuilder::new()
                .with_min_delay(Duration::from_millis(50))
                .with_max_delay(max / 2)
                .with_jitter()
                .without_max_times()
                .build(),
            next: None,
        }
    }
}

/// `call`, failing as a transport error (transient) once `limit` has passed.
pub(crate) async fn bounded<T>(
    limit: Duration,
    call: impl Future<Output = Result<T, lapin::Error>>,
) -> Result<T, lapin::Error> {
    match tokio::time::timeout(limit, call).await {
        Ok(result) => result,
        Err(_) => Err(timed_out(limit)),
    }
}

/// The error of a call to the broker that got no answer within `limit`.
pub(crate) fn timed_out(limit: Duration) -> lapin::Error {
    lapin::Error::from(std::io::Error::new(
        std::io::ErrorKind::TimedOut,
        format!("no answer from RabbitMQ within {limit:?}"),
    ))
}

impl Shared {
    fn current(&self) -> Arc<Connection> {
        messaging_core::sync::read(&self.conn).clone()
    }

    /// The connection to use: the current one unless it failed (lost, closed by the broker),
    /// in which case a new one replaces it — one attempt at a time, and after failed
    /// attempts not before a growing wait (100 ms doubling up to
    /// [`RabbitConfig::reconnect_max_delay`]); a call in that wait fails at once, as
    /// transient.
    pub(crate) async fn connection(&self) -> Result<Arc<Connection>, lapin::Error> {
        let failed = |c: &Connection| c.status().errored() || c.status().closed();
        let conn = self.current();
        if !failed(&conn) {
            return Ok(conn);
        }
        let mut backoff = self.reconnect.lock().await;
        let conn = self.current();
        if !failed(&conn) {
            return Ok(conn);
        }
        let now = tokio::time::Instant::now();
        if let Some(next) = backoff.next.filter(|next| *next > now) {
            return Err(lapin::Error::from(std::io::Error::new(
                std::io::ErrorKind::NotConnected,
                format!("RabbitMQ connection lost; reconnecting in {:?}", next - now),
            )));
        }
        match connect(&self.config).await {
            Ok(fresh) => {
                let fresh = Arc::new(fresh);
                *messaging_core::sync::write(&self.conn) = fresh.clone();
                tracing::info!(
                    uri = %redact_url(&self.config.uri),
                    attempts = backoff.failures + 1,
                    "reconnected to RabbitMQ"
                );
                *backoff = Backoff::new(self.config.reconnect_max_delay);
                Ok(fresh)
            }
            Err(e) => {
                let wait = backoff
                    .delays
                    .next()
                    .unwrap_or(self.config.reconnect_max_delay);
                backoff.failures = backoff.failures.saturating_add(1);
                backoff.next = Some(tokio::time::Instant::now() + wait);
                tracing::warn!(
                    uri = %redact_url(&self.config.uri),
                    error = %e,
                    attempts = backoff.failures,
                    "cannot reconnect to RabbitMQ; next attempt in {wait:?}"
                );
                Err(e)
            }
        }
    }

    /// A channel with a consumer of `topic`'s group queue (declared first, with the
    /// exchange, on that channel), and the queue's name.
    pub(crate) async fn open_consumer(
        &self,
        topic: &str,
        options: &SubscribeOptions,
    ) -> Result<Consuming, lapin::Error> {
        let conn = self.connection().await?;
        let mut ch = self.bounded(conn.create_channel()).await?;
        // The channel is replaced if the broker closed it over a queue declared by an
        // earlier version.
        let queue = match self.declare_group_on(&mut ch, topic, options).await {
            Ok(queue) => queue,
            Err(e) => {
                if ch.status().connected() {
                    let _ = self
                        .bounded(ch.close(200, ShortString::from("not subscribed")))
                        .await;
                }
                return Err(e);
            }
        };
        // An ordered queue hands out one message at a time: with more prefetched, a requeued
        // message would come back behind the ones already in the client's buffer.
        let prefetch = if options.is_ordered() {
            1
        } else {
            u16::try_from(options.prefetch_limit()).unwrap_or(u16::MAX)
        };
        self.bounded(ch.basic_qos(prefetch, BasicQosOptions::default()))
            .await?;
        let consumer = self
            .bounded(ch.basic_consume(
                ShortString::from(queue.as_str()),
                ShortString::from(""),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            ))
            .await?;
        Ok(Consuming {
            conn,
            channel: ch,
            consumer,
            queue,
        })
    }

    /// A new channel on the connection in use, bounded by the operation timeout.
    pub(crate) async fn open_channel(&self) -> Result<Channel, lapin::Error> {
        let conn = self.connection().await?;
        self.bounded(conn.create_channel()).await
    }

    /// `call` bounded by the operation timeout.
    pub(crate) async fn bounded<T>(
        &self,
        call: impl Future<Output = Result<T, lapin::Error>>,
    ) -> Result<T, lapin::Error> {
        bounded(self.config.operation_timeout, call).await
    }

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
        let ch = self.open_channel().await.map_err(error::publish)?;
        self.bounded(ch.confirm_select(ConfirmSelectOptions::default()))
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
        self.bounded(ch.exchange_declare(
            ShortString::from(topic),
            ExchangeKind::Fanout,
            ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            },
            FieldTable::default(),
        ))
        .await?;
        self.exchanges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(topic.to_owned());
        Ok(())
    }

    /// Declares the group's queue, bound to the topic's exchange, on a channel of its own
    /// (a refused declaration closes its channel); returns the queue's name. The group's
    /// dead-letter topic and its `dead-letters` queue are declared first when the queue
    /// dead-letters there.
    pub(crate) async fn declare_group(
        &self,
        topic: &str,
        options: &SubscribeOptions,
    ) -> Result<String, lapin::Error> {
        let mut ch = self.open_channel().await?;
        let declared = self.declare_group_on(&mut ch, topic, options).await;
        if ch.status().connected() {
            if let Err(e) = self
                .bounded(ch.close(200, ShortString::from("declared")))
                .await
            {
                tracing::debug!(error = %e, "closing the declaration channel");
            }
        }
        declared
    }

    /// [`declare_group`](Self::declare_group) on `ch`, which is replaced by a new channel if
    /// the broker closes it.
    pub(crate) async fn declare_group_on(
        &self,
        ch: &mut Channel,
        topic: &str,
        options: &SubscribeOptions,
    ) -> Result<String, lapin::Error> {
        self.ensure_exchange(ch, topic).await?;
        let queue = self.group_queue_name(topic, options.group(), true).await?;
        let plan = self.group_queue(topic, options);
        if let Some(dlq) = &plan.dead_letter_topic {
            // Dead letters are kept from the start, in the group the dead-letter tools read.
            let dlq_group = SubscribeOptions::new(DEAD_LETTER_GROUP);
            Box::pin(self.declare_group_on(ch, dlq, &dlq_group)).await?;
        }
        match self
            .bounded(declare_queue(ch, &queue, plan.args.clone()))
            .await
        {
            Ok(()) => {}
            Err(refused) if is_precondition_failed(&refused) => {
                // The broker closed the channel. A queue an older version declared without
                // the dead-letter exchange and delivery limit is used as it is; any other
                // difference (queue type, ordering, an explicit limit) stays an error.
                let Some(legacy) = plan.legacy.clone() else {
                    return Err(refused);
                };
                *ch = self.open_channel().await?;
                if self
                    .bounded(declare_queue(ch, &queue, legacy))
                    .await
                    .is_err()
                {
                    return Err(refused);
                }
                self.warn_legacy(&queue, &plan);
            }
            Err(e) => return Err(e),
        }
        self.bounded(ch.queue_bind(
            ShortString::from(queue.as_str()),
            ShortString::from(topic),
            ShortString::from(""),
            QueueBindOptions::default(),
            FieldTable::default(),
        ))
        .await?;
        Ok(queue)
    }

    /// The queue of `group` on `topic`, keeping an earlier version's queue so that upgrading
    /// strands nothing and processes nothing twice.
    ///
    /// Earlier versions named every group's queue `<topic>.<group>`; today a group with `.` or
    /// `~` gets `<topic>.<group>~<hash>` ([`names`]). That earlier queue is kept while it
    /// exists (passive declare) unless it may be another group's: this process uses the same
    /// name for another (topic, group), or the exchange of a topic that joins to the same
    /// name — `<topic>.<a prefix of the group>` — exists (its queue could be bound there:
    /// AMQP cannot list bindings). Then the group takes today's name and a warning names the
    /// earlier queue. A plain name this process already keeps for another group is taken by
    /// neither: the group whose plain name it is gets `<topic>.<group>~<hash>` and a warning.
    /// What is decided is remembered for the process; `log` is false for inspection.
    ///
    /// Not covered: another process keeping `<t>.<a.b>` for (t, `a.b`) while a group `b` of
    /// topic `<t>.a` is added elsewhere (its exchange did not exist at the first's start):
    /// both then read the one queue (see the README, "Queue names").
    async fn group_queue_name(
        &self,
        topic: &str,
        group: &str,
        log: bool,
    ) -> Result<String, lapin::Error> {
        let name = queue_name(topic, group);
        let legacy = names::legacy_queue_name(topic, group);
        let pair = (topic.to_owned(), group.to_owned());
        let user = |q: &str| {
            self.queues
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(q)
                .cloned()
        };
        let remember = |q: &str| {
            self.queues
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(q.to_owned(), pair.clone());
        };
        if legacy == name {
            return match user(&name) {
                Some(other) if other != pair => {
                    let displaced = names::displaced_queue_name(topic, group);
                    if log {
                        tracing::warn!(
                            topic,
                            group,
                            queue = displaced,
                            plain_queue = name,
                            kept_by_topic = other.0,
                            kept_by_group = other.1,
                            "the group's plain queue name is an earlier version's queue that                              another group of this process keeps; this group uses its own queue"
                        );
                    }
                    remember(&displaced);
                    Ok(displaced)
                }
                _ => {
                    remember(&name);
                    Ok(name)
                }
            };
        }
        if let Some(kept) = user(&legacy) {
            if kept == pair {
                return Ok(legacy);
            }
            if log {
                tracing::warn!(
                    topic,
                    group,
                    queue = name,
                    legacy_queue = legacy,
                    used_by_topic = kept.0,
                    used_by_group = kept.1,
                    "the group's queue under the earlier naming is another group's queue in                      this process; this group uses its own queue. If the earlier queue is still                      bound to this topic, it gets copies nobody reads here: drain it and unbind                      it (messaging-rabbitmq README, \"Queue names\")"
                );
            }
            remember(&name);
            return Ok(name);
        }
        if user(&name).is_some() || !self.exists(&legacy, false).await? {
            remember(&name);
            return Ok(name);
        }
        for other in names::other_owners(topic, group) {
            if other.len() > topic.len() && self.exists(&other, true).await? {
                if log {
                    tracing::warn!(
                        topic,
                        group,
                        queue = name,
                        legacy_queue = legacy,
                        other_topic = other,
                        "the group's queue under the earlier naming may also be bound to                          another topic of the same name's prefix, so the group moves to its                          own queue; if the earlier queue is still bound to this topic it gets                          copies nobody reads: drain it, then unbind or delete it                          (messaging-rabbitmq README, \"Queue names\")"
                    );
                }
                remember(&name);
                return Ok(name);
            }
        }
        if log {
            tracing::info!(
                topic,
                group,
                queue = legacy,
                "keeping the group's queue from before queue names became injective"
            );
        }
        remember(&legacy);
        Ok(legacy)
    }

    /// Whether the queue (or, `exchange`, the exchange) `name` exists: a passive declare on a
    /// channel of its own (a missing one closes the channel with NOT_FOUND).
    async fn exists(&self, name: &str, exchange: bool) -> Result<bool, lapin::Error> {
        let ch = self.open_channel().await?;
        let result = if exchange {
            self.bounded(ch.exchange_declare(
                ShortString::from(name),
                ExchangeKind::Fanout,
                ExchangeDeclareOptions {
                    passive: true,
                    ..ExchangeDeclareOptions::default()
                },
                FieldTable::default(),
            ))
            .await
            .map(|_| ())
        } else {
            self.bounded(ch.queue_declare(
                ShortString::from(name),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ))
            .await
            .map(|_| ())
        };
        let found = match result {
            Ok(()) => true,
            Err(e) if e.is_amqp_soft_error() => false,
            Err(e) => return Err(e),
        };
        if ch.status().connected() {
            let _ = self
                .bounded(ch.close(200, ShortString::from("looked up")))
                .await;
        }
        Ok(found)
    }

    /// The arguments of the group's queue.
    fn group_queue(&self, topic: &str, options: &SubscribeOptions) -> GroupQueue {
        let mut args = FieldTable::default();
        // Quorum queues put a requeued message behind the others (RabbitMQ 3.x); classic
        // queues put it back in its place, which is what ordered groups need.
        let quorum = self.config.queue_type == QueueType::Quorum && !options.is_ordered();
        let queue_type = if quorum { "quorum" } else { "classic" };
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
        // RabbitMQ counts redeliveries: a limit of N allows N + 1 deliveries.
        let (dead_letter_topic, delivery_limit, legacy) = match options.get_max_deliveries() {
            // Asked for: the same arguments every version declared.
            Some(max) => (
                Some(options.dead_letter_topic_for(topic)),
                Some(i64::from(max.saturating_sub(1))),
                None,
            ),
            // Classic queues have no delivery limit: nothing drops a requeued message.
            None if !quorum => (None, None, None),
            // A dead-letter queue: dead-lettering it would loop (or need a queue after it),
            // and inspecting or replaying requeues its messages, so its limit is one that is
            // never reached.
            None if options.group() == DEAD_LETTER_GROUP => {
                (None, Some(DEAD_LETTER_DELIVERY_LIMIT), Some(args.clone()))
            }
            None => (
                Some(options.dead_letter_topic_for(topic)),
                Some(i64::from(self.config.max_deliveries.saturating_sub(1))),
                Some(args.clone()),
            ),
        };
        if let Some(dlq) = &dead_letter_topic {
            args.insert(
                "x-dead-letter-exchange".into(),
                AMQPValue::LongString(dlq.as_str().into()),
            );
        }
        if let Some(limit) = delivery_limit {
            args.insert("x-delivery-limit".into(), AMQPValue::LongLongInt(limit));
        }
        GroupQueue {
            args,
            legacy,
            dead_letter_topic,
            delivery_limit,
        }
    }

    /// Tells the operator, once per queue and process, that `queue` predates the arguments
    /// of `plan` and how to add them by policy.
    fn warn_legacy(&self, queue: &str, plan: &GroupQueue) {
        let first = self
            .warned
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(queue.to_owned());
        if !first {
            return;
        }
        let command = policy_command(
            queue,
            plan.dead_letter_topic.as_deref(),
            plan.delivery_limit,
        );
        let missing = if plan.dead_letter_topic.is_some() {
            "a dead-letter exchange and a delivery limit"
        } else {
            "a delivery limit"
        };
        tracing::warn!(
            queue,
            dead_letter_topic = plan.dead_letter_topic.as_deref(),
            delivery_limit = plan.delivery_limit,
            "queue {queue} exists without {missing} (declared by an earlier version of \
             messaging-rabbitmq) and is used as it is; on RabbitMQ 4.x a message requeued more \
             than 20 times is dropped from it. Add them with a policy: {command} (one policy \
             applies per queue: merge these keys into an existing one), or delete the queue \
             once it is drained so that it is declared again"
        );
    }
}

/// The delivery limit (`x-delivery-limit`) of a dead-letter group's queue
/// ([`DEAD_LETTER_GROUP`]): never reached in practice, so inspecting or replaying dead
/// letters (which requeues them) never drops one, on RabbitMQ 4.x whose default limit is 20.
/// `-1`, RabbitMQ 4's "no limit", is not portable: RabbitMQ 3.x drops a message at its first
/// requeue under it.
pub const DEAD_LETTER_DELIVERY_LIMIT: i64 = i32::MAX as i64;

/// How a group's queue is declared.
struct GroupQueue {
    args: FieldTable,
    /// The arguments earlier versions declared the queue with, where they lack only the
    /// dead-letter exchange and delivery limit this version adds by default.
    legacy: Option<FieldTable>,
    /// Where the queue dead-letters (`x-dead-letter-exchange`).
    dead_letter_topic: Option<String>,
    /// `x-delivery-limit`.
    delivery_limit: Option<i64>,
}

async fn declare_queue(ch: &Channel, queue: &str, args: FieldTable) -> Result<(), lapin::Error> {
    ch.queue_declare(
        ShortString::from(queue),
        QueueDeclareOptions {
            durable: true,
            ..QueueDeclareOptions::default()
        },
        args,
    )
    .await
    .map(|_| ())
}

/// PRECONDITION_FAILED: the queue exists with other arguments.
fn is_precondition_failed(e: &lapin::Error) -> bool {
    matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 406)
}

/// The `rabbitmqctl` command that gives `queue` a dead-letter exchange and delivery limit by
/// policy.
fn policy_command(queue: &str, dead_letter_topic: Option<&str>, limit: Option<i64>) -> String {
    let mut definition = Vec::new();
    if let Some(dlq) = dead_letter_topic {
        definition.push(format!("\"dead-letter-exchange\":\"{}\"", json_escape(dlq)));
    }
    if let Some(limit) = limit {
        definition.push(format!("\"delivery-limit\":{limit}"));
    }
    format!(
        "rabbitmqctl set_policy --apply-to queues {} '^{}$' '{{{}}}'",
        shell_quote(&format!("messaging-{queue}")),
        shell_escape(&regex_escape(queue)),
        shell_escape(&definition.join(","))
    )
}

fn regex_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if "\\.^$|?*+()[]{}".contains(c) {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

fn json_escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// `s` made safe inside single quotes.
fn shell_escape(s: &str) -> String {
    s.replace('\'', "'\\''")
}

/// `s` in single quotes.
fn shell_quote(s: &str) -> String {
    format!("'{}'", shell_escape(s))
}

impl Adapter for RabbitBroker {
    const NAME: &'static str = "rabbitmq";
    const SCHEMES: &'static [&'static str] = &["amqp", "amqps"];
    const OPTIONS: &'static [&'static str] = crate::config::OPTIONS;
    type Config = RabbitConfig;
    type Publisher = RabbitPublisher;
    type Subscriber = RabbitSubscriber;

    fn configure(url: &BrokerUrl, options: Options) -> Result<RabbitConfig, ConfigError> {
        RabbitConfig::from_options(url, options)
    }

    async fn connect(config: RabbitConfig) -> Result<Self, ConnectError> {
        Self::connect(config).await
    }

    fn publisher(&self) -> RabbitPublisher {
        Self::publisher(self)
    }

    fn subscriber(&self) -> RabbitSubscriber {
        Self::subscriber(self)
    }

    fn features(&self) -> Features {
        Self::features(self)
    }

    async fn publish_raw(
        &self,
        topic: &str,
        raw: &messaging_core::RawMessage,
    ) -> Result<messaging_core::Receipt, PublishError> {
        Self::publish_raw(self, topic, raw).await
    }
}

impl Inspect for RabbitBroker {
    /// Ready messages in the group's queue (RabbitMQ does not count unacked ones here).
    async fn depth(&self, topic: &str, group: &str) -> Result<Option<u64>, InspectError> {
        let ch = self.shared.open_channel().await.map_err(error::inspect)?;
        let queue = self
            .shared
            .group_queue_name(topic, group, false)
            .await
            .map_err(error::inspect)?;
        let result = self
            .shared
            .bounded(ch.queue_declare(
                ShortString::from(queue.as_str()),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            ))
            .await;
        let depth = match result {
            Ok(q) => Some(u64::from(q.message_count())),
            // A passive declare of a missing queue closes the channel with NOT_FOUND.
            Err(e) if e.is_amqp_soft_error() => None,
            Err(e) => return Err(error::inspect(e)),
        };
        let _ = self
            .shared
            .bounded(ch.close(200, ShortString::from("inspected")))
            .await;
        Ok(depth)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_command_is_ready_to_paste() {
        assert_eq!(
            policy_command("orders.billing", Some("orders.dlq"), Some(19)),
            "rabbitmqctl set_policy --apply-to queues 'messaging-orders.billing' \
             '^orders\\.billing$' '{\"dead-letter-exchange\":\"orders.dlq\",\"delivery-limit\":19}'"
        );
        assert_eq!(
            policy_command("it's.dead-letters", None, Some(DEAD_LETTER_DELIVERY_LIMIT)),
            "rabbitmqctl set_policy --apply-to queues 'messaging-it'\\''s.dead-letters' \
             '^it'\\''s\\.dead-letters$' '{\"delivery-limit\":2147483647}'"
        );
    }
}
