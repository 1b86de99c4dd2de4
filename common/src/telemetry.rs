//! Structured logs (JSON by default, with trace ids when traces are
//! exported) and the process-wide Prometheus registry.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use clap::{Args, ValueEnum};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

use crate::otel;

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Json,
    Text,
}

/// Logging options.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log format: one JSON object per line, or human-readable text.
    #[arg(
        long,
        env = "LOG_FORMAT",
        value_enum,
        default_value = "json",
        global = true
    )]
    pub log_format: LogFormat,
    /// Log filter, in `tracing` syntax (e.g. `info,komunikator=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info", global = true)]
    pub log_filter: String,
}

/// Installs the global tracing subscriber: logs to standard output and,
/// when the standard `OTEL_*` variables name an endpoint, spans exported
/// over OTLP/HTTP (see [`crate::otel`]). `service` names the process in
/// traces (`komunikator-<service>` unless `OTEL_SERVICE_NAME` is set).
/// The returned exporter is to be shut down on exit, which flushes it.
pub fn init_tracing(args: &LogArgs, service: &str) -> Result<otel::Exporter, String> {
    let settings = otel::ExportSettings::from_env(|name| std::env::var(name).ok(), service)?;
    let mut filter =
        EnvFilter::try_new(&args.log_filter).unwrap_or_else(|_| EnvFilter::new("info"));
    let (exporter, otel_layer) = match settings {
        Some(settings) => {
            let (exporter, tracer) = otel::exporter(&settings)?;
            // The traced spans whatever the log level; of the rest, only
            // events (inside traced spans they become span events).
            if let Ok(directive) = format!("{}=info", otel::TARGET).parse() {
                filter = filter.add_directive(directive);
            }
            // Only what the spans are for: no code location, thread or
            // target attributes, no activity timing on every poll, no
            // OpenTelemetry context attached on every enter (nothing here
            // reads it; spans parent through tracing's own context).
            let layer = tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_location(false)
                .with_threads(false)
                .with_target(false)
                .with_tracked_inactivity(false)
                .with_context_activation(false)
                .with_filter(filter_fn(|m| {
                    if m.is_event() {
                        // The SDK's own logs (export failures) go to the log only.
                        !m.target().starts_with("opentelemetry")
                    } else {
                        m.target() == otel::TARGET
                    }
                }));
            (exporter, Some(layer))
        }
        None => (otel::Exporter::default(), None),
    };
    // The log does not see the traced spans (formatting their fields for it
    // would cost more than the spans); a line still gets their ids.
    let untraced = || filter_fn(|m| !m.is_span() || m.target() != otel::TARGET);
    let (json, text) = match args.log_format {
        LogFormat::Json => (
            Some(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    .map_event_format(|f| WithTraceIds {
                        inner: f,
                        json: true,
                    })
                    .with_filter(untraced()),
            ),
            None,
        ),
        LogFormat::Text => (
            None,
            Some(
                tracing_subscriber::fmt::layer()
                    .map_event_format(|f| WithTraceIds {
                        inner: f,
                        json: false,
                    })
                    .with_filter(untraced()),
            ),
        ),
    };
    let subscriber = tracing_subscriber::registry()
        .with(filter)
        .with(json)
        .with(text)
        .with(otel_layer);
    let dispatch = tracing::Dispatch::new(subscriber);
    otel::set_dispatch(&dispatch);
    // Only fails when a subscriber is already installed (tests): keep that one.
    drop(tracing::dispatcher::set_global_default(dispatch));
    Ok(exporter)
}

/// A log line format with the `trace_id` and `span_id` of the span it was
/// written in, when that span is part of an exported trace.
struct WithTraceIds<F> {
    inner: F,
    json: bool,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        let ids = match event.parent() {
            Some(span) => otel::ids(span),
            None => otel::current_ids(),
        };
        let Some((trace_id, span_id)) = ids else {
            return self.inner.format_event(ctx, writer, event);
        };
        if !self.json {
            write!(writer, "trace_id={trace_id} span_id={span_id} ")?;
            return self.inner.format_event(ctx, writer, event);
        }
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        match line.strip_prefix('{') {
            Some(rest) => write!(
                writer,
                "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
            ),
            None => writer.write_str(&line),
        }
    }
}

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
