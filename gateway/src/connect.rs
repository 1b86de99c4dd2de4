//! Connecting a socket: the [`Connector`] checks its origin and token and
//! names its user, then its event queue is attached.

use std::sync::Arc;

use common::accounts::tokens::{TokenError, Tokens};
use common::adapters::store::Store;
use common::edge::pending::PendingSocket;
use common::telemetry::trace_context::TraceParent;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use socketioxide::socket::Sid;
use tracing::Instrument;

use crate::admission::{Expiries, UserSockets};
use crate::metrics::ConnectRefusalLabels;
use crate::session::{Grant, RateLimit, Session};

/// The connect error a client sees; its text is sent as is, so it says
/// nothing about why a token failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("Unauthorized")]
    Unauthorized,
    #[error("Origin not allowed")]
    Origin,
    /// A dependency is down: clients retry, and must not log their user out.
    #[error("Service unavailable")]
    Unavailable,
    /// The user holds as many sockets on this gateway as one may.
    #[error("Too many connections")]
    TooMany,
}

/// Why a connection (or a `refresh`) was refused: logged and counted
/// (never the token).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    Origin,
    NoToken,
    ExpiredToken,
    InvalidToken,
    /// Issued before the user's password changed.
    RevokedToken,
    UnknownUser,
    Unavailable,
    TooManySockets,
}

impl Refused {
    /// The `reason` label and log field.
    fn reason(self) -> &'static str {
        match self {
            Self::Origin => "origin",
            Self::NoToken => "no_token",
            Self::ExpiredToken => "expired_token",
            Self::InvalidToken => "invalid_token",
            Self::RevokedToken => "revoked_token",
            Self::UnknownUser => "unknown_user",
            Self::Unavailable => "unavailable",
            Self::TooManySockets => "too_many_sockets",
        }
    }

    fn connect_error(self) -> ConnectError {
        match self {
            Self::Origin => ConnectError::Origin,
            Self::NoToken
            | Self::ExpiredToken
            | Self::InvalidToken
            | Self::RevokedToken
            | Self::UnknownUser => ConnectError::Unauthorized,
            Self::Unavailable => ConnectError::Unavailable,
            Self::TooManySockets => ConnectError::TooMany,
        }
    }
}

/// The value of `auth.presence` by which a client asks for presence in
/// batches (docs/protocol.md, "Presence"); any other is ignored.
const BATCHED_PRESENCE: &str = "batched";

/// Who may open a socket, as whom.
pub struct Connector {
    pub tokens: Tokens,
    /// Where users and their sessions are looked up.
    pub store: Store,
    /// `None` accepts sockets from any origin.
    pub allowed_origins: Option<Vec<String>>,
    /// Each socket's allowance of chat messages.
    pub rate: RateLimit,
    /// The open sockets of each user, against their cap.
    pub user_sockets: UserSockets,
    /// When each socket's token expires.
    pub expiries: Arc<Expiries>,
    pub refusals: Family<ConnectRefusalLabels, Counter>,
}

/// Serves the default namespace: every socket is authenticated first, then
/// `attach` listens to its events.
pub fn register(
    io: &SocketIo,
    connector: Arc<Connector>,
    attach: impl Fn(&SocketRef) + Clone + Send + Sync + 'static,
) {
    // Event handlers are registered by the middleware, which completes before
    // socketioxide acknowledges the connection: the connect handler runs only
    // after the ack, and an event sent right after connecting would find none.
    let authenticate = move |socket: SocketRef, TryData(auth): TryData<Value>| {
        let connector = connector.clone();
        let attach = attach.clone();
        async move {
            let span = connect_span(&socket);
            connector
                .authenticate(&socket, auth.ok())
                .instrument(span)
                .await?;
            attach(&socket);
            Ok::<(), ConnectError>(())
        }
    };
    let connected = async |socket: SocketRef| {
        tracing::debug!(sid = %socket.id, "socket connected");
    };
    io.ns("/", connected.with(authenticate));
}

/// The span of a socket's connection, continuing the trace of the
/// handshake request (`traceparent`), when traces are exported.
fn connect_span(socket: &SocketRef) -> tracing::Span {
    let span = common::trace_span!(
        "socket.io connect",
        otel.kind = "server",
        error.type = tracing::field::Empty,
        user.name = tracing::field::Empty,
    );
    TraceParent::continue_http(&span, &socket.req_parts().headers);
    span
}

