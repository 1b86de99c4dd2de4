//! The Socket.IO gateway, black-box: authentication, the client events
//! (`join`, `leave`, `message`, `watchdog`), every error code, the server
//! events REST changes cause, private-room isolation, and (MariaDB) two
//! gateways sharing rooms.

use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Backend, Options, TestApp, User, claims_for};
use crate::rooms::assert_timestamp;
use crate::sio::{Auth, Socket};

/// How long a test waits to be sure an event does not arrive.
const QUIET: Duration = Duration::from_millis(500);

/// The body of an `error` event.
fn refusal(message: &str, code: u8) -> Value {
    json!({ "message": message, "code": code })
}

/// Connects with `auth` and returns the connect error's message.
async fn refused(url: &str, auth: Auth<'_>) -> String {
    match Socket::connect(url, auth).await {
        Ok(_) => panic!("the connection was accepted"),
        Err(e) => e,
    }
}

/// Emits `event` and asserts the socket gets exactly this `error`.
async fn expect_refusal(sock: &mut Socket, event: &str, payload: Value, message: &str, code: u8) {
    sock.emit(event, payload.clone());
    assert_eq!(
        sock.expect("error").await,
        refusal(message, code),
        "{event} {payload}"
    );
}

/// Sends a `message` asking for an ack and asserts it is refused: the ack is
/// `{error, code}` and an `error` event `{message, code}` arrives too.
async fn expect_refused_message(sock: &mut Socket, payload: Value, message: &str, code: u8) {
    let ack = sock.emit_with_ack("message", payload.clone()).await;
    assert_eq!(
        ack,
        json!({ "error": message, "code": code }),
        "ack of {payload}"
    );
    assert_eq!(
        sock.expect("error").await,
        refusal(message, code),
        "error of {payload}"
    );
}

/// Sends a chat message with an ack; returns its chat id.
async fn send(sock: &Socket, room: i64, text: &str) -> i64 {
    let ack = sock
        .emit_with_ack("message", json!({ "room_id": room, "message": text }))
        .await;
    let chat_id = ack["chat_id"]
        .as_i64()
        .unwrap_or_else(|| panic!("no chat_id in the ack: {ack}"));
    assert_eq!(ack, json!({ "chat_id": chat_id }));
    chat_id
}

/// The next `new_message` of `sock`.
async fn next_message(sock: &mut Socket) -> Value {
    sock.expect("new_message").await
}

/// Proves a socket still works: a valid message is acknowledged and comes back.
async fn assert_usable(sock: &mut Socket, room: i64) {
    let chat_id = send(sock, room, "still here").await;
    let got = next_message(sock).await;
    assert_eq!(got["chat_id"], chat_id, "{got}");
}

