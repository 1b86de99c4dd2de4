//! Catch-up on join (docs/protocol.md, "Ordering, delivery and catch-up"): what a
//! socket missed is replayed, oldest first, at most the newest 1000, then
//! the live messages follow with no gap and no duplicate at the seam.

use serde_json::{Value, json};

use crate::harness::{Backend, Chat, Options, TestApp};
use crate::sio::{Socket, refusal};

/// Joins `room` with `last_chat_id` and returns the join's acknowledgement.
async fn rejoin(sock: &Socket, room: i64, last_chat_id: i64) -> Value {
    sock.emit_with_ack(
        "join",
        json!({ "room_id": room, "last_chat_id": last_chat_id }),
    )
    .await
}

/// Sends `n` messages numbered from `first`; their chat ids, in order.
async fn send_many(sock: &Socket, room: i64, first: usize, n: usize) -> Vec<i64> {
    let mut ids = Vec::with_capacity(n);
    for i in first..first + n {
        ids.push(sock.send(room, &format!("m{i}")).await);
    }
    ids
}

async fn a_rejoin_replays_what_was_missed_then_the_live_messages(backend: Backend) {
    let app = TestApp::start_with(backend, Options::unlimited()).await;
    let Chat(room, [_, bob], [mut a, b]) = app.chat("lobby", ["ann", "bob"]).await;
    let seen = a.send(room, "before").await;
    a.next_message().await;
    drop(b);

    let missed = send_many(&a, room, 0, 5).await;
    let mut b = app.socket(&bob).await;
    let ack = rejoin(&b, room, seen).await;
    assert_eq!(
        ack,
        json!({ "room_id": room, "replayed": 5, "complete": true })
    );
    assert_eq!(b.next_chat_ids(5).await, missed);
    b.expect("user_joined").await;

    let live = a.send(room, "live").await;
    assert_eq!(b.next_chat_ids(1).await, vec![live]);
    let later = nothing_before_a_later_message(&a, &mut b, room).await;

    // Nothing missed: nothing replayed. A join without `last_chat_id`
    // acknowledges the same way.
    let mut c = app.socket(&bob).await;
    assert_eq!(
        rejoin(&c, room, later).await,
        json!({ "room_id": room, "replayed": 0, "complete": true })
    );
    // A replay comes before the join's acknowledgement.
    c.assert_none_so_far("new_message").await;
    let plain = c.emit_with_ack("join", json!({ "room_id": room })).await;
    assert_eq!(
        plain,
        json!({ "room_id": room, "replayed": 0, "complete": true })
    );
}

async fn more_than_1000_missed_replays_the_newest_1000_and_says_so(backend: Backend) {
    let app = TestApp::start_with(backend, Options::unlimited()).await;
    let Chat(room, [_, bob], [a, b]) = app.chat("lobby", ["ann", "bob"]).await;
    drop(b);
    let sent = send_many(&a, room, 0, 1001).await;

    let mut b = app.socket(&bob).await;
    let ack = rejoin(&b, room, 0).await;
    assert_eq!(
        ack,
        json!({ "room_id": room, "replayed": 1000, "complete": false })
    );
    let replayed = b.next_chat_ids(1000).await;
    assert_eq!(replayed, sent[1..], "the newest 1000, oldest first");
    b.assert_none_so_far("new_message").await;

    // Exactly 1000 missed: all of them, complete.
    let mut c = app.socket(&bob).await;
    let ack = rejoin(&c, room, sent[0]).await;
    assert_eq!(
        ack,
        json!({ "room_id": room, "replayed": 1000, "complete": true })
    );
    assert_eq!(c.next_chat_ids(1000).await, sent[1..]);
}

