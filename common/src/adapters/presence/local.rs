//! Presence in process memory: the adapter of single-node mode.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;

use super::{Beat, HEARING_GAP, Presence, PresenceError, millis, unix_ms};
use crate::support::sync::Locked;

/// Presence in process memory, for single-node mode. Deadlines are Unix
/// times in milliseconds, like the heartbeats'.
#[derive(Debug, Clone)]
pub struct LocalPresence {
    timeout_ms: i64,
    /// [`HEARING_GAP`], in ms.
    gap_ms: i64,
    state: Arc<Mutex<LocalState>>,
}

#[derive(Debug, Default)]
struct LocalState {
    deadlines: HashMap<String, i64>,
    /// When presence last recorded or swept (see [`HEARING_GAP`]).
    heard: Option<i64>,
}

impl LocalState {
    /// After a gap in hearing longer than [`HEARING_GAP`], every deadline
    /// moves later by the gap (the Redis adapter's `PRELUDE`).
    fn hear(&mut self, now: i64, gap_ms: i64) -> &mut HashMap<String, i64> {
        let gap = now - self.heard.unwrap_or(now);
        self.heard = Some(now);
        if gap > gap_ms {
            for deadline in self.deadlines.values_mut() {
                *deadline += gap;
            }
        }
        &mut self.deadlines
    }
}

impl LocalPresence {
    pub fn new(timeout: Duration) -> Self {
        let timeout_ms = millis(timeout);
        Self {
            timeout_ms,
            gap_ms: millis(HEARING_GAP),
            state: Arc::default(),
        }
    }

    fn beat_at(&self, user: &str, at_ms: i64, now: i64) -> Result<Beat, PresenceError> {
        let deadline = at_ms.saturating_add(self.timeout_ms);
        if deadline <= now {
            return Ok(Beat::Kept);
        }
        let mut state = self.state.locked();
        let deadlines = state.hear(now, self.gap_ms);
        let beat = match deadlines.get(user).copied() {
            None => Beat::CameOnline,
            Some(previous) if previous <= now => Beat::Returned,
            Some(previous) => {
                deadlines.insert(user.to_owned(), previous.max(deadline));
                return Ok(Beat::Kept);
            }
        };
        deadlines.insert(user.to_owned(), deadline);
        Ok(beat)
    }

    fn expire_at(&self, now: i64) -> Result<Vec<String>, PresenceError> {
        let mut state = self.state.locked();
        let deadlines = state.hear(now, self.gap_ms);
        let lapsed: Vec<String> = deadlines
            .iter()
            .filter(|(_, d)| **d <= now)
            .map(|(u, _)| u.clone())
            .collect();
        for user in &lapsed {
            deadlines.remove(user);
        }
        Ok(lapsed)
    }

    fn online_at(&self, users: Vec<String>, now: i64) -> Result<Vec<String>, PresenceError> {
        let state = self.state.locked();
        Ok(users
            .into_iter()
            .filter(|u| state.deadlines.get(u).is_some_and(|d| *d > now))
            .collect())
    }
}

#[async_trait]
impl Presence for LocalPresence {
    async fn heartbeats(&self, beats: &[(String, i64)]) -> Result<Vec<Beat>, PresenceError> {
        let now = unix_ms();
        beats
            .iter()
            .map(|(user, at_ms)| self.beat_at(user, *at_ms, now))
            .collect()
    }

    async fn expire(&self) -> Result<Vec<String>, PresenceError> {
        self.expire_at(unix_ms())
    }

    async fn online_among(&self, users: Vec<String>) -> Result<Vec<String>, PresenceError> {
        self.online_at(users, unix_ms())
    }

    async fn check_ready(&self) -> Result<(), PresenceError> {
        Ok(())
    }

