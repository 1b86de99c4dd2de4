//! Failed logins are throttled per user name and per client address, and
//! wrong access keys per user (CONTRACT.md, "Accounts and abuse"): after 10
//! failures in 5 minutes, 429 with `Retry-After`, whatever the password;
//! shared by the API's replicas. Behind a proxy the client address is the
//! one it names in `X-Forwarded-For`, only when the proxy is trusted.

use serde_json::json;

use crate::harness::{Backend, Options, Resp, TestApp};

/// The contract's allowance: 10 failures in 5 minutes.
const ALLOWED: usize = 10;
const WINDOW_SECS: u64 = 300;

/// `POST <api>/api/login` as a client at `address` (through the proxy).
async fn login(app: &TestApp, api: &str, name: &str, password: &str, address: &str) -> Resp {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    app.send(
        client
            .post(format!("{api}/api/login"))
            .header("x-forwarded-for", address)
            .json(&json!({ "user_name": name, "password": password })),
    )
    .await
}

/// `komunikator_password_hashes_total` summed over the api processes.
async fn hashes_computed(apis: &[String]) -> u64 {
    let mut total = 0;
    for api in apis {
        total += crate::harness::metrics(api)
            .await
            .lines()
            .find_map(|l| l.strip_prefix("komunikator_password_hashes_total "))
            .and_then(|n| n.trim().parse::<u64>().ok())
            .expect("password_hashes counter");
    }
    total
}

fn assert_throttled(res: &Resp) {
    res.expect(429, "Too many attempts, try again later");
    let retry_after: u64 = res
        .headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no Retry-After: {res:?}"));
    assert!((1..=WINDOW_SECS).contains(&retry_after), "{retry_after}");
}

async fn failed_logins_are_throttled_per_user_and_per_address(backend: Backend) {
    let mut app = TestApp::start_with(
        backend,
        Options::default().with("TRUSTED_PROXIES", "127.0.0.1"),
    )
    .await;
    // On MariaDB two api replicas share what they count (in Redis).
    let mut apis = vec![app.base.clone()];
    if backend == Backend::MySql {
        apis.push(app.add_api().await);
    }
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    for i in 0..ALLOWED {
        let api = &apis[i % apis.len()];
        let res = login(&app, api, &ann.name, "wrong", "203.0.113.1").await;
        res.expect(401, "Invalid user credentials");
    }
    // Ann's name is blocked, even with the right password, from anywhere,
    // and no hash is spent on it.
    let hashes = hashes_computed(&apis).await;
    for api in &apis {
        assert_throttled(&login(&app, api, &ann.name, &ann.password, "198.51.100.7").await);
    }
    assert_eq!(hashes_computed(&apis).await, hashes);
    // Bob logs in as usual from another address...
    let res = login(&app, &apis[0], &bob.name, &bob.password, "203.0.113.2").await;
    assert_eq!(res.status, 200, "{res:?}");
    // ...but not from the address that failed 10 times.
    assert_throttled(
        &login(
            &app,
            &apis[apis.len() - 1],
            &bob.name,
            &bob.password,
            "203.0.113.1",
        )
        .await,
    );
    // Unknown names count too (no probing for who exists).
    for i in 0..ALLOWED {
        let res = login(&app, &apis[0], &format!("nobody{i}"), "x", "203.0.113.3").await;
        res.expect(401, "Invalid user credentials");
    }
    assert_throttled(&login(&app, &apis[0], &bob.name, &bob.password, "203.0.113.3").await);
}

async fn forwarded_for_from_an_untrusted_peer_is_ignored(backend: Backend) {
    // No trusted proxy: whatever a client claims, its address is its own.
    let app = TestApp::start(backend).await;
    let users = futures_util::future::join_all((0..ALLOWED).map(|i| {
        let app = &app;
        async move { app.user(&format!("u{i}")).await }
    }))
    .await;
    for (i, user) in users.iter().enumerate() {
        let res = login(
            &app,
            &app.base,
            &user.name,
            "wrong",
            &format!("192.0.2.{i}"),
        )
        .await;
        res.expect(401, "Invalid user credentials");
    }
    let carol = app.user("carol").await;
    assert_throttled(&login(&app, &app.base, &carol.name, &carol.password, "192.0.2.200").await);
}

async fn wrong_access_keys_are_throttled_per_user(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [ann, bob, carol] = app.users(["ann", "bob", "carol"]).await;
    app.as_user(&ann)
        .create_room("vault", Some("the-key"))
        .await;
    for i in 0..ALLOWED {
        app.as_user(&bob)
            .try_join_private(&format!("guess-{i}"))
            .await
            .expect(404, "Room not found");
    }
    assert_throttled(&app.as_user(&bob).try_join_private("the-key").await);
    // Other users are not affected.
    app.as_user(&carol).join_private("the-key").await;
}

crate::on_both_stores!(
    failed_logins_are_throttled_per_user_and_per_address,
    forwarded_for_from_an_untrusted_peer_is_ignored,
    wrong_access_keys_are_throttled_per_user,
);
