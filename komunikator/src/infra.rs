//! The infrastructure of one process, built once from its [`Adapters`]:
//! the store, the bus, the chat log, presence, and the shared room list
//! version. Each adapter is chosen here, and only here.

use std::sync::Arc;

use anyhow::Context;
use common::adapters::bus::{Bus, LocalBus, NatsBus};
use common::adapters::chat_log::{ChatLog, EmbeddedChatLog, JetStreamChatLog};
use common::adapters::counter::{CoalescedReads, LocalCounter, RedisCounter, SharedCounter};
use common::adapters::presence::{LocalPresence, Presence, RedisPresence};
use common::adapters::store::{Store, StoreSettings};
use common::domain::subjects::Subjects;

use crate::plan::{Adapters, BusAt, PresenceAt, Schema};
use common::adapters::redis::RedisAt;

/// What the services of a process share.
#[derive(Clone)]
pub struct Infra {
    pub store: Store,
    pub bus: Arc<dyn Bus>,
    /// `None` in a process none of whose services appends or reads chat
    /// messages (presence): it sets up no chat stream.
    pub chat_log: Option<Arc<dyn ChatLog>>,
    /// The NATS connection, when the bus is NATS (the presence snapshot).
    pub nats: Option<NatsBus>,
    /// `None` in a process that keeps no presence.
    pub shared: Option<SharedState>,
    pub subjects: Subjects,
}

/// The state the replicas of a deployment share: presence and the version
/// of the public room list (in Redis, or in process).
#[derive(Clone)]
pub struct SharedState {
    pub presence: Arc<dyn Presence>,
    pub room_list_version: Arc<dyn SharedCounter>,
    /// True when the state lives outside the process (Redis), where it can
    /// be lost and must be restored.
    pub external: bool,
    /// The process's Redis pool, when the state is in Redis (the API's
    /// throttle shares it).
    pub redis: Option<common::adapters::redis::RedisPool>,
}

impl Infra {
    /// The chat log, for a service that needs it.
    pub fn chat_log(&self) -> anyhow::Result<Arc<dyn ChatLog>> {
        self.chat_log
            .clone()
            .context("this process was built without a chat log")
    }

    /// Connects to (or opens) every dependency; fails at once on one that
    /// does not answer. The chat log only `with_chat_log`.
    pub async fn build(
        adapters: &Adapters,
        client_name: &str,
        with_chat_log: bool,
    ) -> anyhow::Result<Self> {
        let subjects = Subjects::new(&adapters.prefix);
        let store = open_store(adapters).await?;
        let (bus, chat_log, nats): (Arc<dyn Bus>, Option<Arc<dyn ChatLog>>, _) = match &adapters.bus
        {
            BusAt::Nats { servers, replicas } => {
                let nats = NatsBus::connect(servers, *replicas, client_name, subjects.clone())
                    .await
                    .context("connecting to NATS")?;
                let log: Option<Arc<dyn ChatLog>> = if with_chat_log {
                    let log = JetStreamChatLog::open(&nats, store.clone())
                        .await
                        .context("setting up the chat stream")?;
                    Some(Arc::new(log))
                } else {
                    None
                };
                (Arc::new(nats.clone()), log, Some(nats))
            }
            BusAt::InProcess => {
                let bus = LocalBus::new();
                let log: Option<Arc<dyn ChatLog>> = with_chat_log.then(|| {
                    Arc::new(EmbeddedChatLog::new(
                        store.clone(),
                        bus.clone(),
                        subjects.clone(),
                    )) as Arc<dyn ChatLog>
                });
                (Arc::new(bus), log, None)
            }
        };
        let shared = match &adapters.presence {
            PresenceAt::Redis { at, timeout } => {
                // One pool per process, shared by everything kept in Redis.
                let pool = match at {
                    RedisAt::Server(url) => common::adapters::redis::connect(url),
                    RedisAt::Cluster(nodes) => common::adapters::redis::connect_cluster(nodes),
                }
                .map_err(anyhow::Error::msg)
                .context("configuring Redis")?;
                Some(SharedState {
                    presence: Arc::new(RedisPresence::new(
                        pool.clone(),
                        &adapters.prefix,
                        *timeout,
                    )),
                    room_list_version: Arc::new(CoalescedReads::new(Arc::new(RedisCounter::new(
                        pool.clone(),
                        format!("{}:room_list_version", adapters.prefix),
                    )))),
                    external: true,
                    redis: Some(pool),
                })
            }
            PresenceAt::InProcess { timeout } => Some(SharedState {
                presence: Arc::new(LocalPresence::new(*timeout)),
                room_list_version: Arc::new(LocalCounter::default()),
                external: false,
                redis: None,
            }),
            PresenceAt::Unused => None,
        };
        Ok(Self {
            store,
            bus,
            chat_log,
            nats,
            shared,
            subjects,
        })
    }
}

/// Opens the store, migrated (single-node mode) or checked to be.
async fn open_store(adapters: &Adapters) -> anyhow::Result<Store> {
    let settings = &adapters.store;
    if let (StoreSettings::Sqlite { .. }, Some(dir)) = (settings, &adapters.data_dir) {
        common::support::data_dir::private_dir(dir)
            .with_context(|| format!("creating the data directory {}", dir.display()))?;
    }
    let store = Store::connect(settings)
        .await
        .with_context(|| format!("opening the store ({settings:?})"))?;
    match adapters.schema {
        Schema::Migrate => store.migrate().await.context("migrating the database")?,
        Schema::Check => store
            .check_schema()
            .await
            .context("checking the database schema")?,
    }
    Ok(store)
}
