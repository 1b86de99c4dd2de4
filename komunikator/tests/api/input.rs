//! Bad input of every kind gets a 4xx JSON error, never a 5xx or an HTML
//! page; bodies are limited to 64 KiB; browsers on other origins are allowed.

use serde_json::{Value, json};

use crate::harness::{Backend, Options, TestApp};

const POSTS: &[&str] = &[
    "/api/register",
    "/api/login",
    "/api/user/change_password",
    "/api/room/join_public",
    "/api/room/join_private",
    "/api/room/leave",
    "/api/room/create",
    "/api/room/delete",
    "/api/room/edit",
    "/api/user_kick",
];

async fn malformed_json_bodies_are_400_with_a_json_error(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let cases: &[(&str, &str)] = &[
        ("{bad json", "Request body is not valid JSON"),
        ("[1, 2]", "Request body must be a JSON object"),
        ("\"text\"", "Request body must be a JSON object"),
        ("42", "Request body must be a JSON object"),
        ("null", "Request body must be a JSON object"),
        ("{\"a\": 1} trailing", "Request body is not valid JSON"),
    ];
    for path in POSTS {
        for (raw, error) in cases {
            let req = app
                .request(reqwest::Method::POST, path, Some(&ann.token))
                .header("Content-Type", "application/json")
                .body(raw.to_string());
            let res = app.send(req).await;
            res.expect(400, error);
            let content_type = res
                .headers
                .get("content-type")
                .and_then(|v| v.to_str().ok());
            assert_eq!(content_type, Some("application/json"), "{path}");
        }
    }
}

async fn bodies_are_limited_to_64_kib(backend: Backend) {
    let app = TestApp::start(backend).await;
    let body_of = |size: usize| {
        let skeleton = json!({ "user_name": "ann", "password": "pw", "pad": "" }).to_string();
        let pad = "x".repeat(size - skeleton.len());
        json!({ "user_name": "ann", "password": "pw", "pad": pad }).to_string()
    };
    let at_limit = body_of(64 * 1024);
    assert_eq!(at_limit.len(), 64 * 1024);
    let res = app
        .send(
            app.request(reqwest::Method::POST, "/api/register", None)
                .body(at_limit),
        )
        .await;
    assert_eq!(res.status, 201, "a 64 KiB body is accepted: {res:?}");
    // The server reads an over-limit body to its end before answering, so
    // a client (or a proxy) still sending it reads the 413, never a reset.
    let error = json!({ "error": "Request body too large (limit 64 KiB)" });
    for size in [64 * 1024 + 1, 1024 * 1024] {
        for _ in 0..5 {
            let res = app
                .request(reqwest::Method::POST, "/api/login", None)
                .body(body_of(size))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{size} bytes: no answer: {e}"));
            let answer = (res.status().as_u16(), res.json::<Value>().await.ok());
            assert_eq!(answer, (413, Some(error.clone())), "{size} bytes");
        }
    }
}

/// ingress-nginx sends the requests it fails itself (body over its limit, no
/// ready replica) to the api as its error backend, with the status in
/// `X-Code` and the path rewritten: the answer is the contract's JSON.
async fn proxy_error_codes_are_answered_in_json(backend: Backend) {
    let app = TestApp::start_with(
        backend,
        Options::default().with("TRUSTED_PROXIES", "127.0.0.1"),
    )
    .await;
    for (method, path) in [
        (reqwest::Method::GET, "/"),
        (reqwest::Method::POST, "/api/login"),
    ] {
        let res = app
            .send(
                app.request(method.clone(), path, None)
                    .header("X-Code", "413"),
            )
            .await;
        res.expect(413, "Request body too large (limit 64 KiB)");
        for code in ["502", "503", "504"] {
            let res = app
                .request(method.clone(), path, None)
                .header("X-Code", code)
                .send()
                .await
                .expect("answer");
            assert_eq!(res.status(), 503, "{method} {path} X-Code {code}");
            assert_eq!(res.headers()["retry-after"], "1");
            let body: Value = res.json().await.expect("json");
            assert_eq!(body, json!({ "error": "Service unavailable, try again" }));
        }
    }
    // Any other value is no proxy error: the request is served as usual.
    let res = app
        .send(
            app.request(reqwest::Method::GET, "/api/rooms", None)
                .header("X-Code", "200"),
        )
        .await;
    assert_eq!(res.status, 200);
}

