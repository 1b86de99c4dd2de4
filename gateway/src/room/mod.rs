//! A room's task on a gateway: emits what the bus delivers for the room to
//! its local sockets, in the order it comes; chat messages in `chat_id`
//! order, those lost on their way here read from the chat log; presence per
//! user or in batches (`room_presence`).

use std::collections::HashSet;

use common::adapters::bus::BusMessage;
use common::adapters::chat_log::{ChatLog, ChatLogError};
use common::adapters::store::{Store, StoreError};
use common::domain::events::{ServerEvent, UserName};
use common::domain::{ChatId, RoomId};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError};
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use crate::catch_up::{REPLAY_MAX, Seam};
use crate::metrics::{EventLabels, GatewayMetrics};
use crate::room_presence::{Audience, PresenceBatch};
use crate::sequencer::Sequencer;
use crate::session::{Session, session};

mod task;

pub use task::forward;

/// Emitted for events that carry no payload: a zero-length tuple, so the
/// client's handler gets no argument at all (`42["user_list_updated"]`).
pub const NO_ARGS: [(); 0] = [];

/// The socketioxide room of a chat room.
pub fn room_key(room_id: RoomId) -> String {
    room_id.to_string()
}

/// Rooms reading the chat log at once (see [`RoomsShared`]).
const LOG_READS: usize = 16;

/// What every room's task of a gateway shares.
#[derive(Clone)]
pub struct RoomsShared {
    io: SocketIo,
    /// Who may stay in a room that turned private.
    store: Store,
    /// Where chat messages lost on their way here are read.
    log: Arc<dyn ChatLog>,
    /// Reads at once: after a leader election every room reads, and a
    /// gateway may have thousands.
    log_reads: Arc<Semaphore>,
    /// Messages found missing and read.
    recovered: Counter,
    slow_consumers: Counter,
    deliveries: Family<EventLabels, Counter>,
    /// See [`crate::GatewayArgs::per_user_events_max_sockets`].
    per_user_max: usize,
}

impl RoomsShared {
    pub fn new(
        io: SocketIo,
        store: Store,
        log: Arc<dyn ChatLog>,
        metrics: &GatewayMetrics,
        per_user_max: usize,
    ) -> Self {
        Self {
            io,
            store,
            log,
            log_reads: Arc::new(Semaphore::new(LOG_READS)),
            recovered: metrics.recovered.clone(),
            slow_consumers: metrics.slow_consumers.clone(),
            deliveries: metrics.deliveries.clone(),
            per_user_max,
        }
    }

    /// Where the room's task starts checking live messages for gaps (see
    /// [`ChatLog::live_floor`]); `None`, as if the log lost nothing live,
    /// when it cannot be read.
    pub async fn live_floor(&self, room_id: RoomId) -> Option<ChatId> {
        self.log
            .live_floor(room_id)
            .await
            .map_err(|e| tracing::warn!(room_id, error = %e, "live floor not read: the room's first gap goes unseen"))
            .ok()
            .flatten()
    }

    /// The room's local sockets now.
    pub fn sockets(&self, room_id: RoomId) -> Vec<SocketRef> {
        self.io.within(room_key(room_id)).sockets()
    }
}

/// A room's local sockets, as the forwarding task sees them.
pub struct Room {
    shared: RoomsShared,
    /// The subject of the room's chat messages.
    new_message: String,
    key: String,
    room_id: RoomId,
    seam: Arc<Seam>,
    /// How many sockets the room has here, as last counted.
    audience: Audience,
    /// Presence changes not yet sent to the sockets that take them in
    /// batches.
    presence: PresenceBatch,
}

impl Room {
    /// The room `room_id`, whose chat messages come on `new_message` and
    /// meet the sockets catching up at `seam`.
    pub fn new(
        shared: &RoomsShared,
        room_id: RoomId,
        new_message: String,
        seam: Arc<Seam>,
    ) -> Self {
        Self {
            audience: Audience::new(shared.per_user_max),
            shared: shared.clone(),
            new_message,
            key: room_key(room_id),
            room_id,
            seam,
            presence: PresenceBatch::default(),
        }
    }
}

impl Room {
    /// The room's acknowledged chat messages after `after`, from the chat
    /// log, as the bus would have delivered them.
    async fn read_after(&self, after: ChatId) -> Result<Vec<BusMessage>, ChatLogError> {
        let _permit = self.shared.log_reads.acquire().await;
        let page = self
            .shared
            .log
            .read_after(self.room_id, after, REPLAY_MAX)
            .await?;
        if !page.complete {
            tracing::warn!(
                room_id = self.room_id,
                after,
                "more chat messages missing than one read takes: the oldest skipped"
            );
        }
        Ok(page
            .messages
            .into_iter()
            .map(|message| BusMessage {
                subject: self.new_message.clone(),
                sequence: Some(message.chat_id),
                previous: None,
                trace: None,
                payload: ServerEvent::NewMessage(message).encode(),
            })
            .collect())
    }

