//! What a socket may cost a gateway (docs/protocol.md, "Accounts and abuse"):
//! no WebSocket message or frame over the payload limit is read, whether
//! or not the socket authenticated; sockets count against their client
//! address's cap until they authenticate (upgrades included) and are
//! closed if they do not within the connect timeout; and one user holds a
//! bounded number of sockets.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use super::{Raw, authenticate, refused};
use crate::harness::{Backend, Options, Service, TestApp};
use crate::sio::{Auth, Socket, WAIT, refusal};

/// The payload limit of every transport: the REST body limit.
const LIMIT: usize = 64 * 1024;

/// How a handshake over the cap is refused: a connection beyond it is
/// closed at once (reset), a handshake on a connection that got in is
/// answered 429.
#[derive(Debug, PartialEq, Eq)]
enum Refused {
    Reset,
    Status(u16),
}

/// Opens an Engine.IO session over WebSocket and reads its open packet.
async fn open_raw(base: &str) -> Result<Raw, Refused> {
    use tokio_tungstenite::tungstenite::Error;
    let url = format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        base.replace("http://", "ws://")
    );
    let mut ws = match tokio_tungstenite::connect_async(url).await {
        Ok((ws, _)) => ws,
        Err(Error::Http(res)) => return Err(Refused::Status(res.status().as_u16())),
        Err(Error::Io(_) | Error::ConnectionClosed | Error::AlreadyClosed | Error::Protocol(_)) => {
            return Err(Refused::Reset);
        }
        Err(e) => panic!("handshake failed: {e}"),
    };
    match ws.next().await {
        Some(Ok(Message::Text(open))) if open.starts_with('0') => Ok(ws),
        other => panic!("no open packet: {other:?}"),
    }
}

/// True once the server closed `ws` (within `wait`).
async fn closed_within(ws: &mut Raw, wait: Duration) -> bool {
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, ws.next()).await {
            Err(_) => return false,
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return true,
            Ok(Some(Ok(Message::Text(text)))) if text.as_str() == "2" => {
                let _ = ws.send(Message::text("3")).await;
            }
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// The process serving gateway `i`'s sockets.
fn gateway(app: &TestApp, i: usize) -> &Service {
    match app.backend {
        Backend::MySql => &app.gateways[i],
        Backend::Embedded => &app.main,
    }
}

/// A Socket.IO packet on the wire: `4` (Engine.IO message) and `packet`,
/// padded with `a`s in `fill`'s place to exactly `len` bytes.
fn packet_of_len(packet: &str, len: usize) -> String {
    let bare = packet.replace("{fill}", "");
    let text = packet.replace("{fill}", &"a".repeat(len - 1 - bare.len()));
    format!("4{text}")
}

/// Sends `text` as one WebSocket message in frames of 8 MiB: under the
/// 16 MiB frame limit engineioxide has by default, so only a message limit
/// stops it.
async fn send_fragmented(ws: &mut Raw, text: String) -> Result<(), String> {
    use tokio_tungstenite::tungstenite::protocol::frame::Frame;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
    let bytes = tokio_tungstenite::tungstenite::Bytes::from(text);
    let chunk = 8 << 20;
    let mut offset = 0;
    while offset < bytes.len() {
        let end = (offset + chunk).min(bytes.len());
        let opcode = if offset == 0 {
            OpCode::Data(Data::Text)
        } else {
            OpCode::Data(Data::Continue)
        };
        let frame = Frame::message(bytes.slice(offset..end), opcode, end == bytes.len());
        ws.send(Message::Frame(frame))
            .await
            .map_err(|e| e.to_string())?;
        offset = end;
    }
    Ok(())
}

async fn a_60_mib_message_is_refused_without_being_read(backend: Backend) {
    let app = TestApp::start(backend).await;
    let url = app.gateway_url(0).to_owned();
    let ann = app.user("ann").await;
    let room = app.as_user(&ann).create_room("big", None).await;
    // The peak, not the current RSS: a message read whole and then freed
    // raises only the peak (the allocator gives large blocks back).
    let before = gateway(&app, 0).peak_rss_kib();
    let huge = 60 << 20;
    // Unauthenticated: four connect packets of 60 MiB at once; then,
    // authenticated, a 60 MiB chat message.
    let attempt = |token: Option<String>| {
        let url = url.clone();
        async move {
            let mut ws = open_raw(&url).await.expect("handshake");
            let packet = match &token {
                None => packet_of_len(r#"0{"token":"{fill}"}"#, huge),
                Some(token) => {
                    authenticate(&mut ws, token).await;
                    packet_of_len(
                        &format!(r#"2["message",{{"room_id":{room},"message":"{{fill}}"}}]"#),
                        huge,
                    )
                }
            };
            // The server may close before all of it is written (a server
            // that reads it all and stays open fails the test below).
            let _ = tokio::time::timeout(WAIT, send_fragmented(&mut ws, packet)).await;
            assert!(closed_within(&mut ws, WAIT).await, "still open");
        }
    };
    futures_util::future::join_all((0..4).map(|_| attempt(None))).await;
    attempt(Some(ann.token.clone())).await;
    let after = gateway(&app, 0).peak_rss_kib();
    eprintln!(
        "gateway peak RSS before {} MiB, after five 60 MiB messages {} MiB",
        before / 1024,
        after / 1024
    );
    assert!(
        after < before + 8 * 1024,
        "peak RSS grew from {before} KiB to {after} KiB"
    );
    // The gateway serves on.
    let mut sock = app.socket(&ann).await;
    sock.join(room).await;
    sock.assert_usable(room).await;
}

async fn a_message_at_the_payload_limit_is_read_and_one_byte_more_closes_the_socket(
    backend: Backend,
) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let room = app.as_user(&ann).create_room("limit", None).await;
    let mut sock = app.socket(&ann).await;
    sock.join(room).await;
    let message = format!(r#"2["message",{{"room_id":{room},"message":"{{fill}}"}}]"#);
    // At the limit: read, parsed, and refused as too long for a chat message.
    let at_limit = packet_of_len(&message, LIMIT);
    assert_eq!(at_limit.len(), LIMIT);
    sock.send_raw(at_limit);
    assert_eq!(
        sock.expect("error").await,
        refusal("Message is too long", 1)
    );
    sock.assert_usable(room).await;
    // One byte over: the transport closes the connection unread.
    sock.send_raw(packet_of_len(&message, LIMIT + 1));
    sock.expect("disconnect").await;
}

async fn unauthenticated_sockets_of_one_address_hit_its_cap_until_they_authenticate(
    backend: Backend,
) {
    // The default cap, 256; the connect timeout long enough that none of
    // the held sockets is closed while the test opens the others.
    let options = Options::default().with("SOCKET_CONNECT_TIMEOUT_SECS", "120");
    let app = TestApp::start_with(backend, options).await;
    let ann = app.user("ann").await;
    let url = app.gateway_url(0).to_owned();
    let mut held = Vec::new();
    let mut refused_with = Vec::new();
    for _ in 0..300 {
        match open_raw(&url).await {
            Ok(ws) => held.push(ws),
            Err(status) => refused_with.push(status),
        }
    }
    eprintln!(
        "300 unauthenticated WebSockets: {} open, {} refused",
        held.len(),
        refused_with.len()
    );
    assert_eq!(held.len(), 256);
    assert_eq!(refused_with.len(), 44);
    // An honest client of that address waits too...
    assert!(open_raw(&url).await.is_err());
    // ...until one of the held sockets authenticates: it no longer counts.
    let ws = &mut held[0];
    ws.send(Message::text(format!(
        "40{}",
        json!({ "token": ann.token })
    )))
    .await
    .expect("send");
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if text.starts_with("40") => break,
            Some(Ok(_)) => {}
            other => panic!("no connect answer: {other:?}"),
        }
    }
    let mut sock = Socket::connect(&url, Auth::Payload(&ann.token))
        .await
        .expect("a slot was freed");
    drop(held);
    // Once the others are gone, so are their slots.
    crate::harness::eventually(WAIT, async || match open_raw(&url).await {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("slots not given back: {e:?}")),
    })
    .await;
    // The authenticated socket was never closed.
    sock.assert_none_so_far("disconnect").await;
}

