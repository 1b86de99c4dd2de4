//! Why a client event was refused: the `error` event's `{message, code}`
//! (docs/protocol.md, "Error codes"), in one place.

use serde::Serialize;

/// Why an event was refused: the `error` event's `{message, code}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    MessageTooLong,
    MissingMessage,
    MissingRoom,
    MissingUserName,
    JoinFailed,
    Forbidden,
    RateLimited,
    Invalid,
    /// A dependency (database, broker) failed; the client may retry. Not in
    /// the older servers' list: they had no such failure to report.
    Unavailable,
    /// The socket's token expired, or its session ended (a logout, a
    /// password change); or a `refresh` brought a token that is not good.
    /// The client renews its token and reconnects (or sends `refresh`).
    SessionExpired,
}

/// The body of an `error` event, and of a refused acknowledgement.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub message: &'static str,
    pub code: u8,
}

impl Refusal {
    pub fn code(self) -> u8 {
        match self {
            Self::MessageTooLong => 1,
            Self::MissingMessage => 2,
            Self::MissingRoom | Self::MissingUserName => 3,
            Self::JoinFailed => 4,
            Self::Forbidden => 5,
            Self::RateLimited => 6,
            Self::Invalid => 7,
            Self::Unavailable => 8,
            Self::SessionExpired => 9,
        }
    }

    pub fn message(self) -> &'static str {
        match self {
            Self::MessageTooLong => "Message is too long",
            Self::MissingMessage => "Missing message",
            Self::MissingRoom => "Missing user_name or room_id",
            Self::MissingUserName => "Missing user_name",
            Self::JoinFailed => "Join failed",
            Self::Forbidden => "Forbidden",
            Self::RateLimited => "Rate limited",
            Self::Invalid => "Invalid payload",
            Self::Unavailable => "Service unavailable, try again",
            Self::SessionExpired => "Session expired",
        }
    }

    pub fn body(self) -> ErrorBody {
        ErrorBody {
            message: self.message(),
            code: self.code(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_and_texts_match_the_contract() {
        let all = [
            (Refusal::MessageTooLong, 1, "Message is too long"),
            (Refusal::MissingMessage, 2, "Missing message"),
            (Refusal::MissingRoom, 3, "Missing user_name or room_id"),
            (Refusal::MissingUserName, 3, "Missing user_name"),
            (Refusal::JoinFailed, 4, "Join failed"),
            (Refusal::Forbidden, 5, "Forbidden"),
            (Refusal::RateLimited, 6, "Rate limited"),
            (Refusal::Invalid, 7, "Invalid payload"),
            (Refusal::Unavailable, 8, "Service unavailable, try again"),
            (Refusal::SessionExpired, 9, "Session expired"),
        ];
        let asyncapi = include_str!("../../docs/asyncapi.yaml");
        let protocol = include_str!("../../docs/protocol.md");
        for (refusal, code, text) in all {
            assert_eq!(
                refusal.body(),
                ErrorBody {
                    message: text,
                    code
                }
            );
            // Documented for clients, with its code.
            assert!(
                asyncapi.contains(&format!("- {text}\n")),
                "{text} not in asyncapi.yaml"
            );
            assert!(
                protocol.contains(&format!("| {code} |")),
                "code {code} not in protocol.md"
            );
        }
    }
}
