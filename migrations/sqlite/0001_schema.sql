-- The embedded store's schema: the same tables and columns as on MySQL.
-- Names compare case-insensitively, as under MySQL's default collation.
CREATE TABLE users (
    user_name TEXT COLLATE NOCASE NOT NULL PRIMARY KEY,
    password TEXT NOT NULL
);

CREATE TABLE rooms (
    room_id INTEGER PRIMARY KEY AUTOINCREMENT,
    room_name TEXT NOT NULL,
    room_owner TEXT COLLATE NOCASE REFERENCES users (user_name),
    create_date TEXT,
    is_private BOOLEAN NOT NULL DEFAULT 0,
    access_key TEXT COLLATE NOCASE UNIQUE,
    CHECK ((is_private = 1 AND access_key IS NOT NULL) OR (is_private = 0 AND access_key IS NULL))
);
CREATE INDEX idx_rooms_private ON rooms (is_private, room_id);
CREATE INDEX idx_rooms_owner ON rooms (room_owner);

CREATE TABLE users_room (
    room_id INTEGER NOT NULL REFERENCES rooms (room_id),
    user_name TEXT COLLATE NOCASE NOT NULL REFERENCES users (user_name),
    PRIMARY KEY (room_id, user_name)
) WITHOUT ROWID;
CREATE INDEX idx_users_room_user ON users_room (user_name, room_id);

CREATE TABLE chat_history (
    message_id INTEGER PRIMARY KEY AUTOINCREMENT,
    room_id INTEGER REFERENCES rooms (room_id),
    user_name TEXT COLLATE NOCASE REFERENCES users (user_name),
    message TEXT,
    message_date TEXT
);
CREATE INDEX idx_chat_room_message ON chat_history (room_id, message_id);
CREATE INDEX idx_chat_user ON chat_history (user_name);
