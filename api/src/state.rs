//! The state every handler shares: a cheap clone of concrete handles.

use std::ops::Deref;
use std::sync::Arc;

use common::auth::Tokens;
use common::bus::{Bus, Events};
use common::password::Passwords;
use common::presence::Presence;
use common::store::Store;

/// What the API needs from the rest of the process.
pub struct ApiDeps {
    pub store: Arc<dyn Store>,
    pub events: Events,
    /// Reads chat messages not stored yet (read your writes).
    pub bus: Arc<dyn Bus>,
    pub presence: Arc<dyn Presence>,
    pub tokens: Tokens,
    pub passwords: Passwords,
    /// The serialised public room list (see [`crate::room_list`]).
    pub room_list: crate::room_list::RoomList,
}

#[derive(Clone)]
pub struct AppState(Arc<ApiDeps>);

impl AppState {
    pub fn new(deps: ApiDeps) -> Self {
        Self(Arc::new(deps))
    }
}

impl Deref for AppState {
    type Target = ApiDeps;

    fn deref(&self) -> &ApiDeps {
        &self.0
    }
}
