//! What one process runs, from its command line: the validated, typed
//! configuration of its adapters and of each of its services. Every problem
//! is reported at once; past this point a required URL is a `String`, never
//! an `Option`.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use common::accounts::config::AuthArgs;
use common::adapters::nats::NatsArgs;
use common::adapters::redis::RedisArgs;
use common::adapters::redis::RedisAt;
use common::adapters::store::StoreSettings;
use common::adapters::store::config::DbArgs;
use common::domain::subjects::PrefixArgs;
use common::edge::config::HttpArgs;
use common::support::data_dir::DataDirArgs;
use common::support::problems::Problems;

use crate::cli::{AllCmd, ApiCmd, GatewayCmd, MigrateCmd, PersisterCmd, PresenceCmd};

/// Why a command stopped: bad configuration (exit code 2) or a runtime error.
#[derive(Debug)]
pub enum Failure {
    Config(String),
    Runtime(anyhow::Error),
}

impl From<anyhow::Error> for Failure {
    fn from(e: anyhow::Error) -> Self {
        Self::Runtime(e)
    }
}

impl From<String> for Failure {
    /// A problem report of the configuration.
    fn from(report: String) -> Self {
        Self::Config(report)
    }
}

/// A process: where its dependencies live, and the services it runs.
#[derive(Debug)]
pub struct Plan {
    /// The NATS client name (`komunikator-<command>`).
    pub name: &'static str,
    pub http: HttpArgs,
    pub adapters: Adapters,
    pub services: Vec<Service>,
}

