//! Middleware for handler stacks, as tower layers.
//!
//! - [`retry`]: decides every failure — retry in place or redeliver with backoff, or
//!   dead-letter — following a [`RetryPolicy`](retry::RetryPolicy) as the configuration schema gives it.
//! - [`idempotency`]: absorbs duplicate deliveries, keyed by the event `id` or a header.
//!
//! Dead letters themselves (their metadata format, replay, depth) are not a layer: see
//! [`crate::dead_letter`].

pub mod idempotency;
pub mod retry;
