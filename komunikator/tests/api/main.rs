//! Black-box tests of the REST API: the real binary, over HTTP, once on
//! MariaDB + NATS + Redis (`mysql::`) and once on the embedded defaults
//! (`embedded::`).

mod harness;

mod auth;
mod input;
mod events;
mod online;
mod schema;
mod config;
