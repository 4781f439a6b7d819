//! Retry with exponential or fixed backoff; the layer at the top of a handler stack that
//! decides every failure.
//!
//! The policy follows the configuration schema (`retry_policy:`) and loads from YAML or TOML with human durations:
//!
//! ```
//! use messaging_core::middleware::retry::{Backoff, RetryMode, RetryPolicy};
//!
//! let yaml = "
//! max_retries: 3
//! backoff: exponential
//! initial_delay: 1s
//! max_delay: 30s
//! dlq: orders-dlq
//! ";
//! let policy: RetryPolicy = serde_norway::from_str(yaml)?;
//! assert_eq!(policy.max_retries, 3);
//! assert_eq!(policy.backoff, Backoff::Exponential);
//! assert_eq!(policy.mode, RetryMode::InPlace);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Transient failures are retried, up to `max_retries` times after the first attempt;
//! permanent failures go to the dead-letter queue at once. Two modes:
//!
//! - **in-place** (default): the consumer sleeps the backoff and calls the handler again while
//!   holding the delivery (the runtime keeps its lease alive meanwhile, see
//!   [`LeasePolicy`](crate::runtime::LeasePolicy)); keeps order, blocks the key or partition
//!   meanwhile.
//! - **redelivery**: the delivery is nacked with the backoff as delay, freeing the consumer;
//!   the broker redelivers it (natively or emulated, see
//!   [`Features::delayed_redelivery`](crate::Features::delayed_redelivery)); the attempt number
//!   counts deliveries.

mod layer;

use std::time::Duration;

use backon::{BackoffBuilder, ConstantBuilder, ExponentialBuilder};
use serde::{Deserialize, Serialize};

pub use layer::{Retry, RetryLayer};

/// How delays grow between retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Backoff {
    /// `initial_delay`, then times `factor` each retry, up to `max_delay`.
    #[default]
    Exponential,
    /// `initial_delay` every time.
    Fixed,
}

/// Where retries happen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum RetryMode {
    /// In the consumer, holding the delivery; keeps order.
    #[default]
    #[serde(alias = "in_place")]
    InPlace,
    /// Through the broker, with a nack and a delay; does not block the queue or partition.
    Redelivery,
}

/// A retry policy, with the configuration schema's field names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Retries after the first attempt; 0 dead-letters on the first failure.
    pub max_retries: u32,
    /// How delays grow.
    pub backoff: Backoff,
    /// Delay before the first retry.
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    /// Largest delay, jitter included.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Growth factor of exponential backoff.
    pub factor: f32,
    /// Adds up to 100% random jitter to each delay (capped at `max_delay`), so consumers that
    /// failed together do not retry together.
    pub jitter: bool,
    /// Dead-letter topic (default `<topic>.dlq`).
    pub dlq: Option<String>,
    /// Where retries happen.
    pub mode: RetryMode,
    /// The longest one handler run may take (default: no limit). A run still going after it is
    /// cancelled and counts as a transient failure (retried, then dead-lettered with the
    /// reason `retries-exhausted` and the error "handler timed out"). Set it below the
    /// broker's own limit on holding a delivery — RabbitMQ's `consumer_timeout`, 30 minutes by
    /// default, closes the channel of a consumer that holds a delivery longer; Kafka's
    /// `max.poll.interval.ms` does not apply (the adapter polls on its own) — so a handler
    /// that hangs is failed rather than its whole channel closed.
    #[serde(with = "humantime_serde")]
    pub handler_timeout: Option<Duration>,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_retries: 3,
            backoff: Backoff::Exponential,
            initial_delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(30),
            factor: 2.0,
            jitter: true,
            dlq: None,
            mode: RetryMode::InPlace,
            handler_timeout: None,
        }
    }
}

/// A policy that cannot work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidPolicy(String);

impl std::fmt::Display for InvalidPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid retry policy: {}", self.0)
    }
}

impl std::error::Error for InvalidPolicy {}

impl RetryPolicy {
    /// A policy that never retries: every failure is dead-lettered.
    pub fn no_retries() -> Self {
        Self {
            max_retries: 0,
            ..Self::default()
        }
    }

    /// Checks the fields against each other.
    pub fn validate(&self) -> Result<(), InvalidPolicy> {
        if self.max_delay < self.initial_delay {
            return Err(InvalidPolicy(format!(
                "max_delay {:?} is shorter than initial_delay {:?}",
                self.max_delay, self.initial_delay
            )));
        }
        if !(self.factor >= 1.0 && self.factor.is_finite()) {
            return Err(InvalidPolicy(format!(
                "factor {} must be a finite number of at least 1",
                self.factor
            )));
        }
        if self.handler_timeout == Some(Duration::ZERO) {
            return Err(InvalidPolicy("handler_timeout must be positive".into()));
        }
        if self.dlq.as_deref() == Some("") {
            return Err(InvalidPolicy("dlq topic name is empty".into()));
        }
        Ok(())
    }

