//! The NATS adapter of the bus: core NATS subjects for events, and a
//! JetStream stream for chat messages, whose sequence is the `chat_id`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::DirectGetErrorKind;
use async_nats::jetstream::{self, message::PublishMessage, stream};
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;

use super::{
    Bus, BusError, BusMessage, IdempotencyKey, PendingAppend, Subjects, Subscription, Unstored,
};
use crate::domain::{ChatDraft, ChatId, RoomId};

/// How long one publish may wait for JetStream's ack (also the timeout of
/// other JetStream requests).
const APPEND_TIMEOUT: Duration = Duration::from_secs(2);

/// How long a chat message is retried (with the same `Nats-Msg-Id`, so a
/// retry is stored once) before its sender is told to try again (code 8):
/// a broker restart of a few seconds yields late acks, not refusals.
const CONFIRM_WITHIN: Duration = Duration::from_secs(10);

/// Pause between two publishes of one message (a broker that just came
/// back may answer "no responders" until JetStream is up).
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// Pause before reconnecting after losing the server: short, so that
/// service resumes within half a second of NATS listening again.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// The durable consumer every persister replica shares: its ack floor is
/// the position up to which every chat message is in the store.
pub const PERSISTER_CONSUMER: &str = "persister";

/// Most unstored chat messages one read merges; past that the persister is
/// far behind, and reads answer "try again" rather than read for seconds.
const UNSTORED_MAX: u64 = 10_000;

/// Stream reads in flight at once while collecting unstored messages.
const UNSTORED_READS: usize = 64;

/// Chat messages stay in the stream this long after being stored, as a
/// replay window; MySQL holds them for good once the persister has run.
const STREAM_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    subjects: Subjects,
    /// The persister's ack floor as last read: every chat message up to it
    /// is in the store. It only grows, so a stale value is merely cautious.
    stored_floor: Arc<AtomicU64>,
}