impl Connector {
    /// Closes the socket `sid` (by `revocation`) once `at` (Unix s) passes,
    /// unless its token is renewed.
    pub fn watch_expiry(&self, at: i64, sid: Sid) {
        self.expiries.watch(at, sid);
    }

    /// Connect middleware: the origin must be allowed and the token valid,
    /// taken from `auth: {token}`, the `Authorization` header or `?token=`.
    /// A refusal is logged and counted by reason, so that an operator sees
    /// clients failing (an old client without a token, a wrong secret).
    async fn authenticate(
        &self,
        socket: &SocketRef,
        auth: Option<Value>,
    ) -> Result<(), ConnectError> {
        let batched_presence = auth
            .as_ref()
            .is_some_and(|a| a["presence"].as_str() == Some(BATCHED_PRESENCE));
        let refused = match self.identify(socket, auth).await {
            Ok((user, grant)) => match self.user_sockets.enter(&user) {
                Some(slot) => {
                    tracing::Span::current().record("user.name", &user);
                    self.expiries.watch(grant.expires_at, socket.id);
                    let session = Session::new(user, grant, self.rate, Some(slot))
                        .with_batched_presence(batched_presence);
                    socket.extensions.insert(Arc::new(session));
                    // No longer one of its address's unauthenticated sockets.
                    if let Some(pending) = socket.req_parts().extensions.get::<PendingSocket>() {
                        pending.authenticated();
                    }
                    return Ok(());
                }
                None => Refused::TooManySockets,
            },
            Err(refused) => refused,
        };
        let span = tracing::Span::current();
        span.record("error.type", refused.reason());
        let parts = socket.req_parts();
        let header = |name: &str| {
            parts
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned()
        };
        tracing::info!(
            reason = refused.reason(),
            origin = header("origin"),
            user_agent = header("user-agent"),
            forwarded_for = header("x-forwarded-for"),
            "socket connection refused"
        );
        self.refusals
            .get_or_create(&ConnectRefusalLabels {
                reason: refused.reason(),
            })
            .inc();
        Err(refused.connect_error())
    }

    /// The socket's user, spelled as stored, with what their token grants;
    /// or why it may not connect.
    async fn identify(
        &self,
        socket: &SocketRef,
        auth: Option<Value>,
    ) -> Result<(String, Grant), Refused> {
        let parts = socket.req_parts();
        if let Some(allowed) = &self.allowed_origins {
            let origin = parts.headers.get("origin").and_then(|o| o.to_str().ok());
            if origin.is_some_and(|o| !allowed.iter().any(|a| a == o.trim_end_matches('/'))) {
                return Err(Refused::Origin);
            }
        }
        let from_auth = auth
            .as_ref()
            .and_then(|a| a["token"].as_str())
            .map(str::to_owned);
        let from_header = parts
            .headers
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::to_owned);
        // Percent-decoded, as any query parameter (a token with `+` or `%`
        // in it, from a client that encodes it, is the same token).
        let from_query = parts.uri.query().and_then(|q| {
            serde_urlencoded::from_str::<Vec<(String, String)>>(q)
                .ok()?
                .into_iter()
                .find_map(|(name, value)| (name == "token").then_some(value))
        });
        let token = from_auth
            .or(from_header)
            .or(from_query)
            .ok_or(Refused::NoToken)?;
        self.grant(token.trim()).await
    }

    /// What `token` grants: its user, spelled as stored, the stamp of
    /// their current password, its session and expiry; or why it grants
    /// nothing (expired, revoked, its session ended, its user gone).
    pub async fn grant(&self, token: &str) -> Result<(String, Grant), Refused> {
        let bearer = self.tokens.verify(token).map_err(|e| match e {
            TokenError::Expired => Refused::ExpiredToken,
            TokenError::Revoked => Refused::RevokedToken,
            TokenError::Missing | TokenError::Invalid => Refused::InvalidToken,
        })?;
        match self
            .store
            .account(&bearer.user, bearer.session.as_deref())
            .await
        {
            Ok(Some(account)) => {
                let stamp = self
                    .tokens
                    .check_current(&bearer, &account)
                    .map_err(|_| Refused::RevokedToken)?;
                let grant = Grant {
                    stamp,
                    session: bearer.session,
                    expires_at: bearer.expires_at,
                };
                Ok((account.name, grant))
            }
            Ok(None) => Err(Refused::UnknownUser),
            Err(e) => {
                tracing::error!(error = %e, "cannot check the user of a socket");
                Err(Refused::Unavailable)
            }
        }
    }
}
