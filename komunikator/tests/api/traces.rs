//! OpenTelemetry traces, as a collector receives them (`otlp::Collector`):
//! one chat message is one trace from the sender's gateway through the
//! chat stream to every gateway that delivers it and to the persister's
//! commit; heartbeats continue into presence; REST requests continue the
//! caller's `traceparent`; log lines carry the ids of their span.

use serde_json::json;

use crate::harness::{Backend, TestApp, random_hex};
use crate::otlp::{CLIENT, CONSUMER, Collector, PRODUCER, SERVER, Span};
use crate::sio::{Auth, Socket};

/// A `traceparent` of a caller's own trace: (header, trace id, span id).
fn caller_trace() -> (String, String, String) {
    let (trace, span) = (random_hex(16), random_hex(8));
    (format!("00-{trace}-{span}-01"), trace, span)
}

fn one(spans: &[Span], what: impl Fn(&Span) -> bool) -> Option<&Span> {
    spans.iter().find(|s| what(s))
}

#[tokio::test]
async fn one_chat_message_is_one_trace_from_gateway_to_persister() {
    let collector = Collector::start().await;
    let mut app = TestApp::start_with(Backend::MySql, collector.options()).await;
    app.add_gateway().await;
    // Ann on gateway 0, Bob on gateway 1: the message crosses processes.
    let crate::harness::Chat(room, _, [ann, mut bob]) = app.chat("traced", ["ann", "bob"]).await;
    let chat_id = ann.send(room, "follow me").await;
    assert_eq!(bob.next_message().await["chat_id"], chat_id);

    let sent = format!("send {}.chat.{room}", app.prefix);
    let (event, publish) = collector
        .wait_for("the message's publish span", |spans| {
            let publish = one(spans, |s| {
                s.name == sent
                    && s.attr("messaging.nats.stream.sequence") == Some(&chat_id.to_string())
            })?;
            let event = one(spans, |s| s.span_id == publish.parent)?;
            Some((event.clone(), publish.clone()))
        })
        .await;
    let trace = event.trace_id.clone();
    // The socket event is the root of the message's trace.
    assert_eq!(event.name, "socket.io message");
    assert_eq!((event.kind, event.parent.as_str()), (SERVER, ""));
    assert_eq!(event.service, "komunikator-gateway");
    assert!(
        !event.links.is_empty(),
        "linked to the socket's connect span"
    );
    assert_eq!(publish.kind, PRODUCER);
    assert_eq!(publish.attr("messaging.system"), Some("nats"));
    assert!(
        publish.end_ns <= event.end_ns,
        "acknowledged within the event"
    );
    let in_trace = |s: &Span| s.trace_id == trace;
    let check = collector
        .wait_for("the check span", |spans| {
            one(spans, |s| in_trace(s) && s.name == "check message").cloned()
        })
        .await;
    assert_eq!(check.parent, event.span_id);

    // Each gateway with a member's socket delivers it, in the same trace.
    let deliveries = collector
        .wait_for("a delivery on each gateway", |spans| {
            let deliveries: Vec<Span> = spans
                .iter()
                .filter(|s| in_trace(s) && s.name == "process new_message")
                .cloned()
                .collect();
            (deliveries.len() == 2).then_some(deliveries)
        })
        .await;
    for delivery in &deliveries {
        assert_eq!(delivery.kind, CONSUMER);
        assert_eq!(delivery.parent, publish.span_id);
        assert_eq!(delivery.service, "komunikator-gateway");
    }
    assert_ne!(
        deliveries[0].instance, deliveries[1].instance,
        "two gateway processes"
    );

    // The persister stores it: its span of the message is a child of the
    // publish, and the batch's span links to it and holds the insert.
    let persisted = collector
        .wait_for("the persister's span of the message", |spans| {
            one(spans, |s| in_trace(s) && s.name == "process chat message").cloned()
        })
        .await;
    assert_eq!(persisted.service, "komunikator-persister");
    assert_eq!(
        (persisted.kind, &persisted.parent),
        (CONSUMER, &publish.span_id)
    );
    let (batch, insert) = collector
        .wait_for("the batch that stored it", |spans| {
            let batch = one(spans, |s| {
                s.name == "persist batch"
                    && s.links
                        .contains(&(trace.clone(), persisted.span_id.clone()))
            })?;
            let insert = one(spans, |s| s.parent == batch.span_id)?;
            Some((batch.clone(), insert.clone()))
        })
        .await;
    assert_eq!(batch.service, "komunikator-persister");
    assert_eq!(insert.name, "insert_messages");
    assert_eq!(insert.kind, CLIENT);
    assert_eq!(insert.attr("db.system.name"), Some("mysql"));

    let mut spans: Vec<Span> = collector
        .spans()
        .into_iter()
        .filter(|s| in_trace(s))
        .collect();
    spans.sort_by_key(|s| s.start_ns);
    let start = spans[0].start_ns;
    eprintln!("trace {trace}:");
    for s in spans.iter().chain([&batch, &insert]) {
        eprintln!(
            "  {:>8} µs +{:>8} µs  {:<22} {:<24} span {} parent {}",
            (s.start_ns.saturating_sub(start)) / 1000,
            s.micros(),
            s.service,
            s.name,
            s.span_id,
            if s.parent.is_empty() { "-" } else { &s.parent },
        );
    }
}

