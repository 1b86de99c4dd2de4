//! Chat history (seeded with SQL, as no REST call writes messages), and what
//! deleting a room does to its history and memberships.

use serde_json::{Value, json};

use crate::harness::{Backend, Options, Resp, TestApp};
use crate::members::counters;
use crate::rooms::{assert_timestamp, keys};

/// Inserts messages `(chat_id, room_id, user_name, message)` in one statement;
/// message `n` is dated `2026-11-24 19:20:24.123` plus `n` seconds.
async fn seed(app: &TestApp, rows: &[(i64, i64, &str, &str)]) {
    let values: Vec<String> = rows
        .iter()
        .map(|(id, room, user, message)| {
            format!(
                "({id}, {room}, '{user}', '{}', '{}')",
                message.replace('\'', "''"),
                date(*id)
            )
        })
        .collect();
    app.sql(format!(
        "INSERT INTO chat_history (message_id, room_id, user_name, message, message_date) \
         VALUES {}",
        values.join(", ")
    ))
    .await;
}

/// The stored date of seeded message `id` (SQL form).
fn date(id: i64) -> String {
    let t = chrono::NaiveDate::from_ymd_opt(2026, 11, 24)
        .and_then(|d| d.and_hms_milli_opt(19, 20, 24, 123))
        .expect("valid date")
        + chrono::Duration::seconds(id);
    t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
}

/// The same date as the contract shows it.
fn wire_date(id: i64) -> String {
    let sql = date(id);
    format!("{}Z", sql.replace(' ', "T"))
}

/// The chat ids of a successful history answer, in order.
#[track_caller]
fn ids(res: &Resp) -> Vec<i64> {
    assert_eq!(res.status, 200, "{res:?}");
    res.chat_ids()
}

async fn history_lists_a_rooms_messages_oldest_first_with_every_field(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [alice, bob] = app.users(["alice", "bob"]).await;
    let room_id = app.as_user(&alice).create_room("Talk", None).await;
    let other = app.as_user(&bob).create_room("Elsewhere", None).await;
    // Inserted out of order, and interleaved with another room's messages.
    seed(
        &app,
        &[
            (3, room_id, &alice.name, "third"),
            (1, room_id, &alice.name, "zażółć gęślą jaźń 😀"),
            (2, other, &bob.name, "not here"),
            (4, room_id, &bob.name, "it's fourth"),
        ],
    )
    .await;

    let res = app.chat_history(&format!("room_id={room_id}"), None).await;
    assert_eq!(ids(&res), [1, 3, 4]);
    let list = res.body.as_array().expect("list");
    for m in list {
        assert_eq!(
            keys(m),
            ["chat_id", "create_date", "message", "room_id", "user_name"],
            "{m}"
        );
        assert_eq!(m["room_id"].as_i64(), Some(room_id), "{m}");
        assert_timestamp(&m["create_date"]);
    }
    assert_eq!(
        list[0],
        json!({ "chat_id": 1, "room_id": room_id, "user_name": alice.name,
                "message": "zażółć gęślą jaźń 😀", "create_date": "2026-11-24T19:20:25.123Z" })
    );
    assert_eq!(list[1]["message"], "third");
    assert_eq!(list[1]["create_date"].as_str(), Some(wire_date(3).as_str()));
    assert_eq!(
        list[2],
        json!({ "chat_id": 4, "room_id": room_id, "user_name": bob.name,
                "message": "it's fourth", "create_date": wire_date(4) })
    );

    // The same with a token, and for the other room.
    let res = app
        .chat_history(&format!("room_id={room_id}"), Some(&bob))
        .await;
    assert_eq!(ids(&res), [1, 3, 4]);
    let res = app.chat_history(&format!("room_id={other}"), None).await;
    assert_eq!(ids(&res), [2]);
}

async fn a_room_without_messages_has_an_empty_history(backend: Backend) {
    let app = TestApp::start(backend).await;
    let alice = app.user("alice").await;
    let room_id = app.as_user(&alice).create_room("Quiet", None).await;
    let res = app.chat_history(&format!("room_id={room_id}"), None).await;
    assert_eq!((res.status, &res.body), (200, &json!([])), "{res:?}");
}

async fn history_without_limit_returns_the_newest_1000_messages(backend: Backend) {
    let app = TestApp::start(backend).await;
    let alice = app.user("alice").await;
    let room_id = app.as_user(&alice).create_room("Busy", None).await;
    let texts: Vec<String> = (1..=1001).map(|i| format!("message {i}")).collect();
    let rows: Vec<(i64, i64, &str, &str)> = (1..=1001_i64)
        .zip(&texts)
        .map(|(i, text)| (i, room_id, alice.name.as_str(), text.as_str()))
        .collect();
    seed(&app, &rows).await;

    let res = app.chat_history(&format!("room_id={room_id}"), None).await;
    let got = ids(&res);
    assert_eq!(got.len(), 1000);
    assert_eq!(got.first(), Some(&2), "the oldest message is left out");
    assert_eq!(got.last(), Some(&1001));
    assert!(got.windows(2).all(|w| w[0] + 1 == w[1]), "oldest first");
    assert_eq!(res.body[0]["message"], "message 2");

    let res = app
        .chat_history(&format!("room_id={room_id}&limit=1000"), None)
        .await;
    assert_eq!(ids(&res), (2..=1001).collect::<Vec<_>>());
    let res = app
        .chat_history(&format!("room_id={room_id}&limit=1"), None)
        .await;
    assert_eq!(ids(&res), [1001], "the newest one");
    let res = app
        .chat_history(&format!("room_id={room_id}&before=1001"), None)
        .await;
    assert_eq!(ids(&res), (1..=1000).collect::<Vec<_>>());
}

