//! The idempotent consumer: duplicate deliveries of one event are processed once.
//!
//! [`IdempotencyLayer`] keys each message by its CloudEvents identity — `source` and `id` (or a
//! configured extension in place of the `id`, such as an `idempotency-key` header sent as
//! `idempotencykey`) — scoped by subscription group and topic, so every group still processes
//! every event once and two producers reusing an `id` are not taken for duplicates (see
//! [`IdempotencyLayer::key_of`]). It sits inside the retry layer, around
//! the handler, over an [`IdempotencyStore`]: [`MemoryStore`] for one process,
//! `RedisStore` (feature `redis`) for consumers on several machines.
//!
//! # Order of operations, and what a crash between them does
//!
//! 1. **claim** the key for a lease (`begin`), with an owner token unique to this claim: a
//!    key already *done* means a duplicate — skip the handler and ack; a key *in progress*
//!    elsewhere means a concurrent duplicate — fail transiently and retry after the lease.
//! 2. **process**: run the handler.
//! 3. **mark** the key done for the retention TTL (`complete`); on a handler failure, release
//!    the claim instead so a retry can run. Both act only while the token still owns the
//!    claim: a handler that outlived its lease cannot delete the claim of the consumer that
//!    took the key over.
//! 4. **ack** (by the consumer runtime).
//!
//! | crash between | effect on redelivery |
//! |---|---|
//! | 1 and 2 | claim expires after the lease; the message is processed then |
//! | 2 and 3 | the handler's effects happened but are not recorded: processed **again** after the lease — make side effects idempotent or transactional with the store where this matters |
//! | 3 and 4 | recorded as done: the redelivery is skipped and acked — no duplicate |
//!
//! A duplicate arriving later than the retention TTL is processed again.

mod layer;
mod memory;
#[cfg(feature = "redis")]
mod redis;

use std::fmt;
use std::future::Future;
use std::time::Duration;

#[cfg(feature = "redis")]
pub use self::redis::RedisStore;
pub use layer::{Idempotency, IdempotencyLayer, KeyFrom};
pub use memory::MemoryStore;

/// The former name of [`Idempotency`].
#[deprecated(note = "renamed to `Idempotency`, like `Retry`")]
pub type Idempotent<S, St> = Idempotency<S, St>;

/// What claiming a key found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// The key is now claimed by the caller.
    Acquired,
    /// Another consumer holds an unexpired claim.
    InProgress,
    /// Processing finished before: a duplicate.
    Done,
}

/// Failure of the store itself (connection lost...). Always treated as transient.
#[derive(Debug)]
pub struct StoreError(pub crate::error::BoxError);

impl fmt::Display for StoreError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "idempotency store failed: {}", self.0)
    }
}

impl std::error::Error for StoreError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&*self.0)
    }
}

/// Where processed keys are remembered.
///
/// Every claim carries an owner `token`, unique per claim (the layer uses a random UUID):
/// after a lease expired and another consumer claimed the key, the first owner's late
/// [`complete`](Self::complete) or [`release`](Self::release) must not touch the new claim.
pub trait IdempotencyStore: Send + Sync + 'static {
    /// Claims `key` for `lease` as `token`'s owner, unless it is done or claimed by someone
    /// else (an unexpired claim).
    fn begin(
        &self,
        key: &str,
        token: &str,
        lease: Duration,
    ) -> impl Future<Output = Result<Claim, StoreError>> + Send;

    /// Marks `key` done, remembered for `ttl` — if `token` still owns the claim, or nobody
    /// does (the claim expired unclaimed). Another owner's claim, or a done mark, is left as
    /// it is.
    fn complete(
        &self,
        key: &str,
        token: &str,
        ttl: Duration,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;

    /// Releases `token`'s claim after a failure, so a retry can claim it again; does nothing
    /// if the key is done or claimed by another owner.
    fn release(
        &self,
        key: &str,
        token: &str,
    ) -> impl Future<Output = Result<(), StoreError>> + Send;
}
