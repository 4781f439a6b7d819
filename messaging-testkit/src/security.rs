//! Checks the adapters' security tests share: a refused connection fails fast, typed and not
//! transient, without showing the secret anywhere; a missing permission is `Forbidden` on both
//! publish and subscribe; a connection that passed both still delivers.

use std::future::Future;
use std::time::{Duration, Instant};

use messaging_core::connect::ConnectError;
use messaging_core::{
    AttributesReader, Delivery, Event, PublishErrorKind, Publisher, SubscribeErrorKind,
    SubscribeOptions, Subscriber, Subscription,
};

use crate::logs::LogCapture;

/// Awaits `connect`, which must fail within `limit` with an error that is not transient (a
/// refused connection is never worth retrying, and must not wait out a time-out); returns the
/// error. Panics otherwise.
pub async fn refused_within<T>(
    limit: Duration,
    connect: impl Future<Output = Result<T, ConnectError>>,
) -> ConnectError {
    let started = Instant::now();
    let err = match tokio::time::timeout(limit * 2, connect).await {
        Err(_) => panic!("a refused connect did not answer within {:?}", limit * 2),
        Ok(Ok(_)) => panic!("connected, but the connection should have been refused"),
        Ok(Err(e)) => e,
    };
    assert!(
        started.elapsed() < limit,
        "took {:?}: {err}",
        started.elapsed()
    );
    assert!(!err.is_transient(), "{err}");
    err
}

/// Asserts that `err` says `says` (e.g. `authentication to rabbitmq`) and that `secret` is in
/// neither its `Display` nor its `Debug` form, nor anything `capture` recorded.
pub fn assert_secret_hidden(err: &ConnectError, says: &str, secret: &str, capture: &LogCapture) {
    let shown = format!("{err}\n{err:?}");
    assert!(shown.contains(says), "expected {says:?} in: {shown}");
    assert!(
        !shown.contains(secret),
        "the secret is in the error: {shown}"
    );
    let logs = capture.text();
    assert!(!logs.is_empty(), "the log capture recorded nothing");
    assert!(!logs.contains(secret), "the secret is in the logs:\n{logs}");
}

/// Subscribes group `g` to `topic`, publishes `event`, and asserts that it arrives (within
/// `wait`) and acks; then closes the subscription. What a connection that passed TLS and
/// authentication must still do.
pub async fn assert_round_trip<P: Publisher, S: Subscriber>(
    publisher: &P,
    subscriber: &S,
    topic: &str,
    event: Event,
    wait: Duration,
) {
    let mut sub = subscriber
        .subscribe(topic, SubscribeOptions::new("g"))
        .await
        .unwrap_or_else(|e| panic!("subscribe to {topic}: {e}"));
    publisher
        .publish(topic, event.clone())
        .await
        .unwrap_or_else(|e| panic!("publish to {topic}: {e}"));
    let d = tokio::time::timeout(wait, sub.recv())
        .await
        .unwrap_or_else(|_| panic!("nothing delivered from {topic} within {wait:?}"))
        .unwrap_or_else(|e| panic!("receive from {topic}: {e}"));
    assert_eq!(d.event().expect("the event decodes").id(), event.id());
    d.ack().await.expect("ack");
    sub.close().await.expect("close");
}

/// Asserts that publishing `event` to `topic` and subscribing to it both fail as `Forbidden`,
/// not transient: the credentials lack the permission.
pub async fn assert_forbidden<P: Publisher, S: Subscriber>(
    publisher: &P,
    subscriber: &S,
    topic: &str,
    event: Event,
) {
    let err = publisher
        .publish(topic, event)
        .await
        .expect_err("a publish without permission succeeded");
    assert_eq!(err.kind(), PublishErrorKind::Forbidden, "{err}");
    assert!(!err.is_transient(), "{err}");
    let err = match subscriber
        .subscribe(topic, SubscribeOptions::new("g"))
        .await
    {
        Ok(_) => panic!("a subscription without permission to {topic} succeeded"),
        Err(e) => e,
    };
    assert_eq!(err.kind(), SubscribeErrorKind::Forbidden, "{err}");
    assert!(!err.is_transient(), "{err}");
}
