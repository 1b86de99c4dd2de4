//! Chat messages published in atomic batches: on a current nats-server
//! with the shipped configuration (`sync_interval: always`), a gateway
//! publishes what is waiting as one batch, stored with one sync. Batches
//! change how every acknowledged message is stored, so: each message is
//! stored once, a sender's messages keep their order, members get them all
//! in `chat_id` order, and a batch holding a resend of a stored message
//! (refused whole by the stream) still stores the rest once and in order.

use futures_util::future::join_all;
use serde_json::json;

use crate::harness::{Backend, Chat, Options, TestApp, eventually, metric_in, metrics};
use crate::servers::{OwnedServer, current_nats};
use crate::sio::Socket;

/// Messages a sender has in flight at once (the gateway allows 64).
const IN_FLIGHT: usize = 25;

/// The distributed services on `nats`.
async fn app_on(nats: &OwnedServer) -> TestApp {
    TestApp::start_with(
        Backend::MySql,
        Options::unlimited().with("NATS_URL", nats.url.clone()),
    )
    .await
}

/// Sends `payloads` from `sock` all in flight at once, in order; their
/// acknowledgements, in the same order.
async fn pipelined(sock: &Socket, payloads: Vec<serde_json::Value>) -> Vec<serde_json::Value> {
    join_all(
        payloads
            .into_iter()
            .map(|payload| sock.emit_with_ack("message", payload)),
    )
    .await
}

fn chat_ids(acks: &[serde_json::Value]) -> Vec<i64> {
    acks.iter()
        .map(|ack| {
            ack["chat_id"]
                .as_i64()
                .unwrap_or_else(|| panic!("refused: {ack}"))
        })
        .collect()
}

fn assert_increasing(ids: &[i64], who: &str) {
    assert!(
        ids.windows(2).all(|w| w[0] < w[1]),
        "{who}'s messages stored out of order: {ids:?}"
    );
}

/// Asserts that no id was given twice and that the room's history holds
/// exactly the acknowledged `ids` (sorted), each once.
async fn assert_history(app: &TestApp, room: i64, ids: &[i64]) {
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "an id was given twice");
    eventually(std::time::Duration::from_secs(10), async || {
        let history = app
            .chat_history(&format!("room_id={room}&limit=1000"), None)
            .await
            .chat_ids();
        if history == ids {
            Ok(())
        } else {
            Err(format!(
                "{} in the history, {} acknowledged",
                history.len(),
                ids.len()
            ))
        }
    })
    .await;
}

/// What the gateway's batch metrics say: (messages, publishes, refused).
async fn batch_metrics(app: &TestApp) -> (f64, f64, f64) {
    let text = metrics(&app.gateways[0].url).await;
    let read = |name: &str| metric_in(&text, name).unwrap_or_else(|| panic!("{name} is exported"));
    (
        read("komunikator_chat_publish_batch_messages_sum"),
        read("komunikator_chat_publish_batch_messages_count"),
        read("komunikator_chat_publish_batches_refused_total"),
    )
}

