//! Catch-up on join (docs/protocol.md, "Ordering, delivery and catch-up"): a socket
//! first gets the room's messages it missed, from the chat log, then the
//! live ones, with no gap and no duplicate at the seam.
//!
//! The room is subscribed before the log is read, so every message is in
//! the read, or arrives live, or both. While the socket replays, it is not
//! in the room's socket group yet: the room's forwarding task holds the
//! live chat messages for it in its [`Seam`]. Then, under the seam's lock
//! (which the forwarding task takes for every chat message), the held ones
//! newer than what was replayed are sent and the socket joins the group:
//! each live message reaches it either held or through the group, once.
//! A message the forwarding task still held back for ordering when the
//! socket joined may have been replayed too: the seam keeps the socket's
//! floor until the task has sent past it.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::domain::NEW_MESSAGE;
use common::domain::{ChatId, ChatMessage};
use common::support::sync::Locked;
use socketioxide::extract::SocketRef;
use socketioxide::socket::Sid;
use socketioxide::{SendError, SocketError};

use crate::refusal::Refusal;
use crate::session::Session;

/// Most messages one catch-up replays: the newest of those missed.
pub const REPLAY_MAX: u32 = 1000;

/// How long a room stays subscribed for a socket that just caught up,
/// however many sockets it has: well past the sequencer's reorder window,
/// the longest the forwarding task holds a message back.
const FLOOR_KEPT: Duration = Duration::from_secs(2);

/// Longest a replay waits for room in a socket's send buffer, per message,
/// before the socket counts as not reading.
const REPLAY_PATIENCE: Duration = Duration::from_secs(5);

/// The sockets of one room that are catching up, or have just caught up.
#[derive(Default)]
pub struct Seam {
    state: Mutex<SeamState>,
}

#[derive(Default)]
struct SeamState {
    catching_up: Vec<CatchingUp>,
    /// Sockets that joined the group after a replay up to this `chat_id`.
    /// A message the room's forwarding task still held back for ordering
    /// (see `sequencer`), or read from the log after it was lost live, may
    /// be one they were replayed: it is not sent to them again. Forgotten
    /// once a later message went out (the task sends in `chat_id` order).
    floors: Vec<Floor>,
}

struct Floor {
    sid: Sid,
    chat_id: ChatId,
    since: Instant,
}

impl Floor {
    /// Still needed for a message with this id.
    fn covers(&self, chat_id: ChatId) -> bool {
        chat_id <= self.chat_id
    }
}

struct CatchingUp {
    socket: SocketRef,
    /// Live chat messages that arrived meanwhile, in `chat_id` order.
    held: Vec<ChatMessage>,
    /// The room was deleted, or this socket's user kicked, meanwhile.
    refused: bool,
}

impl Seam {
    /// Starts holding the room's live chat messages for `socket`.
    pub fn hold_for(&self, socket: &SocketRef) {
        self.state.locked().catching_up.push(CatchingUp {
            socket: socket.clone(),
            held: Vec::new(),
            refused: false,
        });
    }

    /// True while some socket of the room is catching up, or has a fresh
    /// floor: the room's subscription must stay.
    pub fn is_busy(&self) -> bool {
        let state = self.state.locked();
        !state.catching_up.is_empty() || state.floors.iter().any(|f| f.since.elapsed() < FLOOR_KEPT)
    }

    /// Stops holding for `socket` (its catch-up failed).
    pub fn release(&self, sid: Sid) {
        self.state
            .locked()
            .catching_up
            .retain(|c| c.socket.id != sid);
    }

    /// Delivers one live chat message: `emit` sends it to the room's group
    /// but for the sockets it names (already replayed it); the sockets
    /// catching up hold it. One lock for both, see the module.
    pub fn deliver(&self, message: &ChatMessage, emit: impl FnOnce(&[Sid])) {
        let mut state = self.state.locked();
        if state.floors.is_empty() {
            emit(&[]);
        } else {
            state.floors.retain(|f| f.covers(message.chat_id));
            let replayed: Vec<Sid> = state.floors.iter().map(|f| f.sid).collect();
            emit(&replayed);
        }
        for c in state.catching_up.iter_mut() {
            c.held.push(message.clone());
        }
    }

    /// The sockets catching up whose session `matches` may no longer join
    /// (the room was deleted, its user kicked or gone, the room private):
    /// they do not.
    pub fn refuse(&self, matches: impl Fn(&Session) -> bool) {
        for c in self.state.locked().catching_up.iter_mut() {
            let session = c.socket.extensions.get::<std::sync::Arc<Session>>();
            if session.is_none_or(|s| matches(&s)) {
                c.refused = true;
            }
        }
    }

    /// The sockets catching up now.
    pub fn catching_up(&self) -> Vec<SocketRef> {
        let state = self.state.locked();
        state.catching_up.iter().map(|c| c.socket.clone()).collect()
    }

    /// Sends `replay` (messages after `after`, oldest first), then the held
    /// messages newer than the last one sent, and puts the socket in the
    /// room's group `key`. Returns how many of `replay` were sent.
    pub async fn finish(
        &self,
        socket: &SocketRef,
        key: &str,
        replay: Vec<ChatMessage>,
        after: ChatId,
    ) -> Result<usize, Refusal> {
        let mut last = after;
        let mut replayed = 0;
        for message in replay.iter().filter(|m| m.chat_id > after) {
            if let Err(refusal) = send_patiently(socket, message).await {
                self.release(socket.id);
                return Err(refusal);
            }
            last = message.chat_id;
            replayed += 1;
        }
        self.join_group(socket, key, last)?;
        Ok(replayed)
    }

    /// The seam itself: under the lock, the held messages after `last` go
    /// out and the socket joins the group.
    fn join_group(&self, socket: &SocketRef, key: &str, last: ChatId) -> Result<(), Refusal> {
        let mut state = self.state.locked();
        let i = state
            .catching_up
            .iter()
            .position(|c| c.socket.id == socket.id)
            .ok_or(Refusal::Unavailable)?;
        let mine = state.catching_up.swap_remove(i);
        if mine.refused {
            return Err(Refusal::JoinFailed);
        }
        let replayed_up_to = last;
        let mut last = last;
        for message in mine.held.iter().filter(|m| m.chat_id > replayed_up_to) {
            // Few, and the buffer has just had room for the replay: a full
            // one here is a client that stopped reading (the fan-out's rule).
            if socket.emit(NEW_MESSAGE, message).is_err() {
                return Err(Refusal::Unavailable);
            }
            last = message.chat_id;
        }
        state.floors.push(Floor {
            sid: socket.id,
            chat_id: last,
            since: Instant::now(),
        });
        socket.join(key.to_owned());
        Ok(())
    }
}

/// Sends one replayed message, waiting while the socket's send buffer is
/// full (a replay is a burst; the client reads it at its own pace).
async fn send_patiently(socket: &SocketRef, message: &ChatMessage) -> Result<(), Refusal> {
    let deadline = tokio::time::Instant::now() + REPLAY_PATIENCE;
    loop {
        match socket.emit(NEW_MESSAGE, message) {
            Ok(()) => return Ok(()),
            Err(SendError::Socket(SocketError::InternalChannelFull))
                if tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(_) => return Err(Refusal::Unavailable),
        }
    }
}
