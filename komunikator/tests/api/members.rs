//! Memberships: joining public and private rooms, leaving, kicking, the
//! member lists, and the per-user counters of `GET /user/get_info`.

use serde_json::{Value, json};

use crate::harness::{Backend, Resp, TestApp, User};
use crate::rooms::keys;

/// The member names of a room, sorted, checking each entry's shape.
#[track_caller]
fn member_names(res: &Resp, room_id: i64) -> Vec<String> {
    assert_eq!(res.status, 200, "{res:?}");
    let mut names: Vec<String> = res
        .body
        .as_array()
        .unwrap_or_else(|| panic!("not a list: {res:?}"))
        .iter()
        .map(|m| {
            assert_eq!(keys(m), ["room_id", "user_name"], "{m}");
            assert_eq!(m["room_id"].as_i64(), Some(room_id), "{m}");
            m["user_name"].as_str().expect("user_name").to_owned()
        })
        .collect();
    names.sort();
    names
}

fn sorted(names: &[&str]) -> Vec<String> {
    let mut v: Vec<String> = names.iter().map(|s| (*s).to_owned()).collect();
    v.sort();
    v
}

async fn user_rooms(app: &TestApp, user: &User) -> Vec<Value> {
    app.as_user(user).user_rooms().await
}

fn room_ids(entries: &[Value]) -> Vec<i64> {
    let mut ids: Vec<i64> = entries
        .iter()
        .map(|e| e["room_id"].as_i64().expect("room_id"))
        .collect();
    ids.sort_unstable();
    ids
}

async fn join_public_makes_the_user_a_listed_member(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [alice, bob] = app.users(["alice", "bob"]).await;
    let room_id = app.as_user(&alice).create_room("Lobby", None).await;
    assert_eq!(user_rooms(&app, &bob).await, Vec::<Value>::new());

    let res = app.as_user(&bob).try_join(room_id).await;
    res.expect_message("Joined room successfully");
    assert_eq!(keys(&res.body), ["message"]);

    let names = member_names(&app.user_list(room_id, None).await, room_id);
    assert_eq!(names, sorted(&[&alice.name, &bob.name]));
    let names = member_names(&app.user_list(room_id, Some(&bob)).await, room_id);
    assert_eq!(names, sorted(&[&alice.name, &bob.name]));

    let entries = user_rooms(&app, &bob).await;
    assert_eq!(entries.len(), 1, "{entries:?}");
    let entry = &entries[0];
    assert_eq!(
        keys(entry),
        [
            "is_private",
            "room_id",
            "room_name",
            "room_owner",
            "user_name"
        ]
    );
    assert_eq!(entry["user_name"].as_str(), Some(bob.name.as_str()));
    assert_eq!(entry["room_id"].as_i64(), Some(room_id));
    assert_eq!(entry["room_name"].as_str(), Some("Lobby"));
    assert_eq!(entry["room_owner"].as_str(), Some(alice.name.as_str()));
    assert_eq!(entry["is_private"].as_bool(), Some(false));

    app.as_user(&bob)
        .try_join(room_id)
        .await
        .expect(400, "User already in room");
    assert_eq!(user_rooms(&app, &bob).await.len(), 1);
}

