//! Chat messages to the chat stream: one by one while the stream keeps up,
//! in atomic batches (JetStream ADR-50: nats-server 2.12 and later, on a
//! stream that allows them) once it falls behind.
//!
//! With `sync_interval: always` a server syncs every stored entry on its
//! own: one message per publish costs one sync (or one replicated append).
//! An atomic batch is stored as one entry with one sync, but it costs more
//! than a message alone: on one server nats-server stages each batch in a
//! file store of its own, made and deleted per batch (3 – 10 ms measured,
//! whatever its size, and more under load; bench/README.md, "One server's
//! atomic batches"). So one task per process publishes what
//! waits one by one, up to [`SINGLES_IN_FLIGHT`] unacknowledged; when that
//! many are in flight the stream is behind, messages wait, and once
//! [`BATCH_MIN`] wait they go as one batch. Batches grow with the load.
//!
//! Order: the task publishes in the order appends started, and sends
//! nothing while a batch is in flight, so a batch the stream refuses (a
//! message in it is a resend already stored) is published again message by
//! message, in order, under the same `Nats-Msg-Id`s, before anything sent
//! after it: what was stored is answered with its first sequence, the rest
//! is stored now. A batch the stream does not answer (no connection, no
//! leader yet) fails, and so does everything waiting behind it: each
//! appender then retries its own message as it would one published alone
//! (see `begin_append`), rather than wait for batch after batch to time
//! out.

use std::sync::Arc;

use async_nats::HeaderMap;
use async_nats::header::{NATS_BATCH_COMMIT, NATS_BATCH_ID, NATS_BATCH_SEQUENCE};
use async_nats::jetstream::{self, message::PublishMessage};
use bytes::Bytes;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use tokio::sync::{Semaphore, mpsc, oneshot};

/// Most messages in one batch: a batch of 100 is stored as fast as larger
/// ones (bench/README.md, "Durability"), and the server's limit is 1,000.
const BATCH_MAX: usize = 100;

/// Fewest messages worth a batch: on one server with sync always, 16
/// messages published one by one (pipelined) take about as long as one
/// batch.
const BATCH_MIN: usize = 16;

/// Messages published one by one and not acknowledged yet, at most. More
/// would only queue in the server; past it, what waits goes in batches.
const SINGLES_IN_FLIGHT: usize = 32;

/// A chat message for the stream.
pub(super) struct Outgoing {
    pub subject: async_nats::Subject,
    /// Its `Nats-Msg-Id` and trace context.
    pub headers: HeaderMap,
    pub payload: Bytes,
}

/// A message waiting for its batch, and where its sequence (or why there
/// is none) goes.
type Waiting = (Outgoing, oneshot::Sender<Result<u64, String>>);

/// The way into the process's publishing task.
#[derive(Debug, Clone)]
pub(super) struct Batches {
    queue: mpsc::UnboundedSender<Waiting>,
}

/// What the publishing task counts, for `/metrics`.
#[derive(Debug, Clone)]
pub(super) struct BatchMetrics {
    /// Messages per publish (1: alone).
    pub sizes: Histogram,
    /// Batches the stream refused or did not acknowledge, published again
    /// message by message.
    pub refused: Counter,
}

impl Default for BatchMetrics {
    fn default() -> Self {
        Self {
            // 1, 2, 4 … 128 messages.
            sizes: Histogram::new(exponential_buckets(1.0, 2.0, 8)),
            refused: Counter::default(),
        }
    }
}

impl Batches {
    /// Starts the publishing task; it ends when the last clone is dropped.
    pub fn start(jetstream: jetstream::Context, metrics: BatchMetrics) -> Self {
        let (queue, waiting) = mpsc::unbounded_channel();
        tokio::spawn(run(jetstream, waiting, metrics));
        Self { queue }
    }

    /// Queues `message` now, behind every message queued before it; the
    /// future resolves to its sequence once the stream stored it.
    pub fn queue(
        &self,
        message: Outgoing,
    ) -> impl Future<Output = Result<u64, String>> + Send + 'static {
        let (sequence, stored) = oneshot::channel();
        let queued = self.queue.send((message, sequence));
        async move {
            let stopped = || "the chat log's publisher has stopped".to_owned();
            queued.map_err(|_| stopped())?;
            stored.await.unwrap_or_else(|_| Err(stopped()))
        }
    }
}

