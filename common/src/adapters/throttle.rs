//! Throttling of failed attempts (docs/protocol.md, "Accounts and abuse"): a
//! key (a user name, a client address) that failed `max` times within
//! `window` is blocked until that window ends. Shared by the API's
//! replicas through Redis, or kept in process (the embedded default).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::adapters::redis::{RedisConnection, RedisPool};
use crate::support::sync::Locked;

/// How many failures a key may have within a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max: u32,
    pub window: Duration,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("throttle state unavailable: {0}")]
pub struct ThrottleError(#[source] crate::support::cause::Cause);

#[async_trait]
pub trait Throttle: Send + Sync + 'static {
    /// How long until none of `keys` is blocked; `None` when none is.
    async fn blocked(&self, keys: &[String]) -> Result<Option<Duration>, ThrottleError>;
    /// Counts one failure against each of `keys`.
    async fn failed(&self, keys: &[String]) -> Result<(), ThrottleError>;
    /// Forgets the failures of `key` (it succeeded).
    async fn clear(&self, key: &str) -> Result<(), ThrottleError>;
}

/// The failures of one process's keys.
#[derive(Debug)]
pub struct LocalThrottle {
    limit: Limit,
    /// Failures and the end of their window, by key.
    keys: Mutex<HashMap<String, (u32, Instant)>>,
}

/// Past this many keys, expired ones are swept on the next failure.
const LOCAL_SWEEP_AT: usize = 10_000;

impl LocalThrottle {
    pub fn new(limit: Limit) -> Self {
        Self {
            limit,
            keys: Mutex::default(),
        }
    }
}

#[async_trait]
impl Throttle for LocalThrottle {
    async fn blocked(&self, keys: &[String]) -> Result<Option<Duration>, ThrottleError> {
        let now = Instant::now();
        let state = self.keys.locked();
        Ok(keys
            .iter()
            .filter_map(|key| state.get(key))
            .filter(|(failures, until)| *failures >= self.limit.max && *until > now)
            .map(|(_, until)| *until - now)
            .max())
    }

    async fn failed(&self, keys: &[String]) -> Result<(), ThrottleError> {
        let now = Instant::now();
        let mut state = self.keys.locked();
        if state.len() > LOCAL_SWEEP_AT {
            state.retain(|_, (_, until)| *until > now);
        }
        for key in keys {
            let entry = state
                .entry(key.clone())
                .or_insert((0, now + self.limit.window));
            if entry.1 <= now {
                *entry = (0, now + self.limit.window);
            }
            entry.0 = entry.0.saturating_add(1);
        }
        Ok(())
    }

    async fn clear(&self, key: &str) -> Result<(), ThrottleError> {
        self.keys.locked().remove(key);
        Ok(())
    }
}

/// The failures of every replica's keys, in Redis: a counter per key that
/// expires with its window. Each command touches one key, so it works on a
/// Redis Cluster too (a key's counter lives in its own slot).
pub struct RedisThrottle {
    pool: RedisPool,
    prefix: String,
    limit: Limit,
}

impl std::fmt::Debug for RedisThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisThrottle")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Counts one failure: the counter is created with the window's expiry (the
/// window starts with the first failure), and counting keeps it.
static COUNT_FAILURE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"redis.call('SET', KEYS[1], 0, 'PX', ARGV[1], 'NX')
return redis.call('INCR', KEYS[1])",
    )
});

impl RedisThrottle {
    /// The throttle on the process's Redis (`crate::adapters::redis`).
    pub fn new(pool: RedisPool, prefix: &str, limit: Limit) -> Self {
        Self {
            pool,
            prefix: format!("{prefix}:throttle:"),
            limit,
        }
    }

    async fn connection(&self) -> Result<RedisConnection, ThrottleError> {
        self.pool
            .get()
            .await
            .map_err(|e| ThrottleError(crate::support::cause::Cause::text(e)))
    }
}

fn redis_error(e: redis::RedisError) -> ThrottleError {
    ThrottleError(crate::support::cause::Cause::new(e))
}

#[async_trait]
impl Throttle for RedisThrottle {
    async fn blocked(&self, keys: &[String]) -> Result<Option<Duration>, ThrottleError> {
        // Each key's (failures, milliseconds left), read at once.
        let reads = keys.iter().map(|key| async move {
            let key = format!("{}{key}", self.prefix);
            let mut conn = self.connection().await?;
            redis::pipe()
                .get(&key)
                .pttl(&key)
                .query_async::<(Option<u32>, i64)>(&mut conn)
                .await
                .map_err(redis_error)
        });
        let answers = futures_util::future::try_join_all(reads).await?;
        Ok(answers
            .into_iter()
            .filter(|(failures, ttl)| failures.is_some_and(|f| f >= self.limit.max) && *ttl > 0)
            .map(|(_, ttl)| Duration::from_millis(ttl.unsigned_abs()))
            .max())
    }

    async fn failed(&self, keys: &[String]) -> Result<(), ThrottleError> {
        let window = u64::try_from(self.limit.window.as_millis()).unwrap_or(u64::MAX);
        let counts = keys.iter().map(|key| async move {
            let mut conn = self.connection().await?;
            COUNT_FAILURE
                .key(format!("{}{key}", self.prefix))
                .arg(window)
                .invoke_async::<i64>(&mut conn)
                .await
                .map_err(redis_error)
        });
        futures_util::future::try_join_all(counts).await.map(drop)
    }

    async fn clear(&self, key: &str) -> Result<(), ThrottleError> {
        let mut conn = self.connection().await?;
        redis::cmd("DEL")
            .arg(format!("{}{key}", self.prefix))
            .query_async::<()>(&mut conn)
            .await
            .map_err(redis_error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_key_is_blocked_after_max_failures_until_its_window_ends() {
        let throttle = LocalThrottle::new(Limit {
            max: 3,
            window: Duration::from_millis(200),
        });
        let keys = ["user:ann".to_owned(), "addr:1".to_owned()];
        for _ in 0..2 {
            throttle.failed(&keys).await.expect("counted");
        }
        assert_eq!(throttle.blocked(&keys).await.expect("read"), None);
        throttle.failed(&keys[..1]).await.expect("counted");
        let wait = throttle
            .blocked(&keys)
            .await
            .expect("read")
            .expect("blocked");
        assert!(wait <= Duration::from_millis(200));
        assert_eq!(throttle.blocked(&keys[1..]).await.expect("read"), None);
        throttle.clear("user:ann").await.expect("cleared");
        assert_eq!(throttle.blocked(&keys).await.expect("read"), None);
    }
}
