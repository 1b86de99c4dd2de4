//! The presence service: turns the heartbeats gateways forward into presence
//! state, and announces each transition exactly once: `user_online` on the
//! first heartbeat, `user_offline` once the presence timeout passes without
//! one, to every room the user is a member of at that moment. Replicas
//! share the heartbeats (a NATS queue group) and the state (Redis); the
//! transitions are decided atomically by the presence store, so a replica
//! that dies or restarts causes no storm and misses nothing.
//!
//! Its shape, as every service's: [`Deps`] in, [`run`] until shutdown; it
//! serves no routes of its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use common::adapters::bus::{Bus, BusError, BusMessage, Subjects, Subscription};
use common::adapters::presence::{Beat, Heartbeat, Presence, PresenceError};
use common::adapters::store::{Store, StoreError};
use common::domain::events::{Events, ServerEvent, UserName};
use common::telemetry::trace_context::BatchSpans;
use futures_util::stream::FuturesUnordered;
use futures_util::{FutureExt, StreamExt};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

/// How often lapsed users are looked for: offline events go out at most this
/// long after the timeout (well within the contract's timeout + 1 s).
pub const SWEEP_INTERVAL: Duration = Duration::from_millis(250);

/// The queue group presence replicas share heartbeats in.
pub const QUEUE_GROUP: &str = "presence";

/// Most heartbeats recorded in one call to the presence store.
const BATCH_MAX: usize = 1000;

/// Snapshot writes in flight at once.
const SNAPSHOT_WRITES: usize = 64;

