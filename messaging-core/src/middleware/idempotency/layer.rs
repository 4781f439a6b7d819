//! `IdempotencyLayer` / `Idempotency<S>`.

use std::future::{Future, poll_fn};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use cloudevents::AttributesReader;
use tower_layer::Layer;
use tower_service::Service;

use super::{Claim, IdempotencyStore};
use crate::event::EventExt;
use crate::handler::{HandlerError, Incoming, call_isolated};

/// Where the idempotency key comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFrom {
    /// The CloudEvents `id`.
    Id,
    /// A string extension attribute (e.g. `idempotencykey`); messages without it fall back to
    /// the `id`.
    Extension(String),
}

/// Wraps a handler in [`Idempotency`].
#[derive(Debug)]
pub struct IdempotencyLayer<St> {
    store: Arc<St>,
    key: KeyFrom,
    lease: Duration,
    ttl: Duration,
    prefix: String,
}

impl<St> Clone for IdempotencyLayer<St> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            key: self.key.clone(),
            lease: self.lease,
            ttl: self.ttl,
            prefix: self.prefix.clone(),
        }
    }
}

impl<St: IdempotencyStore> IdempotencyLayer<St> {
    /// Keys by event `id`, 5-minute claim lease, 24-hour retention.
    pub fn new(store: Arc<St>) -> Self {
        Self {
            store,
            key: KeyFrom::Id,
            lease: Duration::from_secs(300),
            ttl: Duration::from_secs(24 * 3600),
            prefix: "messaging:idem:".into(),
        }
    }

    /// Where the key comes from.
    #[must_use]
    pub fn key(mut self, key: KeyFrom) -> Self {
        self.key = key;
        self
    }

    /// How long a claim blocks other consumers; set it longer than the handler's worst case.
    #[must_use]
    pub fn lease(mut self, lease: Duration) -> Self {
        self.lease = lease;
        self
    }

    /// How long processed keys are remembered.
    #[must_use]
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// Prefix of keys in the store (default `messaging:idem:`).
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The store key of `msg`: `<prefix><group>:<topic>:<source>:<id>`, where `<id>` is the
    /// event `id` (or the configured extension). CloudEvents identify an event by `source` and
    /// `id` together, so two producers reusing an `id` are not taken for duplicates, and the
    /// topic keeps a group subscribed to several topics apart. `%` and `:` in the group, topic
    /// and source are percent-escaped (`%25`, `%3A`), so the parts cannot run into each other.
    pub fn key_of(&self, msg: &Incoming) -> String {
        let event = msg.event();
        let id = match &self.key {
            KeyFrom::Id => event.id(),
            KeyFrom::Extension(name) => event.extension_str(name).unwrap_or(event.id()),
        };
        let source = event.source().as_str();
        let mut key = String::with_capacity(
            self.prefix.len() + msg.group().len() + msg.topic().len() + source.len() + id.len() + 3,
        );
        key.push_str(&self.prefix);
        for part in [msg.group(), msg.topic(), source] {
            push_escaped(&mut key, part);
            key.push(':');
        }
        key.push_str(id);
        key
    }
}

/// Appends `part` with `%` and `:` percent-escaped.
fn push_escaped(key: &mut String, part: &str) {
    if !part.contains([':', '%']) {
        key.push_str(part);
        return;
    }
    for c in part.chars() {
        match c {
            '%' => key.push_str("%25"),
            ':' => key.push_str("%3A"),
            c => key.push(c),
        }
    }
}

impl<S, St> Layer<S> for IdempotencyLayer<St> {
    type Service = Idempotency<S, St>;

    fn layer(&self, inner: S) -> Idempotency<S, St> {
        Idempotency {
            inner,
            layer: Arc::new(IdempotencyLayer {
                store: self.store.clone(),
                key: self.key.clone(),
                lease: self.lease,
                ttl: self.ttl,
                prefix: self.prefix.clone(),
            }),
        }
    }
}

/// Skips messages whose key was processed before; see the [module docs](super) for the order
/// of claim, process, mark and ack.
#[derive(Debug)]
pub struct Idempotency<S, St> {
    inner: S,
    layer: Arc<IdempotencyLayer<St>>,
}

