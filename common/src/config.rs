//! Configuration shared by the services: command-line options that fall back
//! to environment variables (the names older Komunikator servers used keep
//! working), validated once at startup with every problem reported together.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use sqlx::mysql::MySqlConnectOptions;

use crate::store::StoreSettings;

/// Collects configuration problems so they can be reported all at once.
#[derive(Debug, Default)]
pub struct Problems(Vec<String>);

impl Problems {
    pub fn push(&mut self, problem: impl Into<String>) {
        self.0.push(problem.into());
    }

    pub fn into_result(self) -> Result<(), String> {
        if self.0.is_empty() {
            Ok(())
        } else {
            Err(format!(
                "invalid configuration:\n  - {}",
                self.0.join("\n  - ")
            ))
        }
    }
}

/// Where the HTTP server listens, and which browser origins it accepts.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address to listen on.
    #[arg(long = "listen", env = "LISTEN_ADDR", default_value = "0.0.0.0:5000")]
    pub listen: SocketAddr,
    /// Browser origins allowed by CORS and the Socket.IO handshake, comma
    /// separated (e.g. `https://chat.example.com`); `*` allows any origin.
    #[arg(
        long,
        env = "CORS_ALLOWED_ORIGINS",
        default_value = "*",
        value_delimiter = ','
    )]
    pub cors_allowed_origins: Vec<String>,
    /// Load balancers whose `X-Forwarded-For` names the client, as
    /// comma-separated addresses or networks (`10.0.0.0/8`); from any other
    /// peer the header is ignored. Their connections are not capped.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', num_args = 0..)]
    pub trusted_proxies: Vec<crate::throttle::ProxyNet>,
    /// A connection must send a request's headers within this many seconds
    /// (an idle keep-alive connection is closed after as long).
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = 10)]
    pub header_read_timeout_secs: u64,
    /// A request's body must arrive within this many seconds of its headers.
    #[arg(long, env = "BODY_READ_TIMEOUT_SECS", default_value_t = 30)]
    pub body_read_timeout_secs: u64,
    /// Connections one client address may hold before sending a request's
    /// headers (0: no cap); trusted proxies are exempt.
    #[arg(
        long,
        env = "MAX_PENDING_CONNECTIONS_PER_ADDRESS",
        default_value_t = 256
    )]
    pub max_pending_connections_per_address: usize,
}

impl HttpArgs {
    /// What the server enforces on every connection.
    pub fn limits(&self) -> crate::http::ConnectionLimits {
        crate::http::ConnectionLimits {
            header_read_timeout: std::time::Duration::from_secs(
                self.header_read_timeout_secs.max(1),
            ),
            body_read_timeout: std::time::Duration::from_secs(self.body_read_timeout_secs.max(1)),
            max_pending_per_address: self.max_pending_connections_per_address,
            trusted_proxies: self.trusted_proxies.clone(),
        }
    }

    /// `None` when any origin is allowed.
    pub fn origin_allowlist(&self) -> Option<Vec<String>> {
        let origins: Vec<String> = self
            .cors_allowed_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        if origins.is_empty() || origins.iter().any(|o| o == "*") {
            None
        } else {
            Some(origins)
        }
    }

    pub fn validate(&self, problems: &mut Problems) {
        for origin in self.origin_allowlist().unwrap_or_default() {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                problems.push(format!(
                    "CORS_ALLOWED_ORIGINS: `{origin}` is not an origin like https://host[:port]"
                ));
            }
        }
    }
}

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
    #[arg(long, env = "DB_MAX_CONNECTIONS", default_value_t = 16)]
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
            max_connections: self.db_max_connections.max(1),
        })
    }
}

/// The shortest `JWT_SECRET_KEY` accepted, in bytes.
pub const JWT_SECRET_MIN: usize = 32;

/// Access tokens.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// Secret that signs access tokens (HS256); at least 32 bytes.
    /// Read from the environment only. Required except in single-node mode,
    /// which generates one and keeps it in the data directory.
    #[arg(long, env = "JWT_SECRET_KEY", hide_env_values = true)]
    pub jwt_secret_key: Option<String>,
    /// Lifetime of an access token, in seconds.
    #[arg(long, env = "JWT_ACCESS_TOKEN_EXPIRES", default_value_t = 900)]
    pub jwt_access_token_expires: u64,
}

