//! Sessions that outlive an access token: login and register also hand out
//! a refresh token (`<session id>.<secret>`), exchanged at `POST
//! /api/refresh` for a fresh access token and the session's next refresh
//! token (the old one is spent: presented again, it ends the session, as
//! a stolen copy would). `POST /api/logout` ends the session; a password
//! change ends all of the user's.

use axum::Json;
use axum::extract::State;
use common::domain::events::SessionEnded;
use common::domain::now;
use serde_json::{Value, json};
use sha2::Digest;
use subtle::ConstantTimeEq;

use super::message;
use crate::error::ApiError;
use crate::extract::Body;
use crate::state::AppState;

/// A new session of `user`, whose stored password is `stored_password`:
/// `{access_token, refresh_token}`, the access token bound to the session.
pub(crate) async fn open(
    state: &AppState,
    user: &str,
    stored_password: &str,
) -> Result<serde_json::Map<String, Value>, ApiError> {
    let id = common::support::random_hex(16);
    let secret = common::support::random_hex(32);
    state
        .store
        .create_session(&id, user, &hash(&secret), expiry(state))
        .await?;
    let mut tokens = serde_json::Map::new();
    tokens.insert(
        "access_token".into(),
        state.tokens.issue(user, stored_password, Some(&id)).into(),
    );
    tokens.insert("refresh_token".into(), format!("{id}.{secret}").into());
    Ok(tokens)
}

/// `POST /api/refresh {refresh_token}`: a fresh access token and the next
/// refresh token of the session.
pub async fn refresh(State(state): State<AppState>, body: Body) -> Result<Json<Value>, ApiError> {
    let token = body
        .secret("refresh_token")?
        .ok_or(ApiError::MissingRefreshToken)?;
    let (id, secret) = token.split_once('.').ok_or(ApiError::InvalidRefreshToken)?;
    let (user, stored_hash, expires_at) = state
        .store
        .session(id)
        .await?
        .ok_or(ApiError::InvalidRefreshToken)?;
    if expires_at <= now() {
        state.store.delete_session(id).await?;
        return Err(ApiError::InvalidRefreshToken);
    }
    if !bool::from(hash(secret).as_bytes().ct_eq(stored_hash.as_bytes())) {
        // A spent token: its successor is in someone's hands, perhaps a
        // thief's. End the session (and its sockets); its owner logs in again.
        end(&state, id, &user).await?;
        tracing::warn!(user, "spent refresh token presented: session ended");
        return Err(ApiError::InvalidRefreshToken);
    }
    let next = common::support::random_hex(32);
    if !state
        .store
        .rotate_session(id, &stored_hash, &hash(&next), expiry(&state))
        .await?
    {
        return Err(ApiError::InvalidRefreshToken);
    }
    let (user, password) = state
        .store
        .credentials(&user)
        .await?
        .ok_or(ApiError::InvalidRefreshToken)?;
    Ok(Json(json!({
        "access_token": state.tokens.issue(&user, &password, Some(id)),
        "refresh_token": format!("{id}.{next}"),
    })))
}

/// `POST /api/logout {refresh_token}`: ends the session. Always 200: a
/// client logging out with a token already spent or expired is logged out.
pub async fn logout(State(state): State<AppState>, body: Body) -> Result<Json<Value>, ApiError> {
    if let Some((id, secret)) = body
        .secret("refresh_token")?
        .and_then(|token| token.split_once('.'))
        && let Some((user, stored_hash, _)) = state.store.session(id).await?
        && bool::from(hash(secret).as_bytes().ct_eq(stored_hash.as_bytes()))
    {
        end(&state, id, &user).await?;
        tracing::info!(user, "logged out");
    }
    Ok(message("Logged out successfully"))
}

/// Ends a session: its tokens stop working, and every gateway closes the
/// sockets opened with them.
async fn end(state: &AppState, id: &str, user: &str) -> Result<(), ApiError> {
    state.store.delete_session(id).await?;
    state
        .events
        .session_ended(&SessionEnded {
            user_name: user.to_owned(),
            session_id: id.to_owned(),
        })
        .await;
    Ok(())
}

/// When a session created or refreshed now ends.
fn expiry(state: &AppState) -> chrono::NaiveDateTime {
    now() + chrono::TimeDelta::from_std(state.refresh_ttl).unwrap_or(chrono::TimeDelta::days(30))
}

/// What is stored of a secret.
fn hash(secret: &str) -> String {
    hex::encode(sha2::Sha256::digest(secret.as_bytes()))
}
