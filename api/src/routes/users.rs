//! Accounts: register, login, password change, the caller's counters, and
//! which of the caller's room mates are online.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use common::domain::{PASSWORD_MAX, USER_NAME_MAX, UserInfo};
use common::events::PasswordChanged;
use common::password::Verification;
use common::store::StoreError;
use serde_json::{Value, json};

use crate::error::ApiError;
use crate::extract::{Body, Caller, ClientAddr, check_len};
use crate::state::AppState;

/// `user_name` and `password` of a register or login request.
fn credentials(body: &Body) -> Result<(&str, &str), ApiError> {
    let (Some(user), Some(password)) = (body.text("user_name")?, body.secret("password")?) else {
        return Err(ApiError::MissingLoginOrPassword);
    };
    check_len("user_name", user, USER_NAME_MAX)?;
    check_len("password", password, PASSWORD_MAX)?;
    Ok((user, password))
}

/// `{access_token, refresh_token}` for `user`: an access token bound to
/// their stored password, and a new session's refresh token.
async fn tokens(
    state: &AppState,
    user: &str,
    stored_password: &str,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({
        "access_token": state.tokens.issue(user, stored_password),
        "refresh_token": super::sessions::open(state, user).await?,
    })))
}

pub async fn register(
    State(state): State<AppState>,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (user, password) = credentials(&body)?;
    if user.trim() != user || user.chars().any(char::is_control) {
        return Err(ApiError::invalid(
            "user_name must not contain control characters or start or end with whitespace",
        ));
    }
    // Checked first so that taken names cost no hashing.
    if state.store.user_name(user).await?.is_some() {
        return Err(ApiError::UserExists);
    }
    let hash = state.passwords.hash(password.to_owned()).await?;
    match state.store.create_user(user, &hash).await {
        Err(StoreError::Conflict) => Err(ApiError::UserExists),
        Err(e) => Err(e.into()),
        Ok(()) => {
            tracing::info!(user, "user registered");
            Ok((StatusCode::CREATED, tokens(&state, user, &hash).await?))
        }
    }
}

pub async fn login(
    State(state): State<AppState>,
    ClientAddr(address): ClientAddr,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (user, password) = credentials(&body)?;
    // Throttled per user name and per client address, before any hashing.
    let user_key = format!("login:user:{}", user.to_lowercase());
    let keys = [user_key.clone(), format!("login:addr:{address}")];
    super::refuse_if_throttled(&state, &keys).await?;
    let Some((user, stored)) = state.store.credentials(user).await? else {
        state
            .passwords
            .verify_unknown_user(password.to_owned())
            .await?;
        super::count_failure(&state, &keys).await;
        return Err(ApiError::InvalidCredentials);
    };
    match state
        .passwords
        .verify(password.to_owned(), stored.clone())
        .await?
    {
        Verification::Invalid => {
            super::count_failure(&state, &keys).await;
            tracing::info!(user, %address, "login refused: wrong password");
            Err(ApiError::InvalidCredentials)
        }
        Verification::Valid { rehash } => {
            if let Some(hash) = rehash {
                // Only replaces the plaintext it verified: a concurrent change wins.
                if state.store.replace_password(&user, &stored, &hash).await? {
                    tracing::info!(user, "legacy plaintext password rehashed with argon2id");
                    return tokens(&state, &user, &hash).await;
                }
            }
            if let Err(e) = state.throttle.clear(&user_key).await {
                tracing::warn!(error = %e, "failed logins not cleared");
            }
            tokens(&state, &user, &stored).await
        }
    }
}

pub async fn change_password(
    State(state): State<AppState>,
    Caller(user): Caller,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (Some(old), Some(new)) = (body.secret("old_password")?, body.secret("new_password")?)
    else {
        return Err(ApiError::MissingPassword);
    };
    check_len("new_password", new, PASSWORD_MAX)?;
    let (_, stored) = state
        .store
        .credentials(&user)
        .await?
        .ok_or(ApiError::UnknownUser)?;
    if state
        .passwords
        .verify(old.to_owned(), stored.clone())
        .await?
        == Verification::Invalid
    {
        return Err(ApiError::InvalidOldPassword);
    }
    let hash = state.passwords.hash(new.to_owned()).await?;
    if !state.store.replace_password(&user, &stored, &hash).await? {
        // Changed by a concurrent request since we verified it.
        return Err(ApiError::InvalidOldPassword);
    }
    tracing::info!(user, "password changed");
    // Every session ends with the old password; this one starts afresh.
    state.store.delete_sessions_of(&user).await?;
    // Tokens issued before are revoked (their stamp no longer matches);
    // sockets that authenticated with one are closed by their gateway.
    state
        .events
        .password_changed(&PasswordChanged {
            user_name: user.clone(),
            stamp: state.tokens.stamp(&hash),
        })
        .await;
    Ok(Json(json!({
        "message": "Password changed successfully",
        "access_token": state.tokens.issue(&user, &hash),
        "refresh_token": super::sessions::open(&state, &user).await?,
    })))
}

pub async fn info(
    State(state): State<AppState>,
    Caller(user): Caller,
) -> Result<Json<UserInfo>, ApiError> {
    // The chat log first: the store then holds every message up to `after`,
    // and those past it are counted from the log (read your writes).
    let unstored = state.chat_log.unstored(None).await?;
    let mut info = state.store.user_info(&user, unstored.after).await?;
    let unstored_mine = unstored
        .messages
        .iter()
        .filter(|m| m.user_name.eq_ignore_ascii_case(&user));
    info.message_count += unstored_mine.count() as i64;
    Ok(Json(info))
}

pub async fn online(
    State(state): State<AppState>,
    Caller(user): Caller,
) -> Result<Json<Vec<String>>, ApiError> {
    let mates = state.store.room_mates(&user).await?;
    let mut online = state.presence.online_among(mates).await?;
    online.sort_unstable();
    Ok(Json(online))
}
