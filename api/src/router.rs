//! Every route of the REST API, in one list.

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;

use crate::body::BODY_LIMIT;
use crate::error::ApiError;
use crate::routes::{chat, members, rooms, sessions, users};
use crate::state::AppState;

/// The OpenAPI document of these routes (`docs/openapi.yaml`, as JSON:
/// `scripts/openapi.py` writes it, and CI checks it is current).
const OPENAPI: &str = include_str!("../openapi.json");

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

/// The API routes under `/api`, with body limit and JSON fallbacks (CORS
/// covers every path of the process: `common::edge::serve::serve`).
pub fn routes(deps: crate::Deps) -> Router {
    let state = AppState::new(deps);
    Router::new()
        .route("/api/register", post(users::register))
        .route("/api/login", post(users::login))
        .route("/api/refresh", post(sessions::refresh))
        .route("/api/logout", post(sessions::logout))
        .route("/api/user/change_password", post(users::change_password))
        .route("/api/user/get_info", get(users::info))
        .route("/api/users/online", get(users::online))
        .route("/api/rooms", get(rooms::list))
        .route("/api/room", get(rooms::get))
        .route("/api/room/create", post(rooms::create))
        .route("/api/room/edit", post(rooms::edit))
        .route("/api/room/delete", post(rooms::delete))
        .route("/api/room/join_public", post(members::join_public))
        .route("/api/room/join_private", post(members::join_private))
        .route("/api/room/leave", post(members::leave))
        .route("/api/user_kick", post(members::kick))
        .route("/api/user_rooms", get(members::user_rooms))
        .route("/api/user_list", get(members::user_list))
        .route("/api/chat_history", get(chat::history))
        .route("/api/openapi.json", get(openapi))
        .merge(crate::web::routes())
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(axum::middleware::from_fn(crate::body::buffer))
        .layer(CatchPanicLayer::custom(|_| -> Response {
            ApiError::Internal("handler panicked".into()).into_response()
        }))
        .layer(axum::middleware::from_fn_with_state(
            state.clone(),
            crate::proxy_errors::answer,
        ))
        .with_state(state)
}
