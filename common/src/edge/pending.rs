//! The cap on unauthenticated connections per client address: those that
//! have not sent a request yet, and Engine.IO sockets whose client has not
//! authenticated.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use hyper::body::Incoming;

use crate::edge::config::ConnectionLimits;
use crate::edge::proxy::{address_group, client_address, forwarded_for};
use crate::support::sync::Locked;
use crate::telemetry::metrics::Metrics;

/// Counts the Engine.IO sockets of each client address until they
/// authenticate, against the same cap as connections without a request:
/// an upgrade to WebSocket, or a long-polling session, does not make a
/// client that has shown no token cheap to hold.
#[derive(Clone)]
pub(crate) struct SocketGate {
    pub(crate) pending: PendingConnections,
    pub(crate) limits: ConnectionLimits,
    pub(crate) metrics: Metrics,
}

/// What the request that opened an Engine.IO socket carries (and the socket
/// keeps with its request): a pending slot of its client's address, given
/// back once the socket authenticates ([`PendingSocket::authenticated`]) or
/// when the socket is gone.
#[derive(Clone)]
pub struct PendingSocket(Arc<std::sync::Mutex<Option<PendingSlot>>>);

impl PendingSocket {
    /// The socket authenticated: it no longer counts against its address.
    pub fn authenticated(&self) {
        self.0.locked().take();
    }
}

impl SocketGate {
    /// Lets `request` through, giving an Engine.IO handshake (a request on
    /// `/socket.io/` without a session id) a pending slot of its client's
    /// address: the connection's own (`first`, when it is the connection's
    /// first request from that address), or a new one. False when the
    /// address has no slot left: the request is answered 429.
    pub(crate) fn admit(
        &self,
        request: &mut hyper::Request<Incoming>,
        peer: std::net::SocketAddr,
        first: Option<PendingSlot>,
    ) -> bool {
        let max = self.limits.max_pending_per_address;
        if max == 0 || !is_engine_io_handshake(request) {
            return true;
        }
        let forwarded = forwarded_for(request.headers());
        let client = client_address(
            peer.ip(),
            forwarded.as_deref(),
            &self.limits.trusted_proxies,
        );
        let address = address_group(client);
        let slot = match first {
            Some(slot) if slot.address == address => Some(slot),
            _ => self.pending.enter(address, max),
        };
        let Some(slot) = slot else {
            self.metrics.count_refused_connection();
            tracing::debug!(%client, "socket refused: too many unauthenticated from its address");
            return false;
        };
        request
            .extensions_mut()
            .insert(PendingSocket(Arc::new(std::sync::Mutex::new(Some(slot)))));
        true
    }
}

/// True for the request that opens an Engine.IO socket: on its path, with
/// no session id yet (later polls, posts and the upgrade carry `sid=`).
fn is_engine_io_handshake<B>(request: &hyper::Request<B>) -> bool {
    let uri = request.uri();
    uri.path().starts_with("/socket.io")
        && !uri
            .query()
            .unwrap_or("")
            .split('&')
            .any(|pair| pair.starts_with("sid="))
}

/// Connections per address that have not sent a request's headers yet.
#[derive(Clone, Default)]
pub(crate) struct PendingConnections(Arc<std::sync::Mutex<HashMap<IpAddr, usize>>>);

/// One pending connection, counted until dropped.
pub(crate) struct PendingSlot {
    pending: PendingConnections,
    address: IpAddr,
}

impl PendingConnections {
    /// A slot for one more connection of `address`; `None` at `max`.
    pub(crate) fn enter(&self, address: IpAddr, max: usize) -> Option<PendingSlot> {
        let mut counts = self.0.locked();
        let count = counts.entry(address).or_insert(0);
        if *count >= max {
            return None;
        }
        *count += 1;
        Some(PendingSlot {
            pending: self.clone(),
            address,
        })
    }
}

impl Drop for PendingSlot {
    fn drop(&mut self) {
        let mut counts = self.pending.0.locked();
        if let Some(count) = counts.get_mut(&self.address) {
            *count -= 1;
            if *count == 0 {
                counts.remove(&self.address);
            }
        }
    }
}
