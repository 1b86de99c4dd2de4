//! The SQLite engine: the embedded store of single-node mode. SQLite allows
//! one writer at a time, so writes go through a one-connection pool (no
//! "database is locked" under concurrent writes) while reads use several
//! connections on the WAL.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};

use super::Engine;

/// The reader and the writer pool of the file at `path`, created if missing.
pub(super) async fn connect(path: &Path) -> super::Result<(SqlitePool, SqlitePool)> {
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
    Ok((reader, writer))
}

impl Engine for SqlitePool {
    const INSERT_IGNORE: &'static str = "INSERT OR IGNORE";
    const MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
    type Done = SqliteQueryResult;

    fn inserted_id(done: &SqliteQueryResult) -> i64 {
        done.last_insert_rowid()
    }
}
