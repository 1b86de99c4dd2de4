//! The durable message path on MariaDB + NATS JetStream, with the services
//! as separate processes: one order for everyone, nothing acknowledged is
//! lost when a persister or gateway dies, nothing is stored twice.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::harness::{Backend, Chat, Options, TestApp, TestDb, random_hex, run_to_end};
use crate::sio::Socket;

/// The `chat_id`s stored in MySQL for `room`, in order.
async fn stored_ids(app: &TestApp, room: i64) -> Vec<i64> {
    stored_ids_in(app.db.as_ref().expect("MariaDB"), room).await
}

async fn stored_ids_in(db: &TestDb, room: i64) -> Vec<i64> {
    let mut conn = db.connect().await;
    sqlx::query_scalar("SELECT message_id FROM chat_history WHERE room_id = ? ORDER BY message_id")
        .bind(room)
        .fetch_all(&mut conn)
        .await
        .expect("stored ids")
}

/// Waits until MySQL holds `n` messages of `room` (the persister writes
/// asynchronously; reads see acked messages before that), at most the
/// consumer's redelivery wait after a crash and some; returns their ids.
async fn wait_for_history(app: &TestApp, room: i64, n: usize) -> Vec<i64> {
    wait_for_stored(app.db.as_ref().expect("MariaDB"), room, n).await
}

async fn wait_for_stored(db: &TestDb, room: i64, n: usize) -> Vec<i64> {
    crate::harness::eventually(Duration::from_secs(60), async || {
        let ids = stored_ids_in(db, room).await;
        if ids.len() >= n {
            Ok(ids)
        } else {
            Err(format!("{} of {n} stored: {ids:?}", ids.len()))
        }
    })
    .await
}

/// Sends `count` messages, one after the other, each waiting for its ack.
async fn send_acked(
    socket: &Socket,
    room: i64,
    tag: impl std::fmt::Display,
    count: usize,
) -> Vec<i64> {
    let mut acked = Vec::with_capacity(count);
    for i in 0..count {
        let ack = socket
            .emit_with_ack(
                "message",
                json!({ "room_id": room, "message": format!("{tag} {i}") }),
            )
            .await;
        acked.push(
            ack["chat_id"]
                .as_i64()
                .unwrap_or_else(|| panic!("not acked: {ack}")),
        );
    }
    acked
}

#[tokio::test]
async fn every_member_sees_every_message_once_in_one_order_across_two_gateways() {
    let mut app = TestApp::start_with(Backend::MySql, Options::unlimited()).await;
    app.add_gateway().await;
    // Every user a member, their sockets on both gateways in turn.
    let Chat(room, _, mut sockets) = app.chat_of_members("busy", ["own", "u0", "u1", "u2"]).await;
    // Every socket sends 25 messages at once; 100 in all, from both gateways.
    let per_socket = 25;
    let senders = sockets
        .iter()
        .enumerate()
        .map(|(i, s)| send_acked(s, room, format!("s{i}"), per_socket));
    let acked: BTreeSet<i64> = futures_util::future::join_all(senders)
        .await
        .into_iter()
        .flatten()
        .collect();
    assert_eq!(
        acked.len(),
        sockets.len() * per_socket,
        "every message acked with its own id"
    );

    let total = acked.len();
    let mut orders = Vec::new();
    for socket in &mut sockets {
        let ids = socket.next_chat_ids(total).await;
        assert!(
            ids.windows(2).all(|w| w[0] < w[1]),
            "chat_id strictly increasing: {ids:?}"
        );
        orders.push(ids);
    }
    assert!(
        orders.windows(2).all(|w| w[0] == w[1]),
        "every socket saw the same order"
    );
    assert_eq!(orders[0].iter().copied().collect::<BTreeSet<_>>(), acked);
    let stored = wait_for_history(&app, room, total).await;
    assert_eq!(
        stored, orders[0],
        "history holds exactly the live messages, in order"
    );
    // A second copy of any would come before a later message.
    let later = sockets[0].send(room, "later").await;
    for socket in &mut sockets {
        assert_eq!(socket.next_chat_ids(1).await, vec![later]);
    }
}

