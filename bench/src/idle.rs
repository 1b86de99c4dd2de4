//! `idle`: N sockets on one gateway, each sending `watchdog` every second
//! and nothing else, spread over 127.0.0.x source addresses (a source
//! address has about 28k ephemeral ports). Reports the gateway's RSS per
//! connection, the heartbeats it handled, and whether presence saw every
//! user come online (and, with --check-offline, go offline after the
//! sockets close).

use std::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::client::{Ignore, Socket};
use crate::procs::{self, Meter, round};
use crate::report::{self, Errors, Output};
use crate::setup::{self, Direct};

#[derive(Args, Clone, Debug)]
pub struct IdleArgs {
    /// The gateway to load.
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    pub gateway: String,
    /// Base URL whose /metrics has the presence counters (the presence
    /// service, or the `all` process).
    #[arg(long)]
    pub presence: Option<String>,
    /// REST API base URL, for GET /api/users/online (default: --gateway).
    #[arg(long)]
    pub api: Option<String>,
    #[arg(long, default_value_t = 1000)]
    pub connections: usize,
    /// Source addresses 127.0.0.1 .. 127.0.0.<sources> to spread the connections over.
    #[arg(long, default_value_t = 4)]
    pub sources: u8,
    /// New connections per second.
    #[arg(long, default_value_t = 2000)]
    pub connect_rate: u64,
    /// Seconds to hold every connection open, heartbeating, once all are up.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// After closing, wait the presence timeout (ms) plus a margin and
    /// check that every user went offline.
    #[arg(long)]
    pub check_offline: Option<u64>,
    #[command(flatten)]
    pub direct: Direct,
    #[command(flatten)]
    pub output: Output,
}

