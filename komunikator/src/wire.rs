//! Wiring: builds each service's dependencies from the configuration (real
//! adapters, or the embedded ones in single-node mode) and runs it. In
//! `all`, the first service that fails stops the process.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use common::auth::Tokens;
use common::bus::{Bus, Events, LocalBus, NatsBus, Subjects};
use common::config::{AuthArgs, DbArgs, HttpArgs, PrefixArgs, Problems, RedisArgs};
use common::counter::{Coalesced, LocalCounter, RedisCounter, SharedCounter};
use common::ops::Readiness;
use common::password::Passwords;
use common::presence::{LocalPresence, Presence, RedisPresence};
use common::store::{self, Store, StoreSettings};
use common::telemetry::Metrics;
use tokio_util::sync::CancellationToken;

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

type Task = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

pub async fn api(cmd: ApiCmd, shutdown: CancellationToken) -> Result<(), Failure> {
    let mut problems = Problems::default();
    cmd.http.validate(&mut problems);
    cmd.auth.validate(true, &mut problems);
    cmd.redis.validate(&mut problems);
    cmd.prefix.validate(&mut problems);
    let settings = require_mysql(&cmd.db, &mut problems);
    let nats_url = require(&cmd.nats.nats_url, "NATS_URL", &mut problems);
    let redis_url = require(&cmd.redis.redis_url, "REDIS_URL", &mut problems);
    problems.into_result().map_err(Failure::Config)?;
    let subjects = Subjects::new(&cmd.prefix.prefix);

    let store = open_current_store(&settings).await?;
    let nats = connect_nats(&nats_url, "komunikator-api", &subjects).await?;
    // Reads merge the messages not stored yet from the chat stream.
    ensure_chat_stream(&nats, &store).await?;
    let bus: Arc<dyn Bus> = Arc::new(nats);
    let presence: Arc<dyn Presence> =
        Arc::new(redis_presence(&redis_url, &cmd.prefix, &cmd.redis)?);
    let secret = cmd.auth.jwt_secret_key.clone().unwrap_or_default();
    let room_list_version = Arc::new(room_list_version(&redis_url, &cmd.prefix)?);
    let app = api_router(
        &store,
        &bus,
        &presence,
        &subjects,
        &secret,
        &cmd.auth,
        &cmd.api,
        room_list_version,
    );
    let readiness = readiness(Some(store), Some(bus), Some(presence), &shutdown);
    serve(app, readiness, Metrics::new(), &cmd.http, vec![]).await
}

pub async fn gateway(cmd: GatewayCmd, shutdown: CancellationToken) -> Result<(), Failure> {
    let mut problems = Problems::default();
    cmd.http.validate(&mut problems);
    cmd.auth.validate(true, &mut problems);
    cmd.prefix.validate(&mut problems);
    let settings = require_mysql(&cmd.db, &mut problems);
    let nats_url = require(&cmd.nats.nats_url, "NATS_URL", &mut problems);
    problems.into_result().map_err(Failure::Config)?;
    let subjects = Subjects::new(&cmd.prefix.prefix);

    let store = open_current_store(&settings).await?;
    let nats = connect_nats(&nats_url, "komunikator-gateway", &subjects).await?;
    ensure_chat_stream(&nats, &store).await?;
    let bus: Arc<dyn Bus> = Arc::new(nats);
    let secret = cmd.auth.jwt_secret_key.clone().unwrap_or_default();
    let (metrics, gateway_metrics) = Metrics::with(gateway::GatewayMetrics::new);
    let deps = gateway_deps(
        &store,
        &bus,
        &subjects,
        &secret,
        &cmd.auth,
        &cmd.gateway,
        &cmd.http,
        gateway_metrics,
    );
    let (layer, gateway) = gateway::build(deps);
    let run = gateway_task(gateway, &shutdown);
    let readiness = readiness(Some(store), Some(bus), None, &shutdown);
    serve(
        gateway::mount(axum::Router::new(), layer),
        readiness,
        metrics,
        &cmd.http,
        vec![run],
    )
    .await
}

pub async fn persister(cmd: PersisterCmd, shutdown: CancellationToken) -> Result<(), Failure> {
    let mut problems = Problems::default();
    cmd.http.validate(&mut problems);
    cmd.prefix.validate(&mut problems);
    let settings = require_mysql(&cmd.db, &mut problems);
    let nats_url = require(&cmd.nats.nats_url, "NATS_URL", &mut problems);
    problems.into_result().map_err(Failure::Config)?;
    let subjects = Subjects::new(&cmd.prefix.prefix);

    let store = open_current_store(&settings).await?;
    let nats = connect_nats(&nats_url, "komunikator-persister", &subjects).await?;
    let (metrics, persister_metrics) = Metrics::with(persister::PersisterMetrics::new);
    let run = persister_task(
        nats.clone(),
        store.clone(),
        cmd.persister.clone(),
        persister_metrics,
        &shutdown,
    );
    let readiness = readiness(Some(store), Some(Arc::new(nats)), None, &shutdown);
    serve(
        axum::Router::new(),
        readiness,
        metrics,
        &cmd.http,
        vec![run],
    )
    .await
}

