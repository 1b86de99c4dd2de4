//! A password change revokes the tokens issued before it (docs/protocol.md,
//! "Accounts and abuse"): on REST, on socket connect, and for the sockets
//! that authenticated with one, which their gateway closes.

use serde_json::json;

use crate::harness::{Backend, TestApp};
use crate::sio::{Auth, Socket, WAIT};

async fn a_password_change_revokes_older_tokens(backend: Backend) {
    let mut app = TestApp::start(backend).await;
    if backend == Backend::MySql {
        app.add_gateway().await;
    }
    let crate::harness::Chat(room, [ann, bob], [mut old_socket, mut bob_socket]) =
        app.chat("revoked", ["ann", "bob"]).await;
    // A second socket of Ann's on the other gateway (MariaDB backend).
    let mut other_socket = app.socket_on(app.gateways.len().max(1) - 1, &ann).await;
    other_socket.join(room).await;

    let res = app
        .post(
            "/api/user/change_password",
            Some(&ann.token),
            json!({ "old_password": ann.password, "new_password": "a new one" }),
        )
        .await;
    res.expect_message("Password changed successfully");
    let fresh = res.body["access_token"]
        .as_str()
        .expect("a fresh access_token")
        .to_owned();

    // REST: the old token is refused, the fresh one works.
    app.get("/api/user/get_info", Some(&ann.token))
        .await
        .expect(401, "Token has been revoked");
    assert_eq!(
        app.get("/api/user/get_info", Some(&fresh)).await.status,
        200
    );
    // Sockets that authenticated with it are told and closed, on every
    // gateway.
    for socket in [&mut old_socket, &mut other_socket] {
        assert_eq!(
            socket.expect("error").await,
            crate::sio::refusal("Session expired", 9)
        );
        socket.expect("disconnect").await;
    }
    // Connecting with it is refused; with the fresh one it works.
    let refused = Socket::connect(app.gateway_url(0), Auth::Payload(&ann.token)).await;
    assert_eq!(refused.err().as_deref(), Some("Unauthorized"));
    let mut socket = Socket::connect(app.gateway_url(0), Auth::Payload(&fresh))
        .await
        .expect("the fresh token connects");
    socket.join(room).await;
    // Nobody else is touched.
    bob_socket.send(room, "still here").await;
    assert_eq!(socket.next_message().await["message"], "still here");
    // (The old sockets were closed when the change reached the gateways.)
    bob_socket.assert_none_so_far("disconnect").await;
    let _ = bob;
    // The fresh token's sockets survive a login (no change of password).
    app.login(&ann.name, "a new one").await;
    socket.expect_none("disconnect", WAIT / 10).await;
}

crate::on_both_stores!(a_password_change_revokes_older_tokens);
