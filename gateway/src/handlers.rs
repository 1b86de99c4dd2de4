//! One handler per client event, matched exhaustively on [`ClientEvent`].
//! A refused event gets an `error` event (and a refused acknowledgement when
//! the client asked for one); the socket stays usable.

use std::sync::Arc;

use common::adapters::chat_log::{ChatLog, IdempotencyKey};
use common::adapters::store::Store;
use common::domain::events::{Events, ServerEvent, UserInRoom};
use common::domain::{ChatDraft, ChatId, RoomId, now};
use prometheus_client::metrics::histogram::Histogram;
use socketioxide::extract::SocketRef;
use tracing::Instrument;

use crate::acked::AckedIds;
use crate::catch_up::REPLAY_MAX;
use crate::client_event::{
    ClientEvent, Heartbeat, JoinRequest, MessageRequest, RefreshRequest, RoomRequest,
};
use crate::connect::{Connector, Refused};
use crate::drain::Drain;
use crate::fanout::Fanout;
use crate::heartbeats::Heartbeats;
use crate::outcome::{Ack, Outcome};
use crate::refusal::Refusal;
use crate::room::room_key;
use crate::session::{Session, session};

/// The client events' handlers, and what they act on.
pub struct Handlers {
    pub store: Store,
    pub chat_log: Arc<dyn ChatLog>,
    pub events: Events,
    pub fanout: Arc<Fanout>,
    pub heartbeats: Arc<Heartbeats>,
    /// Checks the tokens of `refresh`.
    pub connector: Arc<Connector>,
    pub acked: Arc<AckedIds>,
    /// Refuses chat messages once shutdown has begun.
    pub drain: Arc<Drain>,
    /// Time for the chat log to store a chat message.
    pub append_seconds: Histogram,
}

impl Handlers {
    /// Handles one event of a socket, in the socket's event order.
    pub async fn handle(&self, socket: &SocketRef, event: Result<ClientEvent, Refusal>) -> Outcome {
        let Some(session) = session(socket) else {
            return Outcome::Close(Refusal::SessionExpired);
        };
        // A token that ran out ends the socket at its next event (or at
        // the next expiry sweep), unless the event brings a fresh one.
        if !matches!(event, Ok(ClientEvent::Refresh(_)))
            && session.expired(chrono::Utc::now().timestamp())
        {
            return Outcome::Close(Refusal::SessionExpired);
        }
        let event = event.and_then(|event| {
            session.check_name(event.claimed_user())?;
            Ok(event)
        });
        let answer = match event {
            Err(refusal) => Err(refusal),
            Ok(ClientEvent::Join(request)) => self.join(socket, &session, request).await.map(Some),
            Ok(ClientEvent::Leave(request)) => {
                self.leave(socket, &session, request).await.map(|()| None)
            }
            Ok(ClientEvent::Refresh(request)) => {
                self.refresh(socket, &session, request).await.map(Some)
            }
            Ok(ClientEvent::Watchdog(heartbeat)) => {
                self.watchdog(&session, heartbeat).await.map(|()| None)
            }
            Ok(ClientEvent::Message(_)) if self.drain.draining() => Err(Refusal::Unavailable),
            Ok(ClientEvent::Message(request)) => {
                match self.begin_message(socket, &session, request).await {
                    // Stored in the background: the socket's next events (and
                    // messages) go on while this one waits for its acknowledgement.
                    Ok(stored) => {
                        return Outcome::Later(Box::pin(async { stored.await.map(Some) }));
                    }
                    Err(refusal) => Err(refusal),
                }
            }
        };
        Outcome::Now(answer)
    }

    /// Joins the socket to the room, after replaying what it missed when it
    /// says what it has (`last_chat_id`); the acknowledgement says how many
    /// messages were replayed and whether that was all of them.
    async fn join(
        &self,
        socket: &SocketRef,
        session: &Session,
        request: JoinRequest,
    ) -> Result<Ack, Refusal> {
        let room_id = request.room.room_id;
        // Joins spend from the socket's allowance: each one is an event to
        // every member of the room.
        session.take_message()?;
        self.check_access(session, room_id).await?;
        let key = room_key(room_id);
        let (replayed, complete) = match request.last_chat_id {
            None => {
                // In the room before subscribing: the sweeper never drops
                // the subscription of a room that has a local socket.
                socket.join(key.clone());
                if let Err(e) = self.fanout.subscribe(room_id).await {
                    socket.leave(key);
                    return Err(unavailable(e));
                }
                (0, true)
            }
            Some(after) => {
                // Live messages go through the catch-up from here on.
                socket.leave(key.clone());
                self.catch_up(socket, room_id, after).await?
            }
        };
        self.events
            .publish(ServerEvent::UserJoined(member(session, room_id)))
            .await;
        Ok(Ack::Joined {
            room_id,
            replayed,
            complete,
        })
    }

