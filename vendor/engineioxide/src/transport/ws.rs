//! The ws transport module is responsible for handling websocket connections
//! The only public function is [`new_req`] which is used to upgrade a http request to a websocket connection
//!
//! Other functions are used internally to handle the websocket connection through tasks and channels
//! and to handle upgrade from polling to ws

use std::{
    future::Future,
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::Duration,
};

use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, request::Parts};
use smallvec::smallvec;
use tokio::{
    io::{AsyncRead, AsyncWrite},
    sync::watch,
    time::{Instant, Sleep},
};
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{
        self, Message,
        handshake::derive_accept_key,
        protocol::{Role, WebSocketConfig},
    },
};
use tokio_util::future::FutureExt as _;

use engineioxide_core::{Packet, PacketBuf, ProtocolVersion, Sid, Str, TransportType};

use crate::{
    DisconnectReason, Socket, body::ResponseBody, config::EngineIoConfig, engine::EngineIo,
    errors::Error, handler::EngineIoHandler, socket::InternalRx, transport::make_open_packet,
};

/// Create a response for websocket upgrade
fn ws_response<B>(ws_key: &HeaderValue) -> Response<ResponseBody<B>> {
    let derived = derive_accept_key(ws_key.as_bytes());
    let sec = derived.parse::<HeaderValue>().unwrap();
    Response::builder()
        .status(StatusCode::SWITCHING_PROTOCOLS)
        .header(http::header::UPGRADE, HeaderValue::from_static("websocket"))
        .header(
            http::header::CONNECTION,
            HeaderValue::from_static("Upgrade"),
        )
        .header(http::header::SEC_WEBSOCKET_ACCEPT, sec)
        .body(ResponseBody::empty_response())
        .unwrap() // we are only using constants
}

/// Upgrade a websocket request to create a websocket connection.
///
/// If a sid is provided in the query it means that is is upgraded from an existing HTTP polling request.
/// In this case the http polling request is closed and the SID is kept for the websocket
pub fn new_req<R: Send + 'static, B, H: EngineIoHandler>(
    engine: Arc<EngineIo<H>>,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req: Request<R>,
) -> Result<Response<ResponseBody<B>>, Error> {
    let (parts, body) = req.into_parts();
    let req = Request::from_parts(parts.clone(), body);

    let ws_key = parts
        .headers
        .get("Sec-WebSocket-Key")
        .ok_or(Error::InvalidWebSocketKey)?
        .clone();

    tokio::spawn(async move {
        let conn = hyper::upgrade::on(req)
            .await
            .map(hyper_util::rt::TokioIo::new);

        let res = match conn {
            Ok(conn) => on_init(engine.clone(), conn, protocol, sid, parts).await,
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!("ws upgrade error: {}", _e);
                return;
            }
        };

        match res {
            Ok(_) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed")
            }
            Err(Error::MultipleWebsocketRequests) => {}
            Err(_e) => {
                #[cfg(feature = "tracing")]
                tracing::debug!(?sid, "ws closed with error: {_e}");
                if let Some(sid) = sid {
                    engine.close_session(sid, DisconnectReason::TransportError);
                }
            }
        }
    });

    Ok(ws_response(&ws_key))
}

