//! `rest`: `GET /api/rooms` at full speed over keep-alive connections, then
//! a login flood, with a fixed-rate probe of two other endpoints measured
//! before and during the flood. Requests go through a minimal HTTP/1.1
//! client of ours, so that the generator costs little next to the server.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::address;
use crate::procs::{Meter, round};
use crate::report::{self, Errors, Output};
use crate::setup;

#[derive(Args, Clone, Debug)]
pub struct RestArgs {
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    pub api: String,
    /// Public rooms to have in the list (created when fewer exist).
    #[arg(long, default_value_t = 50)]
    pub rooms: usize,
    /// Keep-alive connections requesting GET /api/rooms back to back.
    #[arg(long, default_value_t = 32)]
    pub concurrency: usize,
    /// Seconds of each phase.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Concurrent clients logging in back to back during the flood (0: no flood).
    #[arg(long, default_value_t = 16)]
    pub logins: usize,
    /// Probe requests per second (GET /api/rooms and GET /api/user_rooms in
    /// turn), open-loop, before and during the flood.
    #[arg(long, default_value_t = 200)]
    pub probe_rate: u64,
    #[command(flatten)]
    pub output: Output,
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(api: &str) -> anyhow::Result<Conn> {
        let stream = TcpStream::connect(address(api)?).await?;
        stream.set_nodelay(true)?;
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(16 * 1024),
        })
    }

    /// Sends `request` and reads the whole answer; its status and body length.
    async fn send(&mut self, request: &[u8]) -> anyhow::Result<(u16, usize)> {
        self.stream.write_all(request).await?;
        self.buf.clear();
        let head = loop {
            if let Some(end) = find(&self.buf, b"\r\n\r\n") {
                break end + 4;
            }
            self.fill().await?;
        };
        let text = std::str::from_utf8(&self.buf[..head]).context("response head")?;
        let status: u16 = text.get(9..12).context("status line")?.parse()?;
        let length: usize = text
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.eq_ignore_ascii_case("content-length")
                    .then(|| v.trim().parse().ok())?
            })
            .context("response without content-length")?;
        while self.buf.len() < head + length {
            self.fill().await?;
        }
        Ok((status, length))
    }

    async fn fill(&mut self) -> anyhow::Result<()> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        if n == 0 {
            bail!("connection closed");
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(())
    }

    fn body(&self, length: usize) -> &[u8] {
        &self.buf[self.buf.len() - length..]
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

pub fn get(path: &str, token: Option<&str>) -> Vec<u8> {
    let auth = token.map_or(String::new(), |t| format!("Authorization: Bearer {t}\r\n"));
    format!("GET {path} HTTP/1.1\r\nHost: bench\r\n{auth}\r\n").into_bytes()
}

fn post(path: &str, body: &Value) -> Vec<u8> {
    let body = body.to_string();
    format!(
        "POST {path} HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Latencies and outcomes of one kind of request.
pub struct Tally {
    latency: Histogram<u64>,
    pub ok: u64,
    errors: Errors,
}

impl Tally {
    pub fn new() -> Self {
        Tally {
            latency: report::histogram(),
            ok: 0,
            errors: Errors::default(),
        }
    }

    fn record(&mut self, started: Instant, outcome: &anyhow::Result<(u16, usize)>) {
        let _ = self
            .latency
            .record((started.elapsed().as_micros() as u64).max(1));
        match outcome {
            Ok((200, _)) => self.ok += 1,
            Ok((status, _)) => self.errors.add(format!("status_{status}"), 1),
            Err(e) => self.errors.add(format!("io: {e}"), 1),
        }
    }

    pub fn merge(&mut self, other: &Tally) {
        let _ = self.latency.add(&other.latency);
        self.ok += other.ok;
        self.errors.merge(&other.errors);
    }

    pub fn json(&self, seconds: f64) -> Value {
        json!({
            "ok": self.ok, "per_second": round(self.ok as f64 / seconds),
            "latency_ms": report::latency(&self.latency), "errors": self.errors.json(),
        })
    }
}

pub async fn rest(args: RestArgs) -> anyhow::Result<()> {
    let http = setup::http()?;
    let tag = setup::run_tag();
    let user = setup::register(&http, &args.api, format!("r{tag}")).await?;
    let listed: Vec<Value> = http
        .get(format!("{}/api/rooms", args.api))
        .send()
        .await?
        .json()
        .await?;
    for i in listed.len()..args.rooms {
        setup::post(
            &http,
            &args.api,
            "/api/room/create",
            &user.token,
            json!({ "room_name": format!("rest {tag} {i}") }),
        )
        .await?;
    }
    let rooms_listed = listed.len().max(args.rooms);
    let procs = crate::procs::discover(&args.output.pids);

    // Phase 1: GET /api/rooms back to back on every connection.
    let request = get("/api/rooms", None);
    let (_, body_bytes) = Conn::open(&args.api).await?.send(&request).await?;
    let (rooms, processes, generator) =
        back_to_back(&args.api, &request, args.concurrency, args.seconds, &procs).await?;
    let rooms_json = json!({
        "requests": rooms.json(args.seconds), "concurrency": args.concurrency,
        "rooms_listed": rooms_listed, "body_bytes": body_bytes,
        "processes": processes, "generator": generator,
    });
    eprintln!(
        "GET /api/rooms: {:.0} requests/s, p99 {} ms; {}",
        rooms.ok as f64 / args.seconds,
        rooms_json["requests"]["latency_ms"]["p99"],
        report::cpu_line(&processes, &generator)
    );

    // Phase 2: probes alone, then probes during a login flood.
    let quiet = probe(&args, &user.token, args.seconds).await?;
    let flood_json = if args.logins > 0 {
        let meter = Meter::start(procs.clone());
        let deadline = Instant::now() + Duration::from_secs_f64(args.seconds);
        let request = post(
            "/api/login",
            &json!({ "user_name": user.name, "password": "bench-password" }),
        );
        let logins: Vec<_> = (0..args.logins)
            .map(|_| {
                tokio::spawn(hammer(
                    args.api.clone(),
                    request.clone(),
                    deadline,
                    b"{\"access_token\"",
                ))
            })
            .collect();
        let during = probe(&args, &user.token, args.seconds).await?;
        let mut login = Tally::new();
        for l in logins {
            login.merge(&l.await?);
        }
        let (processes, generator) = meter.finish();
        json!({
            "clients": args.logins, "login": login.json(args.seconds),
            "probe_during": during, "processes": processes, "generator": generator,
        })
    } else {
        Value::Null
    };

    let report = json!({
        "scenario": "rest", "api": args.api, "seconds": args.seconds,
        "rooms": rooms_json, "probe_quiet": quiet, "login_flood": flood_json,
    });
    let p = |v: &Value, q: &str| v["latency_ms"][q].clone();
    let summary = format!(
        "rest: GET /api/rooms ({rooms_listed} rooms, {body_bytes} B) {:.0} requests/s p50 {} ms p99 {} ms errors {}; login flood ({} clients) {} logins/s p50 {} ms p99 {} ms errors {}; probe p99 quiet {}/{} ms, during flood {}/{} ms (rooms/user_rooms)",
        rooms.ok as f64 / args.seconds,
        p(&rooms_json["requests"], "p50"),
        p(&rooms_json["requests"], "p99"),
        rooms_json["requests"]["errors"],
        args.logins,
        flood_json["login"]["per_second"],
        p(&flood_json["login"], "p50"),
        p(&flood_json["login"], "p99"),
        flood_json["login"]["errors"],
        p(&quiet["rooms"], "p99"),
        p(&quiet["user_rooms"], "p99"),
        p(&flood_json["probe_during"]["rooms"], "p99"),
        p(&flood_json["probe_during"]["user_rooms"], "p99"),
    );
    report::emit(&args.output, "rest", &summary, &report)
}

/// Sends `request` back to back on `concurrency` keep-alive connections for
/// `seconds` (a 200 must be a JSON list); the tally, and the CPU it cost.
pub async fn back_to_back(
    api: &str,
    request: &[u8],
    concurrency: usize,
    seconds: f64,
    procs: &[crate::procs::Proc],
) -> anyhow::Result<(Tally, Value, Value)> {
    let meter = Meter::start(procs.to_vec());
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let workers: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(hammer(api.to_owned(), request.to_vec(), deadline, b"[")))
        .collect();
    let mut tally = Tally::new();
    for w in workers {
        tally.merge(&w.await?);
    }
    let (processes, generator) = meter.finish();
    Ok((tally, processes, generator))
}

/// Sends `request` back to back on one keep-alive connection until
/// `deadline`, reconnecting after an error; a 200 whose body does not start
/// with `expect` counts as an error.
async fn hammer(api: String, request: Vec<u8>, deadline: Instant, expect: &'static [u8]) -> Tally {
    let mut tally = Tally::new();
    let Ok(mut conn) = Conn::open(&api).await else {
        tally.errors.add("connect", 1);
        return tally;
    };
    while Instant::now() < deadline {
        let started = Instant::now();
        let outcome = conn.send(&request).await;
        if let Ok((200, n)) = &outcome
            && !conn.body(*n).starts_with(expect)
        {
            tally.errors.add("unexpected_body", 1);
        }
        let broken = outcome.is_err();
        tally.record(started, &outcome);
        if broken {
            match Conn::open(&api).await {
                Ok(c) => conn = c,
                Err(_) => break,
            }
        }
    }
    tally
}

/// GET /api/rooms and GET /api/user_rooms in turn at `probe_rate`.
async fn probe(args: &RestArgs, token: &str, seconds: f64) -> anyhow::Result<Value> {
    let requests = vec![get("/api/rooms", None), get("/api/user_rooms", Some(token))];
    let t = fixed_rate(&args.api, requests, args.probe_rate, seconds).await?;
    Ok(json!({
        "rate": args.probe_rate, "rooms": t[0].json(seconds / 2.0), "user_rooms": t[1].json(seconds / 2.0),
    }))
}

/// Sends the `requests` in turn at `rate` per second in all, each kind on
/// its own connection, open-loop (latency from the intended time), for
/// `seconds`; one tally per kind.
pub async fn fixed_rate(
    api: &str,
    requests: Vec<Vec<u8>>,
    rate: u64,
    seconds: f64,
) -> anyhow::Result<Vec<Tally>> {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let kinds = requests.len() as u32;
    let start = Instant::now();
    let end = start + Duration::from_secs_f64(seconds);
    let tallies = Arc::new(Mutex::new(
        (0..kinds).map(|_| Tally::new()).collect::<Vec<_>>(),
    ));
    let mut tasks = Vec::new();
    for (kind, request) in requests.into_iter().enumerate() {
        let tallies = tallies.clone();
        let api = api.to_owned();
        let mut conn = Conn::open(&api).await?;
        tasks.push(tokio::spawn(async move {
            let mut n = 0u32;
            loop {
                // The kinds interleave: kind k sends at (kinds * n + k) intervals.
                let intended = start + interval * (kinds * n + kind as u32);
                if intended >= end {
                    break;
                }
                tokio::time::sleep_until(intended.into()).await;
                let outcome = conn.send(&request).await;
                if let Ok(mut t) = tallies.lock() {
                    t[kind].record(intended, &outcome);
                }
                if outcome.is_err()
                    && let Ok(c) = Conn::open(&api).await
                {
                    conn = c;
                }
                n += 1;
            }
        }));
    }
    for t in tasks {
        t.await?;
    }
    let mut t = tallies.lock().map_err(|_| anyhow::anyhow!("poisoned"))?;
    Ok(std::mem::take(&mut *t))
}