/// The room's history (as its owner), polled until it holds at least `n`
/// messages or 3 s passed: the persister writes asynchronously.
async fn history(app: &TestApp, viewer: &User, room: i64, n: usize) -> Vec<Value> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(3);
    loop {
        let res = app
            .get(
                &format!("/api/chat_history?room_id={room}"),
                Some(&viewer.token),
            )
            .await;
        assert_eq!(res.status, 200, "{res:?}");
        let items = res.body.as_array().cloned().expect("a list");
        if items.len() >= n || tokio::time::Instant::now() >= deadline {
            return items;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Sends messages until one to `room` is refused with 4 (within 5 s): a
/// removal from a room may land shortly after the event announcing it.
async fn until_join_failed(sock: &mut Socket, room: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let ack = sock
            .emit_with_ack("message", json!({ "room_id": room, "message": "probe" }))
            .await;
        if ack == json!({ "error": "Join failed", "code": 4 }) {
            assert_eq!(sock.expect("error").await, refusal("Join failed", 4));
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the socket is still in room {room}: {ack}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// --- Authentication -------------------------------------------------------

async fn a_token_in_the_auth_payload_the_header_or_the_query_connects(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let room = app.room(&ann, "lobby", None).await;
    let url = app.gateway_url(0).to_owned();
    for auth in [
        Auth::Payload(&ann.token),
        Auth::Header(&ann.token),
        Auth::Query(&ann.token),
    ] {
        let mut sock = Socket::connect(&url, auth).await.expect("connects");
        sock.emit("join", json!({ "room_id": room }));
        // The socket's identity is the token's subject.
        assert_eq!(
            sock.expect("user_joined").await,
            json!({ "user_name": ann.name, "room_id": room })
        );
    }
}

async fn sockets_without_a_valid_token_are_refused(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let url = app.gateway_url(0).to_owned();
    let expired = app.sign(&claims_for(&ann.name, -3600));
    let other_secret = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        &claims_for(&ann.name, 600),
        &jsonwebtoken::EncodingKey::from_secret(b"some other secret, 32 bytes long!"),
    )
    .expect("sign");
    let unknown_user = app.sign(&claims_for("nobody_here", 600));

    assert_eq!(refused(&url, Auth::None).await, "Unauthorized");
    for token in [
        "garbage",
        "a.b.c",
        expired.as_str(),
        other_secret.as_str(),
        unknown_user.as_str(),
    ] {
        for (how, auth) in [
            ("payload", Auth::Payload(token)),
            ("header", Auth::Header(token)),
            ("query", Auth::Query(token)),
        ] {
            assert_eq!(refused(&url, auth).await, "Unauthorized", "{how}: {token}");
        }
    }
    // A token signed the same way for a real user still connects.
    let fresh = app.sign(&claims_for(&ann.name, 600));
    Socket::connect(&url, Auth::Payload(&fresh))
        .await
        .expect("a valid signed token connects");
}

/// An operator sees clients failing to connect (an old client without a
/// token, a wrong secret): each refusal is logged with its reason, never the
/// token, and counted by reason.
async fn refused_socket_connections_are_logged_and_counted_by_reason(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let url = app.gateway_url(0).to_owned();
    let expired = app.sign(&claims_for(&ann.name, -3600));
    let unknown_user = app.sign(&claims_for("nobody_here", 600));
    // As through a proxy: the log names the client behind it.
    let from_proxy = [
        ("user-agent", "old-client/1.0"),
        ("x-forwarded-for", "203.0.113.7"),
    ];
    match Socket::connect_with(&url, Auth::None, &from_proxy).await {
        Ok(_) => panic!("the connection was accepted"),
        Err(e) => assert_eq!(e, "Unauthorized"),
    }
    assert_eq!(
        refused(&url, Auth::Payload("garbage")).await,
        "Unauthorized"
    );
    assert_eq!(refused(&url, Auth::Header("a.b.c")).await, "Unauthorized");
    assert_eq!(refused(&url, Auth::Query(&expired)).await, "Unauthorized");
    assert_eq!(
        refused(&url, Auth::Payload(&unknown_user)).await,
        "Unauthorized"
    );
    Socket::connect(&url, Auth::Payload(&ann.token))
        .await
        .expect("a valid token connects");

    let expected = [
        ("no_token", 1),
        ("invalid_token", 2),
        ("expired_token", 1),
        ("unknown_user", 1),
    ];
    let metrics = crate::harness::metrics(&url).await;
    for (reason, count) in expected {
        let line =
            format!("komunikator_gateway_connect_refusals_total{{reason=\"{reason}\"}} {count}");
        assert!(metrics.contains(&line), "no `{line}` in\n{metrics}");
    }
    let logs = app.logs();
    let refusals: Vec<Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["message"] == "socket connection refused")
        .collect();
    for (reason, count) in expected {
        let logged = refusals.iter().filter(|v| v["reason"] == reason).count();
        assert_eq!(
            logged, count,
            "{reason} refusals logged at info: {refusals:?}"
        );
    }
    assert!(
        refusals.iter().all(|v| v["level"] == "INFO"),
        "{refusals:?}"
    );
    let no_token = refusals.iter().find(|v| v["reason"] == "no_token");
    assert!(
        no_token.is_some_and(
            |v| v["user_agent"] == "old-client/1.0" && v["forwarded_for"] == "203.0.113.7"
        ),
        "the refusal names the client: {refusals:?}"
    );
    for secret in [&expired, &unknown_user, &ann.token] {
        assert!(!logs.contains(secret.as_str()), "a token was logged");
    }
}

/// `client_msg_id` makes a resend idempotent: the same user's retry with the
/// same id is stored and delivered once and acked with the same `chat_id`,
/// whether it follows the first one or races it.
async fn a_resend_with_the_same_client_msg_id_is_stored_and_delivered_once(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let room = app.room(&ann, "Retries", None).await;
    app.join_public(&bob, room).await;
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await;
    a.join(room).await;
    b.join(room).await;
    let message =
        |id: &str, text: &str| json!({ "room_id": room, "message": text, "client_msg_id": id });
    let first = a.emit_with_ack("message", message("m-1", "hello")).await;
    let again = a.emit_with_ack("message", message("m-1", "hello")).await;
    assert!(first["chat_id"].is_i64(), "{first}");
    assert_eq!(again, first, "the resend is acked with the first chat_id");
    // Two sends racing each other, at the 64-character limit.
    let long = "x".repeat(64);
    let (r1, r2) = tokio::join!(
        a.emit_with_ack("message", message(&long, "raced")),
        a.emit_with_ack("message", message(&long, "raced")),
    );
    assert_eq!(r1, r2);
    // Another user's id is their own; no id is no deduplication.
    let bobs = b.emit_with_ack("message", message("m-1", "bob's")).await;
    assert_ne!(bobs["chat_id"], first["chat_id"]);
    let plain1 = send(&a, room, "plain").await;
    let plain2 = send(&a, room, "plain").await;
    assert_ne!(plain1, plain2);

    let expected = vec![
        first["chat_id"].clone(),
        r1["chat_id"].clone(),
        bobs["chat_id"].clone(),
        json!(plain1),
        json!(plain2),
    ];
    let mut delivered = Vec::new();
    while delivered.len() < expected.len() {
        delivered.push(b.expect("new_message").await["chat_id"].clone());
    }
    assert_eq!(delivered, expected, "each message delivered once");
    b.expect_none("new_message", Duration::from_millis(300))
        .await;
    let history = app
        .get(&format!("/api/chat_history?room_id={room}"), None)
        .await;
    let stored: Vec<Value> = history
        .body
        .as_array()
        .expect("history")
        .iter()
        .map(|m| m["chat_id"].clone())
        .collect();
    assert_eq!(stored, expected, "each message stored once");

    // Over the limit, empty, other characters, other types: invalid payload.
    for bad in [
        json!("y".repeat(65)),
        json!(""),
        json!("a b"),
        json!("ż"),
        json!(7),
        json!(["m"]),
    ] {
        expect_refused_message(
            &mut a,
            json!({ "room_id": room, "message": "x", "client_msg_id": bad }),
            "Invalid payload",
            7,
        )
        .await;
    }
}

async fn an_origin_allowlist_refuses_other_origins(backend: Backend) {
    let app = TestApp::start_with(
        backend,
        Options {
            env: vec![("CORS_ALLOWED_ORIGINS", "https://a.example".into())],
            ..Default::default()
        },
    )
    .await;
    let ann = app.user("ann").await;
    let url = app.gateway_url(0).to_owned();
    let evil = Socket::connect_with(
        &url,
        Auth::Payload(&ann.token),
        &[("Origin", "https://evil.example")],
    )
    .await;
    assert!(evil.is_err(), "a foreign origin was accepted");
    Socket::connect_with(
        &url,
        Auth::Payload(&ann.token),
        &[("Origin", "https://a.example")],
    )
    .await
    .expect("the allowed origin connects");
}

async fn an_event_sent_right_after_connecting_is_handled(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let room = app.room(&ann, "lobby", None).await;
    // Handlers must be in place by the time the connection is acknowledged:
    // clients emit `join` at once. One connection at a time, then many.
    for i in 0..40 {
        let mut sock = app.socket(&ann).await;
        sock.emit("join", json!({ "room_id": room }));
        let joined = sock.try_expect("user_joined", Duration::from_secs(3)).await;
        assert!(joined.is_some(), "connection {i}: the first event was lost");
    }
    let connections = (0..20).map(|_| async {
        let mut sock = app.socket(&ann).await;
        sock.emit("join", json!({ "room_id": room }));
        sock.try_expect("user_joined", Duration::from_secs(3)).await
    });
    let joined = futures_util::future::join_all(connections).await;
    let lost = joined.iter().filter(|j| j.is_none()).count();
    assert_eq!(lost, 0, "{lost} of 20 first events lost");
}

/// The `error` answering a first event is emitted to the socket itself, which
/// socketioxide marks connected only just after acknowledging the connection:
/// an answer sent in between must not be dropped.
async fn a_refusal_of_the_first_event_after_connecting_is_not_lost(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let connections = (0..30).map(|_| async {
        let mut sock = app.socket(&ann).await;
        sock.emit("watchdog", json!("not an object"));
        sock.try_expect("error", Duration::from_secs(3)).await
    });
    let answers = futures_util::future::join_all(connections).await;
    let lost = answers.iter().filter(|a| a.is_none()).count();
    assert_eq!(lost, 0, "{lost} of 30 first refusals lost");
    for answer in answers.into_iter().flatten() {
        assert_eq!(answer, refusal("Invalid payload", 7));
    }
}

// --- join -----------------------------------------------------------------

async fn join_announces_the_joiner_to_the_whole_room_including_the_joiner(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let cid = app.user("cid").await;
    let room = app.room(&ann, "lobby", None).await;
    let other = app.room(&cid, "elsewhere", None).await;
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await;
    let mut c = app.socket(&cid).await;
    a.join(room).await;
    c.join(other).await;

    b.emit("join", json!({ "room_id": room, "user_name": bob.name }));
    let joined = json!({ "user_name": bob.name, "room_id": room });
    assert_eq!(b.expect("user_joined").await, joined);
    assert_eq!(a.expect("user_joined").await, joined);
    c.expect_none("user_joined", QUIET).await;
}

async fn private_rooms_can_be_joined_by_the_owner_and_members_only(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let private = app.room(&ann, "secret", Some("key-1")).await;
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await;

    expect_refusal(
        &mut b,
        "join",
        json!({ "room_id": private }),
        "Join failed",
        4,
    )
    .await;
    // The owner joins; the refused socket was not added.
    a.join(private).await;
    a.expect_none("user_joined", QUIET).await;
    expect_refused_message(
        &mut b,
        json!({ "room_id": private, "message": "hi" }),
        "Join failed",
        4,
    )
    .await;

    app.post(
        "/api/room/join_private",
        Some(&bob.token),
        json!({ "access_key": "key-1" }),
    )
    .await
    .expect_message("Joined room successfully");
    b.emit("join", json!({ "room_id": private }));
    let joined = json!({ "user_name": bob.name, "room_id": private });
    assert_eq!(b.expect("user_joined").await, joined);
    assert_eq!(a.expect("user_joined").await, joined);
    let chat_id = send(&b, private, "inside").await;
    assert_eq!(next_message(&mut a).await["chat_id"], chat_id);
}

async fn joining_an_unknown_room_fails_with_code_4(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let room = app.room(&ann, "lobby", None).await;
    let mut a = app.socket(&ann).await;
    for id in [
        json!(room + 1000),
        json!((room + 1000).to_string()),
        json!(0),
        json!(-1),
    ] {
        expect_refusal(&mut a, "join", json!({ "room_id": id }), "Join failed", 4).await;
    }
    a.join(room).await;
    assert_usable(&mut a, room).await;
}

// --- leave ----------------------------------------------------------------

async fn leave_tells_the_others_and_stops_delivery_to_the_leaver(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let cid = app.user("cid").await;
    let room = app.room(&ann, "lobby", None).await;
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await;
    let mut c = app.socket(&cid).await;
    for s in [&mut a, &mut b, &mut c] {
        s.join(room).await;
    }

    b.emit("leave", json!({ "room_id": room, "user_name": bob.name }));
    let left = json!({ "user_name": bob.name, "room_id": room });
    assert_eq!(a.expect("user_left").await, left);
    assert_eq!(c.expect("user_left").await, left);
    b.expect_none("user_left", QUIET).await;

    let chat_id = send(&a, room, "after bob left").await;
    assert_eq!(next_message(&mut c).await["chat_id"], chat_id);
    b.expect_none("new_message", QUIET).await;
    // And bob may no longer send to it.
    expect_refused_message(
        &mut b,
        json!({ "room_id": room, "message": "x" }),
        "Join failed",
        4,
    )
    .await;
}

// --- message --------------------------------------------------------------

async fn a_message_is_acknowledged_broadcast_and_stored_under_one_chat_id(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let room = app.room(&ann, "lobby", None).await;
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await;
    a.join(room).await;
    b.join(room).await;

    let ack = a
        .emit_with_ack(
            "message",
            json!({ "room_id": room, "user_name": ann.name, "message": "Hello, żółw!" }),
        )
        .await;
    let chat_id = ack["chat_id"].as_i64().expect("chat_id in the ack");
    assert_eq!(ack, json!({ "chat_id": chat_id }));

    let to_ann = next_message(&mut a).await;
    let to_bob = next_message(&mut b).await;
    assert_eq!(to_ann, to_bob);
    assert_timestamp(&to_ann["create_date"]);
    assert_eq!(
        to_ann,
        json!({
            "chat_id": chat_id,
            "room_id": room,
            "user_name": ann.name,
            "message": "Hello, żółw!",
            "create_date": to_ann["create_date"],
        })
    );

    let stored = history(&app, &ann, room, 1).await;
    assert_eq!(stored, vec![to_ann]);
}

async fn a_numeric_string_room_id_is_accepted_and_answered_as_an_integer(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let room = app.room(&ann, "lobby", None).await;
    let mut a = app.socket(&ann).await;
    a.emit("join", json!({ "room_id": room.to_string() }));
    assert_eq!(
        a.expect("user_joined").await,
        json!({ "user_name": ann.name, "room_id": room })
    );
    let ack = a
        .emit_with_ack(
            "message",
            json!({ "room_id": room.to_string(), "message": "by string" }),
        )
        .await;
    let got = next_message(&mut a).await;
    assert_eq!(got["chat_id"], ack["chat_id"]);
    assert_eq!(got["room_id"], json!(room));
}

async fn chat_ids_increase_strictly_across_messages(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let room = app.room(&ann, "lobby", None).await;
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await;
    a.join(room).await;
    b.join(room).await;
    let mut ids = Vec::new();
    for i in 0..6 {
        let sender = if i % 2 == 0 { &a } else { &b };
        ids.push(send(sender, room, &format!("m{i}")).await);
    }
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    for s in [&mut a, &mut b] {
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(next_message(s).await["chat_id"].as_i64().expect("id"));
        }
        assert_eq!(seen, ids);
    }
    let stored: Vec<i64> = history(&app, &ann, room, 6)
        .await
        .iter()
        .map(|m| m["chat_id"].as_i64().expect("id"))
        .collect();
    assert_eq!(stored, ids);
}

async fn every_socket_sees_concurrent_messages_in_the_same_chat_id_order(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let cid = app.user("cid").await;
    let room = app.room(&ann, "lobby", None).await;
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await;
    let mut c = app.socket(&cid).await;
    for s in [&mut a, &mut b, &mut c] {
        s.join(room).await;
    }
    for i in 0..10 {
        a.emit(
            "message",
            json!({ "room_id": room, "message": format!("a{i}") }),
        );
        b.emit(
            "message",
            json!({ "room_id": room, "message": format!("b{i}") }),
        );
    }
    let mut orders = Vec::new();
    for s in [&mut a, &mut b, &mut c] {
        let mut seen = Vec::new();
        for _ in 0..20 {
            seen.push(next_message(s).await["chat_id"].as_i64().expect("id"));
        }
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{seen:?}");
        orders.push(seen);
    }
    assert_eq!(orders[0], orders[1]);
    assert_eq!(orders[0], orders[2]);
}

// --- Identity -------------------------------------------------------------

async fn a_user_name_naming_someone_else_is_forbidden_for_every_event(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let room = app.room(&ann, "lobby", None).await;
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await;
    a.join(room).await;

    // join: refused, and nobody hears of it.
    expect_refusal(
        &mut b,
        "join",
        json!({ "room_id": room, "user_name": ann.name }),
        "Forbidden",
        5,
    )
    .await;
    a.expect_none("user_joined", QUIET).await;
    b.join(room).await;
    assert_eq!(
        a.expect("user_joined").await,
        json!({ "user_name": bob.name, "room_id": room })
    );

    // message: refused with an ack, nothing delivered, nothing stored.
    expect_refused_message(
        &mut b,
        json!({ "room_id": room, "user_name": ann.name, "message": "I am ann" }),
        "Forbidden",
        5,
    )
    .await;
    a.expect_none("new_message", Duration::from_millis(300))
        .await;

    // leave: refused, bob stays in the room.
    expect_refusal(
        &mut b,
        "leave",
        json!({ "room_id": room, "user_name": ann.name }),
        "Forbidden",
        5,
    )
    .await;
    a.expect_none("user_left", Duration::from_millis(300)).await;

    // watchdog: refused.
    expect_refusal(
        &mut b,
        "watchdog",
        json!({ "user_name": ann.name }),
        "Forbidden",
        5,
    )
    .await;

    let chat_id = send(&a, room, "only this one").await;
    assert_eq!(next_message(&mut b).await["chat_id"], chat_id);
    assert_eq!(next_message(&mut a).await["chat_id"], chat_id);
    let stored = history(&app, &ann, room, 1).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["chat_id"], chat_id);
    b.expect_none("new_message", QUIET).await;
}

