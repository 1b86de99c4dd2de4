//! One policy for a poisoned mutex. A `std::sync::Mutex` is poisoned when a
//! thread panicked while holding it; every lock in the services guards
//! small bookkeeping (queues, counts, slots) whose state stays usable, and
//! refusing all later work over it (every connection "too many pending",
//! every event dropped) would turn one bug into an outage. So a poisoned
//! lock is logged and taken as it is, everywhere, the way `parking_lot`'s
//! mutexes (which have no poisoning) behave.

use std::sync::{Mutex, MutexGuard};

pub trait Locked<T> {
    /// Locks, recovering from a poisoned lock (logged, then cleared).
    fn locked(&self) -> MutexGuard<'_, T>;
}

impl<T> Locked<T> for Mutex<T> {
    #[track_caller]
    fn locked(&self) -> MutexGuard<'_, T> {
        self.lock().unwrap_or_else(|poisoned| {
            tracing::error!(
                at = %std::panic::Location::caller(),
                "a lock was poisoned by a panic; its state is used as it is"
            );
            self.clear_poison();
            poisoned.into_inner()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_poisoned_lock_is_taken_as_it_is_and_cleared() {
        let mutex = std::sync::Arc::new(Mutex::new(1));
        let held = mutex.clone();
        let _ = std::thread::spawn(move || {
            let mut guard = held.lock().expect("first lock");
            *guard = 2;
            panic!("poisoning the lock");
        })
        .join();
        assert!(mutex.is_poisoned());
        assert_eq!(*mutex.locked(), 2);
        assert!(!mutex.is_poisoned());
    }
}
