//! The presence interface: who is online. A heartbeat keeps a user online
//! for the presence timeout; each transition (online, offline) is reported
//! to exactly one caller, however many presence replicas share the state.
//! Redis in production, an in-process table in single-node mode.

use std::time::Duration;

use async_trait::async_trait;

#[derive(Debug, thiserror::Error)]
pub enum PresenceError {
    #[error("cannot reach Redis: {0}")]
    Redis(#[source] crate::support::cause::Cause),
    /// The presence store lost its state (Redis restarted empty): restore
    /// who was online with [`Presence::restore`], then retry.
    #[error("the presence state was lost")]
    Lost,
}

/// What a heartbeat changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Beat {
    /// The user was online already.
    Kept,
    /// The user was offline: now online.
    CameOnline,
    /// The user's timeout had passed without anyone reporting it yet: the
    /// user went offline, and is online again.
    Returned,
}

#[async_trait]
pub trait Presence: Send + Sync + 'static {
    /// Records heartbeats: `(user, at_ms)`, sent by the user's client at
    /// `at_ms` (Unix time, ms); the user stays online until `at_ms` + the
    /// presence timeout. Returns what each changed, in order.
    async fn heartbeats(&self, beats: &[(String, i64)]) -> Result<Vec<Beat>, PresenceError>;
    /// Users whose timeout has passed, each reported to one caller only.
    async fn expire(&self) -> Result<Vec<String>, PresenceError>;
    /// The subset of `users` that is online now, in the given order.
    async fn online_among(&self, users: Vec<String>) -> Result<Vec<String>, PresenceError>;
    /// Fails when the presence store does not answer.
    async fn check_ready(&self) -> Result<(), PresenceError>;
    /// After [`PresenceError::Lost`]: marks `users` (who were online before
    /// the loss) online with a fresh timeout, and the state as whole again,
    /// unless another caller did it first. True when this call restored it.
    async fn restore(&self, users: &[String]) -> Result<bool, PresenceError>;
}

mod local;
mod redis;

pub use self::redis::{RedisPresence, online_key as redis_online_key};
pub use local::LocalPresence;

/// A heartbeat as gateways forward it to presence, on
/// [`crate::domain::subjects::Subjects::heartbeats`].
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Heartbeat {
    pub user_name: String,
    /// When the client sent it (Unix ms); absent: now.
    pub at: Option<i64>,
}

/// Users expired per script call.
/// Most lapsed users one `expire` returns.
pub const EXPIRE_BATCH: usize = 1000;

/// Gaps in presence's hearing longer than this (no replica ran a script: all
/// were down, or none could receive heartbeats because the broker was) move
/// every deadline later by the gap, so that nobody lapses for heartbeats
/// nobody could hear, and nobody is announced online again for it.
pub const HEARING_GAP: Duration = Duration::from_millis(1000);

/// A duration in whole milliseconds, as the deadlines count them (capped so
/// that adding it to a time cannot overflow).
pub(crate) fn millis(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX / 2)
}

/// The current Unix time in milliseconds.
pub fn unix_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
