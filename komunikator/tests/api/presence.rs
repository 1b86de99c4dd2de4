//! Presence: `watchdog` heartbeats bring a user online in every room they
//! are a member of; silence for the presence timeout takes them offline,
//! exactly once per transition, however many presence replicas run.

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;

use crate::harness::{Backend, Options, Service, TestApp, User, nats_url};
use crate::sio::Socket;

const TIMEOUT_MS: u64 = 2000;

fn short_timeout() -> Options {
    Options::default().with("PRESENCE_TIMEOUT_MS", TIMEOUT_MS.to_string())
}

/// A room owned by `owner` with `members` joined over REST.
async fn room_with(app: &TestApp, owner: &User, members: &[&User]) -> i64 {
    let room = app.as_user(owner).create_room("presence", None).await;
    for member in members {
        app.as_user(member).join(room).await;
    }
    room
}

/// Ann and Bob (`.0`), members of a room that Bob watches with a joined
/// socket (`.1`).
async fn watched_by_bob(app: &TestApp) -> ([User; 2], Socket) {
    let [ann, bob] = app.users(["ann", "bob"]).await;
    let room = room_with(app, &ann, &[&bob]).await;
    let mut watcher = app.socket(&bob).await;
    watcher.join(room).await;
    ([ann, bob], watcher)
}

/// Asserts the next `user_online` a socket receives announces `user`.
async fn expect_online(socket: &mut Socket, user: &User) {
    let online = socket.expect("user_online").await;
    assert_eq!(online, json!({ "user_name": user.name }));
}

fn beat(socket: &Socket, user: &User) {
    socket.emit("watchdog", json!({ "user_name": user.name }));
}

