//! The Socket.IO gateway (docs/protocol.md, "Socket.IO"): authenticates sockets
//! with the access token, handles `join`/`leave`/`message`/`watchdog`,
//! appends chat messages to the chat log and fans out what the bus delivers
//! to its local sockets. It holds no state another replica needs.
//!
//! Its shape, as every service's: [`Deps`] in; [`Gateway::new`], then
//! [`Gateway::routes`] to serve and [`Gateway::run`] until shutdown.
//! Inside, parts that each own their state: a [`connect::Connector`]
//! authenticates sockets; [`event_queue::EventQueues`] keep each socket's
//! events in order and answer them (`outcome`); [`handlers::Handlers`]
//! handle them, one method per event (`client_event` parses them, `refusal`
//! names the errors); [`heartbeats::Heartbeats`] coalesce `watchdog`s;
//! [`fanout::Fanout`] subscribes to rooms, each delivered by its `room`
//! task (with `sequencer`, `room_presence` and `catch_up`);
//! [`revocation::Revocations`] close sockets whose grant ended;
//! [`drain::Drain`] lets messages in flight finish at shutdown. `Gateway`
//! composes them. `scripts/module-deps.py` checks that no module imports
//! one that imports it back.

mod acked;
mod admission;
mod catch_up;
mod client_event;
mod connect;
mod drain;
mod event_queue;
mod fanout;
mod handlers;
mod heartbeats;
mod metrics;
mod outcome;
mod refusal;
mod request_headers;
mod revocation;
mod room;
mod room_presence;
mod sequencer;
mod session;

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use common::accounts::tokens::Tokens;
use common::adapters::bus::{Bus, Subjects};
use common::adapters::chat_log::ChatLog;
use common::adapters::store::Store;
use common::domain::events::Events;
use futures_util::StreamExt;
use socketioxide::SocketIo;
use tokio_util::sync::CancellationToken;

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
    #[arg(long, env = "MESSAGE_RATE_BURST", default_value_t = 40, value_parser = common::support::problems::at_least_one::<u32>())]
    pub message_rate_burst: u32,
    /// Seconds a client has, after opening an Engine.IO session, to
    /// authenticate its Socket.IO connection; then it is closed.
    #[arg(long, env = "SOCKET_CONNECT_TIMEOUT_SECS", default_value_t = 10, value_parser = common::support::problems::at_least_one::<u64>())]
    pub socket_connect_timeout_secs: u64,
    /// Seconds between the Engine.IO pings a gateway sends each socket (the
    /// open packet's `pingInterval`). A load balancer's idle timeout must
    /// be longer.
    #[arg(long, env = "PING_INTERVAL_SECS", default_value_t = 25, value_parser = common::support::problems::at_least_one::<u64>())]
    pub ping_interval_secs: u64,
    /// Seconds a client has to answer a ping before its socket is closed
    /// (`pingTimeout`).
    #[arg(long, env = "PING_TIMEOUT_SECS", default_value_t = 20, value_parser = common::support::problems::at_least_one::<u64>())]
    pub ping_timeout_secs: u64,
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
    /// Engine.IO's heartbeat: a ping every `ping_interval`, to be answered
    /// within `ping_timeout`.
    pub ping_interval: Duration,
    pub ping_timeout: Duration,
    /// Sockets per user on this gateway; 0 is unlimited.
    pub max_sockets_per_user: usize,
    /// See [`GatewayArgs::per_user_events_max_sockets`].
    pub per_user_events_max_sockets: usize,
    pub metrics: GatewayMetrics,
}

