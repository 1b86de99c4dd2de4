//! Password hashing: argon2id (OWASP parameters: m=19 MiB, t=2, p=1) on a
//! fixed pool of hashing threads, each reusing one memory buffer, so a
//! login flood queues here instead of starving the async runtime, and costs
//! the pool's memory however long it lasts; plus the one-time upgrade of
//! legacy plaintext rows.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;
use tokio::sync::oneshot;

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

/// One hashing job, run on a pool thread with that thread's memory.
type Job = Box<dyn FnOnce(&mut Memory) + Send>;

/// Argon2's working memory (19 MiB at the default parameters), allocated
/// once per pool thread and reused by every hash it computes. Allocated
/// afresh per hash, it ends up retained by the allocator once per thread
/// that ever hashed (about 434 MB after a flood of 400 registrations).
struct Memory(Vec<Block>);

impl Memory {
    /// The first `blocks` blocks, grown if a stored hash asks for more
    /// than the default parameters.
    fn blocks(&mut self, blocks: usize) -> &mut [Block] {
        if self.0.len() < blocks {
            self.0.resize(blocks, Block::new());
        }
        &mut self.0[..blocks]
    }
}

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
        let mut memory = Memory(Vec::new());
        let dummy = hash_with(crate::random_hex(16).as_bytes(), &mut memory).unwrap_or_default();
        for i in 0..concurrency.max(1) {
            let queue = queue.clone();
            let mut memory = Memory(Vec::new());
            let spawned = std::thread::Builder::new()
                .name(format!("argon2-{i}"))
                .spawn(move || {
                    loop {
                        // The lock is held only while waiting for the next job.
                        let next = queue.lock().map(|q| q.recv());
                        match next {
                            Ok(Ok(job)) => job(&mut memory),
                            _ => return,
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

fn internal(e: impl std::fmt::Display) -> PasswordError {
    PasswordError::Internal(e.to_string())
}

/// An argon2id PHC string of `password` with a fresh salt, computed in
/// `memory`.
fn hash_with(password: &[u8], memory: &mut Memory) -> Result<String, PasswordError> {
    let argon2 = Argon2::default();
    let params = argon2.params().clone();
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(internal)?;
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    argon2
        .hash_password_into_with_memory(
            password,
            &salt,
            &mut out,
            memory.blocks(params.block_count()),
        )
        .map_err(internal)?;
    let hash = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(internal)?,
        salt: Some(Salt::new(&salt).map_err(internal)?),
        hash: Some(Output::new(&out).map_err(internal)?),
    };
    Ok(hash.to_string())
}

/// Checks `password` against a stored value: an argon2 PHC string (with
/// whatever parameters it names), or a legacy plaintext row, compared in
/// constant time and upgraded.
fn verify_with(
    password: &str,
    stored: &str,
    memory: &mut Memory,
) -> Result<Verification, PasswordError> {
    match PasswordHash::new(stored) {
        Ok(hash) => Ok(if matches_hash(password.as_bytes(), &hash, memory) {
            Verification::Valid { rehash: None }
        } else {
            Verification::Invalid
        }),
        Err(_) => {
            if bool::from(password.as_bytes().ct_eq(stored.as_bytes())) {
                Ok(Verification::Valid {
                    rehash: Some(hash_with(password.as_bytes(), memory)?),
                })
            } else {
                Ok(Verification::Invalid)
            }
        }
    }
}

/// True when `password` hashes, with `hash`'s algorithm, parameters and
/// salt, to `hash`'s output (compared in constant time).
fn matches_hash(password: &[u8], hash: &PasswordHash, memory: &mut Memory) -> bool {
    let (Some(salt), Some(expected)) = (&hash.salt, &hash.hash) else {
        return false;
    };
    let (Ok(algorithm), Ok(params)) = (
        Algorithm::try_from(hash.algorithm.as_str()),
        Params::try_from(hash),
    ) else {
        return false;
    };
    let version = match hash.version.map(Version::try_from) {
        None => Version::default(),
        Some(Ok(version)) => version,
        Some(Err(_)) => return false,
    };
    let blocks = params.block_count();
    let argon2 = Argon2::new(algorithm, version, params);
    let mut out = vec![0u8; expected.len()];
    argon2
        .hash_password_into_with_memory(password, salt.as_ref(), &mut out, memory.blocks(blocks))
        .is_ok()
        && bool::from(out.ct_eq(expected.as_bytes()))
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