/// Handle a websocket connection upgrade
///
/// Sends an open packet if it is not an upgrade from a polling request
///
/// Read packets from the websocket and handle them, it will block until the connection is closed
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", name = "init_websocket", skip(engine, conn, req_data))
)]
pub async fn on_init<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    conn: S,
    protocol: ProtocolVersion,
    sid: Option<Sid>,
    req_data: Parts,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(engine.config.ws_read_buffer_size)
        .max_message_size(Some(engine.config.ws_max_message_size))
        .max_frame_size(Some(engine.config.ws_max_frame_size));

    let ws_init = move || WebSocketStream::from_raw_socket(conn, Role::Server, Some(ws_config));
    let (socket, ws, heartbeat) = if let Some(sid) = sid {
        match engine.get_socket(sid) {
            None => return Err(Error::UnknownSessionID(sid)),
            Some(socket) if socket.is_ws() => return Err(Error::MultipleWebsocketRequests),
            Some(socket) => {
                let mut ws = ws_init().await;

                let upgrade_fut = upgrade_handshake::<H, S>(&socket, &mut ws);
                match tokio::time::timeout(engine.config.upgrade_timeout, upgrade_fut)
                    .with_cancellation_token(&socket.cancellation_token)
                    .await
                {
                    Some(Ok(res)) => res?,
                    Some(Err(_)) => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "ws upgrade timed out, closing session");
                        engine.close_session(socket.id, DisconnectReason::TransportError);
                        return Err(Error::Upgrade);
                    }
                    None => {
                        #[cfg(feature = "tracing")]
                        tracing::debug!(?sid, "socket is being closed");
                        return Err(Error::Upgrade);
                    }
                }
                // The heartbeat task started with the polling session goes on.
                (socket, ws, None)
            }
        }
    } else {
        let socket = engine.create_session(protocol, TransportType::Websocket, req_data, false);

        #[cfg(feature = "tracing")]
        tracing::debug!("new websocket connection");

        let mut ws = ws_init().await;
        init_handshake(socket.id, &mut ws, &engine.config).await?;
        let heartbeat = if socket.pinged_by_its_connection() {
            Some(Heartbeat::new(&engine.config))
        } else {
            // Protocol v3: the client pings and a task answers.
            socket
                .clone()
                .spawn_heartbeat(engine.config.ping_interval, engine.config.ping_timeout);
            None
        };
        (socket, ws, heartbeat)
    };

    // The connection's own task, sized for what it holds from now on: not
    // for the handshakes above.
    tokio::spawn(connection(engine, socket, ws, heartbeat));
    Ok(())
}

/// Frames read from the client in one turn of a connection before it looks
/// at what it has to write.
const READS_PER_TURN: usize = 32;

/// A timer's deadline that is never reached.
const NEVER: Duration = Duration::from_secs(365 * 86_400);

/// How a connection ended.
enum End {
    /// The client closed it, or its stream ended.
    ByClient,
    /// The session was closed by the server (the socket's cancellation token).
    ByServer,
    /// The client did not answer a ping in time.
    HeartbeatTimeout,
    /// A protocol or transport error.
    Error(Error),
}

/// The server's pings on a session opened on WebSocket (Engine.IO v4): one
/// every `interval`, each to be answered within `timeout`. A session
/// upgraded from polling keeps the heartbeat task it started with.
struct Heartbeat {
    interval: Duration,
    timeout: Duration,
    /// When the unanswered ping was sent, if one is.
    awaiting: Option<Instant>,
}

impl Heartbeat {
    fn new(config: &EngineIoConfig) -> Self {
        Self {
            interval: config.ping_interval,
            timeout: config.ping_timeout,
            awaiting: None,
        }
    }

    /// Sends a ping when the timer is due; an unanswered one is a timeout.
    fn poll<D: Default + Send + Sync + 'static>(
        &mut self,
        timer: &mut Pin<&mut Sleep>,
        cx: &mut Context<'_>,
        socket: &Socket<D>,
    ) -> Result<(), Error> {
        while timer.as_mut().poll(cx).is_ready() {
            if self.awaiting.is_some() {
                return Err(Error::HeartbeatTimeout);
            }
            // A full channel: the client is not reading what it is sent.
            socket
                .internal_tx
                .try_send(smallvec![Packet::Ping])
                .map_err(|_| Error::HeartbeatTimeout)?;
            let now = Instant::now();
            self.awaiting = Some(now);
            timer.as_mut().reset(now + self.timeout);
        }
        Ok(())
    }

    /// The client answered: the next ping is due an interval after the last.
    fn answered(&mut self, timer: &mut Pin<&mut Sleep>) {
        if let Some(sent) = self.awaiting.take() {
            timer.as_mut().reset(sent + self.interval);
        }
    }
}