/// Where each dependency lives, each chosen on its own.
#[derive(Debug)]
pub struct Adapters {
    pub store: StoreSettings,
    /// Single-node mode migrates at start; a service only checks the schema
    /// (`komunikator migrate` runs once per deployment).
    pub schema: Schema,
    pub bus: BusAt,
    pub presence: PresenceAt,
    /// The prefix of NATS subjects and Redis keys.
    pub prefix: String,
    /// Where single-node mode keeps its files (SQLite, the JWT secret).
    pub data_dir: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Schema {
    Migrate,
    Check,
}

/// The bus and the chat log: NATS (and JetStream), or in process.
#[derive(Debug)]
pub enum BusAt {
    Nats {
        /// One server, or the servers of a cluster.
        servers: Vec<String>,
        /// Replicas of the streams the process creates.
        replicas: usize,
    },
    InProcess,
}

/// Presence and the shared room list version: Redis, in process, or not
/// used by this process.
#[derive(Debug)]
pub enum PresenceAt {
    Redis { at: RedisAt, timeout: Duration },
    InProcess { timeout: Duration },
    Unused,
}

/// One service with its own configuration.
#[derive(Debug)]
pub enum Service {
    Api {
        tokens: TokenConfig,
        args: api::ApiArgs,
    },
    Gateway {
        tokens: TokenConfig,
        args: gateway::GatewayArgs,
    },
    Persister(persister::PersisterArgs),
    Presence,
}

/// How access tokens are signed and how long they last.
#[derive(Clone)]
pub struct TokenConfig {
    pub secret: String,
    pub ttl: Duration,
}

impl std::fmt::Debug for TokenConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenConfig")
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

/// The dependencies of a service run on its own: MySQL and NATS always,
/// Redis where the service keeps presence.
fn remote(
    db: &DbArgs,
    nats: &NatsArgs,
    redis: Option<&RedisArgs>,
    prefix: &PrefixArgs,
    problems: &mut Problems,
) -> Adapters {
    prefix.validate(problems);
    let store = db.mysql(problems);
    if !db.is_set() {
        problems.push("DB_HOST or DATABASE_URL is required");
    }
    required(&nats.nats_url, "NATS_URL", problems);
    let servers = nats.servers(problems);
    let presence = match redis {
        Some(redis) => {
            redis.validate(problems);
            PresenceAt::Redis {
                at: redis.at(problems).unwrap_or_else(|| {
                    problems
                        .push("REDIS_URL is required (or REDIS_CLUSTER_NODES, a Redis Cluster)");
                    RedisAt::Server(String::new())
                }),
                timeout: redis.presence_timeout(),
            }
        }
        None => PresenceAt::Unused,
    };
    Adapters {
        // Unused when a problem was pushed: the plan is refused.
        store: store.unwrap_or(StoreSettings::Sqlite {
            path: PathBuf::new(),
        }),
        schema: Schema::Check,
        bus: BusAt::Nats {
            servers,
            replicas: nats.nats_stream_replicas,
        },
        presence,
        prefix: prefix.prefix.clone(),
        data_dir: None,
    }
}

fn required(value: &Option<String>, name: &str, problems: &mut Problems) -> String {
    if value.is_none() {
        problems.push(format!("{name} is required"));
    }
    value.clone().unwrap_or_default()
}

fn tokens(auth: &AuthArgs, problems: &mut Problems) -> TokenConfig {
    auth.validate(true, problems);
    TokenConfig {
        secret: auth.jwt_secret_key.clone().unwrap_or_default(),
        ttl: auth.token_ttl(),
    }
}

/// The plan of a service run on its own, once every problem is known.
fn alone(
    name: &'static str,
    http: HttpArgs,
    adapters: Adapters,
    service: Service,
    mut problems: Problems,
) -> Result<Plan, Failure> {
    http.validate(&mut problems);
    problems.into_result()?;
    Ok(Plan {
        name,
        http,
        adapters,
        services: vec![service],
    })
}

impl ApiCmd {
    pub fn plan(self) -> Result<Plan, Failure> {
        let mut problems = Problems::default();
        let redis = Some(&self.redis);
        let adapters = remote(&self.db, &self.nats, redis, &self.prefix, &mut problems);
        let tokens = tokens(&self.auth, &mut problems);
        let api = Service::Api {
            tokens,
            args: self.api,
        };
        alone("komunikator-api", self.http, adapters, api, problems)
    }
}

impl GatewayCmd {
    pub fn plan(self) -> Result<Plan, Failure> {
        let mut problems = Problems::default();
        let adapters = remote(&self.db, &self.nats, None, &self.prefix, &mut problems);
        let tokens = tokens(&self.auth, &mut problems);
        let gateway = Service::Gateway {
            tokens,
            args: self.gateway,
        };
        alone(
            "komunikator-gateway",
            self.http,
            adapters,
            gateway,
            problems,
        )
    }
}

impl PersisterCmd {
    pub fn plan(self) -> Result<Plan, Failure> {
        let mut problems = Problems::default();
        let adapters = remote(&self.db, &self.nats, None, &self.prefix, &mut problems);
        let persister = Service::Persister(self.persister);
        alone(
            "komunikator-persister",
            self.http,
            adapters,
            persister,
            problems,
        )
    }
}

impl PresenceCmd {
    pub fn plan(self) -> Result<Plan, Failure> {
        let mut problems = Problems::default();
        let redis = Some(&self.redis);
        let adapters = remote(&self.db, &self.nats, redis, &self.prefix, &mut problems);
        alone(
            "komunikator-presence",
            self.http,
            adapters,
            Service::Presence,
            problems,
        )
    }
}

impl AllCmd {
    /// Every service; each dependency not configured is embedded: SQLite in
    /// the data directory, the in-process bus and chat log, in-process
    /// presence, and a JWT secret generated into the data directory.
    pub fn plan(self) -> Result<Plan, Failure> {
        let mut problems = Problems::default();
        self.http.validate(&mut problems);
        self.auth.validate(false, &mut problems);
        self.redis.validate(&mut problems);
        self.prefix.validate(&mut problems);
        let store = local_or_mysql(&self.db, &self.data, &mut problems);
        if matches!(store, StoreSettings::MySql { .. }) && self.auth.jwt_secret_key.is_none() {
            problems.push("JWT_SECRET_KEY is required when the data lives in MySQL");
        }
        let servers = self.nats.servers(&mut problems);
        let redis = self.redis.at(&mut problems);
        problems.into_result()?;
        let secret = match &self.auth.jwt_secret_key {
            Some(secret) => secret.clone(),
            None => self
                .data
                .jwt_secret()
                .context("reading the JWT secret in the data directory")?,
        };
        let tokens = TokenConfig {
            secret,
            ttl: self.auth.token_ttl(),
        };
        let timeout = self.redis.presence_timeout();
        let nats = if servers.is_empty() {
            None
        } else {
            Some(BusAt::Nats {
                servers,
                replicas: self.nats.nats_stream_replicas,
            })
        };
        let mut services = vec![
            Service::Api {
                tokens: tokens.clone(),
                args: self.api,
            },
            Service::Gateway {
                tokens,
                args: self.gateway,
            },
            Service::Presence,
        ];
        // The embedded chat log is the store: nothing to persist.
        if nats.is_some() {
            services.push(Service::Persister(self.persister));
        }
        Ok(Plan {
            name: "komunikator-all",
            http: self.http,
            adapters: Adapters {
                store,
                schema: Schema::Migrate,
                bus: nats.unwrap_or(BusAt::InProcess),
                presence: match redis {
                    Some(at) => PresenceAt::Redis { at, timeout },
                    None => PresenceAt::InProcess { timeout },
                },
                prefix: self.prefix.prefix,
                data_dir: Some(self.data.data_dir),
            },
            services,
        })
    }
}

impl MigrateCmd {
    /// The store to migrate.
    pub fn store(&self) -> Result<(StoreSettings, PathBuf), Failure> {
        let mut problems = Problems::default();
        let store = local_or_mysql(&self.db, &self.data, &mut problems);
        problems.into_result()?;
        Ok((store, self.data.data_dir.clone()))
    }
}

/// MySQL when configured, else SQLite in the data directory.
fn local_or_mysql(db: &DbArgs, data: &DataDirArgs, problems: &mut Problems) -> StoreSettings {
    db.mysql(problems).unwrap_or_else(|| StoreSettings::Sqlite {
        path: data.sqlite_path(),
    })
}
