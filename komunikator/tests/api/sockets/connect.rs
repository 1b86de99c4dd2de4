//! Connecting: a token in any of the three places a client may put it,
//! every way of being refused (logged and counted), the origin allowlist,
//! and the first event right after connecting.

use std::time::Duration;

use serde_json::{Value, json};

use super::refused;
use crate::harness::{Backend, Options, TestApp, claims_for, forged_token};
use crate::sio::{Auth, Socket, refusal};

async fn a_token_in_the_auth_payload_the_header_or_the_query_connects(backend: Backend) {
    let app = TestApp::start(backend).await;
    let ann = app.user("ann").await;
    let room = app.as_user(&ann).create_room("lobby", None).await;
    let url = app.gateway_url(0).to_owned();
    // In the query percent-encoded too, as a client's URL builder may
    // (every byte, here): it is the same token.
    let encoded: String = ann.token.bytes().map(|b| format!("%{b:02X}")).collect();
    for auth in [
        Auth::Payload(&ann.token),
        Auth::Header(&ann.token),
        Auth::Query(&ann.token),
        Auth::Query(&encoded),
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
    let other_secret = forged_token(&ann.name);
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

async fn an_origin_allowlist_refuses_other_origins(backend: Backend) {
    let options = Options::default().with("CORS_ALLOWED_ORIGINS", "https://a.example");
    let app = TestApp::start_with(backend, options).await;
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
    // Sixty sockets of one user, none closed: no cap on them here.
    let options = Options::default().with("MAX_SOCKETS_PER_USER", "0");
    let app = TestApp::start_with(backend, options).await;
    let ann = app.user("ann").await;
    let room = app.as_user(&ann).create_room("lobby", None).await;
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

crate::on_both_stores!(
    a_token_in_the_auth_payload_the_header_or_the_query_connects,
    sockets_without_a_valid_token_are_refused,
    refused_socket_connections_are_logged_and_counted_by_reason,
    an_origin_allowlist_refuses_other_origins,
    an_event_sent_right_after_connecting_is_handled,
    a_refusal_of_the_first_event_after_connecting_is_not_lost,
);