async fn payloads_without_user_name_or_in_another_letter_case_are_accepted(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let room = app.room(&ann, "lobby", None).await;
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await;
    a.join(room).await;
    let shouted = bob.name.to_uppercase();
    assert_ne!(shouted, bob.name);

    b.emit("join", json!({ "room_id": room, "user_name": shouted }));
    // The event names the socket's identity, not the payload's spelling.
    let joined = json!({ "user_name": bob.name, "room_id": room });
    assert_eq!(b.expect("user_joined").await, joined);
    assert_eq!(a.expect("user_joined").await, joined);

    for user_name in [Value::Null, json!(shouted), json!(bob.name)] {
        let mut payload = json!({ "room_id": room, "message": "hi" });
        if !user_name.is_null() {
            payload["user_name"] = user_name.clone();
        }
        let ack = b.emit_with_ack("message", payload).await;
        let chat_id = ack["chat_id"]
            .as_i64()
            .unwrap_or_else(|| panic!("{user_name}: {ack}"));
        let got = next_message(&mut a).await;
        assert_eq!(got["chat_id"], chat_id);
        assert_eq!(got["user_name"], bob.name.as_str());
    }
    for payload in [
        json!({ "user_name": shouted }),
        json!({ "user_name": bob.name }),
    ] {
        b.emit("watchdog", payload);
    }
    b.emit("leave", json!({ "room_id": room, "user_name": shouted }));
    assert_eq!(
        a.expect("user_left").await,
        json!({ "user_name": bob.name, "room_id": room })
    );
    b.expect_none("error", Duration::from_millis(300)).await;
    let stored = history(&app, &ann, room, 3).await;
    assert_eq!(stored.len(), 3);
    assert!(stored.iter().all(|m| m["user_name"] == bob.name.as_str()));
}

