//! The bus interface: publish/subscribe between services, on NATS subjects
//! (production) or in process (the embedded single-node default), and the
//! room events that travel on it.

use std::pin::Pin;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

use crate::domain::{ChatDraft, ChatId, ChatMessage, RoomId};

mod local;
mod nats;

pub use local::LocalBus;
pub use nats::{NatsBus, PERSISTER_CONSUMER};

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS: {0}")]
    Connect(String),
    #[error("publish failed: {0}")]
    Publish(String),
    #[error("subscribe failed: {0}")]
    Subscribe(String),
    #[error("the bus is not connected")]
    NotConnected,
    #[error("the message was not stored: {0}")]
    Append(String),
    #[error("cannot set up the chat stream: {0}")]
    Stream(String),
    #[error("cannot read the chat stream: {0}")]
    Read(String),
    /// More chat messages wait to be stored than a read may merge: the
    /// persister is far behind (or down).
    #[error("{0} chat messages wait to be stored")]
    Backlog(u64),
}

/// One message as a subscriber receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    pub subject: String,
    pub payload: Bytes,
    /// The `chat_id` of a chat message (the broker's stream sequence, or the
    /// embedded store's id); `None` for other events.
    pub sequence: Option<ChatId>,
    /// The `chat_id` of the room's previous message (0 for its first), when
    /// the bus may deliver out of order and says so; `None` when it delivers
    /// in order anyway.
    pub previous: Option<ChatId>,
}

/// The messages published on a subject (pattern) from subscription on.
pub type Subscription = Pin<Box<dyn Stream<Item = BusMessage> + Send>>;

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    async fn publish(&self, subject: String, payload: Bytes) -> Result<(), BusError>;
    /// Subscribes to a subject; `*` matches one token and `>` the rest, as in NATS.
    async fn subscribe(&self, subject: String) -> Result<Subscription, BusError>;
    /// Subscribes as a member of `group`: each message goes to one member
    /// (replicas of a service share the work).
    async fn subscribe_queue(
        &self,
        subject: String,
        group: String,
    ) -> Result<Subscription, BusError>;
    /// Fails when the bus cannot deliver messages now.
    fn check_ready(&self) -> Result<(), BusError>;
    /// Starts storing a chat message durably. Messages started one after
    /// another are stored in that order; the returned future resolves to the
    /// message's `chat_id` once it is stored, and many may be pending at once
    /// (a socket's messages are pipelined, not sent one round trip apart).
    /// Only once stored is a message delivered on [`Subjects::new_message`],
    /// with that id as `sequence`, so "seen live" implies "stored", and every
    /// subscriber sees one room's messages in `chat_id` order.
    ///
    /// With a `key`, the append is idempotent: appending again with the same
    /// key within [`IDEMPOTENCY_WINDOW`] stores and delivers nothing more
    /// and resolves to the first append's `chat_id`.
    async fn begin_append(
        &self,
        draft: &ChatDraft,
        key: Option<&IdempotencyKey>,
    ) -> Result<PendingAppend, BusError>;

    /// The chat messages acknowledged to their senders that the store may
    /// not hold yet, of one room or of every room. Reads merge them with the
    /// store's rows, so that every acknowledged message is in every later
    /// read (CONTRACT.md, "Read your writes"). Read the store *after* this:
    /// what the store had committed by then covers everything up to
    /// [`Unstored::after`].
    async fn unstored(&self, _room: Option<RoomId>) -> Result<Unstored, BusError> {
        Ok(Unstored::default())
    }

    /// Stores a chat message durably and returns its `chat_id`.
    async fn append_chat(&self, draft: &ChatDraft) -> Result<ChatId, BusError> {
        self.begin_append(draft, None).await?.await
    }
}

/// How long an [`IdempotencyKey`] is remembered (the contract's "within 2
/// minutes"; also the chat stream's duplicate window).
pub const IDEMPOTENCY_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);

