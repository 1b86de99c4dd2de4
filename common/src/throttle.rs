//! Throttling of failed attempts (docs/protocol.md, "Accounts and abuse"): a
//! key (a user name, a client address) that failed `max` times within
//! `window` is blocked until that window ends. Shared by the API's
//! replicas through Redis, or kept in process (the embedded default).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::redis_pool::{RedisConnection, RedisPool};
use crate::sync::Locked;

/// How many failures a key may have within a window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub max: u32,
    pub window: Duration,
}

#[derive(Debug, Clone, thiserror::Error)]
#[error("throttle state unavailable: {0}")]
pub struct ThrottleError(#[source] crate::cause::Cause);

#[async_trait]
pub trait Throttle: Send + Sync + 'static {
    /// How long until none of `keys` is blocked; `None` when none is.
    async fn blocked(&self, keys: &[String]) -> Result<Option<Duration>, ThrottleError>;
    /// Counts one failure against each of `keys`.
    async fn failed(&self, keys: &[String]) -> Result<(), ThrottleError>;
    /// Forgets the failures of `key` (it succeeded).
    async fn clear(&self, key: &str) -> Result<(), ThrottleError>;
}

/// The failures of one process's keys.
#[derive(Debug)]
pub struct LocalThrottle {
    limit: Limit,
    /// Failures and the end of their window, by key.
    keys: Mutex<HashMap<String, (u32, Instant)>>,
}

/// Past this many keys, expired ones are swept on the next failure.
const LOCAL_SWEEP_AT: usize = 10_000;

impl LocalThrottle {
    pub fn new(limit: Limit) -> Self {
        Self {
            limit,
            keys: Mutex::default(),
        }
    }
}

#[async_trait]
impl Throttle for LocalThrottle {
    async fn blocked(&self, keys: &[String]) -> Result<Option<Duration>, ThrottleError> {
        let now = Instant::now();
        let state = self.keys.locked();
        Ok(keys
            .iter()
            .filter_map(|key| state.get(key))
            .filter(|(failures, until)| *failures >= self.limit.max && *until > now)
            .map(|(_, until)| *until - now)
            .max())
    }

    async fn failed(&self, keys: &[String]) -> Result<(), ThrottleError> {
        let now = Instant::now();
        let mut state = self.keys.locked();
        if state.len() > LOCAL_SWEEP_AT {
            state.retain(|_, (_, until)| *until > now);
        }
        for key in keys {
            let entry = state
                .entry(key.clone())
                .or_insert((0, now + self.limit.window));
            if entry.1 <= now {
                *entry = (0, now + self.limit.window);
            }
            entry.0 = entry.0.saturating_add(1);
        }
        Ok(())
    }

    async fn clear(&self, key: &str) -> Result<(), ThrottleError> {
        self.keys.locked().remove(key);
        Ok(())
    }
}

/// The failures of every replica's keys, in Redis: a counter per key that
/// expires with its window. Each command touches one key, so it works on a
/// Redis Cluster too (a key's counter lives in its own slot).
pub struct RedisThrottle {
    pool: RedisPool,
    prefix: String,
    limit: Limit,
}

impl std::fmt::Debug for RedisThrottle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisThrottle")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Counts one failure: the counter is created with the window's expiry (the
/// window starts with the first failure), and counting keeps it.
static COUNT_FAILURE: std::sync::LazyLock<redis::Script> = std::sync::LazyLock::new(|| {
    redis::Script::new(
        r"redis.call('SET', KEYS[1], 0, 'PX', ARGV[1], 'NX')
return redis.call('INCR', KEYS[1])",
    )
});

impl RedisThrottle {
    /// The throttle on the process's Redis (`crate::redis_pool`).
    pub fn new(pool: RedisPool, prefix: &str, limit: Limit) -> Self {
        Self {
            pool,
            prefix: format!("{prefix}:throttle:"),
            limit,
        }
    }

    async fn connection(&self) -> Result<RedisConnection, ThrottleError> {
        self.pool
            .get()
            .await
            .map_err(|e| ThrottleError(crate::cause::Cause::text(e)))
    }
}

