//! Registration, login, tokens and password changes.

use std::time::Duration;

use serde_json::json;

use crate::harness::{Backend, Options, TestApp, User, claims_for, forged_token, sign_with};

async fn register_answers_201_with_a_token_naming_the_user(backend: Backend) {
    let app = TestApp::start(backend).await;
    let res = app.register("ann", "pw").await;
    assert_eq!(res.status, 201, "{res:?}");
    let token = res.body["access_token"].as_str().expect("token");
    let claims = decode_claims(token);
    assert_eq!(claims["sub"], "ann");
    assert_eq!(claims["type"], "access");
    let iat = claims["iat"].as_i64().expect("iat");
    assert_eq!(
        claims["exp"].as_i64(),
        Some(iat + 900),
        "15 minutes by default"
    );
    assert_eq!(claims["nbf"].as_i64(), Some(iat));
    assert!(claims["jti"].as_str().is_some_and(|j| j.len() >= 16));
}

async fn register_without_name_or_password_is_400(backend: Backend) {
    let app = TestApp::start(backend).await;
    for body in [
        json!({}),
        json!({ "user_name": "ann" }),
        json!({ "password": "pw" }),
        json!({ "user_name": "", "password": "pw" }),
        json!({ "user_name": "   ", "password": "pw" }),
        json!({ "user_name": "ann", "password": "" }),
        json!({ "user_name": null, "password": "pw" }),
    ] {
        app.post("/api/register", None, body)
            .await
            .expect(400, "Missing Login or password");
    }
    // No body at all reads as an empty object.
    let res = app
        .send(app.request(reqwest::Method::POST, "/api/register", None))
        .await;
    res.expect(400, "Missing Login or password");
}

async fn registering_a_taken_name_is_409_in_any_letter_case(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    for name in [ann.name.clone(), ann.name.to_uppercase()] {
        app.register(&name, "x").await.expect(409, "User Exists");
    }
}

async fn user_name_and_password_limits_count_characters(backend: Backend) {
    let app = TestApp::start(backend).await;
    // 48 two-byte characters: 96 bytes, still within the limit.
    let name48 = "ż".repeat(48);
    let pw128 = "ł".repeat(128);
    let res = app.register(&name48, &pw128).await;
    assert_eq!(res.status, 201, "{res:?}");
    let res = app.login(&name48, &pw128).await;
    assert_eq!(res.status, 200, "{res:?}");

    let name49 = "ż".repeat(49);
    let res = app.register(&name49, "pw").await;
    res.expect(400, "user_name must be at most 48 characters");
    let pw129 = "ł".repeat(129);
    let res = app.register("bob", &pw129).await;
    res.expect(400, "password must be at most 128 characters");
    let res = app.login(&name48, &pw129).await;
    res.expect(400, "password must be at most 128 characters");
    let res = app.login(&name49, "pw").await;
    res.expect(400, "user_name must be at most 48 characters");
}

async fn user_names_with_surrounding_spaces_or_control_characters_are_refused(backend: Backend) {
    let app = TestApp::start(backend).await;
    for name in [" ann", "ann ", "an\u{0}n", "an\nn"] {
        let res = app.register(name, "pw").await;
        assert_eq!(res.status, 400, "{name:?}: {res:?}");
    }
}

async fn wrong_types_in_credentials_are_400(backend: Backend) {
    let app = TestApp::start(backend).await;
    for body in [
        json!({ "user_name": 5, "password": "pw" }),
        json!({ "user_name": "ann", "password": ["pw"] }),
        json!({ "user_name": { "a": 1 }, "password": "pw" }),
    ] {
        for path in ["/api/register", "/api/login"] {
            let res = app.post(path, None, body.clone()).await;
            assert_eq!(res.status, 400, "{path} {body}: {res:?}");
            assert!(res.error().contains("must be a string"), "{res:?}");
        }
    }
}

async fn login_returns_a_token_only_for_the_right_password(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let res = app.login(&ann.name, &ann.password).await;
    assert_eq!(res.status, 200, "{res:?}");
    assert_eq!(
        decode_claims(res.body["access_token"].as_str().expect("token"))["sub"],
        ann.name.as_str()
    );

    let res = app.login(&ann.name, "nope").await;
    res.expect(401, "Invalid user credentials");
    let res = app.login("nobody", "nope").await;
    res.expect(401, "Invalid user credentials");
    let res = app
        .post("/api/login", None, json!({ "user_name": ann.name }))
        .await;
    res.expect(400, "Missing Login or password");
}