pub async fn idle(args: IdleArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.connections > 0, "--connections must be positive");
    anyhow::ensure!(args.sources > 0, "--sources must be positive");
    let http = setup::http()?;
    let tag = setup::run_tag();
    let began = Instant::now();
    // The first user watches the others through GET /api/users/online:
    // they all share its room, and it never connects.
    let names = (0..=args.connections)
        .map(|i| format!("i{tag}_{i}"))
        .collect();
    let (mut users, _room) = args.direct.seed(names).await?;
    let observer = users.remove(0);
    eprintln!(
        "setup: {} users written to the store in {:.1} s",
        users.len() + 1,
        began.elapsed().as_secs_f64()
    );
    let api = args.api.clone().unwrap_or_else(|| args.gateway.clone());
    let online_now = || online_users(&http, &api, &observer.token);
    let procs = procs::discover(&args.output.pids);
    let gateway_pid = procs::serving(&procs, &args.gateway)
        .context("no komunikator process serves the --gateway port (see --pids)")?;
    let rss_before = procs::read(gateway_pid).context("gateway process")?.rss_kb;
    let online = |name: &'static str| {
        let http = http.clone();
        let base = args.presence.clone();
        async move {
            match base {
                Some(base) => crate::metrics::counter(&http, &base, name).await.ok(),
                None => None,
            }
        }
    };
    let heartbeats = || crate::metrics::counter(&http, &args.gateway, GATEWAY_WATCHDOGS);
    let online_before = online(ONLINE).await;
    let offline_before = online(OFFLINE).await;

    // Connect at the given rate, each socket driven (heartbeating) at once.
    let stop = CancellationToken::new();
    let failed = Arc::new(AtomicU64::new(0));
    let mut errors = Errors::default();
    let connecting = Instant::now();
    let interval = Duration::from_secs_f64(1.0 / args.connect_rate.max(1) as f64);
    let mut drivers = Vec::with_capacity(users.len());
    let mut connects = futures_util::stream::iter(users.into_iter().enumerate())
        .map(|(i, user)| {
            let gateway = args.gateway.clone();
            let source = IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                1 + (i % args.sources as usize) as u8,
            ));
            let due = connecting + interval * i as u32;
            async move {
                tokio::time::sleep_until(due.into()).await;
                Socket::connect(&gateway, &user.name, &user.token, Some(source)).await
            }
        })
        .buffer_unordered(256);
    while let Some(result) = connects.next().await {
        match result {
            Ok(socket) => drivers.push(tokio::spawn(socket.drive(
                Ignore,
                Some(Duration::from_secs(1)),
                None,
                stop.clone(),
            ))),
            Err(e) => {
                failed.fetch_add(1, Ordering::Relaxed);
                errors.add(format!("connect: {}", first_line(&e)), 1);
            }
        }
    }
    let connected = drivers.len();
    let connect_seconds = connecting.elapsed().as_secs_f64();
    eprintln!("connected {connected} sockets in {connect_seconds:.1} s");

    // Hold: every socket heartbeats once a second.
    let meter = Meter::start(procs.clone());
    let beats_before = heartbeats().await.unwrap_or(0.0);
    let held = Instant::now();
    tokio::time::sleep(Duration::from_secs_f64(args.seconds)).await;
    let beats = heartbeats().await.unwrap_or(0.0) - beats_before;
    let hold_seconds = held.elapsed().as_secs_f64();
    let (processes, generator) = meter.finish();
    let rss_after = procs::read(gateway_pid).context("gateway process")?.rss_kb;
    let listed_online = online_now().await?;
    let came_online = match (online(ONLINE).await, online_before) {
        (Some(now), Some(before)) => Some(now - before),
        _ => None,
    };
    let went_offline_while_held = match (online(OFFLINE).await, offline_before) {
        (Some(now), Some(before)) => Some(now - before),
        _ => None,
    };

    stop.cancel();
    let mut dropped = 0u64;
    for d in drivers {
        if let Ok((_, false)) = d.await {
            dropped += 1;
        }
    }
    errors.add("closed_by_server", dropped);
    let (went_offline, listed_after) = match args.check_offline {
        Some(timeout_ms) => {
            tokio::time::sleep(Duration::from_millis(timeout_ms + 1500)).await;
            let counted = match (online(OFFLINE).await, offline_before) {
                (Some(now), Some(before)) => Some(now - before),
                _ => None,
            };
            (counted, Some(online_now().await?))
        }
        None => (None, None),
    };

    let per_connection_kb = (rss_after.saturating_sub(rss_before)) as f64 / connected.max(1) as f64;
    // Exact, through the contract: every connected user listed as online
    // while held, and (when checked) none after the timeout.
    let presence_ok = listed_online == connected && listed_after.is_none_or(|n| n == 0);
    let report = json!({
        "scenario": "idle", "gateway": args.gateway, "connections": args.connections,
        "connected": connected, "sources": args.sources,
        "connect_seconds": round(connect_seconds), "hold_seconds": round(hold_seconds),
        "gateway_rss_kb_before": rss_before, "gateway_rss_kb_after": rss_after,
        "gateway_rss_kb_per_connection": round(per_connection_kb),
        "heartbeats_handled": beats, "heartbeats_per_second": round(beats / hold_seconds),
        "presence": {
            "listed_online_while_held": listed_online, "listed_online_after_close": listed_after,
            "came_online": came_online, "went_offline_while_held": went_offline_while_held,
            "went_offline_after_close": went_offline, "correct": presence_ok,
        },
        "errors": errors.json(), "processes": processes, "generator": generator,
    });
    let summary = format!(
        "idle {connected}/{} sockets on {}: gateway RSS {:.1} KB per connection ({} → {} MB), {:.0} heartbeats/s, presence {} (online while held {listed_online}, after close {listed_after:?}), errors {}; {}",
        args.connections,
        args.gateway,
        per_connection_kb,
        rss_before / 1024,
        rss_after / 1024,
        beats / hold_seconds,
        if presence_ok { "correct" } else { "WRONG" },
        errors.json(),
        report::cpu_line(&report["processes"], &report["generator"]),
    );
    report::emit(&args.output, "idle", &summary, &report)
}

const ONLINE: &str = "komunikator_presence_online_total";
const OFFLINE: &str = "komunikator_presence_offline_total";
const GATEWAY_WATCHDOGS: &str = "komunikator_gateway_events_total{event=\"watchdog\"}";

/// How many of this run's users `GET /api/users/online` lists for the observer.
async fn online_users(http: &reqwest::Client, api: &str, token: &str) -> anyhow::Result<usize> {
    let listed: Vec<String> = http
        .get(format!("{api}/api/users/online"))
        .bearer_auth(token)
        .send()
        .await?
        .error_for_status()?
        .json()
        .await?;
    Ok(listed.len())
}

fn first_line(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let text = text.lines().next().unwrap_or("").to_owned();
    // Keep kinds few: drop what varies (numbers, addresses).
    text.chars().filter(|c| !c.is_ascii_digit()).collect()
}