/// Batches being recorded at once.
const BATCHES_IN_FLIGHT: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum PresenceServiceError {
    #[error(transparent)]
    Bus(#[from] BusError),
    #[error("the heartbeat subscription ended")]
    SubscriptionEnded,
}

mod snapshot;

pub use snapshot::{OnlineSnapshot, SnapshotError};

/// What the presence service needs.
pub struct Deps {
    pub presence: Arc<dyn Presence>,
    pub store: Store,
    pub bus: Arc<dyn Bus>,
    pub subjects: Subjects,
    pub metrics: PresenceMetrics,
    /// Who is online, kept outside the presence store, to restore it from
    /// when it loses its state (Redis restarted empty). `None` with the
    /// in-process presence, which loses nothing while the process runs.
    pub snapshot: Option<OnlineSnapshot>,
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

/// Processes heartbeats and lapses until `shutdown`.
pub async fn run(deps: Deps, shutdown: CancellationToken) -> Result<(), PresenceServiceError> {
    let mut heartbeats = deps
        .bus
        .subscribe_queue(deps.subjects.heartbeats(), QUEUE_GROUP.to_owned())
        .await?;
    let mut sweep = tokio::time::interval(SWEEP_INTERVAL);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Batches recorded at once: while one waits for Redis (or for the
    // database, when many users come online together) the next ones are
    // read, so the subscription never backs up. The scripts are atomic and
    // keep the later deadline, so batches may complete in any order.
    // The sweep runs among them too: awaited on its own, it could wait for
    // a Redis connection that only the batches (not polled meanwhile) hold.
    let mut in_flight: FuturesUnordered<Pin<Box<dyn Future<Output = ()> + Send + '_>>> =
        FuturesUnordered::new();
    tracing::info!("presence running");
    // While the bus is down no heartbeat arrives, so nothing is swept: the
    // presence store then sees a gap in hearing, and moves every deadline
    // later by it before deciding anything (`HEARING_GAP`).
    let mut deaf = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            Some(()) = in_flight.next(), if !in_flight.is_empty() => {}
            heartbeat = heartbeats.next(), if in_flight.len() < BATCHES_IN_FLIGHT => {
                let Some(first) = heartbeat else {
                    return Err(PresenceServiceError::SubscriptionEnded);
                };
                let (beats, spans) = take_batch(first, &mut heartbeats);
                let batch = spans.batch.clone();
                in_flight.push(Box::pin(record(&deps, beats, spans).instrument(batch)));
            }
            _ = sweep.tick() => {
                if deps.bus.check_ready().is_err() {
                    if !deaf {
                        tracing::warn!("bus down: no heartbeats, so nobody lapses until it is back");
                    }
                    deaf = true;
                } else {
                    if deaf {
                        tracing::info!("bus back: deadlines move later by the time nobody could hear");
                    }
                    deaf = false;
                    in_flight.push(Box::pin(lapse(&deps)));
                }
            }
        }
    }
    // Heartbeats already taken from the bus are recorded before stopping.
    while in_flight.next().await.is_some() {}
    tracing::info!("presence stopped");
    Ok(())
}

/// The heartbeat `first` and whatever else has arrived meanwhile, as
/// `(user, client time)`; malformed ones are logged and left out.
fn take_batch(
    first: BusMessage,
    heartbeats: &mut Subscription,
) -> (Vec<(String, i64)>, BatchSpans) {
    let mut batch = vec![first];
    while batch.len() < BATCH_MAX {
        match heartbeats.next().now_or_never() {
            Some(Some(next)) => batch.push(next),
            _ => break,
        }
    }
    let spans = spans(&batch);
    let beats = batch
        .iter()
        .filter_map(|m| match serde_json::from_slice::<Heartbeat>(&m.payload) {
            Ok(beat) => Some((
                beat.user_name,
                beat.at.unwrap_or_else(common::adapters::presence::unix_ms),
            )),
            Err(e) => {
                tracing::warn!(error = %e, "malformed heartbeat ignored");
                None
            }
        })
        .collect();
    (beats, spans)
}

/// The spans of a batch of heartbeats, when traces are exported: one per
/// heartbeat, continuing the trace of the gateway that forwarded it, and
/// the batch's (the Redis call, the presence events), linked to each.
fn spans(batch: &[BusMessage]) -> BatchSpans {
    BatchSpans::consumed(
        batch.iter().map(|m| m.trace.as_ref()),
        QUEUE_GROUP,
        "process heartbeat",
        "record heartbeats",
    )
}

/// Restores the presence store's lost state from the snapshot (only the
/// first replica to try does it).
async fn restore(deps: &Deps) {
    let users = match &deps.snapshot {
        Some(snapshot) => match snapshot.users().await {
            Ok(users) => users,
            Err(e) => {
                tracing::error!(error = %e, "presence state lost and not restored");
                Vec::new()
            }
        },
        None => Vec::new(),
    };
    match deps.presence.restore(&users).await {
        Ok(true) => tracing::warn!(online = users.len(), "presence state was lost; restored"),
        Ok(false) => {}
        Err(e) => tracing::error!(error = %e, "presence state not restored"),
    }
}

/// Runs `call` on the presence store; if the store lost its state, restores
/// it first and runs `call` again.
async fn restoring<T, F>(deps: &Deps, call: impl Fn() -> F) -> Result<T, PresenceError>
where
    F: Future<Output = Result<T, PresenceError>>,
{
    match call().await {
        Err(PresenceError::Lost) => {
            restore(deps).await;
            call().await
        }
        other => other,
    }
}

/// Records a batch of heartbeats and announces the transitions; `_spans`
/// (the batch's traces) end when it is done.
async fn record(deps: &Deps, beats: Vec<(String, i64)>, _spans: BatchSpans) {
    let metrics = &deps.metrics;
    metrics.heartbeats.inc_by(beats.len() as u64);
    let outcomes = match restoring(deps, || deps.presence.heartbeats(&beats)).await {
        Ok(outcomes) => outcomes,
        Err(e) => {
            tracing::error!(heartbeats = beats.len(), error = %e, "heartbeats not recorded");
            return;
        }
    };
    let mut changes = Vec::new();
    for ((user, _), outcome) in beats.iter().zip(outcomes) {
        match outcome {
            Beat::Kept => {}
            Beat::CameOnline => changes.push((user.clone(), Event::Online)),
            Beat::Returned => {
                changes.push((user.clone(), Event::Offline));
                changes.push((user.clone(), Event::Online));
            }
        }
    }
    announce(deps, changes).await;
}

/// Announces every user whose timeout has passed: a batch at a time until
/// a batch comes back short, so that many users lapsing together (a gateway
/// gone) are all announced in this sweep, not one batch per sweep.
async fn lapse(deps: &Deps) {
    loop {
        match restoring(deps, || deps.presence.expire()).await {
            Ok(users) => {
                let full = users.len() >= common::adapters::presence::EXPIRE_BATCH;
                let changes = users
                    .into_iter()
                    .map(|user| (user, Event::Offline))
                    .collect();
                announce(deps, changes).await;
                if !full {
                    return;
                }
            }
            Err(e) => {
                tracing::error!(error = %e, "lapsed users not read");
                return;
            }
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Event {
    Online,
    Offline,
}

/// Emits each change to every room its user is a member of now, in order;
/// the rooms of all the users are read in one query.
async fn announce(deps: &Deps, changes: Vec<(String, Event)>) {
    let metrics = &deps.metrics;
    if changes.is_empty() {
        return;
    }
    if let Some(snapshot) = &deps.snapshot {
        record_in_snapshot(snapshot, &changes).await;
    }
    let mut users: Vec<String> = changes.iter().map(|(user, _)| user.clone()).collect();
    users.sort_unstable();
    users.dedup();
    let memberships = match deps.store.rooms_of(&users).await {
        Ok(memberships) => memberships,
        Err(e) => {
            report(changes.len(), &e);
            return;
        }
    };
    let mut rooms: std::collections::HashMap<&str, Vec<i64>> = std::collections::HashMap::new();
    for (user, room_id) in &memberships {
        rooms.entry(user.as_str()).or_default().push(*room_id);
    }
    let events = Events::new(deps.bus.clone(), deps.subjects.clone());
    for (user, event) in &changes {
        let counter = match event {
            Event::Online => &metrics.online,
            Event::Offline => &metrics.offline,
        };
        counter.inc();
        for &room_id in rooms.get(user.as_str()).into_iter().flatten() {
            let user = UserName::new(user.as_str());
            events
                .publish(match event {
                    Event::Online => ServerEvent::UserOnline { room_id, user },
                    Event::Offline => ServerEvent::UserOffline { room_id, user },
                })
                .await;
        }
    }
}

/// Writes each user's newest state to the snapshot, many at once (a gateway
/// gone takes hundreds offline in one sweep; one write at a time would hold
/// their events back).
async fn record_in_snapshot(snapshot: &OnlineSnapshot, changes: &[(String, Event)]) {
    let newest: std::collections::HashMap<String, Event> = changes.iter().cloned().collect();
    let writes = futures_util::stream::iter(newest)
        .map(|(user, event)| async move {
            let written = match event {
                Event::Online => snapshot.online(&user).await,
                Event::Offline => snapshot.offline(&user).await,
            };
            if let Err(e) = written {
                tracing::warn!(user = %user, error = %e, "presence snapshot not updated");
            }
        })
        .buffer_unordered(SNAPSHOT_WRITES);
    writes.collect::<()>().await;
}

fn report(changes: usize, e: &StoreError) {
    tracing::error!(changes, error = %e, "rooms of the users not read; presence events lost");
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use common::adapters::bus::{BusMessage, Subscription};

    use super::*;

    fn beat(payload: &'static str) -> BusMessage {
        BusMessage {
            subject: "kom.presence.heartbeat".into(),
            payload: Bytes::from_static(payload.as_bytes()),
            sequence: None,
            previous: None,
            trace: None,
        }
    }

    #[test]
    fn a_batch_takes_what_has_arrived_up_to_its_limit_and_skips_malformed_heartbeats() {
        let waiting: Vec<BusMessage> = std::iter::once(beat(r#"{"user_name":"bob"}"#))
            .chain(std::iter::once(beat("not json")))
            .chain(std::iter::repeat_n(
                beat(r#"{"user_name":"cat","at":7}"#),
                BATCH_MAX,
            ))
            .collect();
        let mut heartbeats: Subscription = Box::pin(futures_util::stream::iter(waiting));
        let before = common::adapters::presence::unix_ms();
        let (beats, _) = take_batch(beat(r#"{"user_name":"ann","at":5}"#), &mut heartbeats);
        // The first, then what was waiting, BATCH_MAX messages in all; the
        // malformed one counts against the limit and is left out.
        assert_eq!(beats.len(), BATCH_MAX - 1);
        assert_eq!(beats[0], ("ann".to_owned(), 5));
        assert_eq!(beats[1].0, "bob");
        assert!(beats[1].1 >= before, "a heartbeat without a time is now");
        assert!(beats[2..].iter().all(|b| *b == ("cat".to_owned(), 7)));
        // The three left wait for the next batch, after its first.
        let (rest, _) = take_batch(beat(r#"{"user_name":"dan"}"#), &mut heartbeats);
        assert_eq!(rest.len(), 4);
        assert_eq!(rest[0].0, "dan");
    }
}
