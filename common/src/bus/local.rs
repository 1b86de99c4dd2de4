//! The in-process adapter of the bus, for single-node mode: the same subject
//! semantics as NATS (`*`, `>`), delivered through channels. Chat messages
//! are stored first (the store assigns their ids), then delivered.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Bus, BusError, BusMessage, PendingAppend, Subjects, Subscription};
use crate::domain::{ChatDraft, ChatId};
use crate::store::{Store, StoreError};

#[derive(Clone)]
pub struct LocalBus {
    subscribers: Arc<Mutex<Vec<Subscriber>>>,
    store: Arc<dyn Store>,
    subjects: Subjects,
    /// Appends are serialised so that delivery order is id order.
    append: Arc<tokio::sync::Mutex<()>>,
}

impl std::fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBus")
            .field("subjects", &self.subjects)
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
    pub fn new(store: Arc<dyn Store>, subjects: Subjects) -> Self {
        Self {
            subscribers: Arc::default(),
            store,
            subjects,
            append: Arc::default(),
        }
    }

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
        self.subscribers
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

    /// The embedded bus stores the message at once (appends are serialised
    /// by the single SQLite writer anyway).
    async fn begin_append(&self, draft: &ChatDraft) -> Result<PendingAppend, BusError> {
        let stored = self.append_now(draft).await;
        Ok(Box::pin(std::future::ready(stored)))
    }
}

impl LocalBus {
    async fn append_now(&self, draft: &ChatDraft) -> Result<ChatId, BusError> {
        let payload =
            Bytes::from(serde_json::to_vec(draft).map_err(|e| BusError::Append(e.to_string()))?);
        let _order = self.append.lock().await;
        let chat_id = self
            .store
            .append_message(draft)
            .await
            .map_err(|e| match e {
                StoreError::Missing => BusError::Append("the room no longer exists".into()),
                e => BusError::Append(e.to_string()),
            })?;
        self.deliver(BusMessage {
            subject: self.subjects.new_message(draft.room_id),
            payload,
            sequence: Some(chat_id),
            // Appends are serialised and delivered under one lock: in order.
            previous: None,
        })?;
        Ok(chat_id)
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
        TestBus {
            bus: LocalBus::new(Arc::new(store), Subjects::new("kom")),
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
        assert!(t.bus.subscribers.lock().expect("lock").is_empty());
    }

    #[tokio::test]
    async fn chat_messages_are_stored_before_delivery_with_their_id() {
        let t = test_bus().await;
        let store = t.bus.store.clone();
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
}
