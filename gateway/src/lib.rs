//! The Socket.IO gateway (CONTRACT.md, "Socket.IO"): authenticates sockets
//! with the access token, handles `join`/`leave`/`message`/`watchdog`,
//! appends chat messages to the bus and fans out what the bus delivers to
//! its local sockets. It holds no state another replica needs.

mod handlers;
mod hub;
mod metrics;
mod payload;
mod sequencer;
mod session;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use clap::Args;
use common::auth::Tokens;
use common::bus::{Bus, Subjects};
use common::store::Store;
use futures_util::StreamExt;
use socketioxide::SocketIo;
use socketioxide::layer::SocketIoLayer;
use tokio_util::sync::CancellationToken;

pub use metrics::GatewayMetrics;
pub use payload::Refusal;
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
pub struct GatewayDeps {
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
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

/// A running gateway: its shared state, behind the Socket.IO handlers.
pub struct Gateway {
    io: SocketIo,
    deps: GatewayDeps,
    hub: hub::Hub,
    /// Heartbeat coalescing state per user.
    heartbeats: Mutex<HashMap<String, Coalesced>>,
}

/// A user's heartbeats on this gateway: when one was last forwarded, and the
/// newest one held back since (its client time, Unix ms).
#[derive(Debug)]
struct Coalesced {
    forwarded: Instant,
    held: Option<i64>,
}

/// Bytes read at a time from a WebSocket (socketioxide's default is 4 KiB):
/// client frames are small, and every idle connection holds this buffer.
const WS_READ_BUFFER: usize = 1024;

/// Packets a socket may have waiting to be written (socketioxide's default
/// is 128): room for bursts, allocated only when used. A socket that falls
/// further behind is disconnected (see `hub`).
const SEND_BUFFER: usize = 1024;

/// Builds the gateway: the tower layer that serves `/socket.io/`, and the
/// gateway, whose [`Gateway::run`] must be driven until shutdown. Mount the
/// layer with [`mount`].
pub fn build(deps: GatewayDeps) -> (SocketIoLayer, Arc<Gateway>) {
    let (layer, io) = SocketIo::builder()
        .ws_read_buffer_size(WS_READ_BUFFER)
        .max_buffer_size(SEND_BUFFER)
        .build_layer();
    let hub = hub::Hub::new(
        io.clone(),
        deps.bus.clone(),
        deps.subjects.clone(),
        deps.metrics.slow_consumers.clone(),
    );
    let gateway = Arc::new(Gateway {
        io: io.clone(),
        deps,
        hub,
        heartbeats: Mutex::default(),
    });
    handlers::register(&io, gateway.clone());
    (layer, gateway)
}

/// Where socketioxide serves (its default request path).
const SOCKET_IO_PATH: &str = "/socket.io";

/// Serves `/socket.io/` in front of `router`.
pub fn mount(router: axum::Router, layer: SocketIoLayer) -> axum::Router {
    router
        .layer(layer)
        .layer(axum::middleware::from_fn(detach_request))
}

/// The request headers a socket keeps: what Engine.IO needs to open it
/// (`sec-websocket-key`, a polling request's `content-type`) and what the
/// gateway reads when it connects (see `handlers`), or logs when it refuses.
const KEPT_HEADERS: [&str; 6] = [
    "sec-websocket-key",
    "content-type",
    "origin",
    "authorization",
    "user-agent",
    "x-forwarded-for",
];

/// hyper parses a request's URI and header values as slices of the
/// connection's read buffer (8 KiB and more), and socketioxide keeps every
/// socket's request parts for its lifetime: so each connection held that
/// whole buffer. Copying the few bytes out lets it go (measured: about
/// 16 KiB less per idle connection). Only [`KEPT_HEADERS`] are copied: a
/// browser sends a dozen more (cookies among them) that nothing reads.
async fn detach_request(
    mut request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    // Other requests (the API, in `komunikator all`) keep nothing: no copy.
    if !request.uri().path().starts_with(SOCKET_IO_PATH) {
        return next.run(request).await;
    }
    let headers = std::mem::take(request.headers_mut());
    let copied = request.headers_mut();
    for name in KEPT_HEADERS {
        for value in headers.get_all(name) {
            let mut fresh = axum::http::HeaderValue::from_bytes(value.as_bytes())
                .unwrap_or_else(|_| value.clone());
            fresh.set_sensitive(value.is_sensitive());
            copied.append(name, fresh);
        }
    }
    if let Ok(uri) = request.uri().to_string().parse() {
        *request.uri_mut() = uri;
    }
    next.run(request).await
}

/// How often rooms without local sockets are unsubscribed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

/// How often held-back heartbeats are checked for forwarding.
const HEARTBEAT_FLUSH: Duration = Duration::from_millis(100);

impl Gateway {
    /// Delivers `room_list_updated` to every socket and keeps room
    /// subscriptions tidy until `shutdown`; then disconnects every socket, so
    /// clients reconnect to another replica.
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), GatewayError> {
        let mut room_lists = self
            .deps
            .bus
            .subscribe(self.deps.subjects.room_list_updated())
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
                    if let Err(e) = self.io.emit("room_list_updated", &hub::NO_ARGS).await {
                        tracing::warn!(error = %e, "room_list_updated not delivered to every socket");
                    }
                }
                _ = sweep.tick() => self.hub.sweep().await,
                _ = flush.tick() => {
                    for (user, at) in self.due_heartbeats() {
                        self.forward_heartbeat(&user, at).await;
                    }
                }
            }
        }
        tracing::info!(sockets = self.io.sockets().len(), "closing every socket");
        self.io.close().await;
        Ok(())
    }

    /// Coalesces a heartbeat: `Some(at)` to forward now (the first in an
    /// interval), `None` when it is held back. The newest held-back one is
    /// forwarded by [`Gateway::due_heartbeats`] once the interval has passed,
    /// so presence always learns of a client's latest heartbeat, at most one
    /// interval late, and with the time the client sent it.
    fn coalesce_heartbeat(&self, user: &str, at: i64) -> Option<i64> {
        let Ok(mut users) = self.heartbeats.lock() else {
            return Some(at);
        };
        let now = Instant::now();
        match users.get_mut(user) {
            Some(c) if now.duration_since(c.forwarded) < session::HEARTBEAT_INTERVAL => {
                c.held = Some(at);
                None
            }
            _ => {
                users.insert(
                    user.to_owned(),
                    Coalesced {
                        forwarded: now,
                        held: None,
                    },
                );
                Some(at)
            }
        }
    }

    /// Held-back heartbeats whose interval has passed; forgets idle users.
    fn due_heartbeats(&self) -> Vec<(String, i64)> {
        let Ok(mut users) = self.heartbeats.lock() else {
            return vec![];
        };
        let now = Instant::now();
        let mut due = Vec::new();
        users.retain(|user, c| {
            let elapsed = now.duration_since(c.forwarded);
            if elapsed >= session::HEARTBEAT_INTERVAL
                && let Some(at) = c.held.take()
            {
                c.forwarded = now;
                due.push((user.clone(), at));
                return true;
            }
            elapsed < session::HEARTBEAT_INTERVAL * 2
        });
        due
    }

    async fn forward_heartbeat(&self, user: &str, at: i64) {
        let body = serde_json::json!({ "user_name": user, "at": at }).to_string();
        if let Err(e) = self
            .deps
            .bus
            .publish(self.deps.subjects.heartbeats(), body.into())
            .await
        {
            tracing::error!(user, error = %e, "heartbeat not forwarded");
        }
    }
}
