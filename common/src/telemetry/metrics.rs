//! The process-wide Prometheus registry, with the metrics every service
//! has (HTTP requests, readiness, dependencies).

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    method: String,
    route: String,
    status: u16,
}

/// The metrics of one process, rendered at `/metrics`.
#[derive(Clone)]
pub struct Metrics {
    registry: Arc<Registry>,
    http_requests: Family<HttpLabels, Counter>,
    http_seconds: Family<HttpLabels, Histogram>,
    ready: Gauge,
    dependency_up: Family<DependencyLabels, Gauge>,
    refused_connections: Counter,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DependencyLabels {
    dependency: &'static str,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn latency_histogram() -> Histogram {
    // 0.25 ms .. ~8 s
    Histogram::new(exponential_buckets(0.000_25, 2.0, 16))
}

impl Metrics {
    /// An empty registry, for the services of a process to register their
    /// metrics in before [`Self::from_registry`].
    pub fn registry() -> Registry {
        Registry::with_prefix("komunikator")
    }

    /// The process's metrics: the HTTP metrics added to `registry`.
    pub fn from_registry(mut registry: Registry) -> Self {
        let http_requests = Family::<HttpLabels, Counter>::default();
        let http_seconds =
            Family::<HttpLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "http_requests",
            "HTTP requests answered",
            http_requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            http_seconds.clone(),
        );
        let ready = Gauge::default();
        registry.register(
            "ready",
            "1 when the process is ready (what /readyz says), else 0",
            ready.clone(),
        );
        let dependency_up = Family::<DependencyLabels, Gauge>::default();
        registry.register(
            "dependency_up",
            "1 when the dependency (database, nats, redis) answers, else 0",
            dependency_up.clone(),
        );
        let refused_connections = Counter::default();
        registry.register(
            "http_connections_refused",
            "Connections closed at once: their address held too many that had sent no request",
            refused_connections.clone(),
        );
        Self {
            registry: Arc::new(registry),
            http_requests,
            http_seconds,
            ready,
            dependency_up,
            refused_connections,
        }
    }

    pub(crate) fn count_refused_connection(&self) {
        self.refused_connections.inc();
    }

    pub(crate) fn set_ready(&self, ready: bool) {
        self.ready.set(i64::from(ready));
    }

    pub(crate) fn set_dependency(&self, dependency: &'static str, up: bool) {
        self.dependency_up
            .get_or_create(&DependencyLabels { dependency })
            .set(i64::from(up));
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        if let Err(e) = prometheus_client::encoding::text::encode(&mut out, &self.registry) {
            tracing::error!(error = %e, "metrics not encoded");
        }
        out
    }
}

/// Middleware: counts and times every request by route template (never by raw
/// path, which would make one series per room id).
pub async fn track_http(State(metrics): State<Metrics>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = req.method().to_string();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(req).await;
    let labels = HttpLabels {
        method,
        route,
        status: response.status().as_u16(),
    };
    metrics.http_requests.get_or_create(&labels).inc();
    metrics
        .http_seconds
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    response
}
