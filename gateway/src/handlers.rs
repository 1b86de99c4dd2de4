//! One handler per client event, plus the connect middleware that
//! authenticates the socket. A refused event gets an `error` event (and a
//! refused acknowledgement when the client asked for one); the socket stays usable.

use std::sync::Arc;

use common::auth::TokenError;
use common::bus::{BusError, IdempotencyKey};
use common::domain::{ChatDraft, now};
use serde_json::{Value, json};
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;

use crate::Gateway;
use crate::hub::{room_key, session};
use crate::payload::{Heartbeat, MessageRequest, Refusal, RoomRequest};
use crate::session::Session;

/// Events of one socket waiting to be handled; beyond this many, new ones
/// are refused (code 6) instead of queueing without bound.
const EVENT_QUEUE: usize = 256;

/// A socket's events waiting to be handled, and whether a worker is
/// handling them.
#[derive(Default)]
struct EventQueue {
    state: std::sync::Mutex<QueueState>,
}

#[derive(Default)]
struct QueueState {
    pending: std::collections::VecDeque<Queued>,
    running: bool,
}

impl EventQueue {
    /// The next event to handle; `None` (and the worker stops) when there is none.
    fn next(&self) -> Option<Queued> {
        let mut state = self.state.lock().ok()?;
        let next = state.pending.pop_front();
        state.running = next.is_some();
        next
    }
}

/// One client event, queued for its socket's worker.
struct Queued {
    event: &'static str,
    socket: SocketRef,
    payload: Option<Value>,
    ack: AckSender,
}

/// The connect error a client sees; its text is sent as is, so it says
/// nothing about why a token failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("Unauthorized")]
    Unauthorized,
    #[error("Origin not allowed")]
    Origin,
    /// A dependency is down: clients retry, and must not log their user out.
    #[error("Service unavailable")]
    Unavailable,
}

/// Why a connection was refused: logged and counted (never the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused {
    Origin,
    NoToken,
    ExpiredToken,
    InvalidToken,
    UnknownUser,
    Unavailable,
}

impl Refused {
    /// The `reason` label and log field.
    fn reason(self) -> &'static str {
        match self {
            Self::Origin => "origin",
            Self::NoToken => "no_token",
            Self::ExpiredToken => "expired_token",
            Self::InvalidToken => "invalid_token",
            Self::UnknownUser => "unknown_user",
            Self::Unavailable => "unavailable",
        }
    }

    fn connect_error(self) -> ConnectError {
        match self {
            Self::Origin => ConnectError::Origin,
            Self::NoToken | Self::ExpiredToken | Self::InvalidToken | Self::UnknownUser => {
                ConnectError::Unauthorized
            }
            Self::Unavailable => ConnectError::Unavailable,
        }
    }
}

pub fn register(io: &SocketIo, gateway: Arc<Gateway>) {
    // Event handlers are registered by the middleware, which completes before
    // socketioxide acknowledges the connection: the connect handler runs only
    // after the ack, and an event sent right after connecting would find none.
    let authenticate = move |socket: SocketRef, TryData(auth): TryData<Value>| {
        let gateway = gateway.clone();
        async move {
            gateway.authenticate(&socket, auth.ok()).await?;
            gateway.attach(&socket);
            Ok::<(), ConnectError>(())
        }
    };
    let connected = async |socket: SocketRef| {
        tracing::debug!(sid = %socket.id, "socket connected");
    };
    io.ns("/", connected.with(authenticate));
}

impl Gateway {
    /// Connect middleware: the origin must be allowed and the token valid,
    /// taken from `auth: {token}`, the `Authorization` header or `?token=`.
    /// A refusal is logged and counted by reason, so that an operator sees
    /// clients failing (an old client without a token, a wrong secret).
    async fn authenticate(
        &self,
        socket: &SocketRef,
        auth: Option<Value>,
    ) -> Result<(), ConnectError> {
        let refused = match self.identify(socket, auth).await {
            Ok(user) => {
                socket
                    .extensions
                    .insert(Arc::new(Session::new(user, self.deps.rate)));
                return Ok(());
            }
            Err(refused) => refused,
        };
        let parts = socket.req_parts();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        tracing::info!(
            reason = refused.reason(),
            origin = header("origin"),
            user_agent = header("user-agent"),
            forwarded_for = header("x-forwarded-for"),
            "socket connection refused"
        );
        self.deps
            .metrics
            .connect_refusals
            .get_or_create(&crate::metrics::ConnectRefusalLabels {
                reason: refused.reason(),
            })
            .inc();
        Err(refused.connect_error())
    }

