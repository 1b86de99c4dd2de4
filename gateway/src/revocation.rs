//! Closing sockets whose grant ended: their token expired without being
//! renewed, their user's password changed, or their session ended.

use std::sync::Arc;

use common::domain::events::{PasswordChanged, SessionEnded};
use socketioxide::SocketIo;
use socketioxide::extract::SocketRef;

use crate::admission::Expiries;
use crate::refusal::Refusal;
use crate::room::disconnect_when_possible;
use crate::session::{Session, session};

/// How often sockets whose token expired are looked for.
pub const EXPIRY_SWEEP: std::time::Duration = std::time::Duration::from_secs(1);

/// The gateway's sockets, as their grants end.
pub struct Revocations {
    io: SocketIo,
    /// When each socket's token expires.
    expiries: Arc<Expiries>,
}

impl Revocations {
    pub fn new(io: SocketIo, expiries: Arc<Expiries>) -> Self {
        Self { io, expiries }
    }

    /// Closes the sockets of a user whose password changed that
    /// authenticated with a token issued under the old one (its reconnect
    /// is then refused: the token is revoked).
    pub fn password_changed(&self, payload: &[u8]) {
        let Some(change) = decode::<PasswordChanged>(payload, "password change") else {
            return;
        };
        let closed = self.close_where("password changed", |session| {
            session.is(&change.user_name) && session.grant().stamp != change.stamp
        });
        if closed > 0 {
            tracing::info!(
                user = change.user_name,
                closed,
                "sockets of a revoked token closed"
            );
        }
    }

    /// Closes the sockets opened with the tokens of a session that ended.
    pub fn session_ended(&self, payload: &[u8]) {
        let Some(ended) = decode::<SessionEnded>(payload, "session end") else {
            return;
        };
        let closed = self.close_where("session ended", |session| {
            session.is(&ended.user_name)
                && session.grant().session.as_deref() == Some(ended.session_id.as_str())
        });
        if closed > 0 {
            tracing::info!(
                user = ended.user_name,
                closed,
                "sockets of an ended session closed"
            );
        }
    }

    /// Closes the sockets whose token expired without being renewed.
    pub fn close_expired(&self) {
        let now = chrono::Utc::now().timestamp();
        for sid in self.expiries.due(now) {
            if let Some(socket) = self.io.get_socket(sid)
                && session(&socket).is_some_and(|s| s.expired(now))
            {
                tracing::info!(sid = %sid, "socket closed: its token expired");
                close_for(&socket, Refusal::SessionExpired);
            }
        }
    }

    /// Closes every socket whose session `matches`, telling each why;
    /// returns how many.
    fn close_where(&self, why: &str, matches: impl Fn(&Session) -> bool) -> usize {
        let mut closed = 0;
        for socket in self.io.sockets() {
            if session(&socket).is_some_and(|s| matches(&s)) {
                closed += 1;
                tracing::debug!(sid = %socket.id, why, "closing socket");
                close_for(&socket, Refusal::SessionExpired);
            }
        }
        closed
    }
}

/// A bus message's JSON payload; a malformed one is logged and skipped.
fn decode<T: serde::de::DeserializeOwned>(payload: &[u8], what: &str) -> Option<T> {
    serde_json::from_slice(payload)
        .map_err(|e| tracing::warn!(error = %e, what, "malformed bus message ignored"))
        .ok()
}

/// Tells a socket why it is being closed (an `error` event), then closes it
/// with a disconnect packet, not a dropped connection: the client learns it
/// was the server's doing and does not retry with the same token. It
/// receives nothing more meanwhile, even while its send buffer is full.
pub fn close_for(socket: &SocketRef, why: Refusal) {
    if let Err(e) = socket.emit("error", &why.body()) {
        tracing::debug!(error = %e, "error event not sent before closing");
    }
    close(socket);
}

/// Closes a socket that was already told why: see [`close_for`].
pub fn close(socket: &SocketRef) {
    socket.leave_all();
    if let Err(socketioxide::SocketError::InternalChannelFull) = socket.clone().disconnect() {
        tokio::spawn(disconnect_when_possible(socket.clone()));
    }
}
