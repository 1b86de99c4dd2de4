//! `GET /api/rooms`, the hottest read (every client fetches it again on each
//! `room_list_updated`), answered from a serialised copy while the room list
//! has not changed. Changes bump a counter shared by every replica (Redis;
//! in the embedded mode, the process's own) *before* `room_list_updated` is
//! published, and a copy is served only while the counter still has the
//! value read before the copy was made: so a client that heard of a change
//! never gets a list from before it, from any replica. Without the counter
//! (Redis down) the list is read from the store every time.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::adapters::counter::SharedCounter;
use common::support::sync::Locked;

/// Longest a copy is served even while the counter stands still: a bound
/// for a change whose bump was lost.
pub const MAX_AGE: Duration = Duration::from_secs(5);

pub struct RoomList {
    version: Arc<dyn SharedCounter>,
    copy: Mutex<Option<Copy>>,
}

struct Copy {
    version: u64,
    body: Bytes,
    made: Instant,
}

impl std::fmt::Debug for RoomList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RoomList").finish_non_exhaustive()
    }
}

impl RoomList {
    pub fn new(version: Arc<dyn SharedCounter>) -> Self {
        Self {
            version,
            copy: Mutex::default(),
        }
    }

    /// The current version of the list; `None` when it cannot be known
    /// (then nothing is served from, or kept in, the copy).
    pub async fn version(&self) -> Option<u64> {
        match self.version.get().await {
            Ok(version) => Some(version),
            Err(e) => {
                tracing::warn!(error = %e, "room list read from the store");
                None
            }
        }
    }

    /// The copy, if it was made at `version` and is not too old.
    pub fn get(&self, version: u64) -> Option<Bytes> {
        self.copy
            .locked()
            .as_ref()
            .filter(|c| c.version == version && c.made.elapsed() < MAX_AGE)
            .map(|c| c.body.clone())
    }

    /// Keeps `body`, read from the store after `version` was read.
    pub fn keep(&self, version: u64, body: Bytes) {
        *self.copy.locked() = Some(Copy {
            version,
            body,
            made: Instant::now(),
        });
    }

    /// A room was created, edited or deleted (and the change is stored):
    /// every replica's copy is out of date from now on.
    pub async fn changed(&self) {
        *self.copy.locked() = None;
        if let Err(e) = self.version.bump().await {
            tracing::error!(error = %e, "room list change not announced to the other replicas");
        }
    }
}

#[cfg(test)]
mod tests {
    use common::adapters::counter::LocalCounter;

    use super::*;

    #[tokio::test]
    async fn a_copy_is_served_only_at_the_version_it_was_made_at() {
        let list = RoomList::new(Arc::new(LocalCounter::default()));
        let before = list.version().await.expect("version");
        assert!(list.get(before).is_none());
        list.keep(before, Bytes::from_static(b"[1]"));
        assert_eq!(list.get(before), Some(Bytes::from_static(b"[1]")));
        // Another replica's change: only the counter moves.
        list.version.bump().await.expect("bump");
        let after = list.version().await.expect("version");
        assert_ne!(before, after);
        assert!(list.get(after).is_none());
        // This replica's change drops the copy at once.
        list.keep(after, Bytes::from_static(b"[2]"));
        list.changed().await;
        assert!(list.get(after).is_none());
    }
}
