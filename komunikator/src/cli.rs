//! The command line: one subcommand per service. Every option falls back to
//! an environment variable; `--help` is the reference.

use clap::{ArgMatches, Args, Parser, Subcommand};
use common::accounts::config::AuthArgs;
use common::adapters::nats::NatsArgs;
use common::adapters::redis::RedisArgs;
use common::adapters::store::config::DbArgs;
use common::domain::subjects::PrefixArgs;
use common::edge::config::HttpArgs;
use common::support::data_dir::DataDirArgs;
use common::support::problems::Problems;
use common::telemetry::logs::LogArgs;

#[derive(Debug, Parser)]
#[command(
    name = "komunikator",
    version,
    about = "Komunikator: a real-time chat backend (REST + Socket.IO).",
    long_about = "Komunikator: a real-time chat backend (REST + Socket.IO).\n\n\
        Run one service per process (api), or every service in one process (all, \
        the default), which needs no other services: without DB_HOST/DATABASE_URL, \
        NATS_URL and REDIS_URL it keeps its data in an SQLite file in --data-dir."
)]
pub struct Cli {
    #[command(flatten)]
    pub log: LogArgs,
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// The REST API service (needs MySQL, NATS and Redis).
    Api(ApiCmd),
    /// The Socket.IO gateway (needs MySQL and NATS); run several behind a load balancer.
    Gateway(GatewayCmd),
    /// Writes chat messages from NATS JetStream to MySQL; replicas share the work.
    Persister(PersisterCmd),
    /// Turns heartbeats into online/offline events (needs MySQL, NATS and Redis).
    Presence(PresenceCmd),
    /// Every service in one process, on one port; the default command.
    All(AllCmd),
    /// Apply the database migrations and exit.
    Migrate(MigrateCmd),
}

impl Command {
    /// The subcommand's name, as on the command line.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Api(_) => "api",
            Self::Gateway(_) => "gateway",
            Self::Persister(_) => "persister",
            Self::Presence(_) => "presence",
            Self::All(_) => "all",
            Self::Migrate(_) => "migrate",
        }
    }
}

#[derive(Debug, Args)]
pub struct ApiCmd {
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub prefix: PrefixArgs,
    #[command(flatten)]
    pub api: api::ApiArgs,
}

#[derive(Debug, Args)]
pub struct GatewayCmd {
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub prefix: PrefixArgs,
    #[command(flatten)]
    pub gateway: gateway::GatewayArgs,
}

#[derive(Debug, Args)]
pub struct PersisterCmd {
    /// Health and metrics only.
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub prefix: PrefixArgs,
    #[command(flatten)]
    pub persister: persister::PersisterArgs,
}

#[derive(Debug, Args)]
pub struct PresenceCmd {
    /// Health and metrics only.
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub prefix: PrefixArgs,
}

#[derive(Debug, Args)]
pub struct AllCmd {
    #[command(flatten)]
    pub http: HttpArgs,
    #[command(flatten)]
    pub data: DataDirArgs,
    #[command(flatten)]
    pub db: DbArgs,
    #[command(flatten)]
    pub auth: AuthArgs,
    #[command(flatten)]
    pub nats: NatsArgs,
    #[command(flatten)]
    pub redis: RedisArgs,
    #[command(flatten)]
    pub prefix: PrefixArgs,
    #[command(flatten)]
    pub api: api::ApiArgs,
    #[command(flatten)]
    pub gateway: gateway::GatewayArgs,
    #[command(flatten)]
    pub persister: persister::PersisterArgs,
}

#[derive(Debug, Args)]
pub struct MigrateCmd {
    #[command(flatten)]
    pub data: DataDirArgs,
    #[command(flatten)]
    pub db: DbArgs,
}

/// Refuses secrets given on the command line, where any user can read them
/// (`ps`); they belong in the environment.
pub fn check_secrets_from_env(matches: &ArgMatches, problems: &mut Problems) {
    let Some((_, sub)) = matches.subcommand() else {
        return;
    };
    let secrets = DbArgs::SECRET_IDS
        .iter()
        .chain(&AuthArgs::SECRET_IDS)
        .chain(&RedisArgs::SECRET_IDS);
    for id in secrets {
        if sub.ids().any(|i| i.as_str() == *id)
            && sub.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
        {
            problems.push(format!(
                "--{} is a secret: set it in the environment ({}), not on the command line",
                id.replace('_', "-"),
                id.to_uppercase()
            ));
        }
    }
}
