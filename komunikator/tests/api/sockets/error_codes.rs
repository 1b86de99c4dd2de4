//! Every error code a client event may be refused with, each leaving the
//! socket usable and nothing stored: 1 too long, 2 no message, 3 no room
//! or user name, 4 not in the room, 6 rate limited, 7 invalid payload.

use std::time::Duration;

use serde_json::{Value, json};

use super::history;
use crate::harness::{Backend, Chat, Options, TestApp};
use crate::sio::refusal;

async fn message_length_is_limited_to_1000_characters_not_bytes(backend: Backend) {
    let app = TestApp::start(backend).await;
    let Chat(room, [ann], [mut a]) = app.chat("lobby", ["ann"]).await;

    let at_limit = "ż".repeat(1000);
    let chat_id = a.send(room, &at_limit).await;
    let got = a.next_message().await;
    assert_eq!(
        (got["chat_id"].as_i64(), &got["message"]),
        (Some(chat_id), &json!(at_limit))
    );

    for over in ["ż".repeat(1001), "a".repeat(1001)] {
        a.expect_refused_message(
            json!({ "room_id": room, "message": over }),
            "Message is too long",
            1,
        )
        .await;
        a.assert_usable(room).await;
    }
    let stored = history(&app, &ann, room, 3).await;
    assert_eq!(stored.len(), 3, "the refused ones are not stored");
    assert_eq!(stored[0]["message"], json!(at_limit), "not truncated");
}

async fn a_missing_or_blank_message_is_code_2(backend: Backend) {
    let app = TestApp::start(backend).await;
    let Chat(room, _, [mut a]) = app.chat("lobby", ["ann"]).await;
    for payload in [
        json!({ "room_id": room }),
        json!({ "room_id": room, "message": null }),
        json!({ "room_id": room, "message": "" }),
        json!({ "room_id": room, "message": "   " }),
        json!({ "room_id": room, "message": " \t\n " }),
    ] {
        a.expect_refused_message(payload, "Missing message", 2)
            .await;
        a.assert_usable(room).await;
    }
}

async fn a_missing_room_id_or_watchdog_user_name_is_code_3(backend: Backend) {
    let app = TestApp::start(backend).await;
    let Chat(room, [ann], [mut a]) = app.chat("lobby", ["ann"]).await;
    let missing = "Missing user_name or room_id";
    for (event, payload) in [
        ("join", json!({})),
        ("join", json!({ "user_name": ann.name })),
        ("join", json!({ "room_id": null })),
        ("leave", json!({})),
        ("leave", json!({ "user_name": ann.name })),
    ] {
        a.expect_refusal(event, payload, missing, 3).await;
        a.assert_usable(room).await;
    }
    for payload in [
        json!({ "message": "x" }),
        json!({ "user_name": ann.name, "message": "x" }),
        json!({ "room_id": null, "message": "x" }),
    ] {
        a.expect_refused_message(payload, missing, 3).await;
        a.assert_usable(room).await;
    }
    for payload in [json!({}), json!({ "user_name": null })] {
        a.expect_refusal("watchdog", payload, "Missing user_name", 3)
            .await;
        a.assert_usable(room).await;
    }
}

async fn a_message_to_a_room_not_joined_is_code_4(backend: Backend) {
    let app = TestApp::start(backend).await;
    let Chat(room, [ann], [mut a]) = app.chat("lobby", ["ann"]).await;
    let bob = app.user("bob").await;
    let other = app.as_user(&ann).create_room("other", None).await;
    let mut b = app.socket(&bob).await;
    b.join(other).await;
    // Bob is not a member of `room` and his socket has not joined it.
    for target in [room, room + 1000] {
        b.expect_not_in_room(target, "hi").await;
        b.assert_usable(other).await;
    }
    // Owning and being a member is not enough: the socket must have joined.
    let mut a2 = app.socket(&ann).await;
    a2.expect_not_in_room(room, "hi").await;
    assert!(history(&app, &ann, room, 0).await.is_empty());
    // Nothing refused reached the room: the next message `a` gets is its own.
    a.assert_usable(room).await;
}

async fn messages_beyond_the_rate_limit_are_code_6(backend: Backend) {
    // A burst of 3: each socket's join spends one, two messages the rest.
    let options = Options::default()
        .with("MESSAGE_RATE_LIMIT", "1")
        .with("MESSAGE_RATE_BURST", "3");
    let app = TestApp::start_with(backend, options).await;
    let Chat(room, [ann, _], [mut a, mut b]) = app.chat("lobby", ["ann", "bob"]).await;
    a.send(room, "one").await;
    a.send(room, "two").await;
    a.expect_refused_message(
        json!({ "room_id": room, "message": "three" }),
        "Rate limited",
        6,
    )
    .await;
    // The refused one never comes: bob's next two are his and "four".
    b.next_chat_ids(2).await;
    // Another socket has its own allowance.
    b.send(room, "bob").await;
    // One message per second refills the allowance.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let chat_id = a.send(room, "four").await;
    let texts: Vec<Value> = history(&app, &ann, room, 4)
        .await
        .iter()
        .map(|m| m["message"].clone())
        .collect();
    assert_eq!(
        texts,
        vec![json!("one"), json!("two"), json!("bob"), json!("four")]
    );
    assert_eq!(b.next_chat_ids(2).await.last(), Some(&chat_id));
}

