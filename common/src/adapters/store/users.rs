//! Users: accounts, credentials and the counters of `GET /user_info`.

use super::{Result, Store, on_unique_violation};
use crate::accounts::tokens::Account;
use crate::domain::{ChatId, UserInfo};

impl Store {
    /// The stored spelling of a user name (MySQL compares names case-insensitively).
    pub async fn user_name(&self, user: &str) -> Result<Option<String>> {
        let sql = "SELECT user_name FROM users WHERE user_name = ?";
        Ok(on_reader!(self, "user_name", |pool| sqlx::query_scalar(
            sql
        )
        .bind(user)
        .fetch_optional(pool)
        .await)?)
    }

    pub async fn create_user(&self, user: &str, password_hash: &str) -> Result<()> {
        let sql = "INSERT INTO users (user_name, password) VALUES (?, ?)";
        on_writer!(self, "create_user", |pool| sqlx::query(sql)
            .bind(user)
            .bind(password_hash)
            .execute(pool)
            .await
            .map(drop))
        .map_err(on_unique_violation)
    }

    /// The stored spelling of the name and the stored password (hash or legacy plaintext).
    pub async fn credentials(&self, user: &str) -> Result<Option<(String, String)>> {
        let sql = "SELECT user_name, password FROM users WHERE user_name = ?";
        Ok(on_reader!(self, "credentials", |pool| sqlx::query_as(sql)
            .bind(user)
            .fetch_optional(pool)
            .await)?)
    }

    /// What a token's checks need of its user: the name as stored, the
    /// stored password, and whether `session` (when the token names one)
    /// still exists, in one round trip.
    pub async fn account(&self, user: &str, session: Option<&str>) -> Result<Option<Account>> {
        let sql = "SELECT u.user_name, u.password, \
                   (SELECT COUNT(*) FROM sessions s \
                      WHERE s.session_id = ? AND s.user_name = u.user_name) AS sessions \
                   FROM users u WHERE u.user_name = ?";
        let row: Option<(String, String, i64)> =
            on_reader!(self, "account", |pool| sqlx::query_as(sql)
                .bind(session.unwrap_or(""))
                .bind(user)
                .fetch_optional(pool)
                .await)?;
        Ok(row.map(|(name, password, sessions)| Account {
            name,
            password,
            session_live: sessions > 0,
        }))
    }

    /// Replaces the password only if it still is `old`; false when it changed meanwhile.
    pub async fn replace_password(&self, user: &str, old: &str, new: &str) -> Result<bool> {
        let sql = "UPDATE users SET password = ? WHERE user_name = ? AND password = ?";
        let changed = on_writer!(self, "replace_password", |pool| sqlx::query(sql)
            .bind(new)
            .bind(user)
            .bind(old)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))?;
        Ok(changed > 0)
    }

    /// The user's counters; `message_count` counts stored messages with a
    /// `chat_id` up to `stored_up_to` (the caller adds those past it).
    pub async fn user_info(&self, user: &str, stored_up_to: ChatId) -> Result<UserInfo> {
        let sql = "SELECT \
            (SELECT COUNT(*) FROM chat_history WHERE user_name = ? AND message_id <= ?) \
               AS message_count, \
            (SELECT COUNT(*) FROM rooms WHERE room_owner = ? AND is_private = 1) \
               AS private_rooms_owned, \
            (SELECT COUNT(*) FROM rooms WHERE room_owner = ? AND is_private = 0) \
               AS public_rooms_owned, \
            (SELECT COUNT(*) FROM users_room m JOIN rooms r ON r.room_id = m.room_id \
               WHERE m.user_name = ? AND r.is_private = 1) AS private_rooms_member, \
            (SELECT COUNT(*) FROM users_room m JOIN rooms r ON r.room_id = m.room_id \
               WHERE m.user_name = ? AND r.is_private = 0) AS public_rooms_member";
        let row: UserInfoRow = on_reader!(self, "user_info", |pool| sqlx::query_as(sql)
            .bind(user)
            .bind(stored_up_to)
            .bind(user)
            .bind(user)
            .bind(user)
            .bind(user)
            .fetch_one(pool)
            .await)?;
        Ok(row.into())
    }

    /// Users who share at least one room with `user`, `user` excluded.
    pub async fn room_mates(&self, user: &str) -> Result<Vec<String>> {
        let sql = "SELECT DISTINCT other.user_name FROM users_room me \
                   JOIN users_room other ON other.room_id = me.room_id \
                   WHERE me.user_name = ? AND other.user_name <> ?";
        Ok(on_reader!(self, "room_mates", |pool| sqlx::query_scalar(
            sql
        )
        .bind(user)
        .bind(user)
        .fetch_all(pool)
        .await)?)
    }
}

#[derive(sqlx::FromRow)]
struct UserInfoRow {
    message_count: i64,
    private_rooms_owned: i64,
    public_rooms_owned: i64,
    private_rooms_member: i64,
    public_rooms_member: i64,
}

impl From<UserInfoRow> for UserInfo {
    fn from(r: UserInfoRow) -> Self {
        UserInfo {
            message_count: r.message_count,
            private_rooms_owned: r.private_rooms_owned,
            public_rooms_owned: r.public_rooms_owned,
            private_rooms_member: r.private_rooms_member,
            public_rooms_member: r.public_rooms_member,
        }
    }
}
