//! Presence in Redis: the production adapter, shared by every replica, on
//! one Redis server or a Redis Cluster.

use std::collections::HashMap;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use tracing::Instrument;

use super::{Beat, EXPIRE_BATCH, HEARING_GAP, Presence, PresenceError, millis};
use crate::adapters::redis::{RedisConnection, RedisPool};

/// Presence in Redis: one key per online user with a TTL of the presence
/// timeout (read by `GET /users/online`), and a sorted set of deadlines,
/// which makes lapse detection exact (keyspace notifications are late and
/// lost when nobody listens). Both are changed only by Lua scripts,
/// atomically, on Redis's clock.
///
/// Users are sharded over [`SHARDS`] shards by a hash of their name; each
/// shard's keys share a hash tag, `{<prefix>:presence:<shard>}`, so that a
/// script's keys are in one slot of a Redis Cluster, and the shards spread
/// over the cluster's masters. On one server the same keys work as well.
#[derive(Clone)]
pub struct RedisPresence {
    pool: RedisPool,
    prefix: Arc<str>,
    timeout: Duration,
}

/// Shards of the presence state: enough to spread over a cluster's masters
/// (each shard is a slot), few enough that sweeping them all every 250 ms
/// costs little.
pub const SHARDS: u64 = 16;

/// The key that marks `user` online in the deployment of `prefix` (with a
/// TTL of the presence timeout).
pub fn online_key(prefix: &str, user: &str) -> String {
    format!("{}:online:{user}", shard_tag(prefix, shard_of(user)))
}

/// The hash tag of a shard's keys: one slot of a cluster.
fn shard_tag(prefix: &str, shard: u64) -> String {
    format!("{{{prefix}:presence:{shard}}}")
}

/// The shard of `user`: FNV-1a of the name as stored, the same in every
/// process and version.
fn shard_of(user: &str) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for byte in user.as_bytes() {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash % SHARDS
}

impl std::fmt::Debug for RedisPresence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisPresence")
            .field("prefix", &self.prefix)
            .finish_non_exhaustive()
    }
}

/// Keys are read in slices of this many, so one call never blocks Redis long.
const MGET_CHUNK: usize = 512;

/// Runs first in every script that decides transitions. KEYS: deadlines,
/// `whole` marker, `heard` time. ARGV[1]: online-key prefix, ARGV[2]: the
/// longest gap ms. Sets `now`.
/// - The marker is set by [`RESTORE_SCRIPT`]: without it Redis has lost its
///   data (restarted empty), and deciding on the empty state would announce
///   everyone online again and nobody offline: the caller restores first.
/// - `heard` is when a replica last ran a script: after a longer gap than
///   ARGV[2], every deadline moves later by the gap (see [`HEARING_GAP`]).
const PRELUDE: &str = r"
if redis.call('EXISTS', KEYS[2]) == 0 then
  return redis.error_reply('LOST the presence state was lost')
end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local heard = tonumber(redis.call('GET', KEYS[3]) or now)
redis.call('SET', KEYS[3], now)
local gap = now - heard
if gap > tonumber(ARGV[2]) then
  local entries = redis.call('ZRANGE', KEYS[1], 0, -1, 'WITHSCORES')
  for i = 1, #entries, 2 do
    local deadline = tonumber(entries[i + 1]) + gap
    redis.call('ZADD', KEYS[1], deadline, entries[i])
    if deadline > now then
      redis.call('SET', ARGV[1] .. entries[i], '1', 'PX', deadline - now)
    end
  end
end
";

