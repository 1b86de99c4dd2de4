//! The MySQL/MariaDB engine: the production store, compatible with databases
//! that older Komunikator servers created.

use std::time::Duration;

use sqlx::mysql::{MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlQueryResult};

use super::Engine;

/// Longest wait for a pooled connection (or a new one) before a call fails
/// as unavailable: a request that cannot get one answers 503 within the
/// contract's 2 s.
const ACQUIRE_TIMEOUT: Duration = Duration::from_millis(1500);

/// One pool serves reads and writes.
pub(super) async fn connect(
    options: &MySqlConnectOptions,
    max_connections: u32,
) -> super::Result<MySqlPool> {
    Ok(MySqlPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(ACQUIRE_TIMEOUT)
        .connect_with(options.clone())
        .await?)
}

impl Engine for MySqlPool {
    const INSERT_IGNORE: &'static str = "INSERT IGNORE";
    const MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/mysql");
    type Done = MySqlQueryResult;

    fn inserted_id(done: &MySqlQueryResult) -> i64 {
        // AUTO_INCREMENT ids stay far below i64::MAX (and below 2^53).
        i64::try_from(done.last_insert_id()).unwrap_or(i64::MAX)
    }
}