/// A traced message carries its trace context and its `Nats-Msg-Id` in
/// the same headers: a resend (same `client_msg_id`) is still stored once.
#[tokio::test]
async fn a_traced_messages_resend_is_stored_once() {
    let collector = Collector::start().await;
    let app = TestApp::start_with(Backend::MySql, collector.options()).await;
    let crate::harness::Chat(room, _, [ann]) = app.chat("traced resend", ["ann"]).await;
    let payload = json!({ "room_id": room, "message": "once", "client_msg_id": "m-1" });
    let first = ann.emit_with_ack("message", payload.clone()).await;
    let again = ann.emit_with_ack("message", payload).await;
    assert!(first["chat_id"].is_i64(), "acknowledged: {first}");
    assert_eq!(again, first, "the resend's acknowledgement");
    let sent = format!("send {}.chat.{room}", app.prefix);
    collector
        .wait_for("the message's publish span", |spans| {
            one(spans, |s| s.name == sent).map(drop)
        })
        .await;
    let history = app
        .chat_history(&format!("room_id={room}"), None)
        .await
        .chat_ids();
    assert_eq!(history, vec![first["chat_id"].as_i64().unwrap_or_default()]);
}

#[tokio::test]
async fn heartbeats_continue_their_trace_into_presence() {
    let collector = Collector::start().await;
    let app = TestApp::start_with(Backend::MySql, collector.options()).await;
    let ann = app.user("ann").await;
    let socket = app.socket(&ann).await;
    socket.emit("watchdog", json!({ "user_name": ann.name }));
    let (forward, processed) = collector
        .wait_for("a heartbeat processed by presence", |spans| {
            let processed = one(spans, |s| {
                s.service == "komunikator-presence" && s.name.starts_with("process ")
            })?;
            let forward = one(spans, |s| s.span_id == processed.parent)?;
            Some((forward.clone(), processed.clone()))
        })
        .await;
    assert_eq!(forward.service, "komunikator-gateway");
    assert_eq!(forward.kind, PRODUCER);
    assert_eq!(processed.kind, CONSUMER);
    assert_eq!(processed.trace_id, forward.trace_id);
    // The batch that recorded it calls the Redis script.
    let script = collector
        .wait_for("the Redis script span", |spans| {
            one(spans, |s| {
                s.name == "EVALSHA heartbeats"
                    && spans.iter().any(|b| {
                        b.span_id == s.parent
                            && b.links
                                .contains(&(processed.trace_id.clone(), processed.span_id.clone()))
                    })
            })
            .cloned()
        })
        .await;
    assert_eq!(script.kind, CLIENT);
    assert_eq!(script.attr("db.system.name"), Some("redis"));
    assert_eq!(script.attr("db.stored_procedure.name"), Some("heartbeats"));
}

