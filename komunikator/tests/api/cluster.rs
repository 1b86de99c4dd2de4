//! The deployment users run: the distributed services behind nginx on a
//! three-server NATS cluster (the shipped `deploy/nats/cluster.conf`, a
//! current nats-server) with every stream on all three
//! (`NATS_STREAM_REPLICAS=3`). The chat stream's leader is killed under
//! load and restarted, twice: nothing acknowledged is lost, duplicated,
//! reordered or missed by a member, no send is refused, acks are back to
//! normal soon after NATS elects a new leader, and every socket stays
//! connected (a service whose server died moves to another).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::harness::{Backend, Options, TestApp, User, eventually};
use crate::nginx::Proxied;
use crate::servers::NatsCluster;
use crate::sio::{self, Auth, Socket};

/// Rooms, members per room, and senders per room (each a socket of its
/// own that sends one message at a time at [`SEND_EVERY`]).
const ROOMS: usize = 2;
const MEMBERS: usize = 3;
const SENDERS: usize = 2;
const SEND_EVERY: Duration = Duration::from_millis(25);

/// What the senders saw: each acknowledged `(room, chat_id)` and the ack's
/// latency, sends refused, and when each was acknowledged.
#[derive(Default)]
struct Sent {
    acked: Vec<(i64, i64, Instant, Duration)>,
    refused: Vec<String>,
}

/// One sender: a socket of `user` in `room`, sending until `stop`, each
/// message with a `client_msg_id` (a client resends with it after code 8;
/// none may come).
async fn send_until(
    url: String,
    user: User,
    room: i64,
    stop: CancellationToken,
    sent: Arc<Mutex<Sent>>,
) -> Socket {
    let mut sock = Socket::connect(&url, Auth::Payload(&user.token))
        .await
        .expect("sender connects");
    sock.join(room).await;
    let mut i = 0u64;
    loop {
        let started = Instant::now();
        let payload = json!({ "room_id": room, "message": format!("{} #{i}", user.name),
                              "client_msg_id": format!("{}-{i}", user.name) });
        // A message sent is waited for, stop or not: it is counted either way.
        if stop.is_cancelled() {
            return sock;
        }
        let ack = sock
            .emit_with_ack_within("message", payload, Duration::from_secs(20))
            .await;
        record(&sent, room, &ack, started.elapsed());
        i += 1;
        tokio::time::sleep(SEND_EVERY.saturating_sub(started.elapsed())).await;
    }
}

/// Notes one answer: acknowledged (its room, id and latency) or refused.
fn record(sent: &Mutex<Sent>, room: i64, ack: &serde_json::Value, latency: Duration) {
    let mut sent = sent.lock().expect("sent");
    match ack["chat_id"].as_i64() {
        Some(id) => sent.acked.push((room, id, Instant::now(), latency)),
        None => sent.refused.push(ack.to_string()),
    }
}

/// Waits until `stream` has a leader other than `old`; returns it.
async fn new_leader(
    cluster: &NatsCluster,
    js: &async_nats::jetstream::Context,
    stream: &str,
    old: usize,
) -> usize {
    eventually(Duration::from_secs(60), async || {
        match cluster.leader(js, stream).await {
            Some(leader) if leader != old => Ok(leader),
            leader => Err(format!("the leader of {stream}: {leader:?}")),
        }
    })
    .await
}

/// Waits until every replica of `stream` is current again (a restarted
/// server has caught up).
async fn all_replicas_current(js: &async_nats::jetstream::Context, stream: &str) {
    eventually(Duration::from_secs(60), async || {
        let current = match js.get_stream(stream).await {
            Ok(mut s) => s.info().await.ok().and_then(|info| {
                let cluster = info.cluster.as_ref()?;
                Some(cluster.replicas.len() == 2 && cluster.replicas.iter().all(|r| r.current))
            }),
            Err(_) => None,
        };
        match current {
            Some(true) => Ok(()),
            _ => Err(format!("replicas of {stream} current: {current:?}")),
        }
    })
    .await
}

/// Every `chat_id` of the room's history, oldest first, a page at a time.
async fn whole_history(app: &TestApp, room: i64, viewer: &User) -> Vec<i64> {
    let mut ids: Vec<i64> = Vec::new();
    loop {
        let before = ids
            .first()
            .map(|id| format!("&before={id}"))
            .unwrap_or_default();
        let page = app
            .chat_history(&format!("room_id={room}&limit=1000{before}"), Some(viewer))
            .await
            .chat_ids();
        let full = page.len() == 1000;
        ids.splice(0..0, page);
        if !full {
            return ids;
        }
    }
}