impl NatsBus {
    /// Connects to `url`; fails at once when the server is unreachable.
    pub async fn connect(url: &str, name: &str, subjects: Subjects) -> Result<Self, BusError> {
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .reconnect_delay_callback(|attempts| RECONNECT_DELAY * attempts.clamp(1, 3) as u32)
            .connect(url)
            .await
            .map_err(|e| BusError::Connect(e.to_string()))?;
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(APPEND_TIMEOUT);
        Ok(Self {
            client,
            jetstream,
            subjects,
            stored_floor: Arc::default(),
        })
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    /// Creates the chat stream if it does not exist, republishing every
    /// stored message to its room's `new_message` subject. On an empty stream
    /// the next sequence is set above `floor` (the largest id already in the
    /// database), so ids of an existing database are never reused.
    pub async fn ensure_chat_stream(&self, floor: ChatId) -> Result<stream::Stream, BusError> {
        let p = self.subjects.prefix();
        let config = stream::Config {
            name: self.subjects.chat_stream(),
            subjects: vec![format!("{p}.chat.*")],
            storage: stream::StorageType::File,
            retention: stream::RetentionPolicy::Limits,
            max_age: STREAM_MAX_AGE,
            duplicate_window: Duration::from_secs(120),
            // Reads of unstored messages (read your writes) use direct gets.
            allow_direct: true,
            republish: Some(stream::Republish {
                source: format!("{p}.chat.*"),
                destination: format!("{p}.room.{{{{wildcard(1)}}}}.new_message"),
                headers_only: false,
            }),
            ..Default::default()
        };
        let err = |e: &dyn std::fmt::Display| BusError::Stream(e.to_string());
        let mut stream = self.get_or_create_stream(config).await?;
        let info = stream.info().await.map_err(|e| err(&e))?.clone();
        if !info.config.allow_direct {
            // A stream created by an older version.
            let config = stream::Config {
                allow_direct: true,
                ..info.config.clone()
            };
            self.jetstream
                .update_stream(config)
                .await
                .map_err(|e| err(&e))?;
        }
        let state = info.state;
        let floor = u64::try_from(floor).unwrap_or(0);
        if state.messages == 0 && state.last_sequence < floor {
            stream
                .purge()
                .sequence(floor + 1)
                .await
                .map_err(|e| err(&e))?;
            tracing::info!(
                next_chat_id = floor + 1,
                "chat stream starts above the stored ids"
            );
        }
        Ok(stream)
    }

    /// Several processes (gateways, persisters) create the stream at start.
    /// When two do at once, NATS 2.9 may refuse the second ("subjects
    /// overlap") although the stream now exists: then it is fetched.
    async fn get_or_create_stream(
        &self,
        config: stream::Config,
    ) -> Result<stream::Stream, BusError> {
        let name = config.name.clone();
        let mut last_error = String::new();
        for _ in 0..5 {
            match self.jetstream.get_or_create_stream(config.clone()).await {
                Ok(stream) => return Ok(stream),
                Err(e) => last_error = e.to_string(),
            }
            if let Ok(stream) = self.jetstream.get_stream(&name).await {
                return Ok(stream);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Err(BusError::Stream(last_error))
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, subject: String, payload: Bytes) -> Result<(), BusError> {
        self.client
            .publish(subject, payload)
            .await
            .map_err(|e| BusError::Publish(e.to_string()))
    }

    async fn subscribe(&self, subject: String) -> Result<Subscription, BusError> {
        let sub = self.client.subscribe(subject).await;
        self.ready_subscription(sub).await
    }

    async fn subscribe_queue(
        &self,
        subject: String,
        group: String,
    ) -> Result<Subscription, BusError> {
        let sub = self.client.queue_subscribe(subject, group).await;
        self.ready_subscription(sub).await
    }

    fn check_ready(&self) -> Result<(), BusError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(BusError::NotConnected),
        }
    }

    async fn begin_append(
        &self,
        draft: &ChatDraft,
        key: Option<&IdempotencyKey>,
    ) -> Result<PendingAppend, BusError> {
        self.begin(draft, key).await
    }

    async fn unstored(&self, room: Option<RoomId>) -> Result<Unstored, BusError> {
        let stream = self.chat_stream_handle()?;
        let subject = room.map(|room| self.subjects.chat(room));
        // One room: its newest message, read fresh. Already stored (the
        // usual case while the persister keeps up) means nothing to merge,
        // for the price of one direct get.
        let room_last = match &subject {
            Some(subject) => match stream.direct_get_last_for_subject(subject.clone()).await {
                Ok(message) => Some(message.sequence),
                Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => {
                    return Ok(Unstored::default());
                }
                Err(e) => return Err(BusError::Read(e.to_string())),
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
            return Err(BusError::Backlog(last - after));
        }
        let reads = futures_util::stream::iter(after + 1..=last)
            .map(|sequence| stream.direct_get(sequence))
            .buffered(UNSTORED_READS);
        futures_util::pin_mut!(reads);
        let mut messages = Vec::new();
        while let Some(read) = reads.next().await {
            let message = match read {
                Ok(message) => message,
                // Removed from the stream (its age limit): stored long ago.
                Err(e) if matches!(e.kind(), DirectGetErrorKind::NotFound) => continue,
                Err(e) => return Err(BusError::Read(e.to_string())),
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
}

impl NatsBus {
    fn chat_stream_handle(&self) -> Result<stream::Stream<()>, BusError> {
        // A handle only: no request is made.
        futures_util::FutureExt::now_or_never(
            self.jetstream
                .get_stream_no_info(self.subjects.chat_stream()),
        )
        .ok_or_else(|| BusError::Read("stream handle".into()))?
        .map_err(|e| BusError::Read(e.to_string()))
    }

    /// The stream sequences `(after, last]` that may not be stored yet:
    /// past the persister's ack floor (every message up to it is committed
    /// to the store before being acknowledged), up to the newest message.
    /// `None` when everything is stored.
    async fn unstored_range(&self) -> Result<Option<(u64, u64)>, BusError> {
        let stream = self.chat_stream_handle()?;
        let read_error = |e: &dyn std::fmt::Display| BusError::Read(e.to_string());
        match stream.consumer_info(PERSISTER_CONSUMER).await {
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
                    .map_err(|e| read_error(&e))?
                    .cached_info()
                    .state
                    .clone();
                Ok((state.messages > 0)
                    .then(|| (state.first_sequence.saturating_sub(1), state.last_sequence)))
            }
            Err(e) => Err(read_error(&e)),
        }
    }

    async fn ready_subscription(
        &self,
        sub: Result<async_nats::Subscriber, async_nats::SubscribeError>,
    ) -> Result<Subscription, BusError> {
        let sub = sub.map_err(|e| BusError::Subscribe(e.to_string()))?;
        // The server has the subscription once a round trip completes: only
        // then is nothing published afterwards missed.
        self.client
            .flush()
            .await
            .map_err(|e| BusError::Subscribe(e.to_string()))?;
        Ok(Box::pin(sub.map(|m| {
            BusMessage {
                sequence: m
                    .headers
                    .as_ref()
                    .and_then(|h| number_header(h, "Nats-Sequence")),
                previous: m
                    .headers
                    .as_ref()
                    .and_then(|h| number_header(h, "Nats-Last-Sequence")),
                subject: m.subject.to_string(),
                payload: m.payload,
            }
        })))
    }

    /// Publishes the message now, so that one caller's messages reach the
    /// stream in order, and returns the wait for its acknowledgement. A
    /// message not acknowledged is published again with the same
    /// `Nats-Msg-Id`, so the stream stores it once however often it is sent;
    /// with an idempotency key that id is the key, so a client's resend is
    /// stored once too (the stream answers a duplicate with the first
    /// message's sequence, and does not republish it).
    async fn begin(
        &self,
        draft: &ChatDraft,
        key: Option<&IdempotencyKey>,
    ) -> Result<PendingAppend, BusError> {
        let payload =
            Bytes::from(serde_json::to_vec(draft).map_err(|e| BusError::Append(e.to_string()))?);
        let msg_id = key.map_or_else(|| crate::random_hex(12), |k| k.as_str().to_owned());
        let subject = self.subjects.chat(draft.room_id);
        let publish = move |payload: &Bytes| {
            PublishMessage::build()
                .payload(payload.clone())
                .message_id(&msg_id)
        };
        let first = self
            .jetstream
            .send_publish(subject.clone(), publish(&payload))
            .await;
        let jetstream = self.jetstream.clone();
        let deadline = tokio::time::Instant::now() + CONFIRM_WITHIN;
        Ok(Box::pin(async move {
            let mut last_error = match first {
                Ok(ack) => match ack.await {
                    Ok(ack) => return chat_id(ack.sequence),
                    Err(e) => e.to_string(),
                },
                Err(e) => e.to_string(),
            };
            let mut attempt = 1;
            while tokio::time::Instant::now() + RETRY_PAUSE < deadline {
                attempt += 1;
                if attempt == 2 {
                    tracing::warn!(error = %last_error, "chat message not acknowledged, retrying");
                }
                tokio::time::sleep(RETRY_PAUSE).await;
                let acked = async {
                    jetstream
                        .send_publish(subject.clone(), publish(&payload))
                        .await?
                        .await
                };
                match tokio::time::timeout_at(deadline, acked).await {
                    Ok(Ok(ack)) => return chat_id(ack.sequence),
                    Ok(Err(e)) => last_error = e.to_string(),
                    Err(_) => last_error = "no acknowledgement".into(),
                }
            }
            tracing::warn!(attempt, error = %last_error, "chat message not confirmed in time");
            Err(BusError::Append(last_error))
        }))
    }
}

fn chat_id(sequence: u64) -> Result<ChatId, BusError> {
    ChatId::try_from(sequence).map_err(|e| BusError::Append(e.to_string()))
}

/// A sequence JetStream's RePublish puts on a message: its own
/// (`Nats-Sequence`) and that of the previous message on the same subject,
/// that is in the same room (`Nats-Last-Sequence`). RePublish can deliver a
/// room's messages out of order when several connections publish at once
/// (seen on NATS 2.9.10); the second lets subscribers restore the order.
fn number_header(headers: &HeaderMap, name: &str) -> Option<ChatId> {
    headers.get(name)?.as_str().parse().ok()
}
