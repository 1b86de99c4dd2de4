//! Rooms: the public list, reading one room, create, edit and delete, and the
//! room-id and auth rules every room endpoint shares.

use chrono::{DateTime, Utc};
use serde_json::{Value, json};

use crate::harness::{Backend, TestApp};

/// The sorted keys of a JSON object.
pub(crate) fn keys(v: &Value) -> Vec<&str> {
    let mut keys: Vec<&str> = v
        .as_object()
        .unwrap_or_else(|| panic!("not an object: {v}"))
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    keys
}

/// Checks the contract's timestamp shape (`2026-11-24T19:20:24.123Z`) and parses it.
#[track_caller]
pub(crate) fn assert_timestamp(value: &Value) -> DateTime<Utc> {
    let s = value
        .as_str()
        .unwrap_or_else(|| panic!("timestamp is not a string: {value}"));
    let shape = s.len() == 24
        && s.bytes().enumerate().all(|(i, c)| match i {
            4 | 7 => c == b'-',
            10 => c == b'T',
            13 | 16 => c == b':',
            19 => c == b'.',
            23 => c == b'Z',
            _ => c.is_ascii_digit(),
        });
    assert!(shape, "not RFC 3339 UTC with milliseconds and Z: {s}");
    DateTime::parse_from_rfc3339(s)
        .unwrap_or_else(|e| panic!("invalid timestamp {s}: {e}"))
        .with_timezone(&Utc)
}

/// Checks a room object field by field; `key` is the access key the viewer must see.
#[track_caller]
pub(crate) fn assert_room(
    v: &Value,
    room_id: i64,
    name: &str,
    owner: &str,
    is_private: bool,
    key: Option<&str>,
) {
    assert_eq!(
        keys(v),
        [
            "access_key",
            "create_date",
            "is_private",
            "room_id",
            "room_name",
            "room_owner"
        ],
        "{v}"
    );
    assert_eq!(v["room_id"].as_i64(), Some(room_id), "{v}");
    assert_eq!(v["room_name"].as_str(), Some(name), "{v}");
    assert_eq!(v["room_owner"].as_str(), Some(owner), "{v}");
    assert_eq!(v["is_private"].as_bool(), Some(is_private), "{v}");
    assert_eq!(v["access_key"], json!(key), "{v}");
    let created = assert_timestamp(&v["create_date"]);
    let age = Utc::now().signed_duration_since(created);
    assert!(
        age.num_seconds().abs() < 600,
        "create_date {created} is not about now"
    );
}

/// A token for `user_name` that is well-formed but signed with another secret.
pub(crate) fn wrongly_signed_token(user_name: &str) -> String {
    let now = Utc::now().timestamp();
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &json!({
            "sub": user_name,
            "iat": now,
            "nbf": now,
            "exp": now + 600,
            "jti": "0123456789abcdef0123",
            "type": "access",
        }),
        &jsonwebtoken::EncodingKey::from_secret(b"not-the-server-secret-at-all-0123456789"),
    )
    .expect("sign token")
}

/// The public room list.
async fn public_rooms(app: &TestApp, token: Option<&str>) -> Vec<Value> {
    app.get("/api/rooms", token).await.list()
}

fn find(rooms: &[Value], room_id: i64) -> Option<&Value> {
    rooms
        .iter()
        .find(|r| r["room_id"].as_i64() == Some(room_id))
}

