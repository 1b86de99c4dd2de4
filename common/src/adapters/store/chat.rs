//! Chat history: pages of a room's messages, and the two ways messages are
//! written: with the broker's `chat_id` (the persister) or given one by the
//! database (the embedded chat log).

use chrono::NaiveDateTime;

use super::{Result, Store, StoreError, insert_ignore, inserted_id, on_unique_violation};
use crate::domain::{ChatDraft, ChatId, ChatMessage, RoomId};

impl Store {
    /// The newest `limit` of a room's stored messages with a `chat_id`
    /// between `after` and `before` (both excluded), oldest first: a page
    /// of history, or what a socket catching up missed.
    pub async fn newest_between(
        &self,
        room_id: RoomId,
        after: ChatId,
        before: ChatId,
        limit: u32,
    ) -> Result<Vec<ChatMessage>> {
        // Newest first through the (room_id, message_id) index, then turned
        // around.
        let sql = "SELECT message_id AS chat_id, room_id, user_name, message, \
                   message_date AS create_date FROM chat_history \
                   WHERE room_id = ? AND message_id > ? AND message_id < ? \
                   ORDER BY message_id DESC LIMIT ?";
        let mut rows: Vec<MessageRow> =
            on_reader!(self, "newest_between", |pool| sqlx::query_as(sql)
                .bind(room_id)
                .bind(after)
                .bind(before)
                .bind(i64::from(limit))
                .fetch_all(pool)
                .await)?;
        rows.reverse();
        Ok(rows.into_iter().map(Into::into).collect())
    }

    /// Stores messages in one transaction and returns the ids the store gave
    /// them, in order (single-node mode, where the store assigns chat ids);
    /// a message whose room is gone fails alone (`Missing`).
    pub async fn append_messages(&self, drafts: &[ChatDraft]) -> Result<Vec<Result<ChatId>>> {
        let sql = "INSERT INTO chat_history (room_id, user_name, message, message_date) \
                   VALUES (?, ?, ?, ?)";
        on_writer!(self, "append_messages", |pool| {
            let mut tx = pool.begin().await?;
            let mut ids = Vec::with_capacity(drafts.len());
            for draft in drafts {
                let done = sqlx::query(sql)
                    .bind(draft.room_id)
                    .bind(&draft.user_name)
                    .bind(&draft.message)
                    .bind(draft.create_date)
                    .execute(&mut *tx)
                    .await;
                ids.push(match done.map_err(on_unique_violation) {
                    Ok(done) => Ok(inserted_id(pool, &done)),
                    Err(StoreError::Missing) => Err(StoreError::Missing),
                    // Anything but a missing room fails the whole batch.
                    Err(e) => return Err(e),
                });
            }
            tx.commit().await?;
            Ok(ids)
        })
    }

    /// Stores messages that already have their `chat_id` (from the broker),
    /// in one transaction. Idempotent: a message stored before is skipped.
    /// Messages of rooms deleted meanwhile are dropped. Returns rows inserted.
    pub async fn insert_messages(&self, batch: &[ChatMessage]) -> Result<u64> {
        if batch.is_empty() {
            return Ok(0);
        }
        let mut rooms: Vec<RoomId> = batch.iter().map(|m| m.room_id).collect();
        rooms.sort_unstable();
        rooms.dedup();
        on_writer!(self, "insert_messages", |pool| {
            let mut tx = pool.begin().await?;
            let mut query = sqlx::QueryBuilder::new("SELECT room_id FROM rooms WHERE room_id IN (");
            let mut ids = query.separated(", ");
            for room in &rooms {
                ids.push_bind(*room);
            }
            ids.push_unseparated(")");
            let live: Vec<RoomId> = query.build_query_scalar().fetch_all(&mut *tx).await?;
            // Collected, not filtered lazily: a closure held across the
            // awaits below would keep the future from being `Send`.
            let rows: Vec<&ChatMessage> =
                batch.iter().filter(|m| live.contains(&m.room_id)).collect();
            let mut inserted = 0;
            if !rows.is_empty() {
                let mut insert = sqlx::QueryBuilder::new(format!(
                    "{} INTO chat_history (message_id, room_id, user_name, message, \
                     message_date) ",
                    insert_ignore(pool)
                ));
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
        })
    }

    /// The largest `chat_id` stored (0 when there is none).
    pub async fn max_chat_id(&self) -> Result<ChatId> {
        let sql = "SELECT COALESCE(MAX(message_id), 0) FROM chat_history";
        Ok(on_reader!(self, "max_chat_id", |pool| sqlx::query_scalar(
            sql
        )
        .fetch_one(pool)
        .await)?)
    }

    /// The highest `chat_id` recorded as acknowledged to a client (0 when
    /// none was).
    pub async fn acked_up_to(&self) -> Result<ChatId> {
        let sql = "SELECT acked_up_to FROM chat_log_state WHERE id = 1";
        Ok(
            on_reader!(self, "acked_up_to", |pool| sqlx::query_scalar(sql)
                .fetch_optional(pool)
                .await)?
            .unwrap_or(0),
        )
    }

    /// Records that `chat_id` was acknowledged to a client; the record only
    /// grows (several gateways record at once).
    pub async fn record_acked(&self, chat_id: ChatId) -> Result<()> {
        let sql = "UPDATE chat_log_state SET acked_up_to = ? WHERE id = 1 AND acked_up_to < ?";
        on_writer!(self, "record_acked", |pool| sqlx::query(sql)
            .bind(chat_id)
            .bind(chat_id)
            .execute(pool)
            .await
            .map(drop))?;
        Ok(())
    }
}

/// A `chat_history` row, its columns named as the wire contract names them. Older databases allow NULL
/// in several columns.
#[derive(sqlx::FromRow)]
struct MessageRow {
    chat_id: i64,
    room_id: Option<i64>,
    user_name: Option<String>,
    message: Option<String>,
    create_date: Option<NaiveDateTime>,
}

impl From<MessageRow> for ChatMessage {
    fn from(r: MessageRow) -> Self {
        ChatMessage {
            chat_id: r.chat_id,
            room_id: r.room_id.unwrap_or_default(),
            user_name: r.user_name.unwrap_or_default(),
            message: r.message.unwrap_or_default(),
            create_date: r.create_date,
        }
    }
}