impl<S: Clone, St> Clone for Idempotency<S, St> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            layer: self.layer.clone(),
        }
    }
}

impl<S, St> Service<Incoming> for Idempotency<S, St>
where
    S: Service<Incoming, Response = (), Error = HandlerError> + Clone + Send + 'static,
    S::Future: Send,
    St: IdempotencyStore,
{
    type Response = ();
    type Error = HandlerError;
    type Future = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), HandlerError>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, msg: Incoming) -> Self::Future {
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let layer = self.layer.clone();
        Box::pin(async move {
            let key = layer.key_of(&msg);
            // This claim's owner token: a late complete or release after the lease expired
            // cannot touch another consumer's claim.
            let mut buf = uuid::Uuid::encode_buffer();
            let token: &str = uuid::Uuid::new_v4().simple().encode_lower(&mut buf);
            match layer.store.begin(&key, token, layer.lease).await {
                Err(e) => Err(HandlerError::transient(e)),
                Ok(Claim::Done) => {
                    metrics::counter!("messaging_duplicates_skipped_total").increment(1);
                    tracing::debug!(key, "duplicate skipped");
                    Ok(())
                }
                Ok(Claim::InProgress) => Err(HandlerError::transient(format!(
                    "message {key} is being processed by another consumer"
                ))
                .retry_after(layer.lease)),
                Ok(Claim::Acquired) => {
                    // Released if this future is dropped before the outcome is recorded (the
                    // runtime's hard stop cuts handlers off): the redelivery must not wait out
                    // the lease.
                    let mut claim = ClaimGuard {
                        store: Some(layer.store.clone()),
                        key: key.clone(),
                        token: token.to_owned(),
                    };
                    poll_fn(|cx| inner.poll_ready(cx)).await?;
                    let result = call_isolated(&msg, || inner.call(msg.clone())).await;
                    claim.store = None;
                    match result {
                        Ok(()) => {
                            if let Err(e) = layer.store.complete(&key, token, layer.ttl).await {
                                // The work is done; failing now would redo it. A later
                                // duplicate may be processed again once the claim expires.
                                tracing::warn!(key, error = %e, "could not mark message processed");
                            }
                            Ok(())
                        }
                        Err(e) => {
                            if let Err(re) = layer.store.release(&key, token).await {
                                tracing::warn!(key, error = %re, "could not release claim");
                            }
                            Err(e)
                        }
                    }
                }
            }
        })
    }
}

/// Releases a claim whose handler was cut off (its future dropped) before the outcome was
/// known; disarmed once the handler returned.
struct ClaimGuard<St: IdempotencyStore> {
    store: Option<Arc<St>>,
    key: String,
    token: String,
}

