//! The MySQL/MariaDB adapter: the production store, compatible with databases
//! that older Komunikator servers created.

use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlQueryResult};

/// Longest wait for a pooled connection (or a new one) before a call fails
/// as unavailable.
const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(1500);

/// The store on MySQL or MariaDB.
#[derive(Debug, Clone)]
pub struct MySqlStore {
    pool: MySqlPool,
}

impl MySqlStore {
    /// Skips rows whose `message_id` is stored already (and, on MySQL, rows
    /// whose room was deleted between the check and the insert).
    const INSERT_IGNORE_MESSAGES: &'static str = "INSERT IGNORE INTO chat_history \
        (message_id, room_id, user_name, message, message_date) ";

    pub(super) const MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/mysql");

    pub async fn connect(
        options: MySqlConnectOptions,
        max_connections: u32,
    ) -> super::Result<Self> {
        let pool = MySqlPoolOptions::new()
            .max_connections(max_connections)
            // A request that cannot get a connection answers 503 within the
            // contract's 2 s.
            .acquire_timeout(ACQUIRE_TIMEOUT)
            .connect_with(options)
            .await?;
        Ok(Self { pool })
    }

    fn reader(&self) -> &MySqlPool {
        &self.pool
    }

    fn writer(&self) -> &MySqlPool {
        &self.pool
    }

    fn last_insert_id(done: &MySqlQueryResult) -> i64 {
        // AUTO_INCREMENT ids stay far below i64::MAX (and below 2^53).
        i64::try_from(done.last_insert_id()).unwrap_or(i64::MAX)
    }
}

sql_store!(MySqlStore);