/// The persisters' durable consumer of `app`'s chat stream.
async fn persister_consumer(app: &TestApp) -> async_nats::jetstream::consumer::PullConsumer {
    let client = async_nats::connect(crate::harness::nats_url())
        .await
        .expect("NATS");
    async_nats::jetstream::new(client)
        .get_stream(common::adapters::bus::Subjects::new(&app.prefix).chat_stream())
        .await
        .expect("chat stream")
        .get_consumer(common::adapters::chat_log::PERSISTER_CONSUMER)
        .await
        .expect("persister consumer")
}

/// A persister killed with messages in hand: frozen (SIGSTOP) while chat
/// goes on, so that JetStream hands it messages it can neither store nor
/// acknowledge, then killed. Its replacement stores them within 5 s of its
/// start (the consumer's ack wait), each once, with everything else.
#[tokio::test]
async fn acked_messages_survive_a_persister_kill_exactly_once() {
    let mut app = TestApp::start_with(Backend::MySql, Options::unlimited()).await;
    let Chat(room, _, [mut socket]) = app.chat("durable", ["ann"]).await;

    let first = send_acked(&socket, room, "before", 100).await;
    let mut persister = app.persister.take().expect("persister");
    persister.signal("STOP");
    let during = send_acked(&socket, room, "during", 200).await;
    // Messages handed to the persister and not acknowledged: what it has
    // in hand when killed.
    let mut consumer = persister_consumer(&app).await;
    let in_hand = crate::harness::eventually(Duration::from_secs(10), async || {
        match consumer
            .info()
            .await
            .expect("consumer info")
            .num_ack_pending
        {
            0 => Err("the frozen persister was handed nothing".to_owned()),
            in_hand => Ok(in_hand),
        }
    })
    .await;
    persister.kill9().await;
    let after = send_acked(&socket, room, "after", 100).await;
    persister.restart().await;
    let restarted = tokio::time::Instant::now();
    app.persister = Some(persister);

    let acked: Vec<i64> = first.into_iter().chain(during).chain(after).collect();
    let stored = wait_for_history(&app, room, acked.len()).await;
    let took = restarted.elapsed();
    eprintln!(
        "{in_hand} messages in the killed persister's hand; all stored {took:?} after the restart"
    );
    assert!(
        took <= Duration::from_secs(5),
        "stored {took:?} after the restart"
    );
    assert_eq!(
        stored, acked,
        "MySQL holds exactly the acked messages, once each, in order"
    );
    let rows = app
        .count_rows("chat_history", &format!("room_id = {room}"))
        .await;
    assert_eq!(rows, 400);
    assert_eq!(
        socket.next_chat_ids(400).await,
        acked,
        "and every one was delivered live"
    );
}

/// Read your writes: an acknowledged message is in every later read even
/// while no persister runs (it is read from the chat stream until stored),
/// and once stored it is there exactly once.
#[tokio::test]
async fn reads_include_acked_messages_while_the_persister_is_down() {
    let mut app = TestApp::start_with(Backend::MySql, Options::unlimited()).await;
    let Chat(room, [ann], [mut socket]) = app.chat("unstored", ["ann"]).await;
    let other = app.as_user(&ann).create_room("other", None).await;
    socket.join(other).await;
    let stored = send_acked(&socket, room, "stored", 5).await;
    assert_eq!(wait_for_history(&app, room, 5).await, stored);

    let mut persister = app.persister.take().expect("persister");
    persister.kill9().await;
    let unstored = send_acked(&socket, room, "unstored", 20).await;
    send_acked(&socket, other, "elsewhere", 3).await;
    let rows: i64 = app.scalar("SELECT COUNT(*) FROM chat_history").await;
    assert_eq!(rows, 5, "nothing stored without a persister");

    let all: Vec<i64> = stored.iter().chain(&unstored).copied().collect();
    assert_eq!(
        app.history_ids(room).await,
        all,
        "every acked message, in order"
    );
    let page = app
        .get(
            &format!(
                "/api/chat_history?room_id={room}&before={}&limit=4",
                unstored[10]
            ),
            None,
        )
        .await;
    assert_eq!(
        page.chat_ids(),
        unstored[6..10],
        "a page of unstored messages"
    );
    let newest = &app
        .get(&format!("/api/chat_history?room_id={room}&limit=1"), None)
        .await
        .body[0];
    assert_eq!(newest["message"], "unstored 19");
    assert_eq!(newest["user_name"], json!(ann.name));
    assert!(
        newest["create_date"]
            .as_str()
            .is_some_and(|d| d.ends_with('Z')),
        "{newest}"
    );
    let info = app.get("/api/user/get_info", Some(&ann.token)).await;
    assert_eq!(info.body["message_count"], 28, "{info:?}");

    persister.restart().await;
    app.persister = Some(persister);
    crate::harness::eventually(Duration::from_secs(60), async || {
        // Reads stay exact while the persister catches up.
        assert_eq!(app.history_ids(room).await, all);
        match stored_ids(&app, room).await.len() {
            n if n >= all.len() => Ok(()),
            n => Err(format!("{n} of {} stored", all.len())),
        }
    })
    .await;
    assert_eq!(stored_ids(&app, room).await, all, "stored once each");
    assert_eq!(app.history_ids(room).await, all, "read once each");
    let info = app.get("/api/user/get_info", Some(&ann.token)).await;
    assert_eq!(info.body["message_count"], 28, "{info:?}");
}

