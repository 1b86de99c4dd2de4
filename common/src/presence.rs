//! The presence interface: who is online. Redis TTL keys in production, an
//! in-process table in single-node mode. A user is online while their key
//! (refreshed by heartbeats) has not lapsed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("cannot reach Redis: {0}")]
    Redis(String),
    #[error("presence state is unavailable")]
    Poisoned,
}

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// The subset of `users` that is online now, in the given order.
    async fn online_among(&self, users: Vec<String>) -> Result<Vec<String>, PresenceError>;
    /// Fails when the presence store does not answer.
    async fn check_ready(&self) -> Result<(), PresenceError>;
}

/// Presence in Redis: one key `<prefix>:online:<user>` per online user, with
/// a TTL of the presence timeout.
#[derive(Clone)]
pub struct RedisPresence {
    pool: deadpool_redis::Pool,
    prefix: Arc<str>,
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Keys are read in slices of this many, so one call never blocks Redis long.
const MGET_CHUNK: usize = 512;

impl RedisPresence {
    pub fn connect(url: &str, prefix: &str) -> Result<Self, PresenceError> {
        let pool = deadpool_redis::Config::from_url(url)
            .create_pool(Some(deadpool_redis::Runtime::Tokio1))
            .map_err(|e| PresenceError::Redis(e.to_string()))?;
        Ok(Self {
            pool,
            prefix: prefix.into(),
        })
    }

    /// The key that marks `user` online.
    pub fn online_key(&self, user: &str) -> String {
        format!("{}:online:{user}", self.prefix)
    }

    async fn connection(&self) -> Result<deadpool_redis::Connection, PresenceError> {
        self.pool
            .get()
            .await
            .map_err(|e| PresenceError::Redis(e.to_string()))
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn online_among(&self, users: Vec<String>) -> Result<Vec<String>, PresenceError> {
        let mut conn = self.connection().await?;
        let mut online = Vec::new();
        for chunk in users.chunks(MGET_CHUNK) {
            let keys: Vec<String> = chunk.iter().map(|u| self.online_key(u)).collect();
            let values: Vec<Option<String>> = redis::cmd("MGET")
                .arg(&keys)
                .query_async(&mut conn)
                .await
                .map_err(|e| PresenceError::Redis(e.to_string()))?;
            online.extend(
                chunk
                    .iter()
                    .zip(values)
                    .filter(|(_, v)| v.is_some())
                    .map(|(u, _)| u.clone()),
            );
        }
        Ok(online)
    }

    async fn check_ready(&self) -> Result<(), PresenceError> {
        let mut conn = self.connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(drop)
            .map_err(|e| PresenceError::Redis(e.to_string()))
    }
}

/// Presence in process memory, for single-node mode.
#[derive(Debug, Clone)]
pub struct LocalPresence {
    timeout: Duration,
    deadlines: Arc<Mutex<HashMap<String, Instant>>>,
}

impl LocalPresence {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            deadlines: Arc::default(),
        }
    }

    /// Records a heartbeat; true when the user was offline until now.
    pub fn heartbeat(&self, user: &str, now: Instant) -> Result<bool, PresenceError> {
        let mut deadlines = self.deadlines.lock().map_err(|_| PresenceError::Poisoned)?;
        let was_online = deadlines.get(user).is_some_and(|d| *d > now);
        deadlines.insert(user.to_owned(), now + self.timeout);
        Ok(!was_online)
    }

    fn online_at(&self, users: Vec<String>, now: Instant) -> Result<Vec<String>, PresenceError> {
        let deadlines = self.deadlines.lock().map_err(|_| PresenceError::Poisoned)?;
        Ok(users
            .into_iter()
            .filter(|u| deadlines.get(u).is_some_and(|d| *d > now))
            .collect())
    }
}

#[async_trait]
impl Presence for LocalPresence {
    async fn online_among(&self, users: Vec<String>) -> Result<Vec<String>, PresenceError> {
        self.online_at(users, Instant::now())
    }

    async fn check_ready(&self) -> Result<(), PresenceError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn users_are_online_until_their_timeout_lapses() {
        let p = LocalPresence::new(Duration::from_secs(5));
        let t0 = Instant::now();
        assert_eq!(p.heartbeat("ann", t0).ok(), Some(true));
        assert_eq!(
            p.heartbeat("ann", t0 + Duration::from_secs(1)).ok(),
            Some(false)
        );
        let users = || vec!["ann".to_owned(), "bob".to_owned()];
        assert_eq!(
            p.online_at(users(), t0 + Duration::from_secs(5)).ok(),
            Some(vec!["ann".into()])
        );
        assert_eq!(
            p.online_at(users(), t0 + Duration::from_secs(6)).ok(),
            Some(vec![])
        );
        assert_eq!(
            p.heartbeat("ann", t0 + Duration::from_secs(7)).ok(),
            Some(true)
        );
    }
}
