//! Engine.IO's heartbeat (docs/protocol.md, "Connecting"): the gateway pings
//! every `PING_INTERVAL_SECS`, keeps a socket that answers, and closes one
//! that does not answer within `PING_TIMEOUT_SECS`: on a session opened on
//! WebSocket, whose one task reads, writes and pings, on one upgraded from
//! long-polling, whose pings come from the polling session, and on one
//! that stays on long-polling.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::Message;

use super::{Raw, authenticate};
use crate::harness::{Backend, Options, TestApp};
use crate::sio::WAIT;

/// The configured heartbeat: a ping a second, answered within 5 s (room
/// for the upgrade's handshake after the first ping on a loaded machine).
const INTERVAL: Duration = Duration::from_secs(1);
const TIMEOUT: Duration = Duration::from_secs(5);

/// Pings answered before the client goes silent.
const ANSWERED: usize = 3;

fn options() -> Options {
    Options::default()
        .with("PING_INTERVAL_SECS", INTERVAL.as_secs().to_string())
        .with("PING_TIMEOUT_SECS", TIMEOUT.as_secs().to_string())
}

fn ws_url(base: &str, query: &str) -> String {
    format!(
        "{}/socket.io/?EIO=4&{query}",
        base.replace("http://", "ws://")
    )
}

/// The next text frame within `wait`, or `None` once the connection closed.
async fn next_text(ws: &mut Raw, wait: Duration) -> Option<String> {
    loop {
        match tokio::time::timeout(wait, ws.next()).await {
            Err(_) => panic!("nothing from the gateway within {wait:?}"),
            Ok(None | Some(Err(_)) | Some(Ok(Message::Close(_)))) => return None,
            Ok(Some(Ok(Message::Text(text)))) => return Some(text.to_string()),
            Ok(Some(Ok(_))) => {}
        }
    }
}

/// A WebSocket session's open packet.
async fn open(ws: &mut Raw) -> Value {
    let open = next_text(ws, WAIT).await.expect("open packet");
    serde_json::from_str(open.strip_prefix('0').expect("open packet")).expect("open packet's JSON")
}

/// Answers `ANSWERED` pings, each due within an interval (and the slack of a
/// loaded machine) of the one before; then answers nothing and expects a
/// close packet and the connection closed within the ping timeout of the
/// next ping.
async fn answer_then_fall_silent(ws: &mut Raw) {
    // A ping within an interval and a timeout of the one before, as
    // Socket.IO's clients expect it; the slack is a loaded machine's.
    let due = INTERVAL + TIMEOUT + WAIT;
    let mut pings = 0;
    while pings < ANSWERED {
        match next_text(ws, due).await.as_deref() {
            Some("2") => {
                pings += 1;
                ws.send(Message::text("3")).await.expect("pong");
            }
            Some(_) => {}
            None => panic!("closed after {pings} answered pings"),
        }
    }
    let silent = Instant::now();
    let mut close_packet = false;
    while let Some(text) = next_text(ws, due).await {
        close_packet |= text == "1";
    }
    let lasted = silent.elapsed();
    eprintln!("a silent client was closed {lasted:?} after its last pong");
    assert!(close_packet, "the gateway sends a close packet first");
    assert!(lasted >= TIMEOUT, "closed before the timeout: {lasted:?}");
}

/// Opens a long-polling session: an HTTP client whose requests give up
/// after a ping interval and timeout (and a loaded machine's slack), and
/// the session's open packet.
async fn polling_open(url: &str) -> (reqwest::Client, Value) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(INTERVAL + TIMEOUT + WAIT)
        .build()
        .expect("client");
    let open = http
        .get(format!("{url}/socket.io/?EIO=4&transport=polling"))
        .send()
        .await
        .expect("polling handshake")
        .text()
        .await
        .expect("open packet");
    let open = serde_json::from_str(open.strip_prefix('0').expect("open packet"))
        .expect("open packet's JSON");
    (http, open)
}

/// The gateway's count of its open sockets reaches `n`.
async fn sockets_reach(url: &str, n: f64) {
    crate::harness::eventually(WAIT, async || {
        match crate::harness::metric(url, "komunikator_gateway_sockets").await {
            Some(count) if count == n => Ok(()),
            other => Err(format!("komunikator_gateway_sockets {other:?}, want {n}")),
        }
    })
    .await;
}

async fn a_websocket_session_is_pinged_and_closed_once_it_stops_answering(backend: Backend) {
    let app = TestApp::start_with(backend, options()).await;
    let url = app.gateway_url(0).to_owned();
    let ann = app.user("ann").await;
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_url(&url, "transport=websocket"))
        .await
        .expect("handshake");
    let open = open(&mut ws).await;
    assert_eq!(open["pingInterval"], json!(1000), "{open}");
    assert_eq!(open["pingTimeout"], json!(5000), "{open}");
    authenticate(&mut ws, &ann.token).await;
    sockets_reach(&url, 1.0).await;

    answer_then_fall_silent(&mut ws).await;
    sockets_reach(&url, 0.0).await;
}

