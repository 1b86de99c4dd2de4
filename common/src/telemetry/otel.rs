//! OpenTelemetry traces: export over OTLP/HTTP, configured only by the
//! standard `OTEL_*` variables, and the W3C trace context carried across
//! processes (HTTP headers, the Socket.IO handshake, NATS headers).
//!
//! Without an endpoint nothing is installed: [`enabled`] is false, the
//! [`trace_span!`](crate::trace_span) spans are `Span::none()` and no
//! header is written, so tracing costs one relaxed load per span site.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

use opentelemetry::KeyValue;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The target of every span made with [`trace_span!`](crate::trace_span):
/// the log filter always lets it through when traces are exported.
pub const TARGET: &str = "komunikator::trace";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// The process's dispatcher, for reading span ids into log lines.
static DISPATCH: OnceLock<tracing::Dispatch> = OnceLock::new();

/// True when traces are exported (an OTLP endpoint is configured).
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A span of the exported traces: an `info` span on [`TARGET`] when traces
/// are exported, else `Span::none()` (nothing recorded, nothing allocated).
/// Field names follow the OpenTelemetry semantic conventions; `otel.name`,
/// `otel.kind` and `otel.status_code` set the span's name, kind and status.
#[macro_export]
macro_rules! trace_span {
    ($name:literal $(, $($fields:tt)*)?) => {
        if $crate::telemetry::otel::enabled() {
            ::tracing::info_span!(target: "komunikator::trace", $name $(, $($fields)*)?)
        } else {
            ::tracing::Span::none()
        }
    };
}

/// A span continuing the current trace: as [`trace_span!`](crate::trace_span)
/// when the current span is part of a sampled trace, else `Span::none()`
/// (it would not be recorded). For work that is only worth a span as part
/// of a trace: store queries, Redis calls, publishing.
#[macro_export]
macro_rules! child_span {
    ($name:literal $(, $($fields:tt)*)?) => {
        if $crate::telemetry::otel::in_sampled_trace() {
            ::tracing::info_span!(target: "komunikator::trace", $name $(, $($fields)*)?)
        } else {
            ::tracing::Span::none()
        }
    };
}

/// A span of publishing on NATS, named and filled in as OpenTelemetry's
/// messaging conventions say (`send <what>`, kind producer, the system, the
/// operation and the destination subject), continuing the current trace
/// ([`child_span!`](crate::child_span)); more fields may follow.
#[macro_export]
macro_rules! nats_send_span {
    ($name:literal, $what:expr, $subject:expr $(, $($fields:tt)*)?) => {
        $crate::child_span!(
            $name,
            otel.name = %format_args!("send {}", $what),
            otel.kind = "producer",
            messaging.system = "nats",
            messaging.operation.type = "send",
            messaging.destination.name = %$subject
            $(, $($fields)*)?
        )
    };
}

/// A span of processing a message that came over NATS (`process <what>`,
/// kind consumer), as [`nats_send_span!`](crate::nats_send_span) names its
/// fields; its parent is the sender's span, adopted from the message's
/// headers by the caller ([`TraceParent::adopt`]).
#[macro_export]
macro_rules! nats_process_span {
    ($name:literal, $what:expr, $subject:expr $(, $($fields:tt)*)?) => {
        $crate::trace_span!(
            $name,
            otel.name = %format_args!("process {}", $what),
            otel.kind = "consumer",
            messaging.system = "nats",
            messaging.operation.type = "process",
            messaging.destination.name = %$subject
            $(, $($fields)*)?
        )
    };
}

/// True when the current span is part of a sampled trace.
pub fn in_sampled_trace() -> bool {
    enabled() && {
        let current = Span::current();
        !current.is_none() && current.context().span().span_context().is_sampled()
    }
}

/// What the standard variables ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportSettings {
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` or `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: String,
    /// `OTEL_SERVICE_NAME` when set, else this default.
    pub default_service_name: String,
}

impl ExportSettings {
    /// Reads the standard variables through `var`; `Ok(None)` when traces
    /// are not exported (no endpoint, `OTEL_SDK_DISABLED=true` or
    /// `OTEL_TRACES_EXPORTER=none`), `Err` for what this build cannot do.
    pub fn from_env(
        var: impl Fn(&str) -> Option<String>,
        service: &str,
    ) -> Result<Option<Self>, String> {
        let set = |name: &str| var(name).filter(|v| !v.trim().is_empty());
        if set("OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        match set("OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
            None | Some("otlp") => {}
            Some("none") => return Ok(None),
            Some(other) => {
                return Err(format!(
                    "OTEL_TRACES_EXPORTER={other} is not supported: use `otlp` or `none`"
                ));
            }
        }
        let Some(endpoint) = set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .or_else(|| set("OTEL_EXPORTER_OTLP_ENDPOINT"))
        else {
            return Ok(None);
        };
        let protocol = set("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| set("OTEL_EXPORTER_OTLP_PROTOCOL"));
        if let Some(protocol) = protocol
            && protocol.trim() != "http/protobuf"
        {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_PROTOCOL={protocol} is not supported: traces are exported \
                 as http/protobuf"
            ));
        }
        if !endpoint.trim().starts_with("http://") {
            return Err(format!(
                "OTEL_EXPORTER_OTLP_ENDPOINT={endpoint}: only http:// endpoints are supported \
                 (export to a collector agent next to the service; it forwards over TLS)"
            ));
        }
        Ok(Some(Self {
            endpoint: endpoint.trim().to_owned(),
            default_service_name: format!("komunikator-{service}"),
        }))
    }
}