// --- Error codes ----------------------------------------------------------

async fn message_length_is_limited_to_1000_characters_not_bytes(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let room = app.room(&ann, "lobby", None).await;
    let mut a = app.socket(&ann).await;
    a.join(room).await;

    let at_limit = "ż".repeat(1000);
    let chat_id = send(&a, room, &at_limit).await;
    let got = next_message(&mut a).await;
    assert_eq!(
        (got["chat_id"].as_i64(), &got["message"]),
        (Some(chat_id), &json!(at_limit))
    );

    for over in ["ż".repeat(1001), "a".repeat(1001)] {
        expect_refused_message(
            &mut a,
            json!({ "room_id": room, "message": over }),
            "Message is too long",
            1,
        )
        .await;
        assert_usable(&mut a, room).await;
    }
    let stored = history(&app, &ann, room, 3).await;
    assert_eq!(stored.len(), 3, "the refused ones are not stored");
    assert_eq!(stored[0]["message"], json!(at_limit), "not truncated");
}

async fn a_missing_or_blank_message_is_code_2(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let room = app.room(&ann, "lobby", None).await;
    let mut a = app.socket(&ann).await;
    a.join(room).await;
    for payload in [
        json!({ "room_id": room }),
        json!({ "room_id": room, "message": null }),
        json!({ "room_id": room, "message": "" }),
        json!({ "room_id": room, "message": "   " }),
        json!({ "room_id": room, "message": " \t\n " }),
    ] {
        expect_refused_message(&mut a, payload, "Missing message", 2).await;
        assert_usable(&mut a, room).await;
    }
}

