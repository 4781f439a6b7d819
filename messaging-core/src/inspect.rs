//! Reading a broker's state: queue depth (and, on log brokers, lag).

use std::future::Future;

use crate::error::Error;

crate::error::error_kind_pub! {
    /// Why an inspection failed.
    InspectErrorKind {
        /// The broker cannot tell.
        Unsupported => ("the broker cannot report this", false),
        /// The broker or the connection is unavailable for now.
        Unavailable => ("broker is unavailable", true),
        /// The broker refused (authorization).
        Rejected => ("broker rejected the request", false),
    }
}

/// Failure to inspect.
pub type InspectError = Error<InspectErrorKind>;

/// Reports how many messages wait in a subscription group; used for dead-letter depth
/// alerting and consumer lag metrics.
pub trait Inspect: Send + Sync {
    /// Messages `group` of `topic` still holds — ready, in flight or delayed — or `None` if the
    /// group does not exist. On log brokers, the lag: high watermark minus committed offset.
    fn depth(
        &self,
        topic: &str,
        group: &str,
    ) -> impl Future<Output = Result<Option<u64>, InspectError>> + Send;
}
