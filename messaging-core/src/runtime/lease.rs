//! Keeping a delivery's lease (its ack deadline) alive while its handler runs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::delivery::Delivery;
use crate::error::ErrorKind as _;

/// How the runtime keeps deliveries from being handed to another consumer while their handler
/// still runs, on brokers whose deliveries have ack deadlines
/// ([`Features::ack_deadline`](crate::Features::ack_deadline) and
/// [`extend_deadline`](crate::Features::extend_deadline): SQS's visibility timeout, the
/// in-memory broker's deadline).
///
/// While a handler runs — its in-place retries and the waits between them included — the
/// runtime extends the delivery's deadline by the subscription's
/// [`ack_deadline`](crate::SubscribeOptions::ack_deadline) every
/// [`every`](Self::every) (default: a third of the deadline), until the delivery is settled or
/// the handler has run for [`max`](Self::max). Then it stops extending: the lease runs out and
/// the broker hands the message out again, which is logged and counted
/// (`messaging_lease_expired_total`). A failed extension is logged and tried again at the next
/// tick; an extension the broker refuses for good (the deadline already passed) ends renewal
/// for that delivery.
///
/// Configurable from a configuration file (`lease: { every: 10s, max: 1h }`).
///
/// ```
/// use std::time::Duration;
/// use messaging_core::runtime::LeasePolicy;
///
/// let lease = LeasePolicy { max: Duration::from_secs(600), ..LeasePolicy::default() };
/// assert!(lease.enabled);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LeasePolicy {
    /// Whether to renew at all (default true). Off, a handler that outlives the deadline has
    /// its message handed to another consumer while it still works on it.
    pub enabled: bool,
    /// How often to extend; `None` (default) is a third of the subscription's ack deadline.
    #[serde(with = "humantime_serde")]
    pub every: Option<Duration>,
    /// The longest a delivery's lease is kept alive (default 1 hour).
    #[serde(with = "humantime_serde")]
    pub max: Duration,
}

impl Default for LeasePolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            every: None,
            max: Duration::from_secs(3600),
        }
    }
}

impl LeasePolicy {
    /// No renewal.
    pub fn disabled() -> Self {
        Self {
            enabled: false,
            ..Self::default()
        }
    }

    /// The renewal for a subscription whose deadline is `deadline`, if the broker can renew.
    pub(crate) fn for_deadline(
        &self,
        deadline: Duration,
        broker_can: bool,
        labels: &[(&'static str, String)],
    ) -> Option<Lease> {
        if !self.enabled || !broker_can || deadline.is_zero() {
            return None;
        }
        let every = self
            .every
            .unwrap_or(deadline / 3)
            .clamp(Duration::from_millis(10), deadline);
        Some(Lease {
            by: deadline,
            every,
            max: self.max,
            extended: metrics::counter!("messaging_lease_extensions_total", labels),
            expired: metrics::counter!("messaging_lease_expired_total", labels),
        })
    }
}

/// A renewal schedule, resolved for one subscription.
pub(crate) struct Lease {
    by: Duration,
    every: Duration,
    max: Duration,
    extended: metrics::Counter,
    expired: metrics::Counter,
}

/// Keeps `delivery`'s lease alive (see [`LeasePolicy`]) for as long as it is polled; never
/// completes. Run it as a branch beside the work it covers, in a `select!` biased towards the
/// work: until the work waits, it is never polled, and it creates its timer only when first
/// polled, so work that completes at once costs nothing here.
pub(crate) async fn renew<D: Delivery>(lease: Option<&Lease>, delivery: &mut D) {
    let Some(lease) = lease else {
        return std::future::pending().await;
    };
    let started = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(lease.every).await;
        if started.elapsed() >= lease.max {
            lease.expired.increment(1);
            tracing::warn!(
                topic = delivery.topic(),
                max = ?lease.max,
                "handler still running after the lease's maximum; no longer extending its deadline, so the broker hands the message out again"
            );
            return std::future::pending().await;
        }
        match delivery.extend_deadline(lease.by).await {
            Ok(()) => lease.extended.increment(1),
            Err(e) if e.kind().is_transient() => {
                tracing::warn!(topic = delivery.topic(), error = %e, "extending a delivery's deadline failed; trying again");
            }
            Err(e) => {
                lease.expired.increment(1);
                tracing::warn!(topic = delivery.topic(), error = %e, "the broker refuses to extend the delivery's deadline; it may be handed out again while its handler runs");
                return std::future::pending().await;
            }
        }
    }
}
