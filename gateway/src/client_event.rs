//! Client events, parsed at the edge into one typed [`ClientEvent`].
//! Anything that does not fit becomes a [`Refusal`] with its contract error
//! code here, in one place, so handlers only see well-formed requests.

use common::domain::{ChatId, GivenId, MAX_ID, MESSAGE_MAX, RoomId, char_len, is_blank};
use serde_json::{Map, Value};

use crate::refusal::Refusal;

/// An event a client sends (docs/protocol.md, "Client to server").
#[derive(Debug, PartialEq, Eq)]
pub enum ClientEvent {
    Join(JoinRequest),
    Leave(RoomRequest),
    Message(MessageRequest),
    Watchdog(Heartbeat),
    /// A fresher access token for the socket (before its own expires).
    Refresh(RefreshRequest),
}

impl ClientEvent {
    /// The events a socket listens to.
    pub const NAMES: [&'static str; 5] = ["join", "leave", "message", "watchdog", "refresh"];

    /// Parses the payload of the event called `name` (one of [`Self::NAMES`]).
    pub fn parse(name: &str, payload: Option<&Value>) -> Result<Self, Refusal> {
        match name {
            "join" => JoinRequest::parse(payload).map(Self::Join),
            "leave" => RoomRequest::parse(payload).map(Self::Leave),
            "message" => MessageRequest::parse(payload).map(Self::Message),
            "watchdog" => Heartbeat::parse(payload).map(Self::Watchdog),
            "refresh" => RefreshRequest::parse(payload).map(Self::Refresh),
            _ => Err(Refusal::Invalid),
        }
    }

    /// The `user_name` the payload claims, which must be the socket's user.
    pub fn claimed_user(&self) -> Option<&str> {
        match self {
            Self::Join(j) => j.room.user_name.as_deref(),
            Self::Leave(r) => r.user_name.as_deref(),
            Self::Message(m) => m.user_name.as_deref(),
            Self::Watchdog(h) => Some(&h.user_name),
            // The token names its user; a different one is refused (code 5).
            Self::Refresh(_) => None,
        }
    }
}

/// `join`: `{room_id, user_name, last_chat_id?}`.
#[derive(Debug, PartialEq, Eq)]
pub struct JoinRequest {
    pub room: RoomRequest,
    /// The newest `chat_id` the client has: it wants every later message
    /// replayed before the live ones.
    pub last_chat_id: Option<ChatId>,
}

/// `leave` (and the room of a `join`): `{room_id, user_name}`.
#[derive(Debug, PartialEq, Eq)]
pub struct RoomRequest {
    pub room_id: RoomId,
    pub user_name: Option<String>,
}

/// `message`: `{room_id, user_name, message}`.
#[derive(Debug, PartialEq, Eq)]
pub struct MessageRequest {
    pub room_id: RoomId,
    pub user_name: Option<String>,
    pub message: String,
    /// Makes a resend idempotent: 1..64 of `A-Za-z0-9_-`.
    pub client_msg_id: Option<String>,
}

/// The longest `client_msg_id`.
pub const CLIENT_MSG_ID_MAX: usize = 64;

/// `watchdog`: `{user_name}`.
#[derive(Debug, PartialEq, Eq)]
pub struct Heartbeat {
    pub user_name: String,
}

/// `refresh`: `{token}`, an access token of the socket's user.
#[derive(PartialEq, Eq)]
pub struct RefreshRequest {
    pub token: String,
}

impl std::fmt::Debug for RefreshRequest {
    /// Never the token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefreshRequest").finish_non_exhaustive()
    }
}

impl RefreshRequest {
    pub fn parse(payload: Option<&Value>) -> Result<Self, Refusal> {
        match object(payload)?.get("token") {
            Some(Value::String(token)) if !token.trim().is_empty() => Ok(Self {
                token: token.trim().to_owned(),
            }),
            _ => Err(Refusal::Invalid),
        }
    }
}

