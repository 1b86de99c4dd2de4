//! Access tokens: HS256 JWTs whose `sub` is the user name. The token, never a
//! name sent by a client, decides who a caller is.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// Why a token was refused. The text is safe to show to clients.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("Missing authorization token")]
    Missing,
    #[error("Token has expired")]
    Expired,
    #[error("Invalid token")]
    Invalid,
    /// Issued before the user's password last changed.
    #[error("Token has been revoked")]
    Revoked,
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
    /// Binds the token to the password it was issued under (see
    /// [`Tokens::stamp`]); absent in tokens of earlier versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pwd: Option<String>,
    /// The session (refresh token) the token was issued for: it is good
    /// only while that session lasts, and its sockets close when it ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sid: Option<String>,
}

/// A verified token: whose it is, the password stamp and session it
/// carries, and when it expires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bearer {
    pub user: String,
    stamp: Option<String>,
    /// The session it was issued for; `None` in tokens of earlier versions
    /// (and in tokens an operator signs without one, such as the load
    /// generator's).
    pub session: Option<String>,
    /// Unix seconds after which it is no longer accepted.
    pub expires_at: i64,
}

/// What the store says of a token's user: their name as stored, their
/// stored password (hash), and whether the token's session still exists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Account {
    pub name: String,
    pub password: String,
    pub session_live: bool,
}

