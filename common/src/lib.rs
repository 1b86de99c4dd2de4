//! Code shared by every Komunikator service: configuration, access tokens,
//! password hashing, domain types, the server events, and the interfaces
//! with their two adapters each: the store (MySQL/SQLite), the bus and the
//! chat log (NATS/in-process), presence (Redis/in-process); and telemetry.

pub mod auth;
pub mod bus;
pub mod cause;
pub mod chat_log;
pub mod config;
pub mod domain;
pub mod events;
pub mod http;
pub mod otel;
pub mod password;
pub mod presence;
pub mod redis_pool;
pub mod shared_counter;
pub mod store;
pub mod subjects;
pub mod sync;
pub mod telemetry;
pub mod throttle;

/// `bytes` random bytes from the OS, hex encoded.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The OS random source does not fail on supported platforms; if it ever
    // did, a zeroed buffer must not pass silently as a secret.
    if let Err(e) = getrandom::fill(&mut buf) {
        panic!("the operating system's random source failed: {e}");
    }
    hex::encode(buf)
}