    /// Process memory is never lost while the process runs.
    async fn restore(&self, _users: &[String]) -> Result<bool, PresenceError> {
        Ok(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1000;

    /// Presence whose calls come seconds apart here: no hearing gaps.
    fn presence() -> LocalPresence {
        LocalPresence {
            gap_ms: i64::MAX,
            ..LocalPresence::new(Duration::from_secs(5))
        }
    }

    #[test]
    fn a_gap_in_hearing_moves_every_deadline_later_by_it() {
        let p = LocalPresence::new(Duration::from_secs(5));
        let t0 = 1_000_000;
        assert_eq!(p.beat_at("ann", t0, t0).ok(), Some(Beat::CameOnline));
        assert_eq!(p.expire_at(t0 + S).ok(), Some(vec![]));
        // Nothing heard for 10 s (the broker was down): ann's deadline,
        // t0 + 5 s, moves to t0 + 15 s.
        assert_eq!(p.expire_at(t0 + 11 * S).ok(), Some(vec![]));
        assert_eq!(
            p.beat_at("ann", t0 + 11 * S, t0 + 11 * S).ok(),
            Some(Beat::Kept)
        );
        // Short gaps move nothing.
        assert_eq!(p.expire_at(t0 + 11 * S + 900).ok(), Some(vec![]));
        for k in 1..=8 {
            let t = t0 + 11 * S + 900 + k * 500;
            assert_eq!(p.expire_at(t).ok(), Some(vec![]), "at {}", t - t0);
        }
        assert_eq!(
            p.expire_at(t0 + 16 * S + 400).ok(),
            Some(vec!["ann".to_owned()])
        );
    }

    #[test]
    fn users_are_online_until_their_timeout_lapses() {
        let p = presence();
        let t0 = 1_000_000;
        assert_eq!(p.beat_at("ann", t0, t0).ok(), Some(Beat::CameOnline));
        assert_eq!(p.beat_at("ann", t0 + S, t0 + S).ok(), Some(Beat::Kept));
        let users = || vec!["ann".to_owned(), "bob".to_owned()];
        assert_eq!(
            p.online_at(users(), t0 + 5 * S).ok(),
            Some(vec!["ann".into()])
        );
        assert_eq!(p.expire_at(t0 + 5 * S).ok(), Some(vec![]));
        assert_eq!(p.online_at(users(), t0 + 6 * S).ok(), Some(vec![]));
        assert_eq!(p.expire_at(t0 + 6 * S).ok(), Some(vec!["ann".to_owned()]));
        assert_eq!(p.expire_at(t0 + 6 * S).ok(), Some(vec![]), "reported once");
        assert_eq!(
            p.beat_at("ann", t0 + 7 * S, t0 + 7 * S).ok(),
            Some(Beat::CameOnline)
        );
    }

    #[test]
    fn a_heartbeat_after_an_unreported_lapse_is_a_return() {
        let p = presence();
        let t0 = 1_000_000;
        p.beat_at("ann", t0, t0).ok();
        assert_eq!(
            p.beat_at("ann", t0 + 9 * S, t0 + 9 * S).ok(),
            Some(Beat::Returned)
        );
        assert_eq!(p.expire_at(t0 + 10 * S).ok(), Some(vec![]));
    }

    #[test]
    fn deadlines_follow_the_latest_heartbeat_sent_not_the_latest_received() {
        let p = presence();
        let t0 = 1_000_000;
        p.beat_at("ann", t0 + 2 * S, t0 + 2 * S).ok();
        // An older heartbeat forwarded late by another gateway changes nothing.
        assert_eq!(p.beat_at("ann", t0, t0 + 2 * S).ok(), Some(Beat::Kept));
        assert_eq!(p.expire_at(t0 + 6 * S).ok(), Some(vec![]));
        assert_eq!(p.expire_at(t0 + 7 * S).ok(), Some(vec!["ann".to_owned()]));
        // A heartbeat whose deadline has passed already changes nothing either.
        assert_eq!(p.beat_at("ann", t0, t0 + 8 * S).ok(), Some(Beat::Kept));
        assert_eq!(
            p.online_at(vec!["ann".into()], t0 + 8 * S).ok(),
            Some(vec![])
        );
    }
}
