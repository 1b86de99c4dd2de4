//! `rejoin`: the storm after a gateway restart. N sockets connect at once
//! and each rejoins one of R rooms with `last_chat_id` a few messages
//! behind (docs/protocol.md, "Ordering, delivery and catch-up"). Reports the time until every
//! socket has its join acknowledged and every missed message replayed, the
//! per-socket catch-up latency, and the CPU of each process meanwhile.

use std::net::{IpAddr, Ipv4Addr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::{Events, Socket, field_u64};
use crate::procs::{self, Meter, round};
use crate::report::{self, Errors, Output};
use crate::setup::{self, Direct, User};

mod probes;

use probes::Probes;

#[derive(Args, Clone, Debug)]
pub struct RejoinArgs {
    /// The gateway the sockets rejoin on.
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    pub gateway: String,
    #[arg(long, default_value_t = 10_000)]
    pub connections: usize,
    /// Rooms the sockets are spread over.
    #[arg(long, default_value_t = 100)]
    pub rooms: usize,
    /// Messages each socket missed (at most the server's burst allowance).
    #[arg(long, default_value_t = 5)]
    pub behind: usize,
    /// Source addresses 127.0.0.1 .. 127.0.0.<sources> to spread the connections over.
    #[arg(long, default_value_t = 4)]
    pub sources: u8,
    /// Join without `last_chat_id` (the cost of a plain rejoin, to compare).
    #[arg(long)]
    pub plain: bool,
    /// Ask for presence in batches (`auth.presence = "batched"`), as the
    /// bundled web client does.
    #[arg(long)]
    pub batched: bool,
    /// Every socket sends `watchdog` every second once connected: the storm
    /// brings each user online in their room.
    #[arg(long)]
    pub heartbeat: bool,
    /// Chat messages per second that a probe socket sends, during the
    /// storm, into the first storm room and into a room outside it; the
    /// delivery latency of each (to the sender itself) is reported. 0: none.
    #[arg(long, default_value_t = 0)]
    pub probe_rate: u32,
    /// Longest wait for everyone to catch up, in seconds.
    #[arg(long, default_value_t = 120)]
    pub within: u64,
    #[command(flatten)]
    pub direct: Direct,
    #[command(flatten)]
    pub output: Output,
}

pub async fn rejoin(args: RejoinArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.connections > 0 && args.rooms > 0, "nothing to rejoin");
    let tag = setup::run_tag();
    let began = Instant::now();
    let names = (0..args.connections)
        .map(|i| format!("r{tag}_{i}"))
        .collect();
    // The first room is the one every user is a member of: presence
    // (`user_online`, `presence`) goes there.
    let (users, seeded) = args.direct.seed(names).await?;
    let mut rooms = vec![seeded];
    rooms.extend(args.direct.rooms(&users[0].name, args.rooms - 1).await?);
    let probes = if args.probe_rate > 0 {
        let outside = args.direct.rooms(&users[0].name, 1).await?;
        Some(Probes::start(&args, users[..2].to_vec(), [rooms[0], outside[0]]).await?)
    } else {
        None
    };
    eprintln!(
        "setup: {} users and {} rooms in {:.1} s",
        users.len(),
        rooms.len(),
        began.elapsed().as_secs_f64()
    );
    // What everyone missed: `behind` messages in every room, after the one
    // whose id they give as `last_chat_id`.
    let last_seen = missed_messages(&args, &users, &rooms).await?;

    let procs = procs::discover(&args.output.pids);
    let meter = Meter::start(procs);
    let storm = Instant::now();
    let shared = Arc::new(Progress::default());
    let stop = CancellationToken::new();
    let mut errors = Errors::default();
    let mut drivers = Vec::with_capacity(users.len());
    let mut connects = futures_util::stream::iter(users.iter().enumerate())
        .map(|(i, user)| {
            let source = IpAddr::V4(Ipv4Addr::new(
                127,
                0,
                0,
                1 + (i % args.sources as usize) as u8,
            ));
            let gateway = args.gateway.clone();
            let batched = args.batched;
            async move {
                (
                    i,
                    Socket::connect_with(&gateway, &user.name, &user.token, Some(source), batched)
                        .await,
                )
            }
        })
        .buffer_unordered(512);
    while let Some((i, connected)) = connects.next().await {
        let socket = match connected {
            Ok(socket) => socket,
            Err(e) => {
                errors.add(format!("connect: {}", e.root_cause()), 1);
                continue;
            }
        };
        let room = rooms[i % rooms.len()];
        let (tx, rx) = mpsc::unbounded_channel();
        let join = if args.plain {
            json!({ "room_id": room })
        } else {
            json!({ "room_id": room, "last_chat_id": last_seen[i % rooms.len()] })
        };
        // Ack id 1: the join's.
        tx.send(format!("421{}", json!(["join", join])))?;
        let catching = CatchingUp {
            started: Instant::now(),
            want: if args.plain { 0 } else { args.behind },
            got: 0,
            acked: false,
            done: false,
            shared: shared.clone(),
        };
        let heartbeat = args.heartbeat.then_some(Duration::from_secs(1));
        drivers.push(tokio::spawn(socket.drive(
            catching,
            heartbeat,
            Some(rx),
            stop.clone(),
        )));
    }
    let connected = drivers.len();
    let connect_seconds = storm.elapsed().as_secs_f64();
    let deadline = storm + Duration::from_secs(args.within);
    while shared.done() < connected && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let caught_up = shared.done();
    let all_seconds = storm.elapsed().as_secs_f64();
    let probed = match probes {
        Some(probes) => probes.finish(&mut errors).await,
        None => json!(null),
    };
    let (processes, generator) = meter.finish();
    stop.cancel();
    for d in drivers {
        let _ = d.await;
    }
    let latency = report::latency(&shared.latency.lock().expect("latency"));
    errors.add("wrong_replay", shared.wrong.load(Ordering::Relaxed));
    errors.add("not_caught_up", (connected - caught_up) as u64);
    let report = json!({
        "scenario": "rejoin", "gateway": args.gateway, "connections": args.connections,
        "connected": connected, "rooms": args.rooms, "behind": args.behind, "plain": args.plain,
        "connect_seconds": round(connect_seconds),
        "all_caught_up_seconds": round(all_seconds), "caught_up": caught_up,
        "catch_up_ms": latency, "errors": errors.json(),
        "batched": args.batched, "heartbeat": args.heartbeat, "probe_rate": args.probe_rate,
        "probe_ms": probed,
        "processes": processes, "generator": generator,
    });
    let summary = format!(
        "rejoin{}{} {caught_up}/{} sockets caught up ({} missed each, {} rooms) in {:.2} s (connected in {:.2} s); per socket p50 {} ms, p99 {} ms{}; errors {}; {}",
        if args.plain { " (plain)" } else { "" },
        if args.batched {
            " (batched presence)"
        } else {
            ""
        },
        args.connections,
        args.behind,
        args.rooms,
        all_seconds,
        connect_seconds,
        report["catch_up_ms"]["p50"],
        report["catch_up_ms"]["p99"],
        if args.probe_rate > 0 {
            format!(
                "; chat p99 in the storm room {} ms, outside {} ms",
                report["probe_ms"]["storm_room"]["p99"], report["probe_ms"]["outside"]["p99"]
            )
        } else {
            String::new()
        },
        errors.json(),
        report::cpu_line(&report["processes"], &report["generator"]),
    );
    report::emit(&args.output, "rejoin", &summary, &report)
}

