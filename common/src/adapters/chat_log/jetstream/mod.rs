//! The chat log on NATS JetStream: one stream of every room's messages,
//! whose sequence is the `chat_id`. The stream republishes each stored
//! message to its room's `new_message` subject; the persister consumes it
//! through one durable consumer and writes it to the store.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull, stream};
use async_trait::async_trait;
use futures_util::StreamExt;
use futures_util::future::Either;
use tokio::sync::watch;
use tracing::Instrument;

use super::{
    ChatLog, ChatLogError, Delivery, IDEMPOTENCY_WINDOW, IdempotencyKey, LiveGaps, PendingAppend,
    Receipt, ToStore, Unstored,
};
use crate::adapters::bus::NatsBus;
use crate::adapters::store::Store;
use crate::domain::subjects::Subjects;
use crate::domain::{ChatDraft, ChatId, RoomId};
use crate::support::cause::Cause;
use crate::telemetry::trace_context::TraceParent;

mod batches;
mod unstored;

/// How long a chat message is retried (with the same `Nats-Msg-Id`, so a
/// retry is stored once) before its sender is told to try again (code 8),
/// while the broker cannot be reached: a broker restart of a few seconds
/// yields late acks, not refusals.
const CONFIRM_WITHIN: Duration = Duration::from_secs(10);

/// How long a chat message is retried while the broker can be reached but
/// does not acknowledge it: a cluster electing a new leader for the stream
/// (after its leader died) takes up to ten seconds, and while a quorum is
/// up a sender gets a late ack, not code 8. Well within the stream's
/// duplicate window, so every retry is still stored once.
const CONFIRM_WHILE_REACHABLE: Duration = Duration::from_secs(60);

/// Pause between two publishes of one message (a broker that just came
/// back may answer "no responders" until JetStream is up).
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The durable consumer every persister replica shares: its ack floor is
/// the position up to which every chat message is in the store.
pub const PERSISTER_CONSUMER: &str = "persister";

/// How long a message handed to a persister may stay unacknowledged before
/// JetStream hands it over again (to any replica): the messages a crashed
/// persister had in hand are stored this long after the crash at the
/// latest. A batch whose insert is being retried reports progress, so it is
/// not handed over again meanwhile.
const PERSISTER_ACK_WAIT: Duration = Duration::from_secs(4);

/// Most messages handed to persisters and not yet acknowledged.
const PERSISTER_MAX_ACK_PENDING: i64 = 50_000;

/// How long collecting unstored messages may take before the read is
/// refused as unavailable: a broker that accepts requests but does not
/// answer them (hung, or cut off without a reset) would otherwise hold a
/// read for the JetStream request timeout, past the contract's 2 s.
const UNSTORED_WITHIN: Duration = Duration::from_millis(1500);

/// Chat messages stay in the stream this long after being stored, as a
/// replay window; MySQL holds them for good once the persister has run.
const STREAM_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

#[derive(Debug, Clone)]
pub struct JetStreamChatLog {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    stream: stream::Stream,
    subjects: Subjects,
    store: Store,
    /// The persister's ack floor as last read: every chat message up to it
    /// is in the store. It only grows, so a stale value is merely cautious.
    stored_floor: Arc<AtomicU64>,
    /// See [`NatsBus::losses`].
    losses: watch::Receiver<u64>,
    /// Whether the stream takes atomic batches (servers 2.12 and later).
    atomic: bool,
    /// Publishes chat messages in atomic batches: started by the first
    /// append (only gateways append); `None` when the stream does not take
    /// them: one publish each.
    batches: Arc<OnceLock<Option<batches::Batches>>>,
    /// Messages per publish and refused batches, for `/metrics`.
    publishes: batches::BatchMetrics,
}