#[tokio::test]
async fn the_chat_stream_survives_the_death_of_its_leader_on_a_nats_cluster() {
    let mut cluster = NatsCluster::start(3).await;
    let options = Options::unlimited()
        .with("NATS_URL", cluster.urls())
        .with("NATS_STREAM_REPLICAS", "3");
    let proxied = Proxied::start(options).await;
    let app: &TestApp = &proxied.app;
    let url = proxied.nginx.url.clone();
    let servers: Vec<String> = cluster.servers.iter().map(|s| s.url.clone()).collect();
    let client = async_nats::connect(servers.as_slice()).await.expect("NATS");
    let mut js = async_nats::jetstream::new(client);
    // Asked every 50 ms while a leader is gone: a short answer time, so the
    // time measured is the election's, not a request's timeout.
    js.set_timeout(Duration::from_millis(250));
    let stream = common::adapters::bus::Subjects::new(&app.prefix).chat_stream();

    // Rooms with their members' sockets, through nginx.
    let mut rooms = Vec::new();
    let mut members: Vec<(i64, Socket)> = Vec::new();
    for r in 0..ROOMS {
        let mut users: Vec<User> = Vec::with_capacity(MEMBERS);
        for m in 0..MEMBERS {
            users.push(app.user(&format!("r{r}m{m}")).await);
        }
        let room = app
            .as_user(&users[0])
            .create_room(&format!("room {r}"), None)
            .await;
        for user in &users {
            let mut sock = Socket::connect(&url, Auth::Payload(&user.token))
                .await
                .expect("member connects");
            sock.join(room).await;
            members.push((room, sock));
        }
        rooms.push((room, users));
    }
    let stop = CancellationToken::new();
    let sent = Arc::new(Mutex::new(Sent::default()));
    let mut senders = Vec::new();
    for (room, users) in &rooms {
        for user in users.iter().take(SENDERS) {
            senders.push(tokio::spawn(send_until(
                url.clone(),
                user.clone(),
                *room,
                stop.clone(),
                sent.clone(),
            )));
        }
    }

    // The stream's leader killed under load, and restarted; twice.
    let mut elections = Vec::new();
    for round in 0..2 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        all_replicas_current(&js, &stream).await;
        let leader = cluster.leader(&js, &stream).await.expect("a leader");
        let killed_at = Instant::now();
        cluster.servers[leader].kill9();
        let new = new_leader(&cluster, &js, &stream, leader).await;
        let elected = killed_at.elapsed();
        let elected_at = Instant::now();
        eprintln!(
            "round {round}: leader {} killed, {} elected after {elected:?}",
            cluster.names[leader], cluster.names[new]
        );
        tokio::time::sleep(Duration::from_secs(3)).await;
        cluster.servers[leader].launch().await;
        elections.push((elected, elected_at));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop.cancel();
    let mut sender_sockets = Vec::new();
    for sender in senders {
        sender_sockets.push(sender.await.expect("sender"));
    }

    let sent = std::mem::take(&mut *sent.lock().expect("sent"));
    let acked: HashMap<i64, Vec<i64>> =
        sent.acked
            .iter()
            .fold(HashMap::new(), |mut by_room, (room, id, _, _)| {
                by_room.entry(*room).or_default().push(*id);
                by_room
            });
    let slowest = sent.acked.iter().map(|a| a.3).max().unwrap_or_default();
    // Acks "normal" again 1.5 s after each election: the slowest ack of
    // a message sent from then until the next kill.
    let after: Vec<Duration> = elections
        .iter()
        .map(|(_, at)| {
            sent.acked
                .iter()
                .filter(|a| {
                    a.2 > *at + Duration::from_millis(1500) && a.2 < *at + Duration::from_secs(3)
                })
                .map(|a| a.3)
                .max()
                .unwrap_or_default()
        })
        .collect();
    eprintln!(
        "cluster: {} acked, {} refused, slowest ack {slowest:?}, elections {:?}, slowest ack 1.5 s after each {:?}",
        sent.acked.len(),
        sent.refused.len(),
        elections.iter().map(|e| e.0).collect::<Vec<_>>(),
        after
    );
    let mut recovered = Vec::new();
    for gateway in &app.gateways {
        recovered.push(
            crate::harness::metric(&gateway.url, "komunikator_gateway_recovered_messages_total")
                .await,
        );
    }
    eprintln!(
        "cluster: messages read from the log after being lost live, per gateway: {recovered:?}"
    );
    assert!(sent.refused.is_empty(), "sends refused: {:?}", sent.refused);
    assert!(
        sent.acked.len() > 100,
        "too little load: {}",
        sent.acked.len()
    );
    for slow in &after {
        assert!(
            *slow < Duration::from_millis(500),
            "acks still slow after the election: {after:?}"
        );
    }

    // Every member got every acknowledged message of its room once, in
    // order, live, on a socket that never dropped.
    for (room, sock) in &mut members {
        let mut expected = acked[room].clone();
        expected.sort_unstable();
        let mut seen = Vec::new();
        while seen.last() != expected.last() {
            let Some(message) = sock.try_expect("new_message", sio::WAIT).await else {
                break;
            };
            seen.push(message["chat_id"].as_i64().expect("chat_id"));
        }
        let missing: Vec<&i64> = expected.iter().filter(|id| !seen.contains(id)).collect();
        assert!(
            seen == expected,
            "room {room}: a member got {} of {} acknowledged messages; missing {missing:?}, \
             got {seen:?}",
            seen.len(),
            expected.len()
        );
        sock.expect_none("disconnect", Duration::ZERO).await;
    }
    for sock in &mut sender_sockets {
        sock.expect_none("disconnect", Duration::ZERO).await;
    }
    // And the store holds each once.
    for (room, users) in &rooms {
        let mut expected = acked[room].clone();
        expected.sort_unstable();
        let history = whole_history(app, *room, &users[0]).await;
        let missing: Vec<&i64> = expected.iter().filter(|id| !history.contains(id)).collect();
        let extra: Vec<&i64> = history.iter().filter(|id| !expected.contains(id)).collect();
        assert!(
            history == expected,
            "room {room}: the history has {} of {} acknowledged; missing {missing:?}, extra {extra:?}",
            history.len(),
            expected.len()
        );
    }
}