async fn login_in_another_letter_case_gets_the_stored_name(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let upper = ann.name.to_uppercase();
    let res = app.login(&upper, &ann.password).await;
    assert_eq!(res.status, 200, "{res:?}");
    // The token names the user as stored, so ownership checks stay exact.
    assert_eq!(
        decode_claims(res.body["access_token"].as_str().expect("token"))["sub"],
        ann.name.as_str()
    );
}

async fn passwords_are_stored_as_argon2id_phc_strings(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let stored = app.stored_password(&ann.name).await;
    assert!(
        stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{stored}"
    );
    assert!(!stored.contains(&ann.password));
}

async fn legacy_plaintext_password_logs_in_once_and_is_rehashed(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.sql("INSERT INTO users (user_name, password) VALUES ('olduser', 'plain-old-pw')")
        .await;
    let res = app.login("olduser", "wrong").await;
    res.expect(401, "Invalid user credentials");
    assert_eq!(app.stored_password("olduser").await, "plain-old-pw");

    let res = app.login("olduser", "plain-old-pw").await;
    assert_eq!(res.status, 200, "{res:?}");
    let stored = app.stored_password("olduser").await;
    assert!(
        stored.starts_with("$argon2id$"),
        "rehashed on login: {stored}"
    );

    let res = app.login("olduser", "plain-old-pw").await;
    assert_eq!(res.status, 200, "still logs in after the rehash: {res:?}");
    // The stored hash itself is not a password.
    let res = app.login("olduser", &stored).await;
    res.expect(401, "Invalid user credentials");
}

/// Every endpoint that requires a token.
const PROTECTED: &[(&str, &str)] = &[
    ("POST", "/api/user/change_password"),
    ("GET", "/api/user/get_info"),
    ("GET", "/api/users/online"),
    ("POST", "/api/room/join_public"),
    ("POST", "/api/room/join_private"),
    ("POST", "/api/room/leave"),
    ("POST", "/api/room/create"),
    ("POST", "/api/room/delete"),
    ("POST", "/api/room/edit"),
    ("GET", "/api/user_rooms"),
    ("POST", "/api/user_kick"),
];

async fn protected_endpoints_refuse_missing_malformed_expired_and_forged_tokens(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let valid = app.sign(&claims_for(&ann.name, 600));
    let mut not_yet = claims_for(&ann.name, 600);
    not_yet["nbf"] = json!(chrono::Utc::now().timestamp() + 300);
    let mut refresh = claims_for(&ann.name, 600);
    refresh["type"] = json!("refresh");
    let mut no_exp = claims_for(&ann.name, 600);
    no_exp.as_object_mut().expect("object").remove("exp");
    let other_secret = forged_token(&ann.name);
    let hs512 = sign_with(
        jsonwebtoken::Algorithm::HS512,
        app.secret.as_bytes(),
        &claims_for(&ann.name, 600),
    );
    let claims_b64 = valid.split('.').nth(1).expect("claims");
    let alg_none = format!("eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.{claims_b64}.");
    let bad: Vec<(&str, Option<String>)> = vec![
        ("no header", None),
        ("garbage", Some("Bearer not.a.token".into())),
        ("no bearer prefix", Some(valid.clone())),
        (
            "expired",
            Some(format!("Bearer {}", app.sign(&claims_for(&ann.name, -5)))),
        ),
        (
            "not yet valid",
            Some(format!("Bearer {}", app.sign(&not_yet))),
        ),
        (
            "refresh token",
            Some(format!("Bearer {}", app.sign(&refresh))),
        ),
        ("no exp", Some(format!("Bearer {}", app.sign(&no_exp)))),
        ("other secret", Some(format!("Bearer {other_secret}"))),
        ("HS512", Some(format!("Bearer {hs512}"))),
        ("alg none", Some(format!("Bearer {alg_none}"))),
        (
            "unknown user",
            Some(format!("Bearer {}", app.sign(&claims_for("ghost", 600)))),
        ),
    ];
    for (method, path) in PROTECTED {
        let method: reqwest::Method = method.parse().expect("method");
        for (what, header) in &bad {
            let mut req = app.request(method.clone(), path, None).json(&json!({}));
            if let Some(h) = header {
                req = req.header("Authorization", h);
            }
            let res = app.send(req).await;
            assert_eq!(res.status, 401, "{path} with {what}: {res:?}");
            assert!(res.body["error"].is_string(), "{res:?}");
        }
        let res = app
            .send(
                app.request(method.clone(), path, Some(&valid))
                    .json(&json!({})),
            )
            .await;
        assert_ne!(res.status, 401, "{path} with a valid token: {res:?}");
    }
}

