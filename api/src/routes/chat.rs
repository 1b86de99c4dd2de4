//! Chat history, paginated by `chat_id`.

use axum::Json;
use axum::extract::State;
use common::domain::{ChatId, ChatMessage, HISTORY_MAX, HistoryQuery};

use super::visible_room;
use crate::error::ApiError;
use crate::extract::{Caller, Params};
use crate::state::AppState;

pub async fn history(
    State(state): State<AppState>,
    caller: Option<Caller>,
    params: Params,
) -> Result<Json<Vec<ChatMessage>>, ApiError> {
    let room_id = params.id("room_id")?.ok_or(ApiError::MissingRoomId)?;
    let before = params.id("before")?;
    let limit = params
        .int_in("limit", 1..=HISTORY_MAX)?
        .unwrap_or(HISTORY_MAX);
    let viewer = caller.map(|Caller(c)| c);
    visible_room(&state, room_id, viewer.as_deref()).await?;
    let query = HistoryQuery {
        room_id,
        before,
        limit,
    };
    Ok(Json(page(&state, query).await?))
}

/// A page of the room's history: the store's rows merged with the messages
/// acknowledged but not stored yet, so that a message is in every read once
/// its sender has the ack (CONTRACT.md, "Read your writes").
async fn page(state: &AppState, query: HistoryQuery) -> Result<Vec<ChatMessage>, ApiError> {
    // The bus first: the store then holds everything up to `after`.
    let unstored = state.bus.unstored(Some(query.room_id)).await?;
    let mut rows = state.store.history(query).await?;
    let before = query.before.unwrap_or(ChatId::MAX);
    if !unstored.messages.is_empty() {
        rows.extend(unstored.messages.into_iter().filter(|m| m.chat_id < before));
        rows.sort_unstable_by_key(|m| m.chat_id);
        rows.dedup_by_key(|m| m.chat_id);
    }
    let excess = rows.len().saturating_sub(query.limit as usize);
    rows.drain(..excess);
    Ok(rows)
}
