//! The chat log: where chat messages are appended (and given their
//! `chat_id`), read back before the store has them, and taken by the
//! persister to the store. Two implementations: a JetStream stream
//! (production; the persister writes it to MySQL) and the embedded log
//! (single-node mode; the store itself is the log). Separate from the
//! [`crate::adapters::bus`]: the log publishes each message there once it is durable.

use std::pin::Pin;

use async_trait::async_trait;
use futures_util::Stream;

use crate::adapters::store::{Store, StoreError};
use crate::domain::{ChatDraft, ChatId, ChatMessage, HistoryQuery, RoomId};
use crate::support::cause::Cause;

mod embedded;
mod jetstream;

pub use embedded::EmbeddedChatLog;
pub use jetstream::{JetStreamChatLog, PERSISTER_CONSUMER};

#[derive(Debug, Clone, thiserror::Error)]
pub enum ChatLogError {
    /// The log (or the broker behind it) cannot be reached now.
    #[error("the chat log is not reachable")]
    NotConnected,
    #[error("the message was not stored: {0}")]
    Append(#[source] Cause),
    #[error("cannot set up the chat log: {0}")]
    Setup(#[source] Cause),
    #[error("cannot read the chat log: {0}")]
    Read(#[source] Cause),
    /// More chat messages wait to be stored than a read may merge: the
    /// persister is far behind (or down).
    #[error("{0} chat messages wait to be stored")]
    Backlog(u64),
    /// The store failed while the log merged its rows; `unavailable` as
    /// [`StoreError::is_unavailable`] said.
    #[error("{message}")]
    Store { message: String, unavailable: bool },
}

impl From<StoreError> for ChatLogError {
    fn from(e: StoreError) -> Self {
        Self::Store {
            unavailable: e.is_unavailable(),
            message: e.to_string(),
        }
    }
}

#[async_trait]
pub trait ChatLog: Send + Sync + 'static {
    /// Starts storing a chat message durably. Messages started one after
    /// another are stored in that order; the returned future resolves to the
    /// message's `chat_id` once it is stored, and many may be pending at once
    /// (a socket's messages are pipelined, not sent one round trip apart).
    /// Only once stored is a message published as `new_message` on the bus,
    /// with that id as its sequence, so "seen live" implies "stored", and
    /// every subscriber sees one room's messages in `chat_id` order.
    ///
    /// With a `key`, the append is idempotent: appending again with the same
    /// key within [`IDEMPOTENCY_WINDOW`] stores and delivers nothing more
    /// and resolves to the first append's `chat_id`.
    async fn begin_append(
        &self,
        draft: &ChatDraft,
        key: Option<&IdempotencyKey>,
    ) -> Result<PendingAppend, ChatLogError>;

    /// The chat messages acknowledged to their senders that the store may
    /// not hold yet, of one room or of every room. Reads merge them with the
    /// store's rows, so that every acknowledged message is in every later
    /// read (docs/protocol.md, "General rules"). Read the store *after* this:
    /// what the store had committed by then covers everything up to
    /// [`Unstored::after`].
    async fn unstored(&self, room: Option<RoomId>) -> Result<Unstored, ChatLogError>;

    /// The messages for the persister to write to the store, as they are
    /// appended; `None` when the log is the store (nothing to persist).
    async fn to_store(&self, batch_max: usize) -> Result<Option<ToStore>, ChatLogError>;

    /// The store the log's messages end up in.
    fn store(&self) -> &Store;

    /// Fails when messages cannot be appended now.
    fn check_ready(&self) -> Result<(), ChatLogError>;

    /// Adds the log's own metrics, if it has any, to the process's.
    fn register_metrics(&self, _registry: &mut prometheus_client::registry::Registry) {}

    /// Yields each time `new_message`s published live may have missed this
    /// process's subscriptions although they were acknowledged: its
    /// connection to the broker came back, or the stream's leader changed
    /// (a leader that dies takes the live copies it was sending with it).
    /// A subscriber then reads what it missed from the log. `None` when
    /// live publication loses nothing (the embedded log).
    async fn live_gaps(&self) -> Result<Option<LiveGaps>, ChatLogError> {
        Ok(None)
    }

    /// Where a subscriber to the room's live messages starts checking them
    /// for gaps: the room's newest `chat_id` now (0 when it has none), read
    /// before subscribing. A message after it that does not come live is
    /// then read from the log, even the first one the subscriber would
    /// have received. `None` when live publication loses nothing (the
    /// embedded log).
    async fn live_floor(&self, _room_id: RoomId) -> Result<Option<ChatId>, ChatLogError> {
        Ok(None)
    }

    /// Stores a chat message durably and returns its `chat_id`.
    async fn append(&self, draft: &ChatDraft) -> Result<ChatId, ChatLogError> {
        self.begin_append(draft, None).await?.await
    }

    /// A room's acknowledged messages after `after`, oldest first: the
    /// newest `limit` of them, and whether that is all of them.
    async fn read_after(
        &self,
        room_id: RoomId,
        after: ChatId,
        limit: u32,
    ) -> Result<Page, ChatLogError> {
        newest_between(self, room_id, after, ChatId::MAX, limit).await
    }

    /// A page of a room's history (`GET /chat_history`): the newest `limit`
    /// acknowledged messages before `query.before`, oldest first.
    async fn history(&self, query: HistoryQuery) -> Result<Vec<ChatMessage>, ChatLogError> {
        let before = query.before.unwrap_or(ChatId::MAX);
        let page = newest_between(self, query.room_id, 0, before, query.limit).await?;
        Ok(page.messages)
    }
}

/// The newest `limit` of a room's acknowledged messages between `after` and
/// `before` (both excluded): the store's rows merged with the messages
/// acknowledged but not stored yet, so that a message is in every read once
/// its sender has the ack (docs/protocol.md, "General rules").
async fn newest_between<L: ChatLog + ?Sized>(
    log: &L,
    room_id: RoomId,
    after: ChatId,
    before: ChatId,
    limit: u32,
) -> Result<Page, ChatLogError> {
    // The log first: the store then holds everything up to `unstored.after`.
    let unstored = log.unstored(Some(room_id)).await?;
    // One more than asked for tells whether the page is all there is.
    let mut messages = log
        .store()
        .newest_between(room_id, after, before, limit.saturating_add(1))
        .await?;
    let len = messages.len();
    messages.extend(
        unstored
            .messages
            .into_iter()
            .filter(|m| m.chat_id > after && m.chat_id < before),
    );
    if messages.len() > len {
        messages.sort_unstable_by_key(|m| m.chat_id);
        messages.dedup_by_key(|m| m.chat_id);
    }
    let extra = messages.len().saturating_sub(limit as usize);
    messages.drain(..extra);
    Ok(Page {
        messages,
        complete: extra == 0,
    })
}

/// Some of a room's messages, oldest first (see [`ChatLog::read_after`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Page {
    pub messages: Vec<ChatMessage>,
    /// False when older messages were left out.
    pub complete: bool,
}

/// How long an [`IdempotencyKey`] is remembered (the contract's "within 2
/// minutes"; also the chat stream's duplicate window).
pub const IDEMPOTENCY_WINDOW: std::time::Duration = std::time::Duration::from_secs(120);

/// Identifies one chat message across its resends: its sender and the
/// client's `client_msg_id`. Safe as a NATS header value (the user name is
/// hex-encoded).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub fn new(user: &str, client_msg_id: &str) -> Self {
        Self(format!("{}-{client_msg_id}", hex::encode(user)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Chat messages the store may not hold yet (see [`ChatLog::unstored`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unstored {
    /// Every message with a `chat_id` up to this one is in the store.
    pub after: ChatId,
    /// Every message with a greater `chat_id` (of the room asked for),
    /// oldest first; some may be in the store already.
    pub messages: Vec<ChatMessage>,
}

impl Default for Unstored {
    /// Everything is stored (a log that stores before acknowledging).
    fn default() -> Self {
        Self {
            after: ChatId::MAX,
            messages: Vec::new(),
        }
    }
}

/// See [`ChatLog::live_gaps`].
pub type LiveGaps = Pin<Box<dyn Stream<Item = ()> + Send>>;

/// A chat message on its way to durable storage.
pub type PendingAppend = Pin<Box<dyn Future<Output = Result<ChatId, ChatLogError>> + Send>>;

/// The messages the persister takes, in log order. An entry is `Err` when
/// the log could not hand one over (logged, and redelivered later).
pub type ToStore = Pin<Box<dyn Stream<Item = Result<Delivery, ChatLogError>> + Send>>;

/// One message handed to the persister; the log hands it over again,
/// to any persister replica, until it is acknowledged.
pub struct Delivery {
    /// `None` when the entry is not a chat message: it is acknowledged with
    /// its batch and never retried.
    pub message: Option<ChatMessage>,
    /// The trace context the message was appended in, when traces are
    /// exported: the persister's span of it continues that trace.
    pub trace: Option<crate::telemetry::trace_context::TraceParent>,
    pub receipt: Box<dyn Receipt>,
}

impl std::fmt::Debug for Delivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Delivery")
            .field("message", &self.message)
            .finish_non_exhaustive()
    }
}

/// Acknowledges one [`Delivery`].
#[async_trait]
pub trait Receipt: Send + Sync {
    /// The message is in the store: never hand it over again.
    async fn stored(&self) -> Result<(), ChatLogError>;
    /// The message is still being stored (a retry): not yet again.
    async fn in_progress(&self);
}