async fn a_missing_room_id_or_watchdog_user_name_is_code_3(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let room = app.room(&ann, "lobby", None).await;
    let mut a = app.socket(&ann).await;
    a.join(room).await;
    let missing = "Missing user_name or room_id";
    for (event, payload) in [
        ("join", json!({})),
        ("join", json!({ "user_name": ann.name })),
        ("join", json!({ "room_id": null })),
        ("leave", json!({})),
        ("leave", json!({ "user_name": ann.name })),
    ] {
        expect_refusal(&mut a, event, payload, missing, 3).await;
        assert_usable(&mut a, room).await;
    }
    for payload in [
        json!({ "message": "x" }),
        json!({ "user_name": ann.name, "message": "x" }),
        json!({ "room_id": null, "message": "x" }),
    ] {
        expect_refused_message(&mut a, payload, missing, 3).await;
        assert_usable(&mut a, room).await;
    }
    for payload in [json!({}), json!({ "user_name": null })] {
        expect_refusal(&mut a, "watchdog", payload, "Missing user_name", 3).await;
        assert_usable(&mut a, room).await;
    }
}

async fn a_message_to_a_room_not_joined_is_code_4(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let room = app.room(&ann, "lobby", None).await;
    let other = app.room(&ann, "other", None).await;
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await;
    a.join(room).await;
    b.join(other).await;
    // Bob is not a member of `room` and his socket has not joined it.
    for target in [room, room + 1000] {
        expect_refused_message(
            &mut b,
            json!({ "room_id": target, "message": "hi" }),
            "Join failed",
            4,
        )
        .await;
        assert_usable(&mut b, other).await;
    }
    // Owning and being a member is not enough: the socket must have joined.
    let mut a2 = app.socket(&ann).await;
    expect_refused_message(
        &mut a2,
        json!({ "room_id": room, "message": "hi" }),
        "Join failed",
        4,
    )
    .await;
    a.expect_none("new_message", QUIET).await;
    assert!(history(&app, &ann, room, 0).await.is_empty());
}

async fn messages_beyond_the_rate_limit_are_code_6(backend: Backend) {
    let app = TestApp::start_with(
        backend,
        Options {
            env: vec![
                ("MESSAGE_RATE_LIMIT", "1".into()),
                ("MESSAGE_RATE_BURST", "2".into()),
            ],
            ..Default::default()
        },
    )
    .await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let room = app.room(&ann, "lobby", None).await;
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await;
    a.join(room).await;
    b.join(room).await;
    send(&a, room, "one").await;
    send(&a, room, "two").await;
    expect_refused_message(
        &mut a,
        json!({ "room_id": room, "message": "three" }),
        "Rate limited",
        6,
    )
    .await;
    for _ in 0..2 {
        next_message(&mut b).await;
    }
    b.expect_none("new_message", Duration::from_millis(300))
        .await;
    // Another socket has its own allowance.
    send(&b, room, "bob").await;
    // One message per second refills the allowance.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let chat_id = send(&a, room, "four").await;
    let texts: Vec<Value> = history(&app, &ann, room, 4)
        .await
        .iter()
        .map(|m| m["message"].clone())
        .collect();
    assert_eq!(
        texts,
        vec![json!("one"), json!("two"), json!("bob"), json!("four")]
    );
    let mut last = Value::Null;
    for _ in 0..2 {
        last = next_message(&mut b).await;
    }
    assert_eq!(last["chat_id"], chat_id);
}

async fn payloads_that_are_not_objects_are_code_7(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let room = app.room(&ann, "lobby", None).await;
    let mut a = app.socket(&ann).await;
    a.join(room).await;
    let invalid = "Invalid payload";
    for event in ["join", "leave", "message", "watchdog"] {
        for payload in [json!("x"), json!(5), json!([room]), json!(null)] {
            if event == "message" {
                expect_refused_message(&mut a, payload, invalid, 7).await;
            } else {
                expect_refusal(&mut a, event, payload, invalid, 7).await;
            }
            assert_usable(&mut a, room).await;
        }
        // No argument at all.
        a.send_raw(format!("42[\"{event}\"]"));
        assert_eq!(a.expect("error").await, refusal(invalid, 7), "{event}");
        assert_usable(&mut a, room).await;
    }
}

