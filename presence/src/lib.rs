//! The presence service: turns the heartbeats gateways forward into presence
//! state, and announces each transition exactly once: `user_online` on the
//! first heartbeat, `user_offline` once the presence timeout passes without
//! one, to every room the user is a member of at that moment. Replicas
//! share the heartbeats (a NATS queue group) and the state (Redis); the
//! transitions are decided atomically by the presence store, so a replica
//! that dies or restarts causes no storm and misses nothing.

use std::sync::Arc;
use std::time::Duration;

use common::bus::{Bus, BusError, Subjects};
use common::presence::{Beat, Presence};
use common::store::{Store, StoreError};
use futures_util::StreamExt;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

/// How often lapsed users are looked for: offline events go out at most this
/// long after the timeout (well within the contract's timeout + 1 s).
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// The queue group presence replicas share heartbeats in.
pub const QUEUE_GROUP: &str = "presence";

#[derive(Debug, thiserror::Error)]
pub enum PresenceServiceError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("the heartbeat subscription ended")]
    SubscriptionEnded,
}

/// What the presence service needs.
pub struct PresenceDeps {
    pub presence: Arc<dyn Presence>,
    pub store: Arc<dyn Store>,
    pub bus: Arc<dyn Bus>,
    pub subjects: Subjects,
}

/// Counters of the presence service.
#[derive(Debug, Clone)]
pub struct PresenceMetrics {
    heartbeats: Counter,
    online: Counter,
    offline: Counter,
}

impl PresenceMetrics {
    pub fn new(registry: &mut Registry) -> Self {
        let metrics = Self {
            heartbeats: Counter::default(),
            online: Counter::default(),
            offline: Counter::default(),
        };
        registry.register(
            "presence_heartbeats",
            "Heartbeats processed",
            metrics.heartbeats.clone(),
        );
        registry.register(
            "presence_online",
            "Users that came online",
            metrics.online.clone(),
        );
        registry.register(
            "presence_offline",
            "Users that went offline",
            metrics.offline.clone(),
        );
        metrics
    }
}

#[derive(Deserialize)]
struct HeartbeatBody {
    user_name: String,
    /// When the client sent it (Unix ms); absent: now.
    at: Option<i64>,
}

/// Processes heartbeats and lapses until `shutdown`.
pub async fn run(
    deps: PresenceDeps,
    metrics: PresenceMetrics,
    shutdown: CancellationToken,
) -> Result<(), PresenceServiceError> {
    let mut heartbeats = deps
        .bus
        .subscribe_queue(deps.subjects.heartbeats(), QUEUE_GROUP.to_owned())
        .await?;
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tracing::info!("presence running");
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            heartbeat = heartbeats.next() => {
                let Some(heartbeat) = heartbeat else {
                    return Err(PresenceServiceError::SubscriptionEnded);
                };
                match serde_json::from_slice::<HeartbeatBody>(&heartbeat.payload) {
                    Ok(body) => {
                        let at = body.at.unwrap_or_else(common::presence::unix_ms);
                        beat(&deps, &metrics, &body.user_name, at).await;
                    }
                    Err(e) => tracing::warn!(error = %e, "malformed heartbeat ignored"),
                }
            }
            _ = sweep.tick() => lapse(&deps, &metrics).await,
        }
    }
    tracing::info!("presence stopped");
    Ok(())
}

async fn beat(deps: &PresenceDeps, metrics: &PresenceMetrics, user: &str, at: i64) {
    metrics.heartbeats.inc();
    match deps.presence.heartbeat(user, at).await {
        Ok(Beat::Kept) => {}
        Ok(Beat::CameOnline) => announce(deps, metrics, user, true).await,
        Ok(Beat::Returned) => {
            announce(deps, metrics, user, false).await;
            announce(deps, metrics, user, true).await;
        }
        Err(e) => tracing::error!(user, error = %e, "heartbeat not recorded"),
    }
}

async fn lapse(deps: &PresenceDeps, metrics: &PresenceMetrics) {
    match deps.presence.expire().await {
        Ok(users) => {
            for user in users {
                announce(deps, metrics, &user, false).await;
            }
        }
        Err(e) => tracing::error!(error = %e, "lapsed users not read"),
    }
}

/// Emits `user_online`/`user_offline` to every room the user is a member of now.
async fn announce(deps: &PresenceDeps, metrics: &PresenceMetrics, user: &str, online: bool) {
    let (event, counter) = if online {
        ("user_online", &metrics.online)
    } else {
        ("user_offline", &metrics.offline)
    };
    counter.inc();
    let rooms = match deps.store.memberships(user).await {
        Ok(rooms) => rooms,
        Err(e) => {
            report(user, event, &e);
            return;
        }
    };
    let body = serde_json::json!({ "user_name": user }).to_string();
    for room in rooms {
        let subject = deps.subjects.room_event(room.room_id, event);
        if let Err(e) = deps.bus.publish(subject, body.clone().into()).await {
            tracing::error!(user, event, room_id = room.room_id, error = %e, "presence event not published");
        }
    }
    tracing::debug!(user, event, "presence changed");
}

fn report(user: &str, event: &str, e: &StoreError) {
    tracing::error!(user, event, error = %e, "rooms of the user not read; presence event lost");
}
