//! Runs the services of a [`Plan`] in one process: builds each service's
//! dependencies from the shared [`Infra`], serves their routes together on
//! one port with the operational endpoints, and runs their background work.
//! The first service that fails (or ends early) stops the others.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use anyhow::Context;
use common::accounts::password::Passwords;
use common::accounts::tokens::Tokens;
use common::adapters::throttle::Limit;
use common::adapters::throttle::LocalThrottle;
use common::adapters::throttle::RedisThrottle;
use common::adapters::throttle::Throttle;
use common::domain::events::Events;
use common::edge::config::HttpArgs;
use common::edge::ops::Readiness;
use common::edge::proxy::ProxyNet;
use common::telemetry::metrics::Metrics;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;

use crate::infra::{Infra, SharedState};
use crate::plan::{Failure, Plan, Service, TokenConfig};

/// A service's background work.
type Task = Pin<Box<dyn Future<Output = anyhow::Result<()>> + Send>>;

/// What one service adds to the process: routes to serve, work to run.
struct Started {
    routes: Option<axum::Router>,
    task: Option<Task>,
}

/// Builds the infrastructure once, starts every service of the plan, and
/// serves until `shutdown` (or until one of them fails).
pub async fn serve(plan: Plan, shutdown: CancellationToken) -> Result<(), Failure> {
    // Every service but presence appends or reads chat messages.
    let with_chat_log = plan
        .services
        .iter()
        .any(|s| !matches!(s, Service::Presence));
    let infra = Infra::build(&plan.adapters, plan.name, with_chat_log).await?;
    tracing::info!(
        store = ?plan.adapters.store,
        bus = ?plan.adapters.bus,
        presence = ?plan.adapters.presence,
        services = ?plan.services.iter().map(Service::name).collect::<Vec<_>>(),
        "starting"
    );
    let mut registry = Metrics::registry();
    if let Some(log) = &infra.chat_log {
        log.register_metrics(&mut registry);
    }
    let mut app = axum::Router::new();
    let mut tasks = Vec::new();
    let origins = plan.http.origin_allowlist();
    for service in plan.services {
        let started = start(service, &infra, &plan.http, &mut registry, &shutdown).await?;
        if let Some(routes) = started.routes {
            app = app.merge(routes);
        }
        tasks.extend(started.task);
    }
    let readiness = Readiness {
        store: Some(infra.store.clone()),
        bus: Some(infra.bus.clone()),
        chat_log: infra.chat_log.clone(),
        presence: infra.shared.as_ref().map(|s| s.presence.clone()),
        shutdown: shutdown.clone(),
    };
    let listener = tokio::net::TcpListener::bind(plan.http.listen)
        .await
        .with_context(|| format!("cannot listen on {}", plan.http.listen))?;
    let metrics = Metrics::from_registry(registry);
    let limits = plan.http.limits();
    let server: Task = Box::pin(async move {
        common::edge::serve::serve(app, readiness, metrics, listener, &origins, limits)
            .await
            .context("serving HTTP")
    });
    run_until_one_stops(std::iter::once(server).chain(tasks).collect(), shutdown).await
}

impl Service {
    fn name(&self) -> &'static str {
        match self {
            Self::Api { .. } => "api",
            Self::Gateway { .. } => "gateway",
            Self::Persister(_) => "persister",
            Self::Presence => "presence",
        }
    }
}