impl AuthArgs {
    pub const SECRET_IDS: [&'static str; 1] = ["jwt_secret_key"];

    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.jwt_access_token_expires)
    }

    pub fn validate(&self, required: bool, problems: &mut Problems) {
        if self.jwt_access_token_expires == 0 {
            problems.push("JWT_ACCESS_TOKEN_EXPIRES must be at least 1 second");
        }
        match &self.jwt_secret_key {
            None if required => problems.push("JWT_SECRET_KEY is required"),
            Some(s) if s.trim().is_empty() => problems.push("JWT_SECRET_KEY is empty"),
            // A short HS256 secret can be recovered offline from any one
            // token, and then every token forged.
            Some(s) if s.len() < JWT_SECRET_MIN => problems.push(format!(
                "JWT_SECRET_KEY must be at least {JWT_SECRET_MIN} bytes (e.g. `openssl rand -hex 32`)"
            )),
            _ => {}
        }
    }
}

/// The broker (NATS).
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL, e.g. `nats://127.0.0.1:4222`, or the servers of a
    /// cluster, comma separated (`nats://nats-0:4222,nats://nats-1:4222`):
    /// the client moves to another when its server goes.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// Replicas of every JetStream stream the services create (the chat
    /// log, the presence snapshot): 3 on a three-server cluster, so an
    /// acknowledged message survives the loss of a server. A stream that
    /// exists with another count is brought to this one.
    #[arg(long, env = "NATS_STREAM_REPLICAS", default_value_t = 1)]
    pub nats_stream_replicas: usize,
}

impl NatsArgs {
    /// The servers of `NATS_URL`, each checked to be a NATS address.
    pub fn servers(&self, problems: &mut Problems) -> Vec<String> {
        let Some(url) = &self.nats_url else {
            return Vec::new();
        };
        let servers: Vec<String> = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if servers.is_empty() {
            problems.push("NATS_URL names no server");
        }
        for server in &servers {
            if server.parse::<async_nats::ServerAddr>().is_err() {
                problems.push(format!(
                    "NATS_URL: `{server}` is not a NATS server address like nats://host:4222"
                ));
            }
        }
        if !(1..=5).contains(&self.nats_stream_replicas) {
            problems.push("NATS_STREAM_REPLICAS must be 1 to 5");
        }
        servers
    }
}

/// Presence (Redis).
#[derive(Debug, Clone, Args)]
pub struct RedisArgs {
    /// Redis URL, e.g. `redis://127.0.0.1:6379`.
    #[arg(long, env = "REDIS_URL", hide_env_values = true)]
    pub redis_url: Option<String>,
    /// The nodes of a Redis Cluster, comma separated
    /// (`redis://redis-0:6379,redis://redis-1:6379`), instead of `REDIS_URL`:
    /// presence, the login throttle and the room list's version then live
    /// on the cluster. Any of its nodes will do; the rest are learned.
    #[arg(
        long,
        env = "REDIS_CLUSTER_NODES",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub redis_cluster_nodes: Vec<String>,
    /// A user without a heartbeat for this long is offline, in milliseconds.
    #[arg(long, env = "PRESENCE_TIMEOUT_MS", default_value_t = 5000)]
    pub presence_timeout_ms: u64,
}

/// Where Redis is: one server, or a cluster. Shown without credentials.
#[derive(Clone)]
pub enum RedisAt {
    Server(String),
    Cluster(Vec<String>),
}

impl RedisAt {
    /// What [`Debug`] shows of one URL.
    fn host_only(&self) -> String {
        format!("{self:?}")
    }
}

impl std::fmt::Debug for RedisAt {
    /// Hosts only: a URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = |url: &str| {
            let rest = url.split_once("://").map_or(url, |(_, rest)| rest);
            rest.rsplit_once('@')
                .map_or(rest, |(_, host)| host)
                .split('/')
                .next()
                .unwrap_or_default()
                .to_owned()
        };
        match self {
            Self::Server(url) => write!(f, "Redis at {}", host(url)),
            Self::Cluster(nodes) => write!(
                f,
                "Redis Cluster through {}",
                nodes.iter().map(|n| host(n)).collect::<Vec<_>>().join(",")
            ),
        }
    }
}