async fn changing_the_password_replaces_the_old_one(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let acts = app.as_user(&ann);
    acts.change_password("wrong", "new-pw")
        .await
        .expect(401, "Invalid old password");
    for body in [
        json!({}),
        json!({ "old_password": ann.password }),
        json!({ "new_password": "x" }),
    ] {
        let res = app
            .post("/api/user/change_password", Some(&ann.token), body)
            .await;
        res.expect(400, "Missing password parameter");
    }
    let long = "x".repeat(129);
    acts.change_password(&ann.password, &long)
        .await
        .expect(400, "new_password must be at most 128 characters");
    let pw128 = "y".repeat(128);
    acts.change_password(&ann.password, &pw128)
        .await
        .expect_message("Password changed successfully");

    app.login(&ann.name, &ann.password)
        .await
        .expect(401, "Invalid user credentials");
    assert_eq!(app.login(&ann.name, &pw128).await.status, 200);
    assert!(
        app.stored_password(&ann.name)
            .await
            .starts_with("$argon2id$")
    );
}

async fn token_lifetime_is_configurable(backend: Backend) {
    let options = Options::default().with("JWT_ACCESS_TOKEN_EXPIRES", "60");
    let app = TestApp::start_with(backend, options).await;
    let ann = app.user("ann").await;
    let claims = decode_claims(&ann.token);
    assert_eq!(
        claims["exp"].as_i64().expect("exp") - claims["iat"].as_i64().expect("iat"),
        60
    );
}

async fn a_login_flood_does_not_hold_up_other_requests(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let logins: Vec<_> = (0..24)
        .map(|_| {
            let req = app
                .request(reqwest::Method::POST, "/api/login", None)
                .json(&json!({ "user_name": ann.name, "password": ann.password }));
            tokio::spawn(req.send())
        })
        .collect();
    // Let the flood queue up on the hashing threads, then ask for cheap reads.
    tokio::time::sleep(Duration::from_millis(50)).await;
    for _ in 0..10 {
        assert_eq!(app.get("/api/rooms", None).await.status, 200);
        assert_eq!(
            app.get("/api/user_rooms", Some(&ann.token)).await.status,
            200
        );
    }
    // The reads were answered while logins were still waiting for a hasher.
    let pending = logins.iter().filter(|h| !h.is_finished()).count();
    assert!(
        pending > 0,
        "every login finished before the reads: hashing is not bounded"
    );
    for login in logins {
        let res = login.await.expect("join").expect("response");
        assert_eq!(res.status(), 200);
    }
}

async fn tokens_keep_working_for_their_user_only(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann: User = app.user("ann").await;
    let bob: User = app.user("bob").await;
    let room = app.as_user(&ann).create_room("ann's", None).await;
    // Bob's token cannot act as Ann, whatever names the body carries.
    let res = app
        .post(
            "/api/room/delete",
            Some(&bob.token),
            json!({ "room_id": room, "user_name": ann.name }),
        )
        .await;
    res.expect(404, "Room not found");
}

/// The claims part of a JWT, decoded without checking the signature (as web clients do).
fn decode_claims(token: &str) -> serde_json::Value {
    let part = token.split('.').nth(1).expect("claims");
    let mut padded = part.replace('-', "+").replace('_', "/");
    while !padded.len().is_multiple_of(4) {
        padded.push('=');
    }
    let bytes = base64_decode(&padded);
    serde_json::from_slice(&bytes).expect("claims JSON")
}

fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let mut buf = 0u32;
    let mut bits = 0;
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        buf = (buf << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
        }
    }
    out
}

crate::on_both_stores!(
    register_answers_201_with_a_token_naming_the_user,
    register_without_name_or_password_is_400,
    registering_a_taken_name_is_409_in_any_letter_case,
    user_name_and_password_limits_count_characters,
    user_names_with_surrounding_spaces_or_control_characters_are_refused,
    wrong_types_in_credentials_are_400,
    login_returns_a_token_only_for_the_right_password,
    login_in_another_letter_case_gets_the_stored_name,
    passwords_are_stored_as_argon2id_phc_strings,
    legacy_plaintext_password_logs_in_once_and_is_rehashed,
    protected_endpoints_refuse_missing_malformed_expired_and_forged_tokens,
    changing_the_password_replaces_the_old_one,
    token_lifetime_is_configurable,
    a_login_flood_does_not_hold_up_other_requests,
    tokens_keep_working_for_their_user_only,
);