/// Sends `behind + 1` messages to every room (each from its own user, within
/// the rate limit's burst); returns, per room, the id of the first: the
/// newest message the rejoining sockets say they have.
async fn missed_messages(
    args: &RejoinArgs,
    users: &[User],
    rooms: &[i64],
) -> anyhow::Result<Vec<i64>> {
    let sends = rooms.iter().zip(users.iter().cycle()).map(|(&room, user)| {
        let gateway = args.gateway.clone();
        async move {
            let mut socket = Socket::connect(&gateway, &user.name, &user.token, None).await?;
            socket.join(room).await?;
            let (tx, rx) = mpsc::unbounded_channel();
            for n in 0..=args.behind {
                let message = json!({ "room_id": room, "message": format!("missed {n}") });
                tx.send(format!("42{}{}", n + 1, json!(["message", message])))?;
            }
            let stop = CancellationToken::new();
            let acks = Acks::default();
            let first = acks.first.clone();
            let count = acks.count.clone();
            let driver = tokio::spawn(socket.drive(acks, None, Some(rx), stop.clone()));
            let wait = async {
                while count.load(Ordering::Relaxed) <= args.behind {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            };
            tokio::time::timeout(Duration::from_secs(30), wait)
                .await
                .context("messages not acknowledged")?;
            stop.cancel();
            let _ = driver.await;
            let first = *first.lock().expect("first");
            first.context("no chat_id for the first message")
        }
    });
    futures_util::stream::iter(sends)
        .buffered(16)
        .collect::<Vec<anyhow::Result<i64>>>()
        .await
        .into_iter()
        .collect()
}

/// The acknowledgements of the messages sent to make a room's backlog.
#[derive(Default)]
struct Acks {
    first: Arc<Mutex<Option<i64>>>,
    count: Arc<AtomicUsize>,
}

impl Events for Acks {
    fn ack(&mut self, id: u64, body: &str) {
        let chat_id = field_u64(body, "\"chat_id\"").and_then(|c| i64::try_from(c).ok());
        if id == 1 {
            *self.first.lock().expect("first") = chat_id;
        }
        self.count.fetch_add(1, Ordering::Relaxed);
    }
}

/// What the rejoining sockets report.
struct Progress {
    done: AtomicUsize,
    latency: Mutex<Histogram<u64>>,
    wrong: AtomicU64,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            done: Default::default(),
            latency: Mutex::new(report::histogram()),
            wrong: AtomicU64::default(),
        }
    }
}

impl Progress {
    fn done(&self) -> usize {
        self.done.load(Ordering::Relaxed)
    }
}

/// One socket rejoining: done once its join is acknowledged and every
/// missed message has arrived.
struct CatchingUp {
    started: Instant,
    want: usize,
    got: usize,
    acked: bool,
    done: bool,
    shared: Arc<Progress>,
}

impl CatchingUp {
    /// Done once the join is acknowledged and the missed messages came
    /// (live ones may follow them: the room may be chatting).
    fn check_done(&mut self) {
        if !self.done && self.acked && self.got >= self.want {
            self.done = true;
            let us = self.started.elapsed().as_micros();
            let _ = self
                .shared
                .latency
                .lock()
                .expect("latency")
                .record(u64::try_from(us).unwrap_or(u64::MAX));
            self.shared.done.fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Events for CatchingUp {
    fn event(&mut self, name: &str, _frame: &str) {
        if name == "new_message" {
            self.got += 1;
            self.check_done();
        }
    }

    fn ack(&mut self, id: u64, body: &str) {
        if id != 1 {
            return;
        }
        if field_u64(body, "\"replayed\"") != Some(self.want as u64) {
            self.shared.wrong.fetch_add(1, Ordering::Relaxed);
        }
        self.acked = true;
        self.check_done();
    }
}
