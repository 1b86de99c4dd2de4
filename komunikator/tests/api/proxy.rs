//! The deployment as operators run it: two api replicas and two gateways
//! behind nginx configured by `deploy/nginx.conf`, driven by clients nobody
//! here wrote where it matters (python-socketio over polling and WebSocket).

use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

use crate::compat::python;
use crate::faults::{assert_database_unavailable, wait_until_rest_is_back};
use crate::harness::{Options, claims_for};
use crate::input::socket_io_cors;
use crate::nginx::Proxied;
use crate::sio::{Auth, Socket};

const ORIGIN: &str = "http://chat.example.test";

/// The CORS answer to a browser on another origin: the Engine.IO
/// long-polling handshake and its preflight, and an API preflight.
async fn assert_cors(base: &str) {
    let any = Some("*".to_owned());
    assert_eq!(
        socket_io_cors(base, ORIGIN).await,
        (any.clone(), any.clone())
    );
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let api_preflight = http
        .request(reqwest::Method::OPTIONS, format!("{base}/api/room/create"))
        .header("Origin", ORIGIN)
        .header("Access-Control-Request-Method", "POST")
        .header(
            "Access-Control-Request-Headers",
            "authorization,content-type",
        )
        .send()
        .await
        .expect("api preflight");
    assert!(api_preflight.status().is_success());
    assert_eq!(api_preflight.headers()["access-control-allow-origin"], "*");
}

async fn run_python_client(proxied: &Proxied, transport: &str) {
    let url = &proxied.nginx.url;
    crate::compat::run_python_client(url, url, transport, || proxied.logs()).await;
}

#[tokio::test]
async fn rest_sockets_and_cors_work_through_nginx() {
    let proxied = Proxied::start(crate::compat::options()).await;
    let app = &proxied.app;
    assert_cors(&proxied.nginx.url).await;

    let ann = app.user("ann").await;
    let room = app.as_user(&ann).create_room("Proxied", None).await;
    let listed = app.get("/api/rooms", None).await;
    assert!(
        listed
            .body
            .as_array()
            .expect("rooms")
            .iter()
            .any(|r| r["room_id"] == room)
    );

    let mut socket = Socket::connect(&proxied.nginx.url, Auth::Payload(&ann.token))
        .await
        .expect("socket through nginx");
    socket.join(room).await;
    let ack = socket
        .emit_with_ack(
            "message",
            json!({ "room_id": room, "message": "via nginx" }),
        )
        .await;
    let live = socket.expect("new_message").await;
    assert_eq!(live["chat_id"], ack["chat_id"], "{ack}");

    run_python_client(&proxied, "default").await;
    run_python_client(&proxied, "websocket").await;
}

