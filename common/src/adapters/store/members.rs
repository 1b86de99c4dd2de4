//! Memberships: who is in which room.

use super::{Result, Store, StoreError, on_unique_violation};
use crate::domain::{Member, Membership, RoomId};

/// Most names in one `IN (...)` list: well below every placeholder limit.
const IN_LIST_MAX: usize = 1000;

impl Store {
    /// The stored spelling of `user` if they are a member of the room.
    pub async fn member(&self, room_id: RoomId, user: &str) -> Result<Option<String>> {
        let sql = "SELECT user_name FROM users_room WHERE room_id = ? AND user_name = ?";
        Ok(on_reader!(self, "member", |pool| sqlx::query_scalar(sql)
            .bind(room_id)
            .bind(user)
            .fetch_optional(pool)
            .await)?)
    }

    /// False when the user already was a member; `Missing` when the room is gone.
    pub async fn add_member(&self, room_id: RoomId, user: &str) -> Result<bool> {
        let sql = "INSERT INTO users_room (room_id, user_name) VALUES (?, ?)";
        let done = on_writer!(self, "add_member", |pool| sqlx::query(sql)
            .bind(room_id)
            .bind(user)
            .execute(pool)
            .await
            .map(drop));
        match done.map_err(on_unique_violation) {
            Ok(()) => Ok(true),
            Err(StoreError::Conflict) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// False when the user was not a member.
    pub async fn remove_member(&self, room_id: RoomId, user: &str) -> Result<bool> {
        let sql = "DELETE FROM users_room WHERE room_id = ? AND user_name = ?";
        let removed = on_writer!(self, "remove_member", |pool| sqlx::query(sql)
            .bind(room_id)
            .bind(user)
            .execute(pool)
            .await
            .map(|done| done.rows_affected()))?;
        Ok(removed > 0)
    }

    pub async fn memberships(&self, user: &str) -> Result<Vec<Membership>> {
        let sql = "SELECT m.user_name, r.room_id, r.room_name, r.room_owner, r.is_private \
                   FROM users_room m JOIN rooms r ON r.room_id = m.room_id \
                   WHERE m.user_name = ? ORDER BY r.room_id";
        let rows: Vec<MembershipRow> = on_reader!(self, "memberships", |pool| sqlx::query_as(sql)
            .bind(user)
            .fetch_all(pool)
            .await)?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// `(user, room_id)` for every membership of the given users.
    pub async fn rooms_of(&self, users: &[String]) -> Result<Vec<(String, RoomId)>> {
        let mut rooms = Vec::new();
        for chunk in users.chunks(IN_LIST_MAX) {
            let found: Vec<(String, RoomId)> = on_reader!(self, "rooms_of", |pool| {
                let mut query = sqlx::QueryBuilder::new(
                    "SELECT user_name, room_id FROM users_room WHERE user_name IN (",
                );
                let mut names = query.separated(", ");
                for user in chunk {
                    names.push_bind(user);
                }
                names.push_unseparated(")");
                query.build_query_as().fetch_all(pool).await
            })?;
            rooms.extend(found);
        }
        Ok(rooms)
    }

    pub async fn members(&self, room_id: RoomId) -> Result<Vec<Member>> {
        let sql = "SELECT user_name, room_id FROM users_room WHERE room_id = ? \
                   ORDER BY user_name";
        let rows: Vec<(String, RoomId)> = on_reader!(self, "members", |pool| sqlx::query_as(sql)
            .bind(room_id)
            .fetch_all(pool)
            .await)?;
        Ok(rows
            .into_iter()
            .map(|(user_name, room_id)| Member { user_name, room_id })
            .collect())
    }
}

#[derive(sqlx::FromRow)]
struct MembershipRow {
    user_name: String,
    room_id: i64,
    room_name: String,
    room_owner: Option<String>,
    is_private: Option<bool>,
}

impl From<MembershipRow> for Membership {
    fn from(r: MembershipRow) -> Self {
        Membership {
            user_name: r.user_name,
            room_id: r.room_id,
            room_name: r.room_name,
            room_owner: r.room_owner.unwrap_or_default(),
            is_private: r.is_private.unwrap_or(false),
        }
    }
}