impl<St: IdempotencyStore> Drop for ClaimGuard<St> {
    fn drop(&mut self) {
        let Some(store) = self.store.take() else {
            return;
        };
        let (key, token) = (
            std::mem::take(&mut self.key),
            std::mem::take(&mut self.token),
        );
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move {
                    if let Err(e) = store.release(&key, &token).await {
                        tracing::warn!(key, error = %e, "could not release the claim of a cut-off handler; it expires with its lease");
                    }
                });
            }
            Err(_) => {
                tracing::warn!(
                    key,
                    "no runtime to release the claim of a cut-off handler; it expires with its lease"
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    //! What a crash between claim, process, mark and ack does, step by step.

    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;
    use crate::event::EventBuilder;
    use crate::handler::{Origin, handler_fn};
    use crate::middleware::idempotency::MemoryStore;

    fn msg() -> Incoming {
        let e = EventBuilder::new("s", "t").id("e1").build().unwrap();
        let origin = Arc::new(Origin {
            topic: "orders".into(),
            group: "billing".into(),
        });
        Incoming::new(Arc::new(e), origin, 1)
    }

    fn setup() -> (
        Arc<MemoryStore>,
        Arc<AtomicUsize>,
        impl Service<Incoming, Response = (), Error = HandlerError> + Clone,
    ) {
        let store = Arc::new(MemoryStore::new());
        let runs = Arc::new(AtomicUsize::new(0));
        let r = runs.clone();
        let handler = handler_fn(move |_msg: Incoming| {
            let r = r.clone();
            async move {
                r.fetch_add(1, Ordering::SeqCst);
                Ok::<(), HandlerError>(())
            }
        });
        let layer = IdempotencyLayer::new(store.clone()).lease(Duration::from_secs(60));
        (store, runs, Layer::layer(&layer, handler))
    }

    async fn call(
        svc: &mut (impl Service<Incoming, Response = (), Error = HandlerError> + Clone),
    ) -> Result<(), HandlerError> {
        poll_fn(|cx| svc.poll_ready(cx)).await?;
        svc.call(msg()).await
    }

    #[tokio::test(start_paused = true)]
    async fn crash_after_mark_before_ack_skips_the_redelivery() {
        let (_store, runs, mut svc) = setup();
        call(&mut svc).await.unwrap(); // processed and marked; the ack is lost with the process
        call(&mut svc).await.unwrap(); // the broker redelivers
        assert_eq!(runs.load(Ordering::SeqCst), 1, "the duplicate is skipped");
    }

    #[tokio::test(start_paused = true)]
    async fn crash_between_process_and_mark_reprocesses_after_the_lease() {
        let (store, runs, mut svc) = setup();
        // The dead process claimed the key and ran the handler, but never marked it done.
        let key = "messaging:idem:billing:orders:s:e1";
        assert_eq!(
            store
                .begin(key, "dead-process", Duration::from_secs(60))
                .await
                .unwrap(),
            Claim::Acquired
        );
        let err = call(&mut svc).await.unwrap_err();
        assert!(!err.is_permanent(), "still claimed: retried later");
        assert_eq!(err.requested_delay(), Some(Duration::from_secs(60)));
        assert_eq!(runs.load(Ordering::SeqCst), 0);
        tokio::time::advance(Duration::from_secs(61)).await;
        call(&mut svc).await.unwrap();
        assert_eq!(
            runs.load(Ordering::SeqCst),
            1,
            "processed again once the lease expired"
        );
    }

    #[test]
    fn keys_carry_group_topic_source_and_id() {
        let layer = IdempotencyLayer::new(Arc::new(MemoryStore::new()));
        assert_eq!(layer.key_of(&msg()), "messaging:idem:billing:orders:s:e1");
        let e = EventBuilder::new("urn:shop:orders", "t")
            .id("a:b")
            .build()
            .unwrap();
        let origin = Arc::new(Origin {
            topic: "eu:orders".into(),
            group: "bill%ing".into(),
        });
        assert_eq!(
            layer.key_of(&Incoming::new(Arc::new(e), origin, 1)),
            "messaging:idem:bill%25ing:eu%3Aorders:urn%3Ashop%3Aorders:a:b"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_same_id_from_another_source_or_topic_is_not_a_duplicate() {
        let (_store, runs, mut svc) = setup();
        let with = |source: &str, topic: &str| {
            let e = EventBuilder::new(source, "t").id("e1").build().unwrap();
            let origin = Arc::new(Origin {
                topic: topic.into(),
                group: "billing".into(),
            });
            Incoming::new(Arc::new(e), origin, 1)
        };
        for m in [
            with("s", "orders"),
            with("other-service", "orders"),
            with("s", "refunds"),
            with("s", "orders"),
        ] {
            poll_fn(|cx| svc.poll_ready(cx)).await.unwrap();
            svc.call(m).await.unwrap();
        }
        assert_eq!(
            runs.load(Ordering::SeqCst),
            3,
            "only the repeat of (source s, topic orders, id e1) is skipped"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_handler_releases_its_claim() {
        let store = Arc::new(MemoryStore::new());
        let failing =
            handler_fn(|_msg: Incoming| async { Err::<(), _>(HandlerError::transient("down")) });
        let mut svc = Layer::layer(&IdempotencyLayer::new(store.clone()), failing);
        assert!(call(&mut svc).await.is_err());
        let key = "messaging:idem:billing:orders:s:e1";
        assert_eq!(
            store
                .begin(key, "retry", Duration::from_secs(1))
                .await
                .unwrap(),
            Claim::Acquired,
            "retry can claim"
        );
    }
}
