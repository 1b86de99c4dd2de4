//! A counter shared by every replica of a deployment (Redis), or by the one
//! process of the embedded mode: replicas compare it to tell whether what
//! they hold is still current.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use crate::adapters::redis::RedisPool;
use crate::support::sync::Locked;
use redis::AsyncCommands;
use tokio::sync::watch;

#[derive(Debug, thiserror::Error)]
#[error("shared counter unavailable: {0}")]
pub struct CounterError(String);

#[async_trait]
pub trait SharedCounter: Send + Sync + 'static {
    async fn get(&self) -> Result<u64, CounterError>;
    /// Adds one; every later `get`, in any replica, sees the new value.
    async fn bump(&self) -> Result<(), CounterError>;
}

/// The embedded mode's counter: one process, one value.
#[derive(Debug, Default)]
pub struct LocalCounter(AtomicU64);

#[async_trait]
impl SharedCounter for LocalCounter {
    async fn get(&self) -> Result<u64, CounterError> {
        Ok(self.0.load(Ordering::Acquire))
    }

    async fn bump(&self) -> Result<(), CounterError> {
        self.0.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}

/// A Redis key incremented with INCR.
pub struct RedisCounter {
    pool: RedisPool,
    key: String,
}

impl std::fmt::Debug for RedisCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisCounter")
            .field("key", &self.key)
            .finish_non_exhaustive()
    }
}

impl RedisCounter {
    /// The counter at `key`, on the process's Redis pool (`crate::adapters::redis`).
    pub fn new(pool: RedisPool, key: String) -> Self {
        Self { pool, key }
    }
}

#[async_trait]
impl SharedCounter for RedisCounter {
    async fn get(&self) -> Result<u64, CounterError> {
        let mut conn = self.pool.get().await.map_err(CounterError)?;
        let value: Option<u64> = conn
            .get(&self.key)
            .await
            .map_err(|e| CounterError(e.to_string()))?;
        Ok(value.unwrap_or(0))
    }

    async fn bump(&self) -> Result<(), CounterError> {
        let mut conn = self.pool.get().await.map_err(CounterError)?;
        let _: u64 = conn
            .incr(&self.key, 1)
            .await
            .map_err(|e| CounterError(e.to_string()))?;
        Ok(())
    }
}

/// Reads of another counter shared by concurrent callers: at most one read
/// is in flight, and a caller gets the result of a read that *started after
/// it called*, so it never sees a value older than its call. Under load one
/// round trip serves every request that arrived during the previous one.
pub struct CoalescedReads {
    inner: Arc<dyn SharedCounter>,
    state: Arc<Mutex<ReadState>>,
    reads: watch::Receiver<Read>,
    publish: Arc<watch::Sender<Read>>,
}

/// The outcome of the n-th read.
#[derive(Clone, Debug)]
struct Read {
    number: u64,
    value: Result<u64, String>,
}

#[derive(Debug, Default)]
struct ReadState {
    /// Reads started so far.
    started: u64,
    running: bool,
    /// A caller arrived while a read was running: another read follows it.
    again: bool,
}

impl std::fmt::Debug for CoalescedReads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoalescedReads").finish_non_exhaustive()
    }
}

impl CoalescedReads {
    pub fn new(inner: Arc<dyn SharedCounter>) -> Self {
        let (publish, reads) = watch::channel(Read {
            number: 0,
            value: Err("not read yet".into()),
        });
        Self {
            inner,
            state: Arc::default(),
            reads,
            publish: Arc::new(publish),
        }
    }

    /// Reads until no caller is waiting for a newer read.
    async fn run(
        inner: Arc<dyn SharedCounter>,
        state: Arc<Mutex<ReadState>>,
        publish: Arc<watch::Sender<Read>>,
        mut number: u64,
    ) {
        loop {
            let value = inner.get().await.map_err(|e| e.0);
            publish.send_replace(Read { number, value });
            let mut s = state.locked();
            if !std::mem::take(&mut s.again) {
                s.running = false;
                return;
            }
            s.started += 1;
            number = s.started;
        }
    }
}

#[async_trait]
impl SharedCounter for CoalescedReads {
    async fn get(&self) -> Result<u64, CounterError> {
        let needed = {
            let mut s = self.state.locked();
            if s.running {
                s.again = true;
            } else {
                s.running = true;
                s.started += 1;
                tokio::spawn(Self::run(
                    self.inner.clone(),
                    self.state.clone(),
                    self.publish.clone(),
                    s.started,
                ));
            }
            s.started + u64::from(s.running && s.again)
        };
        let mut reads = self.reads.clone();
        let read = reads
            .wait_for(|r| r.number >= needed)
            .await
            .map_err(|_| CounterError("reader gone".into()))?;
        read.value.clone().map_err(CounterError)
    }

    async fn bump(&self) -> Result<(), CounterError> {
        self.inner.bump().await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn coalesced_reads_never_return_a_value_older_than_the_call() {
        let inner: Arc<dyn SharedCounter> = Arc::new(LocalCounter::default());
        let counter = Arc::new(CoalescedReads::new(inner.clone()));
        let mut tasks = Vec::new();
        for _ in 0..200 {
            let counter = counter.clone();
            let inner = inner.clone();
            tasks.push(tokio::spawn(async move {
                inner.bump().await.expect("bump");
                let floor = inner.get().await.expect("direct");
                let seen = counter.get().await.expect("coalesced");
                assert!(seen >= floor, "saw {seen}, older than {floor}");
            }));
        }
        for t in tasks {
            t.await.expect("task");
        }
        assert_eq!(counter.get().await.expect("final"), 200);
    }
}
