//! The in-process adapter of the bus, for single-node mode: the same subject
//! semantics as NATS (`*`, `>`), delivered through channels.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::{Bus, BusError, BusMessage, Subscription};
use crate::support::sync::Locked;
use crate::telemetry::trace_context::TraceParent;

/// The bus of one process; clones share their subscribers.
#[derive(Clone, Default)]
pub struct LocalBus {
    subscribers: Arc<Mutex<Vec<Subscriber>>>,
}

impl std::fmt::Debug for LocalBus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalBus").finish_non_exhaustive()
    }
}

#[derive(Debug)]
struct Subscriber {
    pattern: String,
    tx: mpsc::UnboundedSender<BusMessage>,
}

impl LocalBus {
    pub fn new() -> Self {
        Self::default()
    }

    /// Hands a message to the matching subscribers, sequence and all (the
    /// embedded chat log delivers stored chat messages this way).
    pub fn deliver(&self, message: BusMessage) -> Result<(), BusError> {
        let mut subscribers = self.subscribers.locked();
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
            trace: TraceParent::current(),
        })
    }

    async fn subscribe(&self, subject: String) -> Result<Subscription, BusError> {
        let (tx, mut rx) = mpsc::unbounded_channel();
        self.subscribers.locked().push(Subscriber {
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

    /// Delivery is synchronous: published is delivered.
    async fn flush(&self) -> Result<(), BusError> {
        Ok(())
    }

    fn check_ready(&self) -> Result<(), BusError> {
        Ok(())
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

    #[tokio::test]
    async fn subscribers_receive_matching_messages_in_order() {
        let bus = LocalBus::new();
        let mut room = bus
            .subscribe("kom.room.1.>".into())
            .await
            .expect("subscribe");
        let mut all = bus.subscribe("kom.>".into()).await.expect("subscribe");
        for (subject, body) in [
            ("kom.room.1.a", "1"),
            ("kom.room.2.a", "2"),
            ("kom.room.1.b", "3"),
        ] {
            bus.publish(subject.into(), Bytes::from(body))
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
        let bus = LocalBus::new();
        drop(bus.subscribe("a".into()).await.expect("subscribe"));
        bus.publish("a".into(), Bytes::new())
            .await
            .expect("publish");
        assert!(bus.subscribers.lock().expect("lock").is_empty());
    }
}
