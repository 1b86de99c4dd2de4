//! Serving HTTP: every process's server loop (TCP_NODELAY, CORS, graceful
//! shutdown) and the operational endpoints it always serves: `/healthz`
//! (alive), `/readyz` (its dependencies answer) and `/metrics` (Prometheus).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use std::collections::HashMap;
use std::net::IpAddr;

use axum::body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};
use tracing::Instrument;

use crate::bus::Bus;
use crate::chat_log::ChatLog;
use crate::otel::TraceParent;
use crate::presence::Presence;
use crate::store::Store;
use crate::sync::Locked;
use crate::telemetry::Metrics;
use crate::throttle::ProxyNet;

/// What a process depends on; `/readyz` checks each one that is present.
#[derive(Clone, Default)]
pub struct Readiness {
    pub store: Option<Store>,
    pub bus: Option<Arc<dyn Bus>>,
    pub chat_log: Option<Arc<dyn ChatLog>>,
    pub presence: Option<Arc<dyn Presence>>,
    /// Cancelled when the process starts shutting down: it then reports not
    /// ready, so load balancers stop sending it new work while it drains.
    pub shutdown: CancellationToken,
}

#[derive(Clone)]
struct OpsState {
    readiness: Readiness,
    metrics: Metrics,
}

/// The router with `/healthz`, `/readyz` and `/metrics`.
pub fn router(readiness: Readiness, metrics: Metrics) -> Router {
    Router::new()
        .route(
            "/healthz",
            get(|| async { Json(json!({ "status": "ok" })) }),
        )
        .route("/readyz", get(ready))
        .route("/metrics", get(render_metrics))
        .with_state(OpsState { readiness, metrics })
}

const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

async fn ready(State(state): State<OpsState>) -> Response {
    let failed = check(&state.readiness, &state.metrics).await;
    if failed.is_empty() {
        Json(json!({ "status": "ready" })).into_response()
    } else {
        tracing::warn!(?failed, "not ready");
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({ "status": "not ready", "failed": failed })),
        )
            .into_response()
    }
}

/// What keeps the process from being ready (nothing: ready), also set in
/// the `ready` and `dependency_up` gauges.
async fn check(r: &Readiness, metrics: &Metrics) -> Vec<&'static str> {
    let mut failed = Vec::new();
    if r.shutdown.is_cancelled() {
        failed.push("shutting down");
    }
    for (dependency, up) in dependencies(r).await {
        metrics.set_dependency(dependency, up);
        if !up {
            failed.push(dependency);
        }
    }
    metrics.set_ready(failed.is_empty());
    failed
}

/// Each dependency the process has, and whether it answers now. The bus
/// and the chat log are one dependency, NATS (in single-node mode both are
/// in process, and always up).
async fn dependencies(r: &Readiness) -> Vec<(&'static str, bool)> {
    let mut dependencies = Vec::with_capacity(3);
    if let Some(store) = &r.store {
        dependencies.push(("database", answers(store.ping()).await));
    }
    let bus = r.bus.as_ref().map(|bus| bus.check_ready().is_ok());
    let log = r.chat_log.as_ref().map(|log| log.check_ready().is_ok());
    if bus.is_some() || log.is_some() {
        dependencies.push(("nats", bus.unwrap_or(true) && log.unwrap_or(true)));
    }
    if let Some(presence) = &r.presence {
        dependencies.push(("redis", answers(presence.check_ready()).await));
    }
    dependencies
}

/// How often the readiness gauges are brought up to date between probes.
const GAUGE_INTERVAL: Duration = Duration::from_secs(5);

/// Keeps the readiness gauges current until shutdown (alerts read them
/// even when no probe asks).
async fn keep_gauges(readiness: Readiness, metrics: Metrics) {
    let mut tick = tokio::time::interval(GAUGE_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = readiness.shutdown.cancelled() => {
                metrics.set_ready(false);
                return;
            }
            _ = tick.tick() => {
                check(&readiness, &metrics).await;
            }
        }
    }
}

/// True when `check` succeeds within [`CHECK_TIMEOUT`].
async fn answers<E>(check: impl std::future::Future<Output = Result<(), E>>) -> bool {
    matches!(tokio::time::timeout(CHECK_TIMEOUT, check).await, Ok(Ok(())))
}

async fn render_metrics(State(state): State<OpsState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        state.metrics.render(),
    )
        .into_response()
}

/// What the server enforces on every connection (docs/protocol.md, "Accounts
/// and abuse"): slow and idle connections are closed, and one address
/// cannot hold many connections that are not authenticated yet: those that
/// have not sent a request, and Engine.IO sockets whose client has not
/// authenticated (see [`PendingSocket`]).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Headers of a request within this (also how long a keep-alive
    /// connection may stay idle).
    pub header_read_timeout: Duration,
    /// The body within this of the headers.
    pub body_read_timeout: Duration,
    /// Connections of one address before their first request's headers,
    /// and its Engine.IO sockets before they authenticate; 0: no cap.
    pub max_pending_per_address: usize,
    /// Exempt from the cap (a load balancer holds many connections).
    pub trusted_proxies: Vec<ProxyNet>,
}

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
            crate::telemetry::track_http,
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
            let address = crate::throttle::address_group(peer.ip());
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

