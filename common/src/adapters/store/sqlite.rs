//! The SQLite engine: the embedded store of single-node mode. SQLite allows
//! one writer at a time, so writes go through a one-connection pool (no
//! "database is locked" under concurrent writes) while reads use several
//! connections on the WAL. Every commit is synced (`synchronous=FULL`):
//! an acknowledged chat message survives a power loss, not only a crash.

use std::path::Path;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteQueryResult,
    SqliteSynchronous,
};

use super::Engine;

/// The reader and the writer pool of the file at `path`, created if missing.
pub(super) async fn connect(path: &Path) -> super::Result<(SqlitePool, SqlitePool)> {
    keep_private(path).map_err(sqlx::Error::Io)?;
    let options = SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Normal)
        .foreign_keys(true)
        .busy_timeout(Duration::from_secs(5));
    // In WAL mode, NORMAL syncs only at checkpoints: a power loss takes
    // every commit since the last one, acknowledged messages among them
    // (and their ids are then handed out again). FULL syncs the WAL at each
    // commit; the chat log's group commit makes that one sync per batch.
    let writer = SqlitePoolOptions::new()
        .max_connections(1)
        .connect_with(options.clone().synchronous(SqliteSynchronous::Full))
        .await?;
    let reader = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options.read_only(true))
        .await?;
    Ok((reader, writer))
}

/// The database holds password hashes and every message: only the
/// server's user may read it. Its directory is made 0700 and the file
/// 0600, created so before SQLite opens it (SQLite gives its WAL and
/// shared-memory files the database's permissions); files of an older
/// install are tightened.
fn keep_private(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        crate::support::data_dir::private_dir(dir)?;
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
        {
            // Its directory entry synced too: a new database survives a
            // power loss with the commits SQLite then syncs into it.
            Ok(_) => {
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::File::open(dir)?.sync_all()?;
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        for suffix in ["", "-wal", "-shm"] {
            let mut file = path.as_os_str().to_owned();
            file.push(suffix);
            match std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
    }
    Ok(())
}

impl Engine for SqlitePool {
    const INSERT_IGNORE: &'static str = "INSERT OR IGNORE";
    const MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");
    type Done = SqliteQueryResult;

    fn inserted_id(done: &SqliteQueryResult) -> i64 {
        done.last_insert_rowid()
    }
}
