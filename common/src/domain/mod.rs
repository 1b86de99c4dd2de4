//! Domain types shared by every service, and the contract's limits on
//! them; the server events (`events`) and the bus subjects (`subjects`).

pub mod events;
pub mod subjects;

use chrono::{DateTime, NaiveDateTime, SecondsFormat, Utc};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// The Socket.IO event (and bus subject's last token) of a chat message.
pub const NEW_MESSAGE: &str = "new_message";

/// Largest id a JSON client can hold exactly (2^53 - 1).
pub const MAX_ID: i64 = (1 << 53) - 1;

/// An id (of a room, a message) as a client gave it: a JSON integer or a
/// string of digits, from 1 to [`MAX_ID`] (docs/protocol.md). The one rule
/// both the REST API and the gateway read ids by; each edge answers the
/// cases its own way.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GivenId {
    /// Absent, `null` or `""`.
    Absent,
    Valid(i64),
    /// Digits, or a JSON integer, outside 1..=[`MAX_ID`].
    OutOfRange,
    /// Anything else: a sign, a space, an exponent, a fraction, another type.
    Malformed,
}

impl GivenId {
    /// From a JSON field (`None` when the object has no such field).
    pub fn of_json(value: Option<&serde_json::Value>) -> Self {
        match value {
            None | Some(serde_json::Value::Null) => Self::Absent,
            Some(serde_json::Value::String(text)) => Self::of_text(text),
            Some(serde_json::Value::Number(n)) if n.is_i64() || n.is_u64() => {
                n.as_i64().map_or(Self::OutOfRange, Self::in_range)
            }
            Some(_) => Self::Malformed,
        }
    }

    /// From text (a JSON string, a query parameter): digits only.
    pub fn of_text(text: &str) -> Self {
        if text.is_empty() {
            Self::Absent
        } else if !text.bytes().all(|b| b.is_ascii_digit()) {
            Self::Malformed
        } else {
            text.parse::<i64>().map_or(Self::OutOfRange, Self::in_range)
        }
    }

    fn in_range(id: i64) -> Self {
        if (1..=MAX_ID).contains(&id) {
            Self::Valid(id)
        } else {
            Self::OutOfRange
        }
    }
}

/// Contract limits, in characters (Unicode scalar values).
pub const USER_NAME_MAX: usize = 48;
pub const PASSWORD_MAX: usize = 128;
pub const ROOM_NAME_MAX: usize = 64;
pub const ACCESS_KEY_MAX: usize = 64;
pub const MESSAGE_MAX: usize = 1000;

/// The largest thing a client may send in one piece: a REST request body,
/// an Engine.IO long-polling POST, a WebSocket message or frame. Nothing
/// larger is read whole, authenticated or not.
pub const PAYLOAD_MAX: usize = 64 * 1024;

/// Newest messages `chat_history` returns when asked for no `limit`, and the
/// largest `limit` a client may ask for.
pub const HISTORY_MAX: u32 = 1000;

/// The form in which user names are stored and compared: NFKC, so that a
/// name written with compatibility characters (full-width letters,
/// ligatures, circled digits) is the same name as its plain spelling.
pub fn normalize_user_name(name: &str) -> String {
    use unicode_normalization::UnicodeNormalization;
    name.nfkc().collect()
}

/// What two user names are compared by: NFKC, then lower case (the
/// database compares names case-insensitively too).
pub fn user_name_key(name: &str) -> String {
    normalize_user_name(name).to_lowercase()
}

/// Why a user name may not be registered, if it may not: control
/// characters, invisible format characters (Unicode category Cf: zero-width
/// spaces and joiners, bidirectional overrides, the byte order mark) and
/// whitespace at either end make names that look like another user's.
pub fn user_name_problem(name: &str) -> Option<&'static str> {
    use unicode_properties::{GeneralCategory, UnicodeGeneralCategory};
    if name.trim() != name || name.chars().any(char::is_control) {
        return Some(
            "user_name must not contain control characters or start or end with whitespace",
        );
    }
    if name
        .chars()
        .any(|c| c.general_category() == GeneralCategory::Format)
    {
        return Some("user_name must not contain invisible formatting characters");
    }
    None
}

