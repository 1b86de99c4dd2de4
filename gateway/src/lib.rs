//! The Socket.IO gateway (docs/protocol.md, "Socket.IO"): authenticates sockets
//! with the access token, handles `join`/`leave`/`message`/`watchdog`,
//! appends chat messages to the chat log and fans out what the bus delivers
//! to its local sockets. It holds no state another replica needs.
//!
//! Its shape, as every service's: [`Deps`] in; [`Gateway::new`], then
//! [`Gateway::routes`] to serve and [`Gateway::run`] until shutdown.
//! Inside, by concern: `connect` (authentication), `client_event` (parsing),
//! `event_queue` (per-socket order), `handlers` (one per event), `refusal`
//! (error codes), `heartbeats` (coalescing), `fanout` (room subscriptions),
//! `room` (a room's delivery, with `sequencer` and `room_presence`),
//! `catch_up` (replay on join), `session` (one socket's user and rate).

mod admission;
mod catch_up;
mod client_event;
mod connect;
mod event_queue;
mod fanout;
mod handlers;
mod heartbeats;
mod metrics;
mod refusal;
mod request_headers;
mod room;
mod room_presence;
mod sequencer;
mod session;

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::Args;
use common::auth::Tokens;
use common::bus::{Bus, Subjects};
use common::chat_log::ChatLog;
use common::events::{Events, PasswordChanged, SessionEnded};
use common::store::Store;
use futures_util::StreamExt;
use socketioxide::SocketIo;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use metrics::GatewayMetrics;
pub use refusal::Refusal;
pub use session::RateLimit;

/// Options of the gateway.
#[derive(Debug, Clone, Args)]
pub struct GatewayArgs {
    /// Chat messages one socket may send per second on average; 0 is unlimited.
    #[arg(long, env = "MESSAGE_RATE_LIMIT", default_value_t = 20)]
    pub message_rate_limit: u32,
    /// Chat messages one socket may send in a burst.
    #[arg(long, env = "MESSAGE_RATE_BURST", default_value_t = 40)]
    pub message_rate_burst: u32,
    /// Seconds a client has, after opening an Engine.IO session, to
    /// authenticate its Socket.IO connection; then it is closed.
    #[arg(long, env = "SOCKET_CONNECT_TIMEOUT_SECS", default_value_t = 10)]
    pub socket_connect_timeout_secs: u64,
    /// Sockets one user may hold open on one gateway; 0 is unlimited.
    #[arg(long, env = "MAX_SOCKETS_PER_USER", default_value_t = 32)]
    pub max_sockets_per_user: usize,
    /// A room's sockets on this gateway up to which each gets the per-user
    /// events (`user_joined`, `user_left`, `user_online`, `user_offline`);
    /// in a larger room nobody gets them (their number grows with the
    /// square of the room), and clients that asked for presence in batches
    /// get `presence` (docs/protocol.md, "Presence").
    #[arg(long, env = "PER_USER_EVENTS_MAX_SOCKETS", default_value_t = 200)]
    pub per_user_events_max_sockets: usize,
}

