//! The one harness of the black-box suite: starts the real `komunikator`
//! binary on 127.0.0.1 against MariaDB + NATS + Redis (each test with its own
//! database and subject/key prefix) or against the embedded defaults (each
//! test with its own data directory), and talks HTTP and Socket.IO to it
//! like a client.
//!
//! - [`process`]: the `komunikator` processes (spawn, logs, kill, restart);
//! - [`app`]: a deployment of them, [`TestApp`];
//! - [`db`]: test databases, and SQL on a deployment's store;
//! - [`http`]: requests and their answers, [`Resp`];
//! - [`actions`]: what a client does over REST, as typed calls;
//! - [`fixtures`]: sockets, and rooms with joined sockets;
//! - [`wait`]: [`eventually`], waiting on a condition.

#![allow(dead_code)] // each test uses the helpers it needs

mod actions;
mod app;
mod db;
mod fixtures;
mod http;
mod process;
mod wait;

pub use actions::*;
pub use app::*;
pub use db::*;
pub use fixtures::*;
pub use http::*;
pub use process::*;
pub use wait::*;

/// Instantiates each scenario `async fn name(backend: Backend)` as two tests:
/// `mysql::name` (MariaDB + NATS + Redis) and `embedded::name`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod mysql {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::harness::Backend::MySql).await
                }
            )*
        }
        mod embedded {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::harness::Backend::Embedded).await
                }
            )*
        }
    };
}