async fn an_upgraded_session_is_pinged_and_closed_once_it_stops_answering(backend: Backend) {
    let app = TestApp::start_with(backend, options()).await;
    let url = app.gateway_url(0).to_owned();
    let ann = app.user("ann").await;
    let (_, open) = polling_open(&url).await;
    assert_eq!(open["upgrades"], json!(["websocket"]), "{open}");
    let sid = open["sid"].as_str().expect("sid");

    let (mut ws, _) =
        tokio_tungstenite::connect_async(ws_url(&url, &format!("transport=websocket&sid={sid}")))
            .await
            .expect("upgrade");
    ws.send(Message::text("2probe")).await.expect("probe");
    assert_eq!(next_text(&mut ws, WAIT).await.as_deref(), Some("3probe"));
    ws.send(Message::text("5")).await.expect("upgrade packet");
    authenticate(&mut ws, &ann.token).await;
    sockets_reach(&url, 1.0).await;

    answer_then_fall_silent(&mut ws).await;
    sockets_reach(&url, 0.0).await;
}

/// A session that stays on long-polling: the pings come with the polls,
/// pongs go back in POSTs. Once the client stops answering (it keeps
/// polling), the gateway closes the session a ping timeout after the ping:
/// a poll gets the close packet or an error, and the socket is gone.
async fn a_polling_session_is_pinged_and_closed_once_it_stops_answering(backend: Backend) {
    let app = TestApp::start_with(backend, options()).await;
    let url = app.gateway_url(0).to_owned();
    let ann = app.user("ann").await;
    let (http, open) = polling_open(&url).await;
    assert_eq!(open["pingInterval"], json!(1000), "{open}");
    let session = format!(
        "{url}/socket.io/?EIO=4&transport=polling&sid={}",
        open["sid"].as_str().expect("sid")
    );
    let post = async |body: String| {
        let answer = http.post(&session).body(body).send().await.expect("post");
        assert_eq!(answer.status(), 200, "post refused");
    };
    // One poll: its packets (separated by U+001E), or `None` once the
    // session is gone (an error status, or the close packet).
    let poll = async || -> Option<Vec<String>> {
        let answer = http.get(&session).send().await.expect("poll");
        if answer.status() != 200 {
            return None;
        }
        let body = answer.text().await.expect("poll body");
        let packets: Vec<String> = body.split('\u{1e}').map(str::to_owned).collect();
        (!packets.iter().any(|p| p == "1")).then_some(packets)
    };
    post(format!("40{}", json!({ "token": ann.token }))).await;
    let mut pings = 0;
    let mut connected = false;
    let mut silent = Instant::now();
    while pings < ANSWERED || !connected {
        let packets = poll().await.expect("session open");
        connected |= packets.iter().any(|p| p.starts_with("40"));
        for _ in packets.iter().filter(|p| *p == "2") {
            pings += 1;
            post("3".to_owned()).await;
            silent = Instant::now();
        }
    }
    sockets_reach(&url, 1.0).await;

    // Closed a ping timeout after the next ping at the latest.
    let due = INTERVAL + TIMEOUT + WAIT;
    while poll().await.is_some() {
        assert!(
            silent.elapsed() < due,
            "still open {due:?} after the last pong"
        );
    }
    let lasted = silent.elapsed();
    eprintln!("a silent polling client was closed {lasted:?} after its last pong");
    assert!(lasted >= TIMEOUT, "closed before the timeout: {lasted:?}");
    sockets_reach(&url, 0.0).await;
}

/// Unconfigured, a gateway pings every 25 s and waits 20 s for the pong
/// (docs/protocol.md), as Socket.IO's own servers do.
async fn the_default_heartbeat_is_socket_ios(backend: Backend) {
    let app = TestApp::start(backend).await;
    let url = ws_url(app.gateway_url(0), "transport=websocket");
    let (mut ws, _) = tokio_tungstenite::connect_async(url)
        .await
        .expect("handshake");
    let open = open(&mut ws).await;
    assert_eq!(open["pingInterval"], json!(25_000), "{open}");
    assert_eq!(open["pingTimeout"], json!(20_000), "{open}");
}

crate::on_both_stores!(
    the_default_heartbeat_is_socket_ios,
    a_websocket_session_is_pinged_and_closed_once_it_stops_answering,
    an_upgraded_session_is_pinged_and_closed_once_it_stops_answering,
    a_polling_session_is_pinged_and_closed_once_it_stops_answering,
);
