//! Black-box tests of the REST API: the real binary, over HTTP, once on
//! MariaDB + NATS + Redis (`mysql::`) and once on the embedded defaults
//! (`embedded::`).

mod harness;

mod auth;
mod config;
mod events;
mod input;
mod online;
mod schema;
