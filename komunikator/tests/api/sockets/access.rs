//! A socket's access follows membership (docs/protocol.md, "Accounts and
//! abuse"): a user who leaves a room over REST, or who is not a member of
//! a room turned private, has every socket taken out of it on every
//! gateway; their messages to it are refused (code 4) and they receive
//! nothing of it said after the change. A gateway takes the change in the
//! room's order, before anything published after it: the tests wait for a
//! later event of the room on each gateway, never for a time.

use std::time::Duration;

use crate::harness::{Backend, TestApp};
use crate::sio::Socket;

/// A deployment with two gateways on MariaDB (one on the embedded
/// backend), and the index of the second: sockets there are "far" from
/// the first.
async fn two_gateways(backend: Backend) -> (TestApp, usize) {
    let mut app = TestApp::start(backend).await;
    let far = match backend {
        Backend::MySql => app.add_gateway().await,
        Backend::Embedded => 0,
    };
    (app, far)
}

/// Asserts `sock` is out of `room` and got nothing of it since: its refusal
/// comes after anything the room sent it before, so an empty backlog of
/// `new_message` proves none came.
async fn assert_shut_out(sock: &mut Socket, room: i64) {
    sock.expect_not_in_room(room, "am I still in?").await;
    sock.expect_none("new_message", Duration::ZERO).await;
}

async fn a_member_who_leaves_over_rest_is_taken_out_of_the_room_everywhere(backend: Backend) {
    let (app, far) = two_gateways(backend).await;
    let [ann, bob, cat] = app.users(["ann", "bob", "cat"]).await;
    let room = app.as_user(&ann).create_room("vault", Some("v-key")).await;
    for member in [&bob, &cat] {
        app.as_user(member).join_private("v-key").await;
    }
    let mut a = app.socket_on(0, &ann).await;
    let mut b_far = app.socket_on(far, &bob).await;
    let mut b_near = app.socket_on(0, &bob).await;
    let mut c_far = app.socket_on(far, &cat).await;
    for s in [&mut a, &mut b_far, &mut b_near, &mut c_far] {
        s.join(room).await;
    }

    app.as_user(&bob).leave(room).await;
    // The room's `user_list_updated` follows the change on each gateway.
    a.expect("user_list_updated").await;
    c_far.expect("user_list_updated").await;
    for s in [&mut b_near, &mut b_far] {
        s.expect_not_in_room(room, "after leaving").await;
    }
    // The room goes on without him: cat, on bob's far gateway, gets what
    // ann says; bob's sockets get none of it.
    let chat_id = a.send(room, "bob has left").await;
    assert_eq!(c_far.next_message().await["chat_id"], chat_id);
    for s in [&mut b_near, &mut b_far] {
        assert_shut_out(s, room).await;
    }
    let history = app
        .chat_history(&format!("room_id={room}"), Some(&ann))
        .await;
    assert_eq!(history.chat_ids(), vec![chat_id], "bob's tries were stored");
}

async fn sockets_of_non_members_leave_a_room_turned_private(backend: Backend) {
    let (app, far) = two_gateways(backend).await;
    let [ann, bob, dan] = app.users(["ann", "bob", "dan"]).await;
    let room = app.as_user(&ann).create_room("open house", None).await;
    app.as_user(&bob).join(room).await;
    // Dan reads the public room without being a member, as sockets may.
    let mut a = app.socket_on(0, &ann).await;
    let mut b_far = app.socket_on(far, &bob).await;
    let mut d_far = app.socket_on(far, &dan).await;
    let mut d_near = app.socket_on(0, &dan).await;
    for s in [&mut a, &mut b_far, &mut d_far, &mut d_near] {
        s.join(room).await;
    }

    app.as_user(&ann)
        .edit_room(room, "members only", Some("m-key"))
        .await;
    // Members (and the owner) stay and talk: a message said after the
    // change reaches each gateway after it.
    let chat_id = a.send(room, "just us now").await;
    assert_eq!(b_far.next_message().await["chat_id"], chat_id);
    assert_eq!(a.next_message().await["chat_id"], chat_id);
    let reply = b_far.send(room, "indeed").await;
    assert_eq!(a.next_message().await["chat_id"], reply);
    // Dan's sockets are out on both gateways, and heard none of it.
    for s in [&mut d_near, &mut d_far] {
        assert_shut_out(s, room).await;
        // Joining again is refused: a private room without a membership.
        s.expect_refusal(
            "join",
            serde_json::json!({ "room_id": room }),
            "Join failed",
            4,
        )
        .await;
    }
    app.chat_history(&format!("room_id={room}"), Some(&dan))
        .await
        .expect(404, "Room not found");
}

crate::on_both_stores!(
    a_member_who_leaves_over_rest_is_taken_out_of_the_room_everywhere,
    sockets_of_non_members_leave_a_room_turned_private,
);
