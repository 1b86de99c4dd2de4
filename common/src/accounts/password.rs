//! Password hashing: argon2id (OWASP parameters: m=19 MiB, t=2, p=1) on a
//! fixed pool of hashing threads, each reusing one memory buffer, so a
//! login flood queues here instead of starving the async runtime, and costs
//! the pool's memory however long it lasts; plus the one-time upgrade of
//! legacy plaintext rows.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use tokio::sync::oneshot;

use crate::accounts::argon::{Memory, hash_with, verify_with};
use crate::support::sync::Locked;

pub use crate::accounts::argon::{PasswordError, Verification, is_argon2id_phc};

/// One hashing job, run on a pool thread with that thread's memory.
type Job = Box<dyn FnOnce(&mut Memory) + Send>;

/// The hashing pool: `concurrency` threads, and at most `max_queue` jobs
/// waiting or running before new ones are refused ([`PasswordError::Busy`]).
/// Clones share the pool; its threads end when the last clone is dropped.
#[derive(Debug, Clone)]
pub struct Passwords {
    jobs: mpsc::Sender<Job>,
    /// Hashes computed (registrations, logins, password changes).
    computed: prometheus_client::metrics::counter::Counter,
    queued: Arc<AtomicUsize>,
    max_queue: usize,
    /// A valid hash of a random password: verified against when the user
    /// does not exist, so a login costs the same either way.
    dummy: Arc<str>,
}

impl Passwords {
    pub fn new(concurrency: usize, max_queue: usize) -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        let queue = Arc::new(Mutex::new(queue));
        let mut memory = Memory::default();
        let dummy =
            hash_with(crate::support::random_hex(16).as_bytes(), &mut memory).unwrap_or_default();
        for i in 0..concurrency.max(1) {
            let queue = queue.clone();
            let mut memory = Memory::default();
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job.
                        let next = queue.locked().recv();
                        match next {
                            Ok(job) => job(&mut memory),
                            Err(_) => return,
                        }
                    }
                });
            if let Err(e) = spawned {
                tracing::error!(error = %e, "cannot start a password hashing thread");
            }
        }
        Self {
            jobs,
            computed: prometheus_client::metrics::counter::Counter::default(),
            queued: Arc::new(AtomicUsize::new(0)),
            max_queue,
            dummy: dummy.into(),
        }
    }

    /// Counts the hashes computed in `registry` (`password_hashes`).
    pub fn register(self, registry: &mut prometheus_client::registry::Registry) -> Self {
        registry.register(
            "password_hashes",
            "Argon2id hashes computed (registrations, logins, password changes)",
            self.computed.clone(),
        );
        self
    }

    pub async fn hash(&self, password: String) -> Result<String, PasswordError> {
        self.run(move |memory| hash_with(password.as_bytes(), memory))
            .await?
    }

    pub async fn verify(
        &self,
        password: String,
        stored: String,
    ) -> Result<Verification, PasswordError> {
        self.run(move |memory| verify_with(&password, &stored, memory))
            .await?
    }

    /// Spends the same work as a real verification (a login for an unknown
    /// user must not answer faster than one with a wrong password).
    pub async fn verify_unknown_user(&self, password: String) -> Result<(), PasswordError> {
        let dummy = self.dummy.clone();
        self.run(move |memory| {
            let _ = verify_with(&password, &dummy, memory);
        })
        .await
    }

    /// Runs `job` on a pool thread; `Busy` when `max_queue` jobs are
    /// already waiting or running.
    async fn run<T: Send + 'static>(
        &self,
        job: impl FnOnce(&mut Memory) -> T + Send + 'static,
    ) -> Result<T, PasswordError> {
        let _slot = QueueSlot::take(&self.queued, self.max_queue)?;
        self.computed.inc();
        let (done, result) = oneshot::channel();
        let job: Job = Box::new(move |memory| {
            let _ = done.send(job(memory));
        });
        self.jobs
            .send(job)
            .map_err(|_| PasswordError::Internal("the hashing threads are gone".into()))?;
        result
            .await
            .map_err(|_| PasswordError::Internal("a hashing thread failed".into()))
    }
}

/// A slot in the bounded queue, released on drop.
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

#[cfg(test)]
mod tests {
    use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
    use argon2::{Algorithm, Argon2, Params, Version};

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

    /// A stored hash of `password` with the given parameters.
    fn stored_with(algorithm: Algorithm, params: Params, password: &str) -> String {
        let salt = [7u8; 16];
        let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
        Argon2::new(algorithm, Version::V0x13, params.clone())
            .hash_password_into(password.as_bytes(), &salt, &mut out)
            .expect("hash");
        PasswordHash {
            algorithm: algorithm.ident(),
            version: Some(Version::V0x13.into()),
            params: ParamsString::try_from(&params).expect("params"),
            salt: Some(Salt::new(&salt).expect("salt")),
            hash: Some(Output::new(&out).expect("output")),
        }
        .to_string()
    }

    #[tokio::test]
    async fn weaker_hashes_verify_and_yield_a_rehash() {
        let p = Passwords::new(1, 8);
        let weak = Params::new(1024, 1, 1, None).expect("params");
        for stored in [
            stored_with(Algorithm::Argon2id, weak.clone(), "pw"),
            stored_with(Algorithm::Argon2i, Params::default(), "pw"),
        ] {
            match p.verify("pw".into(), stored.clone()).await.expect("verify") {
                Verification::Valid { rehash: Some(h) } => {
                    assert!(h.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"), "{h}");
                }
                other => panic!("{stored}: expected a rehash, got {other:?}"),
            }
            assert_eq!(
                p.verify("wrong".into(), stored).await.expect("verify"),
                Verification::Invalid
            );
        }
    }

    #[tokio::test]
    async fn hashes_beyond_the_cost_bounds_are_refused_without_computing() {
        let p = Passwords::new(1, 8);
        let valid = p.hash("pw".into()).await.expect("hash");
        for (from, to) in [
            ("m=19456", "m=4294967295"),
            ("t=2", "t=1000"),
            ("p=1", "p=255"),
        ] {
            let planted = valid.replace(from, to);
            assert_ne!(planted, valid);
            assert_eq!(
                p.verify("pw".into(), planted).await.expect("verify"),
                Verification::Invalid
            );
        }
    }

    #[tokio::test]
    async fn a_dollar_prefixed_value_is_never_plaintext() {
        let p = Passwords::new(1, 8);
        let pbkdf2 = "$pbkdf2-sha256$29000$N2ZMrqbFmXCx$9kbz8SgBUWpIwCvd8eGIwg";
        assert_eq!(
            p.verify(pbkdf2.into(), pbkdf2.into())
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
