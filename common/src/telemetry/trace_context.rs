//! The W3C trace context carried across processes (HTTP headers, the
//! Socket.IO handshake, NATS headers), and the spans of a batch of messages
//! that each came with one.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;

use crate::telemetry::otel::enabled;

/// The W3C trace context of a span, as it travels in headers
/// (`traceparent`, `tracestate`) between processes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceParent {
    traceparent: String,
    tracestate: Option<String>,
}

impl TraceParent {
    pub const HEADER: &'static str = "traceparent";
    pub const STATE_HEADER: &'static str = "tracestate";

    /// The context of the current span; `None` when traces are not exported.
    pub fn current() -> Option<Self> {
        if !enabled() {
            return None;
        }
        Self::of(&Span::current())
    }

    /// The context of `span`, when it is part of a sampled trace. An
    /// unsampled one is not passed on: what continues it would not be
    /// recorded either, so it costs no header and no span downstream.
    pub fn of(span: &Span) -> Option<Self> {
        if !enabled() || span.is_none() {
            return None;
        }
        let cx = span.context();
        if !cx.span().span_context().is_sampled() {
            return None;
        }
        let mut headers = Headers::default();
        TraceContextPropagator::new().inject_context(&cx, &mut headers);
        Some(Self {
            traceparent: headers.traceparent?,
            tracestate: headers.tracestate.filter(|s| !s.is_empty()),
        })
    }

    /// Reads the context from headers (`get` returns a header's value);
    /// `None` when there is none, it is malformed, or traces are off.
    pub fn from_headers<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<Self> {
        if !enabled() {
            return None;
        }
        let traceparent = get(Self::HEADER)?.trim();
        let tracestate = get(Self::STATE_HEADER).map(str::to_owned);
        let parsed = Self {
            traceparent: traceparent.to_owned(),
            tracestate,
        };
        parsed.span_context().is_valid().then_some(parsed)
    }

    /// Whether this context's trace is sampled (the W3C `sampled` flag):
    /// only then do its receivers record spans continuing it.
    pub fn sampled(&self) -> bool {
        self.traceparent
            .rsplit('-')
            .next()
            .and_then(|flags| u8::from_str_radix(flags, 16).ok())
            .is_some_and(|flags| flags & 1 == 1)
    }

    /// Makes `span` a child of the trace an HTTP request names in its
    /// `traceparent` header, if it names one.
    pub fn continue_http(span: &Span, headers: &axum::http::HeaderMap) {
        let parent = Self::from_headers(|name| headers.get(name).and_then(|v| v.to_str().ok()));
        if let Some(parent) = parent {
            parent.adopt(span);
        }
    }

    /// The headers to send, as (name, value).
    pub fn headers(&self) -> impl Iterator<Item = (&'static str, &str)> {
        std::iter::once((Self::HEADER, self.traceparent.as_str())).chain(
            self.tracestate
                .as_deref()
                .map(|state| (Self::STATE_HEADER, state)),
        )
    }

    fn context(&self) -> opentelemetry::Context {
        TraceContextPropagator::new().extract(self)
    }

    /// The remote span this context names.
    pub fn span_context(&self) -> SpanContext {
        self.context().span().span_context().clone()
    }

    /// Makes `span` a child of this context (before it is first entered).
    pub fn adopt(&self, span: &Span) {
        if !span.is_none() {
            let _ = span.set_parent(self.context());
        }
    }

    /// Links `span` to this context (a batch to each of its messages).
    pub fn link_from(&self, span: &Span) {
        if !span.is_none() {
            span.add_link(self.span_context());
        }
    }
}

impl Extractor for TraceParent {
    fn get(&self, key: &str) -> Option<&str> {
        match key {
            Self::HEADER => Some(&self.traceparent),
            Self::STATE_HEADER => self.tracestate.as_deref(),
            _ => None,
        }
    }

    fn keys(&self) -> Vec<&str> {
        vec![Self::HEADER, Self::STATE_HEADER]
    }
}

#[derive(Default)]
struct Headers {
    traceparent: Option<String>,
    tracestate: Option<String>,
}

impl Injector for Headers {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TraceParent::HEADER => self.traceparent = Some(value),
            TraceParent::STATE_HEADER => self.tracestate = Some(value),
            _ => {}
        }
    }
}

/// The spans of messages handled as one batch: each sampled message's span
/// continues the trace it came with, and the batch's span links to each.
/// The message spans end when this is dropped (after the batch's work).
#[derive(Debug)]
pub struct BatchSpans {
    pub batch: Span,
    _messages: Vec<Span>,
}

impl BatchSpans {
    /// The spans of a batch of NATS messages consumed by `group`, which
    /// came with `traces`: a consumer span named `message` for each message
    /// of a sampled trace, a child of that trace, and the batch's span named
    /// `batch`. No span at all when no message is sampled: nothing would be
    /// recorded.
    pub fn consumed<'a>(
        traces: impl ExactSizeIterator<Item = Option<&'a TraceParent>>,
        group: &'static str,
        message: &'static str,
        batch: &'static str,
    ) -> Self {
        if !enabled() {
            return Self::none();
        }
        let count = traces.len();
        let sampled: Vec<&TraceParent> = traces.flatten().filter(|t| t.sampled()).collect();
        if sampled.is_empty() {
            return Self::none();
        }
        let batch = crate::trace_span!(
            "batch",
            otel.name = batch,
            messaging.batch.message_count = count,
        );
        let messages = sampled
            .into_iter()
            .map(|parent| {
                let span = crate::trace_span!(
                    "process",
                    otel.name = message,
                    otel.kind = "consumer",
                    messaging.system = "nats",
                    messaging.operation.type = "process",
                    messaging.consumer.group.name = group,
                );
                parent.adopt(&span);
                if let Some(trace) = TraceParent::of(&span) {
                    trace.link_from(&batch);
                }
                span
            })
            .collect();
        Self {
            batch,
            _messages: messages,
        }
    }

    /// No spans (traces are not exported).
    pub fn none() -> Self {
        Self {
            batch: Span::none(),
            _messages: Vec::new(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sampled_flag() {
        let parent = |flags: &str| TraceParent {
            traceparent: format!("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-{flags}"),
            tracestate: None,
        };
        assert!(parent("01").sampled());
        assert!(parent("03").sampled());
        assert!(!parent("00").sampled());
        assert!(!parent("zz").sampled());
    }
}