    /// [`Sequencer::fill`], counting the messages that had not come live.
    fn fill(&self, sequencer: &mut Sequencer, found: Vec<BusMessage>) -> Vec<BusMessage> {
        let (ready, missed) = sequencer.fill(found);
        if missed > 0 {
            self.shared.recovered.inc_by(missed as u64);
            tracing::warn!(
                room_id = self.room_id,
                missed,
                "chat messages lost live, read from the chat log"
            );
        }
        ready
    }

    /// Emits one bus message to the room's local sockets, in the order the
    /// room's messages come: a change of access takes effect before what
    /// follows it.
    async fn deliver(&mut self, message: BusMessage) {
        let event = match ServerEvent::decode(&message) {
            Ok(event) => event,
            Err(e) => {
                tracing::warn!(room_id = self.room_id, error = %e, "bus message dropped");
                return;
            }
        };
        if let ServerEvent::RoomMadePrivate { .. } = event {
            self.remove_non_members().await;
            return;
        }
        self.emit_event(event, &message);
    }

    /// The room turned private: the sockets of users who are not its
    /// members (nor its owner) leave it. Should the store not say who the
    /// members are, every socket of the room is disconnected: their
    /// clients reconnect and join again, and only members are let in.
    async fn remove_non_members(&self) {
        let sockets = self.sockets();
        let catching_up = self.seam.catching_up();
        if sockets.is_empty() && catching_up.is_empty() {
            return;
        }
        let allowed = match self.allowed_users().await {
            Ok(allowed) => allowed,
            Err(e) => {
                tracing::error!(room_id = self.room_id, error = %e,
                    "members of a room turned private unknown: its sockets are disconnected");
                for socket in sockets.iter().chain(&catching_up) {
                    socket.leave_all();
                    tokio::spawn(disconnect_when_possible(socket.clone()));
                }
                return;
            }
        };
        let outsider = |s: &Session| !allowed.contains(&common::domain::user_name_key(&s.user));
        self.seam.refuse(outsider);
        let removed = remove_sockets(&sockets, &self.key, outsider);
        tracing::info!(
            room_id = self.room_id,
            removed,
            "room turned private: sockets of non-members removed"
        );
    }

    /// The keys ([`common::domain::user_name_key`]) of who may be in the
    /// room: its members and its owner (none when it is gone).
    async fn allowed_users(&self) -> Result<HashSet<String>, StoreError> {
        let Some(room) = self.shared.store.room(self.room_id).await? else {
            return Ok(HashSet::new());
        };
        let members = self.shared.store.members(self.room_id).await?;
        Ok(members
            .iter()
            .map(|m| m.user_name.as_str())
            .chain([room.room_owner.as_str()])
            .map(common::domain::user_name_key)
            .collect())
    }

    /// Emits a decoded event to the room's local sockets.
    fn emit_event(&mut self, event: ServerEvent, message: &BusMessage) {
        let name = event.name();
        self.shared
            .deliveries
            .get_or_create(&EventLabels { event: name })
            .inc();
        // Only an event of a sampled trace gets a span: it would not be
        // recorded otherwise.
        let span = match &message.trace {
            Some(trace) if trace.sampled() => {
                let span = common::nats_process_span!(
                    "deliver",
                    name,
                    message.subject,
                    socket.io.event = name,
                    chat.room_id = self.room_id,
                );
                trace.adopt(&span);
                span
            }
            _ => tracing::Span::none(),
        };
        let _in_span = span.enter();
        match event {
            ServerEvent::NewMessage(message) => {
                self.seam.deliver(&message, |replayed| {
                    let mut sockets = self.sockets();
                    if !replayed.is_empty() {
                        sockets.retain(|s| !replayed.contains(&s.id));
                    }
                    self.emit_to(&sockets, name, &message);
                });
            }
            ServerEvent::UserJoined(member) | ServerEvent::UserLeft(member) => {
                self.emit_per_user(name, &member, false);
            }
            ServerEvent::UserOnline { user, .. } => self.presence_changed(name, &user, true),
            ServerEvent::UserOffline { user, .. } => self.presence_changed(name, &user, false),
            // No arguments: the client's handler gets none.
            ServerEvent::UserListUpdated { .. } => self.emit_to(&self.sockets(), name, &NO_ARGS),
            ServerEvent::UserKicked { user, .. } => {
                // The kicked sockets leave before anyone is told: a client
                // that reacts to `user_kicked` at once must already be out.
                self.seam.refuse(|s| s.is(&user.user_name));
                let sockets = self.sockets();
                remove_sockets(&sockets, &self.key, |s| s.is(&user.user_name));
                self.emit_to(&sockets, name, &user);
            }
            ServerEvent::MemberRemoved { user, .. } => {
                // Left over REST: their sockets stop receiving the room,
                // and their messages to it are refused (code 4).
                self.seam.refuse(|s| s.is(&user.user_name));
                remove_sockets(&self.sockets(), &self.key, |s| s.is(&user.user_name));
            }
            ServerEvent::RoomDeleted { .. } => {
                self.seam.refuse(|_| true);
                remove_sockets(&self.sockets(), &self.key, |_| true);
            }
            // Handled in `deliver` (it needs the store).
            ServerEvent::RoomMadePrivate { .. } => {}
            // Goes to every socket, on its own subject (`Gateway::run`).
            ServerEvent::RoomListUpdated => {}
        }
    }