/// A deployment that grows from one replica to three: the services started
/// with `NATS_STREAM_REPLICAS=3` bring the existing streams to it.
#[tokio::test]
async fn streams_are_brought_to_the_configured_replica_count() {
    let cluster = NatsCluster::start(3).await;
    let mut app = TestApp::start_with(
        Backend::MySql,
        Options::default().with("NATS_URL", cluster.urls()),
    )
    .await;
    let ann = app.user("ann").await;
    let room = app.as_user(&ann).create_room("growing", None).await;
    let servers: Vec<String> = cluster.servers.iter().map(|s| s.url.clone()).collect();
    let js =
        async_nats::jetstream::new(async_nats::connect(servers.as_slice()).await.expect("NATS"));
    let subjects = common::adapters::bus::Subjects::new(&app.prefix);
    let replicas = |name: String| {
        let js = js.clone();
        async move {
            js.get_stream(&name)
                .await
                .expect("stream")
                .info()
                .await
                .expect("info")
                .config
                .num_replicas
        }
    };
    assert_eq!(replicas(subjects.chat_stream()).await, 1);

    app.set_env("NATS_STREAM_REPLICAS", "3");
    for service in app.services_mut() {
        service.terminate().await;
        service.restart().await;
    }
    for stream in [subjects.chat_stream(), subjects.presence_stream()] {
        assert_eq!(replicas(stream.clone()).await, 3, "{stream}");
    }
    let mut sock = app.socket(&ann).await;
    sock.join(room).await;
    sock.assert_usable(room).await;
}

/// Services started while their NATS cluster cannot answer yet (its
/// servers coming back one by one, as after a power cut of the whole
/// deployment) wait for it: they try the streams' setup again until the
/// cluster has elected its leaders, and then serve, rather than exit.
#[tokio::test]
async fn services_started_before_their_nats_cluster_is_ready_wait_for_it() {
    let mut cluster = NatsCluster::start(3).await;
    // One server of three: no quorum, so JetStream cannot create or find a
    // stream.
    cluster.servers[1].kill9();
    cluster.servers[2].kill9();
    let options = Options::default()
        .with("NATS_URL", cluster.urls())
        .with("NATS_STREAM_REPLICAS", "3");
    let monitor = cluster.monitors[0];
    let (live, down) = cluster.servers.split_at_mut(1);
    let relaunch = async {
        // Once the gateway has sent its third JetStream request to the live
        // server, its first attempt at the streams' setup has failed (two
        // requests, each answered or timed out) and it is waiting: then the
        // other two come back.
        let connz = format!("http://127.0.0.1:{monitor}/connz");
        eventually(Duration::from_secs(30), async || {
            let connz: serde_json::Value =
                serde_json::from_str(&crate::harness::text(&connz).await).expect("/connz");
            let sent = connz["connections"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|c| c["name"] == "komunikator-gateway")
                .and_then(|c| c["in_msgs"].as_u64());
            match sent {
                Some(n) if n >= 3 => Ok(()),
                _ => Err(format!("the gateway on {} sent {sent:?}", live[0].url)),
            }
        })
        .await;
        for server in down.iter_mut() {
            server.launch().await;
        }
    };
    let (app, ()) = tokio::join!(TestApp::start_with(Backend::MySql, options), relaunch);
    let logs = app.logs();
    assert!(
        logs.contains("the stream is not ready, trying again"),
        "the services never waited for the cluster: {logs}"
    );
    let ann = app.user("ann").await;
    let room = app.as_user(&ann).create_room("patient", None).await;
    let mut sock = app.socket(&ann).await;
    sock.join(room).await;
    sock.assert_usable(room).await;
    // The persister's consumer was set up too: the message is stored.
    eventually(Duration::from_secs(10), async || {
        match app.history_ids(room).await.len() {
            1 => Ok(()),
            n => Err(format!("{n} messages in the history")),
        }
    })
    .await;
}
