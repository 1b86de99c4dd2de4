//! `GET /api/rooms`, the hottest read (every client fetches it again on each
//! `room_list_updated`), answered from a serialised copy until a room is
//! created, edited or deleted. This replica drops its copy itself before it
//! answers such a change; the other replicas drop theirs when the change's
//! `room_list_updated` reaches them on the bus, which is before it can reach
//! a client through a gateway. A copy is never used longer than
//! [`MAX_AGE`], so a missed event costs at most that much staleness.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::bus::{Bus, Subjects};
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

/// Longest a copy is served.
pub const MAX_AGE: Duration = Duration::from_secs(1);

#[derive(Debug, Default)]
pub struct RoomList {
    /// Copies are kept only while changes are being watched.
    watching: AtomicBool,
    state: Mutex<Copy>,
}

#[derive(Debug, Default)]
struct Copy {
    /// Bumped by every change, so a list read before a change is not kept after it.
    generation: u64,
    body: Option<(Bytes, Instant)>,
}

impl RoomList {
    /// The current copy, if fresh, else the generation to pass to [`Self::keep`].
    pub fn get(&self) -> Result<Bytes, u64> {
        let state = self.state.lock().map_err(|_| 0u64)?;
        match &state.body {
            Some((body, at)) if at.elapsed() < MAX_AGE => Ok(body.clone()),
            _ => Err(state.generation),
        }
    }

    /// Keeps `body`, read from the store at `generation`, unless a change came since.
    pub fn keep(&self, generation: u64, body: Bytes) {
        if !self.watching.load(Ordering::Acquire) {
            return;
        }
        if let Ok(mut state) = self.state.lock()
            && state.generation == generation
        {
            state.body = Some((body, Instant::now()));
        }
    }

    /// A room was created, edited or deleted.
    pub fn changed(&self) {
        if let Ok(mut state) = self.state.lock() {
            state.generation += 1;
            state.body = None;
        }
    }

    /// Drops the copy whenever any replica announces a change, until
    /// `shutdown`; copies are kept only while this runs.
    pub async fn watch(
        &self,
        bus: &dyn Bus,
        subjects: &Subjects,
        shutdown: CancellationToken,
    ) -> anyhow::Result<()> {
        let mut changes = bus.subscribe(subjects.room_list_updated()).await?;
        self.changed();
        self.watching.store(true, Ordering::Release);
        let ended = loop {
            tokio::select! {
                () = shutdown.cancelled() => break None,
                change = changes.next() => match change {
                    Some(_) => self.changed(),
                    None => break Some(()),
                },
            }
        };
        self.watching.store(false, Ordering::Release);
        self.changed();
        match ended {
            Some(()) => anyhow::bail!("the room list subscription ended"),
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_copy_is_kept_only_while_watching_and_until_a_change() {
        let list = RoomList::default();
        let generation = list.get().expect_err("empty");
        list.keep(generation, Bytes::from_static(b"[]"));
        assert!(list.get().is_err(), "not watching: nothing kept");

        list.watching.store(true, Ordering::Release);
        let generation = list.get().expect_err("empty");
        list.keep(generation, Bytes::from_static(b"[1]"));
        assert_eq!(list.get().ok(), Some(Bytes::from_static(b"[1]")));

        // A list read before a change is not kept after it.
        let generation = {
            list.changed();
            list.get().expect_err("dropped")
        };
        list.changed();
        list.keep(generation, Bytes::from_static(b"[stale]"));
        assert!(list.get().is_err());
    }
}
