//! `GET /api/users/online`: online users sharing a room with the caller.

use redis::AsyncCommands;

use crate::harness::{Backend, TestApp, redis_url};

#[tokio::test]
async fn online_lists_only_room_mates_with_a_live_presence_key() {
    let app = TestApp::start(Backend::MySql).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let cid = app.user("cid").await;
    let dan = app.user("dan").await;
    let eve = app.user("eve").await;
    let room = app.room(&ann, "shared", None).await;
    let private = app.room(&ann, "secret", Some("k")).await;
    for (user, body) in [
        (&bob, serde_json::json!({ "room_id": room })),
        (&dan, serde_json::json!({ "room_id": room })),
    ] {
        app.post("/api/room/join_public", Some(&user.token), body)
            .await
            .expect_message("Joined room successfully");
    }
    app.post(
        "/api/room/join_private",
        Some(&cid.token),
        serde_json::json!({ "access_key": "k" }),
    )
    .await
    .expect_message("Joined room successfully");
    let _ = private;

    // Online: bob and cid (mates), eve (not a mate); dan is a mate but offline.
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    for user in [&ann, &bob, &cid, &eve] {
        let key = format!("{}:online:{}", app.prefix, user.name);
        let () = redis.set_ex(key, 1, 30).await.expect("set");
    }
    let res = app.get("/api/users/online", Some(&ann.token)).await;
    let mut expected = vec![bob.name.clone(), cid.name.clone()];
    expected.sort();
    assert_eq!(res.body, serde_json::json!(expected), "{res:?}");

    // Bob sees Ann (caller excluded, mates included); Eve shares no room.
    let res = app.get("/api/users/online", Some(&bob.token)).await;
    assert_eq!(res.body, serde_json::json!([ann.name]));
    assert_eq!(
        app.get("/api/users/online", Some(&eve.token)).await.body,
        serde_json::json!([])
    );

    let () = redis
        .del(format!("{}:online:{}", app.prefix, bob.name))
        .await
        .expect("del");
    let res = app.get("/api/users/online", Some(&ann.token)).await;
    assert_eq!(res.body, serde_json::json!([cid.name]));
}

#[tokio::test]
async fn embedded_online_list_is_empty_until_someone_heartbeats() {
    let app = TestApp::start(Backend::Embedded).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let room = app.room(&ann, "shared", None).await;
    app.post(
        "/api/room/join_public",
        Some(&bob.token),
        serde_json::json!({ "room_id": room }),
    )
    .await
    .expect_message("Joined room successfully");
    let res = app.get("/api/users/online", Some(&ann.token)).await;
    assert_eq!((res.status, res.body), (200, serde_json::json!([])));
}