async fn a_private_room_replays_only_to_its_members(backend: Backend) {
    let app = TestApp::start_with(backend, Options::unlimited()).await;
    let [ann, bob] = app.users(["ann", "bob"]).await;
    let room = app.as_user(&ann).create_room("vault", Some("k3y")).await;
    let mut a = app.socket(&ann).await;
    a.join(room).await;
    let secret = a.send(room, "secret").await;

    let mut b = app.socket(&bob).await;
    let ack = rejoin(&b, room, 0).await;
    assert_eq!(ack, json!({ "error": "Join failed", "code": 4 }));
    assert_eq!(b.expect("error").await, refusal("Join failed", 4));
    b.assert_none_so_far("new_message").await;

    app.as_user(&bob).join_private("k3y").await;
    let ack = rejoin(&b, room, 0).await;
    assert_eq!(
        ack,
        json!({ "room_id": room, "replayed": 1, "complete": true })
    );
    assert_eq!(b.next_chat_ids(1).await, vec![secret]);
}

async fn messages_sent_while_a_socket_catches_up_reach_it_once_in_order(backend: Backend) {
    let app = TestApp::start_with(backend, Options::unlimited()).await;
    let Chat(room, [_, bob], [a, b]) = app.chat("lobby", ["ann", "bob"]).await;
    drop(b);
    let before = send_many(&a, room, 0, 300).await;
    // Ann keeps sending while Bob rejoins from the middle.
    let sender = tokio::spawn(async move {
        let ids = send_many(&a, room, 300, 200).await;
        (a, ids)
    });
    let mut b = app.socket(&bob).await;
    let from = before[149];
    let ack = rejoin(&b, room, from).await;
    assert_eq!(ack["complete"], json!(true), "{ack}");
    let (a, during) = sender.await.expect("sender");
    let expected: Vec<i64> = before[150..].iter().chain(&during).copied().collect();
    let got = b.next_chat_ids(expected.len()).await;
    assert_eq!(got, expected, "every message after {from}, once, in order");
    nothing_before_a_later_message(&a, &mut b, room).await;
}

async fn a_malformed_last_chat_id_is_an_invalid_payload(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let room = app.as_user(&ann).create_room("lobby", None).await;
    let mut a = app.socket(&ann).await;
    for bad in [json!(-1), json!("7"), json!(1.5), json!([7])] {
        a.expect_refusal(
            "join",
            json!({ "room_id": room, "last_chat_id": bad }),
            "Invalid payload",
            7,
        )
        .await;
    }
    a.assert_none_so_far("user_joined").await;
}

/// Asserts `b` got no other message of the room (a second copy, a replay
/// twice) than those it was asked for: the next it gets is a later one,
/// whose id this returns.
async fn nothing_before_a_later_message(sender: &Socket, b: &mut Socket, room: i64) -> i64 {
    let later = sender.send(room, "later").await;
    assert_eq!(
        b.next_chat_ids(1).await,
        vec![later],
        "nothing before the later message"
    );
    later
}

/// With the persister down, what a socket missed is not in MySQL yet: the
/// catch-up reads it from the chat stream (and the store holds none of it).
#[tokio::test]
async fn with_the_persister_down_a_rejoin_replays_from_the_chat_stream() {
    let mut app = TestApp::start_with(Backend::MySql, Options::unlimited()).await;
    let Chat(room, [_, bob], [a, b]) = app.chat("lobby", ["ann", "bob"]).await;
    let seen = a.send(room, "before").await;
    drop(b);
    let mut persister = app.persister.take().expect("persister");
    persister.kill9().await;

    let missed = send_many(&a, room, 0, 5).await;
    let stored = app
        .count_rows("chat_history", &format!("message_id > {seen}"))
        .await;
    assert_eq!(stored, 0, "the persister is down: nothing new is stored");
    let mut b = app.socket(&bob).await;
    assert_eq!(
        rejoin(&b, room, seen).await,
        json!({ "room_id": room, "replayed": 5, "complete": true })
    );
    assert_eq!(b.next_chat_ids(5).await, missed);
    persister.restart().await;
}

crate::on_both_stores!(
    a_rejoin_replays_what_was_missed_then_the_live_messages,
    more_than_1000_missed_replays_the_newest_1000_and_says_so,
    a_private_room_replays_only_to_its_members,
    messages_sent_while_a_socket_catches_up_reach_it_once_in_order,
    a_malformed_last_chat_id_is_an_invalid_payload,
);