async fn an_unauthenticated_socket_is_closed_after_the_connect_timeout(backend: Backend) {
    let options = Options::default()
        .with("SOCKET_CONNECT_TIMEOUT_SECS", "1")
        .with("MAX_PENDING_CONNECTIONS_PER_ADDRESS", "1");
    let app = TestApp::start_with(backend, options).await;
    let url = app.gateway_url(0).to_owned();
    let opened = Instant::now();
    let mut ws = open_raw(&url).await.expect("handshake");
    // It holds its address's one slot...
    assert!(open_raw(&url).await.is_err());
    // ...until the gateway closes it, a second after it opened.
    assert!(closed_within(&mut ws, Duration::from_secs(1) + WAIT).await);
    let lasted = opened.elapsed();
    eprintln!("an unauthenticated socket lasted {lasted:?} (timeout 1 s)");
    assert!(lasted >= Duration::from_millis(900), "{lasted:?}");
    crate::harness::eventually(WAIT, async || match open_raw(&url).await {
        Ok(_) => Ok(()),
        Err(e) => Err(format!("slot not given back: {e:?}")),
    })
    .await;
}

async fn a_user_holds_at_most_the_configured_sockets_on_a_gateway(backend: Backend) {
    let options = Options::default().with("MAX_SOCKETS_PER_USER", "3");
    let app = TestApp::start_with(backend, options).await;
    let [ann, bob] = app.users(["ann", "bob"]).await;
    let url = app.gateway_url(0).to_owned();
    let mut sockets = Vec::new();
    for _ in 0..3 {
        sockets.push(app.socket(&ann).await);
    }
    assert_eq!(
        refused(&url, Auth::Payload(&ann.token)).await,
        "Too many connections"
    );
    // Others are not affected.
    let _bob = app.socket(&bob).await;
    // A closed socket gives its place back.
    sockets.pop().expect("a socket").close();
    let sock = crate::harness::eventually(WAIT, async || {
        match Socket::connect(&url, Auth::Payload(&ann.token)).await {
            Ok(sock) => Ok(sock),
            Err(e) => {
                assert_eq!(e, "Too many connections");
                Err("place not given back".to_owned())
            }
        }
    })
    .await;
    sockets.push(sock);
    // Counted by reason (once, or more if the test retried while the
    // closed socket's place was being given back).
    let metrics = crate::harness::metrics(url.as_str()).await;
    let refusals = metrics
        .lines()
        .find_map(|l| {
            l.strip_prefix(
                r#"komunikator_gateway_connect_refusals_total{reason="too_many_sockets"} "#,
            )
        })
        .and_then(|n| n.parse::<u64>().ok());
    assert!(refusals.is_some_and(|n| n >= 1), "{metrics}");
}

crate::on_both_stores!(
    a_60_mib_message_is_refused_without_being_read,
    a_message_at_the_payload_limit_is_read_and_one_byte_more_closes_the_socket,
    unauthenticated_sockets_of_one_address_hit_its_cap_until_they_authenticate,
    an_unauthenticated_socket_is_closed_after_the_connect_timeout,
    a_user_holds_at_most_the_configured_sockets_on_a_gateway,
);