async fn run(
    jetstream: jetstream::Context,
    mut waiting: mpsc::UnboundedReceiver<Waiting>,
    metrics: BatchMetrics,
) {
    let singles = Arc::new(Semaphore::new(SINGLES_IN_FLIGHT));
    let mut batch = Vec::with_capacity(BATCH_MAX);
    while waiting.recv_many(&mut batch, BATCH_MAX).await > 0 {
        if batch.len() < BATCH_MIN {
            for (message, stored) in batch.drain(..) {
                metrics.sizes.observe(1.0);
                // Waits while the stream is behind: what arrives meanwhile
                // waits, and goes as a batch.
                let Ok(permit) = singles.clone().acquire_owned().await else {
                    return;
                };
                let publish = PublishMessage::build()
                    .payload(message.payload)
                    .headers(message.headers);
                let sent = jetstream.send_publish(message.subject, publish).await;
                tokio::spawn(async move {
                    let sequence = sequence(sent).await;
                    drop(permit);
                    let _ = stored.send(sequence);
                });
            }
            continue;
        }
        metrics.sizes.observe(batch.len() as f64);
        let error = match atomic(&jetstream, &batch).await {
            Ok(first) => {
                for ((_, stored), sequence) in batch.drain(..).zip(first..) {
                    let _ = stored.send(Ok(sequence));
                }
                continue;
            }
            Err(Failed::Refused(e)) => {
                metrics.refused.inc();
                tracing::debug!(
                    error = %e,
                    messages = batch.len(),
                    "batch refused, publishing its messages one by one"
                );
                one_by_one(&jetstream, &mut batch).await;
                continue;
            }
            Err(Failed::Unanswered(e)) => {
                metrics.refused.inc();
                // The stream is not answering (no connection, no leader):
                // what waits now would wait as long, batch after batch.
                // Each appender retries its own, as it would a message
                // published alone.
                while let Ok(message) = waiting.try_recv() {
                    batch.push(message);
                }
                e
            }
        };
        for (_, stored) in batch.drain(..) {
            let _ = stored.send(Err(error.clone()));
        }
    }
}

/// Why a publish stored nothing.
enum Failed {
    /// The stream answered with an error (for a batch: one of its messages
    /// is a resend already stored, or the batch is incomplete).
    Refused(String),
    /// No answer: no connection, no responders, or none in time.
    Unanswered(String),
}

impl From<async_nats::jetstream::context::PublishError> for Failed {
    fn from(e: async_nats::jetstream::context::PublishError) -> Self {
        use async_nats::jetstream::context::PublishErrorKind as Kind;
        match e.kind() {
            Kind::TimedOut | Kind::BrokenPipe | Kind::StreamNotFound => {
                Self::Unanswered(e.to_string())
            }
            _ => Self::Refused(e.to_string()),
        }
    }
}

/// Publishes `batch` as one atomic batch; returns the sequence of its first
/// message (the rest follow it).
async fn atomic(jetstream: &jetstream::Context, batch: &[Waiting]) -> Result<u64, Failed> {
    let Some(((commit, _), rest)) = batch.split_last() else {
        return Err(Failed::Refused("an empty batch".to_owned()));
    };
    let id = crate::support::random_hex(12);
    let client = jetstream.client();
    for (n, (message, _)) in rest.iter().enumerate() {
        // Only the commit is answered: the rest go as core publishes.
        client
            .publish_with_headers(
                message.subject.clone(),
                batch_headers(message, &id, n + 1, false),
                message.payload.clone(),
            )
            .await
            .map_err(|e| Failed::Unanswered(e.to_string()))?;
    }
    let ack = jetstream
        .send_publish(
            commit.subject.clone(),
            PublishMessage::build()
                .payload(commit.payload.clone())
                .headers(batch_headers(commit, &id, batch.len(), true)),
        )
        .await?
        .await?;
    let count = batch.len() as u64;
    match ack.batch_size {
        Some(stored) if stored == count && ack.batch_id.as_deref() == Some(id.as_str()) => {
            Ok(ack.sequence + 1 - count)
        }
        stored => Err(Failed::Refused(format!(
            "the batch's acknowledgement counts {stored:?} messages of {count}"
        ))),
    }
}

/// The sequence the stream gave a message sent alone, once it answers.
pub(super) async fn sequence(
    sent: Result<jetstream::context::PublishAckFuture, jetstream::context::PublishError>,
) -> Result<u64, String> {
    match sent {
        Ok(ack) => ack.await.map(|ack| ack.sequence).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    }
}

/// A chat message as one publish: `headers` carry its `Nats-Msg-Id` and
/// trace context.
pub(super) fn publish(headers: &HeaderMap, payload: &Bytes) -> PublishMessage {
    PublishMessage::build()
        .payload(payload.clone())
        .headers(headers.clone())
}

fn batch_headers(message: &Outgoing, id: &str, n: usize, commit: bool) -> HeaderMap {
    let mut headers = message.headers.clone();
    headers.insert(NATS_BATCH_ID, id);
    headers.insert(NATS_BATCH_SEQUENCE, n.to_string().as_str());
    if commit {
        headers.insert(NATS_BATCH_COMMIT, "1");
    }
    headers
}

/// Publishes each message of `batch` on its own, in order, all in flight
/// at once; answers each with its sequence or its error.
async fn one_by_one(jetstream: &jetstream::Context, batch: &mut Vec<Waiting>) {
    let mut acks = Vec::with_capacity(batch.len());
    for (message, _) in batch.iter() {
        acks.push(
            jetstream
                .send_publish(
                    message.subject.clone(),
                    publish(&message.headers, &message.payload),
                )
                .await,
        );
    }
    // Awaited together: each waits at most the JetStream timeout.
    let acks = futures_util::future::join_all(acks.into_iter().map(|sent| async move {
        match sent {
            Ok(ack) => ack.await.map(|a| a.sequence).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        }
    }))
    .await;
    for ((_, stored), ack) in batch.drain(..).zip(acks) {
        let _ = stored.send(ack);
    }
}
