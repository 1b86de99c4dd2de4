//! The NATS subjects and JetStream stream names of docs/architecture.md, in one
//! place.

use std::sync::Arc;

use clap::Args;

use crate::domain::RoomId;
use crate::support::problems::Problems;

/// Builds the subjects of docs/architecture.md under a configurable prefix (so
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
        self.room_event(room_id, crate::domain::NEW_MESSAGE)
    }

    /// The chat stream's RePublish destination: each message appended to
    /// [`Self::chat`] of a room goes to [`Self::new_message`] of that room.
    pub fn new_message_republished(&self) -> String {
        format!(
            "{}.room.{{{{wildcard(1)}}}}.{}",
            self.prefix,
            crate::domain::NEW_MESSAGE
        )
    }

    /// A user's password changed: gateways close the sockets that
    /// authenticated with a token issued before (payload: [`crate::domain::events::PasswordChanged`]).
    pub fn password_changed(&self) -> String {
        format!("{}.users.password_changed", self.prefix)
    }

    /// A session ended: gateways close the sockets opened with its tokens
    /// (payload: [`crate::domain::events::SessionEnded`]).
    pub fn session_ended(&self) -> String {
        format!("{}.users.session_ended", self.prefix)
    }

    /// `<prefix>.rooms.room_list_updated`: one subject every gateway listens to.
    pub fn room_list_updated(&self) -> String {
        format!("{}.rooms.room_list_updated", self.prefix)
    }

    /// `<prefix>.chat.<room_id>`: the JetStream subject a message is appended to.
    pub fn chat(&self, room_id: RoomId) -> String {
        format!("{}.chat.{room_id}", self.prefix)
    }

    /// `<prefix>.chat.*`: the chat stream's subjects, every room's.
    pub fn chats(&self) -> String {
        format!("{}.chat.*", self.prefix)
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

/// Namespacing shared by every service of one deployment.
#[derive(Debug, Clone, Args)]
pub struct PrefixArgs {
    /// Prefix of NATS subjects and Redis keys, so several deployments (or test
    /// runs) can share one NATS and one Redis.
    #[arg(long, env = "KOM_PREFIX", default_value = "kom")]
    pub prefix: String,
}

impl PrefixArgs {
    pub fn validate(&self, problems: &mut Problems) {
        let valid = !self.prefix.is_empty()
            && self.prefix.split('.').all(|t| {
                !t.is_empty()
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        if !valid {
            problems.push("KOM_PREFIX must be dot-separated tokens of letters, digits, `_` or `-`");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_chat_stream_republishes_each_rooms_messages_to_its_new_message_subject() {
        let subjects = Subjects::new("kom");
        assert_eq!(subjects.chat(7), "kom.chat.7");
        assert_eq!(subjects.chats(), "kom.chat.*");
        assert_eq!(subjects.new_message(7), "kom.room.7.new_message");
        assert_eq!(
            subjects.new_message_republished(),
            "kom.room.{{wildcard(1)}}.new_message"
        );
    }
}
