//! Black-box tests of the REST API: the real binary, over HTTP, once on
//! MariaDB + NATS + Redis (`mysql::`) and once on the embedded defaults
//! (`embedded::`).

mod harness;
mod nginx;
mod otlp;
mod servers;
mod sessions;
mod sio;

mod auth;
mod batching;
mod chat;
mod cluster;
mod compat;
mod config;
mod dashboards;
mod durability;
mod events;
mod faults;
mod hardening;
mod hashing;
mod input;
mod members;
mod online;
mod openapi;
mod power_loss;
mod presence;
mod proxy;
mod redis_cluster;
mod revocation;
mod room_list;
mod rooms;
mod schema;
mod slow;
mod slowloris;
mod sockets;
mod throttling;
mod traces;