async fn user_rooms_lists_every_membership_of_the_caller_only(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [alice, bob] = app.users(["alice", "bob"]).await;
    let own = app
        .as_user(&alice)
        .create_room("Own", Some("own-key"))
        .await;
    let public = app.as_user(&bob).create_room("Bobs public", None).await;
    let private = app
        .as_user(&bob)
        .create_room("Bobs private", Some("bob-key"))
        .await;
    let _not_joined = app.as_user(&bob).create_room("Elsewhere", None).await;
    app.as_user(&alice).join(public).await;
    app.as_user(&alice).join_private("bob-key").await;

    let entries = user_rooms(&app, &alice).await;
    assert_eq!(room_ids(&entries), {
        let mut v = vec![own, public, private];
        v.sort_unstable();
        v
    });
    for entry in &entries {
        let id = entry["room_id"].as_i64().expect("room_id");
        let (name, owner, is_private) = if id == own {
            ("Own", &alice.name, true)
        } else if id == public {
            ("Bobs public", &bob.name, false)
        } else {
            ("Bobs private", &bob.name, true)
        };
        assert_eq!(
            entry,
            &json!({ "user_name": alice.name, "room_id": id, "room_name": name,
                     "room_owner": owner, "is_private": is_private })
        );
    }
    // Bob's list holds his three rooms, not Alice's.
    assert_eq!(user_rooms(&app, &bob).await.len(), 3);
}

async fn join_public_refuses_missing_unknown_and_private_rooms(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [alice, bob] = app.users(["alice", "bob"]).await;
    let private = app.as_user(&alice).create_room("Private", Some("pk")).await;
    for body in [
        json!({}),
        json!({ "room_id": null }),
        json!({ "room_id": "" }),
    ] {
        app.post("/api/room/join_public", Some(&bob.token), body)
            .await
            .expect(400, "Missing room_id parameter");
    }
    app.as_user(&bob)
        .try_join(private + 100)
        .await
        .expect(404, "Room not found");
    app.as_user(&bob)
        .try_join(private)
        .await
        .expect(404, "Room not found");
    assert_eq!(user_rooms(&app, &bob).await, Vec::<Value>::new());
    let names = member_names(&app.user_list(private, Some(&alice)).await, private);
    assert_eq!(names, std::slice::from_ref(&alice.name));
}

async fn join_private_by_key_makes_the_user_a_member(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [alice, bob] = app.users(["alice", "bob"]).await;
    let key64 = "😀".repeat(64);
    let room_id = app.as_user(&alice).create_room("Vault", Some(&key64)).await;

    let res = app.as_user(&bob).try_join_private(&key64).await;
    res.expect_message("Joined room successfully");
    assert_eq!(keys(&res.body), ["message"]);
    let entries = user_rooms(&app, &bob).await;
    assert_eq!(
        entries,
        [
            json!({ "user_name": bob.name, "room_id": room_id, "room_name": "Vault",
                 "room_owner": alice.name, "is_private": true })
        ]
    );
    let names = member_names(&app.user_list(room_id, Some(&bob)).await, room_id);
    assert_eq!(names, sorted(&[&alice.name, &bob.name]));

    app.as_user(&bob)
        .try_join_private(&key64)
        .await
        .expect(400, "User already in room");
    app.as_user(&alice)
        .try_join_private(&key64)
        .await
        .expect(400, "User already in room");
}

async fn join_private_refuses_missing_wrong_and_overlong_keys(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [alice, bob] = app.users(["alice", "bob"]).await;
    app.as_user(&alice)
        .create_room("Vault", Some("right-key"))
        .await;
    app.as_user(&alice).create_room("Open", None).await;
    for body in [
        json!({}),
        json!({ "access_key": null }),
        json!({ "access_key": "" }),
        json!({ "access_key": "  " }),
    ] {
        app.post("/api/room/join_private", Some(&bob.token), body)
            .await
            .expect(400, "Missing access_key parameter");
    }
    app.as_user(&bob)
        .try_join_private("wrong-key")
        .await
        .expect(404, "Room not found");
    app.as_user(&bob)
        .try_join_private(&"k".repeat(64))
        .await
        .expect(404, "Room not found");
    app.as_user(&bob)
        .try_join_private(&"ż".repeat(65))
        .await
        .expect_refused(400, "over 64 characters");
    assert_eq!(user_rooms(&app, &bob).await, Vec::<Value>::new());
}

