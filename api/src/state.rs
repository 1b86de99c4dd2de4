//! The state every handler shares: a cheap clone of concrete handles.

use std::ops::Deref;
use std::sync::Arc;

use common::accounts::password::Passwords;
use common::accounts::tokens::Tokens;
use common::adapters::chat_log::ChatLog;
use common::adapters::presence::Presence;
use common::adapters::store::Store;
use common::domain::events::Events;

/// What the API needs from the rest of the process.
pub struct Deps {
    pub store: Store,
    /// Announces committed changes to the sockets.
    pub events: Events,
    /// Reads chat messages not stored yet (read your writes).
    pub chat_log: Arc<dyn ChatLog>,
    pub presence: Arc<dyn Presence>,
    pub tokens: Tokens,
    pub passwords: Passwords,
    /// The serialised public room list (see [`crate::room_list`]).
    pub room_list: crate::room_list::RoomList,
    /// Failed logins and password checks, wrong and conflicting access
    /// keys (docs/protocol.md, "Accounts and abuse").
    pub throttle: Arc<dyn common::adapters::throttle::Throttle>,
    /// Registrations per client address.
    pub registrations: Arc<dyn common::adapters::throttle::Throttle>,
    /// Peers whose `X-Forwarded-For` names the client (the load balancers).
    pub trusted_proxies: Vec<common::edge::proxy::ProxyNet>,
    /// How long a session lives without being refreshed.
    pub refresh_ttl: std::time::Duration,
}

#[derive(Clone)]
pub struct AppState(Arc<Deps>);

impl AppState {
    pub fn new(deps: Deps) -> Self {
        Self(Arc::new(deps))
    }
}

impl Deref for AppState {
    type Target = Deps;

    fn deref(&self) -> &Deps {
        &self.0
    }
}
