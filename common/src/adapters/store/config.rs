//! The options of the MySQL/MariaDB database.

use clap::Args;
use sqlx::mysql::MySqlConnectOptions;

use crate::adapters::store::StoreSettings;
use crate::support::problems::Problems;

/// The MySQL/MariaDB database.
#[derive(Debug, Clone, Args)]
pub struct DbArgs {
    /// Database URL, `mysql://user:password@host:port/name`; takes precedence
    /// over the DB_* variables. Read from the environment only.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,
    /// MySQL/MariaDB host.
    #[arg(long, env = "DB_HOST")]
    pub db_host: Option<String>,
    /// MySQL/MariaDB port.
    #[arg(long, env = "DB_PORT", default_value_t = 3306)]
    pub db_port: u16,
    /// MySQL/MariaDB user.
    #[arg(long, env = "DB_USER", default_value = "root")]
    pub db_user: String,
    /// MySQL/MariaDB password. Read from the environment only.
    #[arg(long, env = "DB_PASSWORD", hide_env_values = true, default_value = "")]
    pub db_password: String,
    /// Database name.
    #[arg(long, env = "DB_NAME", default_value = "komunikator")]
    pub db_name: String,
    /// Connections in the database pool of each process.
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16, value_parser = crate::support::problems::at_least_one::<u32>())]
    pub db_max_connections: u32,
}

impl DbArgs {
    /// Names of the options that hold secrets: they must come from the
    /// environment, never from the command line (visible in `ps`).
    pub const SECRET_IDS: [&'static str; 2] = ["database_url", "db_password"];

    /// True when a MySQL database is configured.
    pub fn is_set(&self) -> bool {
        self.url().is_some() || self.db_host.as_deref().is_some_and(|h| !h.is_empty())
    }

    /// `DATABASE_URL`; an empty value counts as unset.
    fn url(&self) -> Option<&str> {
        self.database_url.as_deref().filter(|u| !u.is_empty())
    }

    /// The MySQL settings; `None` when no database is configured.
    pub fn mysql(&self, problems: &mut Problems) -> Option<StoreSettings> {
        if self.db_max_connections == 0 {
            problems.push("DB_MAX_CONNECTIONS must be at least 1");
        }
        let options = if let Some(url) = self.url() {
            match url.parse::<MySqlConnectOptions>() {
                Ok(o) => o,
                Err(_) => {
                    // The URL holds a password: never echo it.
                    problems.push("DATABASE_URL is not a valid mysql:// URL");
                    return None;
                }
            }
        } else {
            let host = self.db_host.as_deref().filter(|h| !h.is_empty())?;
            let options = MySqlConnectOptions::new()
                .host(host)
                .port(self.db_port)
                .username(&self.db_user)
                .database(&self.db_name);
            // An empty password means none: sending "" is a different login.
            if self.db_password.is_empty() {
                options
            } else {
                options.password(&self.db_password)
            }
        };
        Some(StoreSettings::MySql {
            options: Box::new(options),
            max_connections: self.db_max_connections,
        })
    }
}