    /// A room missing, or private without a membership: refused (code 4).
    async fn check_access(&self, session: &Session, room_id: RoomId) -> Result<(), Refusal> {
        self.store
            .visible_room(room_id, Some(&session.user))
            .await
            .map_err(unavailable)?
            .map(drop)
            .ok_or(Refusal::JoinFailed)
    }

    /// Subscribes, reads what the socket missed after `after` from the chat
    /// log, replays it, and puts the socket in the room (see `catch_up`).
    async fn catch_up(
        &self,
        socket: &SocketRef,
        room_id: RoomId,
        after: ChatId,
    ) -> Result<(usize, bool), Refusal> {
        let seam = self
            .fanout
            .subscribe_catching_up(room_id, socket)
            .await
            .map_err(unavailable)?;
        let page = match self.chat_log.read_after(room_id, after, REPLAY_MAX).await {
            Ok(page) => page,
            Err(e) => {
                seam.release(socket.id);
                return Err(unavailable(e));
            }
        };
        let replayed = seam
            .finish(socket, &room_key(room_id), page.messages, after)
            .await?;
        Ok((replayed, page.complete))
    }

    async fn leave(
        &self,
        socket: &SocketRef,
        session: &Session,
        request: RoomRequest,
    ) -> Result<(), Refusal> {
        session.take_message()?;
        let key = room_key(request.room_id);
        if in_room(socket, &key) {
            socket.leave(key);
            self.events
                .publish(ServerEvent::UserLeft(member(session, request.room_id)))
                .await;
        }
        Ok(())
    }

    /// Checks a chat message and starts storing it, in the socket's event
    /// order; the returned future resolves once it is stored. At most
    /// [`Session::MAX_PENDING_APPENDS`] of a socket's messages are pending.
    async fn begin_message(
        &self,
        socket: &SocketRef,
        session: &Session,
        request: MessageRequest,
    ) -> Result<impl Future<Output = Result<Ack, Refusal>> + Send + 'static, Refusal> {
        let checked = async {
            if !in_room(socket, &room_key(request.room_id)) {
                return Err(Refusal::JoinFailed);
            }
            session.take_message()?;
            session.pending_append().await
        };
        let permit = checked
            .instrument(common::child_span!(
                "check message",
                chat.room_id = request.room_id,
                chat.message.length = request.message.chars().count(),
            ))
            .await?;
        let draft = ChatDraft {
            room_id: request.room_id,
            user_name: session.user.clone(),
            message: request.message,
            create_date: now(),
        };
        let started = std::time::Instant::now();
        let key = request
            .client_msg_id
            .as_deref()
            .map(|id| IdempotencyKey::new(&session.user, id));
        let pending = self
            .chat_log
            .begin_append(&draft, key.as_ref())
            .await
            .map_err(unavailable)?;
        let append_seconds = self.append_seconds.clone();
        let acked = self.acked.clone();
        Ok(async move {
            let chat_id = pending.await.map_err(unavailable)?;
            acked.acked(chat_id);
            drop(permit);
            append_seconds.observe(started.elapsed().as_secs_f64());
            Ok(Ack::Sent { chat_id })
        })
    }

    /// Takes a fresher access token for the socket: it stays open past the
    /// expiry of the token it connected with. The token must be good (not
    /// expired or revoked, its session alive) and name the socket's user.
    async fn refresh(
        &self,
        socket: &SocketRef,
        session: &Session,
        request: RefreshRequest,
    ) -> Result<Ack, Refusal> {
        let (user, grant) = self
            .connector
            .grant(&request.token)
            .await
            .map_err(|refused| {
                if refused == Refused::Unavailable {
                    Refusal::Unavailable
                } else {
                    Refusal::SessionExpired
                }
            })?;
        if !session.is(&user) {
            return Err(Refusal::Forbidden);
        }
        self.connector.watch_expiry(grant.expires_at, socket.id);
        session.renew(grant);
        Ok(Ack::Refreshed { ok: true })
    }

    async fn watchdog(&self, session: &Session, _heartbeat: Heartbeat) -> Result<(), Refusal> {
        self.heartbeats.beat(&session.user).await;
        Ok(())
    }
}

/// The payload of `user_joined`/`user_left`: the socket's user, spelled as
/// stored.
fn member(session: &Session, room_id: RoomId) -> UserInRoom {
    UserInRoom {
        user_name: session.user.clone(),
        room_id,
    }
}

/// Whether the socket is in the socketioxide room `key` (it joined it).
fn in_room(socket: &SocketRef, key: &str) -> bool {
    socket.rooms().iter().any(|r| r == key)
}

/// Logs a dependency failure once, here, and refuses the event with code 8.
fn unavailable(e: impl std::fmt::Display) -> Refusal {
    tracing::error!(error = %e, "event failed on a dependency");
    Refusal::Unavailable
}