async fn create_answers_room_id_and_makes_the_creator_owner_and_member(backend: Backend) {
    let app = TestApp::start(backend).await;
    let alice = app.user("alice").await;
    let res = app.as_user(&alice).try_create_room("Lobby", None).await;
    res.expect_message("Room created successfully");
    assert_eq!(keys(&res.body), ["message", "room_id"], "{res:?}");
    let room_id = res.body["room_id"].as_i64().expect("room_id is an integer");
    assert!(room_id > 0);

    // Anyone may read a public room; the creator is its owner.
    let res = app.get_room(room_id, None).await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_room(&res.body, room_id, "Lobby", &alice.name, false, None);
    let res = app.get_room(room_id, Some(&alice)).await;
    assert_room(&res.body, room_id, "Lobby", &alice.name, false, None);

    // ... and a member: an older client's follow-up join is refused.
    app.as_user(&alice)
        .try_join(room_id)
        .await
        .expect(400, "User already in room");
    let res = app.user_list(room_id, None).await;
    assert_eq!(
        res.body,
        json!([{ "user_name": alice.name, "room_id": room_id }])
    );

    // Without is_private a room is public, and a public room keeps no key.
    let res = app
        .post(
            "/api/room/create",
            Some(&alice.token),
            json!({ "room_name": "Other", "access_key": "ignored" }),
        )
        .await;
    res.expect_message("Room created successfully");
    let other = res.body["room_id"].as_i64().expect("room_id");
    assert_ne!(other, room_id);
    let res = app.get_room(other, Some(&alice)).await;
    assert_room(&res.body, other, "Other", &alice.name, false, None);
}

async fn private_room_key_is_shown_only_to_its_owner(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [alice, bob, eve] = app.users(["alice", "bob", "eve"]).await;
    let room_id = app
        .as_user(&alice)
        .create_room("Secret", Some("sesame"))
        .await;

    let res = app.get_room(room_id, Some(&alice)).await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_room(
        &res.body,
        room_id,
        "Secret",
        &alice.name,
        true,
        Some("sesame"),
    );

    app.as_user(&bob).join_private("sesame").await;
    let res = app.get_room(room_id, Some(&bob)).await;
    assert_eq!(res.status, 200, "a member reads the room: {res:?}");
    assert_room(&res.body, room_id, "Secret", &alice.name, true, None);

    app.get_room(room_id, None)
        .await
        .expect(404, "Room not found");
    app.get_room(room_id, Some(&eve))
        .await
        .expect(404, "Room not found");

    // Private rooms are never listed, not even to their owner.
    assert!(find(&public_rooms(&app, None).await, room_id).is_none());
    assert!(find(&public_rooms(&app, Some(&alice.token)).await, room_id).is_none());
}

async fn room_list_shows_every_public_room_and_no_private_one(backend: Backend) {
    let app = TestApp::start(backend).await;
    assert_eq!(public_rooms(&app, None).await, Vec::<Value>::new());
    let [alice, bob] = app.users(["alice", "bob"]).await;
    let a = app.as_user(&alice).create_room("Alpha", None).await;
    let b = app.as_user(&bob).create_room("Beta", None).await;
    let hidden = app
        .as_user(&alice)
        .create_room("Hidden", Some("k-hidden"))
        .await;

    let rooms = public_rooms(&app, None).await;
    assert_eq!(rooms.len(), 2, "{rooms:?}");
    assert_room(
        find(&rooms, a).expect("Alpha listed"),
        a,
        "Alpha",
        &alice.name,
        false,
        None,
    );
    assert_room(
        find(&rooms, b).expect("Beta listed"),
        b,
        "Beta",
        &bob.name,
        false,
        None,
    );
    assert!(find(&rooms, hidden).is_none());
    // The same with a token.
    assert_eq!(public_rooms(&app, Some(&bob.token)).await.len(), 2);
}

async fn create_without_a_room_name_is_rejected(backend: Backend) {
    let app = TestApp::start(backend).await;
    let alice = app.user("alice").await;
    for body in [
        json!({ "is_private": false }),
        json!({ "room_name": "", "is_private": false }),
        json!({ "room_name": "   ", "is_private": false }),
        json!({ "room_name": null, "is_private": true, "access_key": "k1" }),
        json!({}),
    ] {
        app.post("/api/room/create", Some(&alice.token), body)
            .await
            .expect(400, "Missing room_name or room_owner parameter");
    }
    // No body at all.
    let res = app
        .send(app.request(
            reqwest::Method::POST,
            "/api/room/create",
            Some(&alice.token),
        ))
        .await;
    res.expect(400, "Missing room_name or room_owner parameter");
    assert_eq!(public_rooms(&app, None).await, Vec::<Value>::new());
}

