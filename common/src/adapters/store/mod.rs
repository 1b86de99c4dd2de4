//! The store: everything the services read from or write to the relational
//! database, on MySQL/MariaDB (production) or SQLite (the embedded
//! single-node default). Both engines run the same SQL, written once per
//! query in the files of each area: `users`, `rooms`, `members`, `chat`,
//! and `schema` (migrations); `mysql` and `sqlite` open the pools and hold
//! the two lines where the engines differ.

use std::path::PathBuf;

use sqlx::mysql::MySqlPool;
use sqlx::sqlite::SqlitePool;

/// Runs `$body` with `$pool` bound to the store's pool for reads
/// (`on_reader!`) or writes (`on_writer!`), whichever engine it is: `$body`
/// is written once and compiled for both. What differs between the engines
/// it takes from [`Engine`], through [`insert_ignore`], [`inserted_id`] and
/// [`migrator`]. Given the query's name, it runs in a span of that name
/// when traces are exported.
macro_rules! on_reader {
    ($store:expr, $query:literal, |$pool:ident| $body:expr) => {
        ::tracing::Instrument::instrument(
            async { on_reader!($store, |$pool| $body) },
            $store.query_span($query),
        )
        .await
    };
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.pools {
            $crate::adapters::store::Pools::MySql($pool) => $body,
            $crate::adapters::store::Pools::Sqlite { reader: $pool, .. } => $body,
        }
    };
}

/// See [`on_reader!`].
macro_rules! on_writer {
    ($store:expr, $query:literal, |$pool:ident| $body:expr) => {
        ::tracing::Instrument::instrument(
            async { on_writer!($store, |$pool| $body) },
            $store.query_span($query),
        )
        .await
    };
    ($store:expr, |$pool:ident| $body:expr) => {
        match &$store.pools {
            $crate::adapters::store::Pools::MySql($pool) => $body,
            $crate::adapters::store::Pools::Sqlite { writer: $pool, .. } => $body,
        }
    };
}

mod chat;
pub mod config;
mod connect;
mod members;
mod mysql;
mod rooms;
mod schema;
mod sessions;
mod sqlite;
mod users;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A unique key already holds this value (user name, access key).
    #[error("duplicate value")]
    Conflict,
    /// A row this write refers to is gone (deleted concurrently).
    #[error("referenced row not found")]
    Missing,
    /// The database's schema is not the one this build knows.
    #[error("{0}")]
    Schema(String),
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Times a transaction chosen as a deadlock victim is run in all.
pub const DEADLOCK_ATTEMPTS: u32 = 3;

impl StoreError {
    /// The database aborted the transaction to break a deadlock (or a lock
    /// wait ran out): running it again is the remedy.
    pub fn is_deadlock(&self) -> bool {
        match self {
            Self::Database(sqlx::Error::Database(e)) => {
                // SQLSTATE 40001: MySQL's deadlock (1213); 1205: lock wait timeout.
                e.code().as_deref() == Some("40001") || e.message().contains("Lock wait timeout")
            }
            _ => false,
        }
    }

    /// The database cannot be reached (down, restarting, or every pooled
    /// connection busy past the acquire timeout): callers answer "try
    /// again" rather than report a bug.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            Self::Database(
                sqlx::Error::PoolTimedOut
                    | sqlx::Error::PoolClosed
                    | sqlx::Error::Io(_)
                    | sqlx::Error::Tls(_)
                    | sqlx::Error::WorkerCrashed
            )
        )
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Where the store lives.
#[derive(Clone)]
pub enum StoreSettings {
    MySql {
        options: Box<sqlx::mysql::MySqlConnectOptions>,
        max_connections: u32,
    },
    Sqlite {
        path: PathBuf,
    },
}

impl std::fmt::Debug for StoreSettings {
    // Connect options hold the password: show only where the store is.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::MySql { options, .. } => write!(
                f,
                "MySQL at {}:{}/{}",
                options.get_host(),
                options.get_port(),
                options.get_database().unwrap_or("")
            ),
            Self::Sqlite { path } => write!(f, "SQLite at {}", path.display()),
        }
    }
}

/// The database, as every service uses it: a cheap clone of its pools.
/// Its queries are methods, one `impl Store` block per area.
#[derive(Debug, Clone)]
pub struct Store {
    pools: Pools,
}

/// The connection pools of one engine. SQLite allows one writer at a time,
/// so it writes through a pool of its own.
#[derive(Debug, Clone)]
enum Pools {
    MySql(MySqlPool),
    Sqlite {
        reader: SqlitePool,
        writer: SqlitePool,
    },
}

impl Store {
    /// The span of one of the store's queries (see [`on_reader!`]).
    fn query_span(&self, query: &'static str) -> tracing::Span {
        crate::child_span!(
            "db query",
            otel.name = query,
            otel.kind = "client",
            db.system.name = match self.pools {
                Pools::MySql(_) => "mysql",
                Pools::Sqlite { .. } => "sqlite",
            },
            db.operation.name = query,
        )
    }
}

/// Where the two engines differ, by the pool type the queries run on.
trait Engine {
    /// `INSERT` that skips rows whose primary key is stored already (and, on
    /// MySQL, rows whose room was deleted between the check and the insert).
    const INSERT_IGNORE: &'static str;
    /// The migrations of this engine (`migrations/<engine>`).
    const MIGRATOR: sqlx::migrate::Migrator;
    /// The result of a statement.
    type Done;
    /// The id the database gave the row an `INSERT` added.
    fn inserted_id(done: &Self::Done) -> i64;
}

/// The engine's `INSERT` that skips rows stored already.
fn insert_ignore<P: Engine>(_pool: &P) -> &'static str {
    P::INSERT_IGNORE
}

/// The id the database gave the row `done` inserted.
fn inserted_id<P: Engine>(_pool: &P, done: &P::Done) -> i64 {
    P::inserted_id(done)
}

/// The engine's migrations.
fn migrator<P: Engine>(_pool: &P) -> sqlx::migrate::Migrator {
    P::MIGRATOR
}

/// Maps the one database error a write expects to a domain error.
fn on_unique_violation(e: sqlx::Error) -> StoreError {
    match &e {
        sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::UniqueViolation => {
            StoreError::Conflict
        }
        sqlx::Error::Database(db) if db.kind() == sqlx::error::ErrorKind::ForeignKeyViolation => {
            StoreError::Missing
        }
        _ => StoreError::Database(e),
    }
}
