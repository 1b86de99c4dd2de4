//! Memberships: join (public, or private by key), leave, kick, and lists.

use axum::Json;
use axum::extract::State;
use common::adapters::store::StoreError;
use common::domain::events::{ServerEvent, UserName};
use common::domain::{ACCESS_KEY_MAX, Member, Membership, Room, USER_NAME_MAX};
use serde_json::Value;

use super::{message, visible_room};
use crate::error::ApiError;
use crate::extract::{Body, Caller, Params, check_len};
use crate::state::AppState;

async fn join(state: &AppState, room: Room, user: &str) -> Result<Json<Value>, ApiError> {
    match state.store.add_member(room.room_id, user).await {
        Ok(true) => {}
        Ok(false) => return Err(ApiError::AlreadyInRoom),
        Err(StoreError::Missing) => return Err(ApiError::RoomNotFound),
        Err(e) => return Err(e.into()),
    }
    tracing::info!(room_id = room.room_id, user, "user joined room");
    state
        .events
        .publish(ServerEvent::UserListUpdated {
            room_id: room.room_id,
        })
        .await;
    Ok(message("Joined room successfully"))
}

pub async fn join_public(
    State(state): State<AppState>,
    Caller(user): Caller,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let room_id = body.id("room_id")?.ok_or(ApiError::MissingRoomId)?;
    let room = state.store.room(room_id).await?.filter(|r| !r.is_private);
    join(&state, room.ok_or(ApiError::RoomNotFound)?, &user).await
}

pub async fn join_private(
    State(state): State<AppState>,
    Caller(user): Caller,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let key = body.text("access_key")?.ok_or(ApiError::MissingAccessKey)?;
    check_len("access_key", key, ACCESS_KEY_MAX)?;
    // Wrong keys are throttled per user, like failed logins.
    let keys = [super::access_key_key(&user)];
    super::refuse_if_throttled(&state, &keys).await?;
    let Some(room) = state.store.private_room_by_key(key).await? else {
        super::count_failure(&state, &keys).await;
        return Err(ApiError::RoomNotFound);
    };
    join(&state, room, &user).await
}

pub async fn leave(
    State(state): State<AppState>,
    Caller(user): Caller,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    // Older clients also send `user_name`; the token decides who leaves.
    let room_id = body
        .id("room_id")?
        .ok_or(ApiError::MissingLeaveParameters)?;
    visible_room(&state, room_id, Some(&user)).await?;
    if !state.store.remove_member(room_id, &user).await? {
        return Err(ApiError::UserNotInRoom);
    }
    tracing::info!(room_id, user, "user left room");
    // Their sockets leave the room before anyone hears of it.
    state
        .events
        .publish(ServerEvent::MemberRemoved {
            room_id,
            user: UserName::new(user),
        })
        .await;
    state
        .events
        .publish_now(ServerEvent::UserListUpdated { room_id })
        .await;
    Ok(message("Left room successfully"))
}

pub async fn kick(
    State(state): State<AppState>,
    Caller(caller): Caller,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (Some(room_id), Some(target)) = (body.id("room_id")?, body.text("user_to_kick")?) else {
        return Err(ApiError::MissingKickParameters);
    };
    check_len("user_to_kick", target, USER_NAME_MAX)?;
    let room = visible_room(&state, room_id, Some(&caller)).await?;
    if room.room_owner != caller {
        return Err(ApiError::NotOwner);
    }
    let target = state
        .store
        .member(room_id, target)
        .await?
        .ok_or(ApiError::UserNotInRoom)?;
    if target == room.room_owner {
        return Err(ApiError::OwnerCannotBeKicked);
    }
    if !state.store.remove_member(room_id, &target).await? {
        return Err(ApiError::UserNotInRoom);
    }
    tracing::info!(room_id, user = target, "user kicked");
    state
        .events
        .publish(ServerEvent::UserListUpdated { room_id })
        .await;
    state
        .events
        .publish_now(ServerEvent::UserKicked {
            room_id,
            user: UserName::new(target),
        })
        .await;
    Ok(message("User kicked successfully"))
}

pub async fn user_rooms(
    State(state): State<AppState>,
    Caller(user): Caller,
) -> Result<Json<Vec<Membership>>, ApiError> {
    Ok(Json(state.store.memberships(&user).await?))
}

pub async fn user_list(
    State(state): State<AppState>,
    caller: Option<Caller>,
    params: Params,
) -> Result<Json<Vec<Member>>, ApiError> {
    let room_id = params.id("room_id")?.ok_or(ApiError::MissingRoomId)?;
    let viewer = caller.map(|Caller(c)| c);
    visible_room(&state, room_id, viewer.as_deref()).await?;
    Ok(Json(state.store.members(room_id).await?))
}
