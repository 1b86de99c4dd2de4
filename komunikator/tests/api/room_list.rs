//! `GET /api/rooms` is answered from a copy: every create, edit and delete
//! must show in the next list, on the replica that made the change at once
//! and on the others by the time a client hears `room_list_updated`.

use serde_json::{Value, json};

use crate::harness::{Backend, Service, TestApp};

crate::on_both_stores!(the_list_follows_every_change_at_once);

/// The names of the listed rooms, from the API at `base`; every answer,
/// read from the store or from the copy, is JSON by its content type.
async fn names(base: &str) -> Vec<String> {
    let res = reqwest::get(format!("{base}/api/rooms"))
        .await
        .expect("GET /api/rooms");
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let rooms: Vec<Value> = res.json().await.expect("JSON list");
    rooms
        .iter()
        .filter_map(|r| r["room_name"].as_str().map(str::to_owned))
        .collect()
}

async fn the_list_follows_every_change_at_once(backend: Backend) {
    let app = TestApp::start(backend).await;
    let owner = app.user("lister").await;
    for _ in 0..3 {
        assert!(names(&app.base).await.is_empty());
    }
    let room = app.as_user(&owner).create_room("first", None).await;
    assert_eq!(names(&app.base).await, ["first"]);
    app.post(
        "/api/room/edit",
        Some(&owner.token),
        json!({ "room_id": room, "new_name": "renamed" }),
    )
    .await
    .expect_message("Room edited successfully");
    assert_eq!(names(&app.base).await, ["renamed"]);
    app.as_user(&owner)
        .edit_room(room, "hidden", Some("k"))
        .await;
    assert!(
        names(&app.base).await.is_empty(),
        "a private room is not listed"
    );
    let other = app.as_user(&owner).create_room("second", None).await;
    assert_eq!(names(&app.base).await, ["second"]);
    app.as_user(&owner).delete_room(other).await;
    assert!(names(&app.base).await.is_empty());
}

#[tokio::test]
async fn another_replica_lists_a_change_by_the_time_a_socket_hears_of_it() {
    let app = TestApp::start(Backend::MySql).await;
    let other = Service::spawn(&["api"], &app.env(), "127.0.0.1:0").await;
    let owner = app.user("replicas").await;
    let mut socket = app.socket(&owner).await;
    for round in 0..5 {
        // The other replica holds a copy of the list...
        let before = names(&other.url).await;
        assert_eq!(names(&other.url).await, before);
        // ...when this one creates a room.
        let name = format!("room {round}");
        app.as_user(&owner).create_room(&name, None).await;
        socket.expect("room_list_updated").await;
        assert!(
            names(&other.url).await.contains(&name),
            "round {round}: the other replica still lists {before:?}"
        );
    }
}
