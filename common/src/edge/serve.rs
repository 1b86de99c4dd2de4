//! Serving HTTP: every process's server loop (TCP_NODELAY, CORS, graceful
//! shutdown, the limits of `edge::pending` and `edge::deadline`), with the
//! operational endpoints of `edge::ops`.

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{MatchedPath, Request};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::edge::config::ConnectionLimits;
use crate::edge::cors::cors;
use crate::edge::deadline::body_deadline;
use crate::edge::ops::{Readiness, keep_gauges, router};
use crate::edge::pending::{PendingConnections, PendingSlot, SocketGate};
use crate::support::sync::Locked;
use crate::telemetry::metrics::Metrics;
use crate::telemetry::trace_context::TraceParent;

/// Serves `app` plus the operational endpoints on `listener` until `shutdown`
/// is cancelled, then lets in-flight requests finish. CORS covers every path
/// (`/socket.io/` included: browsers on another origin start Engine.IO with
/// long-polling requests); `allowed_origins: None` allows any origin.
pub async fn serve(
    app: Router,
    readiness: Readiness,
    metrics: Metrics,
    listener: tokio::net::TcpListener,
    allowed_origins: &Option<Vec<String>>,
    limits: ConnectionLimits,
) -> std::io::Result<()> {
    let shutdown = readiness.shutdown.clone();
    tokio::spawn(keep_gauges(readiness.clone(), metrics.clone()));
    let app = router(readiness, metrics.clone())
        .merge(app)
        .layer(axum::middleware::from_fn_with_state(
            metrics.clone(),
            crate::telemetry::metrics::track_http,
        ))
        .layer(axum::middleware::from_fn(trace_http))
        .layer(axum::middleware::from_fn_with_state(
            limits.body_read_timeout,
            body_deadline,
        ))
        .layer(cors(allowed_origins.as_deref()));
    tracing::info!(addr = %listener.local_addr()?, "listening");
    let connections = TaskTracker::new();
    let pending = PendingConnections::default();
    loop {
        let (tcp, peer) = tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of descriptors, most likely: let some close.
                    tracing::warn!(error = %e, "cannot accept a connection");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let exempt = limits.max_pending_per_address == 0
            || limits
                .trusted_proxies
                .iter()
                .any(|net| net.contains(peer.ip()));
        let slot = if exempt {
            None
        } else {
            let address = crate::edge::proxy::address_group(peer.ip());
            match pending.enter(address, limits.max_pending_per_address) {
                Some(slot) => Some(slot),
                None => {
                    metrics.count_refused_connection();
                    tracing::debug!(%peer, "connection refused: too many pending from its address");
                    continue;
                }
            }
        };
        let gate = SocketGate {
            pending: pending.clone(),
            limits: limits.clone(),
            metrics: metrics.clone(),
        };
        // Small writes (a Socket.IO packet, an API answer) go out at once:
        // Nagle's algorithm would hold the second of two back until the
        // client's delayed ACK, about 40 ms.
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
        connections.spawn(serve_connection(
            app.clone(),
            tcp,
            peer,
            slot,
            gate,
            shutdown.clone(),
        ));
    }
    drop(listener);
    connections.close();
    // In-flight requests get a moment to finish; an Engine.IO long poll,
    // which would wait for its ping interval, is not waited for.
    tokio::select! {
        () = connections.wait() => {}
        () = tokio::time::sleep(REQUEST_GRACE) => {
            tracing::info!("requests still open after the grace period are dropped");
        }
    }
    Ok(())
}

/// Serves one HTTP/1.1 connection (upgradable to WebSocket) of `app`: its
/// requests carry the peer's address (`ConnectInfo`), and its pending
/// `slot` is given back with its first request's headers, unless that
/// request opens an Engine.IO socket: the socket then holds it until it
/// authenticates (see [`SocketGate`]). On `shutdown` it finishes the
/// request in flight and closes.
async fn serve_connection(
    app: Router,
    tcp: tokio::net::TcpStream,
    peer: std::net::SocketAddr,
    slot: Option<PendingSlot>,
    gate: SocketGate,
    shutdown: CancellationToken,
) {
    let header_read_timeout = gate.limits.header_read_timeout;
    let slot = std::sync::Mutex::new(slot);
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        let first = slot.locked().take();
        let admitted = gate.admit(&mut request, peer, first);
        request
            .extensions_mut()
            .insert(axum::extract::ConnectInfo(peer));
        let app = app.clone();
        async move {
            if admitted {
                tower::ServiceExt::oneshot(app, request.map(Body::new)).await
            } else {
                let body = Json(json!({ "error": "Too many connections, try again later" }));
                Ok((StatusCode::TOO_MANY_REQUESTS, body).into_response())
            }
        }
    });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout)
        .serve_connection(TokioIo::new(tcp), service)
        .with_upgrades();
    let mut connection = std::pin::pin!(connection);
    let served = tokio::select! {
        served = connection.as_mut() => served,
        () = shutdown.cancelled() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(e) = served {
        tracing::debug!(%peer, error = %e, "connection ended with an error");
    }
}

