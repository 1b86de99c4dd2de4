//! The MySQL/MariaDB adapter: the production store, compatible with databases
//! that older Komunikator servers created.

use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlQueryResult};

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
            .acquire_timeout(Duration::from_secs(5))
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