/// After [`PRELUDE`]. ARGV[3..]: (user, deadline ms) pairs. For each pair
/// returns 0 (kept), 1 (came online), 2 (lapsed, then back) or 3 (stale:
/// its deadline has passed already, nothing changed). One call records a
/// whole batch: one round trip, however many users of the shard. (The
/// online keys are derived here from ARGV[1], the shard's online-key
/// prefix, not passed as KEYS: they share the shard's hash tag, so they are
/// in the script's slot on a cluster too.)
const HEARTBEATS_SCRIPT: &str = r"
local out = {}
for i = 3, #ARGV, 2 do
  local user = ARGV[i]
  local deadline = tonumber(ARGV[i + 1])
  local key = ARGV[1] .. user
  if deadline <= now then
    out[#out + 1] = 3
  else
    local previous = redis.call('ZSCORE', KEYS[1], user)
    if previous and tonumber(previous) > now then
      local kept = math.max(tonumber(previous), deadline)
      redis.call('ZADD', KEYS[1], kept, user)
      redis.call('SET', key, '1', 'PX', kept - now)
      out[#out + 1] = 0
    else
      redis.call('ZADD', KEYS[1], deadline, user)
      redis.call('SET', key, '1', 'PX', deadline - now)
      out[#out + 1] = previous and 2 or 1
    end
  end
end
return out
";

/// After [`PRELUDE`]. ARGV[3]: most users to return. Removes and returns the
/// users whose deadline has passed.
const EXPIRE_SCRIPT: &str = r"
local users = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
for _, user in ipairs(users) do redis.call('ZREM', KEYS[1], user) end
return users
";

/// KEYS as for [`PRELUDE`] (run without it). ARGV: online-key prefix,
/// timeout ms, then the users who were online. Only the first caller after
/// a loss restores (`SET NX` on the marker); returns 1 then, else 0.
const RESTORE_SCRIPT: &str = r"
if not redis.call('SET', KEYS[2], '1', 'NX') then return 0 end
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('SET', KEYS[3], now)
local timeout = tonumber(ARGV[2])
for i = 3, #ARGV do
  local previous = redis.call('ZSCORE', KEYS[1], ARGV[i])
  if not previous or tonumber(previous) < now + timeout then
    redis.call('ZADD', KEYS[1], now + timeout, ARGV[i])
    redis.call('SET', ARGV[1] .. ARGV[i], '1', 'PX', timeout)
  end
end
return 1
";

/// The scripts, each hashed once (Redis runs them by hash).
static HEARTBEATS: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(&format!("{PRELUDE}{HEARTBEATS_SCRIPT}")));
static EXPIRE: LazyLock<redis::Script> =
    LazyLock::new(|| redis::Script::new(&format!("{PRELUDE}{EXPIRE_SCRIPT}")));
static RESTORE: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(RESTORE_SCRIPT));

impl RedisPresence {
    /// Presence on the process's Redis (`crate::adapters::redis`).
    pub fn new(pool: RedisPool, prefix: &str, timeout: Duration) -> Self {
        Self {
            pool,
            prefix: prefix.into(),
            timeout,
        }
    }

    fn tag(&self, shard: u64) -> String {
        shard_tag(&self.prefix, shard)
    }

    /// The key that marks `user` online.
    fn online_key(&self, user: &str) -> String {
        online_key(&self.prefix, user)
    }

    fn timeout_ms(&self) -> i64 {
        millis(self.timeout)
    }

    /// A call of `script` on `shard`, with the keys every script takes
    /// (the shard's deadlines, its `whole` marker (see [`PRELUDE`]), and
    /// when a presence replica last ran a script on it) and its first
    /// argument, the shard's online-key prefix.
    fn invoke(
        &self,
        script: &'static redis::Script,
        shard: u64,
    ) -> redis::ScriptInvocation<'static> {
        let tag = self.tag(shard);
        let mut invocation = script.key(format!("{tag}:deadlines"));
        invocation
            .key(format!("{tag}:whole"))
            .key(format!("{tag}:heard"))
            .arg(format!("{tag}:online:"));
        invocation
    }

    /// A call of `script` (one that starts with [`PRELUDE`]) on `shard`,
    /// with its keys and first two arguments.
    fn deciding(
        &self,
        script: &'static redis::Script,
        shard: u64,
    ) -> redis::ScriptInvocation<'static> {
        let mut invocation = self.invoke(script, shard);
        invocation.arg(millis(HEARING_GAP));
        invocation
    }

    async fn connection(&self) -> Result<RedisConnection, PresenceError> {
        self.pool
            .get()
            .await
            .map_err(|e| PresenceError::Redis(crate::support::cause::Cause::text(e)))
    }

    /// Runs `invocation` (of `script`, over `batch` users), in its span.
    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: redis::ScriptInvocation<'static>,
        script: &'static str,
        batch: usize,
    ) -> Result<T, PresenceError> {
        async {
            let mut conn = self.connection().await?;
            invocation
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error)
        }
        .instrument(script_span(script, batch))
        .await
    }
}

/// The span of one presence script call, when traces are exported.
fn script_span(script: &'static str, batch: usize) -> tracing::Span {
    crate::child_span!(
        "redis",
        otel.name = %format_args!("EVALSHA {script}"),
        otel.kind = "client",
        db.system.name = "redis",
        db.operation.name = "EVALSHA",
        db.stored_procedure.name = script,
        db.operation.batch.size = batch,
    )
}

