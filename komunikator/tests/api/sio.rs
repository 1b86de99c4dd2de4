//! A minimal Socket.IO v5 client (Engine.IO v4 over WebSocket) for the
//! black-box suite: connect with a token, emit, emit with an ack, and wait
//! for events. Compatibility with real clients is checked separately with
//! python-socketio (`compat.rs`).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// How long a test waits for an expected event: generous, as a saturated
/// two-core machine can starve the servers for seconds.
pub const WAIT: Duration = Duration::from_secs(10);

type Acks = Arc<Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// What the writer task takes as "close the WebSocket" (never a packet).
const CLOSE: &str = "\0close";

/// One connected socket.
pub struct Socket {
    out: mpsc::UnboundedSender<String>,
    events: mpsc::UnboundedReceiver<(String, Value)>,
    /// Events received while waiting for another one.
    backlog: VecDeque<(String, Value)>,
    acks: Acks,
    next_ack: AtomicU64,
}

/// How a socket presents its token.
pub enum Auth<'a> {
    Payload(&'a str),
    /// In the payload, asking for presence in batches.
    Batched(&'a str),
    Header(&'a str),
    Query(&'a str),
    None,
}

impl Socket {
    /// Connects to the default namespace; `Err` holds the connect error's message.
    pub async fn connect(base: &str, auth: Auth<'_>) -> Result<Socket, String> {
        Self::connect_with(base, auth, &[]).await
    }

    pub async fn connect_with(
        base: &str,
        auth: Auth<'_>,
        headers: &[(&str, &str)],
    ) -> Result<Socket, String> {
        let mut url = format!(
            "{}/socket.io/?EIO=4&transport=websocket",
            base.replace("http://", "ws://")
        );
        if let Auth::Query(token) = auth {
            url.push_str(&format!("&token={token}"));
        }
        let mut request = url.into_client_request().expect("request");
        if let Auth::Header(token) = auth {
            request.headers_mut().insert(
                "Authorization",
                format!("Bearer {token}").parse().expect("header"),
            );
        }
        for (name, value) in headers {
            let name =
                tokio_tungstenite::tungstenite::http::HeaderName::from_bytes(name.as_bytes())
                    .expect("header name");
            request
                .headers_mut()
                .insert(name, value.parse().expect("header"));
        }
        let (ws, _) = tokio_tungstenite::connect_async(request)
            .await
            .map_err(|e| e.to_string())?;
        let (mut sink, mut stream) = ws.split();
        let open = next_text(&mut stream).await.ok_or("no open packet")?;
        assert!(open.starts_with('0'), "engine.io open packet: {open}");
        let connect = match auth {
            Auth::Payload(token) => format!("40{}", serde_json::json!({ "token": token })),
            Auth::Batched(token) => format!(
                "40{}",
                serde_json::json!({ "token": token, "presence": "batched" })
            ),
            _ => "40".to_owned(),
        };
        sink.send(Message::text(connect))
            .await
            .map_err(|e| e.to_string())?;
        // Engine.IO pings ("2") may come first: answer them while waiting.
        let answer = loop {
            let text = next_text(&mut stream).await.ok_or("no connect answer")?;
            if text == "2" {
                sink.send(Message::text("3"))
                    .await
                    .map_err(|e| e.to_string())?;
            } else {
                break text;
            }
        };
        if let Some(error) = answer.strip_prefix("44") {
            let body: Value = serde_json::from_str(error).unwrap_or(Value::Null);
            return Err(body["message"].as_str().unwrap_or(error).to_owned());
        }
        assert!(answer.starts_with("40"), "connect answer: {answer}");

        let (out, mut outgoing) = mpsc::unbounded_channel::<String>();
        tokio::spawn(async move {
            while let Some(text) = outgoing.recv().await {
                if text == CLOSE {
                    let _ = sink.send(Message::Close(None)).await;
                    break;
                }
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
        });
        let (events_tx, events) = mpsc::unbounded_channel();
        let acks: Acks = Arc::default();
        let reader_acks = acks.clone();
        let pong = out.clone();
        tokio::spawn(async move {
            while let Some(text) = next_text(&mut stream).await {
                if text == "2" {
                    let _ = pong.send("3".into());
                } else if let Some(event) = text.strip_prefix("42") {
                    if let Ok(Value::Array(mut items)) = serde_json::from_str::<Value>(event) {
                        let name = items
                            .first()
                            .and_then(Value::as_str)
                            .unwrap_or_default()
                            .to_owned();
                        let arg = if items.len() > 1 {
                            items.swap_remove(1)
                        } else {
                            Value::Null
                        };
                        let _ = events_tx.send((name, arg));
                    }
                } else if let Some(ack) = text.strip_prefix("43") {
                    let split = ack.find('[').unwrap_or(ack.len());
                    let id: u64 = ack[..split].parse().unwrap_or(u64::MAX);
                    let body: Value = serde_json::from_str(&ack[split..]).unwrap_or(Value::Null);
                    let waiter = reader_acks.lock().expect("acks").remove(&id);
                    if let Some(waiter) = waiter {
                        let _ = waiter.send(body.get(0).cloned().unwrap_or(Value::Null));
                    }
                } else if text.starts_with("41") || text.starts_with('1') {
                    let _ = events_tx.send(("disconnect".into(), Value::Null));
                }
            }
            let _ = events_tx.send(("disconnect".into(), Value::Null));
        });
        Ok(Socket {
            out,
            events,
            backlog: VecDeque::new(),
            acks,
            next_ack: AtomicU64::new(1),
        })
    }

    /// Leaves as a client does: a Socket.IO disconnect, then the
    /// WebSocket's close. (Dropping a socket leaves its connection open.)
    pub fn close(self) {
        let _ = self.out.send("41".into());
        let _ = self.out.send(CLOSE.into());
    }

    /// Sends an event with one argument.
    pub fn emit(&self, event: &str, data: Value) {
        self.send_raw(format!("42{}", serde_json::json!([event, data])));
    }

    /// Sends a raw Socket.IO packet (for malformed-input tests).
    pub fn send_raw(&self, packet: String) {
        self.out.send(packet).expect("socket open");
    }

    /// Sends an event and waits for its acknowledgement.
    pub async fn emit_with_ack(&self, event: &str, data: Value) -> Value {
        self.emit_with_ack_within(event, data, WAIT).await
    }

    /// Sends an event and waits at most `wait` for its acknowledgement.
    pub async fn emit_with_ack_within(&self, event: &str, data: Value, wait: Duration) -> Value {
        let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.acks.lock().expect("acks").insert(id, tx);
        self.send_raw(format!("42{id}{}", serde_json::json!([event, data])));
        tokio::time::timeout(wait, rx)
            .await
            .unwrap_or_else(|_| panic!("no ack within {wait:?}"))
            .expect("ack")
    }

    /// The next `event`, within [`WAIT`]; other events are kept for later.
    pub async fn expect(&mut self, event: &str) -> Value {
        match self.try_expect(event, WAIT).await {
            Some(value) => value,
            None => panic!(
                "no `{event}` within {WAIT:?}; received meanwhile: {:?}",
                self.backlog
            ),
        }
    }

    /// The next `event` within `wait`, if any.
    pub async fn try_expect(&mut self, event: &str, wait: Duration) -> Option<Value> {
        if let Some(i) = self.backlog.iter().position(|(name, _)| name == event) {
            return self.backlog.remove(i).map(|(_, v)| v);
        }
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some((name, value))) if name == event => return Some(value),
                Ok(Some(other)) => self.backlog.push_back(other),
                Ok(None) | Err(_) => return None,
            }
        }
    }

    /// Everything the server sent this socket before it answered a round
    /// trip has arrived (one connection delivers in order). The round trip
    /// is a `join` of a room that cannot exist, refused (code 4); its
    /// `error` event is taken, the rest kept for later.
    pub async fn round_trip(&mut self) {
        let ack = self
            .emit_with_ack("join", serde_json::json!({ "room_id": 0 }))
            .await;
        assert_eq!(
            ack,
            serde_json::json!({ "error": "Join failed", "code": 4 }),
            "the round trip's answer"
        );
        // The reader queued the refusal's `error` before it passed the ack on.
        while let Ok(event) = self.events.try_recv() {
            self.backlog.push_back(event);
        }
        let error = refusal("Join failed", 4);
        let i = self
            .backlog
            .iter()
            .rposition(|(name, value)| name == "error" && *value == error)
            .expect("the round trip's error event");
        self.backlog.remove(i);
    }

    /// Asserts that no `event` came before a round trip. The barrier for a
    /// negative check: call it once the test has seen that the server would
    /// have sent the event by now (a socket of the same gateway in the same
    /// room got it, or a later event of the same room).
    pub async fn assert_none_so_far(&mut self, event: &str) {
        self.round_trip().await;
        if let Some((_, value)) = self.backlog.iter().find(|(name, _)| name == event) {
            panic!("unexpected `{event}`: {value}");
        }
    }

    /// Asserts no `event` arrives within `wait`.
    pub async fn expect_none(&mut self, event: &str, wait: Duration) {
        if let Some(v) = self.try_expect(event, wait).await {
            panic!("unexpected `{event}`: {v}");
        }
    }

    /// Joins a room and waits for the acknowledgement only (in a large room
    /// nobody gets `user_joined`).
    pub async fn join_acked(&mut self, room_id: i64) {
        let ack = self
            .emit_with_ack("join", serde_json::json!({ "room_id": room_id }))
            .await;
        assert_eq!(ack["room_id"], room_id, "join refused: {ack}");
    }

    /// Joins a room and waits until the socket sees its own `user_joined`.
    pub async fn join(&mut self, room_id: i64) {
        self.emit("join", serde_json::json!({ "room_id": room_id }));
        loop {
            let joined = self.expect("user_joined").await;
            if joined["room_id"] == room_id {
                return;
            }
        }
    }
}

/// The body of an `error` event refusing a client event.
pub fn refusal(message: &str, code: u8) -> Value {
    serde_json::json!({ "message": message, "code": code })
}

/// Komunikator's client events, as the tests send them again and again.
impl Socket {
    /// Sends a chat message with an ack; returns its chat id, asserting
    /// the ack is exactly `{chat_id}`.
    pub async fn send(&self, room: i64, text: &str) -> i64 {
        let ack = self
            .emit_with_ack(
                "message",
                serde_json::json!({ "room_id": room, "message": text }),
            )
            .await;
        let chat_id = ack["chat_id"]
            .as_i64()
            .unwrap_or_else(|| panic!("no chat_id in the ack: {ack}"));
        assert_eq!(ack, serde_json::json!({ "chat_id": chat_id }));
        chat_id
    }

    /// The next `new_message`.
    pub async fn next_message(&mut self) -> Value {
        self.expect("new_message").await
    }

    /// The chat ids of the next `n` `new_message`s, in order.
    pub async fn next_chat_ids(&mut self, n: usize) -> Vec<i64> {
        let mut ids = Vec::with_capacity(n);
        while ids.len() < n {
            let message = self.next_message().await;
            ids.push(message["chat_id"].as_i64().expect("chat_id"));
        }
        ids
    }

    /// Emits `event` and asserts the socket gets exactly this `error`.
    pub async fn expect_refusal(&mut self, event: &str, payload: Value, message: &str, code: u8) {
        self.emit(event, payload.clone());
        assert_eq!(
            self.expect("error").await,
            refusal(message, code),
            "{event} {payload}"
        );
    }

    /// Sends a `message` asking for an ack and asserts it is refused: the
    /// ack is `{error, code}` and an `error` event `{message, code}` arrives too.
    pub async fn expect_refused_message(&mut self, payload: Value, message: &str, code: u8) {
        let ack = self.emit_with_ack("message", payload.clone()).await;
        assert_eq!(
            ack,
            serde_json::json!({ "error": message, "code": code }),
            "ack of {payload}"
        );
        assert_eq!(
            self.expect("error").await,
            refusal(message, code),
            "error of {payload}"
        );
    }

    /// Asserts a message `text` to `room` is refused as the socket is not
    /// in the room: "Join failed", code 4.
    pub async fn expect_not_in_room(&mut self, room: i64, text: &str) {
        let payload = serde_json::json!({ "room_id": room, "message": text });
        self.expect_refused_message(payload, "Join failed", 4).await;
    }

    /// Proves the socket still works: a valid message is acknowledged and comes back.
    pub async fn assert_usable(&mut self, room: i64) {
        let chat_id = self.send(room, "still here").await;
        let got = self.next_message().await;
        assert_eq!(got["chat_id"], chat_id, "{got}");
    }
}

async fn next_text<S>(stream: &mut S) -> Option<String>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(message) = stream.next().await {
        match message {
            Ok(Message::Text(text)) => return Some(text.to_string()),
            Ok(Message::Close(_)) | Err(_) => return None,
            Ok(_) => {}
        }
    }
    None
}
