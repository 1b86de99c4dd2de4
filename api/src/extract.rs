//! Request extractors: the caller's identity from the bearer token, the JSON
//! body and the query string, with typed field access. Malformed input
//! becomes an [`ApiError`] here, so handlers only see well-typed values.

use axum::extract::{FromRequest, FromRequestParts, OptionalFromRequestParts, RawQuery, Request};
use axum::http::StatusCode;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use bytes::Bytes;
use common::accounts::tokens::TokenError;
use common::domain::{GivenId, RoomId, char_len, is_blank};
use serde_json::{Map, Value};

use crate::error::ApiError;
use crate::state::AppState;

/// The authenticated caller: the user the bearer token names, spelled as stored.
#[derive(Debug, Clone)]
pub struct Caller(pub String);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or(TokenError::Missing)?;
        let header = header.to_str().map_err(|_| TokenError::Invalid)?;
        let bearer = state.tokens.verify_bearer(header)?;
        // A valid signature is not enough: the user must still exist, and
        // the token must have been issued under their current password, in
        // a session that has not ended.
        let account = state
            .store
            .account(&bearer.user, bearer.session.as_deref())
            .await?
            .ok_or(ApiError::UnknownUser)?;
        state.tokens.check_current(&bearer, &account)?;
        Ok(Caller(account.name))
    }
}

/// `Option<Caller>`: anonymous without an `Authorization` header; a header
/// that is present must hold a valid token (401 otherwise).
impl OptionalFromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Option<Self>, ApiError> {
        if parts.headers.contains_key(AUTHORIZATION) {
            <Caller as FromRequestParts<AppState>>::from_request_parts(parts, state)
                .await
                .map(Some)
        } else {
            Ok(None)
        }
    }
}

/// A JSON object body. No body at all counts as `{}`, so handlers answer with
/// the contract's "Missing ..." errors.
#[derive(Debug, Default)]
pub struct Body(Map<String, Value>);

impl<S: Send + Sync> FromRequest<S> for Body {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = Bytes::from_request(req, state).await.map_err(|rejection| {
            if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                ApiError::TooLarge
            } else {
                ApiError::invalid("Could not read the request body")
            }
        })?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self::default());
        }
        match serde_json::from_slice(&bytes) {
            Ok(Value::Object(map)) => Ok(Self(map)),
            Ok(_) => Err(ApiError::invalid("Request body must be a JSON object")),
            Err(_) => Err(ApiError::invalid("Request body is not valid JSON")),
        }
    }
}

impl Body {
    /// A string field; `None` when absent, null or blank.
    pub fn text(&self, field: &str) -> Result<Option<&str>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if is_blank(s) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::invalid(format!("{field} must be a string"))),
        }
    }

    /// A password field: like [`Body::text`], but whitespace is a password too.
    pub fn secret(&self, field: &str) -> Result<Option<&str>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.is_empty() => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(_) => Err(ApiError::invalid(format!("{field} must be a string"))),
        }
    }

    /// An id given as a JSON integer or a numeric string; `None` when absent,
    /// null or empty.
    pub fn id(&self, field: &str) -> Result<Option<RoomId>, ApiError> {
        given_id(field, GivenId::of_json(self.0.get(field)))
    }

    /// A boolean field; also accepts the numbers 0 and 1 (the old server's
    /// TINYINT column). A string, even "false", is refused: taken loosely,
    /// "false" would have made a room private.
    pub fn flag(&self, field: &str) -> Result<Option<bool>, ApiError> {
        match self.0.get(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(Value::Number(n)) if n.as_u64() == Some(0) => Ok(Some(false)),
            Some(Value::Number(n)) if n.as_u64() == Some(1) => Ok(Some(true)),
            Some(_) => Err(ApiError::invalid(format!("{field} must be true or false"))),
        }
    }
}

/// The query string's parameters.
#[derive(Debug, Default)]
pub struct Params(Vec<(String, String)>);

impl<S: Send + Sync> FromRequestParts<S> for Params {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let RawQuery(query) = RawQuery::from_request_parts(parts, state)
            .await
            .map_err(|_| ApiError::invalid("Invalid query string"))?;
        let pairs = serde_urlencoded::from_str(query.as_deref().unwrap_or(""))
            .map_err(|_| ApiError::invalid("Invalid query string"))?;
        Ok(Self(pairs))
    }
}

impl Params {
    fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
            .filter(|v| !v.is_empty())
    }

    /// A positive integer id; `None` when absent or empty.
    pub fn id(&self, name: &str) -> Result<Option<i64>, ApiError> {
        given_id(name, GivenId::of_text(self.get(name).unwrap_or_default()))
    }

    /// An integer within `range`; `None` when absent or empty.
    pub fn int_in(
        &self,
        name: &str,
        range: std::ops::RangeInclusive<u32>,
    ) -> Result<Option<u32>, ApiError> {
        let Some(raw) = self.get(name) else {
            return Ok(None);
        };
        // Digits only: no sign, no spaces.
        let digits = raw.bytes().all(|b| b.is_ascii_digit());
        raw.parse::<u32>()
            .ok()
            .filter(|v| digits && range.contains(v))
            .map(Some)
            .ok_or_else(|| {
                ApiError::invalid(format!(
                    "{name} must be an integer from {} to {}",
                    range.start(),
                    range.end()
                ))
            })
    }
}

/// An id field read by the one rule ([`GivenId`]): absent is `None`,
/// anything but a valid id is 400.
fn given_id(field: &str, id: GivenId) -> Result<Option<i64>, ApiError> {
    match id {
        GivenId::Absent => Ok(None),
        GivenId::Valid(id) => Ok(Some(id)),
        GivenId::OutOfRange | GivenId::Malformed => Err(ApiError::invalid(format!(
            "{field} must be a positive integer below 2^53"
        ))),
    }
}

/// Rejects a value longer than `max` characters.
pub fn check_len(field: &str, value: &str, max: usize) -> Result<(), ApiError> {
    if char_len(value) > max {
        Err(ApiError::invalid(format!(
            "{field} must be at most {max} characters"
        )))
    } else {
        Ok(())
    }
}

/// The client's address: the peer's, or, from a trusted proxy, the one it
/// names in `X-Forwarded-For` (see [`common::edge::proxy::client_address`]).
#[derive(Debug, Clone, Copy)]
pub struct ClientAddr(pub std::net::IpAddr);

impl FromRequestParts<AppState> for ClientAddr {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts
            .extensions
            .get::<axum::extract::ConnectInfo<std::net::SocketAddr>>()
            .map_or(std::net::IpAddr::from([0, 0, 0, 0]), |c| c.0.ip());
        let forwarded = common::edge::proxy::forwarded_for(&parts.headers);
        Ok(Self(common::edge::proxy::client_address(
            peer,
            forwarded.as_deref(),
            &state.trusted_proxies,
        )))
    }
}
