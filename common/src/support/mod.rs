//! Small helpers every part uses: error causes, the mutex policy,
//! configuration problems, the data directory, random secrets.

pub mod cause;
pub mod data_dir;
pub mod problems;
pub mod sync;

/// `bytes` random bytes from the OS, hex encoded.
pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    // The OS random source does not fail on supported platforms; if it ever
    // did, a zeroed buffer must not pass silently as a secret.
    if let Err(e) = getrandom::fill(&mut buf) {
        panic!("the operating system's random source failed: {e}");
    }
    hex::encode(buf)
}
