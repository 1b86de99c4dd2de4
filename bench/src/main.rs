//! Komunikator's load generator. `chat`: R rooms × U users, S senders per
//! room sending open-loop at a fixed total rate; latency is measured from
//! each message's *intended* send time to its delivery, so a slow server
//! cannot hide its queueing (no coordinated omission).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Args, Parser, Subcommand};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::Mutex;

// The black-box suite's Socket.IO client, shared rather than copied.
#[allow(dead_code, clippy::unwrap_used)]
#[path = "../../komunikator/tests/api/sio.rs"]
mod sio;

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// R rooms × U users over the given gateways, S senders per room.
    Chat(ChatArgs),
    /// Time from a message's live delivery to its appearance in chat_history.
    PersistLag(PersistLagArgs),
    /// Heartbeats of N simulated users, straight to the presence service over NATS.
    Presence(PresenceArgs),
}

#[derive(Args)]
struct PresenceArgs {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats: String,
    /// The deployment's KOM_PREFIX.
    #[arg(long, default_value = "kom")]
    prefix: String,
    /// The presence service's base URL, for its metrics.
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    presence: String,
    #[arg(long, default_value_t = 10_000)]
    users: u64,
    /// Heartbeats per second, in total (each user beats at rate/users Hz).
    #[arg(long, default_value_t = 10_000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

#[derive(Args)]
struct PersistLagArgs {
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    api: String,
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    gateway: String,
    /// Messages to time, one after another.
    #[arg(long, default_value_t = 200)]
    messages: usize,
}

#[derive(Args)]
struct ChatArgs {
    /// REST API base URL.
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    api: String,
    /// Gateway base URLs, comma separated; users are spread over them.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:5000")]
    gateways: Vec<String>,
    #[arg(long, default_value_t = 10)]
    rooms: usize,
    #[arg(long, default_value_t = 10)]
    users: usize,
    #[arg(long, default_value_t = 2)]
    senders: usize,
    /// Messages per second, in total.
    #[arg(long, default_value_t = 1000)]
    rate: u64,
    #[arg(long, default_value_t = 10)]
    seconds: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().scenario {
        Scenario::Chat(args) => chat(args).await,
        Scenario::PersistLag(args) => persist_lag(args).await,
        Scenario::Presence(args) => presence(args).await,
    }
}

/// The value of a counter in a Prometheus text exposition.
async fn counter(http: &reqwest::Client, base: &str, name: &str) -> anyhow::Result<f64> {
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    let line = text
        .lines()
        .find(|l| l.starts_with(name))
        .context("no such counter")?;
    Ok(line.rsplit(' ').next().context("no value")?.parse()?)
}

async fn presence(args: PresenceArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let nats = async_nats::connect(&args.nats).await?;
    let subject = format!("{}.presence.heartbeat", args.prefix);
    let metric = "komunikator_presence_heartbeats_total";
    let before = counter(&http, &args.presence, metric).await?;
    let epoch = Instant::now();
    let total = args.rate * args.seconds;
    // Publish in 1 ms slices, each with its share of the rate.
    let per_ms = (args.rate as f64 / 1000.0).max(1.0);
    let mut sent = 0u64;
    let mut slice = 0u64;
    while sent < total {
        slice += 1;
        let due = ((slice as f64 * per_ms) as u64).min(total);
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_millis();
        while sent < due {
            let body = json!({ "user_name": format!("pu{}", sent % args.users), "at": at as i64 });
            nats.publish(subject.clone(), body.to_string().into())
                .await?;
            sent += 1;
        }
        tokio::time::sleep_until(tokio::time::Instant::from_std(
            epoch + Duration::from_millis(slice),
        ))
        .await;
    }
    nats.flush().await?;
    let sending = epoch.elapsed().as_secs_f64();
    // Wait until the service has caught up (or stopped making progress).
    let mut last = -1.0;
    let processed = loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = counter(&http, &args.presence, metric).await? - before;
        if now >= total as f64 || now == last {
            break now;
        }
        last = now;
    };
    let elapsed = epoch.elapsed().as_secs_f64();
    println!(
        "presence {} users, {} heartbeats/s offered for {:.1} s: {:.0} processed ({:.1}%), {:.0} heartbeats/s absorbed over {:.1} s",
        args.users,
        args.rate,
        sending,
        processed,
        100.0 * processed / total as f64,
        processed / elapsed,
        elapsed
    );
    Ok(())
}

