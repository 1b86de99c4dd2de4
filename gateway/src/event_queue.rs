//! The event queue of one socket. socketioxide runs every event in a task
//! of its own, so two events of one socket could be handled out of order
//! (a `message` right after its `join` refused as "not joined"). The
//! handlers therefore only parse the event and queue it, in arrival order,
//! and a worker handles the queue; it runs only while the queue has events,
//! so an idle socket costs no task and no channel.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use common::sync::Locked;
use serde_json::Value;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use tracing::Instrument;

use crate::Gateway;
use crate::client_event::ClientEvent;
use crate::handlers::answer;
use crate::refusal::Refusal;

/// Events of one socket waiting to be handled; beyond this many, new ones
/// are refused (code 6) instead of queueing without bound.
const EVENT_QUEUE: usize = 256;

/// A socket's events waiting to be handled, and whether a worker is
/// handling them.
#[derive(Default)]
pub struct EventQueue {
    state: Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    pending: VecDeque<Queued>,
    running: bool,
}

impl EventQueue {
    /// The next event to handle; `None` (and the worker stops) when there is none.
    fn next(&self) -> Option<Queued> {
        let mut state = self.state.locked();
        let next = state.pending.pop_front();
        state.running = next.is_some();
        next
    }
}

/// One client event, parsed, queued for its socket's worker.
pub struct Queued {
    /// The event's name, for metrics and logs.
    pub name: &'static str,
    pub event: Result<ClientEvent, Refusal>,
    pub socket: SocketRef,
    pub ack: AckSender,
    /// The event's span (a trace of its own), from its arrival on; `none`
    /// when traces are not exported.
    pub span: tracing::Span,
}

impl Gateway {
    /// Listens to the client events of an authenticated socket.
    pub(crate) fn attach_queue(self: &Arc<Self>, socket: &SocketRef) {
        self.deps.metrics.sockets.inc();
        let sockets = self.deps.metrics.sockets.clone();
        socket.on_disconnect(move || {
            sockets.dec();
            async {}
        });
        let queue = Arc::new(EventQueue::default());
        for name in ClientEvent::NAMES {
            let queue = queue.clone();
            let gateway = self.clone();
            socket.on(
                name,
                move |socket: SocketRef, TryData(data): TryData<Value>, ack: AckSender| {
                    // Runs synchronously, in arrival order: only parsing and queueing.
                    let span = event_span(name, &socket);
                    let queued = Queued {
                        name,
                        event: ClientEvent::parse(name, data.ok().as_ref()),
                        socket,
                        ack,
                        span,
                    };
                    gateway.enqueue(&queue, queued);
                    async {}
                },
            );
        }
    }

    /// Queues one event, starting the socket's worker if it is not running;
    /// beyond [`EVENT_QUEUE`] waiting events the new one is refused (code 6).
    fn enqueue(self: &Arc<Self>, queue: &Arc<EventQueue>, queued: Queued) {
        let start = {
            let mut state = queue.state.locked();
            if state.pending.len() >= EVENT_QUEUE {
                drop(state);
                answer(
                    &queued.socket,
                    queued.ack,
                    queued.name,
                    Err(Refusal::RateLimited),
                );
                return;
            }
            state.pending.push_back(queued);
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            let gateway = self.clone();
            let queue = queue.clone();
            tokio::spawn(async move {
                while let Some(queued) = queue.next() {
                    wait_until_connected(&queued.socket).await;
                    let span = queued.span.clone();
                    gateway.handle(queued).instrument(span).await;
                }
            });
        }
    }
}

/// The span of one client event, linked to its socket's connect span.
fn event_span(name: &'static str, socket: &SocketRef) -> tracing::Span {
    if !common::otel::enabled() {
        return tracing::Span::none();
    }
    let session = crate::session::session(socket);
    let span = common::trace_span!(
        "socket.io event",
        otel.name = %format_args!("socket.io {name}"),
        otel.kind = "server",
        error.type = tracing::field::Empty,
        socket.io.event = name,
        user.name = session.as_ref().map(|s| s.user.as_str()),
        messaging.message.id = tracing::field::Empty,
    );
    if let Some(connection) = session.as_ref().and_then(|s| s.connection.as_ref()) {
        connection.link_from(&span);
    }
    span
}

/// socketioxide sends the connect acknowledgement a moment before it marks
/// the socket connected, and drops what is emitted to a socket not marked
/// yet. A client may send an event as soon as it has the acknowledgement:
/// its answer must wait for the mark, or an `error` event would be lost.
async fn wait_until_connected(socket: &SocketRef) {
    for _ in 0..200 {
        if socket.connected() {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}
