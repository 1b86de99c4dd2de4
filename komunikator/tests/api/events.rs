//! Room events published on NATS by the API: subject and payload of each,
//! and nothing published for a refused request.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;

use crate::harness::{Backend, TestApp, nats_url};

/// Collects what the server publishes under its prefix.
struct Listener {
    sub: async_nats::Subscriber,
}

impl Listener {
    async fn start(app: &TestApp) -> Self {
        let client = async_nats::connect(nats_url())
            .await
            .expect("connect to NATS");
        let sub = client
            .subscribe(format!("{}.>", app.prefix))
            .await
            .expect("subscribe");
        client.flush().await.expect("flush");
        Self { sub }
    }

    /// The next (subject, payload) published, within 5 s.
    async fn next(&mut self) -> (String, String) {
        let msg = tokio::time::timeout(Duration::from_secs(5), self.sub.next())
            .await
            .expect("an event within 5 s")
            .expect("subscription open");
        (
            msg.subject.to_string(),
            String::from_utf8_lossy(&msg.payload).into_owned(),
        )
    }

    /// Asserts nothing more arrives for a moment.
    async fn silent(&mut self) {
        let extra = tokio::time::timeout(Duration::from_millis(300), self.sub.next()).await;
        assert!(
            extra.is_err(),
            "unexpected event: {:?}",
            extra.ok().flatten().map(|m| m.subject)
        );
    }
}

#[tokio::test]
async fn room_changes_publish_their_events_on_nats() {
    let app = TestApp::start(Backend::MySql).await;
    let p = app.prefix.clone();
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let mut events = Listener::start(&app).await;

    let room = app.room(&ann, "public", None).await;
    assert_eq!(
        events.next().await,
        (format!("{p}.rooms.room_list_updated"), String::new())
    );
    let private = app.room(&ann, "private", Some("key-1")).await;
    assert_eq!(
        events.next().await,
        (format!("{p}.rooms.room_list_updated"), String::new())
    );

    let res = app
        .post(
            "/api/room/join_public",
            Some(&bob.token),
            json!({ "room_id": room }),
        )
        .await;
    res.expect_message("Joined room successfully");
    assert_eq!(
        events.next().await,
        (format!("{p}.room.{room}.user_list_updated"), String::new())
    );

    let res = app
        .post(
            "/api/room/join_private",
            Some(&bob.token),
            json!({ "access_key": "key-1" }),
        )
        .await;
    res.expect_message("Joined room successfully");
    assert_eq!(
        events.next().await,
        (
            format!("{p}.room.{private}.user_list_updated"),
            String::new()
        )
    );

    let res = app
        .post(
            "/api/room/leave",
            Some(&bob.token),
            json!({ "room_id": room }),
        )
        .await;
    res.expect_message("Left room successfully");
    assert_eq!(
        events.next().await,
        (format!("{p}.room.{room}.user_list_updated"), String::new())
    );

    let kick = json!({ "room_id": private, "user_to_kick": bob.name });
    app.post("/api/user_kick", Some(&ann.token), kick)
        .await
        .expect_message("User kicked successfully");
    assert_eq!(
        events.next().await,
        (
            format!("{p}.room.{private}.user_list_updated"),
            String::new()
        )
    );
    let (subject, payload) = events.next().await;
    assert_eq!(subject, format!("{p}.room.{private}.user_kicked"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&payload).expect("json"),
        json!({ "user_name": bob.name })
    );

    let edit = json!({ "room_id": room, "new_name": "renamed", "is_private": false });
    app.post("/api/room/edit", Some(&ann.token), edit)
        .await
        .expect_message("Room edited successfully");
    assert_eq!(
        events.next().await,
        (format!("{p}.rooms.room_list_updated"), String::new())
    );

    app.post(
        "/api/room/delete",
        Some(&ann.token),
        json!({ "room_id": room }),
    )
    .await
    .expect_message("Room deleted successfully");
    assert_eq!(
        events.next().await,
        (format!("{p}.room.{room}.room_deleted"), String::new())
    );
    assert_eq!(
        events.next().await,
        (format!("{p}.rooms.room_list_updated"), String::new())
    );
    events.silent().await;
}

#[tokio::test]
async fn refused_requests_publish_nothing() {
    let app = TestApp::start(Backend::MySql).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let room = app.room(&ann, "public", None).await;
    let mut events = Listener::start(&app).await;
    let join = json!({ "room_id": room });
    app.post("/api/room/join_public", Some(&ann.token), join.clone())
        .await
        .expect(400, "User already in room");
    app.post("/api/room/delete", Some(&bob.token), join.clone())
        .await
        .expect(404, "Room not found");
    app.post("/api/room/leave", Some(&bob.token), join)
        .await
        .expect(404, "User not in room");
    let edit = json!({ "room_id": room, "new_name": "x" });
    app.post("/api/room/edit", Some(&bob.token), edit)
        .await
        .expect(403, "You are not the owner of this room");
    events.silent().await;
}