async fn wrongly_typed_fields_are_code_7(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let room = app.room(&ann, "lobby", None).await;
    let mut a = app.socket(&ann).await;
    a.join(room).await;
    let invalid = "Invalid payload";
    for room_id in [
        json!(true),
        json!(1.5),
        json!("abc"),
        json!({ "id": room }),
        json!([room]),
    ] {
        for event in ["join", "leave"] {
            expect_refusal(&mut a, event, json!({ "room_id": room_id }), invalid, 7).await;
            assert_usable(&mut a, room).await;
        }
        expect_refused_message(
            &mut a,
            json!({ "room_id": room_id, "message": "x" }),
            invalid,
            7,
        )
        .await;
        assert_usable(&mut a, room).await;
    }
    for payload in [
        json!({ "room_id": room, "message": 5 }),
        json!({ "room_id": room, "message": ["x"] }),
        json!({ "room_id": room, "message": "x", "user_name": 3 }),
    ] {
        expect_refused_message(&mut a, payload, invalid, 7).await;
        assert_usable(&mut a, room).await;
    }
    for (event, payload) in [
        ("join", json!({ "room_id": room, "user_name": 3 })),
        ("leave", json!({ "room_id": room, "user_name": true })),
        ("watchdog", json!({ "user_name": 3 })),
        ("watchdog", json!({ "user_name": [ann.name] })),
    ] {
        expect_refusal(&mut a, event, payload, invalid, 7).await;
        assert_usable(&mut a, room).await;
    }
    // None of the refused messages was stored.
    let stored = history(&app, &ann, room, 22).await;
    assert!(
        stored.iter().all(|m| m["message"] == "still here"),
        "{stored:?}"
    );
}

async fn a_refused_join_or_leave_with_an_ack_gets_error_and_code(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let private = app.room(&ann, "secret", Some("k")).await;
    let b = app.socket(&bob).await;
    let ack = b.emit_with_ack("join", json!({ "room_id": private })).await;
    assert_eq!(ack, json!({ "error": "Join failed", "code": 4 }));
    let ack = b
        .emit_with_ack(
            "leave",
            json!({ "room_id": private, "user_name": ann.name }),
        )
        .await;
    assert_eq!(ack, json!({ "error": "Forbidden", "code": 5 }));
    let ack = b.emit_with_ack("watchdog", json!({})).await;
    assert_eq!(ack, json!({ "error": "Missing user_name", "code": 3 }));
}

// --- Server events caused by REST -----------------------------------------

async fn room_list_updated_reaches_every_socket_on_create_edit_and_delete(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let lobby = app.room(&ann, "lobby", None).await;
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await; // in no room
    a.join(lobby).await;
    // The lobby's own `room_list_updated` may still be on its way (a busy
    // machine): let it arrive before counting.
    for s in [&mut a, &mut b] {
        while s.try_expect("room_list_updated", QUIET).await.is_some() {}
    }

    let room = app.room(&bob, "new", None).await;
    for s in [&mut a, &mut b] {
        assert_eq!(s.expect("room_list_updated").await, Value::Null);
    }
    app.post(
        "/api/room/edit",
        Some(&bob.token),
        json!({ "room_id": room, "new_name": "renamed", "is_private": false }),
    )
    .await
    .expect_message("Room edited successfully");
    for s in [&mut a, &mut b] {
        s.expect("room_list_updated").await;
    }
    app.post(
        "/api/room/delete",
        Some(&bob.token),
        json!({ "room_id": room }),
    )
    .await
    .expect_message("Room deleted successfully");
    for s in [&mut a, &mut b] {
        s.expect("room_list_updated").await;
    }
    // A refused change announces nothing.
    let res = app
        .post(
            "/api/room/delete",
            Some(&bob.token),
            json!({ "room_id": lobby }),
        )
        .await;
    res.expect(404, "Room not found");
    for s in [&mut a, &mut b] {
        s.expect_none("room_list_updated", QUIET).await;
    }
}

async fn user_list_updated_reaches_the_room_on_join_leave_and_kick(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let cid = app.user("cid").await;
    let eve = app.user("eve").await;
    let room = app.room(&ann, "lobby", None).await;
    let private = app.room(&ann, "secret", Some("k")).await;
    let elsewhere = app.room(&eve, "elsewhere", None).await;
    let mut a = app.socket(&ann).await;
    let mut a_private = app.socket(&ann).await;
    let mut e = app.socket(&eve).await;
    a.join(room).await;
    a_private.join(private).await;
    e.join(elsewhere).await;

    app.join_public(&bob, room).await;
    assert_eq!(a.expect("user_list_updated").await, Value::Null);
    app.post(
        "/api/room/join_private",
        Some(&cid.token),
        json!({ "access_key": "k" }),
    )
    .await
    .expect_message("Joined room successfully");
    a_private.expect("user_list_updated").await;
    app.post(
        "/api/room/leave",
        Some(&bob.token),
        json!({ "room_id": room }),
    )
    .await
    .expect_message("Left room successfully");
    a.expect("user_list_updated").await;
    app.post(
        "/api/user_kick",
        Some(&ann.token),
        json!({ "room_id": private, "user_to_kick": cid.name }),
    )
    .await
    .expect_message("User kicked successfully");
    a_private.expect("user_list_updated").await;

    // Each room's sockets heard only about their own room.
    a.expect_none("user_list_updated", QUIET).await;
    a_private
        .expect_none("user_list_updated", Duration::from_millis(100))
        .await;
    e.expect_none("user_list_updated", Duration::from_millis(100))
        .await;
}