    /// The delays before each retry, in order (`max_retries` of them), from `backon`.
    pub fn delays(&self) -> impl Iterator<Item = Duration> + Send + use<> {
        let times = self.max_retries as usize;
        let cap = self.max_delay;
        let iter: Box<dyn Iterator<Item = Duration> + Send> = match self.backoff {
            Backoff::Exponential => {
                let mut b = ExponentialBuilder::new()
                    .with_min_delay(self.initial_delay)
                    .with_max_delay(self.max_delay)
                    .with_factor(self.factor)
                    .with_max_times(times);
                if self.jitter {
                    b = b.with_jitter();
                }
                Box::new(b.build())
            }
            Backoff::Fixed => {
                let mut b = ConstantBuilder::new()
                    .with_delay(self.initial_delay)
                    .with_max_times(times);
                if self.jitter {
                    b = b.with_jitter();
                }
                Box::new(b.build())
            }
        };
        iter.map(move |d| d.min(cap))
    }

    /// The delay before retry number `n` (1-based), or `None` past `max_retries`.
    pub fn delay_before_retry(&self, n: u32) -> Option<Duration> {
        if n == 0 {
            return None;
        }
        self.delays().nth(n as usize - 1)
    }

    /// The dead-letter topic for `topic`.
    pub fn dead_letter_topic(&self, topic: &str) -> String {
        self.dlq.clone().unwrap_or_else(|| format!("{topic}.dlq"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_policy_from_yaml_and_toml() {
        let yaml = "retry_policy:\n  max_retries: 3\n  backoff: exponential\n  initial_delay: 1s\n  max_delay: 30s\n  dlq: \"orders-dlq\"\n";
        #[derive(Deserialize)]
        struct Doc {
            retry_policy: RetryPolicy,
        }
        let from_yaml = serde_norway::from_str::<Doc>(yaml).unwrap().retry_policy;
        let toml = "[retry_policy]\nmax_retries = 3\nbackoff = \"exponential\"\ninitial_delay = \"1s\"\nmax_delay = \"30s\"\ndlq = \"orders-dlq\"\n";
        let from_toml = toml::from_str::<Doc>(toml).unwrap().retry_policy;
        assert_eq!(from_yaml, from_toml);
        assert_eq!(from_yaml.initial_delay, Duration::from_secs(1));
        assert_eq!(from_yaml.max_delay, Duration::from_secs(30));
        assert_eq!(from_yaml.dlq.as_deref(), Some("orders-dlq"));
        assert_eq!(from_yaml.dead_letter_topic("orders"), "orders-dlq");
        from_yaml.validate().unwrap();
    }

    #[test]
    fn unknown_fields_and_bad_values_are_rejected() {
        assert!(serde_norway::from_str::<RetryPolicy>("max_retrys: 3").is_err());
        assert!(serde_norway::from_str::<RetryPolicy>("initial_delay: soon").is_err());
        let p: RetryPolicy = serde_norway::from_str("initial_delay: 10s\nmax_delay: 1s").unwrap();
        assert!(p.validate().is_err());
        let p: RetryPolicy = serde_norway::from_str("mode: redelivery").unwrap();
        assert_eq!(p.mode, RetryMode::Redelivery);
        let p: RetryPolicy = serde_norway::from_str("mode: in_place").unwrap();
        assert_eq!(p.mode, RetryMode::InPlace);
    }

    #[test]
    fn exponential_delays_grow_and_cap() {
        let p = RetryPolicy {
            max_retries: 6,
            jitter: false,
            ..RetryPolicy::default()
        };
        let d: Vec<u64> = p.delays().map(|d| d.as_secs()).collect();
        assert_eq!(d, [1, 2, 4, 8, 16, 30]);
        assert_eq!(p.delay_before_retry(3), Some(Duration::from_secs(4)));
        assert_eq!(p.delay_before_retry(7), None);
    }

    #[test]
    fn fixed_delays_and_jitter_bounds() {
        let p = RetryPolicy {
            backoff: Backoff::Fixed,
            jitter: false,
            ..RetryPolicy::default()
        };
        assert!(p.delays().all(|d| d == Duration::from_secs(1)));
        assert_eq!(p.delays().count(), 3);
        let p = RetryPolicy {
            max_retries: 50,
            ..RetryPolicy::default()
        };
        let delays: Vec<_> = p.delays().collect();
        assert!(
            delays
                .iter()
                .all(|d| *d >= Duration::from_secs(1) && *d <= Duration::from_secs(30))
        );
        assert!(
            delays.windows(2).any(|w| w[0] != w[1]),
            "jitter varies delays"
        );
    }
}
