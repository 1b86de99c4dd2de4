//! A lean Socket.IO v5 client (Engine.IO v4, WebSocket transport only), made
//! for load: one task per socket, no JSON tree per frame (incoming frames are
//! scanned for the few fields the scenarios need), heartbeats from the
//! socket's own task, optional source address to spread connections over
//! 127.0.0.x.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use anyhow::{Context, bail};
use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_util::sync::CancellationToken;

/// How long a connect or a join may take before it counts as failed.
pub const SETUP_TIMEOUT: Duration = Duration::from_secs(30);

/// Read buffer of each socket (the server's frames are small).
const READ_BUFFER: usize = 4096;

/// A connected, authenticated socket, not yet driven.
pub struct Socket {
    ws: WebSocketStream<TcpStream>,
    pub user: String,
}

/// What a driven socket does with the frames it receives.
pub trait Events: Send + 'static {
    /// An event (`42["name",...]`); `frame` is the whole text frame.
    fn event(&mut self, _name: &str, _frame: &str) {}
    /// An acknowledgement (`43<id>[...]`); `body` is the text after the id.
    fn ack(&mut self, _id: u64, _body: &str) {}
}

/// A socket whose received events are of no interest (idle connections).
pub struct Ignore;
impl Events for Ignore {}

/// `host:port` of an `http://host:port` base URL.
pub fn address(base: &str) -> anyhow::Result<SocketAddr> {
    let rest = base
        .strip_prefix("http://")
        .context("only http:// gateways are supported")?;
    let authority = rest.split('/').next().unwrap_or(rest);
    authority
        .parse()
        .with_context(|| format!("{authority} is not an ip:port address"))
}

impl Socket {
    /// Opens a WebSocket to `base`, optionally from `source`, and connects
    /// to the default namespace with `token` in the auth payload.
    pub async fn connect(
        base: &str,
        user: &str,
        token: &str,
        source: Option<IpAddr>,
    ) -> anyhow::Result<Socket> {
        Self::connect_with(base, user, token, source, false).await
    }

    /// [`Self::connect`], asking for presence in batches when `batched`
    /// (docs/protocol.md, "Presence").
    pub async fn connect_with(
        base: &str,
        user: &str,
        token: &str,
        source: Option<IpAddr>,
        batched: bool,
    ) -> anyhow::Result<Socket> {
        let auth = if batched {
            serde_json::json!({ "token": token, "presence": "batched" })
        } else {
            serde_json::json!({ "token": token })
        };
        tokio::time::timeout(SETUP_TIMEOUT, Self::open(base, user, auth, source))
            .await
            .context("connect timed out")?
    }

    async fn open(
        base: &str,
        user: &str,
        auth: serde_json::Value,
        source: Option<IpAddr>,
    ) -> anyhow::Result<Socket> {
        let target = address(base)?;
        let tcp = if target.is_ipv4() {
            TcpSocket::new_v4()?
        } else {
            TcpSocket::new_v6()?
        };
        if let Some(ip) = source {
            tcp.bind(SocketAddr::new(ip, 0))?;
        }
        let stream = tcp.connect(target).await?;
        stream.set_nodelay(true)?;
        let url = format!("ws://{target}/socket.io/?EIO=4&transport=websocket");
        // tungstenite's default 128 KiB read buffer is zeroed on every read:
        // with thousands of sockets that memset dominated the generator's profile.
        let config = WebSocketConfig::default().read_buffer_size(READ_BUFFER);
        let (mut ws, _) =
            tokio_tungstenite::client_async_with_config(url, stream, Some(config)).await?;
        let open = next_text(&mut ws).await.context("no open packet")?;
        if !open.starts_with('0') {
            bail!("unexpected engine.io open packet {open}");
        }
        ws.send(Message::text(format!("40{auth}"))).await?;
        loop {
            let frame = next_text(&mut ws)
                .await
                .context("closed while connecting")?;
            if frame.starts_with("40") {
                break;
            }
            if frame.starts_with("44") {
                bail!("connect refused: {frame}");
            }
            if frame == "2" {
                ws.send(Message::text("3")).await?;
            }
        }
        Ok(Socket {
            ws,
            user: user.to_owned(),
        })
    }

