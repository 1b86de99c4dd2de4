//! The SQLite adapter: the embedded store of single-node mode. SQLite allows
//! one writer at a time, so writes go through a one-connection pool (no
//! "database is locked" under concurrent writes) while reads use several
//! connections on the WAL.
//!
//! The writer never checkpoints: by default SQLite copies the WAL back into
//! the database (two fsyncs) inside whichever commit crosses 1,000 WAL
//! pages, and at 1,000 chat messages/s that was every second, each time
//! stalling every message waiting behind that commit (p99 of 15–200 ms at
//! light load). A background task checkpoints instead, on its own
//! connection: first PASSIVE, which WAL mode runs beside the writer and
//! which does the copying and the fsyncs, then RESTART, which holds the
//! writer only for the few pages committed meanwhile and makes the next
//! commit start the WAL file over (PASSIVE alone never catches a busy
//! writer, and the file grew by 17 MB/s).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};

/// The store in one SQLite file.
#[derive(Debug, Clone)]
pub struct SqliteStore {
    reader: SqlitePool,
    writer: SqlitePool,
    /// Stops the checkpoint task when the last clone of the store goes.
    _checkpoints: Arc<tokio_util::sync::DropGuard>,
}

/// How often the WAL is copied back into the database file.
const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

impl SqliteStore {
    /// Skips rows whose `message_id` is stored already.
    const INSERT_IGNORE_MESSAGES: &'static str = "INSERT OR IGNORE INTO chat_history \
        (message_id, room_id, user_name, message, message_date) ";

    pub(super) const MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

    pub async fn connect(path: &Path) -> super::Result<Self> {
        let options = SqliteConnectOptions::new()
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        let writer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone().pragma("wal_autocheckpoint", "0"))
            .await?;
        let checkpointer = SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        let stop = tokio_util::sync::CancellationToken::new();
        tokio::spawn(checkpoint_regularly(checkpointer, stop.clone()));
        Ok(Self {
            reader,
            writer,
            _checkpoints: Arc::new(stop.drop_guard()),
        })
    }

    fn reader(&self) -> &SqlitePool {
        &self.reader
    }

    fn writer(&self) -> &SqlitePool {
        &self.writer
    }

    fn last_insert_id(done: &SqliteQueryResult) -> i64 {
        done.last_insert_rowid()
    }
}

/// Copies what the WAL holds into the database file every
/// [`CHECKPOINT_INTERVAL`] (see the module's notes), and once more,
/// truncating it, when the store is dropped.
async fn checkpoint_regularly(pool: SqlitePool, stop: tokio_util::sync::CancellationToken) {
    let mut ticks = tokio::time::interval(CHECKPOINT_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stop.cancelled() => break,
        }
        for pragma in [
            "PRAGMA wal_checkpoint(PASSIVE)",
            "PRAGMA wal_checkpoint(RESTART)",
        ] {
            if let Err(e) = sqlx::query(pragma).execute(&pool).await {
                tracing::warn!(error = %e, pragma, "SQLite checkpoint failed");
            }
        }
    }
    let _ = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&pool)
        .await;
    pool.close().await;
}

sql_store!(SqliteStore);
