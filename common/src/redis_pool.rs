//! The one way this project opens Redis: a connection pool whose TCP
//! connections have Nagle's algorithm off, so a small command written
//! while another one's reply is outstanding leaves at once instead of
//! waiting for a delayed ACK (up to 40 ms). redis-rs leaves it on by
//! default, and deadpool-redis's `Config` drops the TCP settings of a
//! `ConnectionInfo`, so the pool is built from its `Manager` directly.

use redis::IntoConnectionInfo;
use redis::io::tcp::TcpSettings;

/// Opens (lazily) a pool of Redis connections to `url`.
pub fn connect(url: &str) -> Result<deadpool_redis::Pool, String> {
    let info = url
        .into_connection_info()
        .map_err(|e| e.to_string())?
        .set_tcp_settings(TcpSettings::default().set_nodelay(true));
    let manager = deadpool_redis::Manager::new(info).map_err(|e| e.to_string())?;
    deadpool_redis::Pool::builder(manager)
        .runtime(deadpool_redis::Runtime::Tokio1)
        .build()
        .map_err(|e| e.to_string())
}
