//! Argon2 itself: hashing with today's parameters into a reused buffer,
//! and checking a password against a stored value (an argon2 PHC string
//! within cost bounds, or a legacy plaintext row).

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use subtle::ConstantTimeEq;

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

/// Argon2's working memory (19 MiB at the default parameters), allocated
/// once per pool thread and reused by every hash it computes. Allocated
/// afresh per hash, it ends up retained by the allocator once per thread
/// that ever hashed (about 434 MB after a flood of 400 registrations).
#[derive(Default)]
pub(crate) struct Memory(Vec<Block>);

impl Memory {
    /// The first `blocks` blocks, grown if a stored hash asks for more
    /// than the default parameters.
    fn blocks(&mut self, blocks: usize) -> &mut [Block] {
        if self.0.len() < blocks {
            self.0.resize(blocks, Block::new());
        }
        &mut self.0[..blocks]
    }

    /// Gives back what a costlier stored hash needed beyond the default
    /// parameters, so one such row does not keep a thread's memory high.
    fn shrink_to_default(&mut self) {
        let default = Params::default().block_count();
        if self.0.len() > default {
            self.0.truncate(default);
            self.0.shrink_to_fit();
        }
    }
}

fn internal(e: impl std::fmt::Display) -> PasswordError {
    PasswordError::Internal(e.to_string())
}

/// An argon2id PHC string of `password` with a fresh salt, computed in
/// `memory`.
pub(crate) fn hash_with(password: &[u8], memory: &mut Memory) -> Result<String, PasswordError> {
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

/// The largest argon2 cost a stored hash may name: beyond these, the row
/// is refused rather than computed (a corrupted or planted row naming
/// `m=4294967295` would otherwise allocate 4 TiB and abort the process).
const MAX_MEMORY_KIB: u32 = 256 * 1024;
const MAX_TIME_COST: u32 = 16;
const MAX_LANES: u32 = 8;

/// Checks `password` against a stored value: an argon2 PHC string (with
/// parameters within bounds), or a legacy plaintext row, compared in
/// constant time. A match on a plaintext row or on a hash weaker than
/// today's parameters asks for a rehash. A `$`-prefixed value is a hash
/// string, never plaintext: one this build cannot verify matches nothing.
pub(crate) fn verify_with(
    password: &str,
    stored: &str,
    memory: &mut Memory,
) -> Result<Verification, PasswordError> {
    if !stored.starts_with('$') {
        return if bool::from(password.as_bytes().ct_eq(stored.as_bytes())) {
            Ok(Verification::Valid {
                rehash: Some(hash_with(password.as_bytes(), memory)?),
            })
        } else {
            Ok(Verification::Invalid)
        };
    }
    let Some(stored_hash) = Stored::parse(stored) else {
        tracing::warn!("a stored password hash is not an argon2 hash within bounds: refused");
        return Ok(Verification::Invalid);
    };
    if !stored_hash.matches(password.as_bytes(), memory) {
        return Ok(Verification::Invalid);
    }
    let rehash = if stored_hash.weaker_than_today() {
        Some(hash_with(password.as_bytes(), memory)?)
    } else {
        None
    };
    Ok(Verification::Valid { rehash })
}

/// A stored argon2 hash whose parameters are within bounds.
struct Stored {
    algorithm: Algorithm,
    version: Version,
    params: Params,
    salt: Salt,
    expected: Output,
}

impl Stored {
    /// `None` for anything but an argon2 PHC string with a salt, an output
    /// and parameters within the bounds above.
    fn parse(stored: &str) -> Option<Self> {
        let hash = PasswordHash::new(stored).ok()?;
        let algorithm = Algorithm::try_from(hash.algorithm.as_str()).ok()?;
        let version = match hash.version.map(Version::try_from) {
            None => Version::default(),
            Some(Ok(version)) => version,
            Some(Err(_)) => return None,
        };
        let params = Params::try_from(&hash).ok()?;
        let within = params.m_cost() <= MAX_MEMORY_KIB
            && params.t_cost() <= MAX_TIME_COST
            && params.p_cost() <= MAX_LANES;
        if !within {
            return None;
        }
        Some(Self {
            algorithm,
            version,
            params,
            salt: hash.salt?,
            expected: hash.hash?,
        })
    }

    /// True when `password` hashes, with this hash's algorithm, parameters
    /// and salt, to its output (compared in constant time).
    fn matches(&self, password: &[u8], memory: &mut Memory) -> bool {
        let blocks = self.params.block_count();
        let argon2 = Argon2::new(self.algorithm, self.version, self.params.clone());
        let mut out = vec![0u8; self.expected.len()];
        let computed = argon2
            .hash_password_into_with_memory(
                password,
                self.salt.as_ref(),
                &mut out,
                memory.blocks(blocks),
            )
            .is_ok();
        memory.shrink_to_default();
        computed && bool::from(out.ct_eq(self.expected.as_bytes()))
    }

    /// True when the hash is weaker than one made today: another argon2
    /// variant or version, less memory times passes, or a short output.
    fn weaker_than_today(&self) -> bool {
        let today = Params::default();
        let cost = |p: &Params| u64::from(p.m_cost()) * u64::from(p.t_cost());
        self.algorithm != Algorithm::Argon2id
            || self.version != Version::V0x13
            || cost(&self.params) < cost(&today)
            || self.expected.len() < Params::DEFAULT_OUTPUT_LEN
    }
}

/// True when `stored` is an argon2id PHC string (not a legacy plaintext row).
pub fn is_argon2id_phc(stored: &str) -> bool {
    PasswordHash::new(stored).is_ok_and(|h| h.algorithm.as_str() == "argon2id")
}
