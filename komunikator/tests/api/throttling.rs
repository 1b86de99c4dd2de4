//! Failed logins are throttled per user name and per client address, and
//! wrong access keys per user (docs/protocol.md, "Accounts and abuse"): after 10
//! failures in 5 minutes, 429 with `Retry-After`, whatever the password;
//! shared by the API's replicas. Behind a proxy the client address is the
//! one it names in `X-Forwarded-For`, only when the proxy is trusted.

use serde_json::json;

use crate::harness::{Backend, Options, Resp, TestApp, User};

/// The contract's allowance: 10 failures in 5 minutes.
const ALLOWED: usize = 10;
const WINDOW_SECS: u64 = 300;

/// `POST <api><path>` with `{user_name, password}`, as a client at
/// `address` (through the proxy).
async fn post_from(app: &TestApp, url: String, name: &str, password: &str, address: &str) -> Resp {
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    app.send(
        client
            .post(url)
            .header("x-forwarded-for", address)
            .json(&json!({ "user_name": name, "password": password })),
    )
    .await
}

/// `POST <api>/api/login` as a client at `address` (through the proxy).
async fn login(app: &TestApp, api: &str, name: &str, password: &str, address: &str) -> Resp {
    post_from(app, format!("{api}/api/login"), name, password, address).await
}

