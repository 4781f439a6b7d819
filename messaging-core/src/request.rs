//! Request-reply over any broker.
//!
//! A [`Requester`] owns a private reply topic, which it subscribes to before the first
//! request. [`Requester::request`] stamps the request with a `replyto` extension (the reply
//! topic) and a `replytoken` unique to the request, and waits for the event whose
//! `causationid` is the request's `id` — and whose `replytoken` is the request's, where the
//! responder copies it (as [`reply`] does): concurrent requests that share an `id` each get
//! their own reply. A reply without a token goes to the oldest waiting request of its
//! `causationid`.
//! A responder replies with [`reply`] (or the [`Incoming::follow_up`](crate::handler::Incoming::follow_up) builder plus
//! [`reply_to`]). Replies that arrive after their request timed out are acked and dropped.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use std::time::Duration;
//! use messaging_core::request::{reply, Requester};
//! use messaging_core::{Delivery, DynPublisher, EventBuilder, EventExt, SubscribeOptions, Subscriber, Subscription};
//! use messaging_testkit::MemoryBroker;
//!
//! let broker = MemoryBroker::new();
//! let publisher: Arc<dyn DynPublisher> = Arc::new(broker.publisher());
//! let mut prices = broker.subscriber().subscribe("prices", SubscribeOptions::new("pricing")).await?;
//! let requester = Requester::start(&broker.subscriber(), publisher.clone()).await?;
//!
//! let server = tokio::spawn({
//!     let publisher = publisher.clone();
//!     async move {
//!         let d = prices.recv().await.unwrap();
//!         let answer = EventBuilder::new("pricing", "price.quoted").json(&42);
//!         reply(&*publisher, d.event().unwrap(), answer).await.unwrap();
//!         d.ack().await.unwrap();
//!     }
//! });
//! let question = EventBuilder::new("shop", "price.requested").json(&"ORD-5678").build()?;
//! let answer = requester.request("prices", question, Duration::from_secs(5)).await?;
//! assert_eq!(answer.data_json::<u32>()?, 42);
//! # server.await?; Ok(()) }
//! ```

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use cloudevents::{AttributesReader, Event};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::delivery::Delivery;
use crate::dynamic::DynPublisher;
use crate::error::{PublishError, ReceiveErrorKind, SubscribeError};
use crate::event::{BuildError, EventBuilder, EventExt};
use crate::subscriber::{SubscribeOptions, Subscriber, Subscription};

/// Extension naming the topic a reply goes to.
pub const REPLY_TO: &str = "replyto";

/// Extension carrying a token unique to one request, copied into the reply by [`reply`].
pub const REPLY_TOKEN: &str = "replytoken";

/// The group a [`Requester`] subscribes its private reply topic with. Adapters that share
/// group state across topics (Kafka) scope it to the reply topic.
pub const REQUESTER_GROUP: &str = "requester";

static NEXT_TOKEN: AtomicU64 = AtomicU64::new(0);

/// Waiters by request id; several concurrent requests may share an id, each known by its own
/// token.
type Waiters = HashMap<String, Vec<(u64, oneshot::Sender<Event>)>>;

/// The requests waiting for their replies, for a requester of any transport (the core's
/// [`Requester`] over a reply topic, an adapter's over its broker's own reply mechanism).
/// [`register`](Self::register) stamps a request with its [`REPLY_TOKEN`] and returns the
/// [`PendingReply`] to wait on; [`deliver`](Self::deliver) hands a reply to the request whose
/// `id` is its `causationid` — and whose token it carries, where the responder copied it, so
/// concurrent requests that share an `id` each get their own; a reply without a token goes to
/// the oldest waiting request of its `causationid`. A waiter that is dropped (timed out,
/// cancelled) is forgotten at once.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// use messaging_core::request::{PendingReplies, Waited};
/// use messaging_core::{AttributesReader, EventBuilder, EventExt};
///
/// let pending = PendingReplies::new();
/// let mut request = EventBuilder::new("shop", "price.requested").build().unwrap();
/// let waiter = pending.register(&mut request);
/// let answer = EventBuilder::new("pricing", "price.quoted")
///     .causation_id(request.id())
///     .extension("replytoken", request.extension_str("replytoken").unwrap())
///     .build()
///     .unwrap();
/// assert!(pending.deliver(answer));
/// assert!(waiter.wait(Duration::from_secs(1)).await.is_ok());
/// assert!(pending.is_empty());
/// # }
/// ```
#[derive(Clone, Default)]
pub struct PendingReplies {
    waiters: Arc<Mutex<Waiters>>,
}

