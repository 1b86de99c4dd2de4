//! `history`: `GET /api/chat_history` latency, quiet and while messages are
//! being sent to the same room (then the newest messages may not be stored
//! yet, and the API merges them from the broker: read your writes), and its
//! throughput over keep-alive connections.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Args;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::{Events, Socket};
use crate::procs::Meter;
use crate::report::{self, Output};
use crate::rest::{back_to_back, fixed_rate, get};
use crate::setup;

#[derive(Args, Clone, Debug)]
pub struct HistoryArgs {
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    pub api: String,
    /// The gateway the sender's socket uses.
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    pub gateway: String,
    /// Messages in the room before measuring.
    #[arg(long, default_value_t = 200)]
    pub messages: u64,
    /// `limit` of each read.
    #[arg(long, default_value_t = 50)]
    pub limit: u32,
    /// Reads per second of the latency phases, open-loop.
    #[arg(long, default_value_t = 200)]
    pub probe_rate: u64,
    /// Messages per second sent to the room during the second phase.
    #[arg(long, default_value_t = 500)]
    pub chat_rate: u64,
    /// Keep-alive connections reading back to back in the throughput phase.
    #[arg(long, default_value_t = 16)]
    pub concurrency: usize,
    /// Seconds of each phase.
    #[arg(long, default_value_t = 5.0)]
    pub seconds: f64,
    #[command(flatten)]
    pub output: Output,
}

/// Counts acknowledgements of the sender's messages.
struct Acks(Arc<AtomicU64>);

impl Events for Acks {
    fn ack(&mut self, _id: u64, body: &str) {
        if body.contains("chat_id") {
            self.0.fetch_add(1, Ordering::Relaxed);
        }
    }
}

fn message(room: i64, id: u64) -> String {
    format!(r#"42{id}["message",{{"room_id":{room},"message":"history {id}"}}]"#)
}

/// Sends messages `first..` to `room` at `rate` per second for `seconds`;
/// returns how many.
async fn pace(
    outbound: mpsc::UnboundedSender<String>,
    room: i64,
    first: u64,
    rate: u64,
    seconds: f64,
) -> u64 {
    let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / rate.max(1) as f64));
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let mut n = 0;
    while Instant::now() < deadline {
        tick.tick().await;
        if outbound.send(message(room, first + n)).is_err() {
            break;
        }
        n += 1;
    }
    n
}

/// Waits until `acked` reaches `n` (every message stored by the broker).
async fn wait_for_acks(acked: &AtomicU64, n: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while acked.load(Ordering::Relaxed) < n {
        if Instant::now() > deadline {
            bail!(
                "{} of {n} messages acknowledged",
                acked.load(Ordering::Relaxed)
            );
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}

/// Reads at the probe rate for the phase's length, with the CPU it cost.
async fn probe(
    args: &HistoryArgs,
    procs: &[crate::procs::Proc],
    read: &[u8],
) -> anyhow::Result<Value> {
    let meter = Meter::start(procs.to_vec());
    let tallies = fixed_rate(
        &args.api,
        vec![read.to_vec()],
        args.probe_rate,
        args.seconds,
    )
    .await?;
    let (processes, generator) = meter.finish();
    Ok(
        json!({ "reads": tallies[0].json(args.seconds), "processes": processes, "generator": generator }),
    )
}

pub async fn history(args: HistoryArgs) -> anyhow::Result<()> {
    let http = setup::http()?;
    let tag = setup::run_tag();
    let user = setup::register(&http, &args.api, format!("h{tag}")).await?;
    let room = setup::room_with(&http, &args.api, &format!("history {tag}"), &user, &[]).await?;
    let mut socket = Socket::connect(&args.gateway, &user.name, &user.token, None).await?;
    socket.join(room).await?;
    let acked = Arc::new(AtomicU64::new(0));
    let (outbound, frames) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let sender = tokio::spawn(socket.drive(Acks(acked.clone()), None, Some(frames), stop.clone()));
    for id in 1..=args.messages {
        outbound.send(message(room, id)).context("sender closed")?;
    }
    wait_for_acks(&acked, args.messages).await?;
    let procs = crate::procs::discover(&args.output.pids);
    let read = get(
        &format!("/api/chat_history?room_id={room}&limit={}", args.limit),
        None,
    );

    // Phase 1: reads at a fixed rate, nothing else going on.
    let quiet = probe(&args, &procs, &read).await?;
    // Phase 2: the same while the room receives `chat_rate` messages/s.
    let chat = pace(
        outbound.clone(),
        room,
        args.messages + 1,
        args.chat_rate,
        args.seconds,
    );
    let (during, paced) = tokio::join!(probe(&args, &procs, &read), chat);
    let during = during?;
    wait_for_acks(&acked, args.messages + paced).await?;

    // Phase 3: reads back to back on `concurrency` connections.
    let (closed, processes, generator) =
        back_to_back(&args.api, &read, args.concurrency, args.seconds, &procs).await?;
    let throughput = json!({
        "requests": closed.json(args.seconds), "concurrency": args.concurrency,
        "processes": processes, "generator": generator,
    });
    stop.cancel();
    let _ = sender.await;

    let report = json!({
        "scenario": "history", "api": args.api, "seconds": args.seconds, "limit": args.limit,
        "messages": args.messages, "probe_rate": args.probe_rate, "chat_rate": args.chat_rate,
        "quiet": quiet, "during_chat": during, "sent_during": paced, "throughput": throughput,
    });
    let p = |v: &Value, q: &str| v["reads"]["latency_ms"][q].clone();
    let summary = format!(
        "history: limit {} at {}/s: quiet p50 {} ms p99 {} ms; while {} msg/s arrive ({paced} sent) p50 {} ms p99 {} ms; {} connections {:.0} reads/s p50 {} ms p99 {} ms; errors {} {} {}",
        args.limit,
        args.probe_rate,
        p(&quiet, "p50"),
        p(&quiet, "p99"),
        args.chat_rate,
        p(&during, "p50"),
        p(&during, "p99"),
        args.concurrency,
        closed.ok as f64 / args.seconds,
        throughput["requests"]["latency_ms"]["p50"],
        throughput["requests"]["latency_ms"]["p99"],
        quiet["reads"]["errors"],
        during["reads"]["errors"],
        throughput["requests"]["errors"],
    );
    report::emit(&args.output, "history", &summary, &report)
}
