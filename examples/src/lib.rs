//! Runnable examples for `messaging`; see `src/bin/`. Run one with
//! `cargo run -p messaging-examples --bin <name>`: on the in-memory broker by default, on a
//! real one with `MESSAGING_URL` set (`kafka://127.0.0.1:9092`,
//! `amqp://guest:guest@127.0.0.1:5672/%2f`, `sqs://?endpoint=http://127.0.0.1:4566`). The
//! code is the same for every broker.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use messaging::{Broker, ConnectError};
use serde::{Deserialize, Serialize};

/// The `order.created` payload every example sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    /// Order number.
    pub order_id: String,
    /// Amount in `currency`.
    pub amount: f64,
    /// ISO 4217 currency code.
    pub currency: String,
}

/// The broker `MESSAGING_URL` (or `MESSAGING_CONFIG`) names; the in-memory broker when unset.
pub async fn broker() -> Result<Broker, ConnectError> {
    let broker = Broker::from_env().await?;
    println!("broker: {} ({})", broker.features().broker, broker.url());
    Ok(broker)
}

/// `name` with a suffix unique to this run. Topics and groups on a real broker outlive the
/// process; fresh names keep one run from seeing messages another run (or a run side by side)
/// left behind.
pub fn fresh(name: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or_default();
    format!("{name}-{:08x}", nanos ^ std::process::id().rotate_left(16))
}

/// Waits until `done()` holds, checking every 20 ms, for at most `limit`.
pub async fn wait_until(
    what: &str,
    limit: Duration,
    mut done: impl AsyncFnMut() -> bool,
) -> Result<(), String> {
    let start = Instant::now();
    while !done().await {
        if start.elapsed() > limit {
            return Err(format!("{what}: not within {limit:?}"));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A shutdown switch for consumers: [`stop`](Self::stop) ends every [`signal`](Self::signal)
/// future, also one first polled after the stop (a consumer still joining its group then).
#[derive(Debug, Clone)]
pub struct Shutdown(tokio::sync::watch::Sender<bool>);

impl Default for Shutdown {
    fn default() -> Self {
        Self(tokio::sync::watch::Sender::new(false))
    }
}

impl Shutdown {
    /// A switch not yet thrown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Completes once [`stop`](Self::stop) was called.
    pub fn signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.subscribe();
        async move {
            let _ = rx.wait_for(|stopped| *stopped).await;
        }
    }

    /// Throws the switch.
    pub fn stop(&self) {
        self.0.send_replace(true);
    }
}
