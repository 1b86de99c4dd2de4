//! Every event the server sends to sockets (docs/protocol.md, "Server to
//! client"), as one type: where it travels between services (its subject),
//! how it is encoded there, and how a gateway decodes it before emitting it.
//! `error` is not here: it answers one socket and never leaves its gateway.

use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use crate::adapters::bus::{Bus, BusMessage};
use crate::domain::NEW_MESSAGE;
use crate::domain::subjects::Subjects;
use crate::domain::{ChatDraft, ChatId, ChatMessage, RoomId};

/// A server event, as services publish it and gateways deliver it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerEvent {
    /// A stored chat message. Published by the chat log only, once the
    /// message is durable; on the bus its body is the [`ChatDraft`] and its
    /// `chat_id` the bus message's sequence.
    NewMessage(ChatMessage),
    /// A socket joined the room (the joiner is told too).
    UserJoined(UserInRoom),
    /// A socket left the room (it is not told).
    UserLeft(UserInRoom),
    /// The user's first heartbeat arrived: to every room they are a member of.
    UserOnline { room_id: RoomId, user: UserName },
    /// No heartbeat for the presence timeout: to every room they are a member of.
    UserOffline { room_id: RoomId, user: UserName },
    /// Membership of the room changed.
    UserListUpdated { room_id: RoomId },
    /// The owner kicked `user`; gateways also drop that user's sockets from the room.
    UserKicked { room_id: RoomId, user: UserName },
    /// `user` left the room over REST; gateways drop their sockets from it.
    /// Not emitted.
    MemberRemoved { room_id: RoomId, user: UserName },
    /// The room turned private; gateways drop the sockets of users who are
    /// not its members from it. Not emitted.
    RoomMadePrivate { room_id: RoomId },
    /// The room is gone; gateways drop every socket from it. Not emitted.
    RoomDeleted { room_id: RoomId },
    /// A room was created, edited or deleted: to every socket.
    RoomListUpdated,
}

/// The payload of `user_joined` and `user_left`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserInRoom {
    pub user_name: String,
    pub room_id: RoomId,
}

/// The payload of `user_online`, `user_offline` and `user_kicked`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserName {
    pub user_name: String,
}

impl UserName {
    pub fn new(user_name: impl Into<String>) -> Self {
        Self {
            user_name: user_name.into(),
        }
    }
}

/// A bus message that is not a server event this build knows.
#[derive(Debug, thiserror::Error)]
#[error("not a server event on {subject}: {reason}")]
pub struct DecodeError {
    subject: String,
    reason: String,
}

/// The body of a chat message in the chat log and on the bus: its draft,
/// the `chat_id` being the log's sequence. Both logs append and publish
/// this; [`ServerEvent::decode`] reads it back.
pub fn encode_draft(draft: &ChatDraft) -> Bytes {
    // A plain struct of strings and numbers always serialises.
    Bytes::from(serde_json::to_vec(draft).unwrap_or_default())
}

