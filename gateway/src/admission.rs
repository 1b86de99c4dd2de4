//! Which sockets may stay open: at most so many per user on this gateway
//! ([`UserSockets`]), and each only while its token lasts ([`Expiries`]).

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use common::support::sync::Locked;
use socketioxide::socket::Sid;

/// The open sockets of each user on this gateway, against a cap.
#[derive(Debug, Clone)]
pub struct UserSockets {
    /// Sockets per user name (by [`common::domain::user_name_key`]).
    open: Arc<Mutex<HashMap<String, usize>>>,
    /// 0: no cap.
    max: usize,
}

/// One open socket of a user, counted until dropped (with its session).
#[derive(Debug)]
pub struct UserSlot {
    sockets: UserSockets,
    user: String,
}

impl UserSockets {
    pub fn new(max: usize) -> Self {
        Self {
            open: Arc::default(),
            max,
        }
    }

    /// A slot for one more socket of `user`; `None` when they hold `max`.
    pub fn enter(&self, user: &str) -> Option<UserSlot> {
        let key = common::domain::user_name_key(user);
        let mut open = self.open.locked();
        let count = open.entry(key.clone()).or_insert(0);
        if self.max > 0 && *count >= self.max {
            return None;
        }
        *count += 1;
        Some(UserSlot {
            sockets: self.clone(),
            user: key,
        })
    }
}

impl Drop for UserSlot {
    fn drop(&mut self) {
        let mut open = self.sockets.open.locked();
        if let Some(count) = open.get_mut(&self.user) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.user);
            }
        }
    }
}

/// When each socket's token expires, earliest first. A socket renewed
/// (`refresh`) is entered again with its new expiry; its older entry, when
/// due, finds it renewed and is dropped (as is the entry of a socket gone).
#[derive(Debug, Default)]
pub struct Expiries {
    due: Mutex<BTreeSet<(i64, Sid)>>,
}

impl Expiries {
    /// Watches `sid`, whose token expires at `at` (Unix seconds).
    pub fn watch(&self, at: i64, sid: Sid) {
        self.due.locked().insert((at, sid));
    }

    /// The sockets whose entries are due at `now`: each to be checked
    /// against what its token grants now.
    pub fn due(&self, now: i64) -> Vec<Sid> {
        let mut due = self.due.locked();
        let mut sids = Vec::new();
        while let Some(&(at, sid)) = due.first() {
            if at > now {
                break;
            }
            due.pop_first();
            sids.push(sid);
        }
        sids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_holds_at_most_max_sockets_until_one_closes() {
        let sockets = UserSockets::new(2);
        let a = sockets.enter("Ann").expect("first");
        let _b = sockets.enter("ann").expect("second, any spelling");
        assert!(sockets.enter("ANN").is_none());
        assert!(sockets.enter("bob").is_some(), "others are not affected");
        drop(a);
        assert!(sockets.enter("ann").is_some());
        let unlimited = UserSockets::new(0);
        let held: Vec<_> = (0..100).filter_map(|_| unlimited.enter("ann")).collect();
        assert_eq!(held.len(), 100);
    }

    #[test]
    fn expiries_come_due_in_order() {
        let expiries = Expiries::default();
        let (a, b) = (Sid::new(), Sid::new());
        expiries.watch(20, a);
        expiries.watch(10, b);
        assert_eq!(expiries.due(9), Vec::<Sid>::new());
        assert_eq!(expiries.due(15), vec![b]);
        assert_eq!(expiries.due(30), vec![a]);
        assert_eq!(expiries.due(30), Vec::<Sid>::new());
    }
}
