//! Every route of the REST API, in one list.

use std::time::Duration;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::http::{HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::error::ApiError;
use crate::routes::{chat, members, rooms, users};
use crate::state::AppState;

/// Request bodies above this size are refused with 413.
pub const BODY_LIMIT: usize = 64 * 1024;

/// The API routes under `/api`, with body limit, CORS and JSON fallbacks.
/// `allowed_origins`: `None` allows any origin.
pub fn router(state: AppState, allowed_origins: Option<&[String]>) -> Router {
    Router::new()
        .route("/api/register", post(users::register))
        .route("/api/login", post(users::login))
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
        .merge(crate::web::routes())
        .fallback(|| async { ApiError::NoRoute })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(DefaultBodyLimit::max(BODY_LIMIT))
        .layer(CatchPanicLayer::custom(|_| -> Response {
            ApiError::Internal("handler panicked".into()).into_response()
        }))
        .layer(cors(allowed_origins))
        .with_state(state)
}

fn cors(allowed_origins: Option<&[String]>) -> CorsLayer {
    let layer = CorsLayer::new()
        .allow_methods([Method::GET, Method::POST, Method::OPTIONS])
        .allow_headers([header::AUTHORIZATION, header::CONTENT_TYPE])
        .max_age(Duration::from_secs(600));
    match allowed_origins {
        None => layer.allow_origin(Any),
        Some(origins) => layer.allow_origin(AllowOrigin::list(
            origins.iter().filter_map(|o| HeaderValue::from_str(o).ok()),
        )),
    }
}
