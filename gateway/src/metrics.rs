//! The gateway's own metrics, next to the HTTP ones every service has.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// One of the handled event names: static, so counting allocates nothing.
    pub event: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RefusalLabels {
    pub event: &'static str,
    pub code: u8,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ConnectRefusalLabels {
    pub reason: &'static str,
}

/// Registered once per process; cheap to clone.
#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    pub sockets: Gauge,
    pub events: Family<EventLabels, Counter>,
    pub refusals: Family<RefusalLabels, Counter>,
    /// Socket connections refused, by reason (bad token, origin, ...).
    pub connect_refusals: Family<ConnectRefusalLabels, Counter>,
    /// Time for the broker (or embedded store) to store a chat message.
    pub append_seconds: Histogram,
    /// Sockets disconnected because their send buffer was full.
    pub slow_consumers: Counter,
    /// Server events delivered to this gateway's sockets of a room (one per
    /// event and gateway, whatever the number of sockets).
    pub deliveries: Family<EventLabels, Counter>,
    /// Chat messages lost on their way to this gateway (a stream leader
    /// that died, a connection that was down) and read from the log.
    pub recovered: Counter,
}

impl GatewayMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            sockets: Gauge::default(),
            events: Family::default(),
            refusals: Family::default(),
            connect_refusals: Family::default(),
            append_seconds: Histogram::new(exponential_buckets(0.000_1, 2.0, 16)),
            slow_consumers: Counter::default(),
            deliveries: Family::default(),
            recovered: Counter::default(),
        };
        registry.register(
            "gateway_sockets",
            "Connected sockets",
            metrics.sockets.clone(),
        );
        registry.register(
            "gateway_events",
            "Client events handled",
            metrics.events.clone(),
        );
        registry.register(
            "gateway_refusals",
            "Client events refused, by code",
            metrics.refusals.clone(),
        );
        registry.register(
            "gateway_connect_refusals",
            "Socket connections refused, by reason",
            metrics.connect_refusals.clone(),
        );
        registry.register(
            "gateway_append_seconds",
            "Time to store a chat message durably",
            metrics.append_seconds.clone(),
        );
        registry.register(
            "gateway_slow_consumers",
            "Sockets disconnected because they did not read what was sent to them",
            metrics.slow_consumers.clone(),
        );
        registry.register(
            "gateway_deliveries",
            "Server events delivered to the sockets of a room on this gateway",
            metrics.deliveries.clone(),
        );
        registry.register(
            "gateway_recovered_messages",
            "Chat messages that did not reach this gateway live and were read from the chat log",
            metrics.recovered.clone(),
        );
        metrics
    }
}
