-- The highest chat_id acknowledged to a client (see the MySQL migration of
-- the same name).
CREATE TABLE chat_log_state (
    id INTEGER NOT NULL PRIMARY KEY,
    acked_up_to INTEGER NOT NULL
);
INSERT INTO chat_log_state (id, acked_up_to) VALUES (1, 0);