/// Builds one service's dependencies and starts it.
async fn start(
    service: Service,
    infra: &Infra,
    http: &HttpArgs,
    registry: &mut Registry,
    shutdown: &CancellationToken,
) -> anyhow::Result<Started> {
    let shutdown = shutdown.clone();
    Ok(match service {
        Service::Api { tokens, args } => Started {
            routes: Some(api::routes(api_deps(
                infra,
                &tokens,
                &args,
                &http.trusted_proxies,
                registry,
            )?)),
            task: None,
        },
        Service::Gateway { tokens, args } => {
            let gateway = gateway::Gateway::new(gateway::Deps {
                store: infra.store.clone(),
                bus: infra.bus.clone(),
                chat_log: infra.chat_log()?,
                subjects: infra.subjects.clone(),
                tokens: self::tokens(&tokens),
                allowed_origins: http.origin_allowlist(),
                rate: gateway::RateLimit {
                    per_second: args.message_rate_limit,
                    burst: args.message_rate_burst,
                },
                connect_timeout: std::time::Duration::from_secs(args.socket_connect_timeout_secs),
                ping_interval: std::time::Duration::from_secs(args.ping_interval_secs),
                ping_timeout: std::time::Duration::from_secs(args.ping_timeout_secs),
                max_sockets_per_user: args.max_sockets_per_user,
                per_user_events_max_sockets: args.per_user_events_max_sockets,
                metrics: gateway::GatewayMetrics::new(registry),
            });
            Started {
                routes: Some(gateway.routes()),
                task: Some(Box::pin(async move {
                    gateway.run(shutdown).await.context("gateway")
                })),
            }
        }
        Service::Persister(args) => {
            let deps = persister::Deps {
                chat_log: infra.chat_log()?,
                args,
                metrics: persister::PersisterMetrics::new(registry),
            };
            Started {
                routes: None,
                task: Some(Box::pin(async move {
                    persister::run(deps, shutdown).await.context("persister")
                })),
            }
        }
        Service::Presence => {
            let deps = presence_deps(infra, registry).await?;
            Started {
                routes: None,
                task: Some(Box::pin(async move {
                    presence::run(deps, shutdown).await.context("presence")
                })),
            }
        }
    })
}

fn tokens(config: &TokenConfig) -> Tokens {
    Tokens::new(config.secret.as_bytes(), config.ttl)
}

fn api_deps(
    infra: &Infra,
    tokens: &TokenConfig,
    args: &api::ApiArgs,
    trusted_proxies: &[ProxyNet],
    registry: &mut Registry,
) -> anyhow::Result<api::Deps> {
    let shared = infra.shared.as_ref().context("the API needs presence")?;
    Ok(api::Deps {
        store: infra.store.clone(),
        events: Events::new(infra.bus.clone(), infra.subjects.clone()),
        chat_log: infra.chat_log()?,
        presence: shared.presence.clone(),
        tokens: self::tokens(tokens),
        passwords: Passwords::new(args.hash_threads(), args.password_hash_queue).register(registry),
        room_list: api::room_list::RoomList::new(shared.room_list_version.clone()),
        throttle: throttle(shared, infra, args.attempt_limit()),
        registrations: throttle(shared, infra, args.registration_limit()),
        trusted_proxies: trusted_proxies.to_vec(),
        refresh_ttl: std::time::Duration::from_secs(args.refresh_token_expires),
    })
}

/// A throttle of `limit`, shared by the replicas through Redis when the
/// deployment keeps its state there.
fn throttle(shared: &SharedState, infra: &Infra, limit: Limit) -> Arc<dyn Throttle> {
    match &shared.redis {
        Some(pool) => Arc::new(RedisThrottle::new(
            pool.clone(),
            infra.subjects.prefix(),
            limit,
        )),
        None => Arc::new(LocalThrottle::new(limit)),
    }
}

/// With presence in Redis and the bus on NATS, who is online is also kept
/// in a JetStream stream, to restore Redis from when it loses its state.
async fn presence_deps(infra: &Infra, registry: &mut Registry) -> anyhow::Result<presence::Deps> {
    let shared = infra
        .shared
        .as_ref()
        .context("the presence service needs presence")?;
    let snapshot = match (&infra.nats, shared.external) {
        (Some(nats), true) => Some(
            presence::OnlineSnapshot::open(nats, &infra.subjects)
                .await
                .context("opening the presence snapshot")?,
        ),
        _ => None,
    };
    Ok(presence::Deps {
        presence: shared.presence.clone(),
        store: infra.store.clone(),
        bus: infra.bus.clone(),
        subjects: infra.subjects.clone(),
        metrics: presence::PresenceMetrics::new(registry),
        snapshot,
    })
}

/// Runs the server and the background tasks until shutdown; the first of
/// them to fail (or to end early) stops everything with its error.
async fn run_until_one_stops(tasks: Vec<Task>, shutdown: CancellationToken) -> Result<(), Failure> {
    let mut running: Vec<tokio::task::JoinHandle<anyhow::Result<()>>> =
        tasks.into_iter().map(tokio::spawn).collect();
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
