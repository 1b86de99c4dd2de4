//! Structured logs (JSON by default, with trace ids when traces are
//! exported) and the process-wide Prometheus registry.

use clap::{Args, ValueEnum};
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::filter_fn;
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::{Layer as _, SubscriberExt as _};
use tracing_subscriber::registry::LookupSpan;

use crate::telemetry::otel;

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
/// over OTLP/HTTP (see [`crate::telemetry::otel`]). `service` names the process in
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
