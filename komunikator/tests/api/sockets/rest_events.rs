//! The server events REST changes cause: `room_list_updated`,
//! `user_list_updated` and `user_kicked`, and sockets put out of a room
//! their user was kicked from or that was deleted.

use serde_json::{Value, json};

use super::until_join_failed;
use crate::harness::{Backend, Chat, TestApp};

async fn room_list_updated_reaches_every_socket_on_create_edit_and_delete(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [ann, bob] = app.users(["ann", "bob"]).await;
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await; // in no room
    let lobby = app.as_user(&ann).create_room("lobby", None).await;
    for s in [&mut a, &mut b] {
        assert_eq!(s.expect("room_list_updated").await, Value::Null);
    }
    a.join(lobby).await;

    let bob_acts = app.as_user(&bob);
    let room = bob_acts.create_room("new", None).await;
    for s in [&mut a, &mut b] {
        assert_eq!(s.expect("room_list_updated").await, Value::Null);
    }
    bob_acts.edit_room(room, "renamed", None).await;
    for s in [&mut a, &mut b] {
        s.expect("room_list_updated").await;
    }
    bob_acts.delete_room(room).await;
    for s in [&mut a, &mut b] {
        s.expect("room_list_updated").await;
    }
    // A refused change announces nothing: a later change, on the same
    // subject from the same process, is the only one heard.
    bob_acts
        .try_delete_room(lobby)
        .await
        .expect(404, "Room not found");
    bob_acts.create_room("later", None).await;
    for s in [&mut a, &mut b] {
        s.expect("room_list_updated").await;
        s.assert_none_so_far("room_list_updated").await;
    }
}

async fn user_list_updated_reaches_the_room_on_join_leave_and_kick(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [ann, bob, cid, eve] = app.users(["ann", "bob", "cid", "eve"]).await;
    let room = app.as_user(&ann).create_room("lobby", None).await;
    let private = app.as_user(&ann).create_room("secret", Some("k")).await;
    let elsewhere = app.as_user(&eve).create_room("elsewhere", None).await;
    let mut a = app.socket(&ann).await;
    let mut a_private = app.socket(&ann).await;
    let mut e = app.socket(&eve).await;
    a.join(room).await;
    a_private.join(private).await;
    e.join(elsewhere).await;

    app.as_user(&bob).join(room).await;
    assert_eq!(a.expect("user_list_updated").await, Value::Null);
    app.as_user(&cid).join_private("k").await;
    a_private.expect("user_list_updated").await;
    app.as_user(&bob).leave(room).await;
    a.expect("user_list_updated").await;
    app.as_user(&ann).kick(private, &cid).await;
    a_private.expect("user_list_updated").await;

    // Each room's sockets heard only about their own room.
    // (All on one gateway: the last event reached `a_private`, so
    // anything meant for the others before it has reached them.)
    a.assert_none_so_far("user_list_updated").await;
    a_private.assert_none_so_far("user_list_updated").await;
    e.assert_none_so_far("user_list_updated").await;
}

async fn a_kicked_user_is_told_and_gets_no_more_messages_from_the_room(backend: Backend) {
    let app = TestApp::start(backend).await;
    let Chat(room, [ann, bob, _], [mut a, mut b, mut c]) =
        app.chat_of_members("lobby", ["ann", "bob", "cid"]).await;
    let mut b2 = app.socket(&bob).await;
    b2.join(room).await;

    app.as_user(&ann).kick(room, &bob).await;
    let kicked = json!({ "user_name": bob.name });
    for s in [&mut a, &mut c] {
        assert_eq!(s.expect("user_kicked").await, kicked);
    }
    for s in [&mut b, &mut b2] {
        assert_eq!(s.expect("user_kicked").await, kicked);
        // Every socket of bob is out of the room.
        s.expect_not_in_room(room, "still here?").await;
    }

    let chat_id = a.send(room, "bob is gone").await;
    assert_eq!(c.next_message().await["chat_id"], chat_id);
    assert_eq!(a.next_message().await["chat_id"], chat_id);
    b.assert_none_so_far("new_message").await;
    b2.assert_none_so_far("new_message").await;
}

async fn a_user_kicked_from_a_private_room_cannot_join_it_again(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [ann, bob] = app.users(["ann", "bob"]).await;
    let private = app.as_user(&ann).create_room("secret", Some("k")).await;
    app.as_user(&bob).join_private("k").await;
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await;
    a.join(private).await;
    b.join(private).await;
    app.as_user(&ann).kick(private, &bob).await;
    assert_eq!(
        b.expect("user_kicked").await,
        json!({ "user_name": bob.name })
    );
    b.expect_refusal("join", json!({ "room_id": private }), "Join failed", 4)
        .await;
    let chat_id = a.send(private, "bob is out").await;
    assert_eq!(a.next_message().await["chat_id"], chat_id);
    b.assert_none_so_far("new_message").await;
}

async fn deleting_a_room_removes_every_socket_from_it(backend: Backend) {
    let app = TestApp::start(backend).await;
    let Chat(room, [ann, _], [mut a, mut b]) = app.chat("doomed", ["ann", "bob"]).await;
    b.send(room, "before").await;
    a.next_message().await;
    b.next_message().await;

    app.as_user(&ann).delete_room(room).await;
    for s in [&mut a, &mut b] {
        s.expect("room_list_updated").await;
        until_join_failed(s, room).await;
    }
    // Joining it again fails: the room is gone.
    a.expect_refusal("join", json!({ "room_id": room }), "Join failed", 4)
        .await;
}

crate::on_both_stores!(
    room_list_updated_reaches_every_socket_on_create_edit_and_delete,
    user_list_updated_reaches_the_room_on_join_leave_and_kick,
    a_kicked_user_is_told_and_gets_no_more_messages_from_the_room,
    a_user_kicked_from_a_private_room_cannot_join_it_again,
    deleting_a_room_removes_every_socket_from_it,
);
