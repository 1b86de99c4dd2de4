//! Sessions: what a refresh token stands for (see `api`'s `sessions`
//! routes). A session is its id, its user, the hash of its current secret
//! and when it expires; refreshing replaces the secret.

use chrono::NaiveDateTime;

use super::{Result, Store};

impl Store {
    pub async fn create_session(
        &self,
        session_id: &str,
        user: &str,
        secret_hash: &str,
        expires_at: NaiveDateTime,
    ) -> Result<()> {
        let sql = "INSERT INTO sessions (session_id, user_name, secret_hash, expires_at) \
                   VALUES (?, ?, ?, ?)";
        on_writer!(self, "create_session", |pool| sqlx::query(sql)
            .bind(session_id)
            .bind(user)
            .bind(secret_hash)
            .bind(expires_at)
            .execute(pool)
            .await
            .map(drop))?;
        Ok(())
    }

    /// The session's user, secret hash and expiry.
    pub async fn session(
        &self,
        session_id: &str,
    ) -> Result<Option<(String, String, NaiveDateTime)>> {
        let sql = "SELECT user_name, secret_hash, expires_at FROM sessions WHERE session_id = ?";
        Ok(on_reader!(self, "session", |pool| sqlx::query_as(sql)
            .bind(session_id)
            .fetch_optional(pool)
            .await)?)
    }

    /// Replaces the session's secret if it still is `old_hash`; false when
    /// another refresh (or a logout) got there first.
    pub async fn rotate_session(
        &self,
        session_id: &str,
        old_hash: &str,
        new_hash: &str,
        expires_at: NaiveDateTime,
    ) -> Result<bool> {
        let sql = "UPDATE sessions SET secret_hash = ?, expires_at = ? \
                   WHERE session_id = ? AND secret_hash = ?";
        let done = on_writer!(self, "rotate_session", |pool| sqlx::query(sql)
            .bind(new_hash)
            .bind(expires_at)
            .bind(session_id)
            .bind(old_hash)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))?;
        Ok(done == 1)
    }

    pub async fn delete_session(&self, session_id: &str) -> Result<()> {
        let sql = "DELETE FROM sessions WHERE session_id = ?";
        on_writer!(self, "delete_session", |pool| sqlx::query(sql)
            .bind(session_id)
            .execute(pool)
            .await
            .map(drop))?;
        Ok(())
    }

    /// Ends every session of `user` (a password change).
    pub async fn delete_sessions_of(&self, user: &str) -> Result<()> {
        let sql = "DELETE FROM sessions WHERE user_name = ?";
        on_writer!(self, "delete_sessions_of", |pool| sqlx::query(sql)
            .bind(user)
            .execute(pool)
            .await
            .map(drop))?;
        Ok(())
    }
}
