//! The Socket.IO gateway, black-box: authentication, the client events
//! (`join`, `leave`, `message`, `watchdog`), every error code, the server
//! events REST changes cause, private-room isolation, and (MariaDB) two
//! gateways sharing rooms. What the tests here share is below; what a
//! socket sends and expects again and again is on [`crate::sio::Socket`].

mod access;
mod catch_up;
mod connect;
mod error_codes;
mod gateways;
mod heartbeat;
mod identity;
mod limits;
mod messages;
mod rest_events;
mod rooms;
mod sessions;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{TestApp, User};
use crate::sio::{Auth, Socket, refusal};

/// A raw WebSocket connection to `/socket.io/`, before any Socket.IO packet.
type Raw =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Authenticates a raw socket; panics unless the gateway accepts it.
async fn authenticate(ws: &mut Raw, token: &str) {
    ws.send(Message::text(format!("40{}", json!({ "token": token }))))
        .await
        .expect("send");
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.starts_with("40") => return,
            Some(Ok(Message::Text(text))) if text.as_str() == "2" => {
                ws.send(Message::text("3")).await.expect("pong");
            }
            Some(Ok(_)) => {}
            other => panic!("no connect answer: {other:?}"),
        }
    }
}

/// Connects with `auth` and returns the connect error's message.
async fn refused(url: &str, auth: Auth<'_>) -> String {
    match Socket::connect(url, auth).await {
        Ok(_) => panic!("the connection was accepted"),
        Err(e) => e,
    }
}

/// The room's history (as `viewer`) once it holds at least `n` messages
/// (within 3 s): the persister writes asynchronously.
async fn history(app: &TestApp, viewer: &User, room: i64, n: usize) -> Vec<Value> {
    let query = format!("room_id={room}");
    crate::harness::eventually(Duration::from_secs(3), async || {
        let items = app.chat_history(&query, Some(viewer)).await.list();
        if items.len() >= n {
            Ok(items)
        } else {
            Err(format!("{} of {n} messages in the history", items.len()))
        }
    })
    .await
}

/// Sends messages until one to `room` is refused with 4 (within 5 s): a
/// removal from a room may land shortly after the event announcing it.
async fn until_join_failed(sock: &mut Socket, room: i64) {
    let probe = serde_json::json!({ "room_id": room, "message": "probe" });
    crate::harness::eventually(Duration::from_secs(5), async || {
        match sock.emit_with_ack("message", probe.clone()).await {
            ack if ack == serde_json::json!({ "error": "Join failed", "code": 4 }) => Ok(()),
            ack => Err(format!("the socket is still in room {room}: {ack}")),
        }
    })
    .await;
    assert_eq!(sock.expect("error").await, refusal("Join failed", 4));
}