/// Waits for a volatile packet, owning the receiver so that the future can
/// be replaced once it resolves.
async fn volatile_changed(
    mut rx: watch::Receiver<Option<PacketBuf>>,
) -> (bool, watch::Receiver<Option<PacketBuf>>) {
    let open = rx.changed().await.is_ok();
    (open, rx)
}

/// A WebSocket connection in one task: it reads the client's frames, writes
/// every packet queued for the socket (flushing once the queue is empty),
/// and sends the pings of a session opened on WebSocket. One task instead
/// of a reader, a writer and a heartbeat, and no lock between the halves of
/// a split stream: an idle connection holds one small future.
fn connection<H: EngineIoHandler, S>(
    engine: Arc<EngineIo<H>>,
    socket: Arc<Socket<H::Data>>,
    mut ws: WebSocketStream<S>,
    heartbeat: Option<Heartbeat>,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    // An async block rather than an async fn: what it captures is used in
    // place, where an async fn would move its arguments into locals of their
    // own (a second copy of the stream in every connection's task).
    async move {
        // A polling request that was in progress during the upgrade may still hold the lock.
        let lock = socket.internal_rx.lock();
        let Some(mut internal_rx) = lock
            .with_cancellation_token(&socket.cancellation_token)
            .await
        else {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "session closed before the ws connection started");
            return;
        };
        let end = serve(&engine, &socket, &mut ws, heartbeat, &mut internal_rx).await;
        if !end_session(&engine, &socket, &mut ws, internal_rx, end) {
            return;
        }
        let farewell = async {
            ws.flush().await.ok();
            ws.close(None).await.ok();
        };
        // A client that reads nothing more does not hold the task.
        tokio::time::timeout(engine.config.ping_timeout, farewell)
            .await
            .ok();
    }
}

/// Reads, writes and pings until the connection ends.
async fn serve<H: EngineIoHandler, S>(
    engine: &Arc<EngineIo<H>>,
    socket: &Arc<Socket<H::Data>>,
    ws: &mut WebSocketStream<S>,
    mut heartbeat: Option<Heartbeat>,
    internal_rx: &mut InternalRx,
) -> End
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let InternalRx {
        buffered_rx,
        volatile_rx,
        ..
    } = internal_rx;

    // The first ping goes at once, as on a polling session. Without a
    // heartbeat the timer is never polled.
    let first_ping = if heartbeat.is_some() {
        Duration::ZERO
    } else {
        NEVER
    };
    let timer = tokio::time::sleep_until(Instant::now() + first_ping);
    let mut timer = std::pin::pin!(timer);
    let cancelled = socket.cancellation_token.cancelled();
    let mut cancelled = std::pin::pin!(cancelled);
    let mut volatile = std::pin::pin!(volatile_changed(volatile_rx.clone()));
    let mut volatile_open = true;
    let mut unflushed = false;

    std::future::poll_fn(|cx| {
        if cancelled.as_mut().poll(cx).is_ready() {
            return Poll::Ready(End::ByServer);
        }
        for turn in 1..=READS_PER_TURN {
            let frame = match ws.poll_next_unpin(cx) {
                Poll::Pending => break,
                Poll::Ready(None) => return Poll::Ready(End::ByClient),
                Poll::Ready(Some(Err(e))) => return Poll::Ready(End::Error(e.into())),
                Poll::Ready(Some(Ok(frame))) => frame,
            };
            match on_frame(engine, socket, frame) {
                Ok(Read::Packet) => {}
                Ok(Read::Pong) => match heartbeat.as_mut() {
                    Some(heartbeat) => heartbeat.answered(&mut timer),
                    None => socket.pong(),
                },
                Ok(Read::Close) => return Poll::Ready(End::ByClient),
                Err(e) => return Poll::Ready(End::Error(e)),
            }
            if turn == READS_PER_TURN {
                // More may be waiting: come back after writing.
                cx.waker().wake_by_ref();
            }
        }
        if let Some(heartbeat) = heartbeat.as_mut()
            && heartbeat.poll(&mut timer, cx, socket).is_err()
        {
            return Poll::Ready(End::HeartbeatTimeout);
        }
        loop {
            match ws.poll_ready_unpin(cx) {
                Poll::Pending => break,
                Poll::Ready(Err(e)) => return Poll::Ready(End::Error(e.into())),
                Poll::Ready(Ok(())) => {}
            }
            let packets = match buffered_rx.poll_recv(cx) {
                Poll::Ready(Some(packets)) => packets,
                // The channel is closed only once this task has let go of it.
                Poll::Ready(None) => break,
                Poll::Pending if volatile_open => match volatile.as_mut().poll(cx) {
                    Poll::Pending => break,
                    Poll::Ready((open, rx)) => {
                        volatile_open = open;
                        let packets = rx.borrow().clone();
                        volatile.set(volatile_changed(rx));
                        match packets {
                            Some(packets) => packets,
                            None => continue,
                        }
                    }
                },
                Poll::Pending => break,
            };
            for packet in packets {
                if let Err(e) = start_send(ws, socket.protocol, packet) {
                    return Poll::Ready(End::Error(e));
                }
            }
            unflushed = true;
        }
        if unflushed {
            match ws.poll_flush_unpin(cx) {
                Poll::Pending => {}
                Poll::Ready(Err(e)) => return Poll::Ready(End::Error(e.into())),
                Poll::Ready(Ok(())) => unflushed = false,
            }
        }
        Poll::Pending
    })
    .await
}

