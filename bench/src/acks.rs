//! `acks`: how fast durable acknowledgements come, closed loop: one socket
//! keeps `--in-flight` messages unacknowledged (1: one at a time, each sent
//! when the previous one is acknowledged) for `--seconds`. What the sync
//! policy of the chat log costs (a synced write per acknowledgement, or per
//! batch of them) shows here first.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::{Events, Socket, field_u64};
use crate::procs::{self, round};
use crate::report::{self, Output};
use crate::setup;

#[derive(Args, Clone, Debug)]
pub struct AcksArgs {
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    pub api: String,
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    pub gateway: String,
    /// Messages kept waiting for their acknowledgement at once.
    #[arg(long, default_value_t = 1)]
    pub in_flight: usize,
    /// Seconds of sending.
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    #[command(flatten)]
    pub output: Output,
}

/// Hands each acknowledgement (its id, and whether it carries a chat id)
/// to the sending loop.
struct Acks(mpsc::UnboundedSender<(u64, bool)>);

impl Events for Acks {
    fn ack(&mut self, id: u64, body: &str) {
        let _ = self.0.send((id, field_u64(body, r#""chat_id""#).is_some()));
    }
}

pub async fn acks(args: AcksArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.in_flight > 0 && args.seconds > 0,
        "--in-flight and --seconds must be positive"
    );
    let http = setup::http()?;
    let user = setup::register(&http, &args.api, format!("a{}", setup::run_tag())).await?;
    let room = setup::room_with(&http, &args.api, "acks", &user, &[]).await?;
    let mut socket = Socket::connect(&args.gateway, &user.name, &user.token, None).await?;
    socket.join(room).await?;
    let (ack_tx, mut acks) = mpsc::unbounded_channel();
    let (out, outbound) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let driver = tokio::spawn(socket.drive(Acks(ack_tx), None, Some(outbound), stop.clone()));
    let send = |id: u64| {
        out.send(format!(
            r#"42{id}["message",{{"room_id":{room},"message":"ack {id}"}}]"#
        ))
    };
    let mut latency = report::histogram();
    let mut sent_at: HashMap<u64, Instant> = HashMap::with_capacity(args.in_flight);
    let (mut next_id, mut acked, mut refused) = (1u64, 0u64, 0u64);
    let meter = procs::Meter::start(procs::discover(&args.output.pids));
    let started = Instant::now();
    let until = started + Duration::from_secs(args.seconds);
    while sent_at.len() < args.in_flight {
        send(next_id)?;
        sent_at.insert(next_id, Instant::now());
        next_id += 1;
    }
    while !sent_at.is_empty() {
        let (id, ok) = tokio::time::timeout(Duration::from_secs(15), acks.recv())
            .await
            .map_err(|_| anyhow::anyhow!("no acknowledgement within 15 s"))?
            .ok_or_else(|| anyhow::anyhow!("socket closed"))?;
        let Some(at) = sent_at.remove(&id) else {
            continue;
        };
        if ok {
            acked += 1;
            let _ = latency.record((at.elapsed().as_micros() as u64).max(1));
        } else {
            refused += 1;
        }
        if Instant::now() < until {
            send(next_id)?;
            sent_at.insert(next_id, Instant::now());
            next_id += 1;
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (processes, generator) = meter.finish();
    stop.cancel();
    let _ = driver.await;
    let rate = acked as f64 / elapsed;
    let report = json!({
        "scenario": "acks", "in_flight": args.in_flight, "seconds": round(elapsed),
        "acked": acked, "refused": refused, "acked_per_second": round(rate),
        "ack_ms": report::latency(&latency), "processes": processes, "generator": generator,
    });
    let summary = format!(
        "acks, {} in flight: {} acked/s ({acked} in {:.1} s, {refused} refused), ack p50 {} ms, p99 {} ms",
        args.in_flight,
        round(rate),
        elapsed,
        report["ack_ms"]["p50"],
        report["ack_ms"]["p99"],
    );
    report::emit(&args.output, "acks", &summary, &report)
}