pub async fn presence(cmd: PresenceCmd, shutdown: CancellationToken) -> Result<(), Failure> {
    let mut problems = Problems::default();
    cmd.http.validate(&mut problems);
    cmd.redis.validate(&mut problems);
    cmd.prefix.validate(&mut problems);
    let settings = require_mysql(&cmd.db, &mut problems);
    let nats_url = require(&cmd.nats.nats_url, "NATS_URL", &mut problems);
    let redis_url = require(&cmd.redis.redis_url, "REDIS_URL", &mut problems);
    problems.into_result().map_err(Failure::Config)?;
    let subjects = Subjects::new(&cmd.prefix.prefix);

    let store = open_current_store(&settings).await?;
    let nats = connect_nats(&nats_url, "komunikator-presence", &subjects).await?;
    let snapshot = presence_snapshot(&nats, &subjects).await?;
    let bus: Arc<dyn Bus> = Arc::new(nats);
    let presence: Arc<dyn Presence> =
        Arc::new(redis_presence(&redis_url, &cmd.prefix, &cmd.redis)?);
    let (metrics, presence_metrics) = Metrics::with(presence::PresenceMetrics::new);
    let run = presence_task(
        &store,
        &bus,
        &presence,
        &subjects,
        Some(snapshot),
        presence_metrics,
        &shutdown,
    );
    let readiness = readiness(Some(store), Some(bus), Some(presence), &shutdown);
    serve(
        axum::Router::new(),
        readiness,
        metrics,
        &cmd.http,
        vec![run],
    )
    .await
}

pub async fn all(cmd: AllCmd, shutdown: CancellationToken) -> Result<(), Failure> {
    let mut problems = Problems::default();
    cmd.http.validate(&mut problems);
    cmd.auth.validate(false, &mut problems);
    cmd.redis.validate(&mut problems);
    cmd.prefix.validate(&mut problems);
    let settings = cmd
        .db
        .mysql(&mut problems)
        .unwrap_or_else(|| StoreSettings::Sqlite {
            path: cmd.data.sqlite_path(),
        });
    if matches!(settings, StoreSettings::MySql { .. }) && cmd.auth.jwt_secret_key.is_none() {
        problems.push("JWT_SECRET_KEY is required when the data lives in MySQL");
    }
    problems.into_result().map_err(Failure::Config)?;
    let subjects = Subjects::new(&cmd.prefix.prefix);

    if matches!(settings, StoreSettings::Sqlite { .. }) {
        cmd.data.ensure().with_context(|| {
            format!(
                "creating the data directory {}",
                cmd.data.data_dir.display()
            )
        })?;
    }
    let secret = match &cmd.auth.jwt_secret_key {
        Some(secret) => secret.clone(),
        None => cmd
            .data
            .jwt_secret()
            .context("reading the JWT secret in the data directory")?,
    };
    let store = open_store(&settings).await?;
    store.migrate().await.context("migrating the database")?;

    let mut tasks = Vec::new();
    let (metrics, (persister_metrics, presence_metrics, gateway_metrics)) = Metrics::with(|r| {
        (
            persister::PersisterMetrics::new(r),
            presence::PresenceMetrics::new(r),
            gateway::GatewayMetrics::new(r),
        )
    });
    let mut snapshot = None;
    let bus: Arc<dyn Bus> = match &cmd.nats.nats_url {
        Some(url) => {
            let nats = connect_nats(url, "komunikator-all", &subjects).await?;
            // Redis can lose what in-process presence cannot.
            if cmd.redis.redis_url.is_some() {
                snapshot = Some(presence_snapshot(&nats, &subjects).await?);
            }
            tasks.push(persister_task(
                nats.clone(),
                store.clone(),
                cmd.persister.clone(),
                persister_metrics,
                &shutdown,
            ));
            ensure_chat_stream(&nats, &store).await?;
            Arc::new(nats)
        }
        None => Arc::new(LocalBus::new(store.clone(), subjects.clone())),
    };
    let presence: Arc<dyn Presence> = match &cmd.redis.redis_url {
        Some(url) => Arc::new(redis_presence(url, &cmd.prefix, &cmd.redis)?),
        None => Arc::new(LocalPresence::new(cmd.redis.presence_timeout())),
    };
    // With Redis, several `all` processes may serve one deployment.
    let room_list_version: Arc<dyn SharedCounter> = match &cmd.redis.redis_url {
        Some(url) => Arc::new(room_list_version(url, &cmd.prefix)?),
        None => Arc::new(LocalCounter::default()),
    };
    tracing::info!(
        store = ?settings,
        bus = if cmd.nats.nats_url.is_some() { "NATS" } else { "in-process" },
        presence = if cmd.redis.redis_url.is_some() { "Redis" } else { "in-process" },
        data_dir = %cmd.data.data_dir.display(),
        "starting every service in one process"
    );
    let deps = gateway_deps(
        &store,
        &bus,
        &subjects,
        &secret,
        &cmd.auth,
        &cmd.gateway,
        &cmd.http,
        gateway_metrics,
    );
    let (layer, gateway) = gateway::build(deps);
    tasks.push(gateway_task(gateway, &shutdown));
    tasks.push(presence_task(
        &store,
        &bus,
        &presence,
        &subjects,
        snapshot,
        presence_metrics,
        &shutdown,
    ));
    let api = api_router(
        &store,
        &bus,
        &presence,
        &subjects,
        &secret,
        &cmd.auth,
        &cmd.api,
        room_list_version,
    );
    let app = gateway::mount(api, layer);
    let readiness = readiness(Some(store), Some(bus), Some(presence), &shutdown);
    serve(app, readiness, metrics, &cmd.http, tasks).await
}