/// Ends the session as `end` says. Unless the transport failed, queues on
/// the WebSocket what was left for the client (a close packet, a last
/// message) and returns true: it is still to be flushed and closed. The
/// lock on the socket's queue is released here, so that the session's
/// handler is told at once.
fn end_session<H: EngineIoHandler, S>(
    engine: &Arc<EngineIo<H>>,
    socket: &Arc<Socket<H::Data>>,
    ws: &mut WebSocketStream<S>,
    mut internal_rx: tokio::sync::MutexGuard<'_, InternalRx>,
    end: End,
) -> bool
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let graceful = match end {
        End::ByClient => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "ws transport was closed");
            engine.close_session(socket.id, DisconnectReason::TransportClose);
            true
        }
        End::ByServer => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "socket is closing");
            true
        }
        End::HeartbeatTimeout => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "heartbeat timeout");
            // Queues a close packet for the client, then closes the session.
            socket.close(DisconnectReason::HeartbeatTimeout);
            true
        }
        End::Error(e) => {
            let reason =
                Option::<DisconnectReason>::from(&e).unwrap_or(DisconnectReason::TransportError);
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = %socket.id, "error on the ws connection: {e:?}");
            engine.close_session(socket.id, reason);
            matches!(e, Error::BadPacket(_) | Error::PacketParse(_))
        }
    };
    if !graceful {
        return false;
    }
    while let Ok(packets) = internal_rx.buffered_rx.try_recv() {
        for packet in packets {
            if start_send(ws, socket.protocol, packet).is_err() {
                return false;
            }
        }
    }
    true
}

/// What a frame from the client was.
enum Read {
    /// A packet for the handler.
    Packet,
    /// A pong (or a v3 ping).
    Pong,
    /// The client closed the connection.
    Close,
}

