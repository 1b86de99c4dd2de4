//! Fan-out: a gateway subscribes to a room's subjects only while it has
//! local sockets in that room; each room's task (`room`) decodes what
//! arrives into a [`common::events::ServerEvent`] and emits it to them.

use std::collections::HashMap;
use std::sync::Arc;

use common::bus::{Bus, BusError, Subjects};
use common::chat_log::ChatLog;
use common::domain::RoomId;
use common::store::Store;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::task::JoinHandle;

use crate::catch_up::Seam;
use crate::metrics::{EventLabels, GatewayMetrics};
use crate::room::{Room, forward};
use crate::room_presence::{Audience, PresenceBatch};

/// Emitted for events that carry no payload: a zero-length tuple, so the
/// client's handler gets no argument at all (`42["user_list_updated"]`).
pub const NO_ARGS: [(); 0] = [];

/// The socketioxide room of a chat room.
pub fn room_key(room_id: RoomId) -> String {
    room_id.to_string()
}

/// The rooms this gateway is subscribed to, each with its forwarding task.
pub struct Fanout {
    io: SocketIo,
    bus: Arc<dyn Bus>,
    /// Who may stay in a room that turned private.
    store: Store,
    /// Where chat messages lost on their way here are read.
    reads: LogReads,
    subjects: Subjects,
    slow_consumers: Counter,
    deliveries: Family<EventLabels, Counter>,
    /// See [`crate::GatewayArgs::per_user_events_max_sockets`].
    per_user_max: usize,
    rooms: Mutex<HashMap<RoomId, Subscribed>>,
    /// Changed when live chat messages may have been lost on their way
    /// here ([`ChatLog::live_gaps`]): every room reads what it missed.
    gaps: watch::Sender<u64>,
}

/// The chat log, as the rooms read from it what they missed live.
#[derive(Clone)]
pub(crate) struct LogReads {
    pub(crate) log: Arc<dyn ChatLog>,
    /// Messages found missing and read.
    pub(crate) recovered: Counter,
    /// Reads at once: after a leader election every room reads, and a
    /// gateway may have thousands.
    pub(crate) permits: Arc<Semaphore>,
}

/// Rooms reading the chat log at once (see [`LogReads`]).
const LOG_READS: usize = 16;

/// A room this gateway receives: the task forwarding its events, and the
/// seam where sockets catching up meet the live messages.
struct Subscribed {
    task: JoinHandle<()>,
    seam: Arc<Seam>,
}

impl Fanout {
    pub fn new(
        io: SocketIo,
        bus: Arc<dyn Bus>,
        store: Store,
        chat_log: Arc<dyn ChatLog>,
        subjects: Subjects,
        metrics: &GatewayMetrics,
        per_user_max: usize,
    ) -> Self {
        Self {
            io,
            bus,
            store,
            reads: LogReads {
                log: chat_log,
                recovered: metrics.recovered.clone(),
                permits: Arc::new(Semaphore::new(LOG_READS)),
            },
            subjects,
            slow_consumers: metrics.slow_consumers.clone(),
            deliveries: metrics.deliveries.clone(),
            per_user_max,
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
        let mut rooms = self.rooms.lock().await;
        self.subscribed(&mut rooms, room_id).await.map(drop)
    }

    /// [`Self::subscribe`], and the room's live chat messages held for
    /// `socket` until it has caught up ([`Seam::finish`]).
    pub async fn subscribe_catching_up(
        &self,
        room_id: RoomId,
        socket: &SocketRef,
    ) -> Result<Arc<Seam>, BusError> {
        let mut rooms = self.rooms.lock().await;
        let seam = self.subscribed(&mut rooms, room_id).await?;
        seam.hold_for(socket);
        Ok(seam)
    }

    async fn subscribed(
        &self,
        rooms: &mut HashMap<RoomId, Subscribed>,
        room_id: RoomId,
    ) -> Result<Arc<Seam>, BusError> {
        if let Some(room) = rooms.get(&room_id)
            && !room.task.is_finished()
        {
            return Ok(room.seam.clone());
        }
        let subscription = self
            .bus
            .subscribe(self.subjects.room_events(room_id))
            .await?;
        let seam = Arc::new(Seam::default());
        let room = Room {
            io: self.io.clone(),
            store: self.store.clone(),
            reads: self.reads.clone(),
            new_message: self.subjects.new_message(room_id),
            key: room_key(room_id),
            room_id,
            slow_consumers: self.slow_consumers.clone(),
            deliveries: self.deliveries.clone(),
            seam: seam.clone(),
            audience: Audience::new(self.per_user_max),
            presence: PresenceBatch::default(),
        };
        let task = tokio::spawn(forward(room, subscription, self.gaps.subscribe()));
        rooms.insert(
            room_id,
            Subscribed {
                task,
                seam: seam.clone(),
            },
        );
        tracing::debug!(room_id, "subscribed to room");
        Ok(seam)
    }

    /// Drops the subscriptions of rooms without local sockets (joined, or
    /// catching up).
    pub async fn sweep(&self) {
        let mut rooms = self.rooms.lock().await;
        rooms.retain(|room_id, room| {
            let keep = (!self.io.within(room_key(*room_id)).sockets().is_empty()
                || room.seam.is_busy())
                && !room.task.is_finished();
            if !keep {
                room.task.abort();
                tracing::debug!(room_id, "unsubscribed from room");
            }
            keep
        });
    }
}
