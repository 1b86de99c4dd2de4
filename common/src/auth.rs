//! Access tokens: HS256 JWTs whose `sub` is the user name. The token, never a
//! name sent by a client, decides who a caller is.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

/// Why a token was refused. The text is safe to show to clients.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("Missing authorization token")]
    Missing,
    #[error("Token has expired")]
    Expired,
    #[error("Invalid token")]
    Invalid,
}

/// The claims of an access token. Web clients decode `sub` and `exp`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Claims {
    pub sub: String,
    pub exp: i64,
    pub iat: i64,
    pub nbf: i64,
    pub jti: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// Issues and verifies access tokens with one shared secret.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tokens")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl Tokens {
    pub fn new(secret: &[u8], ttl: Duration) -> Self {
        // Pinned to HS256: a token naming any other `alg` (none, RS256 with the
        // secret as a public key, ...) fails validation.
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = 0;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "nbf", "iat", "sub"]);
        Self {
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
        }
    }

    /// A fresh access token for `user`.
    pub fn issue(&self, user: &str) -> String {
        let now = chrono::Utc::now().timestamp();
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let claims = Claims {
            sub: user.to_owned(),
            exp: now.saturating_add(ttl),
            iat: now,
            nbf: now,
            jti: crate::random_hex(16),
            kind: "access".to_owned(),
        };
        // Encoding an HMAC token with a serialisable struct cannot fail.
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }

    /// The user an access token names, if the token is valid now.
    pub fn verify(&self, token: &str) -> Result<String, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        let claims = data.claims;
        if claims.kind != "access" || claims.sub.is_empty() {
            return Err(TokenError::Invalid);
        }
        Ok(claims.sub)
    }

    /// The user named by an `Authorization: Bearer <token>` header value.
    pub fn verify_bearer(&self, header: &str) -> Result<String, TokenError> {
        let token = header
            .strip_prefix("Bearer ")
            .or_else(|| header.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or(TokenError::Invalid)?;
        self.verify(token)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tokens() -> Tokens {
        Tokens::new(
            b"0123456789abcdef0123456789abcdef",
            Duration::from_secs(900),
        )
    }

    #[test]
    fn issued_token_names_its_user() {
        let t = tokens();
        assert_eq!(t.verify(&t.issue("alice")).as_deref(), Ok("alice"));
    }

    #[test]
    fn token_signed_with_another_secret_is_invalid() {
        let other = Tokens::new(
            b"another secret, also long enough!",
            Duration::from_secs(900),
        );
        assert_eq!(
            tokens().verify(&other.issue("alice")),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn unsigned_token_is_invalid() {
        // {"alg":"none"} with the claims of a valid token and no signature.
        let t = tokens();
        let valid = t.issue("alice");
        let claims = valid.split('.').nth(1).expect("claims part");
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.");
        assert_eq!(t.verify(&none), Err(TokenError::Invalid));
    }

    #[test]
    fn bearer_prefix_is_required() {
        let t = tokens();
        let token = t.issue("bob");
        assert_eq!(
            t.verify_bearer(&format!("Bearer {token}")).as_deref(),
            Ok("bob")
        );
        assert_eq!(t.verify_bearer(&token), Err(TokenError::Invalid));
        assert_eq!(t.verify_bearer("Bearer "), Err(TokenError::Invalid));
    }
}
