//! Fan-out: a gateway subscribes to a room's subjects only while it has
//! local sockets in that room, decodes what arrives into a [`ServerEvent`]
//! and emits it to those sockets.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use common::bus::{Bus, BusError, BusMessage, Subjects, Subscription};
use common::chat_log::{ChatLog, ChatLogError};
use common::domain::{ChatId, RoomId};
use common::events::{ServerEvent, UserName};
use common::store::{Store, StoreError};
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;
use socketioxide::{SendError, SocketError};
use tokio::sync::{Mutex, Semaphore, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::catch_up::{REPLAY_MAX, Seam};
use crate::metrics::{EventLabels, GatewayMetrics};
use crate::sequencer::Sequencer;
use crate::session::Session;

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
struct LogReads {
    log: Arc<dyn ChatLog>,
    /// Messages found missing and read.
    recovered: Counter,
    /// Reads at once: after a leader election every room reads, and a
    /// gateway may have thousands.
    permits: Arc<Semaphore>,
}

/// Rooms reading the chat log at once (see [`LogReads`]).
const LOG_READS: usize = 16;

/// How long after a sign of lost messages the rooms read the log: the
/// live copies still on their way arrive first.
const GAP_READ_DELAY: Duration = Duration::from_millis(250);

/// Pause between two reads of a log that could not be read (a stream
/// still electing its leader), and how many are tried: a election takes
/// up to ten seconds.
const GAP_READ_RETRY: Duration = Duration::from_secs(1);
const GAP_READ_TRIES: u32 = 30;

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

/// A room's local sockets, as the forwarding task sees them.
struct Room {
    io: SocketIo,
    store: Store,
    reads: LogReads,
    /// The subject of the room's chat messages.
    new_message: String,
    key: String,
    room_id: RoomId,
    slow_consumers: Counter,
    deliveries: Family<EventLabels, Counter>,
    seam: Arc<Seam>,
    /// How many sockets the room has here, as last counted.
    audience: Audience,
    /// Presence changes not yet sent to the sockets that take them in
    /// batches.
    presence: PresenceBatch,
}

/// How often, at most, a socket that takes presence in batches gets the
/// room's changes (docs/protocol.md, "Presence").
pub const PRESENCE_BATCH_INTERVAL: Duration = Duration::from_millis(250);

/// Emits a room's bus messages to its local sockets, chat messages in
/// `chat_id` order, presence in batches to the sockets that asked for it.
/// Chat messages lost on their way here (live delivery is at most once) are
/// read from the chat log: those a later message shows missing, and those
/// after the last delivered when `gaps` says some may be.
async fn forward(mut room: Room, mut subscription: Subscription, mut gaps: watch::Receiver<u64>) {
    let mut sequencer = Sequencer::default();
    // A read of the log for lost messages: when, and the tries so far.
    let mut gap_read: Option<(Instant, u32)> = None;
    let mut gaps_open = true;
    loop {
        let ready = tokio::select! {
            message = subscription.next() => match message {
                Some(message) => sequencer.push(message, Instant::now()),
                None => break,
            },
            () = sleep_until(sequencer.deadline()) => {
                // A predecessor did not come in time: lost on its way, or
                // published before the room was subscribed here.
                let mut ready = match sequencer.last() {
                    Some(last) => match room.read_after(last).await {
                        Ok(found) => room.fill(&mut sequencer, found),
                        Err(e) => {
                            tracing::error!(room_id = room.room_id, after = last, error = %e,
                                "chat messages missing live and not read from the log: skipped");
                            Vec::new()
                        }
                    },
                    None => Vec::new(),
                };
                ready.extend(sequencer.flush());
                ready
            }
            changed = gaps.changed(), if gaps_open => {
                match changed {
                    Ok(()) => gap_read = Some((Instant::now() + GAP_READ_DELAY, 0)),
                    Err(_) => gaps_open = false,
                }
                continue;
            }
            () = sleep_until(gap_read.map(|(at, _)| at)) => {
                let tries = gap_read.take().map_or(0, |(_, tries)| tries) + 1;
                // Before its first message the room has nothing to miss:
                // its sockets caught up from the log when they joined.
                let Some(last) = sequencer.last() else { continue };
                match room.read_after(last).await {
                    Ok(found) => room.fill(&mut sequencer, found),
                    Err(e) if tries < GAP_READ_TRIES => {
                        tracing::debug!(room_id = room.room_id, error = %e, "chat log not read; tried again");
                        gap_read = Some((Instant::now() + GAP_READ_RETRY, tries));
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(room_id = room.room_id, after = last, error = %e,
                            "chat log not read after a sign of lost messages");
                        continue;
                    }
                }
            }
            () = sleep_until(room.presence.due) => {
                room.send_presence();
                continue;
            }
        };
        for message in ready {
            room.deliver(message).await;
        }
    }
}

/// A room's local sockets as last counted. Per-user events go to a room of
/// at most `per_user_max` sockets; a room found larger is not listed again
/// for each of them (a join storm would list it once per join) until the
/// count is [`PRESENCE_BATCH_INTERVAL`] old.
struct Audience {
    per_user_max: usize,
    counted: Option<(Instant, usize)>,
}

impl Audience {
    fn new(per_user_max: usize) -> Self {
        Self {
            per_user_max,
            counted: None,
        }
    }

    /// False while the room is known to be too large for per-user events.
    fn may_take_per_user(&self, now: Instant) -> bool {
        match self.counted {
            Some((at, count)) if now.duration_since(at) < PRESENCE_BATCH_INTERVAL => {
                count <= self.per_user_max
            }
            _ => true,
        }
    }

    /// Records a count; true when a room of that many takes per-user events.
    fn count(&mut self, count: usize, now: Instant) -> bool {
        self.counted = Some((now, count));
        count <= self.per_user_max
    }
}

/// The presence changes of a room since its last `presence` event: each
/// user's newest state, in the order they first changed.
#[derive(Default)]
struct PresenceBatch {
    changes: Vec<(String, bool)>,
    index: HashMap<String, usize>,
    /// When they are to be sent; `None` while there are none.
    due: Option<Instant>,
}

impl PresenceBatch {
    fn record(&mut self, user_name: &str, online: bool, now: Instant) {
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
    fn take(&mut self, room_id: RoomId) -> PresencePayload {
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
struct PresencePayload {
    room_id: RoomId,
    online: Vec<String>,
    offline: Vec<String>,
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

impl Room {
    /// The room's acknowledged chat messages after `after`, from the chat
    /// log, as the bus would have delivered them.
    async fn read_after(&self, after: ChatId) -> Result<Vec<BusMessage>, ChatLogError> {
        let _permit = self.reads.permits.acquire().await;
        let page = self
            .reads
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
            self.reads.recovered.inc_by(missed as u64);
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
        let Some(room) = self.store.room(self.room_id).await? else {
            return Ok(HashSet::new());
        };
        let members = self.store.members(self.room_id).await?;
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
        self.deliveries
            .get_or_create(&EventLabels { event: name })
            .inc();
        // Only an event of a sampled trace gets a span: it would not be
        // recorded otherwise.
        let span = match &message.trace {
            Some(trace) if trace.sampled() => {
                let span = common::trace_span!(
                    "deliver",
                    otel.name = %format_args!("process {name}"),
                    otel.kind = "consumer",
                    messaging.system = "nats",
                    messaging.operation.type = "process",
                    messaging.destination.name = %message.subject,
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
        self.deliveries
            .get_or_create(&EventLabels { event: "presence" })
            .inc();
        self.emit_to(&sockets, "presence", &payload);
    }

    /// The room's local sockets now.
    fn sockets(&self) -> Vec<SocketRef> {
        self.io.within(self.key.clone()).sockets()
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
                    self.slow_consumers.inc();
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
pub(crate) async fn disconnect_when_possible(socket: SocketRef) {
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

pub fn session(socket: &SocketRef) -> Option<Arc<Session>> {
    socket.extensions.get::<Arc<Session>>()
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
