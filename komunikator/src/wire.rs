//! Wiring: builds each service's dependencies from the configuration (real
//! adapters, or the embedded ones in single-node mode) and runs it.

use std::sync::Arc;

use anyhow::Context;
use common::auth::Tokens;
use common::bus::{Bus, Events, LocalBus, NatsBus, Subjects};
use common::config::{AuthArgs, HttpArgs, Problems};
use common::ops::Readiness;
use common::password::Passwords;
use common::presence::{LocalPresence, Presence, RedisPresence};
use common::store::{self, Store, StoreSettings};
use common::telemetry::Metrics;
use tokio_util::sync::CancellationToken;

use crate::cli::{AllCmd, ApiCmd, MigrateCmd};

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

/// The three adapters a process runs on.
struct Backends {
    store: Arc<dyn Store>,
    bus: Arc<dyn Bus>,
    presence: Arc<dyn Presence>,
}

pub async fn api(cmd: ApiCmd, shutdown: CancellationToken) -> Result<(), Failure> {
    let mut problems = Problems::default();
    cmd.http.validate(&mut problems);
    cmd.auth.validate(true, &mut problems);
    cmd.redis.validate(&mut problems);
    cmd.prefix.validate(&mut problems);
    let settings = cmd.db.mysql(&mut problems);
    if !cmd.db.is_set() {
        problems.push("DB_HOST or DATABASE_URL is required");
    }
    if cmd.nats.nats_url.is_none() {
        problems.push("NATS_URL is required");
    }
    if cmd.redis.redis_url.is_none() {
        problems.push("REDIS_URL is required");
    }
    problems.into_result().map_err(Failure::Config)?;
    let (Some(settings), Some(nats_url), Some(redis_url), Some(secret)) = (
        settings,
        &cmd.nats.nats_url,
        &cmd.redis.redis_url,
        &cmd.auth.jwt_secret_key,
    ) else {
        unreachable!("validated above");
    };

    let store = open_store(&settings).await?;
    store
        .check_schema()
        .await
        .context("checking the database schema")?;
    let backends = Backends {
        store,
        bus: Arc::new(
            NatsBus::connect(nats_url, "komunikator-api")
                .await
                .context("connecting to NATS")?,
        ),
        presence: Arc::new(
            RedisPresence::connect(redis_url, &cmd.prefix.prefix).context("configuring Redis")?,
        ),
    };
    serve_api(
        backends,
        secret,
        &cmd.auth,
        &cmd.api,
        &cmd.http,
        &cmd.prefix.prefix,
        shutdown,
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
    let bus: Arc<dyn Bus> = match &cmd.nats.nats_url {
        Some(url) => Arc::new(
            NatsBus::connect(url, "komunikator-all")
                .await
                .context("connecting to NATS")?,
        ),
        None => Arc::new(LocalBus::new()),
    };
    let presence: Arc<dyn Presence> = match &cmd.redis.redis_url {
        Some(url) => {
            Arc::new(RedisPresence::connect(url, &cmd.prefix.prefix).context("configuring Redis")?)
        }
        None => Arc::new(LocalPresence::new(cmd.redis.presence_timeout())),
    };
    tracing::info!(
        store = ?settings,
        bus = if cmd.nats.nats_url.is_some() { "NATS" } else { "in-process" },
        presence = if cmd.redis.redis_url.is_some() { "Redis" } else { "in-process" },
        data_dir = %cmd.data.data_dir.display(),
        "starting every service in one process"
    );
    let backends = Backends {
        store,
        bus,
        presence,
    };
    serve_api(
        backends,
        &secret,
        &cmd.auth,
        &cmd.api,
        &cmd.http,
        &cmd.prefix.prefix,
        shutdown,
    )
    .await
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

async fn open_store(settings: &StoreSettings) -> anyhow::Result<Arc<dyn Store>> {
    store::connect(settings)
        .await
        .with_context(|| format!("opening the store ({settings:?})"))
}

async fn serve_api(
    backends: Backends,
    secret: &str,
    auth: &AuthArgs,
    api_args: &api::ApiArgs,
    http: &HttpArgs,
    prefix: &str,
    shutdown: CancellationToken,
) -> Result<(), Failure> {
    let listener = tokio::net::TcpListener::bind(http.listen)
        .await
        .with_context(|| format!("cannot listen on {}", http.listen))?;
    let state = api::AppState::new(api::ApiDeps {
        store: backends.store.clone(),
        events: Events::new(backends.bus.clone(), Subjects::new(prefix)),
        presence: backends.presence.clone(),
        tokens: Tokens::new(secret.as_bytes(), auth.token_ttl()),
        passwords: Passwords::new(api_args.hash_threads(), api_args.password_hash_queue),
    });
    let readiness = Readiness {
        store: Some(backends.store),
        bus: Some(backends.bus),
        presence: Some(backends.presence),
        shutdown,
    };
    let origins = http.origin_allowlist();
    let app = api::router(state, origins.as_deref());
    common::ops::serve(app, readiness, Metrics::new(|_| {}), listener)
        .await
        .context("serving HTTP")?;
    tracing::info!("stopped");
    Ok(())
}
