//! `chat` and `fanout`: rooms of users on the gateways, some of them
//! sending open-loop at a fixed total rate. Every message carries its
//! *intended* send time (in its text and as its acknowledgement id), and
//! latency runs from that time to each delivery, so a server that falls
//! behind cannot hide its queueing (no coordinated omission). Every member,
//! the sender included, must receive every acknowledged message; at the end
//! the acknowledged ids are looked up in `GET /api/chat_history`.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures_util::{StreamExt, TryStreamExt};
use hdrhistogram::Histogram;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::{Events, Socket, field_u64};
use crate::procs::{Meter, round};
use crate::report::{self, Errors, Output};
use crate::setup;

mod step;

use step::{Plan, run_step, verify_persisted};

/// Parameters shared by `chat` and `fanout`.
#[derive(Args, Clone, Debug)]
pub struct Load {
    /// REST API base URL.
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    pub api: String,
    /// Gateway base URLs, comma separated; sockets are spread over them in turn.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:5000")]
    pub gateways: Vec<String>,
    /// Senders per room (default: 2 for chat, 1 for fanout).
    #[arg(long)]
    pub senders: Option<usize>,
    /// Messages per second, in total over all senders (default: 1000 for
    /// chat, 100 for fanout); the first rate of a --max ramp.
    #[arg(long)]
    pub rate: Option<f64>,
    /// Seconds of sending (per step with --max).
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Seconds of sending at the first rate before measuring, results
    /// discarded (but their messages verified): measures the warmed-up
    /// system, after the `user_joined` storm of the setup has passed.
    #[arg(long, default_value_t = 0.0)]
    pub warmup: f64,
    /// Ramp the rate up by --step until p99 exceeds --max-p99-ms or fewer
    /// than --min-delivered of the expected deliveries arrive; report every
    /// step and the best one that passed.
    #[arg(long)]
    pub max: bool,
    /// Factor between the rates of two ramp steps.
    #[arg(long, default_value_t = 1.25)]
    pub step: f64,
    /// Most ramp steps.
    #[arg(long, default_value_t = 20)]
    pub max_steps: usize,
    #[arg(long, default_value_t = 250.0)]
    pub max_p99_ms: f64,
    #[arg(long, default_value_t = 0.999)]
    pub min_delivered: f64,
    /// Sockets ask for presence in batches (`auth.presence = "batched"`),
    /// as the bundled web client does.
    #[arg(long)]
    pub batched: bool,
    /// Skip the final check that every acknowledged message is in chat_history.
    #[arg(long)]
    pub no_verify: bool,
    /// Seconds to wait for the last deliveries of a step before counting them lost.
    #[arg(long, default_value_t = 5.0)]
    pub drain: f64,
    #[command(flatten)]
    pub output: Output,
}

#[derive(Args, Clone, Debug)]
pub struct ChatArgs {
    #[arg(long, default_value_t = 10)]
    pub rooms: usize,
    /// Users per room.
    #[arg(long, default_value_t = 10)]
    pub users: usize,
    #[command(flatten)]
    pub load: Load,
}

#[derive(Args, Clone, Debug)]
pub struct FanoutArgs {
    /// Users in the one room.
    #[arg(long, default_value_t = 1000)]
    pub users: usize,
    /// Writes the users and the room to the deployment's store and signs
    /// their tokens (as `rejoin` does) instead of registering each through
    /// the API: seconds instead of minutes for 10,000 users.
    #[arg(long)]
    pub seed_direct: bool,
    #[command(flatten)]
    pub direct: setup::Direct,
    #[command(flatten)]
    pub load: Load,
}

pub async fn chat(args: ChatArgs) -> anyhow::Result<()> {
    let senders = args.load.senders.unwrap_or(2);
    let rate = args.load.rate.unwrap_or(1000.0);
    run(
        "chat", args.rooms, args.users, senders, rate, args.load, None,
    )
    .await
}

pub async fn fanout(args: FanoutArgs) -> anyhow::Result<()> {
    let senders = args.load.senders.unwrap_or(1);
    let rate = args.load.rate.unwrap_or(100.0);
    let direct = args.seed_direct.then_some(&args.direct);
    run("fanout", 1, args.users, senders, rate, args.load, direct).await
}

/// Counters shared by every socket of a run, reset between ramp steps.
#[derive(Default)]
struct Tally {
    delivered: AtomicU64,
    acked: AtomicU64,
    refused: Mutex<Errors>,
}

/// The receiving (and, for senders, acknowledging) side of one socket.
struct Member {
    epoch: Instant,
    tally: Arc<Tally>,
    /// Delivery latency, µs from the intended send time.
    latency: Arc<Mutex<Histogram<u64>>>,
    /// Acknowledgement latency and ids, for senders.
    acks: Option<Arc<Mutex<Acked>>>,
}