pub async fn migrate(cmd: MigrateCmd) -> Result<(), Failure> {
    let mut problems = Problems::default();
    let settings = cmd
        .db
        .mysql(&mut problems)
        .unwrap_or_else(|| StoreSettings::Sqlite {
            path: cmd.data.sqlite_path(),
        });
    problems.into_result().map_err(Failure::Config)?;
    if matches!(settings, StoreSettings::Sqlite { .. }) {
        cmd.data.ensure().context("creating the data directory")?;
    }
    let store = open_store(&settings).await?;
    store.migrate().await.context("migrating the database")?;
    store
        .check_schema()
        .await
        .context("checking the migrated schema")?;
    tracing::info!(store = ?settings, "database migrated");
    Ok(())
}

fn require_mysql(db: &DbArgs, problems: &mut Problems) -> StoreSettings {
    let settings = db.mysql(problems);
    if !db.is_set() {
        problems.push("DB_HOST or DATABASE_URL is required");
    }
    // Unused when a problem was pushed: the caller stops before connecting.
    settings.unwrap_or(StoreSettings::Sqlite {
        path: Default::default(),
    })
}

fn require(value: &Option<String>, name: &str, problems: &mut Problems) -> String {
    if value.is_none() {
        problems.push(format!("{name} is required"));
    }
    value.clone().unwrap_or_default()
}

/// The store of a separate service: the schema must already be migrated.
async fn open_current_store(settings: &StoreSettings) -> anyhow::Result<Arc<dyn Store>> {
    let store = open_store(settings).await?;
    store
        .check_schema()
        .await
        .context("checking the database schema")?;
    Ok(store)
}

async fn open_store(settings: &StoreSettings) -> anyhow::Result<Arc<dyn Store>> {
    store::connect(settings)
        .await
        .with_context(|| format!("opening the store ({settings:?})"))
}

/// The chat stream, set up to start above the ids already stored.
async fn ensure_chat_stream(nats: &NatsBus, store: &Arc<dyn Store>) -> anyhow::Result<()> {
    let floor = store
        .max_chat_id()
        .await
        .context("reading the largest chat id")?;
    nats.ensure_chat_stream(floor)
        .await
        .context("setting up the chat stream")?;
    Ok(())
}

fn redis_presence(
    url: &str,
    prefix: &PrefixArgs,
    redis: &RedisArgs,
) -> anyhow::Result<RedisPresence> {
    RedisPresence::connect(url, &prefix.prefix, redis.presence_timeout())
        .context("configuring Redis")
}

async fn presence_snapshot(
    nats: &NatsBus,
    subjects: &Subjects,
) -> anyhow::Result<presence::OnlineSnapshot> {
    presence::OnlineSnapshot::open(nats, subjects)
        .await
        .context("opening the presence snapshot")
}

/// The version of the public room list, shared by the API replicas; one
/// Redis read at a time serves every request waiting for it.
fn room_list_version(url: &str, prefix: &PrefixArgs) -> anyhow::Result<Coalesced> {
    let counter = RedisCounter::connect(url, format!("{}:room_list_version", prefix.prefix))
        .context("configuring Redis")?;
    Ok(Coalesced::new(Arc::new(counter)))
}

async fn connect_nats(url: &str, name: &str, subjects: &Subjects) -> anyhow::Result<NatsBus> {
    NatsBus::connect(url, name, subjects.clone())
        .await
        .context("connecting to NATS")
}

