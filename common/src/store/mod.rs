//! The store interface: everything the services read from or write to the
//! relational database, with two adapters sharing the same SQL: MySQL/MariaDB
//! (production) and SQLite (the embedded single-node default).

use std::path::PathBuf;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::NaiveDateTime;

use crate::domain::{
    ChatDraft, ChatId, ChatMessage, HistoryQuery, Member, Membership, NewRoom, Room, RoomEdit,
    RoomId, UserInfo,
};

#[macro_use]
mod sql;
mod mysql;
mod sqlite;

pub use mysql::MySqlStore;
pub use sqlite::SqliteStore;

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

/// Opens the store the settings name.
pub async fn connect(settings: &StoreSettings) -> Result<Arc<dyn Store>> {
    Ok(match settings {
        StoreSettings::MySql {
            options,
            max_connections,
        } => Arc::new(
            MySqlStore::connect(
                sqlx::mysql::MySqlConnectOptions::clone(options),
                *max_connections,
            )
            .await?,
        ),
        StoreSettings::Sqlite { path } => Arc::new(SqliteStore::connect(path).await?),
    })
}

/// Every query the services make. Implementations share their SQL (see
/// `sql.rs`); only connection handling differs.
#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Applies every pending migration.
    async fn migrate(&self) -> Result<()>;
    /// Fails unless the database holds exactly the migrations this build knows.
    async fn check_schema(&self) -> Result<()>;
    /// Answers when the database does.
    async fn ping(&self) -> Result<()>;

    /// The stored spelling of a user name (MySQL compares names case-insensitively).
    async fn user_name(&self, user: &str) -> Result<Option<String>>;
    async fn create_user(&self, user: &str, password_hash: &str) -> Result<()>;
    /// The stored spelling of the name and the stored password (hash or legacy plaintext).
    async fn credentials(&self, user: &str) -> Result<Option<(String, String)>>;
    /// Replaces the password only if it still is `old`; false when it changed meanwhile.
    async fn replace_password(&self, user: &str, old: &str, new: &str) -> Result<bool>;
    /// The user's counters; `message_count` counts stored messages with a
    /// `chat_id` up to `stored_up_to` (the caller adds those past it).
    async fn user_info(&self, user: &str, stored_up_to: ChatId) -> Result<UserInfo>;
    /// Users who share at least one room with `user`, `user` excluded.
    async fn room_mates(&self, user: &str) -> Result<Vec<String>>;

    async fn public_rooms(&self) -> Result<Vec<Room>>;
    async fn room(&self, room_id: RoomId) -> Result<Option<Room>>;
    async fn private_room_by_key(&self, access_key: &str) -> Result<Option<Room>>;
    /// Creates the room and makes its owner a member, atomically.
    async fn create_room(&self, room: &NewRoom, now: NaiveDateTime) -> Result<RoomId>;
    async fn update_room(&self, edit: &RoomEdit) -> Result<()>;
    /// Deletes the room with its memberships and history; false if it was gone.
    async fn delete_room(&self, room_id: RoomId) -> Result<bool>;

    /// The stored spelling of `user` if they are a member of the room.
    async fn member(&self, room_id: RoomId, user: &str) -> Result<Option<String>>;
    /// False when the user already was a member; `Missing` when the room is gone.
    async fn add_member(&self, room_id: RoomId, user: &str) -> Result<bool>;
    /// False when the user was not a member.
    async fn remove_member(&self, room_id: RoomId, user: &str) -> Result<bool>;
    async fn memberships(&self, user: &str) -> Result<Vec<Membership>>;
    /// `(user, room_id)` for every membership of the given users.
    async fn rooms_of(&self, users: &[String]) -> Result<Vec<(String, RoomId)>>;
    async fn members(&self, room_id: RoomId) -> Result<Vec<Member>>;

    async fn history(&self, query: HistoryQuery) -> Result<Vec<ChatMessage>>;

    /// Stores messages that already have their `chat_id` (from the broker),
    /// in one transaction. Idempotent: a message stored before is skipped.
    /// Messages of rooms deleted meanwhile are dropped. Returns rows inserted.
    async fn insert_messages(&self, batch: &[ChatMessage]) -> Result<u64>;
    /// Stores messages in one transaction and returns the ids the store gave
    /// them, in order (single-node mode, where the store assigns chat ids);
    /// a message whose room is gone fails alone (`Missing`).
    async fn append_messages(&self, drafts: &[ChatDraft]) -> Result<Vec<Result<ChatId>>>;
    /// The largest `chat_id` stored (0 when there is none).
    async fn max_chat_id(&self) -> Result<ChatId>;
}

