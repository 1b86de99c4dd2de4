//! Rooms: the public list, one room, a private room by its access key, and
//! creating, editing and deleting rooms.

use chrono::NaiveDateTime;

use super::{DEADLOCK_ATTEMPTS, Result, Store, inserted_id, on_unique_violation};
use crate::domain::{NewRoom, Room, RoomEdit, RoomId};

impl Store {
    pub async fn public_rooms(&self) -> Result<Vec<Room>> {
        let sql = "SELECT room_id, room_name, room_owner, create_date, is_private, access_key \
                   FROM rooms WHERE is_private = 0 ORDER BY room_id";
        let rows: Vec<RoomRow> = on_reader!(self, "public_rooms", |pool| sqlx::query_as(sql)
            .fetch_all(pool)
            .await)?;
        Ok(rows.into_iter().map(Into::into).collect())
    }

    pub async fn room(&self, room_id: RoomId) -> Result<Option<Room>> {
        let sql = "SELECT room_id, room_name, room_owner, create_date, is_private, access_key \
                   FROM rooms WHERE room_id = ?";
        let row: Option<RoomRow> = on_reader!(self, "room", |pool| sqlx::query_as(sql)
            .bind(room_id)
            .fetch_optional(pool)
            .await)?;
        Ok(row.map(Into::into))
    }

    /// The room, if `viewer` may see it (and send to it, and read its
    /// history): a public room to anyone, a private one only to its members
    /// and owner. `None` otherwise, as for a room that does not exist:
    /// whether a private room exists is not told to outsiders.
    pub async fn visible_room(
        &self,
        room_id: RoomId,
        viewer: Option<&str>,
    ) -> Result<Option<Room>> {
        let Some(room) = self.room(room_id).await? else {
            return Ok(None);
        };
        if !room.is_private {
            return Ok(Some(room));
        }
        let Some(viewer) = viewer else {
            return Ok(None);
        };
        if room.room_owner == viewer || self.member(room_id, viewer).await?.is_some() {
            Ok(Some(room))
        } else {
            Ok(None)
        }
    }

    pub async fn private_room_by_key(&self, access_key: &str) -> Result<Option<Room>> {
        let sql = "SELECT room_id, room_name, room_owner, create_date, is_private, access_key \
                   FROM rooms WHERE access_key = ? AND is_private = 1";
        let row: Option<RoomRow> =
            on_reader!(self, "private_room_by_key", |pool| sqlx::query_as(sql)
                .bind(access_key)
                .fetch_optional(pool)
                .await)?;
        Ok(row.map(Into::into))
    }

    /// Creates the room and makes its owner a member, atomically.
    pub async fn create_room(&self, room: &NewRoom, now: NaiveDateTime) -> Result<RoomId> {
        let insert_room = "INSERT INTO rooms (room_name, room_owner, create_date, is_private, \
                           access_key) VALUES (?, ?, ?, ?, ?)";
        let insert_owner = "INSERT INTO users_room (room_id, user_name) VALUES (?, ?)";
        on_writer!(self, "create_room", |pool| {
            let mut tx = pool.begin().await?;
            let done = sqlx::query(insert_room)
                .bind(&room.name)
                .bind(&room.owner)
                .bind(now)
                .bind(room.access_key.is_some())
                .bind(&room.access_key)
                .execute(&mut *tx)
                .await
                .map_err(on_unique_violation)?;
            let room_id = inserted_id(pool, &done);
            sqlx::query(insert_owner)
                .bind(room_id)
                .bind(&room.owner)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            Ok(room_id)
        })
    }

    pub async fn update_room(&self, edit: &RoomEdit) -> Result<()> {
        let sql = "UPDATE rooms SET room_name = ?, is_private = ?, access_key = ? \
                   WHERE room_id = ?";
        on_writer!(self, "update_room", |pool| sqlx::query(sql)
            .bind(&edit.name)
            .bind(edit.access_key.is_some())
            .bind(&edit.access_key)
            .bind(edit.room_id)
            .execute(pool)
            .await
            .map(drop))
        .map_err(on_unique_violation)
    }

    /// Deletes the room with its memberships and history; false if it was gone.
    pub async fn delete_room(&self, room_id: RoomId) -> Result<bool> {
        // The persister inserts into the same rows' neighbourhood: InnoDB
        // may pick this transaction as a deadlock victim.
        let mut attempt = 1;
        loop {
            match self.delete_room_once(room_id).await {
                Err(e) if e.is_deadlock() && attempt < DEADLOCK_ATTEMPTS => attempt += 1,
                other => return other,
            }
        }
    }

    async fn delete_room_once(&self, room_id: RoomId) -> Result<bool> {
        let statements = [
            "DELETE FROM chat_history WHERE room_id = ?",
            "DELETE FROM users_room WHERE room_id = ?",
            "DELETE FROM rooms WHERE room_id = ?",
        ];
        on_writer!(self, "delete_room_once", |pool| {
            let mut tx = pool.begin().await?;
            let mut deleted = 0;
            for sql in statements {
                let done = sqlx::query(sql).bind(room_id).execute(&mut *tx).await?;
                deleted = done.rows_affected();
            }
            tx.commit().await?;
            // The last statement deleted the room itself.
            Ok(deleted > 0)
        })
    }
}

/// A `rooms` row. Older databases allow NULL in several columns.
#[derive(sqlx::FromRow)]
struct RoomRow {
    room_id: i64,
    room_name: String,
    room_owner: Option<String>,
    create_date: Option<NaiveDateTime>,
    is_private: Option<bool>,
    access_key: Option<String>,
}

impl From<RoomRow> for Room {
    fn from(r: RoomRow) -> Self {
        Room {
            room_id: r.room_id,
            room_name: r.room_name,
            room_owner: r.room_owner.unwrap_or_default(),
            create_date: r.create_date,
            is_private: r.is_private.unwrap_or(false),
            access_key: r.access_key,
        }
    }
}
