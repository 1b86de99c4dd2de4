//! Identity: a socket is the user of its token; a `user_name` in a
//! payload may only name that user, in any letter case, or be left out.

use serde_json::{Value, json};

use super::history;
use crate::harness::{Backend, TestApp, User};
use crate::sio::Socket;

/// Ann and Bob (`.1`) with a socket each (`.2`): Ann's joined to her
/// room (`.0`), Bob's in no room yet.
async fn ann_in_her_room_and_bob(app: &TestApp) -> (i64, [User; 2], [Socket; 2]) {
    let [ann, bob] = app.users(["ann", "bob"]).await;
    let room = app.as_user(&ann).create_room("lobby", None).await;
    let mut a = app.socket(&ann).await;
    let b = app.socket(&bob).await;
    a.join(room).await;
    (room, [ann, bob], [a, b])
}

async fn a_user_name_naming_someone_else_is_forbidden_for_every_event(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (room, [ann, bob], [mut a, mut b]) = ann_in_her_room_and_bob(&app).await;

    // join: refused, and nobody hears of it.
    let as_ann = json!({ "room_id": room, "user_name": ann.name });
    b.expect_refusal("join", as_ann.clone(), "Forbidden", 5)
        .await;
    b.join(room).await;
    // The join that counts is announced, and nothing before it.
    assert_eq!(
        a.expect("user_joined").await,
        json!({ "user_name": bob.name, "room_id": room })
    );
    a.assert_none_so_far("user_joined").await;

    // message: refused with an ack, nothing delivered, nothing stored.
    b.expect_refused_message(
        json!({ "room_id": room, "user_name": ann.name, "message": "I am ann" }),
        "Forbidden",
        5,
    )
    .await;

    // leave: refused, bob stays in the room.
    b.expect_refusal("leave", as_ann, "Forbidden", 5).await;

    // watchdog: refused.
    b.expect_refusal("watchdog", json!({ "user_name": ann.name }), "Forbidden", 5)
        .await;

    // The first message either socket gets is this one: nothing refused
    // above came before it, and no `user_left`.
    let chat_id = a.send(room, "only this one").await;
    assert_eq!(b.next_message().await["chat_id"], chat_id);
    assert_eq!(a.next_message().await["chat_id"], chat_id);
    a.assert_none_so_far("user_left").await;
    let stored = history(&app, &ann, room, 1).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["chat_id"], chat_id);
    b.assert_none_so_far("new_message").await;
}

async fn payloads_without_user_name_or_in_another_letter_case_are_accepted(backend: Backend) {
    let app = TestApp::start(backend).await;
    let (room, [ann, bob], [mut a, mut b]) = ann_in_her_room_and_bob(&app).await;
    let shouted = bob.name.to_uppercase();
    assert_ne!(shouted, bob.name);

    b.emit("join", json!({ "room_id": room, "user_name": shouted }));
    // The event names the socket's identity, not the payload's spelling.
    let joined = json!({ "user_name": bob.name, "room_id": room });
    assert_eq!(b.expect("user_joined").await, joined);
    assert_eq!(a.expect("user_joined").await, joined);

    for user_name in [Value::Null, json!(shouted), json!(bob.name)] {
        let mut payload = json!({ "room_id": room, "message": "hi" });
        if !user_name.is_null() {
            payload["user_name"] = user_name.clone();
        }
        let ack = b.emit_with_ack("message", payload).await;
        let chat_id = ack["chat_id"]
            .as_i64()
            .unwrap_or_else(|| panic!("{user_name}: {ack}"));
        let got = a.next_message().await;
        assert_eq!(got["chat_id"], chat_id);
        assert_eq!(got["user_name"], bob.name.as_str());
    }
    for payload in [
        json!({ "user_name": shouted }),
        json!({ "user_name": bob.name }),
    ] {
        b.emit("watchdog", payload);
    }
    b.emit("leave", json!({ "room_id": room, "user_name": shouted }));
    assert_eq!(
        a.expect("user_left").await,
        json!({ "user_name": bob.name, "room_id": room })
    );
    b.assert_none_so_far("error").await;
    let stored = history(&app, &ann, room, 3).await;
    assert_eq!(stored.len(), 3);
    assert!(stored.iter().all(|m| m["user_name"] == bob.name.as_str()));
}

crate::on_both_stores!(
    a_user_name_naming_someone_else_is_forbidden_for_every_event,
    payloads_without_user_name_or_in_another_letter_case_are_accepted,
);
