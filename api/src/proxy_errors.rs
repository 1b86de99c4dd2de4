//! JSON answers for a reverse proxy's own errors. ingress-nginx, given
//! `custom-http-errors` and this service as its `default-backend`
//! (deploy/k8s/ingress.yaml), sends a request it failed (a body over its
//! limit, no ready replica) here with the status in `X-Code`: answering in
//! the contract's shape means clients never get the proxy's HTML page.

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;
use crate::state::AppState;

/// Middleware: a request carrying a proxy error code gets its JSON answer,
/// when it comes from a trusted proxy (`TRUSTED_PROXIES`). From anyone
/// else the header is ignored: a client could otherwise make the API
/// answer 5xx at will, and fire the alerts that count them.
pub async fn answer(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let from_proxy = request
        .extensions()
        .get::<ConnectInfo<std::net::SocketAddr>>()
        .is_some_and(|peer| {
            state
                .trusted_proxies
                .iter()
                .any(|net| net.contains(peer.0.ip()))
        });
    let code = request
        .headers()
        .get("x-code")
        .filter(|_| from_proxy)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u16>().ok());
    match code {
        Some(413) => ApiError::TooLarge.into_response(),
        Some(502..=504) => {
            ApiError::Unavailable(format!("the proxy answered {}", code.unwrap_or(0)))
                .into_response()
        }
        _ => next.run(request).await,
    }
}
