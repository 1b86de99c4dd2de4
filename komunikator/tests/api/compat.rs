//! Protocol compatibility: an unmodified python-socketio 5.x client (code
//! nobody here wrote) connects with the default transports (long-polling,
//! then the upgrade to WebSocket) and WebSocket only, and chats; every
//! event and acknowledgement it receives is checked against
//! `docs/asyncapi.yaml`.

use std::path::PathBuf;

use crate::harness::{Backend, Options, TestApp};

/// The presence timeout of the servers the client script runs against, so
/// that it sees `user_offline` soon.
pub const PRESENCE_TIMEOUT_MS: u64 = 1000;

/// Server options for the client script: the short presence timeout.
pub fn options() -> Options {
    Options::default().with("PRESENCE_TIMEOUT_MS", PRESENCE_TIMEOUT_MS.to_string())
}

/// The Python with python-socketio installed (`scripts/test.sh` makes it).
pub fn python() -> PathBuf {
    match std::env::var_os("KOM_TEST_PYTHON") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(std::env::var_os("HOME").expect("HOME"))
            .join(".cache/komunikator-venv/bin/python"),
    }
}

/// Runs `tests/compat/socketio_client.py` against `api` and `gateway` (the
/// same URL behind a load balancer), servers started with [`options`];
/// `logs` explains a failure.
pub async fn run_python_client(
    api: &str,
    gateway: &str,
    transport: &str,
    logs: impl Fn() -> String,
) {
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/compat/socketio_client.py"
    );
    let output = tokio::process::Command::new(python())
        .args([script, api, gateway, transport])
        .arg(PRESENCE_TIMEOUT_MS.to_string())
        .env("NO_PROXY", "*")
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {}: {e} (run scripts/test.sh)",
                python().display()
            )
        });
    assert!(
        output.status.success(),
        "python-socketio client ({transport}) failed:\n{}{}\nserver logs:\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr),
        logs()
    );
}

async fn run_client(app: &TestApp, transport: &str) {
    run_python_client(&app.base, app.gateway_url(0), transport, || app.logs()).await;
}

async fn python_socketio_chats_over_polling_then_websocket(backend: Backend) {
    run_client(&TestApp::start_with(backend, options()).await, "default").await;
}

async fn python_socketio_chats_over_websocket_only(backend: Backend) {
    run_client(&TestApp::start_with(backend, options()).await, "websocket").await;
}

crate::on_both_stores!(
    python_socketio_chats_over_polling_then_websocket,
    python_socketio_chats_over_websocket_only,
);
