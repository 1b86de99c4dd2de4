//! Accounts: password hashing and access tokens.

mod argon;
pub mod config;
pub mod password;
pub mod tokens;
