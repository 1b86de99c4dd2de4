//! Sessions that outlive an access token: login hands out a refresh token
//! too; `POST /api/refresh` trades it for a fresh access token and the next
//! refresh token (a spent one presented again ends the session); `POST
//! /api/logout` ends the session, and a password change ends them all.
//! Clients that only read `access_token` are unaffected.

use serde_json::{Value, json};

use crate::harness::{Backend, Options, Resp, TestApp};

async fn refresh(app: &TestApp, token: &Value) -> Resp {
    app.post("/api/refresh", None, json!({ "refresh_token": token }))
        .await
}

fn tokens(res: &Resp) -> (String, Value) {
    assert_eq!(res.status, 200, "{res:?}");
    let access = res.body["access_token"].as_str().expect("access_token");
    assert!(res.body["refresh_token"].is_string(), "{res:?}");
    (access.to_owned(), res.body["refresh_token"].clone())
}

async fn a_refresh_token_keeps_a_session_alive_until_logout(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let (_, first) = tokens(&app.login(&ann.name, &ann.password).await);

    // Refreshing: a working access token and the session's next refresh token.
    let (access, second) = tokens(&refresh(&app, &first).await);
    assert_eq!(
        app.get("/api/user/get_info", Some(&access)).await.status,
        200
    );
    let (_, third) = tokens(&refresh(&app, &second).await);
    // A spent token presented again ends the session, for whoever holds
    // its successor too.
    refresh(&app, &first)
        .await
        .expect(401, "Invalid refresh token");
    refresh(&app, &third)
        .await
        .expect(401, "Invalid refresh token");

    // Logout ends the session (and says so however often it is asked).
    let (_, session) = tokens(&app.login(&ann.name, &ann.password).await);
    for _ in 0..2 {
        app.post("/api/logout", None, json!({ "refresh_token": session }))
            .await
            .expect_message("Logged out successfully");
    }
    refresh(&app, &session)
        .await
        .expect(401, "Invalid refresh token");

    // A password change ends every session but the one it hands out.
    let (_, before) = tokens(&app.login(&ann.name, &ann.password).await);
    let changed = app
        .post(
            "/api/user/change_password",
            Some(&ann.token),
            json!({ "old_password": ann.password, "new_password": "renewed" }),
        )
        .await;
    let (_, after) = tokens(&changed);
    refresh(&app, &before)
        .await
        .expect(401, "Invalid refresh token");
    tokens(&refresh(&app, &after).await);

    // Bad input.
    app.post("/api/refresh", None, json!({}))
        .await
        .expect(400, "Missing refresh_token parameter");
    for junk in [json!("junk"), json!("a.b"), json!(".")] {
        refresh(&app, &junk)
            .await
            .expect(401, "Invalid refresh token");
    }
    let wrong_type = app
        .post("/api/refresh", None, json!({ "refresh_token": 5 }))
        .await;
    assert_eq!(wrong_type.status, 400, "{wrong_type:?}");
}

async fn a_session_not_refreshed_in_time_ends(backend: Backend) {
    const TTL_SECS: u64 = 1;
    let app = TestApp::start_with(
        backend,
        Options::default().with("JWT_REFRESH_TOKEN_EXPIRES", TTL_SECS.to_string()),
    )
    .await;
    let ann = app.user("ann").await;
    let (_, token) = tokens(&app.login(&ann.name, &ann.password).await);
    // Past its lifetime (the store keeps milliseconds).
    tokio::time::sleep(std::time::Duration::from_millis(TTL_SECS * 1000 + 200)).await;
    refresh(&app, &token)
        .await
        .expect(401, "Invalid refresh token");
}

crate::on_both_stores!(
    a_refresh_token_keeps_a_session_alive_until_logout,
    a_session_not_refreshed_in_time_ends,
);
