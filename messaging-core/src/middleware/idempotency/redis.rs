//! A shared idempotency store on Redis, for consumers on several machines.

use std::time::Duration;

use redis::aio::ConnectionManager;

use super::{Claim, IdempotencyStore, StoreError};

const DONE: &str = "done";

/// Keys in Redis: a claim is `SET key claimed:<token> NX PX lease`; done is `SET key done PX
/// ttl`, by a script, only while the key holds the caller's claim or nothing; a release
/// deletes the key, by a script, only while it holds the caller's claim (compare-and-delete,
/// atomic on the server). Reconnects on its own ([`ConnectionManager`]); a Redis outage is a
/// transient error, so messages are retried.
#[derive(Clone)]
pub struct RedisStore {
    conn: ConnectionManager,
    complete: redis::Script,
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

/// The value of a claim owned by `token`.
fn claimed(token: &str) -> String {
    format!("claimed:{token}")
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
            complete: redis::Script::new(
                "local v = redis.call('GET', KEYS[1]) \
                 if v == ARGV[1] or not v then \
                   redis.call('SET', KEYS[1], ARGV[2], 'PX', ARGV[3]) return 1 \
                 end return 0",
            ),
            release: redis::Script::new(
                "if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) else return 0 end",
            ),
        })
    }
}

impl IdempotencyStore for RedisStore {
    async fn begin(&self, key: &str, token: &str, lease: Duration) -> Result<Claim, StoreError> {
        let mut conn = self.conn.clone();
        let claim = claimed(token);
        // Twice at most: the key may expire between the failed claim and the read.
        for _ in 0..2 {
            let set: Option<String> = redis::cmd("SET")
                .arg(key)
                .arg(&claim)
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

    async fn complete(&self, key: &str, token: &str, ttl: Duration) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.complete
            .key(key)
            .arg(claimed(token))
            .arg(DONE)
            .arg(millis(ttl))
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(err)
    }

    async fn release(&self, key: &str, token: &str) -> Result<(), StoreError> {
        let mut conn = self.conn.clone();
        self.release
            .key(key)
            .arg(claimed(token))
            .invoke_async::<i64>(&mut conn)
            .await
            .map(|_| ())
            .map_err(err)
    }
}
