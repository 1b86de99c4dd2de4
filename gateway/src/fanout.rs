//! Fan-out: a gateway subscribes to a room's subjects only while it has
//! local sockets in that room; each room's task (`room`) decodes what
//! arrives into a [`common::domain::events::ServerEvent`] and emits it to them.

use std::collections::HashMap;
use std::sync::Arc;

use common::adapters::bus::{Bus, BusError, Subjects};
use common::domain::RoomId;
use socketioxide::extract::SocketRef;
use tokio::sync::{Mutex, MutexGuard, watch};
use tokio::task::JoinHandle;

use crate::catch_up::Seam;
use crate::room::{Room, RoomsShared, forward};

/// The rooms this gateway is subscribed to, each with its forwarding task.
pub struct Fanout {
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    /// What every room's task shares.
    shared: RoomsShared,
    rooms: Mutex<HashMap<RoomId, Subscribed>>,
    /// Changed when live chat messages may have been lost on their way
    /// here ([`common::adapters::chat_log::ChatLog::live_gaps`]): every room reads
    /// what it missed.
    gaps: watch::Sender<u64>,
}

/// A room this gateway receives: the task forwarding its events, and the
/// seam where sockets catching up meet the live messages.
struct Subscribed {
    task: JoinHandle<()>,
    seam: Arc<Seam>,
}

impl Fanout {
    pub fn new(bus: Arc<dyn Bus>, subjects: Subjects, shared: RoomsShared) -> Self {
        Self {
            bus,
            subjects,
            shared,
            rooms: Mutex::default(),
            gaps: watch::Sender::new(0),
        }
    }

    /// Live chat messages may have been lost on their way here: every
    /// subscribed room reads from the chat log what came after the last
    /// one it delivered.
    pub fn read_gaps(&self) {
        self.gaps.send_modify(|n| *n += 1);
    }

    /// Makes sure this gateway receives the room's events; returns once the
    /// subscription is active, so nothing published afterwards is missed.
    pub async fn subscribe(&self, room_id: RoomId) -> Result<(), BusError> {
        self.subscribed(room_id).await.map(drop)
    }

    /// [`Self::subscribe`], and the room's live chat messages held for
    /// `socket` until it has caught up ([`Seam::finish`]).
    pub async fn subscribe_catching_up(
        &self,
        room_id: RoomId,
        socket: &SocketRef,
    ) -> Result<Arc<Seam>, BusError> {
        // Held under the lock, so that a sweep cannot drop the room first.
        let (_rooms, seam) = self.subscribed(room_id).await?;
        seam.hold_for(socket);
        Ok(seam)
    }

    /// The room's subscription, made if it has none; with the lock on the
    /// rooms still held.
    async fn subscribed(
        &self,
        room_id: RoomId,
    ) -> Result<(MutexGuard<'_, HashMap<RoomId, Subscribed>>, Arc<Seam>), BusError> {
        let rooms = self.rooms.lock().await;
        if let Some(seam) = live_seam(&rooms, room_id) {
            return Ok((rooms, seam));
        }
        drop(rooms);
        // Read before subscribing: whatever comes after it arrives live or
        // is found missing. Outside the lock: the gateway's other joins do
        // not wait for the chat log.
        let floor = self.shared.live_floor(room_id).await;
        let mut rooms = self.rooms.lock().await;
        if let Some(seam) = live_seam(&rooms, room_id) {
            return Ok((rooms, seam));
        }
        let subscription = self
            .bus
            .subscribe(self.subjects.room_events(room_id))
            .await?;
        let seam = Arc::new(Seam::default());
        let new_message = self.subjects.new_message(room_id);
        let room = Room::new(&self.shared, room_id, new_message, seam.clone());
        let gaps = self.gaps.subscribe();
        let task = tokio::spawn(forward(room, subscription, gaps, floor));
        rooms.insert(
            room_id,
            Subscribed {
                task,
                seam: seam.clone(),
            },
        );
        tracing::debug!(room_id, "subscribed to room");
        Ok((rooms, seam))
    }

    /// Drops the subscriptions of rooms without local sockets (joined, or
    /// catching up).
    pub async fn sweep(&self) {
        let mut rooms = self.rooms.lock().await;
        rooms.retain(|room_id, room| {
            let keep = (!self.shared.sockets(*room_id).is_empty() || room.seam.is_busy())
                && !room.task.is_finished();
            if !keep {
                room.task.abort();
                tracing::debug!(room_id, "unsubscribed from room");
            }
            keep
        });
    }
}

/// The seam of the room's subscription, if it has one that still runs.
fn live_seam(rooms: &HashMap<RoomId, Subscribed>, room_id: RoomId) -> Option<Arc<Seam>> {
    rooms
        .get(&room_id)
        .filter(|room| !room.task.is_finished())
        .map(|room| room.seam.clone())
}