#[tokio::test]
async fn a_restarted_gateway_loses_nothing_acked_while_others_keep_chatting() {
    let mut app = TestApp::start_with(Backend::MySql, Options::unlimited()).await;
    app.add_gateway().await;
    // Ann's socket on the first gateway, Bob's on the second.
    let Chat(room, [ann, _], [on_first, mut on_second]) =
        app.chat_of_members("resilient", ["ann", "bob"]).await;

    let before = send_acked(&on_first, room, "ann", 20).await;
    let mut gateway = app.gateways.remove(0);
    let chatting = send_acked(&on_second, room, "bob", 150);
    let restarting = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        gateway.kill9().await;
        gateway.restart().await;
    };
    let (during, ()) = tokio::join!(chatting, restarting);
    app.gateways.insert(0, gateway);

    // Ann reconnects to the restarted gateway and goes on.
    let mut ann_again = app.socket_on(0, &ann).await;
    ann_again.join(room).await;
    let after = send_acked(&ann_again, room, "ann again", 20).await;

    let acked: Vec<i64> = before
        .iter()
        .chain(&during)
        .chain(&after)
        .copied()
        .collect();
    assert_eq!(
        on_second.next_chat_ids(acked.len()).await,
        acked,
        "bob saw everything"
    );
    assert_eq!(
        wait_for_history(&app, room, acked.len()).await,
        acked,
        "everything acked is stored"
    );
    drop(on_first);
}

#[tokio::test]
async fn chat_ids_continue_above_the_ids_of_an_existing_database() {
    let db = TestDb::create().await;
    let (code, out) = run_to_end(&["migrate"], &[("DATABASE_URL", db.url())]).await;
    assert_eq!(code, Some(0), "{out}");
    let mut conn = db.connect().await;
    sqlx::raw_sql(
        "INSERT INTO users VALUES ('old', 'x');
         INSERT INTO rooms (room_id, room_name, room_owner, is_private) VALUES (3, 'old', 'old', 0);
         INSERT INTO chat_history (message_id, room_id, user_name, message)
             VALUES (70000, 3, 'old', 'from the old server');",
    )
    .execute(&mut conn)
    .await
    .expect("seed");
    let options = Options {
        env: vec![
            ("DATABASE_URL", db.url()),
            ("MESSAGE_RATE_LIMIT", "0".into()),
        ],
        ..Options::default()
    };
    let app = TestApp::start_with(Backend::MySql, options).await;
    let ann = app.user("ann").await;
    app.as_user(&ann).join(3).await;
    let mut socket = app.socket(&ann).await;
    socket.emit("join", json!({ "room_id": 3 }));
    if socket
        .try_expect("user_joined", Duration::from_secs(5))
        .await
        .is_none()
    {
        let error = socket.try_expect("error", Duration::from_millis(10)).await;
        panic!("join failed: {error:?}\n{}", app.logs());
    }
    let acked = send_acked(&socket, 3, "new", 2).await;
    assert_eq!(acked, [70001, 70002]);
    assert_eq!(wait_for_stored(&db, 3, 3).await, [70000, 70001, 70002]);
    assert_eq!(app.history_ids(3).await, [70000, 70001, 70002]);
}

