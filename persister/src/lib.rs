//! The persister: takes chat messages from the chat log and writes them to
//! the store in batches (one transaction each), idempotently (the `chat_id`
//! is the primary key), and acknowledges them only after commit. Replicas
//! share the work (the JetStream log hands each message to one of them).
//!
//! Its shape, as every service's: [`Deps`] in, [`run`] until shutdown; it
//! serves no routes of its own.

use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use common::adapters::chat_log::{ChatLog, ChatLogError, Delivery, PERSISTER_CONSUMER};
use common::adapters::store::{Store, StoreError};
use common::domain::ChatMessage;
use common::telemetry::trace_context::BatchSpans;
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// Pause between two attempts to write a batch the store refused.
const RETRY_PAUSE: Duration = Duration::from_secs(1);

/// Options of the persister.
#[derive(Debug, Clone, Args)]
pub struct PersisterArgs {
    /// Most messages written in one transaction.
    #[arg(long, env = "PERSIST_BATCH_MAX", default_value_t = 500, value_parser = common::support::problems::at_least_one::<usize>())]
    pub persist_batch_max: usize,
    /// Longest a message waits for others to share its batch, in milliseconds.
    #[arg(long, env = "PERSIST_BATCH_WAIT_MS", default_value_t = 5)]
    pub persist_batch_wait_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PersisterError {
    #[error(transparent)]
    ChatLog(#[from] ChatLogError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("the chat log stopped handing messages over")]
    Ended,
}

/// Counters of the persister, registered in the process's registry.
#[derive(Debug, Clone)]
pub struct PersisterMetrics {
    rows: Counter,
    messages: Counter,
    batch_size: Histogram,
    lag_seconds: Histogram,
}

impl PersisterMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            rows: Counter::default(),
            messages: Counter::default(),
            batch_size: Histogram::new(exponential_buckets(1.0, 2.0, 12)),
            // 1 ms .. ~65 s
            lag_seconds: Histogram::new(exponential_buckets(0.001, 2.0, 17)),
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
        registry.register(
            "persister_lag_seconds",
            "Time from a message's acceptance by a gateway to its commit in the store",
            metrics.lag_seconds.clone(),
        );
        metrics
    }
}

/// What the persister needs.
pub struct Deps {
    /// Hands the messages over, and names the store they go to.
    pub chat_log: Arc<dyn ChatLog>,
    pub args: PersisterArgs,
    pub metrics: PersisterMetrics,
}

/// Writes chat messages until `shutdown`. Messages not acknowledged (a batch
/// cut short by shutdown or a crash) are handed over again, to this replica
/// or another.
pub async fn run(deps: Deps, shutdown: CancellationToken) -> Result<(), PersisterError> {
    let batch_max = deps.args.persist_batch_max;
    let Some(mut messages) = deps.chat_log.to_store(batch_max).await? else {
        tracing::info!("the chat log is the store: nothing to persist");
        shutdown.cancelled().await;
        return Ok(());
    };
    let wait = Duration::from_millis(deps.args.persist_batch_wait_ms);
    tracing::info!(
        batch_max,
        batch_wait_ms = deps.args.persist_batch_wait_ms,
        "persister consuming"
    );
    loop {
        let first = tokio::select! {
            () = shutdown.cancelled() => break,
            next = messages.next() => next,
        };
        let Some(first) = first else {
            return Err(PersisterError::Ended);
        };
        let batch = take_batch(first, &mut messages, batch_max, wait).await;
        if !persist(deps.chat_log.store(), batch, &deps.metrics, &shutdown).await {
            break;
        }
    }
    tracing::info!("persister stopped");
    Ok(())
}

/// A batch: `first`, and what else `messages` hands over within `wait` of
/// it, up to `max` in all; errors are logged and skipped.
async fn take_batch<T, E: std::fmt::Display>(
    first: Result<T, E>,
    messages: &mut (impl futures_util::Stream<Item = Result<T, E>> + Unpin),
    max: usize,
    wait: Duration,
) -> Vec<T> {
    let mut batch = Vec::with_capacity(max);
    match first {
        Ok(m) => batch.push(m),
        Err(e) => tracing::warn!(error = %e, "consumer error"),
    }
    let deadline = tokio::time::Instant::now() + wait;
    while batch.len() < max {
        match tokio::time::timeout_at(deadline, messages.next()).await {
            Ok(Some(Ok(m))) => batch.push(m),
            Ok(Some(Err(e))) => tracing::warn!(error = %e, "consumer error"),
            Ok(None) | Err(_) => break,
        }
    }
    batch
}