async fn private_room_without_access_key_is_rejected(backend: Backend) {
    let app = TestApp::start(backend).await;
    let alice = app.user("alice").await;
    for body in [
        json!({ "room_name": "P", "is_private": true }),
        json!({ "room_name": "P", "is_private": true, "access_key": null }),
        json!({ "room_name": "P", "is_private": true, "access_key": "" }),
        json!({ "room_name": "P", "is_private": true, "access_key": "   " }),
    ] {
        app.post("/api/room/create", Some(&alice.token), body)
            .await
            .expect(400, "Missing access_key parameter");
    }
    let res = app.get("/api/user_rooms", Some(&alice.token)).await;
    assert_eq!(res.body, json!([]), "no room was created");
}

async fn duplicate_access_key_is_rejected_on_create_and_edit(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [alice, bob] = app.users(["alice", "bob"]).await;
    let first = app
        .as_user(&alice)
        .create_room("First", Some("shared-key"))
        .await;

    let bob_acts = app.as_user(&bob);
    let taken = "Room with this access key already exists";
    bob_acts
        .try_create_room("Copy", Some("shared-key"))
        .await
        .expect(400, taken);

    let second = bob_acts.create_room("Second", Some("other-key")).await;
    bob_acts
        .try_edit_room(second, "Second", Some("shared-key"))
        .await
        .expect(400, taken);
    let public = bob_acts.create_room("Public", None).await;
    bob_acts
        .try_edit_room(public, "Public", Some("shared-key"))
        .await
        .expect(400, taken);

    // Nothing changed, and a room may keep its own key.
    let res = app.get_room(second, Some(&bob)).await;
    assert_room(
        &res.body,
        second,
        "Second",
        &bob.name,
        true,
        Some("other-key"),
    );
    let res = app.get_room(public, Some(&bob)).await;
    assert_room(&res.body, public, "Public", &bob.name, false, None);
    bob_acts
        .edit_room(second, "Renamed", Some("other-key"))
        .await;
    let res = app.get_room(first, Some(&alice)).await;
    assert_room(
        &res.body,
        first,
        "First",
        &alice.name,
        true,
        Some("shared-key"),
    );
}

async fn room_name_limit_is_64_characters_not_bytes(backend: Backend) {
    let app = TestApp::start(backend).await;
    let alice = app.user("alice").await;
    for name in ["ż".repeat(64), "😀".repeat(64), "a".repeat(64)] {
        let room_id = app.as_user(&alice).create_room(&name, None).await;
        let res = app.get_room(room_id, None).await;
        assert_room(&res.body, room_id, &name, &alice.name, false, None);
    }
    for name in ["ż".repeat(65), "a".repeat(65)] {
        app.post(
            "/api/room/create",
            Some(&alice.token),
            json!({ "room_name": name, "is_private": false }),
        )
        .await
        .expect_refused(400, "over 64 characters");
    }
    assert_eq!(public_rooms(&app, None).await.len(), 3);

    // The same limit on edit.
    let room_id = app.as_user(&alice).create_room("short", None).await;
    let long = "😀".repeat(64);
    app.as_user(&alice).edit_room(room_id, &long, None).await;
    let res = app.get_room(room_id, None).await;
    assert_room(&res.body, room_id, &long, &alice.name, false, None);
    app.post(
        "/api/room/edit",
        Some(&alice.token),
        json!({ "room_id": room_id, "new_name": "😀".repeat(65), "is_private": false }),
    )
    .await
    .expect_refused(400, "over 64 characters");
    let res = app.get_room(room_id, None).await;
    assert_eq!(res.body["room_name"].as_str(), Some(long.as_str()));
}