/// Identifies one chat message across its resends: its sender and the
/// client's `client_msg_id`. Safe as a NATS header value (the user name is
/// hex-encoded).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn new(user: &str, client_msg_id: &str) -> Self {
        Self(format!("{}-{client_msg_id}", hex::encode(user)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Chat messages the store may not hold yet (see [`Bus::unstored`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unstored {
    /// Every message with a `chat_id` up to this one is in the store.
    pub after: ChatId,
    /// Every message with a greater `chat_id` (of the room asked for),
    /// oldest first; some may be in the store already.
    pub messages: Vec<ChatMessage>,
}

impl Default for Unstored {
    /// Everything is stored (a bus that stores before acknowledging).
    fn default() -> Self {
        Self {
            after: ChatId::MAX,
            messages: Vec::new(),
        }
    }
}

/// A chat message on its way to durable storage.
pub type PendingAppend = Pin<Box<dyn Future<Output = Result<ChatId, BusError>> + Send>>;

/// Builds the subjects of ARCHITECTURE.md under a configurable prefix (so
/// several deployments, or tests, can share one NATS server).
#[derive(Debug, Clone)]
pub struct Subjects {
    prefix: Arc<str>,
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.into(),
        }
    }

    /// `<prefix>.room.<room_id>.<event>`: events for the sockets in one room.
    pub fn room_event(&self, room_id: RoomId, event: &str) -> String {
        format!("{}.room.{room_id}.{event}", self.prefix)
    }

    /// `<prefix>.room.<room_id>.>`: everything gateways deliver to one room.
    pub fn room_events(&self, room_id: RoomId) -> String {
        format!("{}.room.{room_id}.>", self.prefix)
    }

    /// `<prefix>.room.<room_id>.new_message`: stored chat messages, live.
    pub fn new_message(&self, room_id: RoomId) -> String {
        self.room_event(room_id, "new_message")
    }

    /// `<prefix>.rooms.room_list_updated`: one subject every gateway listens to.
    pub fn room_list_updated(&self) -> String {
        format!("{}.rooms.room_list_updated", self.prefix)
    }

    /// `<prefix>.chat.<room_id>`: the JetStream subject a message is appended to.
    pub fn chat(&self, room_id: RoomId) -> String {
        format!("{}.chat.{room_id}", self.prefix)
    }

    /// `<prefix>.presence.heartbeat`: coalesced heartbeats, gateway to presence.
    pub fn heartbeats(&self) -> String {
        format!("{}.presence.heartbeat", self.prefix)
    }

    /// The JetStream stream of chat messages: `<PREFIX>_CHAT`.
    pub fn chat_stream(&self) -> String {
        format!("{}_CHAT", self.upper_prefix())
    }

    /// `<prefix>.presence.online`: under it, one subject per online user in
    /// the stream [`Self::presence_stream`].
    pub fn presence_online(&self) -> String {
        format!("{}.presence.online", self.prefix)
    }

    /// The stream of who is online: `<PREFIX>_PRESENCE`.
    pub fn presence_stream(&self) -> String {
        format!("{}_PRESENCE", self.upper_prefix())
    }

    /// The prefix as JetStream names allow it: upper case, `_` for the rest.
    fn upper_prefix(&self) -> String {
        self.prefix
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_uppercase()
                } else {
                    '_'
                }
            })
            .collect()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

/// Events the API publishes after a change it has committed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RoomEvent {
    /// A room was created, edited or deleted: every socket refreshes its list.
    RoomListUpdated,
    /// Membership of a room changed.
    UserListUpdated { room_id: RoomId },
    /// The owner kicked `user_name`; gateways also drop that user's sockets from the room.
    UserKicked { room_id: RoomId, user_name: String },
    /// The room is gone; gateways drop every socket from it.
    RoomDeleted { room_id: RoomId },
}

impl RoomEvent {
    pub fn subject(&self, subjects: &Subjects) -> String {
        match self {
            Self::RoomListUpdated => subjects.room_list_updated(),
            Self::UserListUpdated { room_id } => subjects.room_event(*room_id, "user_list_updated"),
            Self::UserKicked { room_id, .. } => subjects.room_event(*room_id, "user_kicked"),
            Self::RoomDeleted { room_id } => subjects.room_event(*room_id, "room_deleted"),
        }
    }

    /// The Socket.IO payload of the event, as JSON (empty for events without one).
    pub fn payload(&self) -> Bytes {
        match self {
            Self::UserKicked { user_name, .. } => {
                Bytes::from(serde_json::json!({ "user_name": user_name }).to_string())
            }
            Self::RoomListUpdated | Self::UserListUpdated { .. } | Self::RoomDeleted { .. } => {
                Bytes::new()
            }
        }
    }
}

/// Publishes room events; a failure is logged here, once, and not returned:
/// the change they announce is already committed.
#[derive(Clone)]
pub struct Events {
    bus: Arc<dyn Bus>,
    subjects: Subjects,
}

impl Events {
    pub fn new(bus: Arc<dyn Bus>, subjects: Subjects) -> Self {
        Self { bus, subjects }
    }

    pub async fn publish(&self, event: RoomEvent) {
        let subject = event.subject(&self.subjects);
        if let Err(e) = self.bus.publish(subject.clone(), event.payload()).await {
            tracing::error!(subject, error = %e, "event not published");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_map_to_their_subjects() {
        let s = Subjects::new("kom");
        assert_eq!(
            RoomEvent::RoomListUpdated.subject(&s),
            "kom.rooms.room_list_updated"
        );
        assert_eq!(
            RoomEvent::UserListUpdated { room_id: 7 }.subject(&s),
            "kom.room.7.user_list_updated"
        );
        let kicked = RoomEvent::UserKicked {
            room_id: 7,
            user_name: "bob".into(),
        };
        assert_eq!(kicked.subject(&s), "kom.room.7.user_kicked");
        assert_eq!(
            kicked.payload(),
            Bytes::from_static(br#"{"user_name":"bob"}"#)
        );
    }
}
