//! Route handlers, one file per group. Handlers stay thin: extract,
//! authorize, validate, call the store, map to the response.

pub mod chat;
pub mod members;
pub mod rooms;
pub mod sessions;
pub mod users;

use std::sync::Arc;

use axum::Json;
use common::adapters::throttle::Throttle;
use common::domain::{Room, RoomId};
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::state::AppState;

/// `{"message": text}`, the contract's success body.
fn message(text: &str) -> Json<Value> {
    Json(json!({ "message": text }))
}

/// The room, if `viewer` may see it ([`common::adapters::store::Store::visible_room`]);
/// a private room of others is as missing as a room that does not exist.
async fn visible_room(
    state: &AppState,
    room_id: RoomId,
    viewer: Option<&str>,
) -> Result<Room, ApiError> {
    state
        .store
        .visible_room(room_id, viewer)
        .await?
        .ok_or(ApiError::RoomNotFound)
}

/// The throttle key of a user name: the same for every spelling of it.
fn user_key(kind: &str, user: &str) -> String {
    format!("{kind}:user:{}", common::domain::user_name_key(user))
}

/// The throttle key of a client address (IPv6 by its /64 network).
fn address_key(kind: &str, address: std::net::IpAddr) -> String {
    format!(
        "{kind}:addr:{}",
        common::edge::proxy::address_group(address)
    )
}

/// 429 when any of `keys` failed too often lately. The throttle's state
/// unreachable (Redis down) lets the attempt through: logins do not
/// depend on it.
async fn refuse_if_throttled(state: &AppState, keys: &[String]) -> Result<(), ApiError> {
    refuse_if_throttled_by(&state.throttle, keys).await
}

/// [`refuse_if_throttled`] on another throttle than the failures'.
async fn refuse_if_throttled_by(
    throttle: &Arc<dyn Throttle>,
    keys: &[String],
) -> Result<(), ApiError> {
    match throttle.blocked(keys).await {
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
    count_failure_by(&state.throttle, keys).await;
}

/// Counts an attempt against each of `keys` of `throttle`.
async fn count_failure_by(throttle: &Arc<dyn Throttle>, keys: &[String]) {
    if let Err(e) = throttle.failed(keys).await {
        tracing::warn!(error = %e, "attempt not counted");
    }
}

/// The throttle key of wrong access keys (on `join_private`) and access-key
/// conflicts (on `room/create` and `room/edit`): both are guesses at other
/// rooms' keys, counted per user.
fn access_key_key(user: &str) -> String {
    user_key("access_key", user)
}
