//! The SQLite adapter: the embedded store of single-node mode. SQLite allows
//! one writer at a time, so writes go through a one-connection pool (no
//! "database is locked" under concurrent writes) while reads use several
//! connections on the WAL.

use std::path::Path;
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
}

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
            .connect_with(options.clone())
            .await?;
        let reader = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options.read_only(true))
            .await?;
        Ok(Self { reader, writer })
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

sql_store!(SqliteStore);