async fn history_limit_must_be_from_1_to_1000(backend: Backend) {
    let app = TestApp::start(backend).await;
    let alice = app.user("alice").await;
    let room_id = app.as_user(&alice).create_room("Limits", None).await;
    seed(
        &app,
        &[
            (1, room_id, &alice.name, "a"),
            (2, room_id, &alice.name, "b"),
            (3, room_id, &alice.name, "c"),
        ],
    )
    .await;
    let res = app
        .chat_history(&format!("room_id={room_id}&limit=1"), None)
        .await;
    assert_eq!(ids(&res), [3]);
    let res = app
        .chat_history(&format!("room_id={room_id}&limit=2"), None)
        .await;
    assert_eq!(ids(&res), [2, 3]);
    let res = app
        .chat_history(&format!("room_id={room_id}&limit=1000"), None)
        .await;
    assert_eq!(ids(&res), [1, 2, 3]);
    for bad in [
        "0",
        "1001",
        "-1",
        "abc",
        "1.5",
        "99999999999",
        "1e2",
        "true",
        "+5",
        " 5",
    ] {
        app.chat_history(&format!("room_id={room_id}&limit={bad}"), None)
            .await
            .expect_refused(400, &format!("limit={bad}"));
    }
    for bad in ["abc", "-1", "1.5", "9007199254740992", "true"] {
        app.chat_history(&format!("room_id={room_id}&before={bad}"), None)
            .await
            .expect_refused(400, &format!("before={bad}"));
    }
}

async fn history_pages_backwards_with_before(backend: Backend) {
    let app = TestApp::start(backend).await;
    let alice = app.user("alice").await;
    let room_id = app.as_user(&alice).create_room("Pages", None).await;
    let other = app.as_user(&alice).create_room("Other", None).await;
    let mut rows: Vec<(i64, i64, &str, &str)> = (1..=10)
        .map(|i| (i * 2, room_id, alice.name.as_str(), "m"))
        .collect();
    rows.push((7, other, &alice.name, "other room"));
    seed(&app, &rows).await;
    let whole = ids(&app.chat_history(&format!("room_id={room_id}"), None).await);
    assert_eq!(whole, (1..=10).map(|i| i * 2).collect::<Vec<_>>());

    let res = app
        .chat_history(&format!("room_id={room_id}&before=11"), None)
        .await;
    assert_eq!(ids(&res), [2, 4, 6, 8, 10], "only chat_id < before");
    let res = app
        .chat_history(&format!("room_id={room_id}&before=10"), None)
        .await;
    assert_eq!(ids(&res), [2, 4, 6, 8]);
    let res = app
        .chat_history(&format!("room_id={room_id}&before=2"), None)
        .await;
    assert_eq!(ids(&res), Vec::<i64>::new());
    let res = app
        .chat_history(&format!("room_id={room_id}&before=1000"), None)
        .await;
    assert_eq!(ids(&res), whole);

    // Pages of 4, newest first, each oldest first; joined they are the whole.
    let mut pages: Vec<Vec<i64>> = Vec::new();
    let mut query = format!("room_id={room_id}&limit=4");
    loop {
        let page = ids(&app.chat_history(&query, None).await);
        let Some(oldest) = page.first().copied() else {
            break;
        };
        assert!(page.len() <= 4);
        pages.push(page);
        query = format!("room_id={room_id}&limit=4&before={oldest}");
    }
    assert_eq!(
        pages,
        [vec![14, 16, 18, 20], vec![6, 8, 10, 12], vec![2, 4]]
    );
    let joined: Vec<i64> = pages.into_iter().rev().flatten().collect();
    assert_eq!(joined, whole);
}

async fn private_room_history_is_only_for_members(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [alice, bob, eve] = app.users(["alice", "bob", "eve"]).await;
    let room_id = app.as_user(&alice).create_room("Private", Some("pk")).await;
    app.as_user(&bob).join_private("pk").await;
    seed(
        &app,
        &[
            (1, room_id, &alice.name, "secret 1"),
            (2, room_id, &bob.name, "secret 2"),
        ],
    )
    .await;
    let query = format!("room_id={room_id}");

    app.chat_history(&query, None)
        .await
        .expect(404, "Room not found");
    app.chat_history(&query, Some(&eve))
        .await
        .expect(404, "Room not found");
    app.chat_history(&format!("{query}&limit=1&before=2"), Some(&eve))
        .await
        .expect(404, "Room not found");
    for member in [&alice, &bob] {
        let res = app.chat_history(&query, Some(member)).await;
        assert_eq!(ids(&res), [1, 2]);
        assert_eq!(res.body[1]["message"], "secret 2");
    }

    app.as_user(&bob).leave(room_id).await;
    app.chat_history(&query, Some(&bob))
        .await
        .expect(404, "Room not found");
}

