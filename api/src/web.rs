//! The web client and the API reference: static files compiled into the
//! binary, so the API (and `komunikator all`) serve a working chat at `/`
//! and the OpenAPI document rendered by Redoc at `/api/docs`, with no build
//! step and no CDN.

use axum::Router;
use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;

const INDEX: &str = include_str!("../web/index.html");
const APP: &str = include_str!("../web/app.js");
const STYLE: &str = include_str!("../web/style.css");
const DOCS: &str = include_str!("../web/docs.html");
const DOCS_INIT: &str = include_str!("../web/docs.js");
/// Redoc's standalone bundle (`api/web/redoc/README.md`: version, hashes).
const REDOC: &str = include_str!("../web/redoc/redoc.standalone.js");
const BUNDLE_CACHE: &str = "public, max-age=86400";

/// `/`, `/app.js` and `/style.css`; `/api/docs` and its two scripts.
pub fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route(
            "/",
            get(|| async { file("text/html; charset=utf-8", INDEX) }),
        )
        .route(
            "/app.js",
            get(|| async { file("text/javascript; charset=utf-8", APP) }),
        )
        .route(
            "/style.css",
            get(|| async { file("text/css; charset=utf-8", STYLE) }),
        )
        .route(
            "/api/docs",
            get(|| async { docs_file("text/html; charset=utf-8", DOCS, "no-cache") }),
        )
        .route(
            "/api/docs/init.js",
            get(|| async { docs_file("text/javascript; charset=utf-8", DOCS_INIT, "no-cache") }),
        )
        // The page asks for the bundle with its version in the query: a
        // day in the cache, and a new version is a new URL.
        .route(
            "/api/docs/redoc.standalone.js",
            get(|| async { docs_file("text/javascript; charset=utf-8", REDOC, BUNDLE_CACHE) }),
        )
}

/// What the client's page may load and do: only its own files and its
/// own origin (HTTP and WebSocket: CSP's `'self'` covers both), no inline
/// script or style, no plugin, and no other site may frame it (a
/// clickjacking page could otherwise have a user click "Delete room").
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; \
    base-uri 'none'; frame-ancestors 'none'";

/// What the API reference page may do: the client's policy, except that
/// Redoc styles its components inline (styled-components) and runs its
/// search in a worker made from a blob. It still runs no inline script and
/// talks to its own origin only (to fetch `openapi.json`).
const DOCS_CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
    style-src 'self' 'unsafe-inline'; img-src 'self' data:; font-src 'self' data:; \
    connect-src 'self'; worker-src blob:; form-action 'none'; base-uri 'none'; \
    frame-ancestors 'none'";

fn file(content_type: &'static str, body: &'static str) -> impl IntoResponse {
    static_file(content_type, body, "no-cache", CONTENT_SECURITY_POLICY)
}

fn docs_file(
    content_type: &'static str,
    body: &'static str,
    cache: &'static str,
) -> impl IntoResponse {
    static_file(content_type, body, cache, DOCS_CONTENT_SECURITY_POLICY)
}

fn static_file(
    content_type: &'static str,
    body: &'static str,
    cache: &'static str,
    policy: &'static str,
) -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, cache),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
            (header::CONTENT_SECURITY_POLICY, policy),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
}
