//! The options of the NATS connection (the bus and the chat log).

use clap::Args;

use crate::support::problems::Problems;

/// The broker (NATS).
#[derive(Debug, Clone, Args)]
pub struct NatsArgs {
    /// NATS server URL, e.g. `nats://127.0.0.1:4222`, or the servers of a
    /// cluster, comma separated (`nats://nats-0:4222,nats://nats-1:4222`):
    /// the client moves to another when its server goes.
    #[arg(long, env = "NATS_URL")]
    pub nats_url: Option<String>,
    /// Replicas of every JetStream stream the services create (the chat
    /// log, the presence snapshot): 3 on a three-server cluster, so an
    /// acknowledged message survives the loss of a server. A stream that
    /// exists with another count is brought to this one.
    #[arg(long, env = "NATS_STREAM_REPLICAS", default_value_t = 1, value_parser = crate::support::problems::at_least_one::<usize>())]
    pub nats_stream_replicas: usize,
}

impl NatsArgs {
    /// The servers of `NATS_URL`, each checked to be a NATS address.
    pub fn servers(&self, problems: &mut Problems) -> Vec<String> {
        let Some(url) = &self.nats_url else {
            return Vec::new();
        };
        let servers: Vec<String> = url
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if servers.is_empty() {
            problems.push("NATS_URL names no server");
        }
        for server in &servers {
            if server.parse::<async_nats::ServerAddr>().is_err() {
                problems.push(format!(
                    "NATS_URL: `{server}` is not a NATS server address like nats://host:4222"
                ));
            }
        }
        if !(1..=5).contains(&self.nats_stream_replicas) {
            problems.push("NATS_STREAM_REPLICAS must be 1 to 5");
        }
        servers
    }
}