async fn history_needs_an_existing_room_id(backend: Backend) {
    let app = TestApp::start(backend).await;
    let alice = app.user("alice").await;
    app.get("/api/chat_history", None)
        .await
        .expect(400, "Missing room_id parameter");
    app.get("/api/chat_history?limit=5", Some(&alice.token))
        .await
        .expect(400, "Missing room_id parameter");
    app.chat_history("room_id=777", None)
        .await
        .expect(404, "Room not found");
    app.chat_history("room_id=9007199254740991", Some(&alice))
        .await
        .expect(404, "Room not found");
}

async fn deleting_a_room_deletes_its_history_and_memberships(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [alice, bob] = app.users(["alice", "bob"]).await;
    let doomed = app.as_user(&alice).create_room("Doomed", Some("dk")).await;
    let kept = app.as_user(&alice).create_room("Kept", None).await;
    app.as_user(&bob).join_private("dk").await;
    app.as_user(&bob).join(kept).await;
    seed(
        &app,
        &[
            (1, doomed, &alice.name, "gone 1"),
            (2, doomed, &bob.name, "gone 2"),
            (3, kept, &bob.name, "stays"),
            (4, doomed, &bob.name, "gone 3"),
        ],
    )
    .await;
    let info = app.as_user(&bob).info().await;
    assert_eq!(info["message_count"], 3);
    assert_eq!(info["private_rooms_member"], 1);

    app.as_user(&alice).delete_room(doomed).await;

    // Through the API.
    for user in [&alice, &bob] {
        app.chat_history(&format!("room_id={doomed}"), Some(user))
            .await
            .expect(404, "Room not found");
        app.user_list(doomed, Some(user))
            .await
            .expect(404, "Room not found");
        let rooms = app.get("/api/user_rooms", Some(&user.token)).await;
        let listed: Vec<Value> = rooms.body.as_array().expect("list").clone();
        assert_eq!(listed.len(), 1, "{listed:?}");
        assert_eq!(listed[0]["room_id"].as_i64(), Some(kept));
    }
    assert_eq!(app.as_user(&bob).info().await, counters(1, (0, 0), (0, 1)));
    assert_eq!(
        app.as_user(&alice).info().await,
        counters(0, (0, 1), (0, 1))
    );
    // The other room is untouched.
    let res = app.chat_history(&format!("room_id={kept}"), None).await;
    assert_eq!(ids(&res), [3]);

    // In the database.
    for table in ["chat_history", "users_room", "rooms"] {
        let n = app.count_rows(table, &format!("room_id = {doomed}")).await;
        assert_eq!(n, 0, "{table} rows of the deleted room");
    }
    let kept_rows = format!("room_id = {kept}");
    assert_eq!(app.count_rows("chat_history", &kept_rows).await, 1);
    assert_eq!(app.count_rows("users_room", &kept_rows).await, 2);
}

/// Read your writes (docs/protocol.md): once a message is acknowledged, the very
/// next read has it, whoever stores it (the embedded store before the ack,
/// the persister after it).
async fn an_acknowledged_message_is_in_the_next_read(backend: Backend) {
    let app = TestApp::start_with(backend, Options::unlimited()).await;
    let ann = app.user("ann").await;
    let room = app.as_user(&ann).create_room("Fresh", None).await;
    let mut socket = app.socket(&ann).await;
    socket.join(room).await;
    for round in 1..=100 {
        let ack = socket
            .emit_with_ack(
                "message",
                json!({ "room_id": room, "message": format!("m{round}") }),
            )
            .await;
        let res = app
            .chat_history(&format!("room_id={room}&limit=1"), None)
            .await;
        assert_eq!(
            res.body[0]["chat_id"], ack["chat_id"],
            "round {round}: {res:?}"
        );
        assert_eq!(res.body[0]["message"], format!("m{round}"));
        if round % 25 == 0 {
            let info = app.as_user(&ann).info().await;
            assert_eq!(info["message_count"], round, "{info:?}");
        }
    }
}

crate::on_both_stores!(
    an_acknowledged_message_is_in_the_next_read,
    history_lists_a_rooms_messages_oldest_first_with_every_field,
    a_room_without_messages_has_an_empty_history,
    history_without_limit_returns_the_newest_1000_messages,
    history_limit_must_be_from_1_to_1000,
    history_pages_backwards_with_before,
    private_room_history_is_only_for_members,
    history_needs_an_existing_room_id,
    deleting_a_room_deletes_its_history_and_memberships,
);
