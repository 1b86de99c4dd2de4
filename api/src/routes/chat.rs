//! Chat history, paginated by `chat_id`.

use axum::Json;
use axum::extract::State;
use common::domain::{ChatMessage, HISTORY_MAX, HistoryQuery};

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
    let query = HistoryQuery {
        room_id,
        before,
        limit,
    };
    // The page is read while the room's visibility is checked (neither
    // waits for the other's round trips); it is answered only if the
    // viewer may see the room.
    let (visible, page) = tokio::join!(
        visible_room(&state, room_id, viewer.as_deref()),
        state.chat_log.history(query)
    );
    visible?;
    Ok(Json(page?))
}