async fn payloads_that_are_not_objects_are_code_7(backend: Backend) {
    let app = TestApp::start(backend).await;
    let Chat(room, _, [mut a]) = app.chat("lobby", ["ann"]).await;
    let invalid = "Invalid payload";
    for event in ["join", "leave", "message", "watchdog"] {
        for payload in [json!("x"), json!(5), json!([room]), json!(null)] {
            if event == "message" {
                a.expect_refused_message(payload, invalid, 7).await;
            } else {
                a.expect_refusal(event, payload, invalid, 7).await;
            }
            a.assert_usable(room).await;
        }
        // No argument at all.
        a.send_raw(format!("42[\"{event}\"]"));
        assert_eq!(a.expect("error").await, refusal(invalid, 7), "{event}");
        a.assert_usable(room).await;
    }
}

async fn wrongly_typed_fields_are_code_7(backend: Backend) {
    let app = TestApp::start(backend).await;
    let Chat(room, [ann], [mut a]) = app.chat("lobby", ["ann"]).await;
    let invalid = "Invalid payload";
    for room_id in [
        json!(true),
        json!(1.5),
        json!("abc"),
        json!({ "id": room }),
        json!([room]),
    ] {
        for event in ["join", "leave"] {
            a.expect_refusal(event, json!({ "room_id": room_id }), invalid, 7)
                .await;
            a.assert_usable(room).await;
        }
        a.expect_refused_message(json!({ "room_id": room_id, "message": "x" }), invalid, 7)
            .await;
        a.assert_usable(room).await;
    }
    for payload in [
        json!({ "room_id": room, "message": 5 }),
        json!({ "room_id": room, "message": ["x"] }),
        json!({ "room_id": room, "message": "x", "user_name": 3 }),
    ] {
        a.expect_refused_message(payload, invalid, 7).await;
        a.assert_usable(room).await;
    }
    for (event, payload) in [
        ("join", json!({ "room_id": room, "user_name": 3 })),
        ("leave", json!({ "room_id": room, "user_name": true })),
        ("watchdog", json!({ "user_name": 3 })),
        ("watchdog", json!({ "user_name": [ann.name] })),
    ] {
        a.expect_refusal(event, payload, invalid, 7).await;
        a.assert_usable(room).await;
    }
    // None of the refused messages was stored.
    let stored = history(&app, &ann, room, 22).await;
    assert!(
        stored.iter().all(|m| m["message"] == "still here"),
        "{stored:?}"
    );
}

async fn a_refused_join_or_leave_with_an_ack_gets_error_and_code(backend: Backend) {
    let app = TestApp::start(backend).await;
    let [ann, bob] = app.users(["ann", "bob"]).await;
    let private = app.as_user(&ann).create_room("secret", Some("k")).await;
    let b = app.socket(&bob).await;
    let ack = b.emit_with_ack("join", json!({ "room_id": private })).await;
    assert_eq!(ack, json!({ "error": "Join failed", "code": 4 }));
    let ack = b
        .emit_with_ack(
            "leave",
            json!({ "room_id": private, "user_name": ann.name }),
        )
        .await;
    assert_eq!(ack, json!({ "error": "Forbidden", "code": 5 }));
    let ack = b.emit_with_ack("watchdog", json!({})).await;
    assert_eq!(ack, json!({ "error": "Missing user_name", "code": 3 }));
}

/// Every join is an event to every member of the room: joins (and leaves)
/// spend from the socket's allowance like messages, so a flood of them
/// reaches the room only as far as that allowance goes.
async fn joins_spend_the_socket_allowance(backend: Backend) {
    let options = Options::default()
        .with("MESSAGE_RATE_LIMIT", "1")
        .with("MESSAGE_RATE_BURST", "5");
    let app = TestApp::start_with(backend, options).await;
    let Chat(room, [_, bob], [mut a, b]) = app.chat("lobby", ["ann", "bob"]).await;
    // Bob's first join spent one of his five; he tries 40 more.
    let started = std::time::Instant::now();
    let mut accepted = 0;
    for _ in 0..40 {
        let ack = b.emit_with_ack("join", json!({ "room_id": room })).await;
        if ack.get("code").is_some() {
            assert_eq!(ack, json!({ "error": "Rate limited", "code": 6 }));
        } else {
            assert_eq!(ack["room_id"], room, "{ack}");
            accepted += 1;
        }
    }
    // The allowance left, and what one per second added meanwhile.
    let refilled = usize::try_from(started.elapsed().as_secs()).unwrap_or(usize::MAX);
    eprintln!("40 joins in {:?}: {accepted} accepted", started.elapsed());
    assert!(
        (4..=5 + refilled).contains(&accepted),
        "{accepted} accepted"
    );
    // Ann heard of exactly those, and of bob's first join (the fixture's):
    // her own message comes after them all.
    let chat_id = a.send(room, "enough").await;
    assert_eq!(a.next_message().await["chat_id"], chat_id);
    let mut heard = 0;
    while let Some(joined) = a.try_expect("user_joined", Duration::ZERO).await {
        assert_eq!(joined["user_name"], json!(bob.name));
        heard += 1;
    }
    assert_eq!(heard, accepted + 1);
}

crate::on_both_stores!(
    joins_spend_the_socket_allowance,
    message_length_is_limited_to_1000_characters_not_bytes,
    a_missing_or_blank_message_is_code_2,
    a_missing_room_id_or_watchdog_user_name_is_code_3,
    a_message_to_a_room_not_joined_is_code_4,
    messages_beyond_the_rate_limit_are_code_6,
    payloads_that_are_not_objects_are_code_7,
    wrongly_typed_fields_are_code_7,
    a_refused_join_or_leave_with_an_ack_gets_error_and_code,
);
