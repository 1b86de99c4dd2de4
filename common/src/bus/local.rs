//! The in-process adapter of the bus, for single-node mode: the same subject
//! semantics as NATS (`*`, `>`), delivered through channels. Chat messages
//! are stored first (the store assigns their ids), then delivered.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::{
    Bus, BusError, BusMessage, IDEMPOTENCY_WINDOW, IdempotencyKey, PendingAppend, Subjects,
    Subscription,
};
use crate::domain::{ChatDraft, ChatId};
use crate::store::{Store, StoreError};

#[derive(Clone)]
pub struct LocalBus {
    delivery: Arc<Deliverer>,
    /// Chat messages for the writer task, in the order they were started.
    appends: mpsc::UnboundedSender<Append>,
}

/// Most chat messages written in one transaction.
const APPEND_BATCH_MAX: usize = 256;

/// A chat message waiting for the writer.
struct Append {
    draft: ChatDraft,
    key: Option<IdempotencyKey>,
    done: oneshot::Sender<Result<ChatId, BusError>>,
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

impl std::fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBus")
            .field("subjects", &self.delivery.subjects)
            .finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Subscriber {
    pattern: String,
    tx: mpsc::UnboundedSender<BusMessage>,
}

impl LocalBus {
    /// A bus that stores chat messages in `store` before delivering them.
    /// Must be created inside a Tokio runtime: it starts the writer task.
    pub fn new(store: Arc<dyn Store>, subjects: Subjects) -> Self {
        let (appends, queue) = mpsc::unbounded_channel();
        let delivery = Arc::new(Deliverer {
            subscribers: Mutex::default(),
            subjects,
        });
        tokio::spawn(write(store, delivery.clone(), queue));
        Self { delivery, appends }
    }

    fn deliver(&self, message: BusMessage) -> Result<(), BusError> {
        self.delivery.deliver(message)
    }
}

/// Hands messages to the matching subscribers.
struct Deliverer {
    subscribers: Mutex<Vec<Subscriber>>,
    subjects: Subjects,
}

impl Deliverer {
    fn deliver(&self, message: BusMessage) -> Result<(), BusError> {
        let mut subscribers = self
            .subscribers
            .lock()
            .map_err(|e| BusError::Publish(e.to_string()))?;
        // Sending fails only when the subscription was dropped: forget it.
        subscribers.retain(|s| {
            !subject_matches(&s.pattern, &message.subject) || s.tx.send(message.clone()).is_ok()
        });
        Ok(())
    }
}

#[async_trait]
impl Bus for LocalBus {
    async fn publish(&self, subject: String, payload: Bytes) -> Result<(), BusError> {
        self.deliver(BusMessage {
            subject,
            payload,
            sequence: None,
            previous: None,
        })
    }

