//! `message`: acknowledged with a chat id, broadcast to the room and
//! stored; one order for everyone; resends made idempotent by
//! `client_msg_id`; one socket's events handled in the order sent.

use serde_json::{Value, json};

use super::history;
use crate::harness::{Backend, Chat, Options, TestApp};
use crate::rooms::assert_timestamp;

async fn a_message_is_acknowledged_broadcast_and_stored_under_one_chat_id(backend: Backend) {
    let app = TestApp::start(backend).await;
    let Chat(room, [ann, _], [mut a, mut b]) = app.chat("lobby", ["ann", "bob"]).await;

    let ack = a
        .emit_with_ack(
            "message",
            json!({ "room_id": room, "user_name": ann.name, "message": "Hello, żółw!" }),
        )
        .await;
    let chat_id = ack["chat_id"].as_i64().expect("chat_id in the ack");
    assert_eq!(ack, json!({ "chat_id": chat_id }));

    let to_ann = a.next_message().await;
    let to_bob = b.next_message().await;
    assert_eq!(to_ann, to_bob);
    assert_timestamp(&to_ann["create_date"]);
    assert_eq!(
        to_ann,
        json!({
            "chat_id": chat_id,
            "room_id": room,
            "user_name": ann.name,
            "message": "Hello, żółw!",
            "create_date": to_ann["create_date"],
        })
    );

    let stored = history(&app, &ann, room, 1).await;
    assert_eq!(stored, vec![to_ann]);
}

async fn a_numeric_string_room_id_is_accepted_and_answered_as_an_integer(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let room = app.as_user(&ann).create_room("lobby", None).await;
    let mut a = app.socket(&ann).await;
    a.emit("join", json!({ "room_id": room.to_string() }));
    assert_eq!(
        a.expect("user_joined").await,
        json!({ "user_name": ann.name, "room_id": room })
    );
    let ack = a
        .emit_with_ack(
            "message",
            json!({ "room_id": room.to_string(), "message": "by string" }),
        )
        .await;
    let got = a.next_message().await;
    assert_eq!(got["chat_id"], ack["chat_id"]);
    assert_eq!(got["room_id"], json!(room));
}

async fn chat_ids_increase_strictly_across_messages(backend: Backend) {
    let app = TestApp::start(backend).await;
    let Chat(room, [ann, _], [mut a, mut b]) = app.chat("lobby", ["ann", "bob"]).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let sender = if i % 2 == 0 { &a } else { &b };
        ids.push(sender.send(room, &format!("m{i}")).await);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for s in [&mut a, &mut b] {
        assert_eq!(s.next_chat_ids(6).await, ids);
    }
    let stored: Vec<i64> = history(&app, &ann, room, 6)
        .await
        .iter()
        .map(|m| m["chat_id"].as_i64().expect("id"))
        .collect();
    assert_eq!(stored, ids);
}

async fn every_socket_sees_concurrent_messages_in_the_same_chat_id_order(backend: Backend) {
    let app = TestApp::start(backend).await;
    let Chat(room, _, [mut a, mut b, mut c]) = app.chat("lobby", ["ann", "bob", "cid"]).await;
    for i in 0..10 {
        a.emit(
            "message",
            json!({ "room_id": room, "message": format!("a{i}") }),
        );
        b.emit(
            "message",
            json!({ "room_id": room, "message": format!("b{i}") }),
        );
    }
    let mut orders = Vec::new();
    for s in [&mut a, &mut b, &mut c] {
        let seen = s.next_chat_ids(20).await;
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        orders.push(seen);
    }
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[0], orders[2]);
}

/// `client_msg_id` makes a resend idempotent: the same user's retry with the
/// same id is stored and delivered once and acked with the same `chat_id`,
/// whether it follows the first one or races it.
async fn a_resend_with_the_same_client_msg_id_is_stored_and_delivered_once(backend: Backend) {
    let app = TestApp::start(backend).await;
    let Chat(room, _, [mut a, mut b]) = app.chat_of_members("Retries", ["ann", "bob"]).await;
    let message =
        |id: &str, text: &str| json!({ "room_id": room, "message": text, "client_msg_id": id });
    let first = a.emit_with_ack("message", message("m-1", "hello")).await;
    let again = a.emit_with_ack("message", message("m-1", "hello")).await;
    assert!(first["chat_id"].is_i64(), "{first}");
    assert_eq!(again, first, "the resend is acked with the first chat_id");
    // Two sends racing each other, at the 64-character limit.
    let long = "x".repeat(64);
    let (r1, r2) = tokio::join!(
        a.emit_with_ack("message", message(&long, "raced")),
        a.emit_with_ack("message", message(&long, "raced")),
    );
    assert_eq!(r1, r2);
    // Another user's id is their own; no id is no deduplication.
    let bobs = b.emit_with_ack("message", message("m-1", "bob's")).await;
    assert_ne!(bobs["chat_id"], first["chat_id"]);
    let plain1 = a.send(room, "plain").await;
    let plain2 = a.send(room, "plain").await;
    assert_ne!(plain1, plain2);

    let expected = vec![
        first["chat_id"].clone(),
        r1["chat_id"].clone(),
        bobs["chat_id"].clone(),
        json!(plain1),
        json!(plain2),
    ];
    let mut delivered = Vec::new();
    while delivered.len() < expected.len() {
        delivered.push(b.expect("new_message").await["chat_id"].clone());
    }
    assert_eq!(delivered, expected, "each message delivered once");
    let stored: Vec<Value> = app
        .history_ids(room)
        .await
        .into_iter()
        .map(Value::from)
        .collect();
    assert_eq!(stored, expected, "each message stored once");
    // A second copy of any of them would come before a later message.
    let later = a.send(room, "later").await;
    assert_eq!(b.expect("new_message").await["chat_id"], later);

    // Over the limit, empty, other characters, other types: invalid payload.
    for bad in [
        json!("y".repeat(65)),
        json!(""),
        json!("a b"),
        json!("ż"),
        json!(7),
        json!(["m"]),
    ] {
        a.expect_refused_message(
            json!({ "room_id": room, "message": "x", "client_msg_id": bad }),
            "Invalid payload",
            7,
        )
        .await;
    }
}

/// A client may send `message` right after `join` without waiting: one
/// socket's events are handled in the order it sent them.
async fn events_of_one_socket_are_handled_in_the_order_sent(backend: Backend) {
    let app = TestApp::start_with(backend, Options::unlimited()).await;
    let ann = app.user("ann").await;
    let socket = app.socket(&ann).await;
    for round in 0..20 {
        let room = app
            .as_user(&ann)
            .create_room(&format!("r{round}"), None)
            .await;
        let message = |text: &str| json!({ "room_id": room, "message": text });
        socket.emit("join", json!({ "room_id": room }));
        let ack = socket.emit_with_ack("message", message("right away")).await;
        assert!(ack["chat_id"].is_i64(), "round {round}: {ack}");
        socket.emit("leave", json!({ "room_id": room }));
        let refused = socket
            .emit_with_ack("message", message("after leaving"))
            .await;
        assert_eq!(
            refused,
            json!({ "error": "Join failed", "code": 4 }),
            "round {round}"
        );
    }
}

crate::on_both_stores!(
    a_message_is_acknowledged_broadcast_and_stored_under_one_chat_id,
    a_numeric_string_room_id_is_accepted_and_answered_as_an_integer,
    chat_ids_increase_strictly_across_messages,
    every_socket_sees_concurrent_messages_in_the_same_chat_id_order,
    a_resend_with_the_same_client_msg_id_is_stored_and_delivered_once,
    events_of_one_socket_are_handled_in_the_order_sent,
);
