-- Sessions: one per login, kept alive by a rotating refresh token
-- (POST /api/refresh); removed by logout and by a password change. Only a
-- hash of the token's secret is stored.
CREATE TABLE sessions (
    session_id TEXT NOT NULL PRIMARY KEY,
    user_name TEXT COLLATE NOCASE NOT NULL,
    secret_hash TEXT NOT NULL,
    expires_at TEXT NOT NULL
);
CREATE INDEX idx_sessions_user ON sessions (user_name);