/// Hands a frame from the client to the handler.
fn on_frame<H: EngineIoHandler>(
    engine: &Arc<EngineIo<H>>,
    socket: &Arc<Socket<H::Data>>,
    frame: Message,
) -> Result<Read, Error> {
    match frame {
        Message::Text(msg) => match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
            Packet::Close => {
                #[cfg(feature = "tracing")]
                tracing::debug!("[sid={}] closing session", socket.id);
                Ok(Read::Close)
            }
            Packet::Pong | Packet::Ping => Ok(Read::Pong),
            Packet::Message(msg) => {
                engine.handler.on_message(msg, socket.clone());
                Ok(Read::Packet)
            }
            p => Err(Error::BadPacket(p)),
        },
        Message::Binary(mut data) => {
            if socket.protocol == ProtocolVersion::V3 && !data.is_empty() {
                // The first byte is the message type, which we don't need.
                data = data.split_off(1);
            }
            engine.handler.on_binary(data, socket.clone());
            Ok(Read::Packet)
        }
        Message::Close(_) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("websocket closed, closing session");
            Ok(Read::Close)
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!(sid = ?socket.id, "unexpected ws message");
            Ok(Read::Packet)
        }
    }
}

/// Queues a packet on the WebSocket (written at the next flush).
fn start_send<S>(
    ws: &mut WebSocketStream<S>,
    protocol: ProtocolVersion,
    packet: Packet,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let frame = match packet {
        Packet::Binary(bin) | Packet::BinaryV3(bin) => {
            if protocol == ProtocolVersion::V3 {
                // v3 protocol requires packet type as the first byte.
                // This requires a new buffer. This is OK as it is only for the V3 protocol.
                let mut buff = Vec::with_capacity(bin.len() + 1);
                buff.push(0x04);
                buff.extend(bin);
                Message::Binary(buff.into())
            } else {
                Message::Binary(bin)
            }
        }
        // A Noop Packet maybe sent by the server to upgrade from a polling connection
        // In the case that the packet was not poll in time it will remain in the buffer and therefore
        // it should be discarded here
        Packet::Noop => return Ok(()),
        packet => Message::Text(String::from(packet).into()),
    };
    ws.start_send_unpin(frame)?;
    Ok(())
}

/// Send a Engine.IO [`OpenPacket`] to initiate a websocket connection
async fn init_handshake<S>(
    sid: Sid,
    ws: &mut WebSocketStream<S>,
    config: &EngineIoConfig,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let packet = Packet::Open(Box::new(make_open_packet(
        TransportType::Websocket,
        sid,
        config,
    )));
    let packet: String = packet.into();
    ws.send(Message::Text(packet.into())).await?;
    Ok(())
}

/// Upgrade a session from a polling request to a websocket request.
///
/// Before upgrading the session the server should send a NOOP packet to any pending polling request.
///
/// ## Handshake :
/// ```text
/// CLIENT                                                 SERVER
///│                                                      │
///│   GET /engine.io/?EIO=4&transport=websocket&sid=...  │
///│ ───────────────────────────────────────────────────► │
///│  ◄─────────────────────────────────────────────────┘ │
///│            HTTP 101 (WebSocket handshake)            │
///│                                                      │
///│            -----  WebSocket frames -----             │
///│  ─────────────────────────────────────────────────►  │
///│                         2probe                       │ (ping packet)
///│  ◄─────────────────────────────────────────────────  │
///│                         3probe                       │ (pong packet)
///│  ─────────────────────────────────────────────────►  │
///│                         5                            │ (upgrade packet)
///│                                                      │
///│            -----  WebSocket frames -----             │
/// ```
#[cfg_attr(
    feature = "tracing",
    tracing::instrument(level = "trace", skip(socket, ws))
)]
async fn upgrade_handshake<H: EngineIoHandler, S>(
    socket: &Arc<Socket<H::Data>>,
    ws: &mut WebSocketStream<S>,
) -> Result<(), Error>
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    #[cfg(feature = "tracing")]
    tracing::debug!("starting websocket connection upgrade");

    // The socket is upgrading, from now on all polling
    // request will return a `Packet::Noop`
    socket.start_upgrade();

    // We send a last Noop request to close a potential waiting polling request.
    socket
        .internal_tx
        .send(smallvec![Packet::Noop])
        .await
        .map_err(|_| Error::Upgrade)?;

    // wait for any current polling connection to finish by waiting for the socket to be unlocked
    // All other polling connection will be immediately closed with a NOOP packet.
    let _lock = socket.internal_rx.lock().await;

    // Fetch the next packet from the ws stream, it should be a PingUpgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        _ => Err(Error::Upgrade)?,
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::PingUpgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("received first ping upgrade");
            // Respond with a PongUpgrade packet
            ws.send(Message::Text(String::from(Packet::PongUpgrade).into()))
                .await?;
        }
        p => Err(Error::BadPacket(p))?,
    };

    // Fetch the next packet from the ws stream, it should be an Upgrade packet
    let msg = match ws.next().await {
        Some(Ok(Message::Text(d))) => d,
        Some(Ok(Message::Close(_))) => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws stream closed before upgrade");
            Err(Error::Upgrade)?
        }
        _ => {
            #[cfg(feature = "tracing")]
            tracing::debug!("unexpected ws message before upgrade");
            Err(Error::Upgrade)?
        }
    };
    match Packet::parse(socket.protocol, ws_bytes_to_str(msg))? {
        Packet::Upgrade => {
            #[cfg(feature = "tracing")]
            tracing::debug!("ws upgraded successfully")
        }
        p => Err(Error::BadPacket(p))?,
    };

    socket.upgrade_to_websocket();
    Ok(())
}

