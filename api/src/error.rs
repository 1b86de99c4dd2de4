//! The API's error type: every failure a handler can report, mapped in one
//! place to its status code and the contract's `{"error": ...}` text.

use axum::http::StatusCode;
use axum::http::header::RETRY_AFTER;
use axum::response::{IntoResponse, Json, Response};
use common::accounts::password::PasswordError;
use common::accounts::tokens::TokenError;
use common::adapters::chat_log::ChatLogError;
use common::adapters::presence::PresenceError;
use common::adapters::store::StoreError;
use serde_json::json;

/// What a 503 tells clients to wait before trying again.
const RETRY_AFTER_SECONDS: &str = "1";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("Missing Login or password")]
    MissingLoginOrPassword,
    #[error("Missing password parameter")]
    MissingPassword,
    #[error("Missing room_id parameter")]
    MissingRoomId,
    #[error("Missing access_key parameter")]
    MissingAccessKey,
    #[error("Missing refresh_token parameter")]
    MissingRefreshToken,
    #[error("Invalid refresh token")]
    InvalidRefreshToken,
    #[error("Missing room_id or user_name parameter")]
    MissingLeaveParameters,
    #[error("Missing room_name or room_owner parameter")]
    MissingRoomName,
    #[error("Missing new_access_key parameter for private room")]
    MissingNewAccessKey,
    #[error("Room name cannot be empty")]
    EmptyRoomName,
    #[error("Missing user_name or room_id parameter")]
    MissingKickParameters,
    #[error("User already in room")]
    AlreadyInRoom,
    #[error("Room with this access key already exists")]
    DuplicateAccessKey,
    #[error("The owner cannot be kicked")]
    OwnerCannotBeKicked,
    /// Any other malformed input: wrong type, over a limit, bad JSON.
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Token(#[from] TokenError),
    #[error("Unknown user")]
    UnknownUser,
    #[error("Invalid user credentials")]
    InvalidCredentials,
    #[error("Invalid old password")]
    InvalidOldPassword,
    #[error("You are not the owner of this room")]
    NotOwner,
    #[error("Room not found")]
    RoomNotFound,
    #[error("User not in room")]
    UserNotInRoom,
    #[error("Not found")]
    NoRoute,
    #[error("Method not allowed")]
    MethodNotAllowed,
    #[error("User Exists")]
    UserExists,
    #[error("Request body too large (limit 64 KiB)")]
    TooLarge,
    #[error("Request body not received in time")]
    SlowBody,
    #[error("Too many requests, try again later")]
    Busy,
    /// Too many failed attempts of this user or address (the throttle).
    #[error("Too many attempts, try again later")]
    Throttled(std::time::Duration),
    /// A dependency cannot answer now; the detail is logged, never sent.
    #[error("Service unavailable, try again")]
    Unavailable(String),
    /// A bug or an unavailable dependency; the detail is logged, never sent.
    #[error("Internal server error")]
    Internal(String),
}

impl ApiError {
    pub fn invalid(text: impl Into<String>) -> Self {
        Self::Invalid(text.into())
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingLoginOrPassword
            | Self::MissingPassword
            | Self::MissingRoomId
            | Self::MissingAccessKey
            | Self::MissingRefreshToken
            | Self::MissingLeaveParameters
            | Self::MissingRoomName
            | Self::MissingNewAccessKey
            | Self::EmptyRoomName
            | Self::MissingKickParameters
            | Self::AlreadyInRoom
            | Self::DuplicateAccessKey
            | Self::OwnerCannotBeKicked
            | Self::Invalid(_) => StatusCode::BAD_REQUEST,
            Self::Token(_)
            | Self::UnknownUser
            | Self::InvalidCredentials
            | Self::InvalidOldPassword
            | Self::InvalidRefreshToken => StatusCode::UNAUTHORIZED,
            Self::NotOwner => StatusCode::FORBIDDEN,
            Self::RoomNotFound | Self::UserNotInRoom | Self::NoRoute => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UserExists => StatusCode::CONFLICT,
            Self::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::SlowBody => StatusCode::REQUEST_TIMEOUT,
            Self::Busy | Self::Throttled(_) => StatusCode::TOO_MANY_REQUESTS,
            Self::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = Json(json!({ "error": self.to_string() }));
        match &self {
            Self::Internal(detail) => tracing::error!(error = %detail, "request failed"),
            Self::Unavailable(detail) => {
                tracing::warn!(error = %detail, "request refused, a dependency is unavailable");
                return (self.status(), [(RETRY_AFTER, RETRY_AFTER_SECONDS)], body).into_response();
            }
            Self::Throttled(wait) => {
                let seconds = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
                let retry_after = seconds.max(1).to_string();
                return (self.status(), [(RETRY_AFTER, retry_after)], body).into_response();
            }
            _ => {}
        }
        (self.status(), body).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        if e.is_unavailable() {
            Self::Unavailable(e.to_string())
        } else {
            Self::Internal(e.to_string())
        }
    }
}

impl From<ChatLogError> for ApiError {
    fn from(e: ChatLogError) -> Self {
        match e {
            ChatLogError::Store {
                message,
                unavailable: false,
            } => Self::Internal(message),
            e => Self::Unavailable(e.to_string()),
        }
    }
}

impl From<PasswordError> for ApiError {
    fn from(e: PasswordError) -> Self {
        match e {
            PasswordError::Busy => Self::Busy,
            PasswordError::Internal(detail) => Self::Internal(detail),
        }
    }
}

impl From<PresenceError> for ApiError {
    fn from(e: PresenceError) -> Self {
        match e {
            // Lost: Redis restarted empty, the presence service restores it.
            PresenceError::Redis(_) | PresenceError::Lost => Self::Unavailable(e.to_string()),
        }
    }
}