fn redis_error(e: redis::RedisError) -> PresenceError {
    if e.code() == Some("LOST") {
        PresenceError::Lost
    } else {
        PresenceError::Redis(crate::support::cause::Cause::new(e))
    }
}

#[async_trait]
impl Presence for RedisPresence {
    /// One script call per shard the batch touches, all at once.
    async fn heartbeats(&self, beats: &[(String, i64)]) -> Result<Vec<Beat>, PresenceError> {
        let timeout = self.timeout_ms();
        let mut by_shard: HashMap<u64, Vec<usize>> = HashMap::new();
        for (i, (user, _)) in beats.iter().enumerate() {
            by_shard.entry(shard_of(user)).or_default().push(i);
        }
        let calls = by_shard.into_iter().map(|(shard, indexes)| {
            let mut invocation = self.deciding(&HEARTBEATS, shard);
            for &i in &indexes {
                let (user, at_ms) = &beats[i];
                invocation.arg(user).arg(at_ms.saturating_add(timeout));
            }
            async move {
                let outcomes: Vec<i64> = self.run(invocation, "heartbeats", indexes.len()).await?;
                Ok::<_, PresenceError>(indexes.into_iter().zip(outcomes).collect::<Vec<_>>())
            }
        });
        let mut result = vec![Beat::Kept; beats.len()];
        for outcomes in futures_util::future::try_join_all(calls).await? {
            for (i, outcome) in outcomes {
                result[i] = match outcome {
                    1 => Beat::CameOnline,
                    2 => Beat::Returned,
                    // 0: still online; 3: a stale heartbeat, nothing changed.
                    _ => Beat::Kept,
                };
            }
        }
        Ok(result)
    }

    async fn expire(&self) -> Result<Vec<String>, PresenceError> {
        let calls = (0..SHARDS).map(|shard| {
            let mut invocation = self.deciding(&EXPIRE, shard);
            invocation.arg(EXPIRE_BATCH);
            self.run::<Vec<String>>(invocation, "expire", 1)
        });
        Ok(futures_util::future::try_join_all(calls)
            .await?
            .into_iter()
            .flatten()
            .collect())
    }

    /// Restores every shard that lost its state (each its own users; a
    /// shard without any is marked whole all the same).
    async fn restore(&self, users: &[String]) -> Result<bool, PresenceError> {
        let mut by_shard: HashMap<u64, Vec<&String>> = HashMap::new();
        for user in users {
            by_shard.entry(shard_of(user)).or_default().push(user);
        }
        let calls = (0..SHARDS).map(|shard| {
            let mut invocation = self.invoke(&RESTORE, shard);
            invocation.arg(self.timeout_ms());
            let mine = by_shard.get(&shard).map_or(&[][..], Vec::as_slice);
            for user in mine {
                invocation.arg(*user);
            }
            self.run::<i64>(invocation, "restore", mine.len())
        });
        let restored = futures_util::future::try_join_all(calls).await?;
        Ok(restored.contains(&1))
    }

    async fn online_among(&self, users: Vec<String>) -> Result<Vec<String>, PresenceError> {
        if users.is_empty() {
            // Nobody to look up, but the answer still depends on Redis:
            // while it is down, the caller hears so (503), as with mates.
            self.check_ready().await?;
            return Ok(Vec::new());
        }
        let mut by_shard: HashMap<u64, Vec<String>> = HashMap::new();
        for user in users {
            by_shard.entry(shard_of(&user)).or_default().push(user);
        }
        let reads = by_shard.into_values().map(|users| async move {
            let mut conn = self.connection().await?;
            let mut online = Vec::new();
            // One shard's keys share a slot: one MGET per slice of them.
            for chunk in users.chunks(MGET_CHUNK) {
                let keys: Vec<String> = chunk.iter().map(|u| self.online_key(u)).collect();
                let values: Vec<Option<String>> = redis::cmd("MGET")
                    .arg(&keys)
                    .query_async(&mut conn)
                    .await
                    .map_err(redis_error)?;
                online.extend(
                    chunk
                        .iter()
                        .zip(values)
                        .filter(|(_, v)| v.is_some())
                        .map(|(u, _)| u.clone()),
                );
            }
            Ok::<_, PresenceError>(online)
        });
        Ok(futures_util::future::try_join_all(reads)
            .await?
            .into_iter()
            .flatten()
            .collect())
    }

    async fn check_ready(&self) -> Result<(), PresenceError> {
        let mut conn = self.connection().await?;
        redis::cmd("PING")
            .query_async::<String>(&mut conn)
            .await
            .map(drop)
            .map_err(redis_error)
    }
}
