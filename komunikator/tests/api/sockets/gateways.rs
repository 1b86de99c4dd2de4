//! Two gateways (MariaDB): a room's joins, leaves, messages, list updates
//! and kicks reach its sockets whichever gateway each is connected to.

use serde_json::json;

use super::history;
use crate::harness::{Backend, Chat, TestApp};

#[tokio::test]
async fn two_gateways_share_a_rooms_joins_leaves_and_messages() {
    let mut app = TestApp::start(Backend::MySql).await;
    app.add_gateway().await;
    // Ann's socket on the first gateway, Bob's on the second.
    let Chat(room, [ann, bob], [mut a, mut b]) = app.chat("lobby", ["ann", "bob"]).await;
    assert_eq!(
        a.expect("user_joined").await,
        json!({ "user_name": bob.name, "room_id": room })
    );

    let from_ann = a.send(room, "from gateway 0").await;
    let from_bob = b.send(room, "from gateway 1").await;
    assert!(from_ann < from_bob);
    for s in [&mut a, &mut b] {
        let first = s.next_message().await;
        let then = s.next_message().await;
        assert_eq!(
            (&first["chat_id"], &first["user_name"], &first["message"]),
            (&json!(from_ann), &json!(ann.name), &json!("from gateway 0"))
        );
        assert_eq!(
            (&then["chat_id"], &then["user_name"], &then["message"]),
            (&json!(from_bob), &json!(bob.name), &json!("from gateway 1"))
        );
    }
    b.emit("leave", json!({ "room_id": room }));
    assert_eq!(
        a.expect("user_left").await,
        json!({ "user_name": bob.name, "room_id": room })
    );
    let stored = history(&app, &ann, room, 2).await;
    assert_eq!(stored.len(), 2);
}

#[tokio::test]
async fn room_list_updates_and_kicks_reach_sockets_on_every_gateway() {
    let mut app = TestApp::start(Backend::MySql).await;
    let second = app.add_gateway().await;
    let cid = app.user("cid").await;
    // Ann's socket on the first gateway, Bob's on the second.
    let Chat(room, [ann, bob], [mut a, mut b]) = app.chat_of_members("lobby", ["ann", "bob"]).await;
    let mut c = app.socket_on(second, &cid).await; // in no room

    app.as_user(&cid).create_room("another", None).await;
    for s in [&mut a, &mut b, &mut c] {
        s.expect("room_list_updated").await;
    }

    app.as_user(&ann).kick(room, &bob).await;
    for s in [&mut a, &mut b] {
        assert_eq!(
            s.expect("user_kicked").await,
            json!({ "user_name": bob.name })
        );
        s.expect("user_list_updated").await;
    }
    b.expect_not_in_room(room, "x").await;
    // Cid, on Bob's gateway, witnesses when the message has reached it.
    c.join(room).await;
    let chat_id = a.send(room, "after the kick").await;
    assert_eq!(a.next_message().await["chat_id"], chat_id);
    assert_eq!(c.next_message().await["chat_id"], chat_id);
    b.assert_none_so_far("new_message").await;
}