impl JetStreamChatLog {
    /// Opens the chat stream, creating it if it does not exist: the one
    /// place it is set up. A new stream starts above every `chat_id` a
    /// client may have seen (see [`Floor`]), so no id is given twice.
    pub async fn open(nats: &NatsBus, store: Store) -> Result<Self, ChatLogError> {
        let jetstream = nats.jetstream().clone();
        let subjects = nats.subjects().clone();
        let floor = Floor {
            stored: store.max_chat_id().await?,
            acked: store.acked_up_to().await?,
        };
        let (stream, atomic) = ensure_stream(nats, &subjects, floor).await?;
        Ok(Self {
            client: nats.client().clone(),
            jetstream,
            stream,
            subjects,
            store,
            stored_floor: Arc::default(),
            losses: nats.losses(),
            atomic,
            batches: Arc::default(),
            publishes: batches::BatchMetrics::default(),
        })
    }

    /// The publishing task, started (and its way of publishing logged) by
    /// the process's first append.
    fn batches(&self) -> &Option<batches::Batches> {
        self.batches.get_or_init(|| {
            tracing::info!(
                atomic_batches = self.atomic,
                "chat messages are published {}",
                if self.atomic {
                    "one by one, and in atomic batches when the stream falls behind"
                } else {
                    "one by one (the NATS servers are older than 2.12)"
                }
            );
            self.atomic
                .then(|| batches::Batches::start(self.jetstream.clone(), self.publishes.clone()))
        })
    }
}

/// What the store says of the ids handed out so far: the highest stored,
/// and the highest recorded as acknowledged to a client (the gateways
/// record it every second; 0 before a JetStream log was ever used).
#[derive(Debug, Clone, Copy)]
struct Floor {
    stored: ChatId,
    acked: ChatId,
}

/// Room left above the recorded acknowledged ids when a lost stream is
/// recreated: what the gateways may have acknowledged in the second since
/// their last record, at far more than any deployment's rate.
const LOST_STREAM_MARGIN: u64 = 1_000_000;

