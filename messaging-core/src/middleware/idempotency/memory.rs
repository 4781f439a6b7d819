//! An in-process idempotency store with TTLs.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{Claim, IdempotencyStore, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Claimed,
    Done,
}

#[derive(Debug, Default)]
struct Inner {
    keys: HashMap<String, (State, Instant)>,
    /// Expiry order, for purging; entries may be stale (the key was renewed or removed).
    expiries: VecDeque<(Instant, String)>,
}

/// Keys in process memory, expiring by tokio's clock (so paused-time tests work). Suits one
/// consumer process; consumers on several machines need a shared store such as `RedisStore`.
#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// Keys currently remembered (claimed or done, unexpired).
    pub fn len(&self) -> usize {
        let mut inner = self.lock();
        inner.purge(Instant::now());
        inner.keys.len()
    }

    /// Whether no key is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set(&self, key: &str, state: State, ttl: Duration) {
        let now = Instant::now();
        let mut inner = self.lock();
        inner.purge(now);
        let expiry = now + ttl;
        inner.keys.insert(key.to_owned(), (state, expiry));
        inner.expiries.push_back((expiry, key.to_owned()));
    }
}

impl Inner {
    fn purge(&mut self, now: Instant) {
        while let Some((at, _)) = self.expiries.front() {
            if *at > now {
                break;
            }
            if let Some((at, key)) = self.expiries.pop_front() {
                if self.keys.get(&key).is_some_and(|(_, exp)| *exp <= at) {
                    self.keys.remove(&key);
                }
            }
        }
    }
}

impl IdempotencyStore for MemoryStore {
    async fn begin(&self, key: &str, lease: Duration) -> Result<Claim, StoreError> {
        let now = Instant::now();
        {
            let mut inner = self.lock();
            inner.purge(now);
            match inner.keys.get(key) {
                Some((State::Done, exp)) if *exp > now => return Ok(Claim::Done),
                Some((State::Claimed, exp)) if *exp > now => return Ok(Claim::InProgress),
                _ => {}
            }
        }
        self.set(key, State::Claimed, lease);
        Ok(Claim::Acquired)
    }

    async fn complete(&self, key: &str, ttl: Duration) -> Result<(), StoreError> {
        self.set(key, State::Done, ttl);
        Ok(())
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        let mut inner = self.lock();
        if matches!(inner.keys.get(key), Some((State::Claimed, _))) {
            inner.keys.remove(key);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn claim_complete_expire() {
        let s = MemoryStore::new();
        let lease = Duration::from_secs(10);
        assert_eq!(s.begin("k", lease).await.unwrap(), Claim::Acquired);
        assert_eq!(s.begin("k", lease).await.unwrap(), Claim::InProgress);
        s.complete("k", Duration::from_secs(60)).await.unwrap();
        assert_eq!(s.begin("k", lease).await.unwrap(), Claim::Done);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(s.begin("k", lease).await.unwrap(), Claim::Acquired);
        s.release("k").await.unwrap();
        assert_eq!(s.begin("k", lease).await.unwrap(), Claim::Acquired);
    }

    #[tokio::test(start_paused = true)]
    async fn lease_expiry_lets_another_claim() {
        let s = MemoryStore::new();
        assert_eq!(
            s.begin("k", Duration::from_secs(5)).await.unwrap(),
            Claim::Acquired
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            s.begin("k", Duration::from_secs(5)).await.unwrap(),
            Claim::Acquired
        );
        assert_eq!(s.len(), 1, "expired entries are purged, renewed ones kept");
    }
}