impl JoinRequest {
    pub fn parse(payload: Option<&Value>) -> Result<Self, Refusal> {
        let map = object(payload)?;
        let room = RoomRequest::from_map(map)?;
        let last_chat_id = match map.get("last_chat_id") {
            None | Some(Value::Null) => None,
            Some(Value::Number(n)) => match n.as_i64() {
                Some(id) if (0..=MAX_ID).contains(&id) => Some(id),
                _ => return Err(Refusal::Invalid),
            },
            Some(_) => return Err(Refusal::Invalid),
        };
        Ok(Self { room, last_chat_id })
    }
}

impl RoomRequest {
    pub fn parse(payload: Option<&Value>) -> Result<Self, Refusal> {
        Self::from_map(object(payload)?)
    }

    fn from_map(map: &Map<String, Value>) -> Result<Self, Refusal> {
        Ok(Self {
            room_id: room_id(map)?,
            user_name: user_name(map)?,
        })
    }
}

impl MessageRequest {
    pub fn parse(payload: Option<&Value>) -> Result<Self, Refusal> {
        let map = object(payload)?;
        let room_id = room_id(map)?;
        let user_name = user_name(map)?;
        let message = match map.get("message") {
            None | Some(Value::Null) => return Err(Refusal::MissingMessage),
            Some(Value::String(m)) if is_blank(m) => return Err(Refusal::MissingMessage),
            Some(Value::String(m)) if char_len(m) > MESSAGE_MAX => {
                return Err(Refusal::MessageTooLong);
            }
            Some(Value::String(m)) => m.clone(),
            Some(_) => return Err(Refusal::Invalid),
        };
        let client_msg_id = match map.get("client_msg_id") {
            None | Some(Value::Null) => None,
            Some(Value::String(id))
                if (1..=CLIENT_MSG_ID_MAX).contains(&id.len())
                    && id
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-') =>
            {
                Some(id.clone())
            }
            Some(_) => return Err(Refusal::Invalid),
        };
        Ok(Self {
            room_id,
            user_name,
            message,
            client_msg_id,
        })
    }
}

impl Heartbeat {
    pub fn parse(payload: Option<&Value>) -> Result<Self, Refusal> {
        let map = object(payload)?;
        match user_name(map)? {
            Some(user_name) => Ok(Self { user_name }),
            None => Err(Refusal::MissingUserName),
        }
    }
}

fn object(payload: Option<&Value>) -> Result<&Map<String, Value>, Refusal> {
    match payload {
        Some(Value::Object(map)) => Ok(map),
        _ => Err(Refusal::Invalid),
    }
}

/// A room id, as a JSON integer or a numeric string. A well-typed id that
/// cannot name a room (0, negative, beyond 2^53) is an unknown room.
/// The room an event names, read by the one rule ([`GivenId`]): none is
/// code 3, a well-formed id of no possible room code 4 (as a room that does
/// not exist), anything else code 7.
fn room_id(map: &Map<String, Value>) -> Result<RoomId, Refusal> {
    match GivenId::of_json(map.get("room_id")) {
        GivenId::Absent => Err(Refusal::MissingRoom),
        GivenId::Valid(id) => Ok(id),
        GivenId::OutOfRange => Err(Refusal::JoinFailed),
        GivenId::Malformed => Err(Refusal::Invalid),
    }
}

