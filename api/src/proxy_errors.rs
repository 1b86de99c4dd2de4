//! JSON answers for a reverse proxy's own errors. ingress-nginx, given
//! `custom-http-errors` and this service as its `default-backend`
//! (deploy/k8s/ingress.yaml), sends a request it failed (a body over its
//! limit, no ready replica) here with the status in `X-Code`: answering in
//! the contract's shape means clients never get the proxy's HTML page.

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::error::ApiError;

/// Middleware: a request carrying a proxy error code gets its JSON answer.
pub async fn answer(request: Request, next: Next) -> Response {
    let code = request
        .headers()
        .get("x-code")
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
