//! A socket lives as long as the session that opened it (docs/protocol.md,
//! "Accounts and abuse"): logging out closes the sockets of that session
//! on every gateway, and a socket whose access token expires is told (an
//! `error` with code 9) and closed, unless its client sent a fresher token
//! with `refresh`.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::harness::{Backend, Options, Resp, TestApp};
use crate::sio::{Auth, Socket, refusal};

fn expired() -> Value {
    refusal("Session expired", 9)
}

/// The `(access_token, refresh_token)` of a login.
fn tokens(res: &Resp) -> (String, Value) {
    assert_eq!(res.status, 200, "{res:?}");
    let access = res.body["access_token"].as_str().expect("access_token");
    (access.to_owned(), res.body["refresh_token"].clone())
}

async fn connect(app: &TestApp, gateway: usize, token: &str) -> Socket {
    Socket::connect(app.gateway_url(gateway), Auth::Payload(token))
        .await
        .expect("connects")
}

/// Asserts the server tells `sock` its session is over, then closes it.
async fn expect_closed_for_its_session(sock: &mut Socket) {
    assert_eq!(sock.expect("error").await, expired());
    sock.expect("disconnect").await;
}

async fn logging_out_closes_the_sockets_of_that_session_on_every_gateway(backend: Backend) {
    let mut app = TestApp::start(backend).await;
    let far = match backend {
        Backend::MySql => app.add_gateway().await,
        Backend::Embedded => 0,
    };
    let ann = app.user("ann").await;
    let room = app.as_user(&ann).create_room("lobby", None).await;
    let (leaving, leaving_refresh) = tokens(&app.login(&ann.name, &ann.password).await);
    let (staying, _) = tokens(&app.login(&ann.name, &ann.password).await);
    let mut near = connect(&app, 0, &leaving).await;
    let mut far_sock = connect(&app, far, &leaving).await;
    let mut other = connect(&app, 0, &staying).await;
    other.join(room).await;

    app.post(
        "/api/logout",
        None,
        json!({ "refresh_token": leaving_refresh }),
    )
    .await
    .expect_message("Logged out successfully");
    for sock in [&mut near, &mut far_sock] {
        expect_closed_for_its_session(sock).await;
    }
    // Its access token is done with too, on REST and for new sockets.
    app.get("/api/user/get_info", Some(&leaving))
        .await
        .expect(401, "Token has been revoked");
    let refused = Socket::connect(app.gateway_url(0), Auth::Payload(&leaving)).await;
    assert_eq!(refused.err().as_deref(), Some("Unauthorized"));
    // Ann's other session goes on.
    other.assert_usable(room).await;
    other.expect_none("disconnect", Duration::ZERO).await;
    assert_eq!(
        app.get("/api/user/get_info", Some(&staying)).await.status,
        200
    );
}

/// Access tokens of 6 s: long enough that the test steps between the
/// expiries stay well apart on a loaded machine, short enough to wait for.
const TTL: Duration = Duration::from_secs(6);

async fn a_socket_is_closed_when_its_token_expires_unless_renewed(backend: Backend) {
    let options = Options::default().with("JWT_ACCESS_TOKEN_EXPIRES", TTL.as_secs().to_string());
    let app = TestApp::start_with(backend, options).await;
    let ann = app.user("ann").await;
    let room = app.as_user(&ann).create_room("lobby", None).await;
    let (first, _) = tokens(&app.login(&ann.name, &ann.password).await);
    let (second, second_refresh) = tokens(&app.login(&ann.name, &ann.password).await);
    let issued = Instant::now();
    let mut plain = connect(&app, 0, &first).await;
    let mut renewed = connect(&app, 0, &second).await;
    renewed.join(room).await;

    // Halfway through its token's life, the second socket gets a fresher
    // token, as a client renewing its session sends it.
    tokio::time::sleep(TTL / 2).await;
    let (fresher, _) = tokens(
        &app.post(
            "/api/refresh",
            None,
            json!({ "refresh_token": second_refresh }),
        )
        .await,
    );
    let renewed_at = Instant::now();
    assert_eq!(
        renewed
            .emit_with_ack("refresh", json!({ "token": fresher }))
            .await,
        json!({ "ok": true })
    );

    // The first is told and closed once its token expires (not before).
    expect_closed_for_its_session(&mut plain).await;
    let lasted = issued.elapsed();
    eprintln!("a socket whose token lives {TTL:?} was closed after {lasted:?}");
    assert!(lasted >= TTL - Duration::from_secs(1), "{lasted:?}");
    // The renewed one lives on past that expiry...
    renewed.expect_none("disconnect", Duration::ZERO).await;
    renewed.assert_usable(room).await;
    // ...until its fresher token expires in turn.
    expect_closed_for_its_session(&mut renewed).await;
    let lasted = renewed_at.elapsed();
    eprintln!("renewed, it was closed {lasted:?} after its refresh");
    assert!(lasted >= TTL - Duration::from_secs(1), "{lasted:?}");
}

async fn a_refresh_with_a_token_that_is_not_good_is_refused(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [ann, bob] = app.users(["ann", "bob"]).await;
    let room = app.as_user(&ann).create_room("lobby", None).await;
    let (ended, ended_refresh) = tokens(&app.login(&ann.name, &ann.password).await);
    app.post(
        "/api/logout",
        None,
        json!({ "refresh_token": ended_refresh }),
    )
    .await
    .expect_message("Logged out successfully");
    let mut sock = app.socket(&ann).await;
    sock.join(room).await;
    for (token, refused) in [
        (json!("garbage"), expired()),
        (json!(ended), expired()),
        (json!(bob.token), refusal("Forbidden", 5)),
        (json!(42), refusal("Invalid payload", 7)),
    ] {
        let ack = sock
            .emit_with_ack("refresh", json!({ "token": token }))
            .await;
        let expected = json!({ "error": refused["message"], "code": refused["code"] });
        assert_eq!(ack, expected, "refresh with {token}");
        assert_eq!(sock.expect("error").await, refused, "refresh with {token}");
    }
    // The socket keeps the token it had.
    sock.assert_usable(room).await;
    sock.expect_none("disconnect", Duration::ZERO).await;
}

crate::on_both_stores!(
    logging_out_closes_the_sockets_of_that_session_on_every_gateway,
    a_socket_is_closed_when_its_token_expires_unless_renewed,
    a_refresh_with_a_token_that_is_not_good_is_refused,
);