async fn rest_requests_continue_the_callers_trace(backend: Backend) {
    let collector = Collector::start().await;
    let app = TestApp::start_with(backend, collector.options()).await;
    let ann = app.user("ann").await;
    let (traceparent, trace, caller) = caller_trace();
    let res = app
        .send(
            app.request(reqwest::Method::POST, "/api/room/create", Some(&ann.token))
                .header("traceparent", &traceparent)
                .json(&json!({ "room_name": "traced", "is_private": false })),
        )
        .await;
    assert_eq!(res.status, 200, "{res:?}");
    let service = match backend {
        Backend::MySql => "komunikator-api",
        Backend::Embedded => "komunikator-all",
    };
    let request = collector
        .wait_for("the request's span", |spans| {
            one(spans, |s| s.trace_id == trace && s.parent == caller).cloned()
        })
        .await;
    assert_eq!(request.name, "POST /api/room/create");
    assert_eq!(request.service, service);
    assert_eq!(request.kind, SERVER);
    assert_eq!(request.attr("http.request.method"), Some("POST"));
    assert_eq!(request.attr("http.route"), Some("/api/room/create"));
    assert_eq!(request.attr("http.response.status_code"), Some("200"));
    assert_eq!(request.status, 0, "a success leaves the status unset");
    // Its queries and the room event it publishes are its children.
    let engine = match backend {
        Backend::MySql => "mysql",
        Backend::Embedded => "sqlite",
    };
    let query = collector
        .wait_for("the create_room query", |spans| {
            one(spans, |s| {
                s.parent == request.span_id && s.name == "create_room"
            })
            .cloned()
        })
        .await;
    assert_eq!(query.attr("db.system.name"), Some(engine));
    let event = collector
        .wait_for("the room list event", |spans| {
            one(spans, |s| s.parent == request.span_id && s.kind == PRODUCER).cloned()
        })
        .await;
    assert_eq!(event.name, "send room_list_updated");

    // A room event continues the request's trace into each gateway that
    // delivers it to the room's sockets.
    let room = res.body["room_id"].as_i64().expect("room_id");
    let mut socket = app.socket(&ann).await;
    socket.join(room).await;
    let bob = app.user("bob").await;
    let (traceparent, trace, caller) = caller_trace();
    let res = app
        .send(
            app.request(
                reqwest::Method::POST,
                "/api/room/join_public",
                Some(&bob.token),
            )
            .header("traceparent", &traceparent)
            .json(&json!({ "room_id": room })),
        )
        .await;
    assert_eq!(res.status, 200, "{res:?}");
    socket.expect("user_list_updated").await;
    let (request, send, delivered) = collector
        .wait_for("the gateway's delivery of the room event", |spans| {
            let delivered = one(spans, |s| {
                s.trace_id == trace && s.name == "process user_list_updated"
            })?;
            let send = one(spans, |s| s.span_id == delivered.parent)?;
            let request = one(spans, |s| s.span_id == send.parent)?;
            Some((request.clone(), send.clone(), delivered.clone()))
        })
        .await;
    assert_eq!(request.name, "POST /api/room/join_public");
    assert_eq!(request.parent, caller);
    assert_eq!((send.kind, delivered.kind), (PRODUCER, CONSUMER));

    // A refusal is the client's error: status code recorded, span not failed.
    let (traceparent, trace, _) = caller_trace();
    let res = app
        .send(
            app.request(reqwest::Method::GET, "/api/user/get_info", None)
                .header("traceparent", &traceparent),
        )
        .await;
    assert_eq!(res.status, 401);
    let refused = collector
        .wait_for("the refused request's span", |spans| {
            one(spans, |s| s.trace_id == trace && s.kind == SERVER).cloned()
        })
        .await;
    assert_eq!(refused.attr("http.response.status_code"), Some("401"));
    assert_eq!(refused.status, 0);

    // A caller that did not sample its trace gets none of it recorded here
    // (the requests after it are, once exported, proof that it was not).
    let (sampled, sampled_trace, _) = caller_trace();
    let (unsampled, unsampled_trace, _) = caller_trace();
    let unsampled = unsampled.replace("-01", "-00");
    for traceparent in [&unsampled, &sampled] {
        let res = app
            .send(
                app.request(reqwest::Method::POST, "/api/room/create", Some(&ann.token))
                    .header("traceparent", traceparent)
                    .json(&json!({ "room_name": "unsampled", "is_private": false })),
            )
            .await;
        assert_eq!(res.status, 200);
    }
    collector
        .wait_for("the sampled request's query", |spans| {
            one(spans, |s| {
                s.trace_id == sampled_trace && s.name == "create_room"
            })
            .cloned()
        })
        .await;
    let recorded: Vec<Span> = collector
        .spans()
        .into_iter()
        .filter(|s| s.trace_id == unsampled_trace)
        .collect();
    assert!(
        recorded.is_empty(),
        "an unsampled trace was recorded: {recorded:?}"
    );
}

async fn log_lines_carry_the_trace_and_span_ids(backend: Backend) {
    let collector = Collector::start().await;
    let app = TestApp::start_with(backend, collector.options()).await;
    let (traceparent, trace, _) = caller_trace();
    let refused = Socket::connect_with(
        app.gateway_url(0),
        Auth::Payload("not-a-token"),
        &[("traceparent", &traceparent)],
    )
    .await;
    assert!(refused.is_err());
    // The refusal is logged in the connect span, a child of the handshake's.
    let connect = collector
        .wait_for("the connect span", |spans| {
            one(spans, |s| {
                s.trace_id == trace && s.name == "socket.io connect"
            })
            .cloned()
        })
        .await;
    assert_eq!(connect.attr("error.type"), Some("invalid_token"));
    let ids = format!(
        "\"trace_id\":\"{trace}\",\"span_id\":\"{}\"",
        connect.span_id
    );
    let logged = app
        .logs()
        .lines()
        .any(|l| l.contains(&ids) && l.contains("socket connection refused"));
    assert!(logged, "no log line with {ids}:\n{}", app.logs());
}

/// Spans still buffered when the process is told to stop are exported
/// before it exits (the export interval is far longer than the test).
async fn spans_are_flushed_on_graceful_shutdown(backend: Backend) {
    let collector = Collector::start().await;
    let options = collector
        .options()
        .with("OTEL_BSP_SCHEDULE_DELAY", "600000");
    let mut app = TestApp::start_with(backend, options).await;
    let (traceparent, trace, _) = caller_trace();
    let res = app
        .send(
            app.request(reqwest::Method::GET, "/api/rooms", None)
                .header("traceparent", &traceparent),
        )
        .await;
    assert_eq!(res.status, 200);
    assert!(collector.spans().iter().all(|s| s.trace_id != trace));
    assert_eq!(app.terminate().await, Some(0));
    let request = collector
        .wait_for("the request's span, flushed at exit", |spans| {
            one(spans, |s| s.trace_id == trace && s.kind == SERVER).cloned()
        })
        .await;
    assert_eq!(request.name, "GET /api/rooms");
}

crate::on_both_stores!(
    spans_are_flushed_on_graceful_shutdown,
    rest_requests_continue_the_callers_trace,
    log_lines_carry_the_trace_and_span_ids,
);