/// Exports the spans of this process while alive; [`Self::shutdown`]
/// flushes what is still buffered.
#[derive(Debug, Default)]
pub struct Exporter {
    provider: Option<SdkTracerProvider>,
}

impl Exporter {
    /// Flushes and stops the export. Call it outside the async runtime: the
    /// exporter's HTTP client blocks.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(e) = provider.shutdown()
        {
            tracing::warn!(error = %e, "traces not flushed");
        }
    }
}

/// Builds the exporter and the tracing layer for `settings`. The sampler
/// (`OTEL_TRACES_SAMPLER`/`_ARG`), the batch processor (`OTEL_BSP_*`) and
/// the resource (`OTEL_RESOURCE_ATTRIBUTES`, `OTEL_SERVICE_NAME`) come from
/// the SDK's reading of the environment.
pub(crate) fn exporter(
    settings: &ExportSettings,
) -> Result<(Exporter, opentelemetry_sdk::trace::Tracer), String> {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| format!("cannot build the OTLP exporter: {e}"))?;
    let mut resource = Resource::builder();
    let attributes = std::env::var("OTEL_RESOURCE_ATTRIBUTES").unwrap_or_default();
    let in_env = |key: &str| {
        attributes
            .split(',')
            .any(|kv| kv.split('=').next().is_some_and(|k| k.trim() == key))
    };
    if std::env::var_os("OTEL_SERVICE_NAME").is_none() && !in_env("service.name") {
        resource = resource.with_service_name(settings.default_service_name.clone());
    }
    if !in_env("service.instance.id") {
        // Tells the replicas of a service apart: the pod (HOSTNAME in
        // Kubernetes) and the process.
        let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".into());
        let instance = format!("{host}-{}", std::process::id());
        resource = resource.with_attribute(KeyValue::new("service.instance.id", instance));
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = provider.tracer("komunikator");
    ENABLED.store(true, Ordering::Relaxed);
    Ok((
        Exporter {
            provider: Some(provider),
        },
        tracer,
    ))
}

/// Remembers the process's dispatcher (see [`ids`]).
pub(crate) fn set_dispatch(dispatch: &tracing::Dispatch) {
    let _ = DISPATCH.set(dispatch.clone());
}

/// The ids of the current span (see [`ids`]), traced spans included: they
/// are the registry's, whatever a layer's filter hides.
pub(crate) fn current_ids() -> Option<(String, String)> {
    use tracing::Subscriber as _;
    let registry = DISPATCH
        .get()?
        .downcast_ref::<tracing_subscriber::Registry>()?;
    let current = registry.current_span();
    ids(current.id()?)
}

/// The trace and span ids of the span `id`, hex encoded, when it is part of
/// an exported trace.
pub(crate) fn ids(id: &tracing::span::Id) -> Option<(String, String)> {
    let dispatch = DISPATCH.get()?;
    let cx = tracing_opentelemetry::get_otel_context(id, dispatch)?;
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// Marks `span` failed (`otel.status_code = "error"`), when it is recorded.
pub fn fail(span: &Span) {
    if !span.is_none() {
        span.set_status(opentelemetry::trace::Status::error(""));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(vars: &[(&str, &str)]) -> Result<Option<ExportSettings>, String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        ExportSettings::from_env(
            |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()),
            "gateway",
        )
    }

    #[test]
    fn no_endpoint_means_no_export() {
        assert_eq!(settings(&[]), Ok(None));
        assert_eq!(settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", " ")]), Ok(None));
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert_eq!(
            settings(&[endpoint, ("OTEL_SDK_DISABLED", "true")]),
            Ok(None)
        );
        assert_eq!(
            settings(&[endpoint, ("OTEL_TRACES_EXPORTER", "none")]),
            Ok(None)
        );
    }

    #[test]
    fn the_endpoint_and_the_default_service_name() {
        let got = settings(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318")]);
        assert_eq!(
            got,
            Ok(Some(ExportSettings {
                endpoint: "http://collector:4318".into(),
                default_service_name: "komunikator-gateway".into(),
            }))
        );
        let traces = settings(&[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://a:4318"),
            (
                "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
                "http://b:4318/v1/traces",
            ),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
        ]);
        assert_eq!(
            traces.map(|s| s.map(|s| s.endpoint)),
            Ok(Some("http://b:4318/v1/traces".into()))
        );
    }

    #[test]
    fn what_this_build_cannot_do_is_refused() {
        let endpoint = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317");
        for bad in [
            vec![endpoint, ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")],
            vec![
                endpoint,
                ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "http/json"),
            ],
            vec![endpoint, ("OTEL_TRACES_EXPORTER", "zipkin")],
            vec![("OTEL_EXPORTER_OTLP_ENDPOINT", "https://collector:4318")],
        ] {
            assert!(settings(&bad).is_err(), "{bad:?}");
        }
    }
}