impl fmt::Debug for PendingReplies {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingReplies")
            .field("waiting", &self.len())
            .finish()
    }
}

impl PendingReplies {
    /// No request waiting.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `request` (stamping its [`REPLY_TOKEN`]) and returns its waiter.
    pub fn register(&self, request: &mut Event) -> PendingReply {
        let token = NEXT_TOKEN.fetch_add(1, Ordering::Relaxed);
        request.set_extension(REPLY_TOKEN, token.to_string());
        let id = request.id().to_owned();
        let (tx, rx) = oneshot::channel();
        crate::sync::lock(&self.waiters)
            .entry(id.clone())
            .or_default()
            .push((token, tx));
        PendingReply {
            rx,
            id,
            token,
            replies: self.clone(),
        }
    }

    /// Hands `reply` to its waiting request; `false` if none waits for it (late or unknown:
    /// the caller drops it).
    pub fn deliver(&self, reply: Event) -> bool {
        let token = reply
            .extension_str(REPLY_TOKEN)
            .and_then(|t| t.parse::<u64>().ok());
        let waiter = reply.causation_id().and_then(|id| {
            let mut map = crate::sync::lock(&self.waiters);
            let waiters = map.get_mut(id)?;
            let at = match token {
                Some(token) => waiters.iter().position(|(t, _)| *t == token)?,
                None => 0,
            };
            let (_, tx) = waiters.remove(at);
            if waiters.is_empty() {
                map.remove(id);
            }
            Some(tx)
        });
        waiter.is_some_and(|tx| tx.send(reply).is_ok())
    }

    /// Ends every wait: the replies have nowhere to arrive (the waiters see
    /// [`Waited::Closed`]).
    pub fn clear(&self) {
        crate::sync::lock(&self.waiters).clear();
    }

    /// Requests waiting.
    pub fn len(&self) -> usize {
        crate::sync::lock(&self.waiters)
            .values()
            .map(Vec::len)
            .sum()
    }

    /// Whether no request waits.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn forget(&self, id: &str, token: u64) {
        let mut map = crate::sync::lock(&self.waiters);
        if let Some(waiters) = map.get_mut(id) {
            waiters.retain(|(t, _)| *t != token);
            if waiters.is_empty() {
                map.remove(id);
            }
        }
    }
}

/// One request waiting for its reply; see [`PendingReplies`]. Dropping it forgets the request.
#[derive(Debug)]
pub struct PendingReply {
    rx: oneshot::Receiver<Event>,
    id: String,
    token: u64,
    replies: PendingReplies,
}

/// Why a [`PendingReply`] ended without its reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waited {
    /// No reply within the timeout.
    Timeout,
    /// The waits were [cleared](PendingReplies::clear): the reply has nowhere to arrive.
    Closed,
}

impl PendingReply {
    /// Waits up to `timeout` for the reply.
    pub async fn wait(mut self, timeout: Duration) -> Result<Event, Waited> {
        match tokio::time::timeout(timeout, &mut self.rx).await {
            Ok(Ok(reply)) => Ok(reply),
            Ok(Err(_)) => Err(Waited::Closed),
            Err(_) => Err(Waited::Timeout),
        }
    }
}

impl Drop for PendingReply {
    fn drop(&mut self) {
        self.replies.forget(&self.id, self.token);
    }
}

