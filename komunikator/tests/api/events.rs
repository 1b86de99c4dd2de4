//! Room events published on NATS by the API: subject and payload of each,
//! and nothing published for a refused request.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;

use crate::harness::{Backend, TestApp, nats_url};

/// Collects what the server publishes under its prefix.
struct Listener {
    sub: async_nats::Subscriber,
    prefix: String,
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
        Self {
            sub,
            prefix: app.prefix.clone(),
        }
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

    /// Asserts the next event is `<prefix>.<subject>` with no payload.
    async fn expect_empty(&mut self, subject: &str) {
        let expected = (format!("{}.{subject}", self.prefix), String::new());
        assert_eq!(self.next().await, expected);
    }

    /// Asserts the next event is `event` of `room`, with no payload.
    async fn expect_room_event(&mut self, room: i64, event: &str) {
        self.expect_empty(&format!("room.{room}.{event}")).await;
    }

    /// Asserts the next event is the room list's update, with no payload.
    async fn expect_list_updated(&mut self) {
        self.expect_empty("rooms.room_list_updated").await;
    }

    /// Asserts nothing more was published before a later change of `user`:
    /// the API publishes in order on one connection, so the later change's
    /// event is the next one.
    async fn nothing_before_a_later_change(&mut self, app: &TestApp, user: &crate::harness::User) {
        app.as_user(user).create_room("later", None).await;
        self.expect_list_updated().await;
    }
}

#[tokio::test]
async fn room_changes_publish_their_events_on_nats() {
    let app = TestApp::start(Backend::MySql).await;
    let p = app.prefix.clone();
    let [ann, bob] = app.users(["ann", "bob"]).await;
    let (ann_acts, bob_acts) = (app.as_user(&ann), app.as_user(&bob));
    let mut events = Listener::start(&app).await;

    let room = ann_acts.create_room("public", None).await;
    events.expect_list_updated().await;
    let private = ann_acts.create_room("private", Some("key-1")).await;
    events.expect_list_updated().await;

    bob_acts.join(room).await;
    events.expect_room_event(room, "user_list_updated").await;

    bob_acts.join_private("key-1").await;
    events.expect_room_event(private, "user_list_updated").await;

    // Leaving takes the user's sockets out of the room first.
    bob_acts.leave(room).await;
    let (subject, payload) = events.next().await;
    assert_eq!(subject, format!("{p}.room.{room}.member_removed"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&payload).expect("json"),
        json!({ "user_name": bob.name })
    );
    events.expect_room_event(room, "user_list_updated").await;

    ann_acts.kick(private, &bob).await;
    events.expect_room_event(private, "user_list_updated").await;
    let (subject, payload) = events.next().await;
    assert_eq!(subject, format!("{p}.room.{private}.user_kicked"));
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&payload).expect("json"),
        json!({ "user_name": bob.name })
    );

    ann_acts.edit_room(room, "renamed", None).await;
    events.expect_list_updated().await;
    // Turning private takes the sockets of non-members out of the room.
    ann_acts.edit_room(room, "closed", Some("key-2")).await;
    events.expect_room_event(room, "room_made_private").await;
    events.expect_list_updated().await;
    // A room already private turns private no more.
    ann_acts.edit_room(room, "closed", Some("key-3")).await;
    events.expect_list_updated().await;

    ann_acts.delete_room(room).await;
    events.expect_room_event(room, "room_deleted").await;
    events.expect_list_updated().await;
    events.nothing_before_a_later_change(&app, &ann).await;
}

#[tokio::test]
async fn refused_requests_publish_nothing() {
    let app = TestApp::start(Backend::MySql).await;
    let [ann, bob] = app.users(["ann", "bob"]).await;
    let mut events = Listener::start(&app).await;
    let room = app.as_user(&ann).create_room("public", None).await;
    // Published, not confirmed, before the answer: it may reach the broker
    // after the answer, so it is taken here.
    events.expect_list_updated().await;
    app.as_user(&ann)
        .try_join(room)
        .await
        .expect(400, "User already in room");
    let bob_acts = app.as_user(&bob);
    bob_acts
        .try_delete_room(room)
        .await
        .expect(404, "Room not found");
    bob_acts
        .try_leave(room)
        .await
        .expect(404, "User not in room");
    let edit = json!({ "room_id": room, "new_name": "x" });
    app.post("/api/room/edit", Some(&bob.token), edit)
        .await
        .expect(403, "You are not the owner of this room");
    events.nothing_before_a_later_change(&app, &ann).await;
}
