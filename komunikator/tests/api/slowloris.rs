//! Slow and idle connections are closed (docs/protocol.md, "Accounts and
//! abuse"): a request's headers within `HEADER_READ_TIMEOUT_SECS`, its body
//! within `BODY_READ_TIMEOUT_SECS`, an idle keep-alive connection after the
//! header timeout; one address holds at most
//! `MAX_PENDING_CONNECTIONS_PER_ADDRESS` connections that have sent no
//! request yet. Meanwhile a normal client keeps getting answers in under a
//! second. The timeouts are shortened here; every deadline below is derived
//! from them.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::harness::{Backend, Options, TestApp};

const HEADER_SECS: u64 = 2;
const BODY_SECS: u64 = 3;

fn options(max_pending: usize) -> Options {
    Options::default()
        .with("HEADER_READ_TIMEOUT_SECS", HEADER_SECS.to_string())
        .with("BODY_READ_TIMEOUT_SECS", BODY_SECS.to_string())
        .with(
            "MAX_PENDING_CONNECTIONS_PER_ADDRESS",
            max_pending.to_string(),
        )
}

/// How long past its timeout a connection may take to be closed (timers,
/// a loaded machine): as long again as the timeout.
fn deadline(timeout_secs: u64) -> Duration {
    Duration::from_secs(2 * timeout_secs + 1)
}

fn host(app: &TestApp) -> String {
    app.base.trim_start_matches("http://").to_owned()
}

/// Writes `first`, then `next` every `every`, until the server closes the
/// connection; the time that took, or `None` if it did not within `within`.
async fn trickle(
    host: String,
    first: String,
    next: &'static str,
    every: Duration,
    within: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let mut stream = TcpStream::connect(&host).await.expect("connect");
    stream.write_all(first.as_bytes()).await.expect("write");
    let mut buf = [0u8; 4096];
    let mut tick = tokio::time::interval_at(started + every, every);
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => match read {
                Ok(0) | Err(_) => return Some(started.elapsed()),
                Ok(_) => {} // an answer (408/400) before the close
            },
            _ = tick.tick() => {
                if started.elapsed() > within {
                    return None;
                }
                if stream.write_all(next.as_bytes()).await.is_err() {
                    return Some(started.elapsed());
                }
            }
        }
    }
}

/// A normal client's requests for `period`: the slowest answer.
async fn normal_client(app: &TestApp, period: Duration) -> Duration {
    let until = Instant::now() + period;
    let mut slowest = Duration::ZERO;
    while Instant::now() < until {
        let asked = Instant::now();
        let res = app.get("/api/rooms", None).await;
        assert_eq!(res.status, 200);
        slowest = slowest.max(asked.elapsed());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    slowest
}

async fn slow_headers_bodies_and_idle_connections_are_closed(backend: Backend) {
    let app = TestApp::start_with(backend, options(256)).await;
    let host = host(&app);
    let header_deadline = deadline(HEADER_SECS);
    let body_deadline = deadline(BODY_SECS);
    let headers = (0..40).map(|_| {
        tokio::spawn(trickle(
            host.clone(),
            "GET /api/rooms HTTP/1.1\r\nHost: x\r\n".into(),
            "X-Slow: 1\r\n",
            Duration::from_millis(500),
            header_deadline,
        ))
    });
    let bodies = (0..10).map(|_| {
        tokio::spawn(trickle(
            host.clone(),
            "POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
             Content-Length: 1000\r\n\r\n{"
                .into(),
            " ",
            Duration::from_millis(500),
            body_deadline,
        ))
    });
    let idle = tokio::spawn(trickle(
        host.clone(),
        "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n".into(),
        "",
        Duration::from_millis(500),
        header_deadline,
    ));
    // A body that stops short is answered 408 at its deadline.
    let answered = tokio::spawn({
        let host = host.clone();
        async move {
            let mut stream = TcpStream::connect(&host).await.expect("connect");
            stream
                .write_all(
                    b"POST /api/login HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
                      Content-Length: 1000\r\n\r\n{",
                )
                .await
                .expect("write");
            let mut answer = Vec::new();
            let read = tokio::time::timeout(body_deadline, stream.read_to_end(&mut answer)).await;
            assert!(
                read.is_ok(),
                "no answer to a slow body within {body_deadline:?}"
            );
            String::from_utf8_lossy(&answer).into_owned()
        }
    });
    let (headers, bodies): (Vec<_>, Vec<_>) =
        (headers.collect::<Vec<_>>(), bodies.collect::<Vec<_>>());
    let slowest = normal_client(&app, body_deadline).await;
    assert!(
        slowest < Duration::from_secs(1),
        "a normal request took {slowest:?}"
    );
    for (what, tasks, timeout) in [
        ("slow headers", headers, HEADER_SECS),
        ("slow body", bodies, BODY_SECS),
    ] {
        for task in tasks {
            let closed = task.await.expect("trickle");
            let closed =
                closed.unwrap_or_else(|| panic!("{what}: not closed in {:?}", deadline(timeout)));
            assert!(
                closed >= Duration::from_secs(timeout) - Duration::from_millis(500),
                "{what}: closed early, after {closed:?}"
            );
        }
    }
    let answer = answered.await.expect("slow body");
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "a slow body's answer: {answer}"
    );
    assert!(
        answer.contains(r#"{"error":"Request body not received in time"}"#),
        "{answer}"
    );
    let idle = idle
        .await
        .expect("idle")
        .expect("idle keep-alive connection not closed");
    assert!(idle >= Duration::from_secs(HEADER_SECS) - Duration::from_millis(500));
}

async fn pending_connections_per_address_are_capped(backend: Backend) {
    const CAP: usize = 20;
    let app = TestApp::start_with(backend, options(CAP)).await;
    let host = host(&app);
    let mut held = Vec::new();
    for _ in 0..CAP {
        let mut stream = TcpStream::connect(&host).await.expect("connect");
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\n")
            .await
            .expect("write");
        held.push(stream);
    }
    let mut one_more = TcpStream::connect(&host).await.expect("connect");
    let mut buf = [0u8; 64];
    let refused = tokio::time::timeout(Duration::from_secs(1), one_more.read(&mut buf)).await;
    assert!(
        matches!(refused, Ok(Ok(0)) | Ok(Err(_))),
        "connection past the cap not closed at once: {refused:?}"
    );
    // Once the held ones are cut off (header timeout), the address gets
    // connections again.
    let until = Instant::now() + deadline(HEADER_SECS);
    loop {
        let res = reqwest::Client::builder()
            .no_proxy()
            .build()
            .expect("client")
            .get(format!("{}/healthz", app.base))
            .send()
            .await;
        if res.is_ok_and(|r| r.status() == 200) {
            break;
        }
        assert!(Instant::now() < until, "the address stayed refused");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Counted, for the operator.
    let refused =
        crate::harness::metric(&app.base, "komunikator_http_connections_refused_total").await;
    assert!(
        refused.is_some_and(|n| n >= 1.0),
        "refused connections counted: {refused:?}"
    );
}

crate::on_both_stores!(
    slow_headers_bodies_and_idle_connections_are_closed,
    pending_connections_per_address_are_capped,
);
