//! The Redis idempotency store against the real Redis server (started by
//! `scripts/brokers/redis.sh`). Fails with a clear message when Redis is unreachable.
#![cfg(feature = "redis")]

use std::time::Duration;

use messaging_core::middleware::idempotency::{Claim, IdempotencyStore, RedisStore};

const URL: &str = "redis://127.0.0.1:6379";

async fn store() -> RedisStore {
    RedisStore::connect(URL).await.unwrap_or_else(|e| {
        panic!("Redis is not reachable at {URL} (run scripts/brokers/redis.sh): {e}")
    })
}

fn key(name: &str) -> String {
    format!(
        "messaging-test:{}:{}:{name}",
        std::process::id(),
        uuid_like()
    )
}

fn uuid_like() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

#[tokio::test]
async fn claim_complete_release_on_real_redis() {
    let s = store().await;
    let k = key("a");
    let lease = Duration::from_secs(30);
    assert_eq!(s.begin(&k, "t1", lease).await.unwrap(), Claim::Acquired);
    assert_eq!(s.begin(&k, "t2", lease).await.unwrap(), Claim::InProgress);
    s.release(&k, "t1").await.unwrap();
    assert_eq!(s.begin(&k, "t3", lease).await.unwrap(), Claim::Acquired);
    s.complete(&k, "t3", Duration::from_secs(60)).await.unwrap();
    assert_eq!(s.begin(&k, "t4", lease).await.unwrap(), Claim::Done);
    s.release(&k, "t3").await.unwrap();
    assert_eq!(
        s.begin(&k, "t4", lease).await.unwrap(),
        Claim::Done,
        "release never undoes done"
    );
}

#[tokio::test]
async fn claims_expire_after_the_lease() {
    let s = store().await;
    let k = key("b");
    assert_eq!(
        s.begin(&k, "t1", Duration::from_millis(200)).await.unwrap(),
        Claim::Acquired
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        s.begin(&k, "t2", Duration::from_secs(5)).await.unwrap(),
        Claim::Acquired
    );
}

#[tokio::test]
async fn two_consumers_share_one_store() {
    // Two store handles stand for two machines.
    let (a, b) = (store().await, store().await);
    let k = key("c");
    let lease = Duration::from_secs(30);
    let (ra, rb) = tokio::join!(a.begin(&k, "a", lease), b.begin(&k, "b", lease));
    let mut claims = [ra.unwrap(), rb.unwrap()];
    claims.sort_by_key(|c| *c == Claim::Acquired);
    assert_eq!(
        claims,
        [Claim::InProgress, Claim::Acquired],
        "exactly one wins the claim"
    );
}

#[tokio::test]
async fn a_stale_owner_cannot_release_or_complete_the_new_claim() {
    let (slow, next) = (store().await, store().await);
    let k = key("d");
    assert_eq!(
        slow.begin(&k, "slow", Duration::from_millis(200))
            .await
            .unwrap(),
        Claim::Acquired
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    let lease = Duration::from_secs(30);
    assert_eq!(
        next.begin(&k, "next", lease).await.unwrap(),
        Claim::Acquired
    );
    // The slow consumer's handler finally returns, long after its lease.
    slow.release(&k, "slow").await.unwrap();
    assert_eq!(
        next.begin(&k, "third", lease).await.unwrap(),
        Claim::InProgress,
        "the stale release left the new claim alone"
    );
    slow.complete(&k, "slow", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(
        next.begin(&k, "third", lease).await.unwrap(),
        Claim::InProgress,
        "the stale complete left the new claim alone"
    );
    next.complete(&k, "next", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(next.begin(&k, "third", lease).await.unwrap(), Claim::Done);
}

#[tokio::test]
async fn completing_an_expired_unclaimed_key_still_records_it() {
    let s = store().await;
    let k = key("e");
    assert_eq!(
        s.begin(&k, "a", Duration::from_millis(200)).await.unwrap(),
        Claim::Acquired
    );
    tokio::time::sleep(Duration::from_millis(400)).await;
    s.complete(&k, "a", Duration::from_secs(60)).await.unwrap();
    assert_eq!(
        s.begin(&k, "b", Duration::from_secs(5)).await.unwrap(),
        Claim::Done
    );
}
