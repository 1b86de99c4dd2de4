-- The highest chat_id acknowledged to a client, recorded by the gateways
-- every second. Should the chat stream ever be lost (a NATS volume gone, a
-- power cut without synced writes), the new stream starts above it, not
-- only above the highest stored id: an id a client has seen is never given
-- to another message.
CREATE TABLE chat_log_state (
    id INT NOT NULL PRIMARY KEY,
    acked_up_to BIGINT NOT NULL
);
INSERT INTO chat_log_state (id, acked_up_to) VALUES (1, 0);
