//! Serving HTTP: every process's server loop (TCP_NODELAY, CORS, graceful
//! shutdown) and the operational endpoints it always serves: `/healthz`
//! (alive), `/readyz` (its dependencies answer) and `/metrics` (Prometheus).

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use axum::serve::ListenerExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use tower_http::cors::{AllowOrigin, Any, CorsLayer};

use crate::bus::Bus;
use crate::chat_log::ChatLog;
use crate::presence::Presence;
use crate::store::Store;
use crate::telemetry::Metrics;

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
    let r = &state.readiness;
    let mut failed = Vec::new();
    if r.shutdown.is_cancelled() {
        failed.push("shutting down");
    }
    if let Some(store) = &r.store
        && !answers(store.ping()).await
    {
        failed.push("database");
    }
    if let Some(bus) = &r.bus
        && bus.check_ready().is_err()
    {
        failed.push("nats");
    }
    if let Some(log) = &r.chat_log
        && log.check_ready().is_err()
        && !failed.contains(&"nats")
    {
        failed.push("nats");
    }
    if let Some(presence) = &r.presence
        && !answers(presence.check_ready()).await
    {
        failed.push("redis");
    }
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
) -> std::io::Result<()> {
    let shutdown = readiness.shutdown.clone();
    let app = router(readiness, metrics.clone())
        .merge(app)
        .layer(axum::middleware::from_fn_with_state(
            metrics,
            crate::telemetry::track_http,
        ))
        .layer(cors(allowed_origins.as_deref()));
    tracing::info!(addr = %listener.local_addr()?, "listening");
    // Small writes (a Socket.IO packet, an API answer) go out at once:
    // Nagle's algorithm would hold the second of two back until the
    // client's delayed ACK, about 40 ms.
    let listener = listener.tap_io(|tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::warn!(error = %e, "cannot set TCP_NODELAY");
        }
    });
    let server =
        axum::serve(listener, app).with_graceful_shutdown(shutdown.clone().cancelled_owned());
    // In-flight requests get a moment to finish; an Engine.IO long poll,
    // which would wait for its ping interval, is not waited for.
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(REQUEST_GRACE).await;
    };
    tokio::select! {
        served = server => served,
        () = grace => {
            tracing::info!("requests still open after the grace period are dropped");
            Ok(())
        }
    }
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
