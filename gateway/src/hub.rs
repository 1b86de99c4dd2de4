//! Fan-out: a gateway subscribes to a room's subjects only while it has
//! local sockets in that room, and emits what arrives to those sockets.

use std::collections::HashMap;
use std::sync::Arc;

use common::bus::{Bus, BusError, BusMessage, Subjects, Subscription};
use common::domain::{ChatDraft, RoomId};
use futures_util::StreamExt;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use tokio::sync::Mutex;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::sequencer::Sequencer;
use crate::session::Session;

/// Emitted for events that carry no payload: a zero-length tuple, so the
/// client's handler gets no argument at all (`42["user_list_updated"]`).
pub const NO_ARGS: [(); 0] = [];

/// The socketioxide room of a chat room.
pub fn room_key(room_id: RoomId) -> String {
    room_id.to_string()
}

pub struct Hub {
    io: SocketIo,
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    rooms: Mutex<HashMap<RoomId, JoinHandle<()>>>,
}

impl Hub {
    pub fn new(io: SocketIo, bus: Arc<dyn Bus>, subjects: Subjects) -> Self {
        Self {
            io,
            bus,
            subjects,
            rooms: Mutex::default(),
        }
    }

    /// Makes sure this gateway receives the room's events; returns once the
    /// subscription is active, so nothing published afterwards is missed.
    pub async fn subscribe(&self, room_id: RoomId) -> Result<(), BusError> {
        let mut rooms = self.rooms.lock().await;
        if rooms.get(&room_id).is_some_and(|task| !task.is_finished()) {
            return Ok(());
        }
        let subscription = self
            .bus
            .subscribe(self.subjects.room_events(room_id))
            .await?;
        let io = self.io.clone();
        let task = tokio::spawn(forward(io, room_id, subscription));
        rooms.insert(room_id, task);
        tracing::debug!(room_id, "subscribed to room");
        Ok(())
    }

    /// Drops the subscriptions of rooms without local sockets.
    pub async fn sweep(&self) {
        let mut rooms = self.rooms.lock().await;
        rooms.retain(|room_id, task| {
            let keep =
                !self.io.within(room_key(*room_id)).sockets().is_empty() && !task.is_finished();
            if !keep {
                task.abort();
                tracing::debug!(room_id, "unsubscribed from room");
            }
            keep
        });
    }
}

/// Emits a room's bus messages to its local sockets, chat messages in
/// `chat_id` order.
async fn forward(io: SocketIo, room_id: RoomId, mut subscription: Subscription) {
    let mut sequencer = Sequencer::default();
    loop {
        let ready = tokio::select! {
            message = subscription.next() => match message {
                Some(message) => sequencer.push(message, Instant::now()),
                None => break,
            },
            () = sleep_until(sequencer.deadline()) => sequencer.flush(),
        };
        for message in ready {
            deliver(&io, room_id, message).await;
        }
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

/// Emits one bus message to the room's local sockets.
async fn deliver(io: &SocketIo, room_id: RoomId, message: BusMessage) {
    let key = room_key(room_id);
    let event = message.subject.rsplit('.').next().unwrap_or_default();
    // Parsed only by the events that forward it: chat messages, the hot
    // path, are parsed once, into their own type.
    let payload = || serde_json::from_slice::<Value>(&message.payload).unwrap_or(Value::Null);
    let sent = match event {
        "new_message" => {
            let draft = serde_json::from_slice::<ChatDraft>(&message.payload);
            match (draft, message.sequence) {
                (Ok(draft), Some(chat_id)) => {
                    io.to(key)
                        .emit("new_message", &draft.with_id(chat_id))
                        .await
                }
                _ => {
                    tracing::warn!(room_id, "chat message without id or body dropped");
                    return;
                }
            }
        }
        "user_joined" | "user_left" | "user_online" | "user_offline" => {
            io.to(key).emit(event, &payload()).await
        }
        "user_list_updated" => io.to(key).emit(event, &NO_ARGS).await,
        "user_kicked" => {
            let payload = payload();
            let sent = io.to(key.clone()).emit(event, &payload).await;
            let kicked = payload["user_name"].as_str().unwrap_or_default();
            remove_sockets(io, &key, |s| s.is(kicked));
            sent
        }
        "room_deleted" => {
            remove_sockets(io, &key, |_| true);
            Ok(())
        }
        _ => Ok(()),
    };
    if let Err(e) = sent {
        tracing::warn!(room_id, event, error = %e, "event not delivered to every socket");
    }
}

/// Takes the matching local sockets out of a room: they stop receiving it at once.
fn remove_sockets(io: &SocketIo, key: &str, matches: impl Fn(&Session) -> bool) {
    for socket in io.within(key.to_owned()).sockets() {
        if session(&socket).is_some_and(|s| matches(&s)) {
            socket.leave(key.to_owned());
        }
    }
}

pub fn session(socket: &SocketRef) -> Option<Arc<Session>> {
    socket.extensions.get::<Arc<Session>>()
}