async fn a_kicked_user_is_told_and_gets_no_more_messages_from_the_room(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let cid = app.user("cid").await;
    let room = app.room(&ann, "lobby", None).await;
    app.join_public(&bob, room).await;
    app.join_public(&cid, room).await;
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await;
    let mut b2 = app.socket(&bob).await;
    let mut c = app.socket(&cid).await;
    for s in [&mut a, &mut b, &mut b2, &mut c] {
        s.join(room).await;
    }

    app.post(
        "/api/user_kick",
        Some(&ann.token),
        json!({ "room_id": room, "user_to_kick": bob.name }),
    )
    .await
    .expect_message("User kicked successfully");
    let kicked = json!({ "user_name": bob.name });
    for s in [&mut a, &mut c] {
        assert_eq!(s.expect("user_kicked").await, kicked);
    }
    for s in [&mut b, &mut b2] {
        assert_eq!(s.expect("user_kicked").await, kicked);
        // Every socket of bob is out of the room.
        expect_refused_message(
            s,
            json!({ "room_id": room, "message": "still here?" }),
            "Join failed",
            4,
        )
        .await;
    }

    let chat_id = send(&a, room, "bob is gone").await;
    assert_eq!(next_message(&mut c).await["chat_id"], chat_id);
    assert_eq!(next_message(&mut a).await["chat_id"], chat_id);
    b.expect_none("new_message", QUIET).await;
    b2.expect_none("new_message", Duration::from_millis(100))
        .await;
}

async fn deleting_a_room_removes_every_socket_from_it(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let room = app.room(&ann, "doomed", None).await;
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await;
    a.join(room).await;
    b.join(room).await;
    send(&b, room, "before").await;
    next_message(&mut a).await;
    next_message(&mut b).await;

    app.post(
        "/api/room/delete",
        Some(&ann.token),
        json!({ "room_id": room }),
    )
    .await
    .expect_message("Room deleted successfully");
    for s in [&mut a, &mut b] {
        s.expect("room_list_updated").await;
        until_join_failed(s, room).await;
    }
    // Joining it again fails: the room is gone.
    expect_refusal(&mut a, "join", json!({ "room_id": room }), "Join failed", 4).await;
}

async fn a_user_kicked_from_a_private_room_cannot_join_it_again(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let private = app.room(&ann, "secret", Some("k")).await;
    app.post(
        "/api/room/join_private",
        Some(&bob.token),
        json!({ "access_key": "k" }),
    )
    .await
    .expect_message("Joined room successfully");
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await;
    a.join(private).await;
    b.join(private).await;
    app.post(
        "/api/user_kick",
        Some(&ann.token),
        json!({ "room_id": private, "user_to_kick": bob.name }),
    )
    .await
    .expect_message("User kicked successfully");
    assert_eq!(
        b.expect("user_kicked").await,
        json!({ "user_name": bob.name })
    );
    expect_refusal(
        &mut b,
        "join",
        json!({ "room_id": private }),
        "Join failed",
        4,
    )
    .await;
    let chat_id = send(&a, private, "bob is out").await;
    assert_eq!(next_message(&mut a).await["chat_id"], chat_id);
    b.expect_none("new_message", QUIET).await;
}

// --- Private-room isolation -----------------------------------------------

async fn a_non_member_never_receives_a_private_rooms_messages(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let eve = app.user("eve").await;
    let private = app.room(&ann, "secret", Some("k")).await;
    let lobby = app.room(&eve, "lobby", None).await;
    app.post(
        "/api/room/join_private",
        Some(&bob.token),
        json!({ "access_key": "k" }),
    )
    .await
    .expect_message("Joined room successfully");
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await;
    let mut e = app.socket(&eve).await;
    a.join(private).await;
    b.join(private).await;

    for id in [json!(private), json!(private.to_string())] {
        expect_refusal(&mut e, "join", json!({ "room_id": id }), "Join failed", 4).await;
    }
    e.join(lobby).await;
    // Naming a member does not help: that is someone else's identity.
    expect_refused_message(
        &mut e,
        json!({ "room_id": private, "user_name": ann.name, "message": "let me in" }),
        "Forbidden",
        5,
    )
    .await;
    expect_refused_message(
        &mut e,
        json!({ "room_id": private, "message": "let me in" }),
        "Join failed",
        4,
    )
    .await;

    let chat_id = send(&a, private, "members only").await;
    assert_eq!(next_message(&mut b).await["chat_id"], chat_id);
    e.expect_none("new_message", QUIET).await;
    let stored = history(&app, &ann, private, 1).await;
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!(stored[0]["message"], "members only");
}

async fn sockets_in_another_room_do_not_get_its_messages_or_joins(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let one = app.room(&ann, "one", None).await;
    let two = app.room(&bob, "two", None).await;
    let mut a = app.socket(&ann).await;
    let mut b = app.socket(&bob).await;
    a.join(one).await;
    b.join(two).await;
    let in_one = send(&a, one, "in one").await;
    let in_two = send(&b, two, "in two").await;
    assert_eq!(next_message(&mut a).await["chat_id"], in_one);
    assert_eq!(next_message(&mut b).await["chat_id"], in_two);
    a.expect_none("new_message", QUIET).await;
    b.expect_none("new_message", Duration::from_millis(100))
        .await;
    let mut a2 = app.socket(&ann).await;
    a2.join(one).await;
    b.expect_none("user_joined", Duration::from_millis(300))
        .await;
}

/// A client may send `message` right after `join` without waiting: one
/// socket's events are handled in the order it sent them.
async fn events_of_one_socket_are_handled_in_the_order_sent(backend: Backend) {
    let options = Options::unlimited();
    let app = TestApp::start_with(backend, options).await;
    let ann = app.user("ann").await;
    let socket = app.socket(&ann).await;
    for round in 0..20 {
        let room = app.room(&ann, &format!("r{round}"), None).await;
        socket.emit("join", json!({ "room_id": room }));
        let ack = socket
            .emit_with_ack(
                "message",
                json!({ "room_id": room, "message": "right away" }),
            )
            .await;
        assert!(ack["chat_id"].is_i64(), "round {round}: {ack}");
        socket.emit("leave", json!({ "room_id": room }));
        let refused = socket
            .emit_with_ack(
                "message",
                json!({ "room_id": room, "message": "after leaving" }),
            )
            .await;
        assert_eq!(
            refused,
            json!({ "error": "Join failed", "code": 4 }),
            "round {round}"
        );
    }
}