    /// A per-user event, to the room's sockets (but those that take
    /// presence in batches, for `user_online`/`user_offline`), while the
    /// room is small enough for per-user events.
    fn emit_per_user<T: serde::Serialize + ?Sized>(
        &mut self,
        event: &str,
        data: &T,
        presence: bool,
    ) {
        let now = Instant::now();
        if !self.audience.may_take_per_user(now) {
            return;
        }
        let mut sockets = self.sockets();
        if !self.audience.count(sockets.len(), now) {
            return;
        }
        if presence {
            sockets.retain(|s| session(s).is_some_and(|s| !s.batched_presence));
        }
        self.emit_to(&sockets, event, data);
    }

    /// `user_online` or `user_offline`: per user to the sockets that take
    /// them so, and recorded for the next batch of the others.
    fn presence_changed(&mut self, event: &str, user: &UserName, online: bool) {
        self.presence
            .record(&user.user_name, online, Instant::now());
        self.emit_per_user(event, user, true);
    }

    /// Sends the presence changes recorded to the sockets that take them in
    /// batches, in one `presence` event each.
    fn send_presence(&mut self) {
        let payload = self.presence.take(self.room_id);
        let mut sockets = self.sockets();
        sockets.retain(|s| session(s).is_some_and(|s| s.batched_presence));
        if sockets.is_empty() {
            return;
        }
        self.shared
            .deliveries
            .get_or_create(&EventLabels { event: "presence" })
            .inc();
        self.emit_to(&sockets, "presence", &payload);
    }

    /// The room's local sockets now.
    fn sockets(&self) -> Vec<SocketRef> {
        self.shared.io.within(self.key.clone()).sockets()
    }

    /// Sends to `sockets`, local sockets of the room, encoding the event
    /// once: each socket's queue gets a shared copy of the same packet. A
    /// socket whose send buffer is full (its client stopped reading) would
    /// silently miss this event and keep a gap; it is disconnected instead,
    /// so its client reconnects and reloads what it missed.
    fn emit_to<T: serde::Serialize + ?Sized>(&self, sockets: &[SocketRef], event: &str, data: &T) {
        let Some(first) = sockets.first() else {
            return;
        };
        // Every socket of the room is in the one namespace, with one parser.
        let packet = match first.encode_event(event, data) {
            Ok(packet) => packet,
            Err(e) => {
                tracing::error!(room_id = self.room_id, event, error = %e, "event not serialisable");
                return;
            }
        };
        for socket in sockets {
            match socket.emit_encoded(&packet) {
                Ok(()) | Err(SendError::Socket(SocketError::Closed)) => {}
                Err(SendError::Socket(SocketError::InternalChannelFull)) => {
                    self.shared.slow_consumers.inc();
                    tracing::warn!(sid = %socket.id, room_id = self.room_id, event,
                        "socket not reading what is sent to it: disconnected");
                    // Nothing more is queued behind the gap...
                    socket.leave_all();
                    tokio::spawn(disconnect_when_possible(socket.clone()));
                }
                Err(e) => {
                    tracing::warn!(room_id = self.room_id, event, error = %e, "event not delivered")
                }
            }
        }
    }
}

/// Disconnects a socket whose send buffer is full. socketioxide refuses to
/// while the buffer has no room for the disconnect packet, so this retries:
/// as soon as the client reads again it gets what was queued, then the
/// disconnect (and reconnects and reloads). A client that never reads again
/// is closed by the Engine.IO ping timeout.
pub async fn disconnect_when_possible(socket: SocketRef) {
    for _ in 0..600 {
        match socket.clone().disconnect() {
            Err(SocketError::InternalChannelFull) => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            Ok(()) | Err(SocketError::Closed) => return,
        }
    }
}

/// Takes the matching sockets out of a room: they stop receiving it at
/// once. Returns how many.
fn remove_sockets(sockets: &[SocketRef], key: &str, matches: impl Fn(&Session) -> bool) -> usize {
    let mut removed = 0;
    for socket in sockets {
        if session(socket).is_some_and(|s| matches(&s)) {
            socket.leave(key.to_owned());
            removed += 1;
        }
    }
    removed
}