    /// The socket's user, spelled as stored, or why it may not connect.
    async fn identify(&self, socket: &SocketRef, auth: Option<Value>) -> Result<String, Refused> {
        let parts = socket.req_parts();
        if let Some(allowed) = &self.deps.allowed_origins {
            let origin = parts.headers.get("origin").and_then(|o| o.to_str().ok());
            if origin.is_some_and(|o| !allowed.iter().any(|a| a == o.trim_end_matches('/'))) {
                return Err(Refused::Origin);
            }
        }
        let from_auth = auth
            .as_ref()
            .and_then(|a| a["token"].as_str())
            .map(str::to_owned);
        let from_header = parts
            .headers
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::to_owned);
        let from_query = parts.uri.query().and_then(|q| {
            q.split('&')
                .find_map(|kv| kv.strip_prefix("token="))
                .map(str::to_owned)
        });
        let token = from_auth
            .or(from_header)
            .or(from_query)
            .ok_or(Refused::NoToken)?;
        let user = self.deps.tokens.verify(token.trim()).map_err(|e| match e {
            TokenError::Expired => Refused::ExpiredToken,
            TokenError::Missing | TokenError::Invalid => Refused::InvalidToken,
        })?;
        match self.deps.store.user_name(&user).await {
            Ok(Some(stored)) => Ok(stored),
            Ok(None) => Err(Refused::UnknownUser),
            Err(e) => {
                tracing::error!(error = %e, "cannot check the user of a socket");
                Err(Refused::Unavailable)
            }
        }
    }

    /// Registers the event handlers of an authenticated socket.
    ///
    /// socketioxide runs every event in a task of its own, so two events of
    /// one socket could be handled out of order (a `message` right after its
    /// `join` refused as "not joined"). The handlers therefore only queue the
    /// event, in arrival order, and a worker handles the queue; it runs only
    /// while the queue has events, so an idle socket costs no task and no
    /// channel.
    fn attach(self: &Arc<Self>, socket: &SocketRef) {
        self.deps.metrics.sockets.inc();
        let sockets = self.deps.metrics.sockets.clone();
        socket.on_disconnect(move || {
            sockets.dec();
            async {}
        });
        let queue = Arc::new(EventQueue::default());
        for event in ["join", "leave", "message", "watchdog"] {
            let queue = queue.clone();
            let gateway = self.clone();
            socket.on(
                event,
                move |socket: SocketRef, TryData(data): TryData<Value>, ack: AckSender| {
                    // Runs synchronously, in arrival order: only the queueing.
                    let queued = Queued {
                        event,
                        socket,
                        payload: data.ok(),
                        ack,
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
            let Ok(mut state) = queue.state.lock() else {
                return;
            };
            if state.pending.len() >= EVENT_QUEUE {
                drop(state);
                answer(
                    &queued.socket,
                    queued.ack,
                    queued.event,
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
                    gateway.handle(queued).await;
                }
            });
        }
    }

    async fn handle(self: &Arc<Self>, queued: Queued) {
        let Queued {
            event,
            socket,
            payload,
            ack,
        } = queued;
        let Some(session) = session(&socket) else {
            return;
        };
        let payload = payload.as_ref();
        let result = match event {
            "join" => self.join(&socket, &session, payload).await.map(|()| None),
            "leave" => self.leave(&socket, &session, payload).await.map(|()| None),
            "message" => match self.begin_message(&socket, &session, payload).await {
                // Stored in the background: the socket's next events (and
                // messages) go on while this one waits for its acknowledgement.
                Ok(stored) => {
                    let gateway = self.clone();
                    tokio::spawn(async move {
                        let result = stored.await;
                        gateway.count(event, &result);
                        answer(&socket, ack, event, result.map(Some));
                    });
                    return;
                }
                Err(refusal) => Err(refusal),
            },
            _ => self.watchdog(&session, payload).await.map(|()| None),
        };
        self.count(event, &result);
        answer(&socket, ack, event, result);
    }

    async fn join(
        &self,
        socket: &SocketRef,
        session: &Session,
        payload: Option<&Value>,
    ) -> Result<(), Refusal> {
        let request = RoomRequest::parse(payload)?;
        session.check_name(request.user_name.as_deref())?;
        let room_id = request.room_id;
        let room = self.deps.store.room(room_id).await.map_err(unavailable)?;
        let room = room.ok_or(Refusal::JoinFailed)?;
        if room.is_private
            && room.room_owner != session.user
            && self
                .deps
                .store
                .member(room_id, &session.user)
                .await
                .map_err(unavailable)?
                .is_none()
        {
            return Err(Refusal::JoinFailed);
        }
        // In the room before subscribing: the sweeper never drops the
        // subscription of a room that has a local socket.
        socket.join(room_key(room_id));
        if let Err(e) = self.hub.subscribe(room_id).await {
            socket.leave(room_key(room_id));
            return Err(unavailable(e));
        }
        let event = json!({ "user_name": session.user, "room_id": room_id });
        self.publish_room_event(room_id, "user_joined", &event)
            .await;
        Ok(())
    }

    async fn leave(
        &self,
        socket: &SocketRef,
        session: &Session,
        payload: Option<&Value>,
    ) -> Result<(), Refusal> {
        let request = RoomRequest::parse(payload)?;
        session.check_name(request.user_name.as_deref())?;
        let key = room_key(request.room_id);
        if in_room(socket, &key) {
            socket.leave(key);
            let event = json!({ "user_name": session.user, "room_id": request.room_id });
            self.publish_room_event(request.room_id, "user_left", &event)
                .await;
        }
        Ok(())
    }

    /// Checks a chat message and starts storing it, in the socket's event
    /// order; the returned future resolves once it is stored. At most
    /// [`Session::MAX_PENDING_APPENDS`] of a socket's messages are pending.
    async fn begin_message(
        &self,
        socket: &SocketRef,
        session: &Session,
        payload: Option<&Value>,
    ) -> Result<impl Future<Output = Result<Value, Refusal>> + Send + 'static, Refusal> {
        let request = MessageRequest::parse(payload)?;
        session.check_name(request.user_name.as_deref())?;
        let key = room_key(request.room_id);
        if !in_room(socket, &key) {
            return Err(Refusal::JoinFailed);
        }
        session.take_message()?;
        let permit = session.pending_append().await?;
        let draft = ChatDraft {
            room_id: request.room_id,
            user_name: session.user.clone(),
            message: request.message,
            create_date: now(),
        };
        let started = std::time::Instant::now();
        let key = request
            .client_msg_id
            .as_deref()
            .map(|id| IdempotencyKey::new(&session.user, id));
        let pending = self
            .deps
            .bus
            .begin_append(&draft, key.as_ref())
            .await
            .map_err(unavailable)?;
        let append_seconds = self.deps.metrics.append_seconds.clone();
        Ok(async move {
            let chat_id = pending.await.map_err(unavailable)?;
            drop(permit);
            append_seconds.observe(started.elapsed().as_secs_f64());
            Ok(json!({ "chat_id": chat_id }))
        })
    }

    async fn watchdog(&self, session: &Session, payload: Option<&Value>) -> Result<(), Refusal> {
        let heartbeat = Heartbeat::parse(payload)?;
        session.check_name(Some(&heartbeat.user_name))?;
        if let Some(at) = self.coalesce_heartbeat(&session.user, common::presence::unix_ms()) {
            self.forward_heartbeat(&session.user, at).await;
        }
        Ok(())
    }

    fn count<T>(&self, event: &'static str, result: &Result<T, Refusal>) {
        let metrics = &self.deps.metrics;
        metrics
            .events
            .get_or_create(&crate::metrics::EventLabels { event })
            .inc();
        if let Err(refusal) = result {
            let labels = crate::metrics::RefusalLabels {
                event,
                code: refusal.code(),
            };
            metrics.refusals.get_or_create(&labels).inc();
        }
    }

    async fn publish_room_event(&self, room_id: common::domain::RoomId, event: &str, body: &Value) {
        let subject = self.deps.subjects.room_event(room_id, event);
        if let Err(e) = self
            .deps
            .bus
            .publish(subject, body.to_string().into())
            .await
        {
            tracing::error!(room_id, event, error = %e, "room event not published");
        }
    }
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

fn in_room(socket: &SocketRef, key: &str) -> bool {
    socket.rooms().iter().any(|r| r == key)
}

/// Logs a dependency failure once, here, and refuses the event with code 8.
fn unavailable(e: impl Into<UnavailableCause>) -> Refusal {
    let UnavailableCause(detail) = e.into();
    tracing::error!(error = %detail, "event failed on a dependency");
    Refusal::Unavailable
}

struct UnavailableCause(String);

impl From<BusError> for UnavailableCause {
    fn from(e: BusError) -> Self {
        Self(e.to_string())
    }
}

impl From<common::store::StoreError> for UnavailableCause {
    fn from(e: common::store::StoreError) -> Self {
        Self(e.to_string())
    }
}

/// Sends the outcome: the acknowledgement (when asked for) and, for a
/// refusal, the `error` event.
fn answer(socket: &SocketRef, ack: AckSender, event: &str, result: Result<Option<Value>, Refusal>) {
    let sent = match result {
        Ok(Some(body)) => ack.send(&body),
        Ok(None) => Ok(()),
        Err(refusal) => {
            tracing::debug!(event, code = refusal.code(), "event refused");
            let body = refusal.body();
            if let Err(e) = socket.emit("error", &body) {
                tracing::debug!(error = %e, "error event not sent");
            }
            ack.send(&json!({ "error": body.message, "code": body.code }))
        }
    };
    if let Err(e) = sent {
        tracing::debug!(event, error = %e, "acknowledgement not sent (socket closed)");
    }
}
