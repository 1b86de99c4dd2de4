//! Accounts: register, login, password change, the caller's counters, and
//! which of the caller's room mates are online.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use common::accounts::password::Verification;
use common::adapters::store::StoreError;
use common::domain::events::PasswordChanged;
use common::domain::{
    PASSWORD_MAX, USER_NAME_MAX, UserInfo, normalize_user_name, user_name_problem,
};
use serde_json::Value;

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

/// `{access_token, refresh_token}` for `user`: a new session, and an
/// access token bound to it and to their stored password.
async fn tokens(
    state: &AppState,
    user: &str,
    stored_password: &str,
) -> Result<Json<Value>, ApiError> {
    let tokens = super::sessions::open(state, user, stored_password).await?;
    Ok(Json(Value::Object(tokens)))
}

pub async fn register(
    State(state): State<AppState>,
    ClientAddr(address): ClientAddr,
    body: Body,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (user, password) = credentials(&body)?;
    // Stored in NFKC: a look-alike spelling of a taken name is that name.
    let normalized = normalize_user_name(user);
    if let Some(problem) = user_name_problem(user).or_else(|| user_name_problem(&normalized)) {
        return Err(ApiError::invalid(problem));
    }
    let user = &normalized;
    check_len("user_name", user, USER_NAME_MAX)?;
    // Checked first so that taken names cost no hashing.
    if state.store.user_name(user).await?.is_some() {
        return Err(ApiError::UserExists);
    }
    // Each address registers a few accounts per window: a flood of them
    // would fill the hashing queue that logins wait in.
    let keys = [super::address_key("register", address)];
    super::refuse_if_throttled_by(&state.registrations, &keys).await?;
    super::count_failure_by(&state.registrations, &keys).await;
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
    let user_key = super::user_key("login", user);
    let keys = [user_key.clone(), super::address_key("login", address)];
    super::refuse_if_throttled(&state, &keys).await?;
    let Some((user, stored)) = find_credentials(&state, user).await? else {
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
            if let Err(e) = state.throttle.clear(&user_key).await {
                tracing::warn!(error = %e, "failed logins not cleared");
            }
            if let Some(hash) = rehash {
                // Only replaces the value it verified: a concurrent change wins.
                if state.store.replace_password(&user, &stored, &hash).await? {
                    tracing::info!(
                        user,
                        "stored password (plaintext or weaker hash) rehashed with argon2id"
                    );
                    return tokens(&state, &user, &hash).await;
                }
            }
            tokens(&state, &user, &stored).await
        }
    }
}

pub async fn change_password(
    State(state): State<AppState>,
    Caller(user): Caller,
    ClientAddr(address): ClientAddr,
    body: Body,
) -> Result<Json<Value>, ApiError> {
    let (Some(old), Some(new)) = (body.secret("old_password")?, body.secret("new_password")?)
    else {
        return Err(ApiError::MissingPassword);
    };
    check_len("new_password", new, PASSWORD_MAX)?;
    // A wrong old password counts like a failed login: a stolen access
    // token must not buy unlimited guesses at the password.
    let keys = [
        super::user_key("login", &user),
        super::address_key("login", address),
    ];
    super::refuse_if_throttled(&state, &keys).await?;
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
        super::count_failure(&state, &keys).await;
        tracing::info!(user, %address, "password change refused: wrong old password");
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
    let mut answer = super::sessions::open(&state, &user, &hash).await?;
    answer.insert("message".into(), "Password changed successfully".into());
    Ok(Json(Value::Object(answer)))
}

/// The user named `name` and their stored password: looked up in NFKC (the
/// form names are registered in), or as given, for names an older server
/// stored in another form.
async fn find_credentials(
    state: &AppState,
    name: &str,
) -> Result<Option<(String, String)>, ApiError> {
    let normalized = normalize_user_name(name);
    let found = state.store.credentials(&normalized).await?;
    if found.is_some() || normalized == name {
        return Ok(found);
    }
    Ok(state.store.credentials(name).await?)
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
