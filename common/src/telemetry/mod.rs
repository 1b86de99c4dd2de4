//! Telemetry: structured logs, Prometheus metrics, OpenTelemetry traces.

pub mod logs;
pub mod metrics;
pub mod otel;
pub mod trace_context;