/// `komunikator_password_hashes_total` summed over the api processes.
async fn hashes_computed(apis: &[String]) -> u64 {
    let mut total = 0;
    for api in apis {
        total += crate::harness::metric(api, "komunikator_password_hashes_total")
            .await
            .expect("password_hashes counter") as u64;
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

/// Ann, Bob and Carol, Ann owning a private room whose key is `the-key`.
async fn vault(app: &TestApp) -> [User; 3] {
    let users = app.users(["ann", "bob", "carol"]).await;
    app.as_user(&users[0])
        .create_room("vault", Some("the-key"))
        .await;
    users
}

async fn wrong_access_keys_are_throttled_per_user(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [_, bob, carol] = vault(&app).await;
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

/// `room/create` and `room/edit` say when a key is taken: an oracle for
/// other rooms' keys, so each conflict counts like a wrong key on
/// `join_private` (400 until the limit, then 429 at every door).
async fn access_key_conflicts_count_like_wrong_keys(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [_, bob, carol] = vault(&app).await;
    let mine = app.as_user(&bob).create_room("mine", None).await;
    for i in 0..ALLOWED {
        let res = if i % 2 == 0 {
            app.as_user(&bob)
                .try_create_room("guess", Some("the-key"))
                .await
        } else {
            app.as_user(&bob)
                .try_edit_room(mine, "guess", Some("the-key"))
                .await
        };
        res.expect(400, "Room with this access key already exists");
    }
    assert_throttled(
        &app.as_user(&bob)
            .try_create_room("guess", Some("the-key"))
            .await,
    );
    assert_throttled(
        &app.as_user(&bob)
            .try_edit_room(mine, "guess", Some("other-key"))
            .await,
    );
    assert_throttled(&app.as_user(&bob).try_join_private("the-key").await);
    // A public room needs no key: not a guess, not throttled.
    app.as_user(&bob).create_room("open", None).await;
    app.as_user(&bob).edit_room(mine, "renamed", None).await;
    // Others are not affected.
    app.as_user(&carol)
        .create_room("carol's", Some("another-key"))
        .await;
}

/// Keys compare letter for letter: a guess must get the case right too, and
/// two rooms may have keys that differ only in case.
async fn access_keys_compare_case_sensitively(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [ann, bob] = app.users(["ann", "bob"]).await;
    app.as_user(&ann)
        .create_room("vault", Some("Open-Sesame"))
        .await;
    app.as_user(&bob)
        .try_join_private("open-sesame")
        .await
        .expect(404, "Room not found");
    app.as_user(&bob)
        .create_room("bob's vault", Some("OPEN-SESAME"))
        .await;
    app.as_user(&bob).join_private("Open-Sesame").await;
}

/// A stolen access token plus guesses at the old password would take the
/// account for good: wrong old passwords count like failed logins, against
/// the user and the address, and block both doors.
async fn wrong_old_passwords_are_throttled_like_failed_logins(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    for _ in 0..ALLOWED {
        app.as_user(&ann)
            .change_password("a guess", "taken over")
            .await
            .expect(401, "Invalid old password");
    }
    let hashes = hashes_computed(std::slice::from_ref(&app.base)).await;
    assert_throttled(
        &app.as_user(&ann)
            .change_password(&ann.password, "taken over")
            .await,
    );
    assert_throttled(&app.login(&ann.name, &ann.password).await);
    assert_eq!(
        hashes_computed(std::slice::from_ref(&app.base)).await,
        hashes,
        "a throttled attempt spent a hash"
    );
}

/// `POST /api/register` as a client at `address` (through the proxy).
async fn register_from(app: &TestApp, name: &str, address: &str) -> Resp {
    let url = format!("{}/api/register", app.base);
    post_from(app, url, name, "correct horse", address).await
}

/// A registration flood from one address would fill the hashing queue
/// every login waits in: each address registers 10 accounts an hour.
async fn registrations_are_limited_per_client_address(backend: Backend) {
    let options = Options::default()
        .with("TRUSTED_PROXIES", "127.0.0.1")
        .with("REGISTRATIONS_PER_ADDRESS", "10");
    let app = TestApp::start_with(backend, options).await;
    let stem = crate::harness::random_hex(3);
    for i in 0..10 {
        let res = register_from(&app, &format!("r{stem}_{i}"), "203.0.113.50").await;
        assert_eq!(res.status, 201, "{res:?}");
    }
    let res = register_from(&app, &format!("r{stem}_10"), "203.0.113.50").await;
    res.expect(429, "Too many attempts, try again later");
    let retry_after: u64 = res.headers["retry-after"]
        .to_str()
        .expect("ascii")
        .parse()
        .expect("seconds");
    assert!((1..=3600).contains(&retry_after), "{retry_after}");
    // Another address registers as usual; logins are not affected.
    let res = register_from(&app, &format!("r{stem}_11"), "203.0.113.51").await;
    assert_eq!(res.status, 201, "{res:?}");
    assert_eq!(
        app.login(&format!("r{stem}_0"), "correct horse")
            .await
            .status,
        200
    );
}

/// One IPv6 host is routinely given a /64 and can rotate through it:
/// failures count against the network, not each address.
async fn ipv6_clients_are_throttled_by_their_64_bit_network(backend: Backend) {
    let app = TestApp::start_with(
        backend,
        Options::default().with("TRUSTED_PROXIES", "127.0.0.1"),
    )
    .await;
    let users = futures_util::future::join_all((0..ALLOWED + 2).map(|i| {
        let app = &app;
        async move { app.user(&format!("v{i}")).await }
    }))
    .await;
    for (i, user) in users.iter().take(ALLOWED).enumerate() {
        let from = format!("2001:db8:1:2:{i:x}::{i:x}");
        login(&app, &app.base, &user.name, "wrong", &from)
            .await
            .expect(401, "Invalid user credentials");
    }
    let rotated = &users[ALLOWED];
    assert_throttled(
        &login(
            &app,
            &app.base,
            &rotated.name,
            &rotated.password,
            "2001:db8:1:2:ffff::1",
        )
        .await,
    );
    // The next /64 is another client.
    let other = &users[ALLOWED + 1];
    let res = login(
        &app,
        &app.base,
        &other.name,
        &other.password,
        "2001:db8:1:3::1",
    )
    .await;
    assert_eq!(res.status, 200, "{res:?}");
}

crate::on_both_stores!(
    failed_logins_are_throttled_per_user_and_per_address,
    forwarded_for_from_an_untrusted_peer_is_ignored,
    wrong_access_keys_are_throttled_per_user,
    access_key_conflicts_count_like_wrong_keys,
    access_keys_compare_case_sensitively,
    wrong_old_passwords_are_throttled_like_failed_logins,
    registrations_are_limited_per_client_address,
    ipv6_clients_are_throttled_by_their_64_bit_network,
);