/// From anyone but a trusted proxy, `X-Code` is a header like any other:
/// a client could otherwise have the API answer 503 at will (counted as
/// server errors, which page the operator).
async fn proxy_error_codes_from_a_client_are_ignored(backend: Backend) {
    let app = TestApp::start(backend).await;
    for code in ["413", "502", "503", "504"] {
        let res = app
            .send(
                app.request(reqwest::Method::GET, "/api/rooms", None)
                    .header("X-Code", code),
            )
            .await;
        assert_eq!(res.status, 200, "X-Code {code}: {res:?}");
        let res = app
            .send(
                app.request(reqwest::Method::POST, "/api/login", None)
                    .header("X-Code", code),
            )
            .await;
        res.expect(400, "Missing Login or password");
    }
    let metrics = crate::harness::metrics(&app.base).await;
    assert!(!metrics.contains(r#"status="503""#), "{metrics}");
}

async fn unknown_paths_and_methods_answer_json(backend: Backend) {
    let app = TestApp::start(backend).await;
    app.get("/api/nope", None).await.expect(404, "Not found");
    app.get("/nope", None).await.expect(404, "Not found");
    let res = app
        .send(app.request(reqwest::Method::DELETE, "/api/rooms", None))
        .await;
    res.expect(405, "Method not allowed");
    let res = app.get("/api/register", None).await;
    res.expect(405, "Method not allowed");
}

async fn absurd_ids_and_query_values_are_400(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    for id in [
        "abc",
        "-1",
        "0",
        "1.5",
        "1e3",
        "9007199254740992",
        "99999999999999999999999",
        " 1",
    ] {
        let res = app
            .get(&format!("/api/room?room_id={}", urlencode(id)), None)
            .await;
        assert_eq!(res.status, 400, "room_id={id:?}: {res:?}");
        assert_eq!(res.error(), "room_id must be a positive integer below 2^53");
    }
    for id in [
        json!(-1),
        json!(0),
        json!(1.5),
        json!(true),
        json!([1]),
        json!({}),
        json!(9007199254740992u64),
    ] {
        let res = app
            .post(
                "/api/room/join_public",
                Some(&ann.token),
                json!({ "room_id": id }),
            )
            .await;
        res.expect(400, "room_id must be a positive integer below 2^53");
    }
    let res = app.get("/api/room?room_id=9007199254740991", None).await;
    res.expect(404, "Room not found");
    let res = app.get("/api/room?room_id=%ZZ", None).await;
    assert_eq!(res.status, 400, "{res:?}");
}

fn urlencode(s: &str) -> String {
    s.replace(' ', "%20")
}

async fn wrong_field_types_are_400(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "/api/room/create",
            json!({ "room_name": 1 }),
            "room_name must be a string",
        ),
        (
            "/api/room/create",
            json!({ "room_name": "r", "is_private": "maybe" }),
            "is_private must be true or false",
        ),
        // A string is refused even when it reads like a boolean: "false"
        // taken loosely would make a room private.
        (
            "/api/room/create",
            json!({ "room_name": "r", "is_private": "false" }),
            "is_private must be true or false",
        ),
        (
            "/api/room/create",
            json!({ "room_name": "r", "is_private": "yes", "access_key": "k" }),
            "is_private must be true or false",
        ),
        (
            "/api/room/create",
            json!({ "room_name": "r", "is_private": "true", "access_key": "k" }),
            "is_private must be true or false",
        ),
        (
            "/api/room/create",
            json!({ "room_name": "r", "is_private": 2 }),
            "is_private must be true or false",
        ),
        (
            "/api/room/create",
            json!({ "room_name": "r", "is_private": true, "access_key": 5 }),
            "access_key must be a string",
        ),
        (
            "/api/room/join_private",
            json!({ "access_key": ["k"] }),
            "access_key must be a string",
        ),
        (
            "/api/user_kick",
            json!({ "room_id": 1, "user_to_kick": 7 }),
            "user_to_kick must be a string",
        ),
        (
            "/api/user/change_password",
            json!({ "old_password": 1, "new_password": "x" }),
            "old_password must be a string",
        ),
    ];
    for (path, body, error) in cases {
        app.post(path, Some(&ann.token), body)
            .await
            .expect(400, error);
    }
    let rooms = app.get("/api/user_rooms", Some(&ann.token)).await;
    assert_eq!(rooms.body, json!([]), "no room was created");
    let room = app.as_user(&ann).create_room("Edited", None).await;
    for bad in [json!("false"), json!("yes"), json!("true"), json!([true])] {
        app.post(
            "/api/room/edit",
            Some(&ann.token),
            json!({ "room_id": room, "new_name": "E", "is_private": bad, "new_access_key": "k" }),
        )
        .await
        .expect(400, "is_private must be true or false");
    }
    let res = app
        .get(&format!("/api/room?room_id={room}"), Some(&ann.token))
        .await;
    assert_eq!(
        (&res.body["room_name"], &res.body["is_private"]),
        (&json!("Edited"), &json!(false)),
        "the room is unchanged: {res:?}"
    );
}

async fn cors_preflight_allows_any_origin_with_the_authorization_header(backend: Backend) {
    let app = TestApp::start(backend).await;
    let res = app
        .send(
            app.request(reqwest::Method::OPTIONS, "/api/room/create", None)
                .header("Origin", "https://chat.example.org")
                .header("Access-Control-Request-Method", "POST")
                .header(
                    "Access-Control-Request-Headers",
                    "authorization,content-type",
                ),
        )
        .await;
    assert_eq!(res.status, 200);
    let header = |name: &str| {
        res.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_lowercase()
    };
    assert_eq!(header("access-control-allow-origin"), "*");
    assert!(header("access-control-allow-headers").contains("authorization"));
    assert!(header("access-control-allow-methods").contains("post"));
    let res = app
        .send(
            app.request(reqwest::Method::GET, "/api/rooms", None)
                .header("Origin", "https://x.example"),
        )
        .await;
    assert_eq!(
        res.headers
            .get("access-control-allow-origin")
            .map(|v| v.as_bytes()),
        Some(&b"*"[..])
    );
}