impl ServerEvent {
    /// The Socket.IO event name.
    pub fn name(&self) -> &'static str {
        match self {
            Self::NewMessage(_) => NEW_MESSAGE,
            Self::UserJoined(_) => "user_joined",
            Self::UserLeft(_) => "user_left",
            Self::UserOnline { .. } => "user_online",
            Self::UserOffline { .. } => "user_offline",
            Self::UserListUpdated { .. } => "user_list_updated",
            Self::UserKicked { .. } => "user_kicked",
            Self::MemberRemoved { .. } => "member_removed",
            Self::RoomMadePrivate { .. } => "room_made_private",
            Self::RoomDeleted { .. } => "room_deleted",
            Self::RoomListUpdated => "room_list_updated",
        }
    }

    /// The room the event is for; `None` for one that goes to every socket.
    pub fn room_id(&self) -> Option<RoomId> {
        match self {
            Self::NewMessage(m) => Some(m.room_id),
            Self::UserJoined(e) | Self::UserLeft(e) => Some(e.room_id),
            Self::UserOnline { room_id, .. }
            | Self::UserOffline { room_id, .. }
            | Self::UserListUpdated { room_id }
            | Self::UserKicked { room_id, .. }
            | Self::MemberRemoved { room_id, .. }
            | Self::RoomMadePrivate { room_id }
            | Self::RoomDeleted { room_id } => Some(*room_id),
            Self::RoomListUpdated => None,
        }
    }

    /// The subject it travels on: `<prefix>.room.<room_id>.<name>`, or
    /// `<prefix>.rooms.room_list_updated`.
    pub fn subject(&self, subjects: &Subjects) -> String {
        match self.room_id() {
            Some(room_id) => subjects.room_event(room_id, self.name()),
            None => subjects.room_list_updated(),
        }
    }

    /// The body on the bus: the socket payload as JSON, empty for events
    /// without one, the draft for a chat message.
    pub fn encode(&self) -> Bytes {
        let json = match self {
            Self::NewMessage(m) => {
                return encode_draft(&ChatDraft {
                    room_id: m.room_id,
                    user_name: m.user_name.clone(),
                    message: m.message.clone(),
                    create_date: m.create_date.unwrap_or_default(),
                });
            }
            Self::UserJoined(e) | Self::UserLeft(e) => serde_json::to_vec(e),
            Self::UserOnline { user, .. }
            | Self::UserOffline { user, .. }
            | Self::UserKicked { user, .. }
            | Self::MemberRemoved { user, .. } => serde_json::to_vec(user),
            Self::UserListUpdated { .. }
            | Self::RoomMadePrivate { .. }
            | Self::RoomDeleted { .. }
            | Self::RoomListUpdated => {
                return Bytes::new();
            }
        };
        // Plain structs of strings and numbers always serialise.
        Bytes::from(json.unwrap_or_default())
    }

    /// The event a bus message carries, from its subject's last two tokens
    /// (`<room_id>.<name>`, or `rooms.room_list_updated`) and its body.
    pub fn decode(message: &BusMessage) -> Result<Self, DecodeError> {
        let fail = |reason: &dyn std::fmt::Display| DecodeError {
            subject: message.subject.clone(),
            reason: reason.to_string(),
        };
        let mut tokens = message.subject.rsplit('.');
        let name = tokens.next().unwrap_or_default();
        if name == "room_list_updated" {
            return Ok(Self::RoomListUpdated);
        }
        let room_id: RoomId = tokens
            .next()
            .and_then(|t| t.parse().ok())
            .ok_or_else(|| fail(&"no room id"))?;
        let body = &message.payload;
        let user = || serde_json::from_slice::<UserName>(body).map_err(|e| fail(&e));
        let member = || serde_json::from_slice::<UserInRoom>(body).map_err(|e| fail(&e));
        Ok(match name {
            NEW_MESSAGE => {
                let draft = serde_json::from_slice::<ChatDraft>(body).map_err(|e| fail(&e))?;
                let chat_id: ChatId = message.sequence.ok_or_else(|| fail(&"no chat_id"))?;
                Self::NewMessage(draft.with_id(chat_id))
            }
            "user_joined" => Self::UserJoined(member()?),
            "user_left" => Self::UserLeft(member()?),
            "user_online" => Self::UserOnline {
                room_id,
                user: user()?,
            },
            "user_offline" => Self::UserOffline {
                room_id,
                user: user()?,
            },
            "user_list_updated" => Self::UserListUpdated { room_id },
            "user_kicked" => Self::UserKicked {
                room_id,
                user: user()?,
            },
            "member_removed" => Self::MemberRemoved {
                room_id,
                user: user()?,
            },
            "room_made_private" => Self::RoomMadePrivate { room_id },
            "room_deleted" => Self::RoomDeleted { room_id },
            other => return Err(fail(&format!("unknown event {other}"))),
        })
    }
}

/// Publishes server events; a failure is logged here, once, and not
/// returned: the change they announce is already committed.
#[derive(Clone)]
pub struct Events {
    bus: Arc<dyn Bus>,
    subjects: Subjects,
}

/// A user's password changed: sockets authenticated with a token of
/// another stamp are to be closed (see [`crate::accounts::tokens::Tokens::stamp`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordChanged {
    pub user_name: String,
    /// The stamp of tokens issued under the new password.
    pub stamp: String,
}

/// A session ended (a logout, or a spent refresh token presented again):
/// gateways close the sockets opened with its tokens.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnded {
    pub user_name: String,
    pub session_id: String,
}

/// How long [`Events::publish_now`] waits for the broker to confirm.
const CONFIRM_WITHIN: std::time::Duration = std::time::Duration::from_secs(1);

impl Events {
    pub fn new(bus: Arc<dyn Bus>, subjects: Subjects) -> Self {
        Self { bus, subjects }
    }

    /// Tells every gateway that a session ended.
    pub async fn session_ended(&self, ended: &SessionEnded) {
        let subject = self.subjects.session_ended();
        if let Err(e) = self.publish_json(subject, "session_ended", ended).await {
            tracing::error!(error = %e, "session end not published: its sockets stay open");
        }
        self.confirm().await;
    }

    /// [`Self::publish`], then waits (briefly) until the broker has it, so
    /// that what the caller answers next cannot overtake it: a change of
    /// access reaches the gateways before the client hears it is done.
    pub async fn publish_now(&self, event: ServerEvent) {
        self.publish(event).await;
        self.confirm().await;
    }

    async fn confirm(&self) {
        match tokio::time::timeout(CONFIRM_WITHIN, self.bus.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(error = %e, "published events not confirmed"),
            Err(_) => tracing::warn!("published events not confirmed in time"),
        }
    }