async fn private_member_list_is_only_for_members(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [alice, bob, eve] = app.users(["alice", "bob", "eve"]).await;
    let room_id = app.as_user(&alice).create_room("Private", Some("pk")).await;
    app.as_user(&bob).join_private("pk").await;

    app.user_list(room_id, None)
        .await
        .expect(404, "Room not found");
    app.user_list(room_id, Some(&eve))
        .await
        .expect(404, "Room not found");
    for viewer in [&alice, &bob] {
        let names = member_names(&app.user_list(room_id, Some(viewer)).await, room_id);
        assert_eq!(names, sorted(&[&alice.name, &bob.name]));
    }
}

async fn user_list_needs_an_existing_room_id(backend: Backend) {
    let app = TestApp::start(backend).await;
    let alice = app.user("alice").await;
    app.get("/api/user_list", None)
        .await
        .expect(400, "Missing room_id parameter");
    app.get("/api/user_list", Some(&alice.token))
        .await
        .expect(400, "Missing room_id parameter");
    app.get("/api/user_list?room_id=4242", None)
        .await
        .expect(404, "Room not found");
    let room_id = app.as_user(&alice).create_room("Room", None).await;
    // A numeric string in the query is the normal form; it works anonymously.
    let names = member_names(&app.user_list(room_id, None).await, room_id);
    assert_eq!(names, std::slice::from_ref(&alice.name));
}

async fn leave_removes_the_membership(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [alice, bob] = app.users(["alice", "bob"]).await;
    let public = app.as_user(&alice).create_room("Public", None).await;
    let private = app.as_user(&alice).create_room("Private", Some("pk")).await;
    app.as_user(&bob).join(public).await;
    app.as_user(&bob).join_private("pk").await;
    assert_eq!(user_rooms(&app, &bob).await.len(), 2);

    let res = app.as_user(&bob).try_leave(public).await;
    res.expect_message("Left room successfully");
    assert_eq!(keys(&res.body), ["message"]);
    assert_eq!(room_ids(&user_rooms(&app, &bob).await), [private]);
    let names = member_names(&app.user_list(public, None).await, public);
    assert_eq!(names, std::slice::from_ref(&alice.name));
    app.as_user(&bob)
        .try_leave(public)
        .await
        .expect(404, "User not in room");

    // Leaving a private room also ends read access to it.
    app.as_user(&bob).leave(private).await;
    assert_eq!(user_rooms(&app, &bob).await, Vec::<Value>::new());
    app.get(&format!("/api/room?room_id={private}"), Some(&bob.token))
        .await
        .expect(404, "Room not found");
    app.user_list(private, Some(&bob))
        .await
        .expect(404, "Room not found");
    let names = member_names(&app.user_list(private, Some(&alice)).await, private);
    assert_eq!(names, std::slice::from_ref(&alice.name));
    // Re-joining works.
    app.as_user(&bob).join_private("pk").await;
}

async fn leave_refuses_missing_unknown_and_foreign_rooms(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [alice, bob] = app.users(["alice", "bob"]).await;
    let public = app.as_user(&alice).create_room("Public", None).await;
    for body in [
        json!({}),
        json!({ "room_id": null }),
        json!({ "user_name": bob.name }),
    ] {
        app.post("/api/room/leave", Some(&bob.token), body)
            .await
            .expect(400, "Missing room_id or user_name parameter");
    }
    app.as_user(&bob)
        .try_leave(public + 100)
        .await
        .expect(404, "Room not found");
    app.as_user(&bob)
        .try_leave(public)
        .await
        .expect(404, "User not in room");
    // The token decides who leaves, not a user_name in the body.
    app.post(
        "/api/room/leave",
        Some(&bob.token),
        json!({ "room_id": public, "user_name": alice.name }),
    )
    .await
    .expect(404, "User not in room");
    let names = member_names(&app.user_list(public, None).await, public);
    assert_eq!(names, std::slice::from_ref(&alice.name));
}

