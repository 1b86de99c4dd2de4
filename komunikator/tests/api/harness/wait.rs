//! Waiting on a condition: the one polling loop of the suite.

use std::time::Duration;

use tokio::time::Instant;

/// How often a condition is checked again.
const POLL: Duration = Duration::from_millis(20);

/// Checks `check` until it is `Ok` and returns its value; fails the test
/// once `within` has passed, with the last `Err`, which says what was seen
/// instead. `within` is derived from the timeouts of what is waited for, as
/// generous as a loaded machine needs: it bounds a failure, not a success.
pub async fn eventually<T>(
    within: Duration,
    mut check: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    loop {
        match check().await {
            Ok(value) => return value,
            Err(seen) if Instant::now() >= deadline => panic!("not within {within:?}: {seen}"),
            Err(_) => tokio::time::sleep(POLL).await,
        }
    }
}