/// What the gateway needs from the rest of the process.
pub struct Deps {
    pub store: Store,
    pub bus: Arc<dyn Bus>,
    pub chat_log: Arc<dyn ChatLog>,
    pub subjects: Subjects,
    pub tokens: Tokens,
    /// `None` accepts sockets from any origin.
    pub allowed_origins: Option<Vec<String>>,
    pub rate: RateLimit,
    /// How long a socket has to authenticate.
    pub connect_timeout: Duration,
    /// Sockets per user on this gateway; 0 is unlimited.
    pub max_sockets_per_user: usize,
    /// See [`GatewayArgs::per_user_events_max_sockets`].
    pub per_user_events_max_sockets: usize,
    pub metrics: GatewayMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Bus(#[from] common::bus::BusError),
    #[error(transparent)]
    ChatLog(#[from] common::chat_log::ChatLogError),
}

/// A gateway: its shared state, behind the Socket.IO handlers.
pub struct Gateway {
    io: SocketIo,
    /// `/socket.io/`: Engine.IO's long-polling and WebSocket requests.
    routes: axum::Router,
    deps: Deps,
    events: Events,
    fanout: fanout::Fanout,
    heartbeats: heartbeats::Heartbeats,
    /// The open sockets of each user, against their cap.
    user_sockets: admission::UserSockets,
    /// When each socket's token expires.
    expiries: admission::Expiries,
    /// The highest `chat_id` acknowledged to a client here, and the highest
    /// recorded in the store (see [`Gateway::record_acked`]).
    acked: Arc<AtomicI64>,
    recorded: AtomicI64,
    /// Chat messages being appended, each waiting for its acknowledgement.
    appends: TaskTracker,
    /// The token [`Gateway::run`] stops on, the one `/readyz` reports: once
    /// it is cancelled new chat messages are refused (code 8, "try again"),
    /// the ones in flight are acknowledged, then every socket is closed.
    shutdown: OnceLock<CancellationToken>,
}

/// Bytes read at a time from a WebSocket (socketioxide's default is 4 KiB):
/// client frames are small, and every idle connection holds this buffer.
const WS_READ_BUFFER: usize = 1024;

/// Packets a socket may have waiting to be written (socketioxide's default
/// is 128): room for bursts, allocated only when used. A socket that falls
/// further behind is disconnected (see `fanout`).
const SEND_BUFFER: usize = 1024;

/// Where Engine.IO is served (socketioxide's default request path).
const SOCKET_IO_PATH: &str = "/socket.io";

/// How often rooms without local sockets are unsubscribed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// How often the highest acknowledged `chat_id` is recorded in the store.
const RECORD_ACKED: Duration = Duration::from_secs(1);

/// How often sockets whose token expired are looked for.
const EXPIRY_SWEEP: Duration = Duration::from_secs(1);

/// How often held-back heartbeats are checked for forwarding.
const HEARTBEAT_FLUSH: Duration = Duration::from_millis(100);

/// Longest a shutdown waits for the chat messages in flight to be
/// acknowledged (a little more than the chat log's 10 s to confirm one),
/// well within the gateway's 45 s grace period (`deploy/k8s/gateway.yaml`).
const DRAIN_APPENDS: Duration = Duration::from_secs(12);

/// How long a shutdown lets the sockets' writer tasks send what was queued
/// last (the answers of the messages drained) before the runtime stops
/// them. Engine.IO does not say when a socket's queue is empty, so this is
/// a bound, not a wait on a condition: a writer is scheduled within
/// microseconds, a loaded machine takes milliseconds.
const FLUSH_ANSWERS: Duration = Duration::from_millis(200);

impl Gateway {
    pub fn new(deps: Deps) -> Arc<Self> {
        // Nothing larger than a REST body is read, on any transport, before
        // or after authentication (engineioxide would take WebSocket
        // messages of 64 MiB, in frames of 16 MiB).
        let payload_max = common::domain::PAYLOAD_MAX;
        let (service, io) = SocketIo::builder()
            .ws_read_buffer_size(WS_READ_BUFFER)
            .max_buffer_size(SEND_BUFFER)
            .max_payload(payload_max as u64)
            .ws_max_message_size(payload_max)
            .ws_max_frame_size(payload_max)
            .connect_timeout(deps.connect_timeout)
            .build_svc();
        let fanout = fanout::Fanout::new(
            io.clone(),
            deps.bus.clone(),
            deps.store.clone(),
            deps.chat_log.clone(),
            deps.subjects.clone(),
            &deps.metrics,
            deps.per_user_events_max_sockets,
        );
        let path = format!("{SOCKET_IO_PATH}/");
        let routes = axum::Router::new()
            .route_service(SOCKET_IO_PATH, service.clone())
            .route_service(&path, service)
            .route_layer(axum::middleware::from_fn(request_headers::detach_request));
        let gateway = Arc::new(Self {
            io: io.clone(),
            routes,
            events: Events::new(deps.bus.clone(), deps.subjects.clone()),
            fanout,
            heartbeats: heartbeats::Heartbeats::default(),
            user_sockets: admission::UserSockets::new(deps.max_sockets_per_user),
            expiries: admission::Expiries::default(),
            acked: Arc::default(),
            recorded: AtomicI64::new(0),
            appends: TaskTracker::new(),
            shutdown: OnceLock::new(),
            deps,
        });
        connect::register(&io, gateway.clone());
        gateway
    }

    /// `/socket.io/`: Engine.IO's long-polling and WebSocket requests.
    pub fn routes(&self) -> axum::Router {
        self.routes.clone()
    }

    /// Delivers `room_list_updated` to every socket, keeps room
    /// subscriptions tidy and forwards held-back heartbeats until
    /// `shutdown`; then drains (see [`Self::drain`]).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), GatewayError> {
        let _ = self.shutdown.set(shutdown.clone());
        let mut room_lists = self
            .deps
            .bus
            .subscribe(self.deps.subjects.room_list_updated())
            .await?;
        let mut password_changes = self
            .deps
            .bus
            .subscribe(self.deps.subjects.password_changed())
            .await?;
        let mut sessions_ended = self
            .deps
            .bus
            .subscribe(self.deps.subjects.session_ended())
            .await?;
        let mut live_gaps = self
            .deps
            .chat_log
            .live_gaps()
            .await?
            .unwrap_or_else(|| Box::pin(futures_util::stream::pending()));
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        let mut expiries = tokio::time::interval(EXPIRY_SWEEP);
        let mut record = tokio::time::interval(RECORD_ACKED);
        let mut flush = tokio::time::interval(HEARTBEAT_FLUSH);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                update = room_lists.next() => {
                    if update.is_none() {
                        tracing::error!("room list subscription ended");
                        break;
                    }
                    if let Err(e) = self.io.emit("room_list_updated", &fanout::NO_ARGS).await {
                        tracing::warn!(error = %e, "room_list_updated not delivered to every socket");
                    }
                }
                change = password_changes.next() => {
                    let Some(change) = change else {
                        tracing::error!("password change subscription ended");
                        break;
                    };
                    self.password_changed(&change.payload);
                }
                ended = sessions_ended.next() => {
                    let Some(ended) = ended else {
                        tracing::error!("session end subscription ended");
                        break;
                    };
                    self.session_ended(&ended.payload);
                }
                Some(()) = live_gaps.next() => {
                    tracing::info!("live chat messages may have been lost: rooms read the chat log");
                    self.fanout.read_gaps();
                }
                _ = expiries.tick() => self.close_expired(),
                _ = record.tick() => self.record_acked().await,
                _ = sweep.tick() => self.fanout.sweep().await,
                _ = flush.tick() => {
                    for (user, at) in self.heartbeats.due() {
                        self.forward_heartbeat(&user, at).await;
                    }
                }
            }
        }
        self.drain().await;
        self.record_acked().await;
        Ok(())
    }

    /// Records the highest `chat_id` acknowledged here since the last
    /// record: should the chat stream be lost, the next one starts above
    /// every id a client may have seen (`JetStreamChatLog::open`). Once a
    /// second, so a lost stream can have acknowledged at most a second's
    /// messages more than recorded; the new stream leaves room for them.
    async fn record_acked(&self) {
        let acked = self.acked.load(Ordering::Relaxed);
        if acked <= self.recorded.load(Ordering::Relaxed) {
            return;
        }
        match self.deps.store.record_acked(acked).await {
            Ok(()) => self.recorded.store(acked, Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "acknowledged chat ids not recorded; retried"),
        }
    }

    /// Closes the sockets of a user whose password changed that
    /// authenticated with a token issued under the old one (its reconnect
    /// is then refused: the token is revoked).
    fn password_changed(&self, payload: &[u8]) {
        let Some(change) = decode::<PasswordChanged>(payload, "password change") else {
            return;
        };
        let closed = self.close_where("password changed", |session| {
            session.is(&change.user_name) && session.grant().stamp != change.stamp
        });
        if closed > 0 {
            tracing::info!(
                user = change.user_name,
                closed,
                "sockets of a revoked token closed"
            );
        }
    }

    /// Closes the sockets opened with the tokens of a session that ended.
    fn session_ended(&self, payload: &[u8]) {
        let Some(ended) = decode::<SessionEnded>(payload, "session end") else {
            return;
        };
        let closed = self.close_where("session ended", |session| {
            session.is(&ended.user_name)
                && session.grant().session.as_deref() == Some(ended.session_id.as_str())
        });
        if closed > 0 {
            tracing::info!(
                user = ended.user_name,
                closed,
                "sockets of an ended session closed"
            );
        }
    }

    /// Closes the sockets whose token expired without being renewed.
    fn close_expired(&self) {
        let now = chrono::Utc::now().timestamp();
        for sid in self.expiries.due(now) {
            if let Some(socket) = self.io.get_socket(sid)
                && session::session(&socket).is_some_and(|s| s.expired(now))
            {
                tracing::info!(sid = %sid, "socket closed: its token expired");
                close_for(&socket, Refusal::SessionExpired);
            }
        }
    }

    /// Closes every socket whose session `matches`, telling each why;
    /// returns how many.
    fn close_where(&self, why: &str, matches: impl Fn(&session::Session) -> bool) -> usize {
        let mut closed = 0;
        for socket in self.io.sockets() {
            if session::session(&socket).is_some_and(|s| matches(&s)) {
                closed += 1;
                tracing::debug!(sid = %socket.id, why, "closing socket");
                close_for(&socket, Refusal::SessionExpired);
            }
        }
        closed
    }

    /// True once shutdown has begun: chat messages are refused.
    pub(crate) fn draining(&self) -> bool {
        self.shutdown
            .get()
            .is_some_and(CancellationToken::is_cancelled)
    }

    /// Lets the chat messages in flight be acknowledged. The sockets stay
    /// open until the process exits: their connections then drop, which
    /// every client takes as a lost transport and reconnects (to another
    /// replica, and catches up there). Closing them with a Socket.IO or
    /// Engine.IO close packet instead would tell some clients (python-socketio)
    /// that the server meant it, and they would not reconnect.
    async fn drain(&self) {
        self.appends.close();
        let in_flight = self.appends.len();
        if tokio::time::timeout(DRAIN_APPENDS, self.appends.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.appends.len(),
                "chat messages still unconfirmed at shutdown; their senders resend"
            );
        }
        // The answers are queued on the sockets; the runtime's shutdown
        // would drop the tasks that write them.
        tokio::time::sleep(FLUSH_ANSWERS).await;
        tracing::info!(
            sockets = self.io.sockets().len(),
            in_flight,
            "messages in flight acknowledged; the sockets close with the process"
        );
    }
}

/// A bus message's JSON payload; a malformed one is logged and skipped.
fn decode<T: serde::de::DeserializeOwned>(payload: &[u8], what: &str) -> Option<T> {
    serde_json::from_slice(payload)
        .map_err(|e| tracing::warn!(error = %e, what, "malformed bus message ignored"))
        .ok()
}

/// Tells a socket why it is being closed (an `error` event), then closes it
/// with a disconnect packet, not a dropped connection: the client learns it
/// was the server's doing and does not retry with the same token. It
/// receives nothing more meanwhile, even while its send buffer is full.
pub(crate) fn close_for(socket: &socketioxide::extract::SocketRef, why: Refusal) {
    if let Err(e) = socket.emit("error", &why.body()) {
        tracing::debug!(error = %e, "error event not sent before closing");
    }
    socket.leave_all();
    if let Err(socketioxide::SocketError::InternalChannelFull) = socket.clone().disconnect() {
        tokio::spawn(room::disconnect_when_possible(socket.clone()));
    }
}