/// Hands replies to their waiters until aborted (when the requester is dropped). Receive errors
/// are retried with backoff; a subscription the broker closed is opened again, so one broker
/// hiccup does not make every later request time out.
async fn listen<S>(
    subscriber: S,
    topic: String,
    options: SubscribeOptions,
    mut sub: S::Subscription,
    pending: PendingReplies,
) where
    S: Subscriber + Send + Sync + 'static,
    S::Subscription: 'static,
{
    const MIN: Duration = Duration::from_millis(50);
    const MAX: Duration = Duration::from_secs(5);
    let mut backoff = MIN;
    loop {
        match sub.recv().await {
            Ok(d) => {
                backoff = MIN;
                if let Ok(event) = d.payload()
                    && !pending.deliver(event.clone())
                {
                    tracing::debug!(id = %event.id(), "late or unknown reply dropped");
                }
                let _ = d.ack().await;
            }
            Err(e) if e.kind() == ReceiveErrorKind::Closed => {
                tracing::warn!(topic, error = %e, "reply subscription closed; subscribing again");
                // Requests keep being sent meanwhile (and time out); the listener never gives
                // up, so a refusal for good is retried at the longest backoff.
                loop {
                    let again = crate::subscriber::resubscribe(
                        &subscriber,
                        &topic,
                        &options,
                        std::future::pending(),
                    );
                    match again.await {
                        Ok(Some(s)) => {
                            sub = s;
                            break;
                        }
                        Ok(None) => {}
                        Err(_) => {
                            tokio::time::sleep(crate::subscriber::RESUBSCRIBE_MAX_DELAY).await;
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(topic, error = %e, "receiving replies failed; retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX);
            }
        }
    }
}

/// Sends requests and matches their replies.
pub struct Requester {
    publisher: Arc<dyn DynPublisher>,
    reply_topic: String,
    pending: PendingReplies,
    listener: JoinHandle<()>,
}

impl fmt::Debug for Requester {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Requester")
            .field("reply_topic", &self.reply_topic)
            .finish_non_exhaustive()
    }
}

impl Drop for Requester {
    fn drop(&mut self) {
        self.listener.abort();
    }
}

/// Why a request got no reply.
#[derive(Debug)]
pub enum RequestError {
    /// The request could not be published.
    Publish(PublishError),
    /// No reply within the timeout.
    Timeout(Duration),
    /// The requester stopped listening for replies (its subscription closed).
    Closed,
    /// The connection that would have carried the reply was lost while the request waited.
    /// The request may have been handled; a retry goes over the new connection.
    Disconnected,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Publish(e) => write!(f, "request not sent: {e}"),
            Self::Timeout(d) => write!(f, "no reply within {d:?}"),
            Self::Closed => f.write_str("requester stopped listening for replies"),
            Self::Disconnected => f.write_str(
                "connection lost before the reply came (the request may have been handled)",
            ),
        }
    }
}

impl std::error::Error for RequestError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::Publish(e) => Some(e),
            _ => None,
        }
    }
}

impl RequestError {
    /// Whether sending the request again can succeed.
    pub fn is_transient(&self) -> bool {
        match self {
            Self::Publish(e) => e.is_transient(),
            Self::Timeout(_) | Self::Disconnected => true,
            Self::Closed => false,
        }
    }
}

impl Requester {
    /// Subscribes to a fresh reply topic (`reply-<uuid>`) and starts listening.
    pub async fn start<S>(
        subscriber: &S,
        publisher: Arc<dyn DynPublisher>,
    ) -> Result<Self, SubscribeError>
    where
        S: Subscriber + Clone + Send + Sync + 'static,
        S::Subscription: 'static,
    {
        let reply_topic = format!("reply-{}", uuid::Uuid::new_v4().simple());
        Self::start_on(subscriber, publisher, reply_topic).await
    }

    /// Like [`start`](Self::start), on a reply topic of your choosing (one per requester).
    pub async fn start_on<S>(
        subscriber: &S,
        publisher: Arc<dyn DynPublisher>,
        reply_topic: String,
    ) -> Result<Self, SubscribeError>
    where
        S: Subscriber + Clone + Send + Sync + 'static,
        S::Subscription: 'static,
    {
        let options = SubscribeOptions::new(REQUESTER_GROUP);
        let sub = subscriber.subscribe(&reply_topic, options.clone()).await?;
        let pending = PendingReplies::new();
        let listener = tokio::spawn(listen(
            subscriber.clone(),
            reply_topic.clone(),
            options,
            sub,
            pending.clone(),
        ));
        Ok(Self {
            publisher,
            reply_topic,
            pending,
            listener,
        })
    }

