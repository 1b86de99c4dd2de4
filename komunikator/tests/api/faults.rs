//! Dependencies killed under load, on servers the test owns (other tests on
//! the shared ones never see the fault): what clients are told, and that no
//! acknowledged message is lost, duplicated or reordered.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};

use crate::harness::{Backend, Options, TestApp, random_hex};

/// A nats-server with JetStream of the test's own, on a free port, whose
/// store survives a kill (like a real server's volume).
struct TestNats {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl TestNats {
    async fn start() -> TestNats {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("free port")
            .port();
        let dir = std::env::temp_dir().join(format!("kom-nats-{}", random_hex(6)));
        let mut nats = TestNats {
            port,
            dir,
            child: None,
        };
        nats.launch().await;
        nats
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server and waits until it listens.
    async fn launch(&mut self) {
        let child = Command::new("nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "nats-server did not listen");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for TestNats {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// How long after NATS listens again every service must be ready: its
/// reconnect delay is at most 300 ms (`common::bus::nats`), with room for a
/// busy machine.
const RECONNECTED_WITHIN: Duration = Duration::from_secs(1);

/// Polls `/readyz` of `base` until it answers 200; the time it took.
async fn time_to_ready(base: String) -> Duration {
    let http = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(1))
        .build()
        .expect("client");
    let started = Instant::now();
    loop {
        if let Ok(res) = http.get(format!("{base}/readyz")).send().await
            && res.status() == 200
        {
            return started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{base} never ready again"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// NATS killed for 5 s while a client sends 20 messages a second, each with
/// a `client_msg_id`: every message is acknowledged (late, none refused with
/// code 8), stored once, delivered once and in order, and every service is
/// ready again within a second of NATS listening.
#[tokio::test]
async fn a_broker_restart_of_a_few_seconds_gives_late_acks_not_refusals() {
    let mut nats = TestNats::start().await;
    let app = TestApp::start_with(
        Backend::MySql,
        Options {
            env: vec![("NATS_URL", nats.url()), ("MESSAGE_RATE_LIMIT", "0".into())],
            ..Options::default()
        },
    )
    .await;
    let ann = app.user("ann").await;
    let bob = app.user("bob").await;
    let room = app.room(&ann, "Outage", None).await;
    let mut sender = app.socket(&ann).await;
    let mut reader = app.socket(&bob).await;
    sender.join(room).await;
    reader.join(room).await;

    let count = 200;
    let interval = Duration::from_millis(50);
    let start = tokio::time::Instant::now();
    let sending = futures_util::stream::iter(0..count)
        .map(|i| {
            let sender = &sender;
            async move {
                tokio::time::sleep_until(start + interval * i).await;
                let id = format!("outage-{i}");
                let payload = json!({ "room_id": room, "message": id, "client_msg_id": id });
                sender.emit_with_ack("message", payload).await
            }
        })
        .buffer_unordered(count as usize)
        .collect::<Vec<Value>>();
    let services: Vec<String> = std::iter::once(&app.main)
        .chain(&app.gateways)
        .chain(&app.persister)
        .chain(&app.presence)
        .map(|s| s.url.clone())
        .collect();
    let outage = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        nats.kill9();
        tokio::time::sleep(Duration::from_secs(5)).await;
        nats.launch().await;
        futures_util::future::join_all(services.into_iter().map(time_to_ready)).await
    };
    let (acks, ready_after) = tokio::join!(sending, outage);

    let refused: Vec<&Value> = acks.iter().filter(|a| !a["chat_id"].is_i64()).collect();
    assert!(
        refused.is_empty(),
        "refused during a 5 s broker restart: {refused:?}"
    );
    let acked: BTreeSet<i64> = acks.iter().filter_map(|a| a["chat_id"].as_i64()).collect();
    assert_eq!(acked.len(), count as usize, "every message its own chat_id");
    for (service, after) in ["api", "gateway", "persister", "presence"]
        .iter()
        .zip(&ready_after)
    {
        assert!(
            *after <= RECONNECTED_WITHIN,
            "{service} ready {after:?} after NATS listened again"
        );
    }

    let mut delivered = Vec::new();
    while delivered.len() < acked.len() {
        match reader
            .try_expect("new_message", Duration::from_secs(20))
            .await
        {
            Some(m) => delivered.push(m["chat_id"].as_i64().expect("chat_id")),
            None => panic!(
                "{} of {} delivered: {delivered:?}\n{}",
                delivered.len(),
                acked.len(),
                app.logs()
            ),
        }
    }
    assert!(
        delivered.windows(2).all(|w| w[0] < w[1]),
        "in order: {delivered:?}"
    );
    assert_eq!(delivered.iter().copied().collect::<BTreeSet<_>>(), acked);
    reader
        .expect_none("new_message", Duration::from_millis(300))
        .await;

    let deadline = Instant::now() + Duration::from_secs(60);
    let stored = loop {
        let history = app
            .get(&format!("/api/chat_history?room_id={room}"), None)
            .await;
        let rows: i64 = app
            .scalar(format!(
                "SELECT COUNT(*) FROM chat_history WHERE room_id = {room}"
            ))
            .await;
        if rows >= count as i64 || Instant::now() > deadline {
            break history;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let ids: Vec<i64> = stored
        .body
        .as_array()
        .expect("history")
        .iter()
        .map(|m| m["chat_id"].as_i64().expect("id"))
        .collect();
    assert_eq!(ids, delivered, "stored once each, in the same order");
    let rows: i64 = app
        .scalar(format!(
            "SELECT COUNT(*) FROM chat_history WHERE room_id = {room}"
        ))
        .await;
    assert_eq!(rows, count as i64);
}
