//! The embedded chat log of single-node mode: the store is the log. A
//! writer task stores appended messages a batch at a time (the store gives
//! them their `chat_id`), then publishes them on the in-process bus, in id
//! order. Nothing is acknowledged before it is stored, so there is nothing
//! unstored to merge and nothing for a persister to do.

use std::collections::{HashMap, VecDeque};
use std::time::Instant;

use async_trait::async_trait;
use tokio::sync::{mpsc, oneshot};
use tracing::Instrument;

use super::{
    ChatLog, ChatLogError, IDEMPOTENCY_WINDOW, IdempotencyKey, PendingAppend, ToStore, Unstored,
};
use crate::adapters::bus::{BusMessage, LocalBus};
use crate::adapters::store::{Store, StoreError};
use crate::domain::subjects::Subjects;
use crate::domain::{ChatDraft, ChatId, RoomId};
use crate::support::cause::Cause;
use crate::telemetry::trace_context::TraceParent;

/// Most chat messages written in one transaction.
const APPEND_BATCH_MAX: usize = 256;

#[derive(Clone)]
pub struct EmbeddedChatLog {
    store: Store,
    /// Chat messages for the writer task, in the order they were started.
    appends: mpsc::UnboundedSender<Append>,
}

impl std::fmt::Debug for EmbeddedChatLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmbeddedChatLog").finish_non_exhaustive()
    }
}

impl EmbeddedChatLog {
    /// A log that stores chat messages in `store`, then publishes them on
    /// `bus`. Must be created inside a Tokio runtime: it starts the writer,
    /// which ends when the last clone of the log is dropped.
    pub fn new(store: Store, bus: LocalBus, subjects: Subjects) -> Self {
        let (appends, queue) = mpsc::unbounded_channel();
        let writer = Writer {
            store: store.clone(),
            bus,
            subjects,
            remembered: Remembered::default(),
        };
        tokio::spawn(writer.run(queue));
        Self { store, appends }
    }
}

#[async_trait]
impl ChatLog for EmbeddedChatLog {
    /// Queues the message for the writer, which stores whatever is waiting
    /// in one transaction (group commit) and publishes each in id order.
    async fn begin_append(
        &self,
        draft: &ChatDraft,
        key: Option<&IdempotencyKey>,
    ) -> Result<PendingAppend, ChatLogError> {
        let (done, stored) = oneshot::channel();
        self.appends
            .send(Append {
                draft: draft.clone(),
                key: key.cloned(),
                done,
                trace: TraceParent::current(),
            })
            .map_err(|_| ChatLogError::NotConnected)?;
        Ok(Box::pin(async move {
            stored.await.map_err(|_| ChatLogError::NotConnected)?
        }))
    }

    async fn unstored(&self, _room: Option<RoomId>) -> Result<Unstored, ChatLogError> {
        Ok(Unstored::default())
    }

    async fn to_store(&self, _batch_max: usize) -> Result<Option<ToStore>, ChatLogError> {
        Ok(None)
    }

    fn store(&self) -> &Store {
        &self.store
    }

    fn check_ready(&self) -> Result<(), ChatLogError> {
        Ok(())
    }
}

/// A chat message waiting for the writer.
struct Append {
    draft: ChatDraft,
    key: Option<IdempotencyKey>,
    done: oneshot::Sender<Result<ChatId, ChatLogError>>,
    /// The appending span's context: the message's delivery continues it.
    trace: Option<TraceParent>,
}

/// The ids of recently stored messages by idempotency key, for
/// [`IDEMPOTENCY_WINDOW`]: a resend gets the first one's id.
#[derive(Default)]
struct Remembered {
    ids: HashMap<IdempotencyKey, ChatId>,
    /// Keys in the order they were stored, to forget them in that order.
    stored: VecDeque<(Instant, IdempotencyKey)>,
}

impl Remembered {
    fn forget_expired(&mut self, now: Instant) {
        while let Some((at, _)) = self.stored.front()
            && now.duration_since(*at) > IDEMPOTENCY_WINDOW
        {
            if let Some((_, key)) = self.stored.pop_front() {
                self.ids.remove(&key);
            }
        }
    }

    fn remember(&mut self, key: IdempotencyKey, id: ChatId, now: Instant) {
        self.ids.insert(key.clone(), id);
        self.stored.push_back((now, key));
    }
}

/// One batch of appends, resends folded: a message to store per entry,
/// with its key and every sender waiting for it.
#[derive(Default)]
struct Batch {
    drafts: Vec<ChatDraft>,
    keys: Vec<Option<IdempotencyKey>>,
    traces: Vec<Option<TraceParent>>,
    waiting: Vec<Vec<oneshot::Sender<Result<ChatId, ChatLogError>>>>,
}

/// The task that stores and publishes appended messages.
struct Writer {
    store: Store,
    bus: LocalBus,
    subjects: Subjects,
    remembered: Remembered,
}

