//! An in-process idempotency store with TTLs.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, BuildHasherDefault, Hasher, RandomState};
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

use super::{Claim, IdempotencyStore, StoreError};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Claimed by the owner whose token has this digest.
    Claimed(Digest),
    Done,
}

/// Keys are kept as 128-bit keyed hashes: no allocation per key, and a collision (two
/// different keys taken for one) has a probability of about n²/2¹²⁹.
type Digest = u128;

/// The digests are already uniformly distributed: hashing them again is wasted work.
#[derive(Default)]
struct DigestHasher(u64);

impl Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(*b);
        }
    }
    fn write_u128(&mut self, n: u128) {
        self.0 = n as u64;
    }
}

#[derive(Debug, Default)]
struct Inner {
    keys: HashMap<Digest, (State, Instant), BuildHasherDefault<DigestHasher>>,
    /// Expiry order, for purging; entries may be stale (the key was renewed or removed).
    expiries: VecDeque<(Instant, Digest)>,
}

/// Keys in process memory, expiring by tokio's clock (so paused-time tests work). Suits one
/// consumer process; consumers on several machines need a shared store such as `RedisStore`.
#[derive(Debug)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
    seeds: (RandomState, RandomState),
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store with room for `keys` keys, so a busy consumer does not pay for the
    /// table growing (size it to the messages expected within the retention TTL).
    pub fn with_capacity(keys: usize) -> Self {
        Self {
            inner: Mutex::new(Inner {
                keys: HashMap::with_capacity_and_hasher(keys, BuildHasherDefault::default()),
                expiries: VecDeque::with_capacity(keys * 2),
            }),
            seeds: (RandomState::new(), RandomState::new()),
        }
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
        crate::sync::lock(&self.inner)
    }

    fn digest(&self, key: &str) -> Digest {
        let hi = self.seeds.0.hash_one(key);
        let lo = self.seeds.1.hash_one(key);
        (u128::from(hi) << 64) | u128::from(lo)
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

    fn set(&mut self, key: Digest, state: State, expiry: Instant) {
        self.keys.insert(key, (state, expiry));
        self.expiries.push_back((expiry, key));
    }
}

impl IdempotencyStore for MemoryStore {
    async fn begin(&self, key: &str, token: &str, lease: Duration) -> Result<Claim, StoreError> {
        let (key, owner) = (self.digest(key), self.digest(token));
        let now = Instant::now();
        let mut inner = self.lock();
        inner.purge(now);
        match inner.keys.get(&key) {
            Some((State::Done, exp)) if *exp > now => return Ok(Claim::Done),
            Some((State::Claimed(_), exp)) if *exp > now => return Ok(Claim::InProgress),
            _ => {}
        }
        inner.set(key, State::Claimed(owner), later(now, lease));
        Ok(Claim::Acquired)
    }

    async fn complete(&self, key: &str, token: &str, ttl: Duration) -> Result<(), StoreError> {
        let (key, owner) = (self.digest(key), self.digest(token));
        let now = Instant::now();
        let mut inner = self.lock();
        let ours_or_free = match inner.keys.get(&key) {
            Some((State::Claimed(o), _)) if *o == owner => true,
            Some((_, exp)) => *exp <= now,
            None => true,
        };
        if ours_or_free {
            inner.set(key, State::Done, later(now, ttl));
        }
        Ok(())
    }

    async fn release(&self, key: &str, token: &str) -> Result<(), StoreError> {
        let (key, owner) = (self.digest(key), self.digest(token));
        let mut inner = self.lock();
        if matches!(inner.keys.get(&key), Some((State::Claimed(o), _)) if *o == owner) {
            inner.keys.remove(&key);
        }
        Ok(())
    }
}

fn later(now: Instant, d: Duration) -> Instant {
    now.checked_add(d)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 24 * 3600))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn claim_complete_expire() {
        let s = MemoryStore::new();
        let lease = Duration::from_secs(10);
        assert_eq!(s.begin("k", "a", lease).await.unwrap(), Claim::Acquired);
        assert_eq!(s.begin("k", "b", lease).await.unwrap(), Claim::InProgress);
        s.complete("k", "a", Duration::from_secs(60)).await.unwrap();
        assert_eq!(s.begin("k", "b", lease).await.unwrap(), Claim::Done);
        tokio::time::advance(Duration::from_secs(61)).await;
        assert_eq!(s.begin("k", "c", lease).await.unwrap(), Claim::Acquired);
        s.release("k", "c").await.unwrap();
        assert_eq!(s.begin("k", "d", lease).await.unwrap(), Claim::Acquired);
    }

    #[tokio::test(start_paused = true)]
    async fn lease_expiry_lets_another_claim() {
        let s = MemoryStore::new();
        assert_eq!(
            s.begin("k", "a", Duration::from_secs(5)).await.unwrap(),
            Claim::Acquired
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(
            s.begin("k", "b", Duration::from_secs(5)).await.unwrap(),
            Claim::Acquired
        );
        assert_eq!(s.len(), 1, "expired entries are purged, renewed ones kept");
    }

    #[tokio::test(start_paused = true)]
    async fn a_stale_owner_cannot_release_or_complete_the_new_claim() {
        let s = MemoryStore::new();
        let lease = Duration::from_secs(5);
        assert_eq!(s.begin("k", "slow", lease).await.unwrap(), Claim::Acquired);
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(s.begin("k", "next", lease).await.unwrap(), Claim::Acquired);
        // The first owner's handler finally returns.
        s.release("k", "slow").await.unwrap();
        assert_eq!(
            s.begin("k", "third", lease).await.unwrap(),
            Claim::InProgress,
            "the stale release left the new claim alone"
        );
        s.complete("k", "slow", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            s.begin("k", "third", lease).await.unwrap(),
            Claim::InProgress,
            "the stale complete left the new claim alone"
        );
        s.complete("k", "next", Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(s.begin("k", "third", lease).await.unwrap(), Claim::Done);
        s.release("k", "next").await.unwrap();
        assert_eq!(
            s.begin("k", "third", lease).await.unwrap(),
            Claim::Done,
            "release never undoes done"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn completing_an_expired_unclaimed_key_still_records_it() {
        let s = MemoryStore::new();
        assert_eq!(
            s.begin("k", "a", Duration::from_secs(5)).await.unwrap(),
            Claim::Acquired
        );
        tokio::time::advance(Duration::from_secs(6)).await;
        s.complete("k", "a", Duration::from_secs(60)).await.unwrap();
        assert_eq!(
            s.begin("k", "b", Duration::from_secs(5)).await.unwrap(),
            Claim::Done
        );
    }
}