pub type RoomId = i64;
pub type ChatId = i64;

/// A room as the contract shows it. `access_key` is already redacted for the
/// viewer (see [`Room::visible_to`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Room {
    pub room_id: RoomId,
    pub room_name: String,
    pub room_owner: String,
    #[serde(serialize_with = "serialize_opt_timestamp")]
    pub create_date: Option<NaiveDateTime>,
    pub is_private: bool,
    pub access_key: Option<String>,
}

impl Room {
    /// A private room's key is shown only to its owner.
    pub fn visible_to(mut self, viewer: Option<&str>) -> Self {
        if viewer != Some(self.room_owner.as_str()) {
            self.access_key = None;
        }
        self
    }
}

/// One membership of the caller, as `GET /user_rooms` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Membership {
    pub user_name: String,
    pub room_id: RoomId,
    pub room_name: String,
    pub room_owner: String,
    pub is_private: bool,
}

/// One entry of `GET /user_list`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Member {
    pub user_name: String,
    pub room_id: RoomId,
}

/// A persisted chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub chat_id: ChatId,
    pub room_id: RoomId,
    pub user_name: String,
    pub message: String,
    #[serde(serialize_with = "serialize_opt_timestamp")]
    pub create_date: Option<NaiveDateTime>,
}

/// A chat message accepted by a gateway, before the broker (or the embedded
/// store) has given it its `chat_id`. This is the payload on the bus.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatDraft {
    pub room_id: RoomId,
    pub user_name: String,
    pub message: String,
    #[serde(
        serialize_with = "serialize_timestamp",
        deserialize_with = "deserialize_timestamp"
    )]
    pub create_date: NaiveDateTime,
}

impl ChatDraft {
    pub fn with_id(self, chat_id: ChatId) -> ChatMessage {
        ChatMessage {
            chat_id,
            room_id: self.room_id,
            user_name: self.user_name,
            message: self.message,
            create_date: Some(self.create_date),
        }
    }
}

/// The counters of `GET /user/get_info`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    pub message_count: i64,
    pub private_rooms_owned: i64,
    pub public_rooms_owned: i64,
    pub private_rooms_member: i64,
    pub public_rooms_member: i64,
}

/// A new room, validated.
#[derive(Debug, Clone)]
pub struct NewRoom {
    pub name: String,
    pub owner: String,
    /// `Some` exactly when the room is private.
    pub access_key: Option<String>,
}

/// The new settings of an edited room, validated.
#[derive(Debug, Clone)]
pub struct RoomEdit {
    pub room_id: RoomId,
    pub name: String,
    /// `Some` exactly when the room becomes (or stays) private.
    pub access_key: Option<String>,
}

/// Which slice of a room's history to read; always the newest `limit`
/// messages below `before`, returned oldest first.
#[derive(Debug, Clone, Copy)]
pub struct HistoryQuery {
    pub room_id: RoomId,
    pub before: Option<ChatId>,
    pub limit: u32,
}

/// The current time, at the precision the stores keep (milliseconds).
pub fn now() -> NaiveDateTime {
    let now = Utc::now().naive_utc();
    let millis = now.and_utc().timestamp_millis();
    DateTime::from_timestamp_millis(millis)
        .map(|t| t.naive_utc())
        .unwrap_or(now)
}

/// RFC 3339 UTC with milliseconds and a `Z`, as the contract requires.
pub fn format_timestamp(t: &NaiveDateTime) -> String {
    t.and_utc().to_rfc3339_opts(SecondsFormat::Millis, true)
}

fn serialize_timestamp<S: Serializer>(t: &NaiveDateTime, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&format_timestamp(t))
}

fn deserialize_timestamp<'de, D: Deserializer<'de>>(d: D) -> Result<NaiveDateTime, D::Error> {
    let text = String::deserialize(d)?;
    DateTime::parse_from_rfc3339(&text)
        .map(|t| t.naive_utc())
        .map_err(serde::de::Error::custom)
}