impl Writer {
    /// Stores queued chat messages a batch at a time, then publishes them
    /// and answers their senders. A resend (a key stored within the window,
    /// or twice in one batch) is answered with the first one's id and
    /// neither stored nor published again.
    async fn run(mut self, mut queue: mpsc::UnboundedReceiver<Append>) {
        let mut appends = Vec::with_capacity(APPEND_BATCH_MAX);
        while queue.recv_many(&mut appends, APPEND_BATCH_MAX).await > 0 {
            let now = Instant::now();
            self.remembered.forget_expired(now);
            let batch = self.fold_resends(&mut appends);
            if batch.drafts.is_empty() {
                continue;
            }
            let outcomes = self.store_and_publish(&batch.drafts, &batch.traces).await;
            for ((outcome, key), senders) in outcomes.into_iter().zip(batch.keys).zip(batch.waiting)
            {
                if let (Ok(id), Some(key)) = (&outcome, key) {
                    self.remembered.remember(key, *id, now);
                }
                for done in senders {
                    let _ = done.send(outcome.clone());
                }
            }
        }
    }

    /// Answers resends of remembered messages at once, and makes one entry
    /// of the resends within the batch.
    fn fold_resends(&self, appends: &mut Vec<Append>) -> Batch {
        let mut batch = Batch::default();
        let mut in_batch: HashMap<IdempotencyKey, usize> = HashMap::new();
        for Append {
            draft,
            key,
            done,
            trace,
        } in appends.drain(..)
        {
            if let Some(key) = &key {
                if let Some(&id) = self.remembered.ids.get(key) {
                    let _ = done.send(Ok(id));
                    continue;
                }
                if let Some(&i) = in_batch.get(key) {
                    batch.waiting[i].push(done);
                    continue;
                }
                in_batch.insert(key.clone(), batch.drafts.len());
            }
            batch.drafts.push(draft);
            batch.keys.push(key);
            batch.traces.push(trace);
            batch.waiting.push(vec![done]);
        }
        batch
    }

    /// Stores the drafts in one transaction, then publishes each stored one
    /// in id order; the outcome of each.
    async fn store_and_publish(
        &self,
        drafts: &[ChatDraft],
        traces: &[Option<TraceParent>],
    ) -> Vec<Result<ChatId, ChatLogError>> {
        // A span only when some message is part of a sampled trace (only
        // those carry a context here).
        let span = if traces.iter().any(Option::is_some) {
            crate::trace_span!(
                "store chat messages",
                messaging.batch.message_count = drafts.len()
            )
        } else {
            tracing::Span::none()
        };
        for trace in traces.iter().flatten() {
            trace.link_from(&span);
        }
        let stored = self.store.append_messages(drafts).instrument(span).await;
        let ids = match stored {
            Ok(ids) => ids,
            Err(e) => {
                let e = ChatLogError::Append(Cause::new(e));
                return drafts.iter().map(|_| Err(e.clone())).collect();
            }
        };
        drafts
            .iter()
            .zip(ids)
            .zip(traces)
            .map(|((draft, id), trace)| {
                let id = id.map_err(|e| match e {
                    StoreError::Missing => {
                        ChatLogError::Append(Cause::text("the room no longer exists"))
                    }
                    e => ChatLogError::Append(Cause::new(e)),
                })?;
                self.publish(draft, id, trace.clone())?;
                Ok(id)
            })
            .collect()
    }

    /// A stored chat message, to its room's subscribers.
    fn publish(
        &self,
        draft: &ChatDraft,
        chat_id: ChatId,
        trace: Option<TraceParent>,
    ) -> Result<(), ChatLogError> {
        let payload = crate::domain::events::encode_draft(draft);
        self.bus
            .deliver(BusMessage {
                subject: self.subjects.new_message(draft.room_id),
                payload,
                sequence: Some(chat_id),
                previous: None,
                trace,
            })
            .map_err(|e| ChatLogError::Append(Cause::new(e)))
    }
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;
    use crate::adapters::bus::Bus;

    /// A log and its bus on a fresh SQLite store; the directory is removed
    /// on drop.
    struct TestLog {
        log: EmbeddedChatLog,
        bus: LocalBus,
        store: Store,
        dir: std::path::PathBuf,
    }

    impl Drop for TestLog {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    impl TestLog {
        /// A new room, owned by a new user `ann`.
        async fn room_of_ann(&self) -> RoomId {
            self.store.create_user("ann", "x").await.expect("user");
            let new_room = crate::domain::NewRoom {
                name: "r".into(),
                owner: "ann".into(),
                access_key: None,
            };
            self.store
                .create_room(&new_room, crate::domain::now())
                .await
                .expect("room")
        }
    }

