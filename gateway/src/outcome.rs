//! What a handled event comes to, and its one end: counted, its span
//! marked, answered (an acknowledgement when the client asked for one; for
//! a refusal, also an `error` event).

use std::pin::Pin;

use common::domain::{ChatId, RoomId};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use socketioxide::extract::{AckSender, SocketRef};

use crate::metrics::{EventLabels, GatewayMetrics, RefusalLabels};
use crate::refusal::Refusal;

/// What an event's handler comes to.
pub type Answer = Result<Option<Ack>, Refusal>;

/// How a handled event is answered.
pub enum Outcome {
    /// At once.
    Now(Answer),
    /// Refused, then the socket is closed (its token ran out).
    Close(Refusal),
    /// When the future resolves (a chat message, once stored); the
    /// socket's next events go on meanwhile.
    Later(Pin<Box<dyn Future<Output = Answer> + Send>>),
}

/// The acknowledgement of an event (docs/asyncapi.yaml): what the event
/// did, or why it was refused (with the same message and code as the
/// `error` event).
#[derive(Debug, PartialEq, Eq, serde::Serialize)]
#[serde(untagged)]
pub enum Ack {
    /// `join`: how many missed messages were replayed, and whether that
    /// was all of them.
    Joined {
        room_id: RoomId,
        replayed: usize,
        complete: bool,
    },
    /// `message`: stored, with this id.
    Sent {
        chat_id: ChatId,
    },
    /// `refresh`: the socket goes on with the new token.
    Refreshed {
        ok: bool,
    },
    Refused {
        error: &'static str,
        code: u8,
    },
}

/// Where every event ends: the event and refusal counters.
#[derive(Clone)]
pub struct Answers {
    events: Family<EventLabels, Counter>,
    refusals: Family<RefusalLabels, Counter>,
}

impl Answers {
    pub fn new(metrics: &GatewayMetrics) -> Self {
        Self {
            events: metrics.events.clone(),
            refusals: metrics.refusals.clone(),
        }
    }

    /// The one end of every event: counted, its span marked, answered.
    pub fn finish(
        &self,
        name: &'static str,
        socket: &SocketRef,
        ack: AckSender,
        span: &tracing::Span,
        answer: Answer,
    ) {
        self.events
            .get_or_create(&EventLabels { event: name })
            .inc();
        if let Err(refusal) = &answer {
            let labels = RefusalLabels {
                event: name,
                code: refusal.code(),
            };
            self.refusals.get_or_create(&labels).inc();
            // "Try again" (code 8) is a failure of the service, the others
            // the client's.
            span.record("error.type", refusal.code());
            if *refusal == Refusal::Unavailable {
                common::telemetry::otel::fail(span);
            }
        }
        send(socket, ack, name, answer);
    }
}

/// Sends the answer: the acknowledgement (when asked for) and, for a
/// refusal, the `error` event.
fn send(socket: &SocketRef, ack: AckSender, event: &str, answer: Answer) {
    let sent = match answer {
        Ok(Some(body)) => ack.send(&body),
        Ok(None) => Ok(()),
        Err(refusal) => {
            tracing::debug!(event, code = refusal.code(), "event refused");
            let body = refusal.body();
            if let Err(e) = socket.emit("error", &body) {
                tracing::debug!(error = %e, "error event not sent");
            }
            ack.send(&Ack::Refused {
                error: body.message,
                code: body.code,
            })
        }
    };
    if let Err(e) = sent {
        tracing::debug!(event, error = %e, "acknowledgement not sent (socket closed)");
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::Ack;

    #[test]
    fn acknowledgements_keep_their_wire_shape() {
        let shape = |ack: Ack| serde_json::to_value(ack).expect("json");
        assert_eq!(
            shape(Ack::Joined {
                room_id: 3,
                replayed: 2,
                complete: true
            }),
            json!({ "room_id": 3, "replayed": 2, "complete": true })
        );
        assert_eq!(shape(Ack::Sent { chat_id: 9 }), json!({ "chat_id": 9 }));
        assert_eq!(shape(Ack::Refreshed { ok: true }), json!({ "ok": true }));
        assert_eq!(
            shape(Ack::Refused {
                error: "Join failed",
                code: 4
            }),
            json!({ "error": "Join failed", "code": 4 })
        );
    }
}