fn user_name(map: &Map<String, Value>) -> Result<Option<String>, Refusal> {
    match map.get("user_name") {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if s.is_empty() => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Refusal::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn message(v: Value) -> Result<MessageRequest, Refusal> {
        MessageRequest::parse(Some(&v))
    }

    #[test]
    fn payloads_that_are_not_objects_are_invalid() {
        for v in [json!("x"), json!(1), json!([1]), json!(null)] {
            assert_eq!(RoomRequest::parse(Some(&v)), Err(Refusal::Invalid));
        }
        assert_eq!(RoomRequest::parse(None), Err(Refusal::Invalid));
    }

    #[test]
    fn room_ids_are_integers_or_numeric_strings() {
        let parse =
            |id: Value| RoomRequest::parse(Some(&json!({ "room_id": id }))).map(|r| r.room_id);
        assert_eq!(parse(json!(5)), Ok(5));
        assert_eq!(parse(json!("5")), Ok(5));
        assert_eq!(parse(json!(null)), Err(Refusal::MissingRoom));
        assert_eq!(parse(json!("")), Err(Refusal::MissingRoom));
        assert_eq!(parse(json!(1.5)), Err(Refusal::Invalid));
        assert_eq!(parse(json!("abc")), Err(Refusal::Invalid));
        assert_eq!(parse(json!(true)), Err(Refusal::Invalid));
        assert_eq!(parse(json!(0)), Err(Refusal::JoinFailed));
        assert_eq!(parse(json!(-3)), Err(Refusal::JoinFailed));
        assert_eq!(
            parse(json!(9_007_199_254_740_992_u64)),
            Err(Refusal::JoinFailed)
        );
    }

    #[test]
    fn messages_are_limited_to_1000_characters() {
        let at_limit = "ż".repeat(1000);
        assert_eq!(
            message(json!({ "room_id": 1, "message": at_limit })).map(|m| m.message),
            Ok(at_limit)
        );
        let over = "ż".repeat(1001);
        assert_eq!(
            message(json!({ "room_id": 1, "message": over })),
            Err(Refusal::MessageTooLong)
        );
        assert_eq!(
            message(json!({ "room_id": 1, "message": " " })),
            Err(Refusal::MissingMessage)
        );
        assert_eq!(
            message(json!({ "room_id": 1 })),
            Err(Refusal::MissingMessage)
        );
        assert_eq!(
            message(json!({ "room_id": 1, "message": 5 })),
            Err(Refusal::Invalid)
        );
        assert_eq!(
            message(json!({ "message": "x" })),
            Err(Refusal::MissingRoom)
        );
    }

    #[test]
    fn every_client_event_is_in_the_asyncapi_document() {
        let asyncapi = include_str!("../../docs/asyncapi.yaml");
        for name in ClientEvent::NAMES {
            assert!(
                asyncapi.contains(&format!("      name: {name}\n")),
                "{name} is not a message of docs/asyncapi.yaml"
            );
        }
    }

    #[test]
    fn events_are_parsed_by_name() {
        let room = json!({ "room_id": 5, "user_name": "ann" });
        assert!(matches!(
            ClientEvent::parse("join", Some(&room)),
            Ok(ClientEvent::Join(JoinRequest {
                room: RoomRequest { room_id: 5, .. },
                last_chat_id: None
            }))
        ));
        assert!(matches!(
            ClientEvent::parse("leave", Some(&room)),
            Ok(ClientEvent::Leave(_))
        ));
        assert_eq!(
            ClientEvent::parse("watchdog", Some(&room))
                .map(|e| e.claimed_user().map(str::to_owned)),
            Ok(Some("ann".to_owned()))
        );
        assert_eq!(
            ClientEvent::parse("dance", Some(&room)),
            Err(Refusal::Invalid)
        );
    }

    #[test]
    fn last_chat_id_is_a_non_negative_integer() {
        let parse = |id: Value| {
            JoinRequest::parse(Some(&json!({ "room_id": 1, "last_chat_id": id })))
                .map(|j| j.last_chat_id)
        };
        assert_eq!(parse(json!(0)), Ok(Some(0)));
        assert_eq!(parse(json!(42)), Ok(Some(42)));
        assert_eq!(parse(json!(null)), Ok(None));
        assert_eq!(parse(json!(-1)), Err(Refusal::Invalid));
        assert_eq!(parse(json!(1.5)), Err(Refusal::Invalid));
        assert_eq!(parse(json!("42")), Err(Refusal::Invalid));
        assert_eq!(
            parse(json!(9_007_199_254_740_992_u64)),
            Err(Refusal::Invalid)
        );
    }

    #[test]
    fn watchdog_needs_a_user_name() {
        assert_eq!(
            Heartbeat::parse(Some(&json!({}))),
            Err(Refusal::MissingUserName)
        );
        assert_eq!(
            Heartbeat::parse(Some(&json!({ "user_name": 3 }))),
            Err(Refusal::Invalid)
        );
        assert_eq!(
            Heartbeat::parse(Some(&json!({ "user_name": "ann" }))),
            Ok(Heartbeat {
                user_name: "ann".into()
            })
        );
    }
}