async fn owner_kicks_a_member_who_then_loses_access(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [alice, bob, carol] = app.users(["alice", "bob", "carol"]).await;
    let room_id = app.as_user(&alice).create_room("Private", Some("pk")).await;
    app.as_user(&bob).join_private("pk").await;
    app.as_user(&carol).join_private("pk").await;

    let res = app.as_user(&alice).try_kick(room_id, &bob).await;
    res.expect_message("User kicked successfully");
    assert_eq!(keys(&res.body), ["message"]);

    let names = member_names(&app.user_list(room_id, Some(&alice)).await, room_id);
    assert_eq!(names, sorted(&[&alice.name, &carol.name]));
    assert_eq!(user_rooms(&app, &bob).await, Vec::<Value>::new());
    for path in ["/api/room", "/api/user_list", "/api/chat_history"] {
        app.get(&format!("{path}?room_id={room_id}"), Some(&bob.token))
            .await
            .expect(404, "Room not found");
    }
    app.as_user(&alice)
        .try_kick(room_id, &bob)
        .await
        .expect(404, "User not in room");

    // Kicking from a public room works the same way.
    let public = app.as_user(&alice).create_room("Public", None).await;
    app.as_user(&bob).join(public).await;
    app.as_user(&alice).kick(public, &bob).await;
    let names = member_names(&app.user_list(public, None).await, public);
    assert_eq!(names, std::slice::from_ref(&alice.name));
}

async fn only_the_owner_may_kick(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [alice, bob, carol, eve] = app.users(["alice", "bob", "carol", "eve"]).await;
    let private = app.as_user(&alice).create_room("Private", Some("pk")).await;
    let public = app.as_user(&alice).create_room("Public", None).await;
    for user in [&bob, &carol] {
        app.as_user(user).join_private("pk").await;
        app.as_user(user).join(public).await;
    }

    // A member who is not the owner.
    for room_id in [private, public] {
        app.as_user(&carol)
            .try_kick(room_id, &bob)
            .await
            .expect(403, "You are not the owner of this room");
        app.as_user(&carol)
            .try_kick(room_id, &alice)
            .await
            .expect(403, "You are not the owner of this room");
    }
    // A stranger to a public room.
    app.as_user(&eve)
        .try_kick(public, &bob)
        .await
        .expect(403, "You are not the owner of this room");
    // A stranger to a private room is refused too (and learns nothing more).
    let res = app.as_user(&eve).try_kick(private, &bob).await;
    assert!(
        [
            (403, "You are not the owner of this room"),
            (404, "Room not found")
        ]
        .contains(&(res.status, res.error())),
        "{res:?}"
    );

    for room_id in [private, public] {
        let names = member_names(&app.user_list(room_id, Some(&alice)).await, room_id);
        assert_eq!(names, sorted(&[&alice.name, &bob.name, &carol.name]));
    }
}

async fn the_owner_cannot_be_kicked(backend: Backend) {
    let app = TestApp::start(backend).await;
    let alice = app.user("alice").await;
    let room_id = app.as_user(&alice).create_room("Mine", None).await;
    let res = app.as_user(&alice).try_kick(room_id, &alice).await;
    assert_eq!(res.status, 400, "{res:?}");
    assert_eq!(res.error(), "The owner cannot be kicked");
    let names = member_names(&app.user_list(room_id, None).await, room_id);
    assert_eq!(names, std::slice::from_ref(&alice.name));
}

async fn kick_refuses_missing_parameters_and_non_members(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [alice, bob] = app.users(["alice", "bob"]).await;
    let room_id = app.as_user(&alice).create_room("Room", None).await;
    for body in [
        json!({}),
        json!({ "room_id": room_id }),
        json!({ "user_to_kick": bob.name }),
        json!({ "room_id": room_id, "user_to_kick": "" }),
        json!({ "room_id": null, "user_to_kick": bob.name }),
    ] {
        app.post("/api/user_kick", Some(&alice.token), body)
            .await
            .expect(400, "Missing user_name or room_id parameter");
    }
    // A registered user who is not a member, and a name nobody has.
    app.as_user(&alice)
        .try_kick(room_id, &bob)
        .await
        .expect(404, "User not in room");
    app.as_user(&alice)
        .try_kick(room_id, "nobody_at_all")
        .await
        .expect(404, "User not in room");
    let res = app.as_user(&alice).try_kick(room_id + 100, &bob).await;
    assert_eq!(res.status, 404, "{res:?}");
}