    async fn test_log() -> TestLog {
        let dir = std::env::temp_dir().join(format!("kom-unit-{}", crate::support::random_hex(6)));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let settings = crate::adapters::store::StoreSettings::Sqlite {
            path: dir.join("db.sqlite3"),
        };
        let store = Store::connect(&settings).await.expect("store");
        store.migrate().await.expect("migrate");
        let bus = LocalBus::new();
        TestLog {
            log: EmbeddedChatLog::new(store.clone(), bus.clone(), Subjects::new("kom")),
            bus,
            store,
            dir,
        }
    }

    #[tokio::test]
    async fn chat_messages_are_stored_before_delivery_with_their_id() {
        let t = test_log().await;
        let store = t.store.clone();
        let mut room = t
            .bus
            .subscribe("kom.room.1.>".into())
            .await
            .expect("subscribe");
        let draft = ChatDraft {
            room_id: 1,
            user_name: "ann".into(),
            message: "hi".into(),
            create_date: crate::domain::now(),
        };
        // No room 1 yet: refused, and nothing is delivered.
        assert!(t.log.append(&draft).await.is_err());
        assert_eq!(t.room_of_ann().await, 1);
        let id = t.log.append(&draft).await.expect("append");
        let delivered = room.next().await.expect("delivered");
        assert_eq!(
            (delivered.subject.as_str(), delivered.sequence),
            ("kom.room.1.new_message", Some(id))
        );
        assert_eq!(
            store
                .newest_between(1, 0, ChatId::MAX, 10)
                .await
                .expect("history"),
            vec![draft.with_id(id)]
        );
    }

    #[tokio::test]
    async fn pipelined_messages_are_stored_together_in_order_and_fail_alone() {
        let t = test_log().await;
        let room = t.room_of_ann().await;
        let mut live = t
            .bus
            .subscribe("kom.room.*.new_message".into())
            .await
            .expect("subscribe");
        // 300 messages started before any is awaited; every tenth to a room
        // that does not exist.
        let mut pending = Vec::new();
        for i in 0..300 {
            let draft = ChatDraft {
                room_id: if i % 10 == 9 { room + 1 } else { room },
                user_name: "ann".into(),
                message: format!("m{i}"),
                create_date: crate::domain::now(),
            };
            pending.push(t.log.begin_append(&draft, None).await.expect("started"));
        }
        let mut ids = Vec::new();
        for (i, stored) in pending.into_iter().enumerate() {
            match stored.await {
                Ok(id) => ids.push(id),
                Err(e) => assert_eq!(i % 10, 9, "message {i} failed: {e}"),
            }
        }
        assert_eq!(ids.len(), 270);
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "ids follow the start order"
        );
        for id in &ids {
            let delivered = live.next().await.expect("delivered");
            assert_eq!(delivered.sequence, Some(*id), "delivered in id order");
        }
        let stored = t.store.newest_between(room, 0, ChatId::MAX, 1000).await;
        assert_eq!(stored.expect("history").len(), 270);
    }

    #[tokio::test]
    async fn reads_after_an_id_give_the_newest_and_say_whether_that_is_all() {
        let t = test_log().await;
        let room = t.room_of_ann().await;
        let mut ids = Vec::new();
        for i in 0..5 {
            let draft = ChatDraft {
                room_id: room,
                user_name: "ann".into(),
                message: format!("m{i}"),
                create_date: crate::domain::now(),
            };
            ids.push(t.log.append(&draft).await.expect("append"));
        }
        let ids_of = |page: &super::super::Page| -> Vec<ChatId> {
            page.messages.iter().map(|m| m.chat_id).collect()
        };
        let all = t.log.read_after(room, ids[1], 10).await.expect("read");
        assert_eq!((ids_of(&all), all.complete), (ids[2..].to_vec(), true));
        let newest = t.log.read_after(room, ids[1], 2).await.expect("read");
        assert_eq!(
            (ids_of(&newest), newest.complete),
            (ids[3..].to_vec(), false)
        );
        let exact = t.log.read_after(room, ids[1], 3).await.expect("read");
        assert_eq!((ids_of(&exact), exact.complete), (ids[2..].to_vec(), true));
        let none = t.log.read_after(room, ids[4], 10).await.expect("read");
        assert_eq!((ids_of(&none), none.complete), (vec![], true));
    }

    #[test]
    fn a_resend_key_is_remembered_for_the_idempotency_window_only() {
        let mut remembered = Remembered::default();
        let t0 = Instant::now();
        let key = IdempotencyKey::new("ann", "m1");
        remembered.remember(key.clone(), 7, t0);
        remembered.forget_expired(t0 + IDEMPOTENCY_WINDOW);
        assert_eq!(
            remembered.ids.get(&key),
            Some(&7),
            "kept for the whole window"
        );
        remembered.forget_expired(t0 + IDEMPOTENCY_WINDOW + std::time::Duration::from_millis(1));
        assert_eq!(remembered.ids.get(&key), None, "forgotten after it");
        assert!(remembered.stored.is_empty());
    }
}
