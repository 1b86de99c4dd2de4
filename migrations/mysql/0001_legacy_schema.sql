-- The schema older Komunikator servers created. On an existing database every
-- statement is a no-op; on an empty one it lays the same starting point, so a
-- fresh install and an upgraded database end in the same schema.
CREATE TABLE IF NOT EXISTS users (
    user_name VARCHAR(48) NOT NULL PRIMARY KEY,
    password VARCHAR(128) NOT NULL
) DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS rooms (
    room_id INT AUTO_INCREMENT PRIMARY KEY,
    room_name VARCHAR(64) NOT NULL,
    room_owner VARCHAR(48),
    create_date DATETIME DEFAULT CURRENT_TIMESTAMP,
    is_private TINYINT(1) DEFAULT 0,
    access_key VARCHAR(64) UNIQUE,
    FOREIGN KEY (room_owner) REFERENCES users (user_name),
    CHECK ((is_private = 1 AND access_key IS NOT NULL) OR (is_private = 0 AND access_key IS NULL))
) DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS users_room (
    room_id INT,
    user_name VARCHAR(48),
    PRIMARY KEY (room_id, user_name),
    FOREIGN KEY (room_id) REFERENCES rooms (room_id),
    FOREIGN KEY (user_name) REFERENCES users (user_name)
) DEFAULT CHARSET = utf8mb4;

CREATE TABLE IF NOT EXISTS chat_history (
    message_id INT AUTO_INCREMENT PRIMARY KEY,
    room_id INT,
    user_name VARCHAR(48),
    message VARCHAR(1000),
    message_date DATETIME DEFAULT CURRENT_TIMESTAMP,
    FOREIGN KEY (room_id) REFERENCES rooms (room_id),
    FOREIGN KEY (user_name) REFERENCES users (user_name)
) DEFAULT CHARSET = utf8mb4;
