//! Heartbeat coalescing: clients send `watchdog` every second on every
//! socket; a gateway forwards at most one heartbeat per user per
//! [`HEARTBEAT_INTERVAL`] to presence, and never drops the newest.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::adapters::presence::Heartbeat;
use common::domain::events::Events;
use common::support::sync::Locked;

/// Heartbeats forwarded per user at most once per this interval per gateway.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

/// How often held-back heartbeats are checked for forwarding.
pub const FLUSH_INTERVAL: Duration = Duration::from_millis(100);

/// Forwards the users' heartbeats to presence, coalesced.
pub struct Heartbeats {
    windows: Windows,
    events: Events,
    /// Where presence takes heartbeats.
    subject: String,
}

impl Heartbeats {
    pub fn new(events: Events, subject: String) -> Self {
        Self {
            windows: Windows::default(),
            events,
            subject,
        }
    }

    /// A `watchdog` of `user`'s: forwarded now, or held back for
    /// [`Self::flush`].
    pub async fn beat(&self, user: &str) {
        if let Some(at) = self
            .windows
            .coalesce(user, common::adapters::presence::unix_ms())
        {
            self.forward(user, at).await;
        }
    }

    /// Forwards the held-back heartbeats whose interval has passed.
    pub async fn flush(&self) {
        for (user, at) in self.windows.due() {
            self.forward(&user, at).await;
        }
    }

    /// Sends one heartbeat to presence.
    async fn forward(&self, user: &str, at: i64) {
        let heartbeat = Heartbeat {
            user_name: user.to_owned(),
            at: Some(at),
        };
        // Traced as part of the watchdog event that forwards it at once;
        // one held back and forwarded later is not.
        if let Err(e) = self
            .events
            .publish_json(self.subject.clone(), "heartbeat", &heartbeat)
            .await
        {
            tracing::error!(user, error = %e, "heartbeat not forwarded");
        }
    }
}

/// The heartbeat intervals of every user with a socket on this gateway.
#[derive(Debug, Default)]
struct Windows {
    users: Mutex<HashMap<String, UserWindow>>,
}

/// One user's current interval: when a heartbeat was last forwarded, and
/// the newest one held back since (its client time, Unix ms).
#[derive(Debug)]
struct UserWindow {
    forwarded: Instant,
    held: Option<i64>,
}

impl Windows {
    /// Coalesces a heartbeat: `Some(at)` to forward now (the first in an
    /// interval), `None` when it is held back. The newest held-back one is
    /// forwarded by [`Self::due`] once the interval has passed, so presence
    /// always learns of a client's latest heartbeat, at most one interval
    /// late, and with the time the client sent it.
    fn coalesce(&self, user: &str, at: i64) -> Option<i64> {
        let mut users = self.users.locked();
        let now = Instant::now();
        match users.get_mut(user) {
            Some(w) if now.duration_since(w.forwarded) < HEARTBEAT_INTERVAL => {
                w.held = Some(at);
                None
            }
            _ => {
                let window = UserWindow {
                    forwarded: now,
                    held: None,
                };
                users.insert(user.to_owned(), window);
                Some(at)
            }
        }
    }

    /// Held-back heartbeats whose interval has passed; forgets idle users.
    fn due(&self) -> Vec<(String, i64)> {
        let mut users = self.users.locked();
        let now = Instant::now();
        let mut due = Vec::new();
        users.retain(|user, w| {
            let elapsed = now.duration_since(w.forwarded);
            if elapsed >= HEARTBEAT_INTERVAL
                && let Some(at) = w.held.take()
            {
                w.forwarded = now;
                due.push((user.clone(), at));
                return true;
            }
            elapsed < HEARTBEAT_INTERVAL * 2
        });
        due
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_heartbeat_of_an_interval_goes_at_once_and_the_newest_later() {
        let beats = Windows::default();
        assert_eq!(beats.coalesce("ann", 1), Some(1));
        assert_eq!(beats.coalesce("ann", 2), None);
        assert_eq!(beats.coalesce("ann", 3), None);
        assert_eq!(beats.coalesce("bob", 4), Some(4));
        // Not due before the interval has passed.
        assert!(beats.due().is_empty());
    }
}