#[allow(clippy::too_many_arguments)] // one call per wiring; a struct would only rename them
fn api_router(
    store: &Arc<dyn Store>,
    bus: &Arc<dyn Bus>,
    presence: &Arc<dyn Presence>,
    subjects: &Subjects,
    secret: &str,
    auth: &AuthArgs,
    api_args: &api::ApiArgs,
    room_list_version: Arc<dyn SharedCounter>,
) -> axum::Router {
    let state = api::AppState::new(api::ApiDeps {
        store: store.clone(),
        events: Events::new(bus.clone(), subjects.clone()),
        bus: bus.clone(),
        presence: presence.clone(),
        tokens: Tokens::new(secret.as_bytes(), auth.token_ttl()),
        passwords: Passwords::new(api_args.hash_threads(), api_args.password_hash_queue),
        room_list: api::room_list::RoomList::new(room_list_version),
    });
    api::router(state)
}

#[allow(clippy::too_many_arguments)] // one call per wiring; a struct would only rename them
fn gateway_deps(
    store: &Arc<dyn Store>,
    bus: &Arc<dyn Bus>,
    subjects: &Subjects,
    secret: &str,
    auth: &AuthArgs,
    args: &gateway::GatewayArgs,
    http: &HttpArgs,
    metrics: gateway::GatewayMetrics,
) -> gateway::GatewayDeps {
    gateway::GatewayDeps {
        store: store.clone(),
        bus: bus.clone(),
        subjects: subjects.clone(),
        tokens: Tokens::new(secret.as_bytes(), auth.token_ttl()),
        allowed_origins: http.origin_allowlist(),
        rate: gateway::RateLimit {
            per_second: args.message_rate_limit,
            burst: args.message_rate_burst,
        },
        metrics,
    }
}

fn gateway_task(gateway: Arc<gateway::Gateway>, shutdown: &CancellationToken) -> Task {
    let shutdown = shutdown.clone();
    Box::pin(async move { gateway.run(shutdown).await.context("gateway") })
}

fn persister_task(
    nats: NatsBus,
    store: Arc<dyn Store>,
    args: persister::PersisterArgs,
    metrics: persister::PersisterMetrics,
    shutdown: &CancellationToken,
) -> Task {
    let shutdown = shutdown.clone();
    Box::pin(async move {
        persister::run(&nats, store, &args, metrics, shutdown)
            .await
            .context("persister")
    })
}

fn presence_task(
    store: &Arc<dyn Store>,
    bus: &Arc<dyn Bus>,
    presence: &Arc<dyn Presence>,
    subjects: &Subjects,
    snapshot: Option<presence::OnlineSnapshot>,
    metrics: presence::PresenceMetrics,
    shutdown: &CancellationToken,
) -> Task {
    let deps = presence::PresenceDeps {
        presence: presence.clone(),
        store: store.clone(),
        bus: bus.clone(),
        subjects: subjects.clone(),
        snapshot,
    };
    let shutdown = shutdown.clone();
    Box::pin(async move {
        presence::run(deps, metrics, shutdown)
            .await
            .context("presence")
    })
}

fn readiness(
    store: Option<Arc<dyn Store>>,
    bus: Option<Arc<dyn Bus>>,
    presence: Option<Arc<dyn Presence>>,
    shutdown: &CancellationToken,
) -> Readiness {
    Readiness {
        store,
        bus,
        presence,
        shutdown: shutdown.clone(),
    }
}

/// Serves HTTP and runs the background `tasks` until shutdown; the first of
/// them to fail (or to end early) stops everything with its error.
async fn serve(
    app: axum::Router,
    readiness: Readiness,
    metrics: Metrics,
    http: &HttpArgs,
    tasks: Vec<Task>,
) -> Result<(), Failure> {
    let shutdown = readiness.shutdown.clone();
    let origins = http.origin_allowlist();
    let listener = tokio::net::TcpListener::bind(http.listen)
        .await
        .with_context(|| format!("cannot listen on {}", http.listen))?;
    let server: Task = Box::pin(async move {
        common::ops::serve(app, readiness, metrics, listener, &origins)
            .await
            .context("serving HTTP")
    });
    let mut running: Vec<tokio::task::JoinHandle<anyhow::Result<()>>> = std::iter::once(server)
        .chain(tasks)
        .map(tokio::spawn)
        .collect();
    let mut failure = None;
    while !running.is_empty() {
        let (done, _, rest) = futures_util::future::select_all(running).await;
        running = rest;
        let outcome = done.context("a service panicked").and_then(|r| r);
        if let Err(e) = outcome {
            failure.get_or_insert(e);
        }
        // Whatever ends first (a failure, or the server after a signal)
        // stops the others.
        shutdown.cancel();
    }
    match failure {
        Some(e) => Err(Failure::Runtime(e)),
        None => {
            tracing::info!("stopped");
            Ok(())
        }
    }
}
