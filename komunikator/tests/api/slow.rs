//! A client that stops reading must not be left silently missing events:
//! once its send buffer on the gateway is full it is disconnected (and its
//! client reconnects and reloads), while everyone else still gets
//! everything.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

use crate::harness::{Backend, Options, TestApp};

crate::on_both_stores!(a_socket_that_stops_reading_is_disconnected_not_left_with_a_gap);

/// Messages sent while the slow socket reads nothing: more than its send
/// buffer (1024 packets) plus what the kernel and WebSocket buffers hold.
const FLOOD: usize = 4000;

async fn a_socket_that_stops_reading_is_disconnected_not_left_with_a_gap(backend: Backend) {
    let app = TestApp::start_with(backend, Options::unlimited()).await;
    let [talker, sleeper] = app.users(["talker", "sleeper"]).await;
    let room = app.as_user(&talker).create_room("flood", None).await;
    app.as_user(&sleeper).join(room).await;

    // The sleeper joins, then reads nothing; a small receive buffer makes
    // the gateway's side fill sooner.
    let gateway = app.gateway_url(0).to_owned();
    let address = gateway.trim_start_matches("http://");
    let tcp = tokio::net::TcpSocket::new_v4().expect("socket");
    tcp.set_recv_buffer_size(4096).expect("SO_RCVBUF");
    let stream = tcp
        .connect(address.parse().expect("address"))
        .await
        .expect("connect");
    let url = format!("ws://{address}/socket.io/?EIO=4&transport=websocket");
    let (mut ws, _) = tokio_tungstenite::client_async(url, stream)
        .await
        .expect("websocket");
    let next = async |ws: &mut tokio_tungstenite::WebSocketStream<tokio::net::TcpStream>| loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Some(t.as_str().to_owned()),
            Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return None,
            Some(Ok(_)) => {}
        }
    };
    assert!(next(&mut ws).await.expect("open").starts_with('0'));
    let auth = json!({ "token": sleeper.token });
    ws.send(Message::text(format!("40{auth}")))
        .await
        .expect("send");
    loop {
        let frame = next(&mut ws).await.expect("connecting");
        if frame == "2" {
            ws.send(Message::text("3")).await.expect("pong");
        } else if frame.starts_with("40") {
            break;
        }
    }
    ws.send(Message::text(format!(r#"42["join",{{"room_id":{room}}}]"#)))
        .await
        .expect("send");
    loop {
        let frame = next(&mut ws).await.expect("joining");
        if frame.starts_with(r#"42["user_joined""#) && frame.contains("sleeper") {
            break;
        }
    }

    let mut socket = app.socket(&talker).await;
    socket.join(room).await;
    let text = "x".repeat(1000);
    // In bursts the talker's event queue takes (it reads, so it gets each).
    for burst in 0..FLOOD / 100 {
        for _ in 0..100 {
            socket.emit("message", json!({ "room_id": room, "message": text }));
        }
        for i in 0..100 {
            assert!(
                socket
                    .try_expect("new_message", crate::sio::WAIT)
                    .await
                    .is_some(),
                "the reading socket missed message {}",
                burst * 100 + i
            );
        }
    }
    // The sleeper was disconnected: the gateway counted it, and its stream
    // ends after what was already on the way.
    let slow = crate::harness::metric(&gateway, "komunikator_gateway_slow_consumers_total").await;
    assert_eq!(slow, Some(1.0), "slow consumers counted");
    // Its client, reading again, gets what was already on the way and then
    // the namespace disconnect ("41"), or the connection closes.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut received = 0;
    loop {
        let frame = tokio::time::timeout_at(deadline.into(), next(&mut ws))
            .await
            .expect("the sleeper is disconnected");
        match frame {
            Some(frame) if frame.starts_with("41") => break,
            Some(_) => received += 1,
            None => break,
        }
    }
    assert!(
        received < FLOOD,
        "the sleeper got all {received} frames: it was never behind"
    );
}