    async fn subscribe(&self, subject: String) -> Result<Subscription, BusError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.delivery
            .subscribers
            .lock()
            .map_err(|e| BusError::Subscribe(e.to_string()))?
            .push(Subscriber {
                pattern: subject,
                tx,
            });
        Ok(Box::pin(futures_util::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }

    async fn subscribe_queue(
        &self,
        subject: String,
        _group: String,
    ) -> Result<Subscription, BusError> {
        // One process: its one member of the group gets every message.
        self.subscribe(subject).await
    }

    fn check_ready(&self) -> Result<(), BusError> {
        Ok(())
    }

    /// Queues the message for the writer, which stores whatever is waiting
    /// in one transaction (group commit) and delivers each in id order.
    async fn begin_append(
        &self,
        draft: &ChatDraft,
        key: Option<&IdempotencyKey>,
    ) -> Result<PendingAppend, BusError> {
        let (done, stored) = oneshot::channel();
        self.appends
            .send(Append {
                draft: draft.clone(),
                key: key.cloned(),
                done,
            })
            .map_err(|_| BusError::NotConnected)?;
        Ok(Box::pin(async move {
            stored.await.map_err(|_| BusError::NotConnected)?
        }))
    }
}

/// The writer: stores queued chat messages a batch at a time, then delivers
/// them and answers their senders. A resend (a key stored within the
/// window, or twice in one batch) is answered with the first one's id and
/// neither stored nor delivered again. Ends when the bus is dropped.
async fn write(
    store: Arc<dyn Store>,
    deliverer: Arc<Deliverer>,
    mut queue: mpsc::UnboundedReceiver<Append>,
) {
    let mut batch = Vec::with_capacity(APPEND_BATCH_MAX);
    let mut remembered = Remembered::default();
    while queue.recv_many(&mut batch, APPEND_BATCH_MAX).await > 0 {
        let now = Instant::now();
        remembered.forget_expired(now);
        // One entry per message to store: its draft, key and every sender
        // waiting for it (resends in the same batch included).
        let mut drafts = Vec::with_capacity(batch.len());
        let mut keys = Vec::with_capacity(batch.len());
        let mut waiting: Vec<Vec<oneshot::Sender<_>>> = Vec::with_capacity(batch.len());
        let mut in_batch: HashMap<IdempotencyKey, usize> = HashMap::new();
        for Append { draft, key, done } in batch.drain(..) {
            if let Some(key) = &key {
                if let Some(&id) = remembered.ids.get(key) {
                    let _ = done.send(Ok(id));
                    continue;
                }
                if let Some(&i) = in_batch.get(key) {
                    waiting[i].push(done);
                    continue;
                }
                in_batch.insert(key.clone(), drafts.len());
            }
            drafts.push(draft);
            keys.push(key);
            waiting.push(vec![done]);
        }
        if drafts.is_empty() {
            continue;
        }
        let outcomes: Vec<Result<ChatId, BusError>> = match store.append_messages(&drafts).await {
            Ok(ids) => drafts
                .iter()
                .zip(ids)
                .map(|(draft, id)| {
                    id.map_err(|e| match e {
                        StoreError::Missing => BusError::Append("the room no longer exists".into()),
                        e => BusError::Append(e.to_string()),
                    })
                    .and_then(|id| deliverer.deliver_chat(draft, id).map(|()| id))
                })
                .collect(),
            Err(e) => drafts
                .iter()
                .map(|_| Err(BusError::Append(e.to_string())))
                .collect(),
        };
        for ((outcome, key), senders) in outcomes.into_iter().zip(keys).zip(waiting) {
            if let (Ok(id), Some(key)) = (&outcome, key) {
                remembered.remember(key, *id, now);
            }
            for done in senders {
                let _ = done.send(outcome.clone());
            }
        }
    }
}

impl Deliverer {
    /// A stored chat message, to its room's subscribers; one writer
    /// delivers in id order.
    fn deliver_chat(&self, draft: &ChatDraft, chat_id: ChatId) -> Result<(), BusError> {
        let payload =
            Bytes::from(serde_json::to_vec(draft).map_err(|e| BusError::Append(e.to_string()))?);
        self.deliver(BusMessage {
            subject: self.subjects.new_message(draft.room_id),
            payload,
            sequence: Some(chat_id),
            previous: None,
        })
    }
}

/// NATS subject matching: `*` matches exactly one token, a trailing `>` one or more.
fn subject_matches(pattern: &str, subject: &str) -> bool {
    let mut subject_tokens = subject.split('.');
    for p in pattern.split('.') {
        match (p, subject_tokens.next()) {
            (">", Some(_)) => return true,
            ("*", Some(_)) => {}
            (p, Some(s)) if p == s => {}
            _ => return false,
        }
    }
    subject_tokens.next().is_none()
}

#[cfg(test)]
mod tests {
    use futures_util::StreamExt;

    use super::*;

    #[test]
    fn wildcards_match_like_nats() {
        assert!(subject_matches("kom.room.1.x", "kom.room.1.x"));
        assert!(subject_matches("kom.room.*.x", "kom.room.1.x"));
        assert!(subject_matches("kom.>", "kom.room.1.x"));
        assert!(!subject_matches("kom.>", "kom"));
        assert!(!subject_matches("kom.room.*", "kom.room.1.x"));
        assert!(!subject_matches("kom.room.1.x", "kom.room.1"));
        assert!(!subject_matches("kom.room.2.x", "kom.room.1.x"));
    }