/// Four senders with 25 messages in flight each: the gateway stores them
/// in batches (fewer publishes than messages), each once, each sender's in
/// the order sent, and a member gets every one in `chat_id` order.
#[tokio::test]
async fn pipelined_messages_are_stored_in_batches_once_and_in_order() {
    let nats = current_nats("batches").await;
    let app = app_on(&nats).await;
    let Chat(room, _, [s0, s1, s2, s3, mut member]) = app
        .chat("batched", ["s0", "s1", "s2", "s3", "member"])
        .await;
    let senders = [s0, s1, s2, s3];
    const ROUNDS: usize = 4;
    let sent = join_all(senders.iter().enumerate().map(|(s, sock)| async move {
        let mut ids = Vec::new();
        for round in 0..ROUNDS {
            let payloads = (0..IN_FLIGHT)
                .map(|i| json!({ "room_id": room, "message": format!("s{s} r{round} #{i}") }))
                .collect();
            ids.extend(chat_ids(&pipelined(sock, payloads).await));
        }
        ids
    }))
    .await;

    for (s, ids) in sent.iter().enumerate() {
        assert_increasing(ids, &format!("sender {s}"));
    }
    let mut all: Vec<i64> = sent.concat();
    all.sort_unstable();
    let total = senders.len() * ROUNDS * IN_FLIGHT;
    assert_eq!(all.len(), total);
    assert_history(&app, room, &all).await;
    assert_eq!(member.next_chat_ids(total).await, all, "the member's view");

    let (messages, publishes, refused) = batch_metrics(&app).await;
    eprintln!("batches: {messages} messages in {publishes} publishes, {refused} refused");
    assert!(
        messages >= total as f64,
        "every message counted: {messages}"
    );
    assert!(
        publishes < messages,
        "no batch of more than one message: {publishes} publishes of {messages}"
    );
    assert_eq!(refused, 0.0, "no batch was refused");
    // Only the gateway appends: only it runs a publishing task.
    let started = "chat messages are published one by one, and in atomic batches";
    assert_eq!(app.gateways[0].logs().matches(started).count(), 1);
    let persister = app.persister.as_ref().expect("persister");
    for (name, service) in [("api", &app.main), ("persister", persister)] {
        assert!(!service.logs().contains(started), "{name} publishes");
    }
}

/// A resend (same `client_msg_id`) of a stored message, sent amid other
/// senders' messages, lands in a batch the stream refuses whole: the
/// gateway publishes that batch again message by message. The resend gets
/// its first id, nothing is stored or delivered twice, no sender's order
/// changes.
#[tokio::test]
async fn a_resend_in_a_batch_gets_its_first_id_and_the_rest_arrive_once_in_order() {
    let nats = current_nats("batches").await;
    let app = app_on(&nats).await;
    let Chat(room, _, [ann, bob, cid, mut member]) =
        app.chat("resent", ["ann", "bob", "cid", "member"]).await;
    let first = json!({ "room_id": room, "message": "once", "client_msg_id": "first" });
    let first_id = chat_ids(&[ann.emit_with_ack("message", first.clone()).await])[0];

    // At most 12 × 74 + 1 messages: the history's one page of 1,000.
    const ROUNDS_MAX: usize = 12;
    let mut expected = vec![first_id];
    // Until a batch held the resend: how the gateway groups what it gets
    // is its own, so rounds are sent until the refusal counter moves.
    for round in 0..ROUNDS_MAX {
        let burst = |who: &str, resend: bool| -> Vec<serde_json::Value> {
            (0..IN_FLIGHT)
                .map(|i| {
                    if resend && i == IN_FLIGHT / 2 {
                        first.clone()
                    } else {
                        json!({ "room_id": room, "message": format!("{who} r{round} #{i}"),
                                "client_msg_id": format!("{who}-{round}-{i}") })
                    }
                })
                .collect()
        };
        let (a, b, c) = tokio::join!(
            pipelined(&ann, burst("ann", true)),
            pipelined(&bob, burst("bob", false)),
            pipelined(&cid, burst("cid", false)),
        );
        let mut a = chat_ids(&a);
        assert_eq!(
            a.remove(IN_FLIGHT / 2),
            first_id,
            "the resend's id in round {round}"
        );
        for (who, ids) in [("ann", &a), ("bob", &chat_ids(&b)), ("cid", &chat_ids(&c))] {
            assert_increasing(ids, who);
            expected.extend(ids);
        }
        let (_, _, refused) = batch_metrics(&app).await;
        if refused > 0.0 {
            eprintln!("a batch held the resend in round {round}");
            break;
        }
        assert!(
            round + 1 < ROUNDS_MAX,
            "no batch held the resend in {ROUNDS_MAX} rounds"
        );
    }

    expected.sort_unstable();
    assert_history(&app, room, &expected).await;
    // Delivered once too: the member gets each id once, in order, and
    // nothing else before the next message.
    assert_eq!(
        member.next_chat_ids(expected.len()).await,
        expected,
        "the member's view"
    );
    let next = json!({ "room_id": room, "message": "after" });
    let next_id = chat_ids(&[ann.emit_with_ack("message", next).await])[0];
    assert_eq!(member.next_chat_ids(1).await, [next_id], "a late duplicate");
}
