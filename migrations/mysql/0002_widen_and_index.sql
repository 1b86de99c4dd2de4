-- Widen and index only: no column is dropped or narrowed, no row is lost.

-- argon2id PHC strings are ~100 characters; leave room for stronger parameters.
ALTER TABLE users MODIFY password VARCHAR(255) NOT NULL;

-- NULL meant the column default (public); make it explicit so the public-room
-- index finds those rooms.
UPDATE rooms SET is_private = 0 WHERE is_private IS NULL;

ALTER TABLE rooms
    MODIFY create_date DATETIME(3) NULL DEFAULT CURRENT_TIMESTAMP(3),
    ADD INDEX idx_rooms_private (is_private, room_id);

-- The primary key serves "members of a room"; this serves "rooms of a user".
ALTER TABLE users_room ADD INDEX idx_users_room_user (user_name, room_id);

-- chat_id is assigned by the broker and may exceed 2^31; history is read by
-- room, newest first.
ALTER TABLE chat_history
    MODIFY message_id BIGINT NOT NULL AUTO_INCREMENT,
    MODIFY message_date DATETIME(3) NULL DEFAULT CURRENT_TIMESTAMP(3),
    ADD INDEX idx_chat_room_message (room_id, message_id);