/// A `rooms` row. Older databases allow NULL in several columns.
#[derive(sqlx::FromRow)]
struct RoomRow {
    room_id: i64,
    room_name: String,
    room_owner: Option<String>,
    create_date: Option<NaiveDateTime>,
    is_private: Option<bool>,
    access_key: Option<String>,
}

impl From<RoomRow> for Room {
    fn from(r: RoomRow) -> Self {
        Room {
            room_id: r.room_id,
            room_name: r.room_name,
            room_owner: r.room_owner.unwrap_or_default(),
            create_date: r.create_date,
            is_private: r.is_private.unwrap_or(false),
            access_key: r.access_key,
        }
    }
}

#[derive(sqlx::FromRow)]
struct MembershipRow {
    user_name: String,
    room_id: i64,
    room_name: String,
    room_owner: Option<String>,
    is_private: Option<bool>,
}

impl From<MembershipRow> for Membership {
    fn from(r: MembershipRow) -> Self {
        Membership {
            user_name: r.user_name,
            room_id: r.room_id,
            room_name: r.room_name,
            room_owner: r.room_owner.unwrap_or_default(),
            is_private: r.is_private.unwrap_or(false),
        }
    }
}

#[derive(sqlx::FromRow)]
struct MessageRow {
    chat_id: i64,
    room_id: Option<i64>,
    user_name: Option<String>,
    message: Option<String>,
    create_date: Option<NaiveDateTime>,
}

impl From<MessageRow> for ChatMessage {
    fn from(r: MessageRow) -> Self {
        ChatMessage {
            chat_id: r.chat_id,
            room_id: r.room_id.unwrap_or_default(),
            user_name: r.user_name.unwrap_or_default(),
            message: r.message.unwrap_or_default(),
            create_date: r.create_date,
        }
    }
}

#[derive(sqlx::FromRow)]
struct UserInfoRow {
    message_count: i64,
    private_rooms_owned: i64,
    public_rooms_owned: i64,
    private_rooms_member: i64,
    public_rooms_member: i64,
}

impl From<UserInfoRow> for UserInfo {
    fn from(r: UserInfoRow) -> Self {
        UserInfo {
            message_count: r.message_count,
            private_rooms_owned: r.private_rooms_owned,
            public_rooms_owned: r.public_rooms_owned,
            private_rooms_member: r.private_rooms_member,
            public_rooms_member: r.public_rooms_member,
        }
    }
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

/// Compares the migrations a database records with those this build embeds.
fn compare_migrations(known: &sqlx::migrate::Migrator, applied: &[(i64, Vec<u8>)]) -> Result<()> {
    let expected: Vec<(i64, &[u8])> = known
        .iter()
        .filter(|m| m.migration_type.is_up_migration())
        .map(|m| (m.version, m.checksum.as_ref()))
        .collect();
    if applied.is_empty() {
        return Err(StoreError::Schema(
            "the database has no Komunikator schema; run `komunikator migrate` first".into(),
        ));
    }
    for (version, checksum) in applied {
        match expected.iter().find(|(v, _)| v == version) {
            None => {
                return Err(StoreError::Schema(format!(
                    "the database has migration {version}, which this build does not know; \
                     upgrade Komunikator"
                )));
            }
            Some((_, c)) if *c != checksum.as_slice() => {
                return Err(StoreError::Schema(format!(
                    "migration {version} in the database differs from this build's"
                )));
            }
            Some(_) => {}
        }
    }
    if applied.len() < expected.len() {
        return Err(StoreError::Schema(
            "the database schema is older than this build; run `komunikator migrate`".into(),
        ));
    }
    Ok(())
}