/// Creates the chat stream if it does not exist, republishing every stored
/// message to its room's `new_message` subject, and allows atomic batch
/// publishes on it where the servers have them (returned: whether they
/// do). A stream whose sequence is below what the store knows was handed
/// out is set above it:
/// - below the stored ids only: a database that was used without NATS
///   (single-node mode) moves to NATS; the stream starts above them;
/// - below the recorded acknowledged ids: the stream was lost (its volume
///   gone, or a power cut on a server that did not sync). Said loudly: the
///   messages acknowledged and not yet stored are gone. The new stream
///   starts above the recorded ids and the margin, so that no id a client
///   saw is handed out again.
async fn ensure_stream(
    nats: &NatsBus,
    subjects: &Subjects,
    floor: Floor,
) -> Result<(stream::Stream, bool), ChatLogError> {
    let jetstream = nats.jetstream();
    let atomic_known = takes_atomic_batches(&nats.client().server_info().version);
    let config = stream::Config {
        name: subjects.chat_stream(),
        subjects: vec![subjects.chats()],
        storage: stream::StorageType::File,
        retention: stream::RetentionPolicy::Limits,
        max_age: STREAM_MAX_AGE,
        duplicate_window: IDEMPOTENCY_WINDOW,
        // Reads of unstored messages (read your writes) use direct gets.
        allow_direct: true,
        allow_atomic_publish: atomic_known,
        republish: Some(stream::Republish {
            source: subjects.chats(),
            destination: subjects.new_message_republished(),
            headers_only: false,
        }),
        ..Default::default()
    };
    fn err(e: impl std::error::Error + Send + Sync + 'static) -> ChatLogError {
        ChatLogError::Setup(Cause::new(e))
    }
    let stream = nats
        .ensure_stream(config)
        .await
        .map_err(|e| ChatLogError::Setup(Cause::new(e)))?;
    let mut info = stream.cached_info().clone();
    if !info.config.allow_direct || (atomic_known && !info.config.allow_atomic_publish) {
        // A stream created by an older version (or on older servers).
        let wanted = stream::Config {
            allow_direct: true,
            allow_atomic_publish: atomic_known,
            ..info.config.clone()
        };
        match jetstream.update_stream(wanted).await {
            Ok(updated) => info.config = updated.config,
            Err(e) if info.config.allow_direct => {
                tracing::warn!(error = %e, "the chat stream does not allow atomic publishes");
            }
            Err(_) => {
                let wanted = stream::Config {
                    allow_direct: true,
                    ..info.config.clone()
                };
                info.config = jetstream.update_stream(wanted).await.map_err(err)?.config;
            }
        }
    }
    let atomic = info.config.allow_atomic_publish;
    let state = info.state;
    let stored = u64::try_from(floor.stored).unwrap_or(0);
    let acked = u64::try_from(floor.acked).unwrap_or(0);
    let lost = acked > 0 && state.last_sequence < acked;
    let next = if lost {
        tracing::error!(
            stream = info.config.name,
            stream_last_chat_id = state.last_sequence,
            stored_up_to = stored,
            acknowledged_up_to = acked,
            "THE CHAT STREAM LOST ACKNOWLEDGED MESSAGES: those after the stored ones are gone; \
             new ids start above every id a client may have seen. Check the NATS servers' \
             sync_interval (deploy/nats/nats.conf) and NATS_STREAM_REPLICAS"
        );
        acked.max(stored) + LOST_STREAM_MARGIN + 1
    } else {
        stored + 1
    };
    if state.last_sequence + 1 < next {
        if state.messages > 0 && state.last_sequence > stored {
            // Messages in the stream not stored yet: a purge would drop
            // them. The stream goes on from its sequence (the loss above
            // is said; ids above its end may have been seen).
            tracing::error!(
                stream_last_chat_id = state.last_sequence,
                "the chat stream holds unstored messages below the ids handed out: not moved"
            );
            return Ok((stream, atomic));
        }
        stream.purge().sequence(next).await.map_err(err)?;
        tracing::info!(
            next_chat_id = next,
            "chat stream starts above the ids handed out"
        );
    }
    Ok((stream, atomic))
}