/// Writes one batch and acknowledges it. Retries while the store fails;
/// false when shutdown interrupted it (the batch is then handed over again
/// later).
async fn persist(
    store: &Store,
    batch: Vec<Delivery>,
    metrics: &PersisterMetrics,
    shutdown: &CancellationToken,
) -> bool {
    let rows: Vec<ChatMessage> = batch.iter().filter_map(|d| d.message.clone()).collect();
    metrics.messages.inc_by(batch.len() as u64);
    metrics.batch_size.observe(batch.len() as f64);
    let spans = spans(&batch);
    loop {
        match store
            .insert_messages(&rows)
            .instrument(spans.batch.clone())
            .await
        {
            Ok(inserted) => {
                metrics.rows.inc_by(inserted);
                break;
            }
            Err(e) => {
                tracing::error!(error = %e, batch = rows.len(), "batch not written, retrying");
                common::telemetry::otel::fail(&spans.batch);
                for delivery in &batch {
                    delivery.receipt.in_progress().await;
                }
                tokio::select! {
                    () = shutdown.cancelled() => return false,
                    () = tokio::time::sleep(RETRY_PAUSE) => {}
                }
            }
        }
    }
    let committed = common::domain::now();
    for created in rows.iter().filter_map(|row| row.create_date) {
        let lag = (committed - created).num_milliseconds().max(0);
        metrics.lag_seconds.observe(lag as f64 / 1000.0);
    }
    for delivery in batch {
        if let Err(e) = delivery.receipt.stored().await {
            // Handed over again after the ack wait; the insert skips it then.
            tracing::warn!(error = %e, "ack failed");
        }
    }
    drop(spans);
    true
}

/// The spans of one batch, when traces are exported: one per message, a
/// child of the span that appended it (so that a message's trace runs from
/// the sender's gateway to its commit), and the batch's, linked to each.
fn spans(batch: &[Delivery]) -> BatchSpans {
    BatchSpans::consumed(
        batch.iter().map(|delivery| delivery.trace.as_ref()),
        PERSISTER_CONSUMER,
        "process chat message",
        "persist batch",
    )
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use futures_util::Stream;
    use tokio::sync::mpsc;

    use super::take_batch;

    const WAIT: Duration = Duration::from_millis(5);

    type Handed = Result<u32, String>;

    /// The messages handed over, as a stream that stays open while the
    /// sender lives.
    fn channel() -> (
        mpsc::UnboundedSender<Handed>,
        impl Stream<Item = Handed> + Unpin,
    ) {
        let (tx, mut rx) = mpsc::unbounded_channel();
        (
            tx,
            futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx)),
        )
    }

    #[tokio::test]
    async fn a_batch_holds_at_most_max_messages() {
        let (tx, mut rx) = channel();
        for i in 1..1200 {
            tx.send(Ok(i)).expect("open");
        }
        let first = take_batch(Ok(0), &mut rx, 500, WAIT).await;
        assert_eq!(first, (0..500).collect::<Vec<_>>());
        let second = take_batch(Ok(1000), &mut rx, 500, WAIT).await;
        assert_eq!(second.len(), 500);
        assert_eq!(second[1], 500, "in the order handed over");
        // Fewer than max left (201), the stream still open: the wait ends it.
        let third = take_batch(Ok(2000), &mut rx, 500, WAIT).await;
        assert_eq!(third.len(), 1 + 201);
        assert_eq!(third.last(), Some(&1199));
        drop(tx);
    }

    #[tokio::test]
    async fn a_batch_ends_with_its_wait_or_the_stream() {
        let (tx, mut rx) = channel();
        tx.send(Ok(1)).expect("open");
        tx.send(Ok(2)).expect("open");
        assert_eq!(take_batch(Ok(0), &mut rx, 500, WAIT).await, [0, 1, 2]);
        tx.send(Ok(4)).expect("open");
        drop(tx);
        assert_eq!(
            take_batch(Ok(3), &mut rx, 500, Duration::from_secs(3600)).await,
            [3, 4],
            "the end of the stream does not wait"
        );
    }

    #[tokio::test]
    async fn errors_are_skipped_not_batched() {
        let (tx, mut rx) = channel();
        tx.send(Err("lost".into())).expect("open");
        tx.send(Ok(2)).expect("open");
        drop(tx);
        let batch = take_batch(Err("first lost".into()), &mut rx, 500, WAIT).await;
        assert_eq!(batch, [2]);
    }
}