async fn access_key_limit_is_64_characters_on_create_and_edit(backend: Backend) {
    let app = TestApp::start(backend).await;
    let alice = app.user("alice").await;
    let key64 = "ż".repeat(64);
    let room_id = app.as_user(&alice).create_room("Keyed", Some(&key64)).await;
    let res = app.get_room(room_id, Some(&alice)).await;
    assert_room(&res.body, room_id, "Keyed", &alice.name, true, Some(&key64));

    app.post(
        "/api/room/create",
        Some(&alice.token),
        json!({ "room_name": "TooLong", "is_private": true, "access_key": "k".repeat(65) }),
    )
    .await
    .expect_refused(400, "over 64 characters");

    let ascii64 = "k".repeat(64);
    app.post(
        "/api/room/edit",
        Some(&alice.token),
        json!({ "room_id": room_id, "new_name": "Keyed", "is_private": true,
                "new_access_key": ascii64 }),
    )
    .await
    .expect_message("Room edited successfully");
    app.post(
        "/api/room/edit",
        Some(&alice.token),
        json!({ "room_id": room_id, "new_name": "Keyed", "is_private": true,
                    "new_access_key": "😀".repeat(65) }),
    )
    .await
    .expect_refused(400, "over 64 characters");
    let res = app.get_room(room_id, Some(&alice)).await;
    assert_room(
        &res.body,
        room_id,
        "Keyed",
        &alice.name,
        true,
        Some(&ascii64),
    );
    let res = app.get("/api/user_rooms", Some(&alice.token)).await;
    assert_eq!(res.body.as_array().map(Vec::len), Some(1), "{res:?}");
}

async fn edit_to_private_hides_the_room_and_edit_to_public_clears_the_key(backend: Backend) {
    let app = TestApp::start(backend).await;
    let alice = app.user("alice").await;
    let room_id = app.as_user(&alice).create_room("Open", None).await;

    app.as_user(&alice)
        .edit_room(room_id, "Closed", Some("door"))
        .await;
    let res = app.get_room(room_id, Some(&alice)).await;
    assert_room(
        &res.body,
        room_id,
        "Closed",
        &alice.name,
        true,
        Some("door"),
    );
    app.get_room(room_id, None)
        .await
        .expect(404, "Room not found");
    assert!(find(&public_rooms(&app, None).await, room_id).is_none());

    // Back to public: the key is cleared even when one is sent.
    app.post(
        "/api/room/edit",
        Some(&alice.token),
        json!({ "room_id": room_id, "new_name": "Open again", "is_private": false,
                "new_access_key": "door" }),
    )
    .await
    .expect_message("Room edited successfully");
    let res = app.get_room(room_id, Some(&alice)).await;
    assert_room(&res.body, room_id, "Open again", &alice.name, false, None);
    let res = app.get_room(room_id, None).await;
    assert_room(&res.body, room_id, "Open again", &alice.name, false, None);
    let rooms = public_rooms(&app, None).await;
    assert_room(
        find(&rooms, room_id).expect("listed again"),
        room_id,
        "Open again",
        &alice.name,
        false,
        None,
    );
    // The old key no longer opens anything and is free for another room.
    let bob = app.user("bob").await;
    app.as_user(&bob)
        .try_join_private("door")
        .await
        .expect(404, "Room not found");
    app.as_user(&bob)
        .create_room("New door", Some("door"))
        .await;
}

