//! Publish/subscribe between services, on NATS subjects (production) or in
//! process (the embedded single-node default). What travels on it is in
//! [`crate::domain::events`]; chat messages are stored through the chat log
//! ([`crate::adapters::chat_log`]), which publishes them here once durable.

use std::pin::Pin;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::Stream;

use crate::domain::ChatId;
use crate::support::cause::Cause;
use crate::telemetry::trace_context::TraceParent;

mod local;
mod nats;

pub use crate::domain::subjects::Subjects;
pub use local::LocalBus;
pub use nats::NatsBus;
pub(crate) use nats::{trace_headers, trace_parent};

#[derive(Debug, Clone, thiserror::Error)]
pub enum BusError {
    #[error("cannot connect to NATS: {0}")]
    Connect(#[source] Cause),
    #[error("publish failed: {0}")]
    Publish(#[source] Cause),
    #[error("subscribe failed: {0}")]
    Subscribe(#[source] Cause),
    #[error("the bus is not connected")]
    NotConnected,
    #[error("stream setup failed: {0}")]
    Setup(#[source] Cause),
}

/// One message as a subscriber receives it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BusMessage {
    pub subject: String,
    pub payload: Bytes,
    /// The `chat_id` of a chat message (the broker's stream sequence, or the
    /// embedded store's id); `None` for other events.
    pub sequence: Option<ChatId>,
    /// The `chat_id` of the room's previous message (0 for its first), when
    /// the bus may deliver out of order and says so; `None` when it delivers
    /// in order anyway.
    pub previous: Option<ChatId>,
    /// The trace context of the span that published it, when traces are
    /// exported: the subscriber's span continues that trace.
    pub trace: Option<TraceParent>,
}

/// The messages published on a subject (pattern) from subscription on.
pub type Subscription = Pin<Box<dyn Stream<Item = BusMessage> + Send>>;

#[async_trait]
pub trait Bus: Send + Sync + 'static {
    /// Publishes `payload` on `subject`, with the trace context of the
    /// current span when traces are exported.
    async fn publish(&self, subject: String, payload: Bytes) -> Result<(), BusError>;
    /// Subscribes to a subject; `*` matches one token and `>` the rest, as in
    /// NATS. Returns once the subscription is active: nothing published
    /// afterwards is missed.
    async fn subscribe(&self, subject: String) -> Result<Subscription, BusError>;
    /// Subscribes as a member of `group`: each message goes to one member
    /// (replicas of a service share the work).
    async fn subscribe_queue(
        &self,
        subject: String,
        group: String,
    ) -> Result<Subscription, BusError>;
    /// Returns once the broker has everything published before: its
    /// subscribers are being sent it.
    async fn flush(&self) -> Result<(), BusError>;
    /// Fails when the bus cannot deliver messages now.
    fn check_ready(&self) -> Result<(), BusError>;
}
