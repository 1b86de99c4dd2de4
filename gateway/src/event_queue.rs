//! The event queue of one socket. socketioxide runs every event in a task
//! of its own, so two events of one socket could be handled out of order
//! (a `message` right after its `join` refused as "not joined"). The
//! handlers therefore only parse the event and queue it, in arrival order,
//! and a worker handles the queue; it runs only while the queue has events,
//! so an idle socket costs no task and no channel.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use common::support::sync::Locked;
use prometheus_client::metrics::gauge::Gauge;
use serde_json::Value;
use socketioxide::extract::{AckSender, Event, SocketRef, TryData};
use tracing::Instrument;

use crate::client_event::ClientEvent;
use crate::drain::Drain;
use crate::handlers::Handlers;
use crate::outcome::{Answers, Outcome};
use crate::refusal::Refusal;
use crate::revocation::close;

/// Events of one socket waiting to be handled; beyond this many, new ones
/// are refused (code 6) instead of queueing without bound.
const EVENT_QUEUE: usize = 256;

/// Where every authenticated socket's events go: parsed and queued in
/// arrival order, handled by [`Handlers`], answered by [`Answers`].
pub struct EventQueues {
    handlers: Arc<Handlers>,
    answers: Answers,
    /// Chat messages waiting for their acknowledgement, past the queue.
    drain: Arc<Drain>,
    /// Authenticated sockets open.
    sockets: Gauge,
}

/// A socket's events waiting to be handled, and whether a worker is
/// handling them.
#[derive(Default)]
struct EventQueue {
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
        if next.is_none() {
            // An idle socket holds no room for events (half a KiB): most
            // sockets send one event, their heartbeat, and wait a second.
            state.pending = VecDeque::new();
        }
        next
    }
}

/// One client event, parsed, queued for its socket's worker.
struct Queued {
    /// The event's name, for metrics and logs.
    name: &'static str,
    event: Result<ClientEvent, Refusal>,
    socket: SocketRef,
    ack: AckSender,
    /// The event's span (a trace of its own), from its arrival on; `none`
    /// when traces are not exported.
    span: tracing::Span,
}

impl EventQueues {
    pub fn new(
        handlers: Arc<Handlers>,
        answers: Answers,
        drain: Arc<Drain>,
        sockets: Gauge,
    ) -> Self {
        Self {
            handlers,
            answers,
            drain,
            sockets,
        }
    }

    /// Listens to the client events of an authenticated socket.
    pub fn attach(self: &Arc<Self>, socket: &SocketRef) {
        self.sockets.inc();
        let sockets = self.sockets.clone();
        socket.on_disconnect(move || {
            sockets.dec();
            async {}
        });
        let queue = Arc::new(EventQueue::default());
        let queues = self.clone();
        // One handler for every event rather than one per event name: each
        // socket holds its handlers for its lifetime.
        socket.on_fallback(
            move |socket: SocketRef,
                  Event(event): Event,
                  TryData(data): TryData<Value>,
                  ack: AckSender| {
                // Runs synchronously, in arrival order: only parsing and queueing.
                // Events the contract does not name are ignored.
                if let Some(name) = ClientEvent::NAMES.into_iter().find(|n| *n == event) {
                    let span = event_span(name, &socket);
                    let queued = Queued {
                        name,
                        event: ClientEvent::parse(name, data.ok().as_ref()),
                        socket,
                        ack,
                        span,
                    };
                    queues.enqueue(&queue, queued);
                }
                async {}
            },
        );
    }

    /// Queues one event, starting the socket's worker if it is not running;
    /// beyond [`EVENT_QUEUE`] waiting events the new one is refused (code 6).
    fn enqueue(self: &Arc<Self>, queue: &Arc<EventQueue>, queued: Queued) {
        let start = {
            let mut state = queue.state.locked();
            if state.pending.len() >= EVENT_QUEUE {
                drop(state);
                let Queued {
                    name,
                    socket,
                    ack,
                    span,
                    ..
                } = queued;
                let refused = Err(Refusal::RateLimited);
                self.answers.finish(name, &socket, ack, &span, refused);
                return;
            }
            state.pending.push_back(queued);
            !std::mem::replace(&mut state.running, true)
        };
        if start {
            let queues = self.clone();
            let queue = queue.clone();
            tokio::spawn(async move {
                while let Some(queued) = queue.next() {
                    wait_until_connected(&queued.socket).await;
                    let span = queued.span.clone();
                    queues.handle(queued).instrument(span).await;
                }
            });
        }
    }

    /// Handles one event and answers it: at once, or (a chat message) once
    /// it is stored, while the socket's next events go on.
    async fn handle(&self, queued: Queued) {
        let Queued {
            name,
            event,
            socket,
            ack,
            span,
        } = queued;
        match self.handlers.handle(&socket, event).await {
            Outcome::Now(answer) => self.answers.finish(name, &socket, ack, &span, answer),
            Outcome::Close(why) => {
                // The refusal tells the client why (its `error` event).
                self.answers.finish(name, &socket, ack, &span, Err(why));
                close(&socket);
            }
            Outcome::Later(answer) => {
                let answers = self.answers.clone();
                let answered = async move {
                    let answer = answer.await;
                    answers.finish(name, &socket, ack, &tracing::Span::current(), answer);
                };
                self.drain.track(answered.instrument(span));
            }
        }
    }
}

/// The span of one client event, linked to its socket's connect span.
fn event_span(name: &'static str, socket: &SocketRef) -> tracing::Span {
    if !common::telemetry::otel::enabled() {
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
