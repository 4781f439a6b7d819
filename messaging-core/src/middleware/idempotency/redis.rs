//! A shared idempotency store on Redis, for consumers on several machines.

use std::time::Duration;

use redis::aio::ConnectionManager;

use super::{Claim, IdempotencyStore, StoreError};

const CLAIMED: &str = "claimed";
const DONE: &str = "done";

/// Keys in Redis: a claim is `SET key claimed NX PX lease`, done is `SET key done PX ttl`, a
/// release deletes the key only while it is still a claim. Reconnects on its own
/// ([`ConnectionManager`]); a Redis outage is a transient error, so messages are retried.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    release: redis::Script,
}

impl std::fmt::Debug for RedisStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RedisStore")
    }
}

fn err(e: redis::RedisError) -> StoreError {
    StoreError(Box::new(e))
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

impl RedisStore {
    /// Connects to `url` (`redis://127.0.0.1:6379`).
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(err)?;
        let conn = ConnectionManager::new(client).await.map_err(err)?;
        Ok(Self {
            conn,
            release: redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
            ),
        })
    }
}

impl IdempotencyStore for RedisStore {
    async fn begin(&self, key: &str, lease: Duration) -> Result<Claim, StoreError> {
        let mut conn = self.conn.clone();
        // Twice at most: the key may expire between the failed claim and the read.
        for _ in 0..2 {
            let set: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(CLAIMED)
                .arg("NX")
                .arg("PX")
                .arg(millis(lease))
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            if set.is_some() {
                return Ok(Claim::Acquired);
            }
            let state: Option<String> = redis::cmd("GET")
                .arg(key)
                .query_async(&mut conn)
                .await
                .map_err(err)?;
            match state.as_deref() {
                Some(DONE) => return Ok(Claim::Done),
                Some(_) => return Ok(Claim::InProgress),
                None => continue,
            }
        }
        Ok(Claim::InProgress)
    }

    async fn complete(&self, key: &str, ttl: Duration) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        redis::cmd("SET")
            .arg(key)
            .arg(DONE)
            .arg("PX")
            .arg(millis(ttl))
            .query_async::<()>(&mut conn)
            .await
            .map_err(err)
    }

    async fn release(&self, key: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.release
            .key(key)
            .arg(CLAIMED)
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(err)
    }
}
