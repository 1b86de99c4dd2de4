//! Presence in Redis: the production adapter, shared by every replica.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use async_trait::async_trait;
use tracing::Instrument;

use super::{Beat, EXPIRE_BATCH, HEARING_GAP, Presence, PresenceError, millis};

/// Presence in Redis: one key `<prefix>:online:<user>` per online user with
/// a TTL of the presence timeout (read by `GET /users/online`), and a sorted
/// set `<prefix>:presence` of deadlines, which makes lapse detection exact
/// (keyspace notifications are late and lost when nobody listens). Both are
/// changed only by Lua scripts, atomically, on Redis's clock.
#[derive(Clone)]
pub struct RedisPresence {
    pool: deadpool_redis::Pool,
    prefix: Arc<str>,
    timeout: Duration,
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
/// whole batch: one round trip, however many users. (The online keys are
/// derived here, not passed as KEYS: standalone Redis.)
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
    /// Presence on the process's Redis pool (`crate::redis_pool`).
    pub fn new(pool: deadpool_redis::Pool, prefix: &str, timeout: Duration) -> Self {
        Self {
            pool,
            prefix: prefix.into(),
            timeout,
        }
    }

    /// The key that marks `user` online.
    pub fn online_key(&self, user: &str) -> String {
        format!("{}:online:{user}", self.prefix)
    }

    fn deadlines_key(&self) -> String {
        format!("{}:presence", self.prefix)
    }

    /// Present while Redis holds the whole presence state (see [`PRELUDE`]).
    fn whole_key(&self) -> String {
        format!("{}:presence:whole", self.prefix)
    }

    fn timeout_ms(&self) -> i64 {
        millis(self.timeout)
    }

    /// When a presence replica last ran a script (see [`PRELUDE`]).
    fn heard_key(&self) -> String {
        format!("{}:presence:heard", self.prefix)
    }

    /// A call of `script` with the keys every script takes (deadlines,
    /// `whole` marker, `heard` time) and its first argument, the online-key
    /// prefix.
    fn invoke(&self, script: &'static redis::Script) -> redis::ScriptInvocation<'static> {
        let mut invocation = script.key(self.deadlines_key());
        invocation
            .key(self.whole_key())
            .key(self.heard_key())
            .arg(self.online_key(""));
        invocation
    }

    /// A call of `script` (one that starts with [`PRELUDE`]), with its keys
    /// and first two arguments.
    fn deciding(&self, script: &'static redis::Script) -> redis::ScriptInvocation<'static> {
        let mut invocation = self.invoke(script);
        invocation.arg(millis(HEARING_GAP));
        invocation
    }

    async fn connection(&self) -> Result<deadpool_redis::Connection, PresenceError> {
        self.pool
            .get()
            .await
            .map_err(|e| PresenceError::Redis(e.to_string()))
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
        PresenceError::Redis(e.to_string())
    }
}

#[async_trait]
impl Presence for RedisPresence {
    async fn heartbeats(&self, beats: &[(String, i64)]) -> Result<Vec<Beat>, PresenceError> {
        if beats.is_empty() {
            return Ok(vec![]);
        }
        let timeout = self.timeout_ms();
        let mut invocation = self.deciding(&HEARTBEATS);
        for (user, at_ms) in beats {
            invocation.arg(user).arg(at_ms.saturating_add(timeout));
        }
        let outcomes: Vec<i64> = async {
            let mut conn = self.connection().await?;
            invocation
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error)
        }
        .instrument(script_span("heartbeats", beats.len()))
        .await?;
        Ok(outcomes
            .into_iter()
            .map(|outcome| match outcome {
                1 => Beat::CameOnline,
                2 => Beat::Returned,
                // 0: still online; 3: a stale heartbeat, nothing changed.
                _ => Beat::Kept,
            })
            .collect())
    }

    async fn expire(&self) -> Result<Vec<String>, PresenceError> {
        async {
            let mut conn = self.connection().await?;
            self.deciding(&EXPIRE)
                .arg(EXPIRE_BATCH)
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error)
        }
        .instrument(script_span("expire", 1))
        .await
    }

    async fn restore(&self, users: &[String]) -> Result<bool, PresenceError> {
        let mut invocation = self.invoke(&RESTORE);
        invocation.arg(self.timeout_ms());
        for user in users {
            invocation.arg(user);
        }
        let restored: i64 = async {
            let mut conn = self.connection().await?;
            invocation
                .invoke_async(&mut conn)
                .await
                .map_err(redis_error)
        }
        .instrument(script_span("restore", users.len()))
        .await?;
        Ok(restored == 1)
    }

    async fn online_among(&self, users: Vec<String>) -> Result<Vec<String>, PresenceError> {
        let mut conn = self.connection().await?;
        let mut online = Vec::new();
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
        Ok(online)
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
