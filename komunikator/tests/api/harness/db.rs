//! The databases of a test: a fresh MariaDB database per test, and SQL run
//! on a deployment's store (MariaDB or the embedded SQLite) to seed what no
//! REST call writes and to check what was stored.

use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection, MySqlConnection};

use super::{Backend, TestApp, random_hex};

pub fn mysql_server_url() -> String {
    std::env::var("KOM_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// A fresh MariaDB database, dropped when this value is.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let name = format!("kom_t_{}", random_hex(6));
        let mut conn = MySqlConnection::connect(&mysql_server_url())
            .await
            .expect("connect to MariaDB");
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE DATABASE {name} CHARACTER SET utf8mb4"
        )))
        .execute(&mut conn)
        .await
        .expect("create database");
        Self { name }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", mysql_server_url(), self.name)
    }

    pub async fn connect(&self) -> MySqlConnection {
        MySqlConnection::connect(&self.url())
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: do the async cleanup on a thread of its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut conn = MySqlConnection::connect(&mysql_server_url()).await?;
                sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}")))
                    .execute(&mut conn)
                    .await?;
                Ok::<_, sqlx::Error>(())
            })
            .map_err(std::io::Error::other)
        });
        let _ = cleanup.join();
    }
}

/// Runs `$body` with `$conn` bound to a connection to `$app`'s store,
/// whichever backend it runs on (the two connection types share no trait
/// that sqlx's executors accept).
macro_rules! on_store {
    ($app:expr, |$conn:ident| $body:expr) => {
        match $app.backend {
            Backend::MySql => {
                let mut $conn = $app.db.as_ref().expect("db").connect().await;
                $body
            }
            Backend::Embedded => {
                let mut $conn = $app.sqlite().await;
                $body
            }
        }
    };
}

impl TestApp {
    /// Runs SQL on this server's database, for seeding what no REST call
    /// writes yet (chat history) and for checking what was stored.
    pub async fn sql(&self, statement: impl Into<String>) {
        let statement = AssertSqlSafe(statement.into());
        on_store!(self, |conn| {
            sqlx::raw_sql(statement)
                .execute(&mut conn)
                .await
                .expect("sql");
        })
    }

    /// One value read back from this server's database.
    pub async fn scalar<T>(&self, query: impl Into<String>) -> T
    where
        T: Send + Unpin,
        T: for<'r> sqlx::Decode<'r, sqlx::MySql> + sqlx::Type<sqlx::MySql>,
        T: for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
    {
        let query = AssertSqlSafe(query.into());
        on_store!(self, |conn| sqlx::query_scalar(query)
            .fetch_one(&mut conn)
            .await
            .expect("scalar"))
    }

    /// A stored password, read back from the database.
    pub async fn stored_password(&self, user: &str) -> String {
        self.scalar(format!(
            "SELECT password FROM users WHERE user_name = '{user}'"
        ))
        .await
    }

    /// The number of `table`'s rows `condition` selects, e.g. `room_id = 3`.
    pub async fn count_rows(&self, table: &str, condition: &str) -> i64 {
        self.scalar(format!("SELECT COUNT(*) FROM {table} WHERE {condition}"))
            .await
    }

    async fn sqlite(&self) -> sqlx::SqliteConnection {
        let path = self
            .data_dir
            .as_ref()
            .expect("data dir")
            .join("komunikator.sqlite3");
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(Duration::from_secs(5));
        sqlx::SqliteConnection::connect_with(&opts)
            .await
            .expect("open sqlite")
    }
}
