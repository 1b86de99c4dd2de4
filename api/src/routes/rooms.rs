//! Rooms: list, read, create, edit, delete.

use axum::Json;
use axum::extract::State;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use common::adapters::store::StoreError;
use common::domain::events::ServerEvent;
use common::domain::{ACCESS_KEY_MAX, NewRoom, ROOM_NAME_MAX, Room, RoomEdit, now};
use serde_json::{Value, json};

use super::{message, visible_room};
use crate::error::ApiError;
use crate::extract::{Body, Caller, Params, check_len};
use crate::state::AppState;

pub async fn list(State(state): State<AppState>) -> Result<Response, ApiError> {
    let version = state.room_list.version().await;
    let body = match version.and_then(|v| state.room_list.get(v)) {
        Some(body) => body,
        None => {
            let rooms: Vec<Room> = state
                .store
                .public_rooms()
                .await?
                .into_iter()
                .map(|r| r.visible_to(None))
                .collect();
            let body = Bytes::from(
                serde_json::to_vec(&rooms).map_err(|e| ApiError::Internal(e.to_string()))?,
            );
            if let Some(version) = version {
                state.room_list.keep(version, body.clone());
            }
            body
        }
    };
    Ok(([(CONTENT_TYPE, "application/json")], body).into_response())
}

/// A room was created, edited or deleted: every replica's room list copy is
/// out of date before anyone hears of it.
async fn room_list_changed(state: &AppState) {
    state.room_list.changed().await;
    state.events.publish(ServerEvent::RoomListUpdated).await;
}

pub async fn get(
    State(state): State<AppState>,
    caller: Option<Caller>,
    params: Params,
) -> Result<Json<Room>, ApiError> {
    let room_id = params.id("room_id")?.ok_or(ApiError::MissingRoomId)?;
    let viewer = caller.map(|Caller(c)| c);
    let room = visible_room(&state, room_id, viewer.as_deref()).await?;
    Ok(Json(room.visible_to(viewer.as_deref())))
}

/// A private room's key: required, non-blank, within the limit.
fn access_key<'b>(body: &'b Body, field: &str, missing: ApiError) -> Result<&'b str, ApiError> {
    let key = body.text(field)?.ok_or(missing)?;
    check_len(field, key, ACCESS_KEY_MAX)?;
    Ok(key)
}

pub async fn create(
    State(state): State<AppState>,
    Caller(owner): Caller,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let name = body.text("room_name")?.ok_or(ApiError::MissingRoomName)?;
    check_len("room_name", name, ROOM_NAME_MAX)?;
    // A key is held to its limit even when a public room ignores it.
    if let Some(key) = body.text("access_key")? {
        check_len("access_key", key, ACCESS_KEY_MAX)?;
    }
    let access_key = if body.flag("is_private")?.unwrap_or(false) {
        Some(access_key(&body, "access_key", ApiError::MissingAccessKey)?.to_owned())
    } else {
        None
    };
    // A key taken by another room says so: a guess at that room's key,
    // throttled like a wrong key on `join_private`.
    let keys = [super::access_key_key(&owner)];
    if access_key.is_some() {
        super::refuse_if_throttled(&state, &keys).await?;
    }
    let room = NewRoom {
        name: name.to_owned(),
        owner,
        access_key,
    };
    let room_id = match state.store.create_room(&room, now()).await {
        Err(StoreError::Conflict) => {
            super::count_failure(&state, &keys).await;
            return Err(ApiError::DuplicateAccessKey);
        }
        other => other?,
    };
    tracing::info!(room_id, owner = room.owner, "room created");
    room_list_changed(&state).await;
    Ok(Json(
        json!({ "message": "Room created successfully", "room_id": room_id }),
    ))
}

pub async fn edit(
    State(state): State<AppState>,
    Caller(caller): Caller,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let room_id = body.id("room_id")?.ok_or(ApiError::MissingRoomId)?;
    let name = body.text("new_name")?;
    let is_private = body.flag("is_private")?;
    if let Some(key) = body.text("new_access_key")? {
        check_len("new_access_key", key, ACCESS_KEY_MAX)?;
    }
    let room = visible_room(&state, room_id, Some(&caller)).await?;
    if room.room_owner != caller {
        return Err(ApiError::NotOwner);
    }
    let name = name.ok_or(ApiError::EmptyRoomName)?;
    check_len("new_name", name, ROOM_NAME_MAX)?;
    let current_key = room.access_key.clone();
    let access_key = match (is_private, room.access_key) {
        (Some(false), _) | (None, None) => None,
        // Privacy not mentioned: a private room keeps its key unless given a new one.
        (None, Some(current)) if body.text("new_access_key")?.is_none() => Some(current),
        _ => Some(access_key(&body, "new_access_key", ApiError::MissingNewAccessKey)?.to_owned()),
    };
    let made_private = !room.is_private && access_key.is_some();
    let keys = [super::access_key_key(&caller)];
    let new_key = access_key.is_some() && access_key != current_key;
    if new_key {
        super::refuse_if_throttled(&state, &keys).await?;
    }
    let edit = RoomEdit {
        room_id,
        name: name.to_owned(),
        access_key,
    };
    match state.store.update_room(&edit).await {
        Err(StoreError::Conflict) => {
            super::count_failure(&state, &keys).await;
            return Err(ApiError::DuplicateAccessKey);
        }
        other => other?,
    }
    tracing::info!(room_id, made_private, "room edited");
    if made_private {
        // Sockets of non-members leave it before the owner hears it is done.
        state
            .events
            .publish_now(ServerEvent::RoomMadePrivate { room_id })
            .await;
    }
    room_list_changed(&state).await;
    Ok(message("Room edited successfully"))
}

pub async fn delete(
    State(state): State<AppState>,
    Caller(caller): Caller,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let room_id = body.id("room_id")?.ok_or(ApiError::MissingRoomId)?;
    // Only the owner may delete; to anyone else the room does not exist.
    let room = state
        .store
        .room(room_id)
        .await?
        .ok_or(ApiError::RoomNotFound)?;
    if room.room_owner != caller || !state.store.delete_room(room_id).await? {
        return Err(ApiError::RoomNotFound);
    }
    tracing::info!(room_id, "room deleted");
    state
        .events
        .publish(ServerEvent::RoomDeleted { room_id })
        .await;
    room_list_changed(&state).await;
    Ok(message("Room deleted successfully"))
}
