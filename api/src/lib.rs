//! The Komunikator REST API (docs/protocol.md, "REST API"): accounts, rooms,
//! memberships and chat history over the store, with change events published
//! on the bus. Its shape, as every service's: [`Deps`] in, and [`routes`]
//! (the API has no background work, so no `run`).

mod body;
mod error;
mod extract;
mod proxy_errors;
pub mod room_list;
mod router;
mod routes;
mod state;
mod web;

use clap::Args;

pub use body::BODY_LIMIT;
pub use error::ApiError;
pub use router::routes;
pub use state::{AppState, Deps};

/// Options of the API service.
#[derive(Debug, Clone, Args)]
pub struct ApiArgs {
    /// Passwords hashed at once (argon2id uses 19 MiB and ~20 ms of a core
    /// each); 0 means half the cores, at least one, so a login flood leaves
    /// the other requests a core.
    #[arg(long, env = "PASSWORD_HASH_THREADS", default_value_t = 0)]
    pub password_hash_threads: usize,
    /// Password checks allowed to wait for a hashing thread; beyond that a
    /// login or register is answered 429 at once.
    #[arg(long, env = "PASSWORD_HASH_QUEUE", default_value_t = 256)]
    pub password_hash_queue: usize,
    /// Failed logins per user name and per client address (and wrong access
    /// keys per user) allowed within the window; then 429 until it ends.
    #[arg(long, env = "LOGIN_ATTEMPTS_MAX", default_value_t = 10, value_parser = common::support::problems::at_least_one::<u32>())]
    pub login_attempts_max: u32,
    /// How long a session lives without being refreshed (its refresh
    /// token), in seconds.
    #[arg(long, env = "JWT_REFRESH_TOKEN_EXPIRES", default_value_t = 30 * 24 * 3600, value_parser = common::support::problems::at_least_one::<u64>())]
    pub refresh_token_expires: u64,
    /// The window of `LOGIN_ATTEMPTS_MAX`, in seconds.
    #[arg(long, env = "LOGIN_ATTEMPTS_WINDOW_SECS", default_value_t = 300, value_parser = common::support::problems::at_least_one::<u64>())]
    pub login_attempts_window_secs: u64,
    /// Accounts one client address (an IPv6 /64) may register within
    /// `REGISTRATIONS_WINDOW_SECS`; then 429 until the window ends.
    #[arg(long, env = "REGISTRATIONS_PER_ADDRESS", default_value_t = 10, value_parser = common::support::problems::at_least_one::<u32>())]
    pub registrations_per_address: u32,
    /// The window of `REGISTRATIONS_PER_ADDRESS`, in seconds.
    #[arg(long, env = "REGISTRATIONS_WINDOW_SECS", default_value_t = 3600, value_parser = common::support::problems::at_least_one::<u64>())]
    pub registrations_window_secs: u64,
}

impl ApiArgs {
    pub fn attempt_limit(&self) -> common::adapters::throttle::Limit {
        common::adapters::throttle::Limit {
            max: self.login_attempts_max,
            window: std::time::Duration::from_secs(self.login_attempts_window_secs),
        }
    }

    pub fn registration_limit(&self) -> common::adapters::throttle::Limit {
        common::adapters::throttle::Limit {
            max: self.registrations_per_address,
            window: std::time::Duration::from_secs(self.registrations_window_secs),
        }
    }

    pub fn hash_threads(&self) -> usize {
        if self.password_hash_threads > 0 {
            return self.password_hash_threads;
        }
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        (cores / 2).max(1)
    }
}