async fn edit_to_private_requires_a_non_blank_new_access_key(backend: Backend) {
    let app = TestApp::start(backend).await;
    let alice = app.user("alice").await;
    let room_id = app.as_user(&alice).create_room("Open", None).await;
    for key in [json!(null), json!(""), json!("   ")] {
        app.post(
            "/api/room/edit",
            Some(&alice.token),
            json!({ "room_id": room_id, "new_name": "Open", "is_private": true,
                    "new_access_key": key }),
        )
        .await
        .expect(400, "Missing new_access_key parameter for private room");
    }
    app.post(
        "/api/room/edit",
        Some(&alice.token),
        json!({ "room_id": room_id, "new_name": "Open", "is_private": true }),
    )
    .await
    .expect(400, "Missing new_access_key parameter for private room");
    let res = app.get_room(room_id, None).await;
    assert_room(&res.body, room_id, "Open", &alice.name, false, None);
}

async fn edit_with_a_blank_new_name_is_rejected(backend: Backend) {
    let app = TestApp::start(backend).await;
    let alice = app.user("alice").await;
    let room_id = app.as_user(&alice).create_room("Named", Some("nk")).await;
    for name in ["", "   "] {
        app.post(
            "/api/room/edit",
            Some(&alice.token),
            json!({ "room_id": room_id, "new_name": name, "is_private": true,
                    "new_access_key": "nk2" }),
        )
        .await
        .expect(400, "Room name cannot be empty");
    }
    let res = app.get_room(room_id, Some(&alice)).await;
    assert_room(&res.body, room_id, "Named", &alice.name, true, Some("nk"));
}

async fn edit_by_a_non_owner_is_forbidden_and_changes_nothing(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [alice, bob, eve] = app.users(["alice", "bob", "eve"]).await;
    let public = app.as_user(&alice).create_room("Public", None).await;
    let private = app.as_user(&alice).create_room("Private", Some("pk")).await;
    app.as_user(&bob).join(public).await;
    app.as_user(&bob).join_private("pk").await;

    let not_owner = "You are not the owner of this room";
    // A stranger and a member of a public room.
    for user in [&eve, &bob] {
        app.as_user(user)
            .try_edit_room(public, "Mine", None)
            .await
            .expect(403, not_owner);
    }
    // A member of a private room.
    app.as_user(&bob)
        .try_edit_room(private, "Mine", None)
        .await
        .expect(403, not_owner);
    // A stranger to a private room learns nothing either way.
    let res = app.as_user(&eve).try_edit_room(private, "Mine", None).await;
    assert!(
        [
            (403, "You are not the owner of this room"),
            (404, "Room not found")
        ]
        .contains(&(res.status, res.error())),
        "{res:?}"
    );

    let res = app.get_room(public, None).await;
    assert_room(&res.body, public, "Public", &alice.name, false, None);
    let res = app.get_room(private, Some(&alice)).await;
    assert_room(&res.body, private, "Private", &alice.name, true, Some("pk"));
}

async fn edit_and_delete_need_an_existing_room_id(backend: Backend) {
    let app = TestApp::start(backend).await;
    let alice = app.user("alice").await;
    let room_id = app.as_user(&alice).create_room("Kept", None).await;
    for path in ["/api/room/edit", "/api/room/delete"] {
        for body in [
            json!({ "new_name": "x", "is_private": false }),
            json!({ "room_id": null, "new_name": "x", "is_private": false }),
        ] {
            app.post(path, Some(&alice.token), body)
                .await
                .expect(400, "Missing room_id parameter");
        }
        for unknown in [json!(room_id + 1000), json!("9007199254740991")] {
            app.post(
                path,
                Some(&alice.token),
                json!({ "room_id": unknown, "new_name": "x", "is_private": false }),
            )
            .await
            .expect(404, "Room not found");
        }
    }
    let res = app.get_room(room_id, None).await;
    assert_room(&res.body, room_id, "Kept", &alice.name, false, None);
}

async fn get_room_needs_an_existing_room_id(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.get("/api/room", None)
        .await
        .expect(400, "Missing room_id parameter");
    app.get("/api/room?other=1", None)
        .await
        .expect(400, "Missing room_id parameter");
    app.get("/api/room?room_id=1", None)
        .await
        .expect(404, "Room not found");
    app.get("/api/room?room_id=9007199254740991", None)
        .await
        .expect(404, "Room not found");
}

