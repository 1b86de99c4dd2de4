//! Password hashing: argon2id (OWASP parameters: m=19 MiB, t=2, p=1) on a
//! bounded set of blocking threads, so a login flood queues here instead of
//! starving the async runtime; plus the one-time upgrade of legacy plaintext
//! rows.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use argon2::password_hash::phc::PasswordHash;
use argon2::{Argon2, PasswordHasher, PasswordVerifier};
use subtle::ConstantTimeEq;
use tokio::sync::Semaphore;

#[derive(Debug, thiserror::Error)]
pub enum PasswordError {
    /// More hashing jobs are queued than the configured bound.
    #[error("too many password operations in progress")]
    Busy,
    #[error("password hashing failed: {0}")]
    Internal(String),
}

/// The result of checking a password against a stored value.
#[derive(Debug, PartialEq, Eq)]
pub enum Verification {
    Invalid,
    /// The password matches. `rehash` holds a fresh argon2id PHC string when
    /// the stored value should be replaced (a legacy plaintext row).
    Valid {
        rehash: Option<String>,
    },
}

/// Hashes and verifies passwords off the async runtime, at most `concurrency`
/// at a time and with at most `max_queue` callers waiting.
#[derive(Debug, Clone)]
pub struct Passwords {
    permits: Arc<Semaphore>,
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    /// A valid hash of a random password: unknown users are verified against it
    /// so that a login for a missing user costs as much as one for a real user.
    dummy: Arc<str>,
}

impl Passwords {
    pub fn new(concurrency: usize, max_queue: usize) -> Self {
        let dummy = hash_now(crate::random_hex(16).as_bytes()).unwrap_or_default();
        Self {
            permits: Arc::new(Semaphore::new(concurrency.max(1))),
            queued: Arc::new(AtomicUsize::new(0)),
            max_queue,
            dummy: dummy.into(),
        }
    }

    /// An argon2id PHC string for `password`.
    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        self.run(move || hash_now(password.as_bytes())).await?
    }

    /// Checks `password` against a stored value: an argon2 PHC string, or the
    /// plaintext an older server stored.
    pub async fn verify(
        &self,
        password: String,
        stored: String,
    ) -> Result<Verification, PasswordError> {
        self.run(move || verify_now(&password, &stored)).await?
    }

    /// Spends the cost of one verification and always fails: used when the
    /// user does not exist, so timing does not reveal which names exist.
    pub async fn verify_unknown_user(&self, password: String) -> Result<(), PasswordError> {
        let dummy = self.dummy.clone();
        self.run(move || {
            let _ = Argon2::default().verify_password(password.as_bytes(), &*dummy);
        })
        .await
    }

    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let queued = QueueSlot::take(&self.queued, self.max_queue)?;
        let permit = self
            .permits
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| PasswordError::Internal(e.to_string()))?;
        drop(queued);
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            job()
        })
        .await
        .map_err(|e| PasswordError::Internal(e.to_string()))
    }
}

/// A place in the bounded queue of callers waiting for a hashing thread.
struct QueueSlot<'a>(&'a AtomicUsize);

impl<'a> QueueSlot<'a> {
    fn take(queued: &'a AtomicUsize, max: usize) -> Result<Self, PasswordError> {
        if queued.fetch_add(1, Ordering::AcqRel) >= max {
            queued.fetch_sub(1, Ordering::AcqRel);
            return Err(PasswordError::Busy);
        }
        Ok(Self(queued))
    }
}

impl Drop for QueueSlot<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

fn hash_now(password: &[u8]) -> Result<String, PasswordError> {
    Argon2::default()
        .hash_password(password)
        .map(|h| h.to_string())
        .map_err(|e| PasswordError::Internal(e.to_string()))
}

fn verify_now(password: &str, stored: &str) -> Result<Verification, PasswordError> {
    match PasswordHash::new(stored) {
        Ok(hash) => Ok(
            match Argon2::default().verify_password(password.as_bytes(), &hash) {
                Ok(()) => Verification::Valid { rehash: None },
                Err(_) => Verification::Invalid,
            },
        ),
        // Not a PHC string: a plaintext row from an older server. Compare in
        // constant time, and hand back a hash to replace it with.
        Err(_) => {
            if bool::from(password.as_bytes().ct_eq(stored.as_bytes())) {
                Ok(Verification::Valid {
                    rehash: Some(hash_now(password.as_bytes())?),
                })
            } else {
                Ok(Verification::Invalid)
            }
        }
    }
}

/// True when `stored` is an argon2id PHC string (not a legacy plaintext row).
pub fn is_argon2id_phc(stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| h.algorithm.as_str() == "argon2id")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hash_is_argon2id_with_owasp_parameters_and_verifies() {
        let p = Passwords::new(1, 8);
        let hash = p.hash("hunter2".into()).await.expect("hash");
        assert!(
            hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
            "{hash}"
        );
        assert!(is_argon2id_phc(&hash));
        assert_eq!(
            p.verify("hunter2".into(), hash.clone())
                .await
                .expect("verify"),
            Verification::Valid { rehash: None }
        );
        assert_eq!(
            p.verify("hunter3".into(), hash).await.expect("verify"),
            Verification::Invalid
        );
    }

    #[tokio::test]
    async fn legacy_plaintext_matches_once_and_yields_a_rehash() {
        let p = Passwords::new(1, 8);
        match p
            .verify("old-secret".into(), "old-secret".into())
            .await
            .expect("verify")
        {
            Verification::Valid { rehash: Some(h) } => assert!(is_argon2id_phc(&h)),
            other => panic!("expected a rehash, got {other:?}"),
        }
        assert_eq!(
            p.verify("wrong".into(), "old-secret".into())
                .await
                .expect("verify"),
            Verification::Invalid
        );
    }

    #[tokio::test]
    async fn queue_beyond_its_bound_is_refused() {
        let queued = AtomicUsize::new(0);
        let first = QueueSlot::take(&queued, 1).expect("first slot");
        assert!(matches!(
            QueueSlot::take(&queued, 1),
            Err(PasswordError::Busy)
        ));
        drop(first);
        assert!(QueueSlot::take(&queued, 1).is_ok());
    }
}