/// Publishes a raw chat message to the stream, as a gateway does.
async fn publish_raw(
    app: &TestApp,
    room: i64,
    msg_id: &str,
    body: Value,
) -> async_nats::jetstream::publish::PublishAck {
    let client = async_nats::connect(crate::harness::nats_url())
        .await
        .expect("nats");
    let js = async_nats::jetstream::new(client);
    let mut headers = async_nats::HeaderMap::new();
    headers.insert("Nats-Msg-Id", msg_id);
    js.publish_with_headers(
        format!("{}.chat.{room}", app.prefix),
        headers,
        body.to_string().into(),
    )
    .await
    .expect("publish")
    .await
    .expect("ack")
}

#[tokio::test]
async fn a_retried_publish_is_stored_once_and_a_deleted_rooms_message_is_dropped() {
    let app = TestApp::start(Backend::MySql).await;
    let ann = app.user("ann").await;
    let room = app.as_user(&ann).create_room("r", None).await;
    let gone = app.as_user(&ann).create_room("gone", None).await;
    app.as_user(&ann).delete_room(gone).await;
    let body = |room: i64, text: &str| {
        json!({ "room_id": room, "user_name": ann.name, "message": text,
                "create_date": "2026-11-24T19:20:24.123Z" })
    };
    let id = random_hex(8);
    let first = publish_raw(&app, room, &id, body(room, "once")).await;
    let retry = publish_raw(&app, room, &id, body(room, "once")).await;
    assert!(retry.duplicate, "the broker recognises the retry");
    assert_eq!(retry.sequence, first.sequence);
    // A message for a deleted room is dropped by the persister, not retried
    // forever: the message after it is stored.
    publish_raw(&app, gone, &random_hex(8), body(gone, "orphan")).await;
    let last = publish_raw(&app, room, &random_hex(8), body(room, "after")).await;
    let stored = wait_for_history(&app, room, 2).await;
    assert_eq!(stored, [first.sequence as i64, last.sequence as i64]);
    let orphans = app
        .count_rows("chat_history", &format!("room_id = {gone}"))
        .await;
    assert_eq!(orphans, 0);
}

#[tokio::test]
async fn two_persister_replicas_share_the_work_and_store_each_message_once() {
    let mut app = TestApp::start_with(Backend::MySql, Options::unlimited()).await;
    let second = crate::harness::Service::spawn(&["persister"], &app.env(), "127.0.0.1:0").await;
    let Chat(room, _, [socket]) = app.chat("shared work", ["ann"]).await;
    let acked = send_acked(&socket, room, "m", 300).await;
    assert_eq!(wait_for_history(&app, room, acked.len()).await, acked);
    // Both replicas took part, and together inserted each message once.
    let counter = |metrics: &str, name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0)
    };
    let first_url = app.persister.as_ref().expect("persister").url.clone();
    let (mut rows, mut consumed) = (Vec::new(), Vec::new());
    for url in [first_url, second.url.clone()] {
        let text = crate::harness::metrics(&url).await;
        rows.push(counter(&text, "komunikator_persister_rows_inserted_total"));
        consumed.push(counter(&text, "komunikator_persister_messages_total"));
    }
    assert_eq!(
        rows.iter().sum::<f64>(),
        300.0,
        "rows inserted per replica: {rows:?}"
    );
    assert!(
        consumed.iter().all(|n| *n > 0.0),
        "messages consumed per replica: {consumed:?}"
    );
    app.persister.as_mut().expect("persister").terminate().await;
    drop(second);
}

#[tokio::test]
async fn the_gateway_exports_socket_metrics() {
    let app = TestApp::start(Backend::MySql).await;
    let Chat(room, _, [mut socket]) = app.chat("metered", ["ann"]).await;
    send_acked(&socket, room, "m", 2).await;
    socket.emit("message", json!("not an object"));
    socket.expect("error").await;
    let url = format!("{}/metrics", app.gateway_url(0));
    let text = reqwest::get(url)
        .await
        .expect("metrics")
        .text()
        .await
        .expect("text");
    for line in [
        "komunikator_gateway_sockets 1",
        r#"komunikator_gateway_events_total{event="message"} 3"#,
        r#"komunikator_gateway_refusals_total{event="message",code="7"} 1"#,
        "komunikator_gateway_append_seconds_count 2",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
}
