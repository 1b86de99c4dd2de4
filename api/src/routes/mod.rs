//! Route handlers, one file per group. Handlers stay thin: extract,
//! authorize, validate, call the store, map to the response.

pub mod chat;
pub mod members;
pub mod rooms;
pub mod sessions;
pub mod users;

use axum::Json;
use common::domain::{Room, RoomId};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::AppState;

/// `{"message": text}`, the contract's success body.
fn message(text: &str) -> Json<Value> {
    Json(json!({ "message": text }))
}

/// The room, if `viewer` may see it: public rooms are visible to anyone,
/// private ones only to their members and owner. Anything else is
/// indistinguishable from a room that does not exist.
async fn visible_room(
    state: &AppState,
    room_id: RoomId,
    viewer: Option<&str>,
) -> Result<Room, ApiError> {
    let room = state
        .store
        .room(room_id)
        .await?
        .ok_or(ApiError::RoomNotFound)?;
    if !room.is_private {
        return Ok(room);
    }
    let Some(viewer) = viewer else {
        return Err(ApiError::RoomNotFound);
    };
    if room.room_owner == viewer || state.store.member(room_id, viewer).await?.is_some() {
        Ok(room)
    } else {
        Err(ApiError::RoomNotFound)
    }
}

/// 429 when any of `keys` failed too often lately. The throttle's state
/// unreachable (Redis down) lets the attempt through: logins do not
/// depend on it.
async fn refuse_if_throttled(state: &AppState, keys: &[String]) -> Result<(), ApiError> {
    match state.throttle.blocked(keys).await {
        Ok(Some(wait)) => {
            tracing::info!(?keys, "attempt refused: throttled");
            Err(ApiError::Throttled(wait))
        }
        Ok(None) => Ok(()),
        Err(e) => {
            tracing::warn!(error = %e, "attempt not checked against the throttle");
            Ok(())
        }
    }
}

/// Counts a failed attempt against each of `keys`.
async fn count_failure(state: &AppState, keys: &[String]) {
    if let Err(e) = state.throttle.failed(keys).await {
        tracing::warn!(error = %e, "failed attempt not counted");
    }
}
