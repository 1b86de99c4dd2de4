//! `persist-lag`: one message at a time, the time from its live
//! `new_message` to its appearance in `GET /api/chat_history`.

use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Args;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::{Events, Socket, field_u64};
use crate::procs::round;
use crate::report::{self, Output};
use crate::setup;

#[derive(Args, Clone, Debug)]
pub struct PersistLagArgs {
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    pub api: String,
    #[arg(long, default_value = "http://127.0.0.1:5000")]
    pub gateway: String,
    /// Messages to time, one after another.
    #[arg(long, default_value_t = 200)]
    pub messages: usize,
    #[command(flatten)]
    pub output: Output,
}

/// Hands each live message's chat id to the timing loop.
struct Live(mpsc::UnboundedSender<u64>);

impl Events for Live {
    fn event(&mut self, name: &str, frame: &str) {
        if name == "new_message"
            && let Some(id) = field_u64(frame, r#""chat_id""#)
        {
            let _ = self.0.send(id);
        }
    }
}

pub async fn persist_lag(args: PersistLagArgs) -> anyhow::Result<()> {
    let http = setup::http()?;
    let user = setup::register(&http, &args.api, format!("l{}", setup::run_tag())).await?;
    let room = setup::room_with(&http, &args.api, "lag", &user, &[]).await?;
    let mut socket = Socket::connect(&args.gateway, &user.name, &user.token, None).await?;
    socket.join(room).await?;
    let (live_tx, mut live) = mpsc::unbounded_channel();
    let (out, outbound) = mpsc::unbounded_channel();
    let stop = CancellationToken::new();
    let driver = tokio::spawn(socket.drive(Live(live_tx), None, Some(outbound), stop.clone()));
    let mut lag = report::histogram();
    for i in 0..args.messages {
        out.send(format!(
            r#"42["message",{{"room_id":{room},"message":"lag {i}"}}]"#
        ))?;
        let chat_id = tokio::time::timeout(Duration::from_secs(10), live.recv())
            .await
            .context("no live delivery within 10 s")?
            .context("socket closed")?;
        let seen = Instant::now();
        let url = format!("{}/api/chat_history?room_id={room}&limit=1", args.api);
        loop {
            let newest: Value = http.get(&url).send().await?.json().await?;
            if newest[0]["chat_id"].as_u64() == Some(chat_id) {
                break;
            }
            anyhow::ensure!(
                seen.elapsed() < Duration::from_secs(30),
                "message {chat_id} never persisted"
            );
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        let _ = lag.record((seen.elapsed().as_micros() as u64).max(1));
    }
    stop.cancel();
    let _ = driver.await;
    let report = json!({
        "scenario": "persist-lag", "messages": args.messages, "lag_ms": report::latency(&lag),
    });
    let summary = format!(
        "persist-lag over {} messages: p50 {} ms, p99 {} ms, max {} ms",
        args.messages,
        report["lag_ms"]["p50"],
        report["lag_ms"]["p99"],
        round(lag.max() as f64 / 1000.0)
    );
    report::emit(&args.output, "persist-lag", &summary, &report)
}