impl RedisArgs {
    /// The Redis URLs may carry a password.
    pub const SECRET_IDS: [&'static str; 2] = ["redis_url", "redis_cluster_nodes"];

    /// Where Redis is, when configured (one server or a cluster, not both).
    pub fn at(&self, problems: &mut Problems) -> Option<RedisAt> {
        let nodes: Vec<String> = self
            .redis_cluster_nodes
            .iter()
            .map(|n| n.trim().to_owned())
            .filter(|n| !n.is_empty())
            .collect();
        let redis_url = |url: &str| url.starts_with("redis://") || url.starts_with("rediss://");
        for node in &nodes {
            if !redis_url(node) {
                problems.push(format!(
                    "REDIS_CLUSTER_NODES: every node must start with redis:// or rediss:// (`{}`)",
                    RedisAt::Server(node.clone()).host_only()
                ));
            }
        }
        // An empty REDIS_URL counts as unset.
        match (
            self.redis_url.as_ref().filter(|u| !u.is_empty()),
            nodes.is_empty(),
        ) {
            (Some(_), false) => {
                problems.push("set REDIS_URL or REDIS_CLUSTER_NODES, not both");
                None
            }
            (Some(url), true) => Some(RedisAt::Server(url.clone())),
            (None, false) => Some(RedisAt::Cluster(nodes)),
            (None, true) => None,
        }
    }

    pub fn presence_timeout(&self) -> Duration {
        Duration::from_millis(self.presence_timeout_ms)
    }

    pub fn validate(&self, problems: &mut Problems) {
        if self.presence_timeout_ms < 100 {
            problems.push("PRESENCE_TIMEOUT_MS must be at least 100");
        }
        if let Some(url) = self.redis_url.as_ref().filter(|u| !u.is_empty())
            && !(url.starts_with("redis://") || url.starts_with("rediss://"))
        {
            problems.push("REDIS_URL must start with redis:// or rediss://");
        }
    }
}

/// Namespacing shared by every service of one deployment.
#[derive(Debug, Clone, Args)]
pub struct PrefixArgs {
    /// Prefix of NATS subjects and Redis keys, so several deployments (or test
    /// runs) can share one NATS and one Redis.
    #[arg(long, env = "KOM_PREFIX", default_value = "kom")]
    pub prefix: String,
}

impl PrefixArgs {
    pub fn validate(&self, problems: &mut Problems) {
        let valid = !self.prefix.is_empty()
            && self.prefix.split('.').all(|t| {
                !t.is_empty()
                    && t.chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
            });
        if !valid {
            problems.push("KOM_PREFIX must be dot-separated tokens of letters, digits, `_` or `-`");
        }
    }
}

/// The data directory of single-node mode.
#[derive(Debug, Clone, Args)]
pub struct DataDirArgs {
    /// Directory for the embedded defaults: the SQLite database and the
    /// generated JWT secret.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
}

impl DataDirArgs {
    pub fn sqlite_path(&self) -> PathBuf {
        self.data_dir.join("komunikator.sqlite3")
    }

    /// The JWT secret kept in the data directory, created on first use.
    pub fn jwt_secret(&self) -> std::io::Result<String> {
        ensure_dir(&self.data_dir)?;
        let path = self.data_dir.join("jwt_secret");
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => {
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600))?;
                }
                return Ok(s.trim().to_owned());
            }
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        let secret = crate::random_hex(32);
        write_private(&path, secret.as_bytes())?;
        sync_dir(&self.data_dir)?;
        Ok(secret)
    }

    pub fn ensure(&self) -> std::io::Result<()> {
        ensure_dir(&self.data_dir)
    }
}

fn ensure_dir(dir: &Path) -> std::io::Result<()> {
    private_dir(dir)
}

/// Creates `dir` if missing, readable by the server's user only (0700),
/// and tightens it if it exists: it holds the database and the JWT secret.
pub fn private_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)?;
        let mode = std::fs::metadata(dir)?.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                dir = %dir.display(),
                mode = format!("{:o}", mode & 0o777),
                "data directory open to other users: made 0700"
            );
        }
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
    }
    #[cfg(not(unix))]
    {
        std::fs::create_dir_all(dir)
    }
}

/// Writes a file only its owner may read, and syncs it: a secret lost to
/// a power cut would log every user out. A file left empty by such a cut
/// (its creation kept, its data not) is written over.
#[cfg(unix)]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

/// Syncs a directory, so that a file just created in it survives a power loss.
fn sync_dir(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    std::fs::File::open(dir)?.sync_all()?;
    let _ = dir;
    Ok(())
}

#[cfg(not(unix))]
fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    std::fs::write(path, bytes)
}