#[async_trait]
impl ChatLog for JetStreamChatLog {
    /// Publishes the message now (or queues it for the publishing task, see
    /// `batches.rs`), so that one caller's messages reach the stream in
    /// order, and returns the wait for its acknowledgement. A
    /// message not acknowledged is published again with the same
    /// `Nats-Msg-Id`, so the stream stores it once however often it is sent;
    /// with an idempotency key that id is the key, so a client's resend is
    /// stored once too (the stream answers a duplicate with the first
    /// message's sequence, and does not republish it).
    async fn begin_append(
        &self,
        draft: &ChatDraft,
        key: Option<&IdempotencyKey>,
    ) -> Result<PendingAppend, ChatLogError> {
        let payload = crate::domain::events::encode_draft(draft);
        let msg_id = key.map_or_else(|| crate::support::random_hex(12), |k| k.as_str().to_owned());
        let subject = self.subjects.chat(draft.room_id);
        // From the publish to the stream's acknowledgement; the persister's
        // and every gateway's spans of the message are its children.
        let span = crate::nats_send_span!(
            "publish",
            subject,
            subject,
            messaging.message.id = %msg_id,
            messaging.nats.stream.sequence = tracing::field::Empty,
        );
        // The id and the trace context go in one header map: `headers()`
        // replaces what `message_id()` set.
        let mut headers = TraceParent::of(&span)
            .map(|trace| crate::adapters::bus::trace_headers(&trace))
            .unwrap_or_default();
        headers.insert(async_nats::header::NATS_MESSAGE_ID, msg_id.as_str());
        let first = match self.batches() {
            // Queued now, in the order appends are started.
            Some(batches) => Either::Left(batches.queue(batches::Outgoing {
                subject: subject.clone().into(),
                headers: headers.clone(),
                payload: payload.clone(),
            })),
            None => {
                self.publishes.sizes.observe(1.0);
                let sent = self
                    .jetstream
                    .send_publish(subject.clone(), batches::publish(&headers, &payload))
                    .instrument(span.clone())
                    .await;
                Either::Right(batches::sequence(sent))
            }
        };
        let jetstream = self.jetstream.clone();
        let client = self.client.clone();
        let started = tokio::time::Instant::now();
        let unreachable_deadline = started + CONFIRM_WITHIN;
        let deadline = started + CONFIRM_WHILE_REACHABLE;
        // Past the first deadline, only a connected client goes on trying.
        let may_retry = move || {
            let now = tokio::time::Instant::now();
            now + RETRY_PAUSE < deadline
                && (now + RETRY_PAUSE < unreachable_deadline
                    || client.connection_state() == async_nats::connection::State::Connected)
        };
        let confirmed = async move {
            let mut last_error = match first.await {
                Ok(sequence) => return chat_id(sequence),
                Err(e) => e,
            };
            let mut attempt = 1;
            while may_retry() {
                attempt += 1;
                if attempt == 2 {
                    tracing::warn!(error = %last_error, "chat message not acknowledged, retrying");
                }
                tokio::time::sleep(RETRY_PAUSE).await;
                let acked = async {
                    jetstream
                        .send_publish(subject.clone(), batches::publish(&headers, &payload))
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
            Err(ChatLogError::Append(Cause::text(last_error)))
        };
        Ok(Box::pin(
            async move {
                let confirmed = confirmed.await;
                let span = tracing::Span::current();
                match &confirmed {
                    Ok(id) => {
                        span.record("messaging.nats.stream.sequence", id);
                    }
                    Err(_) => crate::telemetry::otel::fail(&span),
                }
                confirmed
            }
            .instrument(span),
        ))
    }

    async fn unstored(&self, room: Option<RoomId>) -> Result<Unstored, ChatLogError> {
        // Disconnected, a request would only wait for its timeout: the read
        // is refused at once.
        self.check_ready()?;
        tokio::time::timeout(UNSTORED_WITHIN, self.collect_unstored(room))
            .await
            .map_err(|_| ChatLogError::NotConnected)?
    }

    /// Messages from the durable consumer every persister replica shares
    /// (created, or updated to these settings: one made by an older version
    /// waited 30 s before handing a message over again).
    async fn to_store(&self, batch_max: usize) -> Result<Option<ToStore>, ChatLogError> {
        let config = pull::Config {
            durable_name: Some(PERSISTER_CONSUMER.to_owned()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: PERSISTER_ACK_WAIT,
            max_ack_pending: PERSISTER_MAX_ACK_PENDING,
            ..Default::default()
        };
        let consumer: jetstream::consumer::PullConsumer =
            match self.stream.create_consumer(config).await {
                Ok(consumer) => consumer,
                Err(e) => {
                    tracing::warn!(error = %e, "persister consumer not updated, using it as it is");
                    self.stream
                        .get_consumer(PERSISTER_CONSUMER)
                        .await
                        .map_err(|e| ChatLogError::Setup(Cause::boxed(e)))?
                }
            };
        let messages = consumer
            .stream()
            .max_messages_per_batch(batch_max.max(1))
            .messages()
            .await
            .map_err(|e| ChatLogError::Setup(Cause::new(e)))?;
        Ok(Some(Box::pin(messages.map(|m| {
            let message = m.map_err(|e| ChatLogError::Read(Cause::new(e)))?;
            Ok(Delivery {
                message: row(&message),
                trace: message
                    .headers
                    .as_ref()
                    .and_then(crate::adapters::bus::trace_parent),
                receipt: Box::new(message),
            })
        }))))
    }

    fn store(&self) -> &Store {
        &self.store
    }

    /// RePublish is core NATS, at most once: a connection that was down (or
    /// a subscriber too slow) missed what was republished meanwhile, and a
    /// stream leader that dies loses the copies it had not sent yet (seen
    /// killing the leader of a three-server cluster under load). The last
    /// is told by JetStream's advisory that the stream elected a leader.
    async fn live_gaps(&self) -> Result<Option<LiveGaps>, ChatLogError> {
        let advisory = format!(
            "$JS.EVENT.ADVISORY.STREAM.LEADER_ELECTED.{}",
            self.subjects.chat_stream()
        );
        let elected = self
            .client
            .subscribe(advisory)
            .await
            .map_err(|e| ChatLogError::Setup(Cause::new(e)))?
            .map(drop);
        let mut losses = self.losses.clone();
        losses.mark_unchanged();
        let lost = futures_util::stream::unfold(losses, |mut losses| async {
            losses.changed().await.ok()?;
            Some(((), losses))
        });
        Ok(Some(Box::pin(futures_util::stream::select(elected, lost))))
    }

    async fn live_floor(&self, room_id: RoomId) -> Result<Option<ChatId>, ChatLogError> {
        let newest = self.last_of(&self.subjects.chat(room_id)).await?;
        newest.map_or(Ok(0), chat_id).map(Some)
    }

    fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        registry.register(
            "chat_publish_batch_messages",
            "Chat messages published to the chat stream together, in one atomic batch \
             (1: alone; always 1 on NATS servers older than 2.12)",
            self.publishes.sizes.clone(),
        );
        registry.register(
            "chat_publish_batches_refused",
            "Atomic batches the chat stream refused or did not answer: their messages \
             published again one by one (a resend already stored in one, a leader change)",
            self.publishes.refused.clone(),
        );
    }

    fn check_ready(&self) -> Result<(), ChatLogError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(ChatLogError::NotConnected),
        }
    }
}