fn redis_error(e: redis::RedisError) -> ThrottleError {
    ThrottleError(crate::cause::Cause::new(e))
}

#[async_trait]
impl Throttle for RedisThrottle {
    async fn blocked(&self, keys: &[String]) -> Result<Option<Duration>, ThrottleError> {
        // Each key's (failures, milliseconds left), read at once.
        let reads = keys.iter().map(|key| async move {
            let key = format!("{}{key}", self.prefix);
            let mut conn = self.connection().await?;
            redis::pipe()
                .get(&key)
                .pttl(&key)
                .query_async::<(Option<u32>, i64)>(&mut conn)
                .await
                .map_err(redis_error)
        });
        let answers = futures_util::future::try_join_all(reads).await?;
        Ok(answers
            .into_iter()
            .filter(|(failures, ttl)| failures.is_some_and(|f| f >= self.limit.max) && *ttl > 0)
            .map(|(_, ttl)| Duration::from_millis(ttl.unsigned_abs()))
            .max())
    }

    async fn failed(&self, keys: &[String]) -> Result<(), ThrottleError> {
        let window = u64::try_from(self.limit.window.as_millis()).unwrap_or(u64::MAX);
        let counts = keys.iter().map(|key| async move {
            let mut conn = self.connection().await?;
            COUNT_FAILURE
                .key(format!("{}{key}", self.prefix))
                .arg(window)
                .invoke_async::<i64>(&mut conn)
                .await
                .map_err(redis_error)
        });
        futures_util::future::try_join_all(counts).await.map(drop)
    }

    async fn clear(&self, key: &str) -> Result<(), ThrottleError> {
        let mut conn = self.connection().await?;
        redis::cmd("DEL")
            .arg(format!("{}{key}", self.prefix))
            .query_async::<()>(&mut conn)
            .await
            .map_err(redis_error)
    }
}

/// Networks whose requests' `X-Forwarded-For` is believed (the load
/// balancers in front of the API), as `10.0.0.0/8`, `192.0.2.7` or `::1`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProxyNet {
    addr: IpAddr,
    prefix: u8,
}

impl std::str::FromStr for ProxyNet {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (addr, prefix) = match s.split_once('/') {
            Some((addr, prefix)) => (addr, Some(prefix)),
            None => (s, None),
        };
        let addr: IpAddr = addr
            .parse()
            .map_err(|_| format!("`{s}` is not an IP address or network"))?;
        let bits = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = match prefix {
            None => bits,
            Some(p) => p
                .parse::<u8>()
                .ok()
                .filter(|p| *p <= bits)
                .ok_or_else(|| format!("`{s}`: the prefix length must be 0..={bits}"))?,
        };
        Ok(Self { addr, prefix })
    }
}

impl ProxyNet {
    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

/// Every `X-Forwarded-For` header of a request, joined in order.
pub fn forwarded_for(headers: &axum::http::HeaderMap) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    (!values.is_empty()).then(|| values.join(","))
}

/// What limits per client address count by: the address itself for IPv4
/// (and IPv4-mapped IPv6), its /64 network for IPv6, since one host is
/// routinely given a whole /64 and can rotate through it at will.
pub fn address_group(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(std::net::Ipv6Addr::from(u128::from(v6) & (u128::MAX << 64))),
        },
    }
}

