//! The server edge: HTTP serving and its accept loop, the limits on every
//! connection, CORS, the trusted proxies, and the operational endpoints.

pub mod config;
pub mod cors;
pub mod deadline;
pub mod ops;
pub mod pending;
pub mod proxy;
pub mod serve;
