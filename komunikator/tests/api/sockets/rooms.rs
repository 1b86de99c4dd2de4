//! Being in a room: `join` and `leave`, who may join which room, and
//! that nothing of a room reaches a socket outside it.

use serde_json::json;

use super::history;
use crate::harness::{Backend, Chat, TestApp};

async fn join_announces_the_joiner_to_the_whole_room_including_the_joiner(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [ann, bob, cid] = app.users(["ann", "bob", "cid"]).await;
    let room = app.as_user(&ann).create_room("lobby", None).await;
    let other = app.as_user(&cid).create_room("elsewhere", None).await;
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await;
    let mut c = app.socket(&cid).await;
    a.join(room).await;
    c.join(other).await;

    b.emit("join", json!({ "room_id": room, "user_name": bob.name }));
    let joined = json!({ "user_name": bob.name, "room_id": room });
    assert_eq!(b.expect("user_joined").await, joined);
    assert_eq!(a.expect("user_joined").await, joined);
    c.assert_none_so_far("user_joined").await;
}

async fn private_rooms_can_be_joined_by_the_owner_and_members_only(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [ann, bob] = app.users(["ann", "bob"]).await;
    let private = app.as_user(&ann).create_room("secret", Some("key-1")).await;
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await;

    let join = json!({ "room_id": private });
    b.expect_refusal("join", join.clone(), "Join failed", 4)
        .await;
    // The owner joins; the refused socket was not added.
    a.join(private).await;
    a.assert_none_so_far("user_joined").await;
    b.expect_not_in_room(private, "hi").await;

    app.as_user(&bob).join_private("key-1").await;
    b.emit("join", join);
    let joined = json!({ "user_name": bob.name, "room_id": private });
    assert_eq!(b.expect("user_joined").await, joined);
    assert_eq!(a.expect("user_joined").await, joined);
    let chat_id = b.send(private, "inside").await;
    assert_eq!(a.next_message().await["chat_id"], chat_id);
}

async fn joining_an_unknown_room_fails_with_code_4(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let room = app.as_user(&ann).create_room("lobby", None).await;
    let mut a = app.socket(&ann).await;
    for id in [
        json!(room + 1000),
        json!((room + 1000).to_string()),
        json!(0),
        json!(-1),
    ] {
        a.expect_refusal("join", json!({ "room_id": id }), "Join failed", 4)
            .await;
    }
    a.join(room).await;
    a.assert_usable(room).await;
}

async fn leave_tells_the_others_and_stops_delivery_to_the_leaver(backend: Backend) {
    let app = TestApp::start(backend).await;
    let Chat(room, [_, bob, _], [mut a, mut b, mut c]) =
        app.chat("lobby", ["ann", "bob", "cid"]).await;

    b.emit("leave", json!({ "room_id": room, "user_name": bob.name }));
    let left = json!({ "user_name": bob.name, "room_id": room });
    assert_eq!(a.expect("user_left").await, left);
    assert_eq!(c.expect("user_left").await, left);
    b.assert_none_so_far("user_left").await;

    let chat_id = a.send(room, "after bob left").await;
    assert_eq!(c.next_message().await["chat_id"], chat_id);
    b.assert_none_so_far("new_message").await;
    // And bob may no longer send to it.
    b.expect_not_in_room(room, "x").await;
}

/// Only private rooms need a membership: anyone may watch a public room.
async fn a_public_room_can_be_joined_without_a_membership(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [ann, eve] = app.users(["ann", "eve"]).await;
    let room = app.as_user(&ann).create_room("open", None).await;
    let mut watcher = app.socket(&eve).await;
    watcher.join(room).await;
    let mut a = app.socket(&ann).await;
    a.join(room).await;
    let chat_id = a.send(room, "for everyone").await;
    assert_eq!(watcher.expect("new_message").await["chat_id"], chat_id);
    let members = app.user_list(room, None).await;
    assert_eq!(
        members.body,
        json!([{ "user_name": ann.name, "room_id": room }]),
        "eve is no member"
    );
}

async fn a_non_member_never_receives_a_private_rooms_messages(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [ann, bob, eve] = app.users(["ann", "bob", "eve"]).await;
    let private = app.as_user(&ann).create_room("secret", Some("k")).await;
    let lobby = app.as_user(&eve).create_room("lobby", None).await;
    app.as_user(&bob).join_private("k").await;
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await;
    let mut e = app.socket(&eve).await;
    a.join(private).await;
    b.join(private).await;

    for id in [json!(private), json!(private.to_string())] {
        e.expect_refusal("join", json!({ "room_id": id }), "Join failed", 4)
            .await;
    }
    e.join(lobby).await;
    // Naming a member does not help: that is someone else's identity.
    e.expect_refused_message(
        json!({ "room_id": private, "user_name": ann.name, "message": "let me in" }),
        "Forbidden",
        5,
    )
    .await;
    e.expect_not_in_room(private, "let me in").await;

    let chat_id = a.send(private, "members only").await;
    assert_eq!(b.next_message().await["chat_id"], chat_id);
    e.assert_none_so_far("new_message").await;
    let stored = history(&app, &ann, private, 1).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["message"], "members only");
}

async fn sockets_in_another_room_do_not_get_its_messages_or_joins(backend: Backend) {
    let app = TestApp::start(backend).await;
    let Chat(one, [ann], [mut a]) = app.chat("one", ["ann"]).await;
    let Chat(two, _, [mut b]) = app.chat("two", ["bob"]).await;
    let in_one = a.send(one, "in one").await;
    let in_two = b.send(two, "in two").await;
    assert_eq!(a.next_message().await["chat_id"], in_one);
    assert_eq!(b.next_message().await["chat_id"], in_two);
    a.assert_none_so_far("new_message").await;
    b.assert_none_so_far("new_message").await;
    let mut a2 = app.socket(&ann).await;
    a2.join(one).await;
    b.assert_none_so_far("user_joined").await;
}

crate::on_both_stores!(
    join_announces_the_joiner_to_the_whole_room_including_the_joiner,
    private_rooms_can_be_joined_by_the_owner_and_members_only,
    joining_an_unknown_room_fails_with_code_4,
    leave_tells_the_others_and_stops_delivery_to_the_leaver,
    a_public_room_can_be_joined_without_a_membership,
    a_non_member_never_receives_a_private_rooms_messages,
    sockets_in_another_room_do_not_get_its_messages_or_joins,
);