/// A JSON body of exactly `len` bytes.
fn body_of_len(len: usize) -> String {
    let frame = r#"{"user_name":"x","pad":""}"#;
    let pad = "a".repeat(len - frame.len());
    let body = format!(r#"{{"user_name":"x","pad":"{pad}"}}"#);
    assert_eq!(body.len(), len);
    body
}

async fn post_raw(base: &str, body: reqwest::Body) -> (u16, Value) {
    let http = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let res = http
        .post(format!("{base}/api/login"))
        .header("Content-Type", "application/json")
        .body(body)
        .send()
        .await
        .expect("an answer, not a reset");
    let status = res.status().as_u16();
    let text = res.text().await.expect("body");
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {status} {text}"));
    (status, json)
}

/// POSTs `chunks` chunks of 64 KiB without a declared length (chunked
/// transfer encoding), every byte written; returns the answer.
async fn post_chunked(base: &str, chunks: usize) -> (u16, Value) {
    let addr = base.trim_start_matches("http://");
    let mut tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let head = format!(
        "POST /api/login HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    let chunk = vec![b' '; 65_536];
    for _ in 0..chunks {
        tcp.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .expect("chunk size");
        tcp.write_all(&chunk)
            .await
            .expect("chunk: the server must read it, not reset");
        tcp.write_all(b"\r\n").await.expect("chunk end");
    }
    tcp.write_all(b"0\r\n\r\n").await.expect("last chunk");
    let mut answer = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut tcp, &mut answer)
        .await
        .expect("answer, not a reset");
    let answer = String::from_utf8_lossy(&answer);
    let status = answer
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status");
    let body = answer.split("\r\n\r\n").nth(1).unwrap_or("");
    (
        status,
        serde_json::from_str(body).unwrap_or_else(|_| panic!("not JSON: {answer}")),
    )
}

#[tokio::test]
async fn bodies_over_the_limit_are_413_json_through_nginx_and_direct() {
    let proxied = Proxied::start(Options::default()).await;
    let limit = api::BODY_LIMIT;
    for base in [&proxied.nginx.url, &proxied.app.main.url] {
        // At the limit: read and judged on its content (no password).
        let (status, body) = post_raw(base, body_of_len(limit).into()).await;
        assert_eq!(status, 400, "{base} at the limit: {body}");
        for len in [limit + 1, 1_000_000] {
            for _ in 0..5 {
                let (status, body) = post_raw(base, body_of_len(len).into()).await;
                assert_eq!(
                    status,
                    413,
                    "{base}, {len} bytes: {body}\n{}",
                    proxied.logs()
                );
                assert!(
                    body["error"]
                        .as_str()
                        .is_some_and(|e| e.contains("too large")),
                    "{body}"
                );
            }
        }
        let (status, body) = post_chunked(base, 16).await;
        assert_eq!(status, 413, "{base}, chunked: {body}");
    }
}

#[tokio::test]
async fn acknowledged_messages_are_in_every_later_read_on_every_api_replica() {
    let proxied = Proxied::start(Options::unlimited()).await;
    let app = &proxied.app;
    let ann = app.user("ann").await;
    let room = app.as_user(&ann).create_room("Reads", None).await;
    let mut socket = Socket::connect(&proxied.nginx.url, Auth::Payload(&ann.token))
        .await
        .expect("socket");
    socket.join(room).await;
    let rounds = 500;
    let mut misses = Vec::new();
    for round in 1..=rounds {
        let ack = socket
            .emit_with_ack(
                "message",
                json!({ "room_id": room, "message": format!("m{round}") }),
            )
            .await;
        let chat_id = ack["chat_id"]
            .as_i64()
            .unwrap_or_else(|| panic!("ack {ack}"));
        let history = app
            .get(&format!("/api/chat_history?room_id={room}&limit=3"), None)
            .await;
        let newest = history.body.as_array().and_then(|h| h.last()).cloned();
        if newest.as_ref().map(|m| &m["chat_id"]) != Some(&json!(chat_id)) {
            misses.push((round, chat_id, newest));
        }
        if round % 50 == 0 {
            let info = app.get("/api/user/get_info", Some(&ann.token)).await;
            assert_eq!(
                info.body["message_count"], round,
                "get_info after {round}: {info:?}"
            );
        }
    }
    eprintln!("{rounds} send-then-read rounds, {} misses", misses.len());
    assert!(
        misses.is_empty(),
        "{} of {rounds} reads missed the acknowledged message: {:?}",
        misses.len(),
        &misses[..misses.len().min(5)]
    );
    // Both api replicas answered reads (nginx balances them).
    for api in std::iter::once(&app.main).chain(&app.apis) {
        let metrics = crate::harness::metrics(&api.url).await;
        assert!(
            metrics.contains(r#"route="/api/chat_history""#),
            "the replica at {} served no read",
            api.url
        );
    }
}

/// The database killed behind nginx: clients of the proxy are told what
/// the contract says, as directly (503 JSON with Retry-After within 2 s,
/// never a 500 or an HTML page; a socket refused with "Service
/// unavailable", the connect error the web client retries), and both work
/// again within a second of the database accepting connections.
#[tokio::test]
async fn a_database_outage_is_told_the_same_through_nginx() {
    let mut db = crate::servers::mariadb().await;
    let proxied = Proxied::start(Options::default().with("DATABASE_URL", db.url.clone())).await;
    let ann = proxied.app.user("ann").await;

    db.kill9();
    assert_database_unavailable(&proxied.app, &proxied.nginx.url, &ann).await;
    db.launch().await;
    wait_until_rest_is_back(&proxied.app, &ann).await;
    Socket::connect(&proxied.nginx.url, Auth::Payload(&ann.token))
        .await
        .unwrap_or_else(|e| panic!("no socket through nginx: {e}\n{}", proxied.logs()));
}

/// `n` users, written directly (argon2 hashes for 100 would take long),
/// as a users file of `name token room` lines for the python clients, the
/// room of user `i` being `room_of(i)`.
async fn client_users(proxied: &Proxied, n: usize, room_of: impl Fn(usize) -> i64) -> PythonUsers {
    let mut lines = String::new();
    let mut values = Vec::new();
    for i in 0..n {
        let name = format!("client{i}_{}", crate::harness::random_hex(3));
        values.push(format!("('{name}', 'x')"));
        let token = proxied.app.sign(&claims_for(&name, 600));
        lines.push_str(&format!("{name} {token} {}\n", room_of(i)));
    }
    proxied
        .app
        .sql(format!(
            "INSERT INTO users (user_name, password) VALUES {}",
            values.join(", ")
        ))
        .await;
    let path = std::env::temp_dir().join(format!("kom-users-{}", crate::harness::random_hex(4)));
    std::fs::write(&path, lines).expect("users file");
    PythonUsers(path)
}

/// The users file of python clients; removed on drop.
struct PythonUsers(std::path::PathBuf);

impl Drop for PythonUsers {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// A python script of `tests/compat` driving many clients: commands go to
/// its stdin, it answers one JSON object per line.
struct PythonClients {
    child: tokio::process::Child,
    stdin: Option<tokio::process::ChildStdin>,
    out: tokio::io::Lines<BufReader<tokio::process::ChildStdout>>,
}

impl PythonClients {
    fn start(script: &str, args: &[&str]) -> Self {
        let script = format!("{}/tests/compat/{script}", env!("CARGO_MANIFEST_DIR"));
        let mut child = tokio::process::Command::new(python())
            .arg(script)
            .args(args)
            .env("NO_PROXY", "*")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("python");
        let stdin = child.stdin.take();
        let out = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Self { child, stdin, out }
    }

    async fn say(&mut self, command: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin
            .write_all(format!("{command}\n").as_bytes())
            .await
            .expect("stdin");
    }

    /// The next line the clients print, within 90 s; it fails the test when
    /// they received something `docs/asyncapi.yaml` does not describe.
    async fn next(&mut self, what: &str) -> Value {
        let line = tokio::time::timeout(Duration::from_secs(90), self.out.next_line())
            .await
            .unwrap_or_else(|_| panic!("no {what} from the clients"))
            .expect("read")
            .unwrap_or_else(|| panic!("the clients exited before {what}"));
        let line: Value = serde_json::from_str(&line).expect("JSON line");
        assert!(
            line.get("undocumented").is_none(),
            "the clients received what docs/asyncapi.yaml does not describe: {line}"
        );
        line
    }

    /// Closes their stdin and lets them exit.
    async fn finish(mut self) {
        drop(self.stdin.take());
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }
}

/// 100 python-socketio clients behind nginx; each gateway in turn is killed
/// and restarted: every client that lost its gateway is connected to the
/// other and has rejoined its room within 5 s.
#[tokio::test]
async fn every_client_rejoins_within_5s_when_a_gateway_is_killed() {
    let mut proxied = Proxied::start(Options::default()).await;
    let owner = proxied.app.user("owner").await;
    let room = proxied
        .app
        .as_user(&owner)
        .create_room("Restarts", None)
        .await;
    let users = client_users(&proxied, 100, |_| room).await;
    let users_file = users.0.to_string_lossy().into_owned();
    let mut clients = PythonClients::start(
        "reconnect.py",
        &[&proxied.nginx.url, &room.to_string(), &users_file],
    );
    let ready = clients.next("ready").await;
    assert_eq!(ready["ready"], 100, "{ready}");

    for i in [0, 1] {
        // How many clients must notice: the sockets the gateway holds.
        let url = proxied.app.gateway_url(i).to_owned();
        let held = crate::harness::metric(&url, "komunikator_gateway_sockets")
            .await
            .unwrap_or(0.0) as u64;
        assert!(held > 0, "gateway {i} had no clients");
        proxied.app.gateways[i].kill9().await;
        clients.say(&format!("round {held}")).await;
        let round = clients.next("round").await;
        eprintln!("gateway {i} killed (it held {held} sockets): {round}");
        let logs = proxied.logs();
        assert!(
            round["lost"].as_u64() >= Some(held),
            "fewer clients lost than gateway {i} held ({held}): {round}"
        );
        assert_eq!(
            round["lost"], round["rejoined"],
            "stranded after killing gateway {i}: {round}\n{logs}"
        );
        let max_ms = round["max_ms"].as_u64().expect("max_ms");
        assert!(
            max_ms < 5_000,
            "slowest rejoin {max_ms} ms after killing gateway {i}: {round}"
        );
        proxied.app.gateways[i].restart().await;
    }
    clients.finish().await;
}

/// A rolling restart under load: 100 python-socketio clients in 10 rooms
/// behind nginx send 300 messages/s in all while each gateway in turn is
/// stopped with SIGTERM (drained: in-flight messages acknowledged, sockets
/// closed) and started again. The clients rejoin with `last_chat_id`:
/// afterwards every client has every message of its room (acknowledged
/// to anyone, or seen by anyone) exactly once, in `chat_id` order.
#[tokio::test]
async fn a_rolling_restart_under_load_loses_no_message_for_anyone() {
    let mut proxied = Proxied::start(Options::default()).await;
    let owner = proxied.app.user("owner").await;
    let mut rooms = Vec::new();
    for i in 0..10 {
        let room = proxied.app.as_user(&owner);
        rooms.push(room.create_room(&format!("Rolling {i}"), None).await);
    }
    let users = client_users(&proxied, 100, |i| rooms[i % rooms.len()]).await;
    let users_file = users.0.to_string_lossy().into_owned();
    let mut clients = PythonClients::start("rolling.py", &[&proxied.nginx.url, &users_file, "300"]);
    let ready = clients.next("ready").await;
    assert_eq!(ready["ready"], 100, "{ready}");

    for i in [0, 1] {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let started = tokio::time::Instant::now();
        let code = proxied.app.gateways[i].terminate().await;
        let took = started.elapsed();
        assert_eq!(code, Some(0), "gateway {i}:\n{}", proxied.logs());
        assert!(
            took < Duration::from_secs(15),
            "gateway {i} took {took:?} to drain"
        );
        println!("gateway {i} drained and exited {took:?} after SIGTERM");
        proxied.app.gateways[i].restart().await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    clients.say("stop").await;
    let summary = clients.next("summary").await;
    println!("rolling restart: {summary}");
    // Load ran throughout (unloaded the clients get about 2,400 messages
    // acknowledged; a machine under `stress-ng --cpu 2` starves their one
    // Python process down to about 450): what is checked is that none of
    // them is lost, duplicated or reordered, not how many there were.
    assert!(summary["acked"].as_u64() >= Some(100), "{summary}");
    assert!(summary["reconnects"].as_u64() > Some(0), "{summary}");
    for what in ["missing", "duplicates", "out_of_order"] {
        assert_eq!(summary[what], 0, "{what}: {summary}\n{}", proxied.logs());
    }
    clients.finish().await;
}

/// The throttle's 429, as nginx passes it on: `Retry-After` and the JSON.
async fn assert_throttled(res: reqwest::Response) {
    assert_eq!(res.status(), 429);
    assert!(res.headers().contains_key("retry-after"), "{res:?}");
    let body: Value = res.json().await.expect("JSON");
    assert_eq!(
        body,
        json!({ "error": "Too many attempts, try again later" })
    );
}

/// Failed logins through nginx: its 429 and `Retry-After` reach the client,
/// and the address counted is the one nginx names in `X-Forwarded-For`
/// (the api trusts nginx), not nginx's own, or one client's failures would
/// lock every client out.
#[tokio::test]
async fn failed_logins_are_throttled_per_client_through_nginx() {
    let proxied = Proxied::start(Options::default().with("TRUSTED_PROXIES", "127.0.0.1")).await;
    let app = &proxied.app;
    let [ann, bob] = app.users(["ann", "bob"]).await;
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let login = |user: &str, password: &str, from: &str| {
        client
            .post(format!("{}/api/login", proxied.nginx.url))
            .header("x-forwarded-for", from)
            .json(&json!({ "user_name": user, "password": password }))
            .send()
    };
    for _ in 0..10 {
        let res = login(&ann.name, "wrong", "203.0.113.9")
            .await
            .expect("login");
        assert_eq!(res.status(), 401);
    }
    let res = login(&ann.name, &ann.password, "203.0.113.9")
        .await
        .expect("login");
    assert_throttled(res).await;
    // Another client behind the same nginx logs in as usual.
    let res = login(&bob.name, &bob.password, "203.0.113.10")
        .await
        .expect("login");
    assert_eq!(res.status(), 200);
    let res = login(&bob.name, &bob.password, "203.0.113.9")
        .await
        .expect("login");
    assert_eq!(res.status(), 429, "the failing address is blocked for all");
}

/// Opens an Engine.IO WebSocket through nginx as a client at `from` (nginx
/// appends its own peer to the `X-Forwarded-For` it is sent); the HTTP
/// status of a refused handshake.
async fn raw_socket_from(
    nginx: &str,
    from: &str,
) -> Result<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
    u16,
> {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    let url = format!(
        "{}/socket.io/?EIO=4&transport=websocket",
        nginx.replace("http://", "ws://")
    );
    let mut request = url.into_client_request().expect("request");
    request
        .headers_mut()
        .insert("x-forwarded-for", from.parse().expect("header"));
    match tokio_tungstenite::connect_async(request).await {
        Ok((ws, _)) => Ok(ws),
        Err(tokio_tungstenite::tungstenite::Error::Http(res)) => Err(res.status().as_u16()),
        Err(e) => panic!("handshake through nginx failed: {e}"),
    }
}

/// Behind nginx every connection comes from the proxy: the per-address
/// limits count the client nginx names (the services trust it), so one
/// client's registrations and unauthenticated sockets stop that client,
/// not everyone behind the proxy, and its 429s reach it as JSON.
#[tokio::test]
async fn registrations_and_unauthenticated_sockets_are_limited_per_client_through_nginx() {
    let options = Options::default()
        .with("TRUSTED_PROXIES", "127.0.0.1")
        .with("REGISTRATIONS_PER_ADDRESS", "10")
        .with("MAX_PENDING_CONNECTIONS_PER_ADDRESS", "5")
        .with("SOCKET_CONNECT_TIMEOUT_SECS", "60");
    let proxied = Proxied::start(options).await;
    let nginx = proxied.nginx.url.clone();
    let client = reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client");
    let stem = crate::harness::random_hex(3);
    let register = |i: usize, from: &'static str| {
        client
            .post(format!("{nginx}/api/register"))
            .header("x-forwarded-for", from)
            .json(&json!({ "user_name": format!("n{stem}_{i}"), "password": "pw" }))
            .send()
    };
    for i in 0..10 {
        let res = register(i, "203.0.113.60").await.expect("register");
        assert_eq!(res.status(), 201, "{}", proxied.logs());
    }
    assert_throttled(register(10, "203.0.113.60").await.expect("register")).await;
    let res = register(11, "203.0.113.61").await.expect("register");
    assert_eq!(res.status(), 201);

    // Five unauthenticated sockets of one client, then 429 for it alone.
    let mut held = Vec::new();
    for _ in 0..5 {
        held.push(
            raw_socket_from(&nginx, "198.51.100.1")
                .await
                .expect("under the cap"),
        );
    }
    assert_eq!(
        raw_socket_from(&nginx, "198.51.100.1").await.err(),
        Some(429)
    );
    raw_socket_from(&nginx, "198.51.100.2")
        .await
        .expect("another client is not affected");
    drop(held);
}