    /// Tells every gateway that `change`'s user changed their password.
    pub async fn password_changed(&self, change: &PasswordChanged) {
        let subject = self.subjects.password_changed();
        if let Err(e) = self.publish_json(subject, "password_changed", change).await {
            tracing::error!(error = %e, "password change not published: older sockets stay open");
        }
        self.confirm().await;
    }

    /// Publishes `event` to its room's (or everyone's) subscribers.
    pub async fn publish(&self, event: ServerEvent) {
        let subject = event.subject(&self.subjects);
        if let Err(e) = self
            .send(subject.clone(), event.name(), event.encode())
            .await
        {
            tracing::error!(subject, event = event.name(), error = %e, "event not published");
        }
    }

    /// Publishes `payload` as JSON on `subject`; `name` names it in traces.
    pub async fn publish_json(
        &self,
        subject: String,
        name: &str,
        payload: &impl Serialize,
    ) -> Result<(), String> {
        let payload = serde_json::to_vec(payload).map_err(|e| e.to_string())?;
        self.send(subject, name, payload.into()).await
    }

    /// Publishes on the bus, in a producer span of the current trace when
    /// it is sampled.
    async fn send(&self, subject: String, name: &str, payload: Bytes) -> Result<(), String> {
        let span = crate::nats_send_span!("publish event", name, subject);
        let published = self.bus.publish(subject, payload);
        tracing::Instrument::instrument(published, span)
            .await
            .map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn on_bus(event: &ServerEvent, sequence: Option<ChatId>) -> BusMessage {
        BusMessage {
            subject: event.subject(&Subjects::new("kom")),
            payload: event.encode(),
            sequence,
            previous: None,
            trace: None,
        }
    }

    #[test]
    fn every_event_decodes_to_itself() {
        let user = || UserName::new("bob");
        let member = || UserInRoom {
            user_name: "bob".into(),
            room_id: 7,
        };
        let message = ChatMessage {
            chat_id: 42,
            room_id: 7,
            user_name: "bob".into(),
            message: "hi".into(),
            create_date: Some(crate::domain::now()),
        };
        let events = [
            ServerEvent::NewMessage(message),
            ServerEvent::UserJoined(member()),
            ServerEvent::UserLeft(member()),
            ServerEvent::UserOnline {
                room_id: 7,
                user: user(),
            },
            ServerEvent::UserOffline {
                room_id: 7,
                user: user(),
            },
            ServerEvent::UserListUpdated { room_id: 7 },
            ServerEvent::UserKicked {
                room_id: 7,
                user: user(),
            },
            ServerEvent::MemberRemoved {
                room_id: 7,
                user: user(),
            },
            ServerEvent::RoomMadePrivate { room_id: 7 },
            ServerEvent::RoomDeleted { room_id: 7 },
            ServerEvent::RoomListUpdated,
        ];
        for event in &events {
            let decoded = ServerEvent::decode(&on_bus(event, Some(42))).expect("decodes");
            assert_eq!(&decoded, event);
        }
        // Each is in the AsyncAPI document: its Socket.IO message, or (for
        // the changes gateways apply without emitting) the room subject's
        // events.
        let asyncapi = include_str!("../../../docs/asyncapi.yaml");
        for event in &events {
            let name = event.name();
            assert!(
                asyncapi.contains(&format!("name: {name}\n")) || asyncapi.contains(name),
                "{name} is not in docs/asyncapi.yaml"
            );
        }
    }

    #[test]
    fn events_travel_on_the_subjects_of_the_architecture() {
        let s = Subjects::new("kom");
        assert_eq!(
            ServerEvent::RoomListUpdated.subject(&s),
            "kom.rooms.room_list_updated"
        );
        let kicked = ServerEvent::UserKicked {
            room_id: 7,
            user: UserName::new("bob"),
        };
        assert_eq!(kicked.subject(&s), "kom.room.7.user_kicked");
        assert_eq!(
            kicked.encode(),
            Bytes::from_static(br#"{"user_name":"bob"}"#)
        );
        let joined = ServerEvent::UserJoined(UserInRoom {
            user_name: "ann".into(),
            room_id: 7,
        });
        assert_eq!(
            joined.encode(),
            Bytes::from_static(br#"{"user_name":"ann","room_id":7}"#)
        );
    }

    #[test]
    fn a_chat_message_without_its_id_or_an_unknown_event_is_refused() {
        let draft = ServerEvent::NewMessage(ChatMessage {
            chat_id: 1,
            room_id: 7,
            user_name: "bob".into(),
            message: "hi".into(),
            create_date: Some(crate::domain::now()),
        });
        assert!(ServerEvent::decode(&on_bus(&draft, None)).is_err());
        let unknown = BusMessage {
            subject: "kom.room.7.user_danced".into(),
            payload: Bytes::new(),
            sequence: None,
            previous: None,
            trace: None,
        };
        assert!(ServerEvent::decode(&unknown).is_err());
    }
}
