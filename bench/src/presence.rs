//! `presence`: heartbeats of N simulated users at a fixed total rate,
//! published straight to `<prefix>.presence.heartbeat` as the gateways
//! forward them (the sockets are the `idle` scenario's part). Reports the
//! heartbeats the presence service absorbed per second, its CPU, and
//! whether every user came online exactly once.

use std::time::{Duration, Instant};

use clap::Args;
use serde_json::json;

use crate::metrics::counter;
use crate::procs::{self, Meter, round};
use crate::report::{self, Output};
use crate::setup;

#[derive(Args, Clone, Debug)]
pub struct PresenceArgs {
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    pub nats: String,
    /// The deployment's KOM_PREFIX.
    #[arg(long, env = "KOM_PREFIX", default_value = "kom")]
    pub prefix: String,
    /// The presence service's base URL, for its metrics.
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    pub presence: String,
    #[arg(long, default_value_t = 10_000)]
    pub users: u64,
    /// Heartbeats per second in total (each user beats at rate/users Hz; 1 Hz
    /// like a browser when rate = users).
    #[arg(long)]
    pub rate: Option<u64>,
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    #[command(flatten)]
    pub output: Output,
}

const HEARTBEATS: &str = "komunikator_presence_heartbeats_total";
const ONLINE: &str = "komunikator_presence_online_total";

pub async fn presence(args: PresenceArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.users > 0, "--users must be positive");
    let rate = args.rate.unwrap_or(args.users).max(1);
    let http = setup::http()?;
    let nats = async_nats::connect(&args.nats).await?;
    let subject = format!("{}.presence.heartbeat", args.prefix);
    let tag = setup::run_tag();
    let procs = procs::discover(&args.output.pids);
    let before = counter(&http, &args.presence, HEARTBEATS).await?;
    let online_before = counter(&http, &args.presence, ONLINE).await?;
    let meter = Meter::start(procs);
    let epoch = Instant::now();
    let total = (rate as f64 * args.seconds) as u64;
    // Publish in 1 ms slices, each with its share of the rate.
    let per_ms = rate as f64 / 1000.0;
    let mut sent = 0u64;
    let mut slice = 0u32;
    while sent < total {
        slice += 1;
        let due = ((f64::from(slice) * per_ms) as u64).min(total);
        let at = common::adapters::presence::unix_ms();
        while sent < due {
            let body = json!({ "user_name": format!("p{tag}_{}", sent % args.users), "at": at });
            nats.publish(subject.clone(), body.to_string().into())
                .await?;
            sent += 1;
        }
        tokio::time::sleep_until((epoch + Duration::from_millis(u64::from(slice))).into()).await;
    }
    nats.flush().await?;
    let sending = epoch.elapsed().as_secs_f64();
    // Wait until the service has caught up (or stopped making progress).
    let mut last = -1.0;
    let processed = loop {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let now = counter(&http, &args.presence, HEARTBEATS).await? - before;
        if now >= total as f64 || now == last {
            break now;
        }
        last = now;
    };
    let elapsed = epoch.elapsed().as_secs_f64();
    let (processes, generator) = meter.finish();
    let came_online = counter(&http, &args.presence, ONLINE).await? - online_before;
    let expected_online = args.users.min(total);
    let presence_proc = processes
        .as_array()
        .and_then(|ps| {
            let port = args.presence.rsplit(':').next()?;
            ps.iter()
                .find(|p| p["label"].as_str().and_then(|l| l.rsplit(':').next()) == Some(port))
        })
        .cloned()
        .unwrap_or_default();
    let report = json!({
        "scenario": "presence", "users": args.users, "rate": rate,
        "sent": total, "send_seconds": round(sending), "processed": processed,
        "processed_ratio": processed / total.max(1) as f64,
        "absorbed_per_second": round(processed / elapsed), "seconds_to_catch_up": round(elapsed),
        "came_online": came_online, "expected_online": expected_online,
        "presence_cpu_cores": presence_proc["cpu_cores"], "presence_rss_kb": presence_proc["rss_kb"],
        "processes": processes, "generator": generator,
    });
    let summary = format!(
        "presence {} users, {rate} heartbeats/s for {sending:.1} s: {processed:.0} processed ({:.2}%), {:.0}/s absorbed, {came_online:.0}/{expected_online} came online; presence {} cores, RSS {} KB; {}",
        args.users,
        100.0 * processed / total.max(1) as f64,
        processed / elapsed,
        presence_proc["cpu_cores"],
        presence_proc["rss_kb"],
        report::cpu_line(&report["processes"], &report["generator"]),
    );
    report::emit(&args.output, "presence", &summary, &report)
}
