//! Komunikator's load generator, built only on demand (see bench/README.md).
//! Every scenario speaks to the running services like clients do, prints one
//! summary line and writes its full result as JSON.

mod acks;
mod chat;
mod client;
mod history;
mod idle;
mod metrics;
mod persist_lag;
mod presence;
mod procs;
mod rejoin;
mod report;
mod rest;
mod setup;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Komunikator's load generator")]
struct Cli {
    /// Runtime worker threads (default: one per core).
    #[arg(long, global = true)]
    threads: Option<usize>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// R rooms × U users over the gateways, S senders per room, open-loop at a fixed rate.
    Chat(chat::ChatArgs),
    /// One room of N users, S senders: deliveries per second.
    Fanout(chat::FanoutArgs),
    /// N sockets on one gateway heartbeating at 1 Hz: RSS per connection, presence.
    Idle(idle::IdleArgs),
    /// N users' heartbeats straight to the presence service over NATS.
    Presence(presence::PresenceArgs),
    /// GET /api/chat_history latency (quiet and while the room receives
    /// messages) and throughput.
    History(history::HistoryArgs),
    /// GET /api/rooms throughput, and a login flood against a latency probe.
    Rest(rest::RestArgs),
    /// Time from a message's live delivery to its appearance in chat_history.
    PersistLag(persist_lag::PersistLagArgs),
    /// Acknowledged messages per second, closed loop, K in flight.
    Acks(acks::AcksArgs),
    /// N sockets rejoining at once with `last_chat_id` a few messages behind.
    Rejoin(rejoin::RejoinArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if let Some(n) = cli.threads {
        runtime.worker_threads(n.max(1));
    }
    runtime.enable_all().build()?.block_on(async {
        match cli.scenario {
            Scenario::Chat(args) => chat::chat(args).await,
            Scenario::Fanout(args) => chat::fanout(args).await,
            Scenario::Idle(args) => idle::idle(args).await,
            Scenario::Presence(args) => presence::presence(args).await,
            Scenario::History(args) => history::history(args).await,
            Scenario::Rest(args) => rest::rest(args).await,
            Scenario::PersistLag(args) => persist_lag::persist_lag(args).await,
            Scenario::Acks(args) => acks::acks(args).await,
            Scenario::Rejoin(args) => rejoin::rejoin(args).await,
        }
    })
}