/// Middleware: a server span per request when traces are exported,
/// continuing the caller's trace (`traceparent`). The operational
/// endpoints and Engine.IO's transport requests get none (a socket's events
/// are traced by the gateway; its connect span continues the handshake's
/// `traceparent`).
async fn trace_http(req: Request, next: Next) -> Response {
    if !crate::telemetry::otel::enabled() {
        return next.run(req).await;
    }
    let path = req.uri().path();
    if matches!(path, "/healthz" | "/readyz" | "/metrics") || path.starts_with("/socket.io") {
        return next.run(req).await;
    }
    let method = req.method().clone();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned());
    let span = crate::trace_span!(
        "http request",
        otel.name = %match &route {
            Some(route) => format!("{method} {route}"),
            None => method.to_string(),
        },
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        url.path = %path,
        url.scheme = "http",
        user_agent.original = req
            .headers()
            .get(header::USER_AGENT)
            .and_then(|v| v.to_str().ok()),
        http.response.status_code = tracing::field::Empty,
    );
    TraceParent::continue_http(&span, req.headers());
    let response = next.run(req).instrument(span.clone()).await;
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        crate::telemetry::otel::fail(&span);
    }
    response
}

/// How long in-flight HTTP requests may take to finish after shutdown.
const REQUEST_GRACE: Duration = Duration::from_secs(3);

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::http::StatusCode;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::edge::deadline::BodyDeadlinePassed;

    /// Serves `/echo` (the body back, or 408 once its deadline passed) with
    /// `limits` on a port of 127.0.0.1.
    async fn server(limits: ConnectionLimits) -> (std::net::SocketAddr, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let readiness = Readiness::default();
        let shutdown = readiness.shutdown.clone();
        let metrics = Metrics::from_registry(Metrics::registry());
        let echo = async |body: Body| match axum::body::to_bytes(body, 1024).await {
            Ok(bytes) => (StatusCode::OK, bytes).into_response(),
            Err(e) if BodyDeadlinePassed::caused(&e) => StatusCode::REQUEST_TIMEOUT.into_response(),
            Err(_) => StatusCode::BAD_REQUEST.into_response(),
        };
        let app = Router::new().route("/echo", axum::routing::post(echo));
        tokio::spawn(async move {
            serve(app, readiness, metrics, listener, &None, limits)
                .await
                .expect("served");
        });
        (addr, shutdown)
    }

    fn limits(max_pending: usize, timeouts: Duration) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: timeouts,
            body_read_timeout: timeouts,
            max_pending_per_address: max_pending,
            trusted_proxies: Vec::new(),
        }
    }

    /// Everything the server sends until it closes the connection.
    async fn until_closed(tcp: &mut TcpStream) -> String {
        let mut out = Vec::new();
        tokio::time::timeout(Duration::from_secs(30), tcp.read_to_end(&mut out))
            .await
            .expect("closed within 30 s")
            .expect("read");
        String::from_utf8_lossy(&out).into_owned()
    }

    /// Sends a request and reads its whole answer (`Connection: close`).
    async fn echo(tcp: &mut TcpStream, body: &str) -> String {
        let request = format!(
            "POST /echo HTTP/1.1\r\nhost: t\r\nconnection: close\r\ncontent-length: {}\r\n\r\n{body}",
            body.len()
        );
        tcp.write_all(request.as_bytes()).await.expect("sent");
        until_closed(tcp).await
    }

    #[tokio::test]
    async fn an_address_holds_at_most_max_pending_connections_until_one_sends_a_request() {
        let (addr, shutdown) = server(limits(2, Duration::from_secs(60))).await;
        let mut first = TcpStream::connect(addr).await.expect("connect");
        let _second = TcpStream::connect(addr).await.expect("connect");
        // The third is accepted after them and dropped at once, unanswered
        // (the others would wait a minute for headers).
        let mut third = TcpStream::connect(addr).await.expect("connect");
        assert_eq!(until_closed(&mut third).await, "");
        // A request's headers give the first one's slot back.
        let answer = echo(&mut first, "hi").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        assert!(answer.ends_with("hi"), "{answer}");
        let mut fourth = TcpStream::connect(addr).await.expect("connect");
        let answer = echo(&mut fourth, "again").await;
        assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
        shutdown.cancel();
    }

    #[tokio::test]
    async fn without_a_cap_every_connection_is_served() {
        let (addr, shutdown) = server(limits(0, Duration::from_secs(60))).await;
        let mut held = Vec::new();
        for _ in 0..20 {
            held.push(TcpStream::connect(addr).await.expect("connect"));
        }
        let mut last = TcpStream::connect(addr).await.expect("connect");
        assert!(echo(&mut last, "x").await.starts_with("HTTP/1.1 200"));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_connection_without_headers_in_time_is_closed() {
        let timeout = Duration::from_millis(300);
        let (addr, shutdown) = server(limits(2, timeout)).await;
        let mut idle = TcpStream::connect(addr).await.expect("connect");
        let started = std::time::Instant::now();
        until_closed(&mut idle).await;
        assert!(started.elapsed() >= timeout - Duration::from_millis(50));
        shutdown.cancel();
    }

    #[tokio::test]
    async fn a_body_late_past_its_deadline_is_408_and_the_connection_closed() {
        let timeout = Duration::from_millis(300);
        let (addr, shutdown) = server(limits(2, timeout)).await;
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        // Ten bytes announced, two sent, and the connection kept open.
        slow.write_all(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\nhi")
            .await
            .expect("sent");
        let answer = until_closed(&mut slow).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
        assert!(
            answer.to_lowercase().contains("connection: close"),
            "{answer}"
        );
        shutdown.cancel();
    }
}