/// Heartbeats every 300 ms for `period`; returns when the last was sent.
async fn heartbeat_for(socket: &Socket, user: &User, period: Duration) -> Instant {
    let until = Instant::now() + period;
    loop {
        beat(socket, user);
        let sent = Instant::now();
        if sent >= until {
            return sent;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

async fn online_list(app: &TestApp, user: &User) -> serde_json::Value {
    app.as_user(user).online().await
}

async fn heartbeats_bring_a_user_online_and_silence_takes_them_offline(backend: Backend) {
    let app = TestApp::start_with(backend, short_timeout()).await;
    let ([ann, bob], mut watcher) = watched_by_bob(&app).await;
    let ann_socket = app.socket(&ann).await;

    beat(&ann_socket, &ann);
    expect_online(&mut watcher, &ann).await;
    assert_eq!(online_list(&app, &bob).await, json!([ann.name]));

    // Steady heartbeats, 10 a second and then some: no offline, no second online.
    let last = heartbeat_for(&ann_socket, &ann, Duration::from_millis(3 * TIMEOUT_MS / 2)).await;

    // The first offline, and not before the silence: one during the
    // heartbeats would be waiting here already and fail the timing below.
    // (A barrier after the heartbeats would race the real offline.)
    let offline = watcher.expect("user_offline").await;
    let after = last.elapsed();
    watcher.expect_none("user_online", Duration::ZERO).await;
    assert_eq!(offline, json!({ "user_name": ann.name }));
    let timeout = Duration::from_millis(TIMEOUT_MS);
    assert!(
        after >= timeout - Duration::from_millis(50),
        "offline too early: {after:?}"
    );
    assert!(
        after <= timeout + Duration::from_secs(1),
        "offline too late: {after:?}"
    );
    assert_eq!(online_list(&app, &bob).await, json!([]));

    // Back again: online once more, and no second offline before it.
    beat(&ann_socket, &ann);
    expect_online(&mut watcher, &ann).await;
    watcher.expect_none("user_offline", Duration::ZERO).await;
}

async fn presence_events_go_only_to_the_rooms_the_user_is_a_member_of(backend: Backend) {
    let app = TestApp::start_with(backend, short_timeout()).await;
    let [ann, bob, eve] = app.users(["ann", "bob", "eve"]).await;
    let shared = room_with(&app, &ann, &[&bob]).await;
    let elsewhere = room_with(&app, &eve, &[]).await;
    let private = app.as_user(&eve).create_room("secret", Some("key")).await;
    let mut in_shared = app.socket(&bob).await;
    in_shared.join(shared).await;
    let mut in_other = app.socket(&eve).await;
    in_other.join(elsewhere).await;
    in_other.join(private).await;

    let ann_socket = app.socket(&ann).await;
    beat(&ann_socket, &ann);
    in_shared.expect("user_online").await;
    assert_eq!(
        online_list(&app, &eve).await,
        json!([]),
        "eve shares no room with ann"
    );

    // Joining a private room by key brings presence events there from then on.
    app.as_user(&ann).join_private("key").await;
    // Leaving stops them in that room.
    app.as_user(&ann).leave(shared).await;
    let offline = in_other.expect("user_offline").await;
    assert_eq!(offline, json!({ "user_name": ann.name }));
    // Eve's rooms heard of ann going offline, and never of her coming
    // online (an `user_online` would have come first); the room ann left
    // heard nothing (it would have by now: all on one gateway).
    in_other.assert_none_so_far("user_online").await;
    in_shared.assert_none_so_far("user_offline").await;
}

async fn malformed_watchdogs_are_refused_and_break_nothing(backend: Backend) {
    let app = TestApp::start_with(backend, short_timeout()).await;
    let ([ann, bob], mut watcher) = watched_by_bob(&app).await;
    let mut ann_socket = app.socket(&ann).await;
    for bad in [
        json!("ann"),
        json!(7),
        json!({}),
        json!({ "user_name": 3 }),
        json!({ "user_name": bob.name }),
    ] {
        ann_socket.emit("watchdog", bad.clone());
        let refused = ann_socket.try_expect("error", Duration::from_secs(5)).await;
        assert!(
            refused.is_some(),
            "no error for watchdog {bad}:\n{}",
            app.logs()
        );
    }
    ann_socket.send_raw("42[\"watchdog\"]".into());
    ann_socket.expect("error").await;
    watcher
        .expect_none("user_online", Duration::from_millis(300))
        .await;
    beat(&ann_socket, &ann);
    expect_online(&mut watcher, &ann).await;
}

crate::on_both_stores!(
    heartbeats_bring_a_user_online_and_silence_takes_them_offline,
    presence_events_go_only_to_the_rooms_the_user_is_a_member_of,
    malformed_watchdogs_are_refused_and_break_nothing,
    batched_presence_adds_up_to_every_transition,
    a_large_room_gets_no_per_user_events,
);

/// Counts the `event`s a socket receives within `wait`.
async fn count(socket: &mut Socket, event: &str, wait: Duration) -> usize {
    let deadline = Instant::now() + wait;
    let mut n = 0;
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        if socket.try_expect(event, left).await.is_none() {
            break;
        }
        n += 1;
    }
    n
}

#[tokio::test]
async fn a_gateway_forwards_at_most_one_heartbeat_per_user_per_second() {
    let app = TestApp::start(Backend::MySql).await;
    let ann = app.user("ann").await;
    let client = async_nats::connect(nats_url()).await.expect("nats");
    let mut forwarded = client
        .subscribe(format!("{}.presence.heartbeat", app.prefix))
        .await
        .expect("sub");
    client.flush().await.expect("flush");
    let socket = app.socket(&ann).await;
    let started = Instant::now();
    for _ in 0..50 {
        beat(&socket, &ann);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // 50 heartbeats in about a second: the first at once, the newest held
    // back one after the interval, and no more.
    let mut n = 0;
    while let Ok(Some(_)) =
        tokio::time::timeout(Duration::from_millis(1500), forwarded.next()).await
    {
        n += 1;
    }
    let elapsed = started.elapsed().as_secs_f64();
    assert!(
        (1..=3).contains(&n),
        "{n} heartbeats forwarded in {elapsed:.1} s"
    );
}

#[tokio::test]
async fn two_presence_replicas_announce_each_transition_once() {
    let mut app = TestApp::start_with(Backend::MySql, short_timeout()).await;
    let second = Service::spawn(&["presence"], &app.env(), "127.0.0.1:0").await;
    app.add_gateway().await;
    let ([ann, _], mut watcher) = watched_by_bob(&app).await;
    // Heartbeats through both gateways reach both replicas.
    let first = app.socket_on(0, &ann).await;
    let other = app.socket_on(1, &ann).await;
    let until = Instant::now() + Duration::from_millis(2500);
    while Instant::now() < until {
        beat(&first, &ann);
        beat(&other, &ann);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(
        count(&mut watcher, "user_online", Duration::from_millis(100)).await,
        1
    );
    let offline = count(
        &mut watcher,
        "user_offline",
        Duration::from_millis(TIMEOUT_MS + 1500),
    )
    .await;
    assert_eq!(offline, 1, "one offline event");
    assert_eq!(
        count(&mut watcher, "user_online", Duration::from_millis(10)).await,
        0
    );
    drop(second);
}

#[tokio::test]
async fn killing_presence_during_steady_heartbeats_causes_no_offline_storm() {
    let mut app = TestApp::start_with(Backend::MySql, short_timeout()).await;
    let ([ann, _], mut watcher) = watched_by_bob(&app).await;
    let ann_socket = app.socket(&ann).await;
    beat(&ann_socket, &ann);
    watcher.expect("user_online").await;

    let mut presence = app.presence.take().expect("presence");
    let heartbeats = heartbeat_for(&ann_socket, &ann, Duration::from_millis(2 * TIMEOUT_MS));
    let restart = async {
        tokio::time::sleep(Duration::from_millis(300)).await;
        presence.kill9().await;
        tokio::time::sleep(Duration::from_millis(TIMEOUT_MS / 4)).await;
        presence.restart().await;
    };
    let (last, ()) = tokio::join!(heartbeats, restart);
    app.presence = Some(presence);
    let early = last.elapsed();
    // The offline after the real silence is not missed, and is the first:
    // one during the restart would be waiting here already and fail the
    // timing below. (A barrier here would race the real offline.)
    let offline = watcher.expect("user_offline").await;
    assert_eq!(offline, json!({ "user_name": ann.name }));
    watcher.expect_none("user_online", Duration::ZERO).await;
    assert!(
        last.elapsed() >= Duration::from_millis(TIMEOUT_MS) - early.min(Duration::from_millis(50))
    );
    assert_eq!(
        count(&mut watcher, "user_offline", Duration::from_millis(500)).await,
        0
    );
}

/// Reads `presence` events until `done` holds for the state they add up
/// to (user name → online); returns how many it took.
async fn presence_until(
    socket: &mut Socket,
    room: i64,
    state: &mut std::collections::HashMap<String, bool>,
    done: impl Fn(&std::collections::HashMap<String, bool>) -> bool,
) -> usize {
    let mut events = 0;
    while !done(state) {
        let batch = socket.expect("presence").await;
        assert_eq!(batch["room_id"], room, "{batch}");
        for (list, online) in [("online", true), ("offline", false)] {
            for name in batch[list].as_array().expect("a list of names") {
                let name = name.as_str().expect("a name").to_owned();
                assert!(
                    state.insert(name, online) != Some(online),
                    "{batch} repeats a state"
                );
            }
        }
        events += 1;
    }
    events
}

/// A client that asks for presence in batches gets one `presence` event
/// for many changes, never `user_online`/`user_offline`; the others keep
/// getting those, one per user.
async fn batched_presence_adds_up_to_every_transition(backend: Backend) {
    let app = TestApp::start_with(backend, short_timeout()).await;
    let users = app
        .users(["u0", "u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8", "u9"])
        .await;
    let [bob, cat] = app.users(["bob", "cat"]).await;
    let members: Vec<&User> = users.iter().chain([&cat]).collect();
    let room = room_with(&app, &bob, &members).await;
    let mut batched = app.batched_socket(&bob).await;
    batched.join(room).await;
    let mut per_user = app.socket(&cat).await;
    per_user.join(room).await;

    let sockets = futures_util::future::join_all(users.iter().map(|u| app.socket(u))).await;
    for (socket, user) in sockets.iter().zip(&users) {
        beat(socket, user);
    }
    let mut state = std::collections::HashMap::new();
    let all_online = |s: &std::collections::HashMap<String, bool>| {
        users.iter().all(|u| s.get(&u.name) == Some(&true))
    };
    let events = presence_until(&mut batched, room, &mut state, all_online).await;
    // Ten heartbeats sent at once come in one batch, or a few.
    assert!(events <= 3, "{events} presence events for 10 users");
    let mut announced = Vec::new();
    for _ in &users {
        announced.push(per_user.expect("user_online").await["user_name"].clone());
    }
    announced.sort_by_key(|n| n.to_string());
    let mut names: Vec<_> = users.iter().map(|u| json!(u.name)).collect();
    names.sort_by_key(|n| n.to_string());
    assert_eq!(
        announced, names,
        "one user_online each for the other client"
    );

    // Silence: every one of them offline, in batches again.
    drop(sockets);
    let all_offline = |s: &std::collections::HashMap<String, bool>| {
        users.iter().all(|u| s.get(&u.name) == Some(&false))
    };
    presence_until(&mut batched, room, &mut state, all_offline).await;
    assert_eq!(state.len(), users.len(), "only the users who changed");
    batched.assert_none_so_far("user_online").await;
    batched.assert_none_so_far("user_offline").await;
    assert_eq!(online_list(&app, &bob).await, json!([]));
}

/// Above `PER_USER_EVENTS_MAX_SOCKETS` sockets in a room, nobody gets
/// per-user events (`user_joined`, `user_online`, ...) there; clients that
/// take presence in batches still get it.
async fn a_large_room_gets_no_per_user_events(backend: Backend) {
    let options = short_timeout().with("PER_USER_EVENTS_MAX_SOCKETS", "2");
    let app = TestApp::start_with(backend, options).await;
    let [bob, cat, dan, ann] = app.users(["bob", "cat", "dan", "ann"]).await;
    let room = room_with(&app, &bob, &[&cat, &dan, &ann]).await;
    let mut batched = app.batched_socket(&bob).await;
    batched.join(room).await;
    // Two sockets: each is told of the second joining (`join` waits for
    // the joiner's own `user_joined`).
    let mut per_user = app.socket(&cat).await;
    per_user.join(room).await;
    assert_eq!(batched.expect("user_joined").await["user_name"], cat.name);
    let ann_socket = app.socket(&ann).await;
    beat(&ann_socket, &ann);
    expect_online(&mut per_user, &ann).await;

    // A third: the room is too large for per-user events.
    let mut third = app.socket(&dan).await;
    third.join_acked(room).await;
    let dan_socket = app.socket(&dan).await;
    beat(&dan_socket, &dan);
    let mut state = std::collections::HashMap::new();
    presence_until(&mut batched, room, &mut state, |s| {
        s.get(&dan.name) == Some(&true)
    })
    .await;
    assert_eq!(state.get(&ann.name), Some(&true), "ann before dan");
    // The batch came from the room's task after any per-user event would.
    for socket in [&mut per_user, &mut third] {
        socket.assert_none_so_far("user_online").await;
    }
    for socket in [&mut batched, &mut per_user, &mut third] {
        socket.assert_none_so_far("user_joined").await;
    }
    // Presence is still exact over REST.
    let mut online = online_list(&app, &cat).await;
    online
        .as_array_mut()
        .expect("list")
        .sort_by_key(|n| n.to_string());
    let mut expected = vec![json!(ann.name), json!(dan.name)];
    expected.sort_by_key(|n| n.to_string());
    assert_eq!(online, json!(expected));
}