    /// A bus on a fresh SQLite store; the directory is removed on drop.
    struct TestBus {
        bus: LocalBus,
        store: Arc<dyn Store>,
        dir: std::path::PathBuf,
    }

    impl Drop for TestBus {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    async fn test_bus() -> TestBus {
        let dir = std::env::temp_dir().join(format!("kom-unit-{}", crate::random_hex(6)));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let store = crate::store::SqliteStore::connect(&dir.join("db.sqlite3"))
            .await
            .expect("store");
        store.migrate().await.expect("migrate");
        let store: Arc<dyn Store> = Arc::new(store);
        TestBus {
            bus: LocalBus::new(store.clone(), Subjects::new("kom")),
            store,
            dir,
        }
    }

    #[tokio::test]
    async fn subscribers_receive_matching_messages_in_order() {
        let t = test_bus().await;
        let mut room = t
            .bus
            .subscribe("kom.room.1.>".into())
            .await
            .expect("subscribe");
        let mut all = t.bus.subscribe("kom.>".into()).await.expect("subscribe");
        for (subject, body) in [
            ("kom.room.1.a", "1"),
            ("kom.room.2.a", "2"),
            ("kom.room.1.b", "3"),
        ] {
            t.bus
                .publish(subject.into(), Bytes::from(body))
                .await
                .expect("publish");
        }
        let got: Vec<_> = [room.next().await, room.next().await]
            .into_iter()
            .map(|m| m.expect("message").payload)
            .collect();
        assert_eq!(got, [Bytes::from("1"), Bytes::from("3")]);
        for expected in ["1", "2", "3"] {
            assert_eq!(
                all.next().await.expect("message").payload,
                Bytes::from(expected)
            );
        }
    }

    #[tokio::test]
    async fn dropped_subscriptions_are_forgotten() {
        let t = test_bus().await;
        drop(t.bus.subscribe("a".into()).await.expect("subscribe"));
        t.bus
            .publish("a".into(), Bytes::new())
            .await
            .expect("publish");
        assert!(t.bus.delivery.subscribers.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn chat_messages_are_stored_before_delivery_with_their_id() {
        let t = test_bus().await;
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
        assert!(t.bus.append_chat(&draft).await.is_err());
        store.create_user("ann", "x").await.expect("user");
        let new_room = crate::domain::NewRoom {
            name: "r".into(),
            owner: "ann".into(),
            access_key: None,
        };
        assert_eq!(
            store
                .create_room(&new_room, crate::domain::now())
                .await
                .expect("room"),
            1
        );
        let id = t.bus.append_chat(&draft).await.expect("append");
        let delivered = room.next().await.expect("delivered");
        assert_eq!(
            (delivered.subject.as_str(), delivered.sequence),
            ("kom.room.1.new_message", Some(id))
        );
        let query = crate::domain::HistoryQuery {
            room_id: 1,
            before: None,
            limit: 10,
        };
        assert_eq!(
            store.history(query).await.expect("history"),
            vec![draft.with_id(id)]
        );
    }

    #[tokio::test]
    async fn pipelined_messages_are_stored_together_in_order_and_fail_alone() {
        let t = test_bus().await;
        t.store.create_user("ann", "x").await.expect("user");
        let new_room = crate::domain::NewRoom {
            name: "r".into(),
            owner: "ann".into(),
            access_key: None,
        };
        let room = t
            .store
            .create_room(&new_room, crate::domain::now())
            .await
            .expect("room");
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
            pending.push(t.bus.begin_append(&draft, None).await.expect("started"));
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
        let query = crate::domain::HistoryQuery {
            room_id: room,
            before: None,
            limit: 1000,
        };
        assert_eq!(t.store.history(query).await.expect("history").len(), 270);
    }
}
