-- no-transaction
-- Access keys compare case-sensitively: declared COLLATE NOCASE, "Secret" and
-- "secret" were one key, so a guess at another room's key needed no letter
-- case. SQLite cannot change a column's collation in place: the table is
-- rebuilt (rows, ids and indexes kept, and the highest id ever given, so a
-- deleted room's id is never reused), with foreign key checks off for the
-- swap, which is why this migration runs outside sqlx's transaction.
PRAGMA foreign_keys = OFF;
BEGIN;
CREATE TEMP TABLE kom_rooms_seq AS SELECT seq FROM sqlite_sequence WHERE name = 'rooms';
CREATE TABLE rooms_new (
    room_id INTEGER PRIMARY KEY AUTOINCREMENT,
    room_name TEXT NOT NULL,
    room_owner TEXT COLLATE NOCASE REFERENCES users (user_name),
    create_date TEXT,
    is_private BOOLEAN NOT NULL DEFAULT 0,
    access_key TEXT UNIQUE,
    CHECK ((is_private = 1 AND access_key IS NOT NULL) OR (is_private = 0 AND access_key IS NULL))
);
INSERT INTO rooms_new (room_id, room_name, room_owner, create_date, is_private, access_key)
    SELECT room_id, room_name, room_owner, create_date, is_private, access_key FROM rooms;
DROP TABLE rooms;
ALTER TABLE rooms_new RENAME TO rooms;
CREATE INDEX idx_rooms_private ON rooms (is_private, room_id);
CREATE INDEX idx_rooms_owner ON rooms (room_owner);
DELETE FROM sqlite_sequence WHERE name = 'rooms';
INSERT INTO sqlite_sequence (name, seq)
    SELECT 'rooms', highest FROM (
        SELECT MAX(seq) AS highest FROM (
            SELECT seq FROM kom_rooms_seq UNION ALL SELECT MAX(room_id) FROM rooms
        )
    ) WHERE highest IS NOT NULL;
DROP TABLE kom_rooms_seq;
COMMIT;
PRAGMA foreign_keys = ON;
