//! Reading from the chat stream what the store may not have yet (see
//! [`ChatLog::unstored`](crate::adapters::chat_log::ChatLog::unstored)):
//! past the persister's ack floor, up to the newest message.

use std::sync::atomic::Ordering;

use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::DirectGetErrorKind;
use futures_util::StreamExt;

use super::{JetStreamChatLog, chat_id};
use crate::adapters::chat_log::{ChatLogError, PERSISTER_CONSUMER, Unstored};
use crate::domain::{ChatDraft, RoomId};
use crate::support::cause::Cause;

/// Most unstored chat messages one read merges; past that the persister is
/// far behind, and reads answer "try again" rather than read for seconds.
const UNSTORED_MAX: u64 = 10_000;

/// Stream reads in flight at once while collecting unstored messages.
const UNSTORED_READS: usize = 64;

impl JetStreamChatLog {
    /// The chat messages that may not be stored yet (see
    /// [`ChatLog::unstored`]), read from the stream.
    pub(super) async fn collect_unstored(
        &self,
        room: Option<RoomId>,
    ) -> Result<Unstored, ChatLogError> {
        let subject = room.map(|room| self.subjects.chat(room));
        // One room: its newest message, read fresh. Already stored (the
        // usual case while the persister keeps up) means nothing to merge,
        // for the price of one direct get.
        let room_last = match &subject {
            Some(subject) => match self.last_of(subject).await? {
                Some(last) => Some(last),
                None => return Ok(Unstored::default()),
            },
            None => None,
        };
        if room_last.is_some_and(|last| last <= self.stored_floor.load(Ordering::Relaxed)) {
            return Ok(Unstored::default());
        }
        let Some((after, stream_last)) = self.unstored_range().await? else {
            return Ok(Unstored::default());
        };
        let last = room_last.map_or(stream_last, |l| l.min(stream_last));
        if last <= after {
            return Ok(Unstored::default());
        }
        if last - after > UNSTORED_MAX {
            return Err(ChatLogError::Backlog(last - after));
        }
        let reads = futures_util::stream::iter(after + 1..=last)
            .map(|sequence| self.stream.direct_get(sequence))
            .buffered(UNSTORED_READS);
        futures_util::pin_mut!(reads);
        let mut messages = Vec::new();
        while let Some(read) = reads.next().await {
            let message = match read {
                Ok(message) => message,
                // Removed from the stream (its age limit): stored long ago.
                Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => continue,
                Err(e) => return Err(ChatLogError::Read(Cause::new(e))),
            };
            if subject
                .as_deref()
                .is_some_and(|s| s != message.subject.as_str())
            {
                continue;
            }
            match serde_json::from_slice::<ChatDraft>(&message.payload) {
                Ok(draft) => messages.push(draft.with_id(chat_id(message.sequence)?)),
                Err(e) => {
                    tracing::warn!(sequence = message.sequence, error = %e, "not a chat message")
                }
            }
        }
        Ok(Unstored {
            after: chat_id(after)?,
            messages,
        })
    }

    /// The sequence of the newest message on `subject`; `None` when it has none.
    pub(super) async fn last_of(&self, subject: &str) -> Result<Option<u64>, ChatLogError> {
        match self.stream.direct_get_last_for_subject(subject).await {
            Ok(message) => Ok(Some(message.sequence)),
            Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => Ok(None),
            Err(e) => Err(ChatLogError::Read(Cause::new(e))),
        }
    }

    /// The stream sequences `(after, last]` that may not be stored yet:
    /// past the persister's ack floor (every message up to it is committed
    /// to the store before being acknowledged), up to the newest message.
    /// `None` when everything is stored.
    async fn unstored_range(&self) -> Result<Option<(u64, u64)>, ChatLogError> {
        fn read_error(e: impl std::error::Error + Send + Sync + 'static) -> ChatLogError {
            ChatLogError::Read(Cause::new(e))
        }
        match self.stream.consumer_info(PERSISTER_CONSUMER).await {
            Ok(info) => {
                if info.num_pending == 0 && info.num_ack_pending == 0 {
                    self.stored_floor
                        .fetch_max(info.delivered.stream_sequence, Ordering::Relaxed);
                    return Ok(None);
                }
                let floor = info.ack_floor.stream_sequence;
                self.stored_floor.fetch_max(floor, Ordering::Relaxed);
                let last = info.delivered.stream_sequence + info.num_pending;
                Ok(Some((floor, last)).filter(|(a, l)| l > a))
            }
            // No persister has run yet: nothing in the stream is stored.
            Err(e) if matches!(e.kind(), ConsumerInfoErrorKind::NotFound) => {
                let state = self
                    .jetstream
                    .get_stream(self.subjects.chat_stream())
                    .await
                    .map_err(read_error)?
                    .cached_info()
                    .state
                    .clone();
                Ok((state.messages > 0)
                    .then(|| (state.first_sequence.saturating_sub(1), state.last_sequence)))
            }
            Err(e) => Err(read_error(e)),
        }
    }
}
