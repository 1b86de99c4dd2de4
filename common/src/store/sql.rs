//! The SQL both adapters run. MySQL and SQLite agree on `?` placeholders and
//! on every statement here, so the `Store` implementation is written once and
//! expanded for each adapter by `sql_store!`. An adapter supplies `reader()`
//! and `writer()` pools, its `MIGRATOR`, and `last_insert_id()`.

/// The columns of a `RoomRow`, for `concat!` (sqlx only takes static SQL).
macro_rules! room_columns {
    () => {
        "room_id, room_name, room_owner, create_date, is_private, access_key"
    };
}

macro_rules! sql_store {
    ($store:ty) => {
        #[async_trait::async_trait]
        impl $crate::store::Store for $store {
            async fn migrate(&self) -> $crate::store::Result<()> {
                Self::MIGRATOR.run(self.writer()).await?;
                Ok(())
            }

            async fn check_schema(&self) -> $crate::store::Result<()> {
                let applied: Vec<(i64, Vec<u8>)> = sqlx::query_as(
                    "SELECT version, checksum FROM _sqlx_migrations WHERE success = 1 \
                     ORDER BY version",
                )
                .fetch_all(self.reader())
                .await
                .map_err(|e| {
                    $crate::store::StoreError::Schema(format!(
                        "cannot read the migration table ({e}); run `komunikator migrate` first"
                    ))
                })?;
                $crate::store::compare_migrations(&Self::MIGRATOR, &applied)
            }

            async fn ping(&self) -> $crate::store::Result<()> {
                sqlx::query("SELECT 1").execute(self.reader()).await?;
                Ok(())
            }

            async fn user_name(&self, user: &str) -> $crate::store::Result<Option<String>> {
                Ok(sqlx::query_scalar("SELECT user_name FROM users WHERE user_name = ?")
                    .bind(user)
                    .fetch_optional(self.reader())
                    .await?)
            }

            async fn create_user(&self, user: &str, hash: &str) -> $crate::store::Result<()> {
                sqlx::query("INSERT INTO users (user_name, password) VALUES (?, ?)")
                    .bind(user)
                    .bind(hash)
                    .execute(self.writer())
                    .await
                    .map_err($crate::store::on_unique_violation)?;
                Ok(())
            }

            async fn credentials(
                &self,
                user: &str,
            ) -> $crate::store::Result<Option<(String, String)>> {
                Ok(sqlx::query_as("SELECT user_name, password FROM users WHERE user_name = ?")
                    .bind(user)
                    .fetch_optional(self.reader())
                    .await?)
            }

            async fn replace_password(
                &self,
                user: &str,
                old: &str,
                new: &str,
            ) -> $crate::store::Result<bool> {
                let done = sqlx::query(
                    "UPDATE users SET password = ? WHERE user_name = ? AND password = ?",
                )
                .bind(new)
                .bind(user)
                .bind(old)
                .execute(self.writer())
                .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn user_info(
                &self,
                user: &str,
                stored_up_to: $crate::domain::ChatId,
            ) -> $crate::store::Result<$crate::domain::UserInfo> {
                let row: $crate::store::UserInfoRow = sqlx::query_as(
                    "SELECT \
                     (SELECT COUNT(*) FROM chat_history WHERE user_name = ? AND message_id <= ?) \
                        AS message_count, \
                     (SELECT COUNT(*) FROM rooms WHERE room_owner = ? AND is_private = 1) \
                        AS private_rooms_owned, \
                     (SELECT COUNT(*) FROM rooms WHERE room_owner = ? AND is_private = 0) \
                        AS public_rooms_owned, \
                     (SELECT COUNT(*) FROM users_room m JOIN rooms r ON r.room_id = m.room_id \
                        WHERE m.user_name = ? AND r.is_private = 1) AS private_rooms_member, \
                     (SELECT COUNT(*) FROM users_room m JOIN rooms r ON r.room_id = m.room_id \
                        WHERE m.user_name = ? AND r.is_private = 0) AS public_rooms_member",
                )
                .bind(user)
                .bind(stored_up_to)
                .bind(user)
                .bind(user)
                .bind(user)
                .bind(user)
                .fetch_one(self.reader())
                .await?;
                Ok(row.into())
            }

            async fn room_mates(&self, user: &str) -> $crate::store::Result<Vec<String>> {
                Ok(sqlx::query_scalar(
                    "SELECT DISTINCT other.user_name FROM users_room me \
                     JOIN users_room other ON other.room_id = me.room_id \
                     WHERE me.user_name = ? AND other.user_name <> ?",
                )
                .bind(user)
                .bind(user)
                .fetch_all(self.reader())
                .await?)
            }

            async fn public_rooms(&self) -> $crate::store::Result<Vec<$crate::domain::Room>> {
                let rows: Vec<$crate::store::RoomRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    room_columns!(),
                    " FROM rooms WHERE is_private = 0 ORDER BY room_id"
                ))
                .fetch_all(self.reader())
                .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn room(
                &self,
                room_id: $crate::domain::RoomId,
            ) -> $crate::store::Result<Option<$crate::domain::Room>> {
                let row: Option<$crate::store::RoomRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    room_columns!(),
                    " FROM rooms WHERE room_id = ?"
                ))
                .bind(room_id)
                .fetch_optional(self.reader())
                .await?;
                Ok(row.map(Into::into))
            }

            async fn private_room_by_key(
                &self,
                access_key: &str,
            ) -> $crate::store::Result<Option<$crate::domain::Room>> {
                let row: Option<$crate::store::RoomRow> = sqlx::query_as(concat!(
                    "SELECT ",
                    room_columns!(),
                    " FROM rooms WHERE access_key = ? AND is_private = 1"
                ))
                .bind(access_key)
                .fetch_optional(self.reader())
                .await?;
                Ok(row.map(Into::into))
            }

            async fn create_room(
                &self,
                room: &$crate::domain::NewRoom,
                now: chrono::NaiveDateTime,
            ) -> $crate::store::Result<$crate::domain::RoomId> {
                let mut tx = self.writer().begin().await?;
                let done = sqlx::query(
                    "INSERT INTO rooms (room_name, room_owner, create_date, is_private, \
                     access_key) VALUES (?, ?, ?, ?, ?)",
                )
                .bind(&room.name)
                .bind(&room.owner)
                .bind(now)
                .bind(room.access_key.is_some())
                .bind(&room.access_key)
                .execute(&mut *tx)
                .await
                .map_err($crate::store::on_unique_violation)?;
                let room_id = Self::last_insert_id(&done);
                sqlx::query("INSERT INTO users_room (room_id, user_name) VALUES (?, ?)")
                    .bind(room_id)
                    .bind(&room.owner)
                    .execute(&mut *tx)
                    .await?;
                tx.commit().await?;
                Ok(room_id)
            }

            async fn update_room(
                &self,
                edit: &$crate::domain::RoomEdit,
            ) -> $crate::store::Result<()> {
                sqlx::query(
                    "UPDATE rooms SET room_name = ?, is_private = ?, access_key = ? \
                     WHERE room_id = ?",
                )
                .bind(&edit.name)
                .bind(edit.access_key.is_some())
                .bind(&edit.access_key)
                .bind(edit.room_id)
                .execute(self.writer())
                .await
                .map_err($crate::store::on_unique_violation)?;
                Ok(())
            }

            async fn delete_room(
                &self,
                room_id: $crate::domain::RoomId,
            ) -> $crate::store::Result<bool> {
                // The persister inserts into the same rows' neighbourhood:
                // InnoDB may pick this transaction as a deadlock victim.
                let mut attempt = 1;
                loop {
                    let deleted: $crate::store::Result<bool> = async {
                        let mut tx = self.writer().begin().await?;
                        sqlx::query("DELETE FROM chat_history WHERE room_id = ?")
                            .bind(room_id)
                            .execute(&mut *tx)
                            .await?;
                        sqlx::query("DELETE FROM users_room WHERE room_id = ?")
                            .bind(room_id)
                            .execute(&mut *tx)
                            .await?;
                        let done = sqlx::query("DELETE FROM rooms WHERE room_id = ?")
                            .bind(room_id)
                            .execute(&mut *tx)
                            .await?;
                        tx.commit().await?;
                        Ok(done.rows_affected() > 0)
                    }
                    .await;
                    match deleted {
                        Err(e) if e.is_deadlock() && attempt < $crate::store::DEADLOCK_ATTEMPTS => {
                            attempt += 1;
                        }
                        other => return other,
                    }
                }
            }

            async fn member(
                &self,
                room_id: $crate::domain::RoomId,
                user: &str,
            ) -> $crate::store::Result<Option<String>> {
                Ok(sqlx::query_scalar(
                    "SELECT user_name FROM users_room WHERE room_id = ? AND user_name = ?",
                )
                .bind(room_id)
                .bind(user)
                .fetch_optional(self.reader())
                .await?)
            }

            async fn add_member(
                &self,
                room_id: $crate::domain::RoomId,
                user: &str,
            ) -> $crate::store::Result<bool> {
                let done = sqlx::query("INSERT INTO users_room (room_id, user_name) VALUES (?, ?)")
                    .bind(room_id)
                    .bind(user)
                    .execute(self.writer())
                    .await
                    .map_err($crate::store::on_unique_violation);
                match done {
                    Ok(_) => Ok(true),
                    Err($crate::store::StoreError::Conflict) => Ok(false),
                    Err(e) => Err(e),
                }
            }

            async fn remove_member(
                &self,
                room_id: $crate::domain::RoomId,
                user: &str,
            ) -> $crate::store::Result<bool> {
                let done = sqlx::query("DELETE FROM users_room WHERE room_id = ? AND user_name = ?")
                    .bind(room_id)
                    .bind(user)
                    .execute(self.writer())
                    .await?;
                Ok(done.rows_affected() > 0)
            }

            async fn memberships(
                &self,
                user: &str,
            ) -> $crate::store::Result<Vec<$crate::domain::Membership>> {
                let rows: Vec<$crate::store::MembershipRow> = sqlx::query_as(
                    "SELECT m.user_name, r.room_id, r.room_name, r.room_owner, r.is_private \
                     FROM users_room m JOIN rooms r ON r.room_id = m.room_id \
                     WHERE m.user_name = ? ORDER BY r.room_id",
                )
                .bind(user)
                .fetch_all(self.reader())
                .await?;
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn rooms_of(
                &self,
                users: &[String],
            ) -> $crate::store::Result<Vec<(String, $crate::domain::RoomId)>> {
                let mut rooms = Vec::new();
                // Bounded IN lists: well below every placeholder limit.
                for chunk in users.chunks(1000) {
                    let mut query = sqlx::QueryBuilder::new(
                        "SELECT user_name, room_id FROM users_room WHERE user_name IN (",
                    );
                    let mut names = query.separated(", ");
                    for user in chunk {
                        names.push_bind(user);
                    }
                    names.push_unseparated(")");
                    rooms.extend(
                        query
                            .build_query_as::<(String, i64)>()
                            .fetch_all(self.reader())
                            .await?,
                    );
                }
                Ok(rooms)
            }

            async fn members(
                &self,
                room_id: $crate::domain::RoomId,
            ) -> $crate::store::Result<Vec<$crate::domain::Member>> {
                let rows: Vec<(String, i64)> = sqlx::query_as(
                    "SELECT user_name, room_id FROM users_room WHERE room_id = ? \
                     ORDER BY user_name",
                )
                .bind(room_id)
                .fetch_all(self.reader())
                .await?;
                Ok(rows
                    .into_iter()
                    .map(|(user_name, room_id)| $crate::domain::Member { user_name, room_id })
                    .collect())
            }

            async fn history(
                &self,
                q: $crate::domain::HistoryQuery,
            ) -> $crate::store::Result<Vec<$crate::domain::ChatMessage>> {
                // Newest first through the (room_id, message_id) index, then
                // turned around: clients get the page oldest first.
                let mut rows: Vec<$crate::store::MessageRow> = sqlx::query_as(
                    "SELECT message_id AS chat_id, room_id, user_name, message, \
                     message_date AS create_date FROM chat_history \
                     WHERE room_id = ? AND message_id < ? ORDER BY message_id DESC LIMIT ?",
                )
                .bind(q.room_id)
                .bind(q.before.unwrap_or(i64::MAX))
                .bind(i64::from(q.limit))
                .fetch_all(self.reader())
                .await?;
                rows.reverse();
                Ok(rows.into_iter().map(Into::into).collect())
            }

            async fn append_messages(
                &self,
                drafts: &[$crate::domain::ChatDraft],
            ) -> $crate::store::Result<Vec<$crate::store::Result<$crate::domain::ChatId>>> {
                let mut tx = self.writer().begin().await?;
                let mut ids = Vec::with_capacity(drafts.len());
                for draft in drafts {
                    let done = sqlx::query(
                        "INSERT INTO chat_history (room_id, user_name, message, message_date) \
                         VALUES (?, ?, ?, ?)",
                    )
                    .bind(draft.room_id)
                    .bind(&draft.user_name)
                    .bind(&draft.message)
                    .bind(draft.create_date)
                    .execute(&mut *tx)
                    .await;
                    ids.push(match done {
                        Ok(done) => Ok(Self::last_insert_id(&done)),
                        Err(e) => match $crate::store::on_unique_violation(e) {
                            $crate::store::StoreError::Missing => Err($crate::store::StoreError::Missing),
                            // Anything but a missing room fails the whole batch.
                            e => return Err(e),
                        },
                    });
                }
                tx.commit().await?;
                Ok(ids)
            }

            async fn insert_messages(
                &self,
                batch: &[$crate::domain::ChatMessage],
            ) -> $crate::store::Result<u64> {
                if batch.is_empty() {
                    return Ok(0);
                }
                let mut tx = self.writer().begin().await?;
                let mut rooms: Vec<i64> = batch.iter().map(|m| m.room_id).collect();
                rooms.sort_unstable();
                rooms.dedup();
                let mut query = sqlx::QueryBuilder::new("SELECT room_id FROM rooms WHERE room_id IN (");
                let mut ids = query.separated(", ");
                for room in &rooms {
                    ids.push_bind(*room);
                }
                ids.push_unseparated(")");
                let live: Vec<i64> = query.build_query_scalar().fetch_all(&mut *tx).await?;
                let rows = batch.iter().filter(|m| live.contains(&m.room_id));
                let mut inserted = 0;
                if rows.clone().next().is_some() {
                    let mut insert = sqlx::QueryBuilder::new(Self::INSERT_IGNORE_MESSAGES);
                    insert.push_values(rows, |mut row, m| {
                        row.push_bind(m.chat_id)
                            .push_bind(m.room_id)
                            .push_bind(&m.user_name)
                            .push_bind(&m.message)
                            .push_bind(m.create_date);
                    });
                    inserted = insert.build().execute(&mut *tx).await?.rows_affected();
                }
                tx.commit().await?;
                Ok(inserted)
            }

            async fn max_chat_id(&self) -> $crate::store::Result<$crate::domain::ChatId> {
                Ok(sqlx::query_scalar("SELECT COALESCE(MAX(message_id), 0) FROM chat_history")
                    .fetch_one(self.reader())
                    .await?)
            }
        }
    };
}
