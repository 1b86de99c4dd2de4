//! What a gateway knows about one socket: who it is (from the token, never
//! from a payload) and how fast it may send.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use common::support::sync::Locked;
use common::telemetry::trace_context::TraceParent;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::admission::UserSlot;
use crate::refusal::Refusal;

/// One authenticated socket.
#[derive(Debug)]
pub struct Session {
    pub user: String,
    /// `user` case-folded once, for the comparisons made on every event.
    folded: String,
    /// What the socket's current token grants; a `refresh` replaces it.
    grant: Mutex<Grant>,
    bucket: Mutex<TokenBucket>,
    /// Permits for messages sent but not yet stored.
    appends: Arc<Semaphore>,
    /// The connect span's trace context, when traces are exported: each
    /// event's span (a trace of its own) links to it.
    pub connection: Option<TraceParent>,
    /// The client asked for presence in batches (`auth.presence =
    /// "batched"`): it gets `presence` events instead of `user_online` and
    /// `user_offline` (docs/protocol.md, "Presence").
    pub batched_presence: bool,
    /// Counts the socket against its user's cap while it lives.
    _slot: Option<UserSlot>,
}

/// What a socket's token grants it, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    /// The stamp of the password the token was issued under: a password
    /// change with another stamp closes the socket.
    pub stamp: String,
    /// The session the token belongs to: its end closes the socket.
    pub session: Option<String>,
    /// Unix seconds when the token expires: the socket is closed then
    /// unless its client sent a fresher token (`refresh`).
    pub expires_at: i64,
}

impl Session {
    pub fn new(user: String, grant: Grant, rate: RateLimit, slot: Option<UserSlot>) -> Self {
        Self {
            _slot: slot,
            grant: Mutex::new(grant),
            folded: user.to_lowercase(),
            user,
            bucket: Mutex::new(TokenBucket::new(rate, Instant::now())),
            appends: Arc::new(Semaphore::new(Self::MAX_PENDING_APPENDS)),
            connection: TraceParent::current(),
            batched_presence: false,
        }
    }

    /// The session of a client that asked for presence in batches.
    pub fn with_batched_presence(mut self, batched: bool) -> Self {
        self.batched_presence = batched;
        self
    }

    /// A socket's messages waiting to be stored at once, at most; the next
    /// waits (and the socket's queue fills behind it).
    pub const MAX_PENDING_APPENDS: usize = 64;

    /// Waits for room among the socket's pending messages.
    pub async fn pending_append(&self) -> Result<OwnedSemaphorePermit, Refusal> {
        self.appends
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| Refusal::Unavailable)
    }

    /// A `user_name` in a payload must name the socket's own user. Names
    /// compare case-insensitively, as the database compares them.
    pub fn check_name(&self, claimed: Option<&str>) -> Result<(), Refusal> {
        match claimed {
            Some(name) if !self.is(name) => Err(Refusal::Forbidden),
            _ => Ok(()),
        }
    }

    /// True when `name` names this socket's user (in any letter case, and
    /// in any Unicode compatibility form: names compare in NFKC).
    pub fn is(&self, name: &str) -> bool {
        name == self.user
            || name.to_lowercase() == self.folded
            || common::domain::user_name_key(name) == common::domain::user_name_key(&self.user)
    }

    /// Spends one event from the socket's allowance (messages, joins and
    /// leaves share it).
    pub fn take_message(&self) -> Result<(), Refusal> {
        let mut bucket = self.bucket.locked();
        if bucket.take(Instant::now()) {
            Ok(())
        } else {
            Err(Refusal::RateLimited)
        }
    }

    /// What the socket's token grants now.
    pub fn grant(&self) -> Grant {
        self.grant.locked().clone()
    }

    /// Replaces what the socket's token grants (a `refresh`).
    pub fn renew(&self, grant: Grant) {
        *self.grant.locked() = grant;
    }

    /// True once the socket's token has expired (`now` in Unix seconds).
    /// Asked on every event: reads the expiry in place, copies nothing.
    pub fn expired(&self, now: i64) -> bool {
        self.grant.locked().expires_at <= now
    }
}

/// Messages per second a socket may send on average, and in a burst.
/// `per_second == 0` means unlimited.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub per_second: u32,
    pub burst: u32,
}

#[derive(Debug)]
struct TokenBucket {
    rate: RateLimit,
    tokens: f64,
    at: Instant,
}

impl TokenBucket {
    fn new(rate: RateLimit, now: Instant) -> Self {
        Self {
            rate,
            tokens: f64::from(rate.burst.max(1)),
            at: now,
        }
    }

    fn take(&mut self, now: Instant) -> bool {
        if self.rate.per_second == 0 {
            return true;
        }
        let refill =
            now.saturating_duration_since(self.at).as_secs_f64() * f64::from(self.rate.per_second);
        self.tokens = (self.tokens + refill).min(f64::from(self.rate.burst.max(1)));
        self.at = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

/// The session of a socket that authenticated.
pub fn session(socket: &socketioxide::extract::SocketRef) -> Option<Arc<Session>> {
    socket.extensions.get::<Arc<Session>>()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn bucket_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(
            RateLimit {
                per_second: 10,
                burst: 3,
            },
            t0,
        );
        assert!(b.take(t0) && b.take(t0) && b.take(t0));
        assert!(!b.take(t0));
        assert!(b.take(t0 + Duration::from_millis(100)));
        assert!(!b.take(t0 + Duration::from_millis(100)));
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(
            RateLimit {
                per_second: 0,
                burst: 0,
            },
            t0,
        );
        assert!((0..10_000).all(|_| b.take(t0)));
    }

    #[test]
    fn claimed_names_must_be_the_socket_user() {
        let grant = Grant {
            stamp: "stamp".into(),
            session: None,
            expires_at: 0,
        };
        let s = Session::new(
            "Ann".into(),
            grant,
            RateLimit {
                per_second: 0,
                burst: 0,
            },
            None,
        );
        assert_eq!(s.check_name(None), Ok(()));
        assert_eq!(s.check_name(Some("ann")), Ok(()));
        assert_eq!(s.check_name(Some("bob")), Err(Refusal::Forbidden));
        // Full-width letters are the same name in NFKC.
        assert_eq!(s.check_name(Some("\u{ff41}nn")), Ok(()));
    }
}