/// The `Access-Control-Allow-Origin` a page on `origin` gets from
/// `base/socket.io/`: on the preflight of a long-polling POST, and on the
/// long-polling handshake socket.io-client starts with (both must succeed).
pub async fn socket_io_cors(base: &str, origin: &str) -> (Option<String>, Option<String>) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let polling = format!("{base}/socket.io/?EIO=4&transport=polling");
    let allow = |res: &reqwest::Response| {
        res.headers()
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let preflight = http
        .request(reqwest::Method::OPTIONS, &polling)
        .header("Origin", origin)
        .header("Access-Control-Request-Method", "POST")
        .header("Access-Control-Request-Headers", "content-type")
        .send()
        .await
        .expect("preflight");
    assert!(preflight.status().is_success(), "{preflight:?}");
    let methods = preflight
        .headers()
        .get("access-control-allow-methods")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    assert!(
        allow(&preflight).is_none() || (methods.contains("GET") && methods.contains("POST")),
        "{methods}"
    );
    let handshake = http
        .get(&polling)
        .header("Origin", origin)
        .send()
        .await
        .expect("handshake");
    assert_eq!(handshake.status(), 200);
    let allowed = (allow(&preflight), allow(&handshake));
    let body = handshake.text().await.expect("body");
    assert!(body.starts_with("0{") && body.contains("\"sid\""), "{body}");
    allowed
}

/// socket.io-client in a browser starts with long-polling requests (and
/// their preflights) to `/socket.io/`: without CORS there, no page on
/// another origin can connect.
async fn cors_covers_socket_io_polling_and_its_preflight(backend: Backend) {
    let options = Options {
        env: vec![("CORS_ALLOWED_ORIGINS", "https://a.example".into())],
        ..Options::default()
    };
    let app = TestApp::start_with(backend, options).await;
    for (origin, allowed) in [("https://a.example", true), ("https://evil.example", false)] {
        let expected = allowed.then(|| origin.to_owned());
        let got = socket_io_cors(app.gateway_url(0), origin).await;
        assert_eq!(got, (expected.clone(), expected), "{origin}");
    }
}

async fn cors_allowlist_admits_only_listed_origins(backend: Backend) {
    let options = Options {
        env: vec![(
            "CORS_ALLOWED_ORIGINS",
            "https://a.example, https://b.example:8443".into(),
        )],
        ..Options::default()
    };
    let app = TestApp::start_with(backend, options).await;
    for (origin, allowed) in [
        ("https://a.example", true),
        ("https://b.example:8443", true),
        ("https://evil.example", false),
    ] {
        let res = app
            .send(
                app.request(reqwest::Method::OPTIONS, "/api/rooms", None)
                    .header("Origin", origin)
                    .header("Access-Control-Request-Method", "GET"),
            )
            .await;
        let got = res
            .headers
            .get("access-control-allow-origin")
            .and_then(|v| v.to_str().ok());
        assert_eq!(got, allowed.then_some(origin), "{origin}");
    }
}

async fn health_readiness_and_metrics_are_served(backend: Backend) {
    let app = TestApp::start(backend).await;
    assert_eq!(app.get("/healthz", None).await.body["status"], "ok");
    assert_eq!(app.get("/readyz", None).await.body["status"], "ready");
    app.get("/api/rooms", None).await;
    let metrics = app
        .send(app.request(reqwest::Method::GET, "/metrics", None))
        .await;
    assert_eq!(metrics.status, 200);
    let text = reqwest::get(app.url("/metrics"))
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    assert!(
        text.contains(
            r#"komunikator_http_requests_total{method="GET",route="/api/rooms",status="200"}"#
        ),
        "{text}"
    );
    assert!(
        text.contains("komunikator_http_request_duration_seconds_bucket"),
        "{text}"
    );
}

async fn sigterm_stops_the_server_cleanly(backend: Backend) {
    let mut app = TestApp::start(backend).await;
    app.user("ann").await;
    assert_eq!(app.terminate().await, Some(0));
    assert!(app.logs().contains("SIGTERM received"), "{}", app.logs());
}

crate::on_both_stores!(
    malformed_json_bodies_are_400_with_a_json_error,
    bodies_are_limited_to_64_kib,
    proxy_error_codes_are_answered_in_json,
    proxy_error_codes_from_a_client_are_ignored,
    unknown_paths_and_methods_answer_json,
    absurd_ids_and_query_values_are_400,
    wrong_field_types_are_400,
    cors_preflight_allows_any_origin_with_the_authorization_header,
    cors_allowlist_admits_only_listed_origins,
    cors_covers_socket_io_polling_and_its_preflight,
    health_readiness_and_metrics_are_served,
    sigterm_stops_the_server_cleanly,
);