fn serialize_opt_timestamp<S: Serializer>(
    t: &Option<NaiveDateTime>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match t {
        Some(t) => s.serialize_str(&format_timestamp(t)),
        None => s.serialize_none(),
    }
}

/// Number of characters as the contract counts them (Unicode scalar values).
pub fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// True when `s` has no visible content: empty or whitespace only.
pub fn is_blank(s: &str) -> bool {
    s.trim().is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_id_is_an_integer_or_digits_from_1_to_2_pow_53_minus_1() {
        use serde_json::json;
        for (given, read) in [
            (json!(7), GivenId::Valid(7)),
            (json!("7"), GivenId::Valid(7)),
            (json!(MAX_ID), GivenId::Valid(MAX_ID)),
            (json!(MAX_ID + 1), GivenId::OutOfRange),
            (json!(0), GivenId::OutOfRange),
            (json!(-1), GivenId::OutOfRange),
            (json!(u64::MAX), GivenId::OutOfRange),
            (json!("99999999999999999999"), GivenId::OutOfRange),
            (json!(null), GivenId::Absent),
            (json!(""), GivenId::Absent),
            (json!("-1"), GivenId::Malformed),
            (json!(" 7"), GivenId::Malformed),
            (json!("1e3"), GivenId::Malformed),
            (json!(1.5), GivenId::Malformed),
            (json!(true), GivenId::Malformed),
            (json!([7]), GivenId::Malformed),
        ] {
            assert_eq!(GivenId::of_json(Some(&given)), read, "{given}");
        }
        assert_eq!(GivenId::of_json(None), GivenId::Absent);
    }

    #[test]
    fn timestamps_are_rfc3339_utc_with_millis_and_z() {
        let t = DateTime::from_timestamp_millis(1_795_548_024_123)
            .map(|t| t.naive_utc())
            .expect("valid");
        assert_eq!(format_timestamp(&t), "2026-11-24T19:20:24.123Z");
    }

    #[test]
    fn chat_drafts_round_trip_through_json() {
        let draft = ChatDraft {
            room_id: 3,
            user_name: "ann".into(),
            message: "hi 😀".into(),
            create_date: now(),
        };
        let json = serde_json::to_string(&draft).expect("json");
        assert!(
            json.contains(&format_timestamp(&draft.create_date)),
            "{json}"
        );
        assert_eq!(
            serde_json::from_str::<ChatDraft>(&json).expect("parse"),
            draft
        );
    }

    #[test]
    fn char_len_counts_scalar_values_not_bytes() {
        assert_eq!(char_len("żółw"), 4);
        assert_eq!(char_len("😀😀"), 2);
    }

    #[test]
    fn access_key_is_shown_only_to_the_owner() {
        let room = Room {
            room_id: 1,
            room_name: "r".into(),
            room_owner: "alice".into(),
            create_date: None,
            is_private: true,
            access_key: Some("k".into()),
        };
        assert_eq!(
            room.clone().visible_to(Some("alice")).access_key.as_deref(),
            Some("k")
        );
        assert_eq!(room.clone().visible_to(Some("bob")).access_key, None);
        assert_eq!(room.visible_to(None).access_key, None);
    }

    #[test]
    fn user_names_compare_in_nfkc_and_refuse_invisible_characters() {
        // Full-width letters and the "ﬁ" ligature are their plain spellings.
        assert_eq!(normalize_user_name("\u{ff41}lice"), "alice");
        assert_eq!(normalize_user_name("\u{fb01}ona"), "fiona");
        assert_eq!(user_name_key("\u{ff21}LICE"), user_name_key("alice"));
        assert_eq!(user_name_problem("alice"), None);
        assert_eq!(user_name_problem("żółw 😀"), None);
        for bad in [
            "al\u{200b}ice", // zero-width space
            "al\u{200d}ice", // zero-width joiner
            "\u{202e}ecila", // right-to-left override
            "ali\u{2066}ce", // left-to-right isolate
            "\u{feff}alice", // byte order mark
            "al\u{00ad}ice", // soft hyphen
            " alice",
            "al\nice",
        ] {
            assert!(user_name_problem(bad).is_some(), "{bad:?}");
        }
    }
}