async fn persist_lag(args: PersistLagArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let mut b = [0u8; 3];
    getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("random: {e}"))?;
    let user = register(&http, &args.api, &format!("lag{}", hex::encode(b))).await?;
    let created = post(
        &http,
        &args.api,
        "/api/room/create",
        &user.token,
        json!({ "room_name": "lag" }),
    )
    .await?;
    let room = created["room_id"].as_i64().context("room_id")?;
    let mut socket = sio::Socket::connect(&args.gateway, sio::Auth::Payload(&user.token))
        .await
        .map_err(|e| anyhow::anyhow!("connect: {e}"))?;
    socket.join(room).await;
    let mut lag = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3)?;
    for i in 0..args.messages {
        socket.emit(
            "message",
            json!({ "room_id": room, "message": format!("lag {i}") }),
        );
        let live = socket.expect("new_message").await;
        let seen = Instant::now();
        let chat_id = live["chat_id"].as_i64().context("chat_id")?;
        loop {
            let url = format!("{}/api/chat_history?room_id={room}&limit=1", args.api);
            let newest: Value = http.get(url).send().await?.json().await?;
            if newest[0]["chat_id"].as_i64() == Some(chat_id) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        lag.record((seen.elapsed().as_micros() as u64).max(1))?;
    }
    let ms = |q: f64| lag.value_at_quantile(q) as f64 / 1000.0;
    println!(
        "persist-lag over {} messages: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
        args.messages,
        ms(0.5),
        ms(0.99),
        lag.max() as f64 / 1000.0
    );
    Ok(())
}

struct User {
    token: String,
}

async fn register(http: &reqwest::Client, api: &str, name: &str) -> anyhow::Result<User> {
    let res = http
        .post(format!("{api}/api/register"))
        .json(&json!({ "user_name": name, "password": "bench-pw" }))
        .send()
        .await?;
    let body: Value = res.json().await?;
    let token = body["access_token"]
        .as_str()
        .context("no token")?
        .to_owned();
    Ok(User { token })
}

async fn post(
    http: &reqwest::Client,
    api: &str,
    path: &str,
    token: &str,
    body: Value,
) -> anyhow::Result<Value> {
    Ok(http
        .post(format!("{api}{path}"))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await?
        .json()
        .await?)
}

/// Shared results, filled by the receiving sockets.
struct Tally {
    delivered: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

async fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let http = reqwest::Client::builder().no_proxy().build()?;
    let run = hex::encode({
        let mut b = [0u8; 3];
        getrandom::fill(&mut b).map_err(|e| anyhow::anyhow!("random: {e}"))?;
        b
    });
    let start_setup = Instant::now();
    let mut rooms = Vec::new();
    let mut members: Vec<Vec<User>> = Vec::new();
    for r in 0..args.rooms {
        let mut users = Vec::new();
        for u in 0..args.users {
            users.push(register(&http, &args.api, &format!("b{run}_{r}_{u}")).await?);
        }
        let created = post(
            &http,
            &args.api,
            "/api/room/create",
            &users[0].token,
            json!({ "room_name": format!("bench {r}") }),
        )
        .await?;
        let room_id = created["room_id"].as_i64().context("room_id")?;
        for user in &users[1..] {
            post(
                &http,
                &args.api,
                "/api/room/join_public",
                &user.token,
                json!({ "room_id": room_id }),
            )
            .await?;
        }
        rooms.push(room_id);
        members.push(users);
    }
    eprintln!(
        "setup: {} users in {} rooms in {:.1} s",
        args.rooms * args.users,
        args.rooms,
        start_setup.elapsed().as_secs_f64()
    );