/// Counts the Engine.IO sockets of each client address until they
/// authenticate, against the same cap as connections without a request:
/// an upgrade to WebSocket, or a long-polling session, does not make a
/// client that has shown no token cheap to hold.
#[derive(Clone)]
struct SocketGate {
    pending: PendingConnections,
    limits: ConnectionLimits,
    metrics: Metrics,
}

/// What the request that opened an Engine.IO socket carries (and the socket
/// keeps with its request): a pending slot of its client's address, given
/// back once the socket authenticates ([`PendingSocket::authenticated`]) or
/// when the socket is gone.
#[derive(Clone)]
pub struct PendingSocket(Arc<std::sync::Mutex<Option<PendingSlot>>>);

impl PendingSocket {
    /// The socket authenticated: it no longer counts against its address.
    pub fn authenticated(&self) {
        self.0.locked().take();
    }
}

impl SocketGate {
    /// Lets `request` through, giving an Engine.IO handshake (a request on
    /// `/socket.io/` without a session id) a pending slot of its client's
    /// address: the connection's own (`first`, when it is the connection's
    /// first request from that address), or a new one. False when the
    /// address has no slot left: the request is answered 429.
    fn admit(
        &self,
        request: &mut hyper::Request<Incoming>,
        peer: std::net::SocketAddr,
        first: Option<PendingSlot>,
    ) -> bool {
        let max = self.limits.max_pending_per_address;
        if max == 0 || !is_engine_io_handshake(request) {
            return true;
        }
        let forwarded = crate::throttle::forwarded_for(request.headers());
        let client = crate::throttle::client_address(
            peer.ip(),
            forwarded.as_deref(),
            &self.limits.trusted_proxies,
        );
        let address = crate::throttle::address_group(client);
        let slot = match first {
            Some(slot) if slot.address == address => Some(slot),
            _ => self.pending.enter(address, max),
        };
        let Some(slot) = slot else {
            self.metrics.count_refused_connection();
            tracing::debug!(%client, "socket refused: too many unauthenticated from its address");
            return false;
        };
        request
            .extensions_mut()
            .insert(PendingSocket(Arc::new(std::sync::Mutex::new(Some(slot)))));
        true
    }
}

/// True for the request that opens an Engine.IO socket: on its path, with
/// no session id yet (later polls, posts and the upgrade carry `sid=`).
fn is_engine_io_handshake<B>(request: &hyper::Request<B>) -> bool {
    let uri = request.uri();
    uri.path().starts_with("/socket.io")
        && !uri
            .query()
            .unwrap_or("")
            .split('&')
            .any(|pair| pair.starts_with("sid="))
}

/// Connections per address that have not sent a request's headers yet.
#[derive(Clone, Default)]
struct PendingConnections(Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>);

/// One pending connection, counted until dropped.
struct PendingSlot {
    pending: PendingConnections,
    address: IpAddr,
}

impl PendingConnections {
    /// A slot for one more connection of `address`; `None` at `max`.
    fn enter(&self, address: IpAddr, max: usize) -> Option<PendingSlot> {
        let mut counts = self.0.locked();
        let count = counts.entry(address).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(PendingSlot {
            pending: self.clone(),
            address,
        })
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut counts = self.pending.0.locked();
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}

/// Middleware: the request's body must arrive within `limit` of its
/// headers; past it, reading the body fails and the connection is closed
/// after the answer.
async fn body_deadline(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    // Most requests (GETs, Engine.IO polls, upgrades) have no body: nothing
    // to time, nothing to allocate.
    if http_body::Body::is_end_stream(request.body()) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let late = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let body = Body::new(Deadline {
        inner: body,
        sleep: Box::pin(tokio::time::sleep(limit)),
        late: late.clone(),
    });
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if late.load(std::sync::atomic::Ordering::Relaxed) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The error a request body's stream ends with once `BODY_READ_TIMEOUT_SECS`
/// passed before it all arrived (the one body deadline every route has).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyDeadlinePassed;

impl BodyDeadlinePassed {
    /// Whether a body read failed for this.
    pub fn caused(error: &axum::Error) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = cause {
            if e.is::<Self>() {
                return true;
            }
            cause = e.source();
        }
        false
    }
}

/// A request body that fails once its deadline passes.
struct Deadline {
    inner: Body,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    late: Arc<std::sync::atomic::AtomicBool>,
}

impl http_body::Body for Deadline {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.inner.is_end_stream() {
            return std::task::Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.late.store(true, std::sync::atomic::Ordering::Relaxed);
            return std::task::Poll::Ready(Some(Err(axum::Error::new(BodyDeadlinePassed))));
        }
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

/// Middleware: a server span per request when traces are exported,
/// continuing the caller's trace (`traceparent`). The operational
/// endpoints and Engine.IO's transport requests get none (a socket's events
/// are traced by the gateway; its connect span continues the handshake's
/// `traceparent`).
async fn trace_http(req: Request, next: Next) -> Response {
    if !crate::otel::enabled() {
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
        crate::otel::fail(&span);
    }
    response
}

/// How long in-flight HTTP requests may take to finish after shutdown.
const REQUEST_GRACE: Duration = Duration::from_secs(3);

/// The CORS policy of every HTTP path: the methods and headers the API and
/// Engine.IO use, for the allowed origins (`None`: any).
pub fn cors(allowed_origins: Option<&[String]>) -> CorsLayer {
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
