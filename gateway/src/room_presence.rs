//! Presence in a room's task: whether the room is small enough for
//! per-user events (`user_joined`, `user_online`, ...), and the changes
//! batched for the sockets that take them in `presence` events
//! (docs/protocol.md, "Presence").

use std::collections::HashMap;
use std::time::Duration;

use common::domain::RoomId;
use tokio::time::Instant;

/// How often, at most, a socket that takes presence in batches gets the
/// room's changes (docs/protocol.md, "Presence").
pub const PRESENCE_BATCH_INTERVAL: Duration = Duration::from_millis(250);

/// A room's local sockets as last counted. Per-user events go to a room of
/// at most `per_user_max` sockets; a room found larger is not listed again
/// for each of them (a join storm would list it once per join) until the
/// count is [`PRESENCE_BATCH_INTERVAL`] old.
pub(crate) struct Audience {
    per_user_max: usize,
    counted: Option<(Instant, usize)>,
}

impl Audience {
    pub(crate) fn new(per_user_max: usize) -> Self {
        Self {
            per_user_max,
            counted: None,
        }
    }

    /// False while the room is known to be too large for per-user events.
    pub(crate) fn may_take_per_user(&self, now: Instant) -> bool {
        match self.counted {
            Some((at, count)) if now.duration_since(at) < PRESENCE_BATCH_INTERVAL => {
                count <= self.per_user_max
            }
            _ => true,
        }
    }

    /// Records a count; true when a room of that many takes per-user events.
    pub(crate) fn count(&mut self, count: usize, now: Instant) -> bool {
        self.counted = Some((now, count));
        count <= self.per_user_max
    }
}

/// The presence changes of a room since its last `presence` event: each
/// user's newest state, in the order they first changed.
#[derive(Default)]
pub(crate) struct PresenceBatch {
    changes: Vec<(String, bool)>,
    index: HashMap<String, usize>,
    /// When they are to be sent; `None` while there are none.
    pub(crate) due: Option<Instant>,
}

impl PresenceBatch {
    pub(crate) fn record(&mut self, user_name: &str, online: bool, now: Instant) {
        match self.index.get(user_name) {
            Some(&i) => self.changes[i].1 = online,
            None => {
                self.index.insert(user_name.to_owned(), self.changes.len());
                self.changes.push((user_name.to_owned(), online));
            }
        }
        self.due.get_or_insert(now + PRESENCE_BATCH_INTERVAL);
    }

    /// The `presence` payload of the changes recorded, which are forgotten.
    pub(crate) fn take(&mut self, room_id: RoomId) -> PresencePayload {
        self.due = None;
        self.index.clear();
        let (online, offline): (Vec<_>, Vec<_>) =
            self.changes.drain(..).partition(|(_, online)| *online);
        PresencePayload {
            room_id,
            online: online.into_iter().map(|(name, _)| name).collect(),
            offline: offline.into_iter().map(|(name, _)| name).collect(),
        }
    }
}

/// The payload of `presence`: who came online and who went offline in the
/// room since the last one (each user in one list, by their newest state).
#[derive(Debug, serde::Serialize)]
pub(crate) struct PresencePayload {
    room_id: RoomId,
    online: Vec<String>,
    offline: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_presence_batch_keeps_each_users_newest_state_in_first_change_order() {
        let t0 = Instant::now();
        let mut batch = PresenceBatch::default();
        assert_eq!(batch.due, None);
        batch.record("ann", true, t0);
        batch.record("bob", true, t0 + Duration::from_millis(100));
        batch.record("ann", false, t0 + Duration::from_millis(200));
        batch.record("cat", true, t0 + Duration::from_millis(300));
        // Due an interval after its first change, not after its last.
        assert_eq!(batch.due, Some(t0 + PRESENCE_BATCH_INTERVAL));
        let payload = batch.take(7);
        assert_eq!(
            serde_json::to_value(&payload).expect("json"),
            serde_json::json!({ "room_id": 7, "online": ["bob", "cat"], "offline": ["ann"] })
        );
        assert_eq!(batch.due, None, "nothing left to send");
        batch.record("ann", true, t0);
        let payload = batch.take(7);
        assert_eq!(
            (payload.online, payload.offline),
            (vec!["ann".into()], vec![])
        );
    }

    #[test]
    fn a_room_found_too_large_is_counted_again_only_after_an_interval() {
        let t0 = Instant::now();
        let mut audience = Audience::new(2);
        assert!(audience.may_take_per_user(t0), "never counted");
        assert!(audience.count(2, t0), "at the limit");
        assert!(
            audience.may_take_per_user(t0),
            "small rooms are listed each time"
        );
        assert!(!audience.count(3, t0), "over the limit");
        assert!(!audience.may_take_per_user(t0 + Duration::from_millis(249)));
        assert!(audience.may_take_per_user(t0 + PRESENCE_BATCH_INTERVAL));
    }
}
