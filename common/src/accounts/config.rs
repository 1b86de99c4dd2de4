//! The options of access tokens.

use std::time::Duration;

use clap::Args;

use crate::support::problems::Problems;

/// The shortest `JWT_SECRET_KEY` accepted, in bytes.
pub const JWT_SECRET_MIN: usize = 32;

/// Access tokens.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// Secret that signs access tokens (HS256); at least 32 bytes.
    /// Read from the environment only. Required except in single-node mode,
    /// which generates one and keeps it in the data directory.
    #[arg(long, env = "JWT_SECRET_KEY", hide_env_values = true)]
    pub jwt_secret_key: Option<String>,
    /// Lifetime of an access token, in seconds.
    #[arg(long, env = "JWT_ACCESS_TOKEN_EXPIRES", default_value_t = 900)]
    pub jwt_access_token_expires: u64,
}

impl AuthArgs {
    pub const SECRET_IDS: [&'static str; 1] = ["jwt_secret_key"];

    pub fn token_ttl(&self) -> Duration {
        Duration::from_secs(self.jwt_access_token_expires)
    }

    pub fn validate(&self, required: bool, problems: &mut Problems) {
        if self.jwt_access_token_expires == 0 {
            problems.push("JWT_ACCESS_TOKEN_EXPIRES must be at least 1 second");
        }
        match &self.jwt_secret_key {
            None if required => problems.push("JWT_SECRET_KEY is required"),
            Some(s) if s.trim().is_empty() => problems.push("JWT_SECRET_KEY is empty"),
            // A short HS256 secret can be recovered offline from any one
            // token, and then every token forged.
            Some(s) if s.len() < JWT_SECRET_MIN => problems.push(format!(
                "JWT_SECRET_KEY must be at least {JWT_SECRET_MIN} bytes (e.g. `openssl rand -hex 32`)"
            )),
            _ => {}
        }
    }
}
