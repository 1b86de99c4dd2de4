//! `GET /api/users/online`: online users sharing a room with the caller.

use redis::AsyncCommands;
use serde_json::json;

use crate::harness::{Backend, TestApp, redis_url};

#[tokio::test]
async fn online_lists_only_room_mates_with_a_live_presence_key() {
    let app = TestApp::start(Backend::MySql).await;
    let [ann, bob, cid, dan, eve] = app.users(["ann", "bob", "cid", "dan", "eve"]).await;
    let room = app.as_user(&ann).create_room("shared", None).await;
    app.as_user(&ann).create_room("secret", Some("k")).await;
    for user in [&bob, &dan] {
        app.as_user(user).join(room).await;
    }
    app.as_user(&cid).join_private("k").await;

    // Online: bob and cid (mates), eve (not a mate); dan is a mate but offline.
    let client = redis::Client::open(redis_url()).expect("redis url");
    let mut redis = client
        .get_multiplexed_async_connection()
        .await
        .expect("redis");
    for user in [&ann, &bob, &cid, &eve] {
        let key = common::adapters::presence::redis_online_key(&app.prefix, &user.name);
        let () = redis.set_ex(key, 1, 30).await.expect("set");
    }
    let mut expected = vec![bob.name.clone(), cid.name.clone()];
    expected.sort();
    assert_eq!(app.as_user(&ann).online().await, json!(expected));

    // Bob sees Ann (caller excluded, mates included); Eve shares no room.
    assert_eq!(app.as_user(&bob).online().await, json!([ann.name]));
    assert_eq!(app.as_user(&eve).online().await, json!([]));

    let () = redis
        .del(common::adapters::presence::redis_online_key(
            &app.prefix,
            &bob.name,
        ))
        .await
        .expect("del");
    assert_eq!(app.as_user(&ann).online().await, json!([cid.name]));
}

#[tokio::test]
async fn embedded_online_list_is_empty_until_someone_heartbeats() {
    let app = TestApp::start(Backend::Embedded).await;
    let [ann, bob] = app.users(["ann", "bob"]).await;
    let room = app.as_user(&ann).create_room("shared", None).await;
    app.as_user(&bob).join(room).await;
    let res = app.get("/api/users/online", Some(&ann.token)).await;
    assert_eq!((res.status, res.body), (200, json!([])));
}
