//! The one way this project opens Redis: one server (`REDIS_URL`) through a
//! connection pool, or a Redis Cluster (`REDIS_CLUSTER_NODES`) through one
//! multiplexed cluster connection, which follows the cluster's slots
//! (MOVED, ASK) and its failovers itself. Either way the TCP connections
//! have Nagle's algorithm off, so a small command written while another
//! one's reply is outstanding leaves at once instead of waiting for a
//! delayed ACK (up to 40 ms). redis-rs leaves it on by default, and neither
//! deadpool-redis's `Config` nor its cluster pool passes TCP settings on,
//! so both are built here.
//!
//! On a cluster every script's keys must share a hash slot: the callers put
//! them under one hash tag (`{...}`) and spread their tags over the slots.

use std::time::Duration;

use clap::Args;

use crate::support::problems::Problems;

use std::sync::Arc;

use redis::IntoConnectionInfo;
use redis::aio::ConnectionLike;
use redis::cluster_async::ClusterConnection;
use redis::io::tcp::TcpSettings;
use tokio::sync::OnceCell;

/// Redis, one server or a cluster; cheap to clone.
#[derive(Clone)]
pub enum RedisPool {
    Single(deadpool_redis::Pool),
    Cluster(Arc<Cluster>),
}

/// A Redis Cluster, connected on first use (and again after a failure to).
pub struct Cluster {
    client: redis::cluster::ClusterClient,
    connection: OnceCell<ClusterConnection>,
}

impl std::fmt::Debug for RedisPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Single(_) => "RedisPool::Single",
            Self::Cluster(_) => "RedisPool::Cluster",
        })
    }
}

fn nodelay() -> TcpSettings {
    TcpSettings::default().set_nodelay(true)
}

/// Opens (lazily) a pool of connections to the Redis server at `url`.
pub fn connect(url: &str) -> Result<RedisPool, String> {
    let info = url
        .into_connection_info()
        .map_err(|e| e.to_string())?
        .set_tcp_settings(nodelay());
    let manager = deadpool_redis::Manager::new(info).map_err(|e| e.to_string())?;
    deadpool_redis::Pool::builder(manager)
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .map(RedisPool::Single)
        .map_err(|e| e.to_string())
}

/// A Redis Cluster reached through any of `nodes` (it learns the others
/// from them); connected on first use.
pub fn connect_cluster(nodes: &[String]) -> Result<RedisPool, String> {
    let client = redis::cluster::ClusterClientBuilder::new(nodes.to_vec())
        .tcp_settings(nodelay())
        .connection_timeout(std::time::Duration::from_secs(1))
        .response_timeout(std::time::Duration::from_secs(2))
        .build()
        .map_err(|e| e.to_string())?;
    Ok(RedisPool::Cluster(Arc::new(Cluster {
        client,
        connection: OnceCell::new(),
    })))
}

/// One connection from a [`RedisPool`]: use it like any redis-rs async
/// connection (`query_async(&mut conn)`, `invoke_async(&mut conn)`).
pub enum RedisConnection {
    Single(deadpool_redis::Connection),
    Cluster(ClusterConnection),
}

impl RedisPool {
    /// A connection: from the pool, or (a cluster) a handle on the shared
    /// multiplexed one.
    pub async fn get(&self) -> Result<RedisConnection, String> {
        match self {
            Self::Single(pool) => pool
                .get()
                .await
                .map(RedisConnection::Single)
                .map_err(|e| e.to_string()),
            Self::Cluster(cluster) => cluster
                .connection
                .get_or_try_init(|| cluster.client.get_async_connection())
                .await
                .cloned()
                .map(RedisConnection::Cluster)
                .map_err(|e| e.to_string()),
        }
    }
}

impl ConnectionLike for RedisConnection {
    fn req_packed_command<'a>(
        &'a mut self,
        cmd: &'a redis::Cmd,
    ) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            Self::Single(conn) => conn.req_packed_command(cmd),
            Self::Cluster(conn) => conn.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            Self::Single(conn) => conn.req_packed_commands(pipeline, offset, count),
            Self::Cluster(conn) => conn.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(conn) => conn.get_db(),
            Self::Cluster(conn) => conn.get_db(),
        }
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
