//! The HTTP server's options: where it listens, which origins and proxies
//! it trusts, and the limits every connection gets.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::edge::proxy::ProxyNet;
use crate::support::problems::Problems;

/// Where the HTTP server listens, and which browser origins it accepts.
#[derive(Debug, Clone, Args)]
pub struct HttpArgs {
    /// Address to listen on.
    #[arg(long = "listen", env = "LISTEN_ADDR", default_value = "0.0.0.0:5000")]
    pub listen: SocketAddr,
    /// Browser origins allowed by CORS and the Socket.IO handshake, comma
    /// separated (e.g. `https://chat.example.com`); `*` allows any origin.
    #[arg(
        long,
        env = "CORS_ALLOWED_ORIGINS",
        default_value = "*",
        value_delimiter = ','
    )]
    pub cors_allowed_origins: Vec<String>,
    /// Load balancers whose `X-Forwarded-For` names the client, as
    /// comma-separated addresses or networks (`10.0.0.0/8`); from any other
    /// peer the header is ignored. Their connections are not capped.
    #[arg(long, env = "TRUSTED_PROXIES", value_delimiter = ',', num_args = 0..)]
    pub trusted_proxies: Vec<ProxyNet>,
    /// A connection must send a request's headers within this many seconds
    /// (an idle keep-alive connection is closed after as long).
    #[arg(long, env = "HEADER_READ_TIMEOUT_SECS", default_value_t = 10, value_parser = crate::support::problems::at_least_one::<u64>())]
    pub header_read_timeout_secs: u64,
    /// A request's body must arrive within this many seconds of its headers.
    #[arg(long, env = "BODY_READ_TIMEOUT_SECS", default_value_t = 30, value_parser = crate::support::problems::at_least_one::<u64>())]
    pub body_read_timeout_secs: u64,
    /// Connections one client address may hold before sending a request's
    /// headers (0: no cap); trusted proxies are exempt.
    #[arg(
        long,
        env = "MAX_PENDING_CONNECTIONS_PER_ADDRESS",
        default_value_t = 256
    )]
    pub max_pending_connections_per_address: usize,
}

impl HttpArgs {
    /// What the server enforces on every connection.
    pub fn limits(&self) -> ConnectionLimits {
        ConnectionLimits {
            header_read_timeout: std::time::Duration::from_secs(self.header_read_timeout_secs),
            body_read_timeout: std::time::Duration::from_secs(self.body_read_timeout_secs),
            max_pending_per_address: self.max_pending_connections_per_address,
            trusted_proxies: self.trusted_proxies.clone(),
        }
    }

    /// `None` when any origin is allowed.
    pub fn origin_allowlist(&self) -> Option<Vec<String>> {
        let origins: Vec<String> = self
            .cors_allowed_origins
            .iter()
            .map(|o| o.trim().trim_end_matches('/').to_owned())
            .filter(|o| !o.is_empty())
            .collect();
        if origins.is_empty() || origins.iter().any(|o| o == "*") {
            None
        } else {
            Some(origins)
        }
    }

    pub fn validate(&self, problems: &mut Problems) {
        for origin in self.origin_allowlist().unwrap_or_default() {
            if !(origin.starts_with("http://") || origin.starts_with("https://")) {
                problems.push(format!(
                    "CORS_ALLOWED_ORIGINS: `{origin}` is not an origin like https://host[:port]"
                ));
            }
        }
    }
}

/// What the server enforces on every connection (docs/protocol.md, "Accounts
/// and abuse"): slow and idle connections are closed, and one address
/// cannot hold many connections that are not authenticated yet: those that
/// have not sent a request, and Engine.IO sockets whose client has not
/// authenticated (see [`crate::edge::pending::PendingSocket`]).
#[derive(Debug, Clone)]
pub struct ConnectionLimits {
    /// Headers of a request within this (also how long a keep-alive
    /// connection may stay idle).
    pub header_read_timeout: Duration,
    /// The body within this of the headers.
    pub body_read_timeout: Duration,
    /// Connections of one address before their first request's headers,
    /// and its Engine.IO sockets before they authenticate; 0: no cap.
    pub max_pending_per_address: usize,
    /// Exempt from the cap (a load balancer holds many connections).
    pub trusted_proxies: Vec<ProxyNet>,
}
