//! The persister: a durable JetStream consumer that writes chat messages to
//! the store in batches (one transaction each), idempotently (the stream
//! sequence is the primary key), and acknowledges them only after commit.
//! Replicas share the work through the one durable consumer.

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use clap::Args;
use common::bus::{BusError, NatsBus, PERSISTER_CONSUMER};
use common::domain::{ChatDraft, ChatMessage};
use common::store::{Store, StoreError};
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

/// How long a delivered message may stay unacknowledged before JetStream
/// delivers it again (to any replica): the messages a crashed persister had
/// in hand are stored this long after the crash at the latest. A batch
/// whose insert is being retried reports progress, so it is not redelivered
/// meanwhile.
const ACK_WAIT: Duration = Duration::from_secs(4);

/// Options of the persister.
#[derive(Debug, Clone, Args)]
pub struct PersisterArgs {
    /// Most messages written in one transaction.
    #[arg(long, env = "PERSIST_BATCH_MAX", default_value_t = 500)]
    pub persist_batch_max: usize,
    /// Longest a message waits for others to share its batch, in milliseconds.
    #[arg(long, env = "PERSIST_BATCH_WAIT_MS", default_value_t = 5)]
    pub persist_batch_wait_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PersisterError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("consumer: {0}")]
    Consumer(String),
}

/// Counters of the persister, registered in the process's registry.
#[derive(Debug, Clone)]
pub struct PersisterMetrics {
    rows: Counter,
    messages: Counter,
    batch_size: Histogram,
}

impl PersisterMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            rows: Counter::default(),
            messages: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
        };
        registry.register(
            "persister_rows_inserted",
            "Chat rows inserted",
            metrics.rows.clone(),
        );
        registry.register(
            "persister_messages",
            "Chat messages consumed (including duplicates and dropped ones)",
            metrics.messages.clone(),
        );
        registry.register(
            "persister_batch_size",
            "Messages per batch",
            metrics.batch_size.clone(),
        );
        metrics
    }
}

/// Consumes chat messages until `shutdown`. Unacknowledged messages (a batch
/// cut short by shutdown or a crash) are redelivered, to this replica or another.
pub async fn run(
    bus: &NatsBus,
    store: Arc<dyn Store>,
    args: &PersisterArgs,
    metrics: PersisterMetrics,
    shutdown: CancellationToken,
) -> Result<(), PersisterError> {
    let stream = bus.ensure_chat_stream(store.max_chat_id().await?).await?;
    let config = pull::Config {
        durable_name: Some(PERSISTER_CONSUMER.to_owned()),
        ack_policy: jetstream::consumer::AckPolicy::Explicit,
        ack_wait: ACK_WAIT,
        max_ack_pending: 50_000,
        ..Default::default()
    };
    // Created, or updated to these settings (a consumer made by an older
    // version waited 30 s before redelivering).
    let consumer: jetstream::consumer::PullConsumer = match stream.create_consumer(config).await {
        Ok(consumer) => consumer,
        Err(e) => {
            tracing::warn!(error = %e, "persister consumer not updated, using it as it is");
            stream
                .get_consumer(PERSISTER_CONSUMER)
                .await
                .map_err(|e| PersisterError::Consumer(e.to_string()))?
        }
    };
    let batch_max = args.persist_batch_max.max(1);
    let mut messages = consumer
        .stream()
        .max_messages_per_batch(batch_max)
        .messages()
        .await
        .map_err(|e| PersisterError::Consumer(e.to_string()))?;
    let wait = Duration::from_millis(args.persist_batch_wait_ms);
    tracing::info!(
        batch_max,
        batch_wait_ms = args.persist_batch_wait_ms,
        "persister consuming"
    );
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => break,
            next = messages.next() => next,
        };
        let Some(first) = first else {
            return Err(PersisterError::Consumer("the message stream ended".into()));
        };
        let mut batch = Vec::with_capacity(batch_max);
        batch.extend(
            first
                .map_err(|e| tracing::warn!(error = %e, "consumer error"))
                .ok(),
        );
        let deadline = tokio::time::Instant::now() + wait;
        while batch.len() < batch_max {
            match tokio::time::timeout_at(deadline, messages.next()).await {
                Ok(Some(Ok(m))) => batch.push(m),
                Ok(Some(Err(e))) => tracing::warn!(error = %e, "consumer error"),
                Ok(None) | Err(_) => break,
            }
        }
        if !persist(&*store, batch, &metrics, &shutdown).await {
            break;
        }
    }
    tracing::info!("persister stopped");
    Ok(())
}

/// Writes one batch and acknowledges it. Retries while the store fails;
/// false when shutdown interrupted it (the batch is then redelivered later).
async fn persist(
    store: &dyn Store,
    batch: Vec<jetstream::Message>,
    metrics: &PersisterMetrics,
    shutdown: &CancellationToken,
) -> bool {
    let rows: Vec<ChatMessage> = batch.iter().filter_map(row).collect();
    metrics.messages.inc_by(batch.len() as u64);
    metrics.batch_size.observe(batch.len() as f64);
    loop {
        match store.insert_messages(&rows).await {
            Ok(inserted) => {
                metrics.rows.inc_by(inserted);
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, batch = rows.len(), "batch not written, retrying");
                for message in &batch {
                    let _ = message.ack_with(jetstream::AckKind::Progress).await;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return false,
                    () = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        }
    }
    for message in batch {
        if let Err(e) = message.ack().await {
            // Redelivered after the ack wait; the insert skips it then.
            tracing::warn!(error = %e, "ack failed");
        }
    }
    true
}

/// The row of one stream message; `None` (logged) for a message that is not
/// a chat message: it is acknowledged with the batch and never retried.
fn row(message: &jetstream::Message) -> Option<ChatMessage> {
    let sequence = message.info().ok()?.stream_sequence;
    match serde_json::from_slice::<ChatDraft>(&message.payload) {
        Ok(draft) => Some(draft.with_id(i64::try_from(sequence).ok()?)),
        Err(e) => {
            tracing::error!(sequence, error = %e, "not a chat message, skipped");
            None
        }
    }
}
