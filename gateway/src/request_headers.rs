//! What a socket keeps of the HTTP request that opened it.

/// The request headers a socket keeps: what Engine.IO needs to open it
/// (`sec-websocket-key`, a polling request's `content-type`) and what the
/// gateway reads when it connects (see `connect`), or logs when it refuses,
/// and the trace context the connect span continues.
pub const KEPT_HEADERS: [&str; 8] = [
    "sec-websocket-key",
    "content-type",
    "origin",
    "authorization",
    "user-agent",
    "x-forwarded-for",
    "traceparent",
    "tracestate",
];

/// hyper parses a request's URI and header values as slices of the
/// connection's read buffer (8 KiB and more), and socketioxide keeps every
/// socket's request parts for its lifetime: so each connection held that
/// whole buffer. Copying the few bytes out lets it go (measured: about
/// 16 KiB less per idle connection). Only [`KEPT_HEADERS`] are copied: a
/// browser sends a dozen more (cookies among them) that nothing reads.
pub async fn detach_request(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let headers = std::mem::take(request.headers_mut());
    // Sized for what is kept: a map grown one header at a time holds room
    // for twice as many.
    let kept = KEPT_HEADERS
        .iter()
        .map(|name| headers.get_all(*name).iter().count())
        .sum();
    let mut copied = axum::http::HeaderMap::with_capacity(kept);
    for name in KEPT_HEADERS {
        for value in headers.get_all(name) {
            let mut fresh = axum::http::HeaderValue::from_bytes(value.as_bytes())
                .unwrap_or_else(|_| value.clone());
            fresh.set_sensitive(value.is_sensitive());
            copied.append(name, fresh);
        }
    }
    *request.headers_mut() = copied;
    if let Ok(uri) = request.uri().to_string().parse() {
        *request.uri_mut() = uri;
    }
    next.run(request).await
}