#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error(transparent)]
    Bus(#[from] common::adapters::bus::BusError),
    #[error(transparent)]
    ChatLog(#[from] common::adapters::chat_log::ChatLogError),
}

/// A gateway: its parts, behind the Socket.IO handlers.
pub struct Gateway {
    io: SocketIo,
    /// `/socket.io/`: Engine.IO's long-polling and WebSocket requests.
    routes: axum::Router,
    bus: Arc<dyn Bus>,
    subjects: Subjects,
    chat_log: Arc<dyn ChatLog>,
    fanout: Arc<fanout::Fanout>,
    heartbeats: Arc<heartbeats::Heartbeats>,
    revocations: revocation::Revocations,
    acked: Arc<acked::AckedIds>,
    drain: Arc<drain::Drain>,
}

/// Bytes read at a time from a WebSocket (socketioxide's default is 4 KiB):
/// client frames are small, and every idle connection holds this buffer
/// (less would not stay less: once a frame shares it, the buffer grows back
/// to 1 KiB, the least `bytes` reallocates to).
const WS_READ_BUFFER: usize = 1024;

/// Packets a socket may have waiting to be written (socketioxide's default
/// is 128): room for bursts, allocated only when used. A socket that falls
/// further behind is disconnected (see `room`).
const SEND_BUFFER: usize = 1024;

/// Where Engine.IO is served (socketioxide's default request path).
const SOCKET_IO_PATH: &str = "/socket.io";

/// How often rooms without local sockets are unsubscribed.
const SWEEP_INTERVAL: Duration = Duration::from_secs(2);

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
            .ping_interval(deps.ping_interval)
            .ping_timeout(deps.ping_timeout)
            .build_svc();
        let metrics = &deps.metrics;
        let rooms = room::RoomsShared::new(
            io.clone(),
            deps.store.clone(),
            deps.chat_log.clone(),
            metrics,
            deps.per_user_events_max_sockets,
        );
        let fanout = Arc::new(fanout::Fanout::new(
            deps.bus.clone(),
            deps.subjects.clone(),
            rooms,
        ));
        let events = Events::new(deps.bus.clone(), deps.subjects.clone());
        let heartbeats = Arc::new(heartbeats::Heartbeats::new(
            events.clone(),
            deps.subjects.heartbeats(),
        ));
        let expiries = Arc::new(admission::Expiries::default());
        let connector = Arc::new(connect::Connector {
            tokens: deps.tokens,
            store: deps.store.clone(),
            allowed_origins: deps.allowed_origins,
            rate: deps.rate,
            user_sockets: admission::UserSockets::new(deps.max_sockets_per_user),
            expiries: expiries.clone(),
            refusals: metrics.connect_refusals.clone(),
        });
        let acked = Arc::new(acked::AckedIds::new(deps.store.clone()));
        let drain = Arc::new(drain::Drain::default());
        let handlers = Arc::new(handlers::Handlers {
            store: deps.store,
            chat_log: deps.chat_log.clone(),
            events,
            fanout: fanout.clone(),
            heartbeats: heartbeats.clone(),
            connector: connector.clone(),
            acked: acked.clone(),
            drain: drain.clone(),
            append_seconds: metrics.append_seconds.clone(),
        });
        let queues = Arc::new(event_queue::EventQueues::new(
            handlers,
            outcome::Answers::new(metrics),
            drain.clone(),
            metrics.sockets.clone(),
        ));
        connect::register(&io, connector, move |socket| queues.attach(socket));
        let path = format!("{SOCKET_IO_PATH}/");
        let routes = axum::Router::new()
            .route_service(SOCKET_IO_PATH, service.clone())
            .route_service(&path, service)
            .route_layer(axum::middleware::from_fn(request_headers::detach_request));
        Arc::new(Self {
            revocations: revocation::Revocations::new(io.clone(), expiries),
            io,
            routes,
            bus: deps.bus,
            subjects: deps.subjects,
            chat_log: deps.chat_log,
            fanout,
            heartbeats,
            acked,
            drain,
        })
    }

    /// `/socket.io/`: Engine.IO's long-polling and WebSocket requests.
    pub fn routes(&self) -> axum::Router {
        self.routes.clone()
    }

    /// Delivers `room_list_updated` to every socket, keeps room
    /// subscriptions tidy and forwards held-back heartbeats until
    /// `shutdown`; then drains (see [`drain::Drain::finish`]).
    pub async fn run(self: Arc<Self>, shutdown: CancellationToken) -> Result<(), GatewayError> {
        self.drain.watch(&shutdown);
        let mut room_lists = self
            .bus
            .subscribe(self.subjects.room_list_updated())
            .await?;
        let mut password_changes = self.bus.subscribe(self.subjects.password_changed()).await?;
        let mut sessions_ended = self.bus.subscribe(self.subjects.session_ended()).await?;
        let mut live_gaps = self
            .chat_log
            .live_gaps()
            .await?
            .unwrap_or_else(|| Box::pin(futures_util::stream::pending()));
        let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
        let mut expiries = tokio::time::interval(revocation::EXPIRY_SWEEP);
        let mut record = tokio::time::interval(acked::RECORD_INTERVAL);
        let mut flush = tokio::time::interval(heartbeats::FLUSH_INTERVAL);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                update = room_lists.next() => {
                    if update.is_none() {
                        tracing::error!("room list subscription ended");
                        break;
                    }
                    if let Err(e) = self.io.emit("room_list_updated", &room::NO_ARGS).await {
                        tracing::warn!(error = %e, "room_list_updated not delivered to every socket");
                    }
                }
                change = password_changes.next() => {
                    let Some(change) = change else {
                        tracing::error!("password change subscription ended");
                        break;
                    };
                    self.revocations.password_changed(&change.payload);
                }
                ended = sessions_ended.next() => {
                    let Some(ended) = ended else {
                        tracing::error!("session end subscription ended");
                        break;
                    };
                    self.revocations.session_ended(&ended.payload);
                }
                Some(()) = live_gaps.next() => {
                    tracing::info!("live chat messages may have been lost: rooms read the chat log");
                    self.fanout.read_gaps();
                }
                _ = expiries.tick() => self.revocations.close_expired(),
                _ = record.tick() => self.acked.record().await,
                _ = sweep.tick() => self.fanout.sweep().await,
                _ = flush.tick() => self.heartbeats.flush().await,
            }
        }
        self.drain.finish(self.io.sockets().len()).await;
        self.acked.record().await;
        Ok(())
    }
}