    /// Joins `room` and waits for the join's acknowledgement (in a large
    /// room nobody is sent `user_joined`, the joiner included).
    pub async fn join(&mut self, room: i64) -> anyhow::Result<()> {
        let frame = format!(r#"420["join",{{"room_id":{room}}}]"#);
        self.ws.send(Message::text(frame)).await?;
        let wait = async {
            loop {
                let frame = next_text(&mut self.ws)
                    .await
                    .context("closed while joining")?;
                if frame == "2" {
                    self.ws.send(Message::text("3")).await?;
                } else if let Some(ack) = frame.strip_prefix("430") {
                    if ack.contains(r#""error""#) {
                        bail!("join refused: {frame}");
                    }
                    return Ok(());
                }
            }
        };
        tokio::time::timeout(SETUP_TIMEOUT, wait)
            .await
            .context("join timed out")?
    }

    /// Runs the socket until `stop`: answers pings, sends a `watchdog` every
    /// `heartbeat` (first one after a random share of it, so that many
    /// sockets spread their beats), sends what `outbound` carries, and hands
    /// received frames to `events`. Returns `events` and whether the socket
    /// was still open when stopped.
    pub async fn drive<E: Events>(
        self,
        mut events: E,
        heartbeat: Option<Duration>,
        mut outbound: Option<mpsc::UnboundedReceiver<String>>,
        stop: CancellationToken,
    ) -> (E, bool) {
        let Socket { mut ws, user } = self;
        let watchdog = format!(r#"42["watchdog",{{"user_name":"{user}"}}]"#);
        let period = heartbeat.unwrap_or(Duration::from_secs(3600));
        let first = period.mul_f64(fastrand_unit());
        let mut beat = tokio::time::interval_at(tokio::time::Instant::now() + first, period);
        beat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let open = loop {
            tokio::select! {
                biased;
                () = stop.cancelled() => break true,
                frame = ws.next() => match frame {
                    Some(Ok(Message::Text(text))) => {
                        let text = text.as_str();
                        if text == "2" {
                            if ws.send(Message::text("3")).await.is_err() { break false; }
                        } else if let Some(rest) = text.strip_prefix("42[\"") {
                            let name = rest.split('"').next().unwrap_or("");
                            events.event(name, text);
                        } else if let Some(rest) = text.strip_prefix("43") {
                            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
                            if let Ok(id) = rest[..digits].parse() {
                                events.ack(id, &rest[digits..]);
                            }
                        }
                    }
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => break false,
                    Some(Ok(_)) => {}
                },
                Some(frame) = recv(&mut outbound) => {
                    if ws.send(Message::text(frame)).await.is_err() { break false; }
                }
                _ = beat.tick(), if heartbeat.is_some() => {
                    if ws.send(Message::text(watchdog.as_str())).await.is_err() { break false; }
                }
            }
        };
        if open {
            let _ = ws.close(None).await;
        }
        (events, open)
    }
}

async fn recv(outbound: &mut Option<mpsc::UnboundedReceiver<String>>) -> Option<String> {
    match outbound {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_text(ws: &mut WebSocketStream<TcpStream>) -> Option<String> {
    while let Some(frame) = ws.next().await {
        match frame.ok()? {
            Message::Text(text) => return Some(text.as_str().to_owned()),
            Message::Close(_) => return None,
            _ => {}
        }
    }
    None
}

/// The unsigned integer after `"key":` in a JSON text, without parsing it
/// as a whole (the server's payloads are flat and known).
pub fn field_u64(text: &str, key: &str) -> Option<u64> {
    let start = text.find(key)? + key.len();
    let rest = text[start..].trim_start_matches([':', ' ', '"']);
    let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    rest[..digits].parse().ok()
}

/// A uniform value in [0, 1) from the OS's randomness (used once per socket).
pub fn fastrand_unit() -> f64 {
    let mut b = [0u8; 4];
    let _ = getrandom::fill(&mut b);
    f64::from(u32::from_le_bytes(b)) / (f64::from(u32::MAX) + 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_found_in_flat_payloads() {
        let frame =
            r#"42["new_message",{"chat_id":42,"room_id":7,"user_name":"a","message":"1234 x"}]"#;
        assert_eq!(field_u64(frame, r#""chat_id""#), Some(42));
        assert_eq!(field_u64(frame, r#""message""#), Some(1234));
        assert_eq!(field_u64(frame, r#""missing""#), None);
        assert_eq!(
            address("http://127.0.0.1:6002").ok(),
            "127.0.0.1:6002".parse().ok()
        );
        assert!(address("https://example.org").is_err());
    }
}