/// Only private rooms need a membership: anyone may watch a public room.
async fn a_public_room_can_be_joined_without_a_membership(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let eve = app.user("eve").await;
    let room = app.room(&ann, "open", None).await;
    let mut watcher = app.socket(&eve).await;
    watcher.join(room).await;
    let mut a = app.socket(&ann).await;
    a.join(room).await;
    let chat_id = send(&a, room, "for everyone").await;
    assert_eq!(watcher.expect("new_message").await["chat_id"], chat_id);
    let members = app
        .get(&format!("/api/user_list?room_id={room}"), None)
        .await;
    assert_eq!(
        members.body,
        json!([{ "user_name": ann.name, "room_id": room }]),
        "eve is no member"
    );
}

crate::on_both_stores!(
    a_public_room_can_be_joined_without_a_membership,
    a_refusal_of_the_first_event_after_connecting_is_not_lost,
    events_of_one_socket_are_handled_in_the_order_sent,
    a_token_in_the_auth_payload_the_header_or_the_query_connects,
    sockets_without_a_valid_token_are_refused,
    refused_socket_connections_are_logged_and_counted_by_reason,
    a_resend_with_the_same_client_msg_id_is_stored_and_delivered_once,
    an_origin_allowlist_refuses_other_origins,
    an_event_sent_right_after_connecting_is_handled,
    join_announces_the_joiner_to_the_whole_room_including_the_joiner,
    private_rooms_can_be_joined_by_the_owner_and_members_only,
    joining_an_unknown_room_fails_with_code_4,
    leave_tells_the_others_and_stops_delivery_to_the_leaver,
    a_message_is_acknowledged_broadcast_and_stored_under_one_chat_id,
    a_numeric_string_room_id_is_accepted_and_answered_as_an_integer,
    chat_ids_increase_strictly_across_messages,
    every_socket_sees_concurrent_messages_in_the_same_chat_id_order,
    a_user_name_naming_someone_else_is_forbidden_for_every_event,
    payloads_without_user_name_or_in_another_letter_case_are_accepted,
    message_length_is_limited_to_1000_characters_not_bytes,
    a_missing_or_blank_message_is_code_2,
    a_missing_room_id_or_watchdog_user_name_is_code_3,
    a_message_to_a_room_not_joined_is_code_4,
    messages_beyond_the_rate_limit_are_code_6,
    payloads_that_are_not_objects_are_code_7,
    wrongly_typed_fields_are_code_7,
    a_refused_join_or_leave_with_an_ack_gets_error_and_code,
    room_list_updated_reaches_every_socket_on_create_edit_and_delete,
    user_list_updated_reaches_the_room_on_join_leave_and_kick,
    a_kicked_user_is_told_and_gets_no_more_messages_from_the_room,
    a_user_kicked_from_a_private_room_cannot_join_it_again,
    deleting_a_room_removes_every_socket_from_it,
    a_non_member_never_receives_a_private_rooms_messages,
    sockets_in_another_room_do_not_get_its_messages_or_joins,
);

// --- Two gateways (MariaDB) -----------------------------------------------

#[tokio::test]
async fn two_gateways_share_a_rooms_joins_leaves_and_messages() {
    let mut app = TestApp::start(Backend::MySql).await;
    let second = app.add_gateway().await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let room = app.room(&ann, "lobby", None).await;
    let mut a = app.socket_on(0, &ann).await;
    let mut b = app.socket_on(second, &bob).await;
    a.join(room).await;
    b.join(room).await;
    assert_eq!(
        a.expect("user_joined").await,
        json!({ "user_name": bob.name, "room_id": room })
    );

    let from_ann = send(&a, room, "from gateway 0").await;
    let from_bob = send(&b, room, "from gateway 1").await;
    assert!(from_ann < from_bob);
    for s in [&mut a, &mut b] {
        let first = next_message(s).await;
        let then = next_message(s).await;
        assert_eq!(
            (&first["chat_id"], &first["user_name"], &first["message"]),
            (&json!(from_ann), &json!(ann.name), &json!("from gateway 0"))
        );
        assert_eq!(
            (&then["chat_id"], &then["user_name"], &then["message"]),
            (&json!(from_bob), &json!(bob.name), &json!("from gateway 1"))
        );
    }
    b.emit("leave", json!({ "room_id": room }));
    assert_eq!(
        a.expect("user_left").await,
        json!({ "user_name": bob.name, "room_id": room })
    );
    let stored = history(&app, &ann, room, 2).await;
    assert_eq!(stored.len(), 2);
}

#[tokio::test]
async fn room_list_updates_and_kicks_reach_sockets_on_every_gateway() {
    let mut app = TestApp::start(Backend::MySql).await;
    let second = app.add_gateway().await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let cid = app.user("cid").await;
    let room = app.room(&ann, "lobby", None).await;
    app.join_public(&bob, room).await;
    let mut a = app.socket_on(0, &ann).await;
    let mut b = app.socket_on(second, &bob).await;
    let mut c = app.socket_on(second, &cid).await; // in no room
    a.join(room).await;
    b.join(room).await;

    app.room(&cid, "another", None).await;
    for s in [&mut a, &mut b, &mut c] {
        s.expect("room_list_updated").await;
    }

    app.post(
        "/api/user_kick",
        Some(&ann.token),
        json!({ "room_id": room, "user_to_kick": bob.name }),
    )
    .await
    .expect_message("User kicked successfully");
    for s in [&mut a, &mut b] {
        assert_eq!(
            s.expect("user_kicked").await,
            json!({ "user_name": bob.name })
        );
        s.expect("user_list_updated").await;
    }
    expect_refused_message(
        &mut b,
        json!({ "room_id": room, "message": "x" }),
        "Join failed",
        4,
    )
    .await;
    let chat_id = send(&a, room, "after the kick").await;
    assert_eq!(next_message(&mut a).await["chat_id"], chat_id);
    b.expect_none("new_message", QUIET).await;
}