async fn owner_deletes_a_room_for_everyone(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [alice, bob] = app.users(["alice", "bob"]).await;
    let room_id = app.as_user(&alice).create_room("Doomed", None).await;
    let kept = app.as_user(&alice).create_room("Kept", None).await;
    app.as_user(&bob).join(room_id).await;

    let res = app.as_user(&alice).try_delete_room(room_id).await;
    res.expect_message("Room deleted successfully");
    assert_eq!(keys(&res.body), ["message"]);

    app.get_room(room_id, None)
        .await
        .expect(404, "Room not found");
    let rooms = public_rooms(&app, None).await;
    assert!(find(&rooms, room_id).is_none());
    assert!(find(&rooms, kept).is_some());
    let res = app.get("/api/user_rooms", Some(&bob.token)).await;
    assert_eq!(res.body, json!([]));
    app.as_user(&alice)
        .try_delete_room(room_id)
        .await
        .expect(404, "Room not found");
    app.as_user(&bob)
        .try_join(room_id)
        .await
        .expect(404, "Room not found");
}

async fn delete_by_a_non_owner_answers_room_not_found_and_keeps_the_room(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [alice, bob, eve] = app.users(["alice", "bob", "eve"]).await;
    let public = app.as_user(&alice).create_room("Public", None).await;
    let private = app.as_user(&alice).create_room("Private", Some("pk")).await;
    app.as_user(&bob).join_private("pk").await;
    for (user, room_id) in [
        (&bob, private),
        (&eve, private),
        (&bob, public),
        (&eve, public),
    ] {
        app.as_user(user)
            .try_delete_room(room_id)
            .await
            .expect(404, "Room not found");
    }
    let res = app.get_room(public, None).await;
    assert_room(&res.body, public, "Public", &alice.name, false, None);
    let res = app.get_room(private, Some(&bob)).await;
    assert_room(&res.body, private, "Private", &alice.name, true, None);
}

async fn room_id_may_be_a_number_or_a_numeric_string(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [alice, bob] = app.users(["alice", "bob"]).await;
    let room_id = app.as_user(&alice).create_room("Ids", None).await;
    let text = room_id.to_string();

    // Each call sends the id as given: a JSON number or a JSON string.
    let (owner, member) = (app.as_user(&alice), app.as_user(&bob));
    owner.edit_room(room_id, "By number", None).await;
    owner.edit_room(text.as_str(), "By string", None).await;
    let res = app.get_room(room_id, None).await;
    assert_room(&res.body, room_id, "By string", &alice.name, false, None);

    member.join(text.as_str()).await;
    member.leave(text.as_str()).await;
    member.join(room_id).await;
    owner.kick(text.as_str(), &bob).await;
    owner.delete_room(text.as_str()).await;

    let second = owner.create_room("Second", None).await;
    owner.delete_room(second).await;
}

async fn malformed_room_ids_are_rejected_with_400_everywhere(backend: Backend) {
    let app = TestApp::start(backend).await;
    let alice = app.user("alice").await;
    let room_id = app.as_user(&alice).create_room("Target", None).await;
    let bad_json = [
        json!("abc"),
        json!(-1),
        json!("-1"),
        json!(1.5),
        json!("1.5"),
        json!(true),
        json!(9_007_199_254_740_992_i64),
        json!("9007199254740992"),
        json!([room_id]),
        json!({ "id": room_id }),
    ];
    for bad in &bad_json {
        for (path, extra) in [
            ("/api/room/join_public", json!({})),
            ("/api/room/leave", json!({})),
            ("/api/room/delete", json!({})),
            (
                "/api/room/edit",
                json!({ "new_name": "x", "is_private": false }),
            ),
            ("/api/user_kick", json!({ "user_to_kick": alice.name })),
        ] {
            let mut body = extra;
            body["room_id"] = bad.clone();
            app.post(path, Some(&alice.token), body)
                .await
                .expect_refused(400, &format!("{path} with room_id {bad}"));
        }
    }
    for bad in [
        "abc",
        "-1",
        "1.5",
        "true",
        "9007199254740992",
        "1e3",
        "%201",
        "0x1",
    ] {
        for path in ["/api/room", "/api/user_list", "/api/chat_history"] {
            app.get(&format!("{path}?room_id={bad}"), Some(&alice.token))
                .await
                .expect_refused(400, &format!("{path} with room_id {bad}"));
        }
    }
    // Nothing happened to the room.
    let res = app.get_room(room_id, None).await;
    assert_room(&res.body, room_id, "Target", &alice.name, false, None);
}