#[async_trait]
impl Receipt for jetstream::Message {
    async fn stored(&self) -> Result<(), ChatLogError> {
        self.ack()
            .await
            .map_err(|e| ChatLogError::Read(Cause::boxed(e)))
    }

    async fn in_progress(&self) {
        // Lost, it only means the message may be handed over again: the
        // insert skips what is stored.
        let _ = self.ack_with(jetstream::AckKind::Progress).await;
    }
}

/// The row of one stream message; `None` (logged) for a message that is
/// not a chat message.
fn row(message: &jetstream::Message) -> Option<crate::domain::ChatMessage> {
    let sequence = message.info().ok()?.stream_sequence;
    match serde_json::from_slice::<ChatDraft>(&message.payload) {
        Ok(draft) => Some(draft.with_id(ChatId::try_from(sequence).ok()?)),
        Err(e) => {
            tracing::error!(sequence, error = %e, "not a chat message, skipped");
            None
        }
    }
}

/// Whether a nats-server of `version` takes atomic batch publishes (2.12
/// and later). A server that does not know the stream setting leaves it
/// out of the stream's configuration, so the stream's word is final.
fn takes_atomic_batches(version: &str) -> bool {
    let mut numbers = version
        .split(['.', '-'])
        .map(|n| n.parse::<u32>().unwrap_or(0));
    let (major, minor) = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    (major, minor) >= (2, 12)
}

pub(super) fn chat_id(sequence: u64) -> Result<ChatId, ChatLogError> {
    ChatId::try_from(sequence).map_err(|e| ChatLogError::Append(Cause::new(e)))
}

#[cfg(test)]
mod tests {
    use super::takes_atomic_batches;

    #[test]
    fn atomic_batches_from_nats_server_2_12() {
        for old in ["2.9.10", "2.11.4", "1.4.1", "", "garbage"] {
            assert!(!takes_atomic_batches(old), "{old}");
        }
        for new in ["2.12.0", "2.12.0-RC.1", "2.15.1", "3.0.0"] {
            assert!(takes_atomic_batches(new), "{new}");
        }
    }
}