/// The address of the client behind `peer`: `peer` itself, unless it is a
/// trusted proxy; then the nearest address in `X-Forwarded-For` (read from
/// the right, each proxy appending the address it got the request from)
/// that is not a trusted proxy.
pub fn client_address(peer: IpAddr, forwarded_for: Option<&str>, trusted: &[ProxyNet]) -> IpAddr {
    let is_trusted = |ip: IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(peer) {
        return peer;
    }
    let mut client = peer;
    for hop in forwarded_for.unwrap_or("").rsplit(',') {
        let Ok(ip) = hop.trim().parse::<IpAddr>() else {
            // A malformed entry: nothing before it can be believed.
            return client;
        };
        client = ip;
        if !is_trusted(ip) {
            return ip;
        }
    }
    client
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nets(list: &[&str]) -> Vec<ProxyNet> {
        list.iter().map(|n| n.parse().expect("network")).collect()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn networks_parse_and_contain() {
        let net: ProxyNet = "10.1.0.0/16".parse().expect("network");
        assert!(net.contains(ip("10.1.200.3")));
        assert!(!net.contains(ip("10.2.0.1")));
        assert!(
            "192.0.2.7"
                .parse::<ProxyNet>()
                .expect("host")
                .contains(ip("192.0.2.7"))
        );
        assert!("::1".parse::<ProxyNet>().expect("v6").contains(ip("::1")));
        assert!(
            "0.0.0.0/0"
                .parse::<ProxyNet>()
                .expect("all")
                .contains(ip("8.8.8.8"))
        );
        assert!(net.contains(ip("::ffff:10.1.0.9")), "v4-mapped v6");
        for bad in ["10.0.0.0/33", "nope", "10.0.0.1/x", ""] {
            assert!(bad.parse::<ProxyNet>().is_err(), "{bad}");
        }
    }

    #[test]
    fn forwarded_for_is_believed_only_from_trusted_proxies() {
        let trusted = nets(&["10.0.0.0/8"]);
        // From a client directly: its own address, whatever it claims.
        assert_eq!(
            client_address(ip("203.0.113.9"), Some("1.2.3.4"), &trusted),
            ip("203.0.113.9")
        );
        // Through the proxy: the address the proxy saw.
        assert_eq!(
            client_address(ip("10.0.0.2"), Some("1.2.3.4, 203.0.113.9"), &trusted),
            ip("203.0.113.9")
        );
        // Through two proxies: past both.
        assert_eq!(
            client_address(
                ip("10.0.0.2"),
                Some("1.2.3.4, 203.0.113.9, 10.0.0.5"),
                &trusted
            ),
            ip("203.0.113.9")
        );
        // A proxy that sent none, or garbage.
        assert_eq!(
            client_address(ip("10.0.0.2"), None, &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_address(ip("10.0.0.2"), Some("junk"), &trusted),
            ip("10.0.0.2")
        );
        assert_eq!(
            client_address(ip("10.0.0.2"), Some("1.2.3.4"), &[]),
            ip("10.0.0.2")
        );
    }

    #[test]
    fn ipv6_addresses_are_grouped_by_their_64_bit_network() {
        assert_eq!(
            address_group(ip("2001:db8:1:2:aaaa::1")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            address_group(ip("2001:db8:1:2:ffff:ffff:ffff:ffff")),
            ip("2001:db8:1:2::")
        );
        assert_ne!(
            address_group(ip("2001:db8:1:3::1")),
            address_group(ip("2001:db8:1:2::1"))
        );
        assert_eq!(address_group(ip("203.0.113.9")), ip("203.0.113.9"));
        assert_eq!(address_group(ip("::ffff:203.0.113.9")), ip("203.0.113.9"));
    }

    #[tokio::test]
    async fn a_key_is_blocked_after_max_failures_until_its_window_ends() {
        let throttle = LocalThrottle::new(Limit {
            max: 3,
            window: Duration::from_millis(200),
        });
        let keys = ["user:ann".to_owned(), "addr:1".to_owned()];
        for _ in 0..2 {
            throttle.failed(&keys).await.expect("counted");
        }
        assert_eq!(throttle.blocked(&keys).await.expect("read"), None);
        throttle.failed(&keys[..1]).await.expect("counted");
        let wait = throttle
            .blocked(&keys)
            .await
            .expect("read")
            .expect("blocked");
        assert!(wait <= Duration::from_millis(200));
        assert_eq!(throttle.blocked(&keys[1..]).await.expect("read"), None);
        throttle.clear("user:ann").await.expect("cleared");
        assert_eq!(throttle.blocked(&keys).await.expect("read"), None);
    }
}
