-- Sessions: one per login, kept alive by a rotating refresh token
-- (POST /api/refresh); removed by logout and by a password change. Only a
-- hash of the token's secret is stored.
CREATE TABLE sessions (
    session_id CHAR(32) NOT NULL PRIMARY KEY,
    user_name VARCHAR(48) NOT NULL,
    secret_hash CHAR(64) NOT NULL,
    expires_at DATETIME(3) NOT NULL,
    INDEX idx_sessions_user (user_name)
);