/// Issues and verifies access tokens with one shared secret.
#[derive(Clone)]
pub struct Tokens {
    encoding: EncodingKey,
    decoding: DecodingKey,
    validation: Validation,
    ttl: Duration,
    /// Keys the password stamps (see [`Tokens::stamp`]).
    stamp_key: std::sync::Arc<[u8]>,
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
            stamp_key: secret.into(),
            encoding: EncodingKey::from_secret(secret),
            decoding: DecodingKey::from_secret(secret),
            validation,
            ttl,
        }
    }

    /// An access token for `user`, whose stored password (hash) is
    /// `stored_password`, within `session`: it stays valid until it
    /// expires, the password changes or the session ends.
    pub fn issue(&self, user: &str, stored_password: &str, session: Option<&str>) -> String {
        let now = chrono::Utc::now().timestamp();
        let ttl = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2);
        let claims = Claims {
            sub: user.to_owned(),
            exp: now.saturating_add(ttl),
            iat: now,
            nbf: now,
            jti: crate::support::random_hex(16),
            kind: "access".to_owned(),
            pwd: Some(self.stamp(stored_password)),
            sid: session.map(str::to_owned),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &self.encoding)
            .unwrap_or_default()
    }

    /// The token's user and stamp, if its signature and times are valid.
    /// Whether it is still current is [`Self::check_current`]'s to say.
    pub fn verify(&self, token: &str) -> Result<Bearer, TokenError> {
        let data = jsonwebtoken::decode::<Claims>(token, &self.decoding, &self.validation)
            .map_err(|e| match e.kind() {
                jsonwebtoken::errors::ErrorKind::ExpiredSignature => TokenError::Expired,
                _ => TokenError::Invalid,
            })?;
        let claims = data.claims;
        if claims.kind != "access" || claims.sub.is_empty() {
            return Err(TokenError::Invalid);
        }
        // A token of a version before password stamps cannot be revoked:
        // it is good for one access-token lifetime from its issue, whatever
        // expiry it names (so none outlives the upgrade by longer).
        let mut expires_at = claims.exp;
        if claims.pwd.is_none() {
            let lifetime = i64::try_from(self.ttl.as_secs()).unwrap_or(i64::MAX / 2);
            expires_at = expires_at.min(claims.iat.saturating_add(lifetime));
            if expires_at <= chrono::Utc::now().timestamp() {
                return Err(TokenError::Expired);
            }
        }
        Ok(Bearer {
            user: claims.sub,
            stamp: claims.pwd,
            session: claims.sid,
            expires_at,
        })
    }

    /// The stamp of the user's stored password, when the token is still
    /// current: issued under that password, within a session that has not
    /// ended. [`TokenError::Revoked`] when the password changed since, or
    /// the session ended (a logout). A token without a stamp (an earlier
    /// version's) or without a session passes: [`Self::verify`] bounds its
    /// life.
    pub fn check_current(&self, bearer: &Bearer, account: &Account) -> Result<String, TokenError> {
        let current = self.stamp(&account.password);
        match &bearer.stamp {
            Some(stamp) if !bool::from(stamp.as_bytes().ct_eq(current.as_bytes())) => {
                Err(TokenError::Revoked)
            }
            _ if bearer.session.is_some() && !account.session_live => Err(TokenError::Revoked),
            _ => Ok(current),
        }
    }

    /// A keyed hash of a stored password (hash): what binds a token to the
    /// password it was issued under, without saying anything about it.
    pub fn stamp(&self, stored_password: &str) -> String {
        use hmac::Mac as _;
        let mut mac = match hmac::Hmac::<sha2::Sha256>::new_from_slice(&self.stamp_key) {
            Ok(mac) => mac,
            Err(_) => unreachable!("HMAC takes keys of any length"),
        };
        mac.update(b"komunikator password stamp\0");
        mac.update(stored_password.as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..12])
    }

    /// The user named by an `Authorization: Bearer <token>` header value.
    pub fn verify_bearer(&self, header: &str) -> Result<Bearer, TokenError> {
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
        assert_eq!(
            t.verify(&t.issue("alice", "h", None))
                .map(|b| b.user)
                .as_deref(),
            Ok("alice")
        );
    }

    #[test]
    fn token_signed_with_another_secret_is_invalid() {
        let other = Tokens::new(
            b"another secret, also long enough!",
            Duration::from_secs(900),
        );
        assert_eq!(
            tokens().verify(&other.issue("alice", "h", None)),
            Err(TokenError::Invalid)
        );
    }

    #[test]
    fn unsigned_token_is_invalid() {
        // {"alg":"none"} with the claims of a valid token and no signature.
        let t = tokens();
        let valid = t.issue("alice", "h", None);
        let claims = valid.split('.').nth(1).expect("claims part");
        let none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims}.");
        assert_eq!(t.verify(&none), Err(TokenError::Invalid));
    }

    #[test]
    fn bearer_prefix_is_required() {
        let t = tokens();
        let token = t.issue("bob", "h", None);
        assert_eq!(
            t.verify_bearer(&format!("Bearer {token}"))
                .map(|b| b.user)
                .as_deref(),
            Ok("bob")
        );
        assert_eq!(t.verify_bearer(&token), Err(TokenError::Invalid));
        assert_eq!(t.verify_bearer("Bearer "), Err(TokenError::Invalid));
    }

    #[test]
    fn a_token_is_revoked_when_the_password_changes() {
        let t = tokens();
        let bearer = t
            .verify(&t.issue("ann", "$argon2id$old", Some("s1")))
            .expect("valid");
        let account = |password: &str, session_live| Account {
            name: "ann".into(),
            password: password.into(),
            session_live,
        };
        assert_eq!(
            t.check_current(&bearer, &account("$argon2id$old", true)),
            Ok(t.stamp("$argon2id$old"))
        );
        assert_eq!(
            t.check_current(&bearer, &account("$argon2id$new", true)),
            Err(TokenError::Revoked)
        );
        // Its session ended (a logout): revoked too.
        assert_eq!(
            t.check_current(&bearer, &account("$argon2id$old", false)),
            Err(TokenError::Revoked)
        );
        assert_eq!(bearer.session.as_deref(), Some("s1"));
        // The stamp says nothing of the password it stands for.
        assert!(!t.stamp("hunter2").contains("hunter2"));
        assert_ne!(t.stamp("a"), t.stamp("b"));
    }

    /// Signs `claims` as the server would (for tokens of other versions).
    fn sign(t: &Tokens, claims: &serde_json::Value) -> String {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &t.encoding).expect("signed")
    }

    #[test]
    fn an_unstamped_token_lives_one_lifetime_from_its_issue() {
        let t = tokens();
        let now = chrono::Utc::now().timestamp();
        let claims = |iat: i64| {
            serde_json::json!({ "sub": "ann", "iat": iat, "nbf": iat, "exp": now + 86_400,
                                "jti": "j", "type": "access" })
        };
        // Issued a minute ago: good until one lifetime (900 s) after that.
        let fresh = t.verify(&sign(&t, &claims(now - 60))).expect("valid");
        assert_eq!(fresh.expires_at, now - 60 + 900);
        // Issued more than a lifetime ago: refused, however far its `exp`.
        assert_eq!(
            t.verify(&sign(&t, &claims(now - 901))),
            Err(TokenError::Expired)
        );
        // A stamped token keeps its own expiry.
        let stamped = t.verify(&t.issue("ann", "h", None)).expect("valid");
        assert!(
            (900..=901).contains(&(stamped.expires_at - now)),
            "{stamped:?}"
        );
    }
}