async fn endpoints_needing_a_token_refuse_anonymous_callers(backend: Backend) {
    let app = TestApp::start(backend).await;
    let alice = app.user("alice").await;
    let room_id = app.as_user(&alice).create_room("Room", None).await;
    for path in [
        "/api/room/create",
        "/api/room/edit",
        "/api/room/delete",
        "/api/room/join_public",
        "/api/room/join_private",
        "/api/room/leave",
        "/api/user_kick",
    ] {
        let body = json!({ "room_id": room_id, "room_name": "x", "is_private": false,
                           "new_name": "x", "access_key": "k", "user_to_kick": alice.name });
        app.post(path, None, body.clone())
            .await
            .expect_refused(401, path);
        let bad = wrongly_signed_token(&alice.name);
        app.post(path, Some(&bad), body)
            .await
            .expect_refused(401, path);
    }
    for path in ["/api/user_rooms", "/api/user/get_info"] {
        app.get(path, None).await.expect_refused(401, path);
    }
    let res = app.get_room(room_id, None).await;
    assert_room(&res.body, room_id, "Room", &alice.name, false, None);
}

async fn optional_auth_endpoints_refuse_a_badly_signed_token(backend: Backend) {
    let app = TestApp::start(backend).await;
    let alice = app.user("alice").await;
    let room_id = app.as_user(&alice).create_room("Open", None).await;
    let bad = wrongly_signed_token(&alice.name);
    for path in ["/api/room", "/api/user_list", "/api/chat_history"] {
        let path = format!("{path}?room_id={room_id}");
        assert_eq!(app.get(&path, None).await.status, 200, "{path} anonymously");
        assert_eq!(app.get(&path, Some(&alice.token)).await.status, 200);
        for token in [bad.as_str(), "not-a-jwt"] {
            app.get(&path, Some(token)).await.expect_refused(401, &path);
        }
    }
}

crate::on_both_stores!(
    create_answers_room_id_and_makes_the_creator_owner_and_member,
    private_room_key_is_shown_only_to_its_owner,
    room_list_shows_every_public_room_and_no_private_one,
    create_without_a_room_name_is_rejected,
    private_room_without_access_key_is_rejected,
    duplicate_access_key_is_rejected_on_create_and_edit,
    room_name_limit_is_64_characters_not_bytes,
    access_key_limit_is_64_characters_on_create_and_edit,
    edit_to_private_hides_the_room_and_edit_to_public_clears_the_key,
    edit_to_private_requires_a_non_blank_new_access_key,
    edit_with_a_blank_new_name_is_rejected,
    edit_by_a_non_owner_is_forbidden_and_changes_nothing,
    edit_and_delete_need_an_existing_room_id,
    get_room_needs_an_existing_room_id,
    owner_deletes_a_room_for_everyone,
    delete_by_a_non_owner_answers_room_not_found_and_keeps_the_room,
    room_id_may_be_a_number_or_a_numeric_string,
    malformed_room_ids_are_rejected_with_400_everywhere,
    endpoints_needing_a_token_refuse_anonymous_callers,
    optional_auth_endpoints_refuse_a_badly_signed_token,
);