    /// The topic replies come to.
    pub fn reply_topic(&self) -> &str {
        &self.reply_topic
    }

    /// Publishes `request` to `topic` and waits up to `timeout` for its reply.
    pub async fn request(
        &self,
        topic: &str,
        mut request: Event,
        timeout: Duration,
    ) -> Result<Event, RequestError> {
        request.set_extension(REPLY_TO, self.reply_topic.as_str());
        let waiter = self.pending.register(&mut request);
        self.publisher
            .publish_dyn(topic, request)
            .await
            .map_err(RequestError::Publish)?;
        waiter.wait(timeout).await.map_err(|w| match w {
            Waited::Timeout => RequestError::Timeout(timeout),
            Waited::Closed => RequestError::Closed,
        })
    }
}

/// The reply topic of a request, if it asks for a reply.
pub fn reply_to(request: &Event) -> Option<&str> {
    request.extension_str(REPLY_TO)
}

/// Why a reply could not be sent.
#[derive(Debug)]
pub enum ReplyError {
    /// The request has no `replyto`.
    NoReplyTo,
    /// The reply event is invalid.
    Build(BuildError),
    /// Publishing failed.
    Publish(PublishError),
}

impl fmt::Display for ReplyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoReplyTo => f.write_str("request has no replyto extension"),
            Self::Build(e) => write!(f, "invalid reply: {e}"),
            Self::Publish(e) => write!(f, "reply not sent: {e}"),
        }
    }
}

impl std::error::Error for ReplyError {}

/// Sends `reply` for `request`: to its `replyto` topic, with causation ID = the request's `id`,
/// the request's correlation ID and its `replytoken`.
pub async fn reply<P: DynPublisher + ?Sized>(
    publisher: &P,
    request: &Event,
    reply: EventBuilder,
) -> Result<(), ReplyError> {
    let topic = reply_to(request).ok_or(ReplyError::NoReplyTo)?;
    let mut reply = reply;
    if let Some(token) = request.extension_str(REPLY_TOKEN) {
        reply = reply.extension(REPLY_TOKEN, token);
    }
    let reply = reply
        .causation_id(request.id())
        .correlation_id(request.correlation_id().unwrap_or(request.id()))
        .build()
        .map_err(ReplyError::Build)?;
    publisher
        .publish_dyn(topic, reply)
        .await
        .map(|_| ())
        .map_err(ReplyError::Publish)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply_for(request: &Event, with_token: bool) -> Event {
        let mut b = EventBuilder::new("t", "reply").causation_id(request.id());
        if with_token {
            b = b.extension(REPLY_TOKEN, request.extension_str(REPLY_TOKEN).unwrap());
        }
        b.build().unwrap()
    }

    #[tokio::test]
    async fn requests_sharing_an_id_each_get_their_own_reply_and_dropped_waits_are_forgotten() {
        let pending = PendingReplies::new();
        let mut first = EventBuilder::new("t", "q").id("same").build().unwrap();
        let mut second = first.clone();
        let a = pending.register(&mut first);
        let b = pending.register(&mut second);
        assert_eq!(pending.len(), 2);
        // The second's reply first: it goes to the second, by its token.
        assert!(pending.deliver(reply_for(&second, true)));
        assert!(b.wait(Duration::from_secs(1)).await.is_ok());
        // A reply without a token goes to the oldest waiting request of its id.
        assert!(pending.deliver(reply_for(&first, false)));
        assert!(a.wait(Duration::from_secs(1)).await.is_ok());
        assert!(pending.is_empty());

        let mut third = EventBuilder::new("t", "q").build().unwrap();
        let c = pending.register(&mut third);
        drop(c);
        assert!(
            pending.is_empty(),
            "a dropped wait (a cancelled request) is forgotten"
        );
        assert!(
            !pending.deliver(reply_for(&third, true)),
            "its late reply is dropped"
        );

        let mut fourth = EventBuilder::new("t", "q").build().unwrap();
        let d = pending.register(&mut fourth);
        pending.clear();
        assert_eq!(
            d.wait(Duration::from_secs(1)).await.unwrap_err(),
            Waited::Closed
        );
    }
}