struct Acked {
    latency: Histogram<u64>,
    chat_ids: Vec<u64>,
}

impl Events for Member {
    fn event(&mut self, name: &str, frame: &str) {
        if name != "new_message" {
            return;
        }
        let Some(intended) = field_u64(frame, r#""message""#) else {
            return;
        };
        let now = self.epoch.elapsed().as_micros() as u64;
        self.tally.delivered.fetch_add(1, Ordering::Relaxed);
        if let Ok(mut h) = self.latency.lock() {
            let _ = h.record(now.saturating_sub(intended).max(1));
        }
    }

    fn ack(&mut self, id: u64, body: &str) {
        let Some(acks) = &self.acks else { return };
        match field_u64(body, r#""chat_id""#) {
            Some(chat_id) => {
                self.tally.acked.fetch_add(1, Ordering::Relaxed);
                let now = self.epoch.elapsed().as_micros() as u64;
                if let Ok(mut a) = acks.lock() {
                    let _ = a.latency.record(now.saturating_sub(id).max(1));
                    a.chat_ids.push(chat_id);
                }
            }
            None => {
                let code = field_u64(body, r#""code""#).unwrap_or(0);
                if let Ok(mut r) = self.tally.refused.lock() {
                    r.add(format!("refused_code_{code}"), 1);
                }
            }
        }
    }
}

struct Sender {
    room: i64,
    out: mpsc::UnboundedSender<String>,
    acks: Arc<Mutex<Acked>>,
}

#[allow(clippy::too_many_lines)]
async fn run(
    scenario: &str,
    rooms: usize,
    users: usize,
    senders: usize,
    rate: f64,
    load: Load,
    direct: Option<&setup::Direct>,
) -> anyhow::Result<()> {
    anyhow::ensure!(
        rooms > 0 && users > 0,
        "--rooms and --users must be positive"
    );
    anyhow::ensure!(
        (1..=users).contains(&senders),
        "--senders must be between 1 and --users"
    );
    anyhow::ensure!(
        rate > 0.0 && load.seconds > 0.0,
        "--rate and --seconds must be positive"
    );
    let http = setup::http()?;
    let tag = setup::run_tag();
    let began = Instant::now();

    // Users and rooms, through the REST API (or, for one room, written
    // to the store directly).
    let names: Vec<String> = (0..rooms * users)
        .map(|i| format!("b{tag}_{}_{}", i / users, i % users))
        .collect();
    let (all, room_ids) = match direct {
        Some(direct) if rooms == 1 => {
            let (all, room) = direct.seed(names).await?;
            (all, vec![room])
        }
        _ => {
            let all = setup::register_all(&http, &load.api, names).await?;
            let mut room_ids = Vec::with_capacity(rooms);
            for (r, members) in all.chunks(users).enumerate() {
                let name = format!("bench {tag} {r}");
                room_ids
                    .push(setup::room_with(&http, &load.api, &name, &members[0], members).await?);
            }
            (all, room_ids)
        }
    };
    eprintln!(
        "setup: {} users in {rooms} rooms in {:.1} s",
        rooms * users,
        began.elapsed().as_secs_f64()
    );

    // Sockets: connected and joined, then driven until the end.
    let epoch = Instant::now();
    let tally = Arc::new(Tally::default());
    let stop = CancellationToken::new();
    let connecting = Instant::now();
    let sockets: Vec<(usize, Socket)> = futures_util::stream::iter(all.iter().enumerate())
        .map(|(i, user)| {
            let gateway = load.gateways[i % load.gateways.len()].clone();
            let room = room_ids[i / users];
            let batched = load.batched;
            async move {
                let mut socket =
                    Socket::connect_with(&gateway, &user.name, &user.token, None, batched)
                        .await
                        .with_context(|| format!("socket of {} to {gateway}", user.name))?;
                socket.join(room).await?;
                anyhow::Ok((i, socket))
            }
        })
        .buffer_unordered(32)
        .try_collect()
        .await?;
    eprintln!(
        "sockets: {} connected and joined in {:.1} s",
        sockets.len(),
        connecting.elapsed().as_secs_f64()
    );
    let mut latencies = Vec::new();
    let mut sending = Vec::new();
    let mut drivers = Vec::new();
    for (i, socket) in sockets {
        let latency = Arc::new(Mutex::new(report::histogram()));
        latencies.push(latency.clone());
        let is_sender = i % users < senders;
        let acks = is_sender.then(|| {
            Arc::new(Mutex::new(Acked {
                latency: report::histogram(),
                chat_ids: Vec::new(),
            }))
        });
        let (out, outbound) = if is_sender {
            let (tx, rx) = mpsc::unbounded_channel();
            (Some(tx), Some(rx))
        } else {
            (None, None)
        };
        if let (Some(out), Some(acks)) = (out, &acks) {
            sending.push(Sender {
                room: room_ids[i / users],
                out,
                acks: acks.clone(),
            });
        }
        let member = Member {
            epoch,
            tally: tally.clone(),
            latency,
            acks,
        };
        drivers.push(tokio::spawn(socket.drive(
            member,
            Some(Duration::from_secs(1)),
            outbound,
            stop.clone(),
        )));
    }
    let sending = Arc::new(sending);

    let procs = crate::procs::discover(&load.output.pids);
    let mut steps = Vec::new();
    let mut best: Option<Value> = None;
    let mut current = rate;
    let mut all_ids: HashMap<i64, Vec<u64>> = HashMap::new();
    let collect_ids = |all_ids: &mut HashMap<i64, Vec<u64>>| {
        for sender in sending.iter() {
            if let Ok(mut a) = sender.acks.lock() {
                all_ids
                    .entry(sender.room)
                    .or_default()
                    .append(&mut a.chat_ids);
            }
        }
    };
    if load.warmup > 0.0 {
        let plan = Plan {
            rate: current,
            seconds: load.warmup,
        };
        let warm = run_step(&load, plan, epoch, &tally, &sending, &latencies, users).await;
        collect_ids(&mut all_ids);
        eprintln!(
            "  warm-up {:.0} s at {current:.0}/s: p99 {} ms (not counted)",
            load.warmup, warm.json["latency_ms"]["p99"]
        );
    }
    for _ in 0..if load.max { load.max_steps } else { 1 } {
        let meter = Meter::start(procs.clone());
        let plan = Plan {
            rate: current,
            seconds: load.seconds,
        };
        let step = run_step(&load, plan, epoch, &tally, &sending, &latencies, users).await;
        let (processes, generator) = meter.finish();
        collect_ids(&mut all_ids);
        let mut result = step.json;
        result["processes"] = processes.clone();
        result["generator"] = generator.clone();
        eprintln!(
            "  rate {:.0}/s: {:.0} msg/s, {:.0} deliveries/s, {:.3}% delivered, p99 {} ms; {}",
            current,
            result["messages_per_second"].as_f64().unwrap_or(0.0),
            result["deliveries_per_second"].as_f64().unwrap_or(0.0),
            100.0 * step.ratio,
            result["latency_ms"]["p99"],
            report::cpu_line(&processes, &generator)
        );
        let passed = step.p99_ms <= load.max_p99_ms && step.ratio >= load.min_delivered;
        result["passed"] = json!(passed);
        steps.push(result.clone());
        if !passed {
            break;
        }
        best = Some(result);
        current *= load.step;
    }
    stop.cancel();
    let mut closed_early = 0;
    for d in drivers {
        if let Ok((_, false)) = d.await {
            closed_early += 1;
        }
    }

    let persisted = if load.no_verify {
        Value::Null
    } else {
        verify_persisted(&http, &load.api, &all_ids).await?
    };
    let headline = if load.max {
        best.clone().unwrap_or_else(|| steps[0].clone())
    } else {
        steps[0].clone()
    };
    let mut report = json!({
        "scenario": scenario, "rooms": rooms, "users_per_room": users, "senders_per_room": senders,
        "gateways": load.gateways, "seconds_per_step": load.seconds, "warmup_seconds": load.warmup,
        "max_p99_ms": load.max_p99_ms,
        "sockets_closed_by_server": closed_early, "persisted": persisted,
    });
    for (k, v) in headline.as_object().into_iter().flatten() {
        report[k] = v.clone();
    }
    if load.max {
        report["steps"] = Value::Array(steps);
        report["best_passing_rate"] = best
            .as_ref()
            .map_or(Value::Null, |b| b["target_rate"].clone());
    }
    let persisted_note = match persisted.get("missing") {
        Some(m) => format!(
            ", persisted {}/{}",
            persisted["found"],
            persisted["found"].as_u64().unwrap_or(0) + m.as_u64().unwrap_or(0)
        ),
        None => String::new(),
    };
    let summary = format!(
        "{scenario} {rooms}x{users} senders={senders}{} rate={}/s: {:.0} msg/s, {:.0} deliveries/s, {:.3}% delivered, p50 {} ms p95 {} ms p99 {} ms max {} ms, errors {}{persisted_note}; {}",
        if load.max { " --max best" } else { "" },
        headline["target_rate"],
        headline["messages_per_second"].as_f64().unwrap_or(0.0),
        headline["deliveries_per_second"].as_f64().unwrap_or(0.0),
        100.0 * headline["delivery_ratio"].as_f64().unwrap_or(0.0),
        headline["latency_ms"]["p50"],
        headline["latency_ms"]["p95"],
        headline["latency_ms"]["p99"],
        headline["latency_ms"]["max"],
        headline["errors"],
        report::cpu_line(&headline["processes"], &headline["generator"]),
    );
    report::emit(&load.output, scenario, &summary, &report)
}