    let tally = Arc::new(Tally {
        delivered: AtomicU64::new(0),
        latency: Mutex::new(Histogram::new_with_bounds(1, 60_000_000, 3)?),
    });
    let epoch = Instant::now();
    let mut senders = Vec::new();
    let mut receivers = Vec::new();
    for (r, users) in members.iter().enumerate() {
        for (u, user) in users.iter().enumerate() {
            let gateway = &args.gateways[(r * args.users + u) % args.gateways.len()];
            let mut socket = sio::Socket::connect(gateway, sio::Auth::Payload(&user.token))
                .await
                .map_err(|e| anyhow::anyhow!("connect: {e}"))?;
            socket.join(rooms[r]).await;
            if u < args.senders {
                senders.push((rooms[r], Arc::new(socket)));
            } else {
                receivers.push(socket);
            }
        }
    }
    // Senders also receive; their receiving is measured through the others.
    let expected_per_message = (args.users - args.senders.min(args.users)) as u64;
    let mut tasks = Vec::new();
    for mut socket in receivers {
        let tally = tally.clone();
        tasks.push(tokio::spawn(async move {
            while let Some(message) = socket
                .try_expect("new_message", Duration::from_secs(3))
                .await
            {
                let sent_at: u64 = message["message"]
                    .as_str()
                    .and_then(|m| m.split(' ').next())
                    .and_then(|t| t.parse().ok())
                    .unwrap_or(0);
                let now = epoch.elapsed().as_micros() as u64;
                tally.delivered.fetch_add(1, Ordering::Relaxed);
                let _ = tally
                    .latency
                    .lock()
                    .await
                    .record(now.saturating_sub(sent_at).max(1));
            }
        }));
    }
    let per_sender = args.rate as f64 / senders.len() as f64;
    let interval = Duration::from_secs_f64(1.0 / per_sender);
    let total_per_sender = (per_sender * args.seconds as f64) as u64;
    let sent = Arc::new(AtomicU64::new(0));
    let acked = Arc::new(AtomicU64::new(0));
    let started = epoch.elapsed();
    let mut sending = Vec::new();
    for (i, (room, socket)) in senders.into_iter().enumerate() {
        let (sent, acked) = (sent.clone(), acked.clone());
        sending.push(tokio::spawn(async move {
            // Spread the senders' schedules over one interval.
            let offset = interval.mul_f64(i as f64 / 64.0 % 1.0);
            let mut inflight = Vec::new();
            for n in 0..total_per_sender {
                let intended = started + offset + interval.mul_f64(n as f64);
                tokio::time::sleep_until(tokio::time::Instant::from_std(epoch + intended)).await;
                let body = json!({ "room_id": room, "message": format!("{} bench", intended.as_micros()) });
                sent.fetch_add(1, Ordering::Relaxed);
                let socket = socket.clone();
                let acked = acked.clone();
                inflight.push(tokio::spawn(async move {
                    if socket.emit_with_ack("message", body).await.get("chat_id").is_some() {
                        acked.fetch_add(1, Ordering::Relaxed);
                    }
                }));
            }
            for f in inflight {
                let _ = f.await;
            }
        }));
    }
    for s in sending {
        s.await?;
    }
    let send_secs = (epoch.elapsed() - started).as_secs_f64();
    for t in tasks {
        t.await?;
    }
    let sent = sent.load(Ordering::Relaxed);
    let acked = acked.load(Ordering::Relaxed);
    let delivered = tally.delivered.load(Ordering::Relaxed);
    let expected = acked * expected_per_message;
    let h = tally.latency.lock().await;
    let ms = |q: f64| h.value_at_quantile(q) as f64 / 1000.0;
    let report = json!({
        "scenario": "chat", "rooms": args.rooms, "users": args.users, "senders": args.senders,
        "gateways": args.gateways.len(), "target_rate": args.rate, "seconds": send_secs,
        "sent": sent, "acked": acked, "delivered": delivered, "expected": expected,
        "delivery_ratio": delivered as f64 / expected.max(1) as f64,
        "messages_per_second": acked as f64 / send_secs,
        "deliveries_per_second": delivered as f64 / send_secs,
        "latency_ms": { "p50": ms(0.5), "p95": ms(0.95), "p99": ms(0.99), "max": h.max() as f64 / 1000.0 },
    });
    println!(
        "chat {}x{} s={} rate={}/s: {:.0} msg/s, {:.0} deliveries/s, {:.2}% delivered, p50 {:.1} ms p99 {:.1} ms max {:.1} ms",
        args.rooms,
        args.users,
        args.senders,
        args.rate,
        report["messages_per_second"].as_f64().unwrap_or(0.0),
        report["deliveries_per_second"].as_f64().unwrap_or(0.0),
        100.0 * report["delivery_ratio"].as_f64().unwrap_or(0.0),
        ms(0.5),
        ms(0.99),
        h.max() as f64 / 1000.0
    );
    println!("{report}");
    Ok(())
}