fn ws_bytes_to_str(bytes: tungstenite::Utf8Bytes) -> Str {
    // SAFETY: the bytes are guaranteed to be valid UTF-8 by the tungstenite parser
    unsafe { Str::from_bytes_unchecked(bytes.into()) }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;
    use http::Request;
    use tokio::io::DuplexStream;

    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(1);

    #[derive(Debug)]
    struct StubHandler;
    impl EngineIoHandler for StubHandler {
        type Data = ();
        fn on_connect(self: Arc<Self>, _: Arc<Socket<()>>) {}
        fn on_disconnect(&self, _: Arc<Socket<()>>, _: DisconnectReason) {}
        fn on_message(self: &Arc<Self>, _: Str, _: Arc<Socket<()>>) {}
        fn on_binary(self: &Arc<Self>, _: Bytes, _: Arc<Socket<()>>) {}
    }

    async fn ws_pair() -> (WebSocketStream<DuplexStream>, WebSocketStream<DuplexStream>) {
        let (server, client) = tokio::io::duplex(1024);
        (
            WebSocketStream::from_raw_socket(server, Role::Server, None).await,
            WebSocketStream::from_raw_socket(client, Role::Client, None).await,
        )
    }

    fn engine(config: EngineIoConfig) -> Arc<EngineIo<StubHandler>> {
        Arc::new(EngineIo::new(Arc::new(StubHandler), config))
    }

    fn session(engine: &Arc<EngineIo<StubHandler>>) -> Arc<Socket<()>> {
        engine.create_session(
            ProtocolVersion::V4,
            TransportType::Websocket,
            Request::<()>::default().into_parts().0,
            false,
        )
    }

    /// A polling request can still hold the lock at the end of an upgrade.
    #[tokio::test]
    async fn connection_waits_for_the_lock_of_a_polling_request() {
        let engine = engine(EngineIoConfig::default());
        let socket = session(&engine);
        let (server, mut client) = ws_pair().await;

        let polling = socket.internal_rx.lock().await;
        let conn = tokio::spawn(connection(engine, socket.clone(), server, None));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !conn.is_finished(),
            "the connection should wait for the lock"
        );

        drop(polling);
        socket.emit(Str::from("hello")).unwrap();
        let msg = tokio::time::timeout(TIMEOUT, client.next())
            .await
            .expect("the connection should send the packet")
            .unwrap()
            .unwrap();
        assert_eq!(msg, Message::text("4hello"));
    }

    #[tokio::test]
    async fn connection_waiting_for_the_lock_stops_with_the_session() {
        let engine = engine(EngineIoConfig::default());
        let socket = session(&engine);
        let (server, _client) = ws_pair().await;

        let _polling = socket.internal_rx.lock().await;
        let conn = tokio::spawn(connection(engine, socket.clone(), server, None));
        tokio::time::sleep(Duration::from_millis(20)).await;

        socket.cancellation_token.cancel();
        tokio::time::timeout(TIMEOUT, conn)
            .await
            .expect("the connection should stop")
            .unwrap();
    }

    /// Packets queued together are written in order, and the client's
    /// messages reach the handler while the server writes.
    #[tokio::test]
    async fn connection_reads_and_writes_in_one_task() {
        let engine = engine(EngineIoConfig::default());
        let socket = session(&engine);
        let (server, mut client) = ws_pair().await;
        tokio::spawn(connection(engine.clone(), socket.clone(), server, None));

        for i in 0..100 {
            socket.emit(Str::from(i.to_string())).unwrap();
        }
        client
            .send(Message::text("4from the client"))
            .await
            .unwrap();
        for i in 0..100 {
            let msg = tokio::time::timeout(TIMEOUT, client.next()).await.unwrap();
            assert_eq!(msg.unwrap().unwrap(), Message::text(format!("4{i}")));
        }
        client.send(Message::text("1")).await.unwrap();
        tokio::time::timeout(TIMEOUT, socket.closed())
            .await
            .expect("a close packet from the client closes the session");
    }

    fn short_heartbeat() -> EngineIoConfig {
        EngineIoConfig {
            ping_interval: Duration::from_millis(50),
            ping_timeout: Duration::from_millis(50),
            ..EngineIoConfig::default()
        }
    }

    /// A client that answers every ping stays; one that stops is closed
    /// within the ping timeout, and told so.
    #[tokio::test]
    async fn pings_until_a_ping_goes_unanswered() {
        let config = short_heartbeat();
        let engine = engine(config.clone());
        let socket = session(&engine);
        let (server, mut client) = ws_pair().await;
        let heartbeat = Some(Heartbeat::new(&config));
        tokio::spawn(connection(
            engine.clone(),
            socket.clone(),
            server,
            heartbeat,
        ));

        for _ in 0..5 {
            let msg = tokio::time::timeout(TIMEOUT, client.next()).await.unwrap();
            assert_eq!(msg.unwrap().unwrap(), Message::text("2"));
            client.send(Message::text("3")).await.unwrap();
        }
        assert!(!socket.is_closed());
        let msg = tokio::time::timeout(TIMEOUT, client.next()).await.unwrap();
        assert_eq!(msg.unwrap().unwrap(), Message::text("2"));
        let msg = tokio::time::timeout(TIMEOUT, client.next()).await.unwrap();
        assert_eq!(msg.unwrap().unwrap(), Message::text("1"), "a close packet");
        tokio::time::timeout(TIMEOUT, socket.closed())
            .await
            .expect("the session closes");
    }

    /// A pong nobody asked for does not answer the next ping.
    #[tokio::test]
    async fn an_early_pong_answers_nothing() {
        let config = EngineIoConfig {
            ping_interval: Duration::from_millis(300),
            ..short_heartbeat()
        };
        let engine = engine(config.clone());
        let socket = session(&engine);
        let (server, mut client) = ws_pair().await;
        let heartbeat = Some(Heartbeat::new(&config));
        tokio::spawn(connection(
            engine.clone(),
            socket.clone(),
            server,
            heartbeat,
        ));

        let msg = tokio::time::timeout(TIMEOUT, client.next()).await.unwrap();
        assert_eq!(msg.unwrap().unwrap(), Message::text("2"));
        client.send(Message::text("3")).await.unwrap();
        // Well before the next ping.
        client.send(Message::text("3")).await.unwrap();
        let msg = tokio::time::timeout(TIMEOUT, client.next()).await.unwrap();
        assert_eq!(msg.unwrap().unwrap(), Message::text("2"));
        tokio::time::timeout(TIMEOUT, socket.closed())
            .await
            .expect("the session closes");
    }
}
