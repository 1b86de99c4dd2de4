//! The operational endpoints every process serves: `/healthz` (alive),
//! `/readyz` (its dependencies answer) and `/metrics` (Prometheus), and the
//! readiness gauges kept current between probes.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::adapters::bus::Bus;
use crate::adapters::chat_log::ChatLog;
use crate::adapters::presence::Presence;
use crate::adapters::store::Store;
use crate::telemetry::metrics::Metrics;

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
pub(crate) async fn keep_gauges(readiness: Readiness, metrics: Metrics) {
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
