//! The highest `chat_id` acknowledged to a client here, recorded in the
//! store: should the chat stream be lost, the next one starts above every
//! id a client may have seen (`JetStreamChatLog::open`).

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use common::adapters::store::Store;
use common::domain::ChatId;

/// How often the highest acknowledged `chat_id` is recorded in the store:
/// a lost stream can have acknowledged at most this long's messages more
/// than recorded; the new stream leaves room for them.
pub const RECORD_INTERVAL: Duration = Duration::from_secs(1);

/// The highest `chat_id` acknowledged here, and the highest recorded.
pub struct AckedIds {
    store: Store,
    acked: AtomicI64,
    recorded: AtomicI64,
}

impl AckedIds {
    pub fn new(store: Store) -> Self {
        Self {
            store,
            acked: AtomicI64::new(0),
            recorded: AtomicI64::new(0),
        }
    }

    /// `chat_id` was acknowledged to a client.
    pub fn acked(&self, chat_id: ChatId) {
        self.acked.fetch_max(chat_id, Ordering::Relaxed);
    }

    /// Records the highest `chat_id` acknowledged since the last record.
    pub async fn record(&self) {
        let acked = self.acked.load(Ordering::Relaxed);
        if acked <= self.recorded.load(Ordering::Relaxed) {
            return;
        }
        match self.store.record_acked(acked).await {
            Ok(()) => self.recorded.store(acked, Ordering::Relaxed),
            Err(e) => tracing::warn!(error = %e, "acknowledged chat ids not recorded; retried"),
        }
    }
}