/// The body of `GET /api/user/get_info`: messages sent, private and public
/// rooms owned, private and public rooms the user is a member of.
pub(crate) fn counters(messages: u32, owned: (u32, u32), member: (u32, u32)) -> Value {
    json!({ "message_count": messages,
            "private_rooms_owned": owned.0, "public_rooms_owned": owned.1,
            "private_rooms_member": member.0, "public_rooms_member": member.1 })
}

async fn user_info_counts_rooms_owned_joined_and_messages_sent(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [alice, bob] = app.users(["alice", "bob"]).await;
    let (ann_acts, bob_acts) = (app.as_user(&alice), app.as_user(&bob));
    let res = app.get("/api/user/get_info", Some(&alice.token)).await;
    assert_eq!(
        (res.status, &res.body),
        (200, &counters(0, (0, 0), (0, 0))),
        "{res:?}"
    );

    let own_public = ann_acts.create_room("A public", None).await;
    let own_private = ann_acts.create_room("A private 1", Some("a-key-1")).await;
    ann_acts.create_room("A private 2", Some("a-key-2")).await;
    let bob_public = bob_acts.create_room("B public", None).await;
    let bob_public_2 = bob_acts.create_room("B public 2", None).await;
    let bob_private = bob_acts.create_room("B private", Some("b-key")).await;
    ann_acts.join(bob_public).await;
    ann_acts.join(bob_public_2).await;
    ann_acts.join_private("b-key").await;
    app.sql(format!(
        "INSERT INTO chat_history (message_id, room_id, user_name, message, message_date) VALUES \
         (1, {own_public}, '{a}', 'one', '2026-11-24 19:20:24.123'), \
         (2, {own_private}, '{a}', 'two', '2026-11-24 19:20:25.123'), \
         (3, {bob_public}, '{a}', 'three', '2026-11-24 19:20:26.123'), \
         (4, {bob_public}, '{b}', 'bob', '2026-11-24 19:20:27.123'), \
         (5, {bob_private}, '{a}', 'four', '2026-11-24 19:20:28.123')",
        a = alice.name,
        b = bob.name
    ))
    .await;

    let res = app.get("/api/user/get_info", Some(&alice.token)).await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(res.body, counters(4, (2, 1), (3, 3)));
    assert_eq!(bob_acts.info().await, counters(1, (1, 2), (1, 2)));

    // Leaving and turning a private room public move the counters.
    ann_acts.leave(bob_public_2).await;
    ann_acts.edit_room(own_private, "Now public", None).await;
    assert_eq!(ann_acts.info().await, counters(4, (1, 2), (2, 3)));
}

crate::on_both_stores!(
    join_public_makes_the_user_a_listed_member,
    user_rooms_lists_every_membership_of_the_caller_only,
    join_public_refuses_missing_unknown_and_private_rooms,
    join_private_by_key_makes_the_user_a_member,
    join_private_refuses_missing_wrong_and_overlong_keys,
    private_member_list_is_only_for_members,
    user_list_needs_an_existing_room_id,
    leave_removes_the_membership,
    leave_refuses_missing_unknown_and_foreign_rooms,
    owner_kicks_a_member_who_then_loses_access,
    only_the_owner_may_kick,
    the_owner_cannot_be_kicked,
    kick_refuses_missing_parameters_and_non_members,
    user_info_counts_rooms_owned_joined_and_messages_sent,
);
