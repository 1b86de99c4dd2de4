//! The Socket.IO gateway (CONTRACT.md, "Socket.IO"): authenticates sockets
//! with the access token, handles `join`/`leave`/`message`/`watchdog`,
//! appends chat messages to the chat log and fans out what the bus delivers
//! to its local sockets. It holds no state another replica needs.
//!
//! Its shape, as every service's: [`Deps`] in; [`Gateway::new`], then
//! [`Gateway::routes`] to serve and [`Gateway::run`] until shutdown.
//! Inside, by concern: `connect` (authentication), `client_event` (parsing),
//! `event_queue` (per-socket order), `handlers` (one per event), `refusal`
//! (error codes), `heartbeats` (coalescing), `fanout` (room subscriptions and
//! delivery, with `sequencer`), `catch_up` (replay on join), `session` (one
//! socket's user and rate).

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
mod sequencer;
mod session;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use clap::Args;
use common::auth::Tokens;
use common::bus::{Bus, Subjects};
use common::chat_log::ChatLog;
use common::events::{Events, PasswordChanged};
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
    pub metrics: GatewayMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Bus(#[from] common::bus::BusError),
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
        let (service, io) = SocketIo::builder()
            .ws_read_buffer_size(WS_READ_BUFFER)
            .max_buffer_size(SEND_BUFFER)
            .build_svc();
        let fanout = fanout::Fanout::new(
            io.clone(),
            deps.bus.clone(),
            deps.subjects.clone(),
            deps.metrics.slow_consumers.clone(),
            deps.metrics.deliveries.clone(),
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
            deps,
            fanout,
            heartbeats: heartbeats::Heartbeats::default(),
            appends: TaskTracker::new(),
            shutdown: OnceLock::new(),
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
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
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
                    self.close_revoked(&change.payload);
                }
                _ = sweep.tick() => self.fanout.sweep().await,
                _ = flush.tick() => {
                    for (user, at) in self.heartbeats.due() {
                        self.forward_heartbeat(&user, at).await;
                    }
                }
            }
        }
        self.drain().await;
        Ok(())
    }

    /// Closes the sockets of a user whose password changed that
    /// authenticated with a token issued under the old one (its reconnect
    /// is then refused: the token is revoked).
    fn close_revoked(&self, payload: &[u8]) {
        let change: PasswordChanged = match serde_json::from_slice(payload) {
            Ok(change) => change,
            Err(e) => {
                tracing::warn!(error = %e, "malformed password change ignored");
                return;
            }
        };
        let mut closed = 0;
        for socket in self.io.sockets() {
            if let Some(session) = fanout::session(&socket)
                && session.is(&change.user_name)
                && session.stamp != change.stamp
            {
                closed += 1;
                // A disconnect packet, not a dropped connection: the client
                // is told it was the server's doing, and does not retry.
                let _ = socket.disconnect();
            }
        }
        if closed > 0 {
            tracing::info!(
                user = change.user_name,
                closed,
                "sockets of a revoked token closed"
            );
        }
    }

    /// Lets the chat messages in flight be acknowledged. The sockets stay
    /// open until the process exits: their connections then drop, which
    /// every client takes as a lost transport and reconnects (to another
    /// replica, and catches up there). Closing them with a Socket.IO or
    /// Engine.IO close packet instead would tell some clients (python-socketio)
    /// that the server meant it, and they would not reconnect.
    /// True once shutdown has begun: chat messages are refused.
    pub(crate) fn draining(&self) -> bool {
        self.shutdown
            .get()
            .is_some_and(CancellationToken::is_cancelled)
    }

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
