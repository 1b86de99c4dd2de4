//! The adapters, each behind its interface, each with an in-process
//! implementation (the embedded defaults) and a networked one: the store
//! (MySQL/SQLite), the bus and the chat log (NATS/in-process), presence,
//! the shared counter and the login throttle (Redis/in-process).

pub mod bus;
pub mod chat_log;
pub mod counter;
pub mod nats;
pub mod presence;
pub mod redis;
pub mod store;
pub mod throttle;
