//! The NATS adapter of the bus: core NATS subjects. The chat stream on the
//! same connection is the chat log's ([`crate::adapters::chat_log::JetStreamChatLog`]).

use std::sync::Arc;
use std::time::Duration;

use async_nats::HeaderMap;
use async_nats::jetstream;
use async_trait::async_trait;
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::watch;

use super::{Bus, BusError, BusMessage, Subscription};
use crate::domain::ChatId;
use crate::domain::subjects::Subjects;
use crate::support::cause::Cause;
use crate::telemetry::trace_context::TraceParent;

/// Pause before reconnecting after losing the server: short, so that
/// service resumes within half a second of NATS listening again.
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// How long a stream's setup rides out a JetStream that is not ready (a
/// cluster electing leaders after a restart) before the service gives up.
const STREAM_SETUP_WITHIN: Duration = Duration::from_secs(30);

/// How long a JetStream request may wait for its answer.
const JETSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Clone)]
pub struct NatsBus {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    subjects: Subjects,
    /// Replicas of the streams created on this connection.
    replicas: usize,
    /// See [`Self::losses`].
    losses: watch::Receiver<u64>,
}

impl NatsBus {
    /// Connects to one of `servers` (one server, or a cluster's: the client
    /// moves to another when its server goes); fails at once when none is
    /// reachable. Streams created through it get `replicas` replicas.
    pub async fn connect(
        servers: &[String],
        replicas: usize,
        name: &str,
        subjects: Subjects,
    ) -> Result<Self, BusError> {
        let (lost, losses) = watch::channel(0);
        let lost = Arc::new(lost);
        let client = async_nats::ConnectOptions::new()
            .name(name)
            .reconnect_delay_callback(|attempts| RECONNECT_DELAY * attempts.clamp(1, 3) as u32)
            .event_callback(move |event| {
                let lost = lost.clone();
                async move {
                    if let async_nats::Event::Connected | async_nats::Event::SlowConsumer(_) = event
                    {
                        lost.send_modify(|n| *n += 1);
                    }
                }
            })
            .connect(servers)
            .await
            .map_err(|e| BusError::Connect(Cause::new(e)))?;
        let mut jetstream = jetstream::new(client.clone());
        jetstream.set_timeout(JETSTREAM_TIMEOUT);
        Ok(Self {
            client,
            jetstream,
            subjects,
            replicas,
            losses,
        })
    }

    /// The stream of `config`, created if missing, with this deployment's
    /// replica count (`NATS_STREAM_REPLICAS`), and its current info
    /// (`cached_info`). A stream that exists with another count is brought
    /// to it; if NATS refuses, so does this, naming both counts.
    ///
    /// Answers that say JetStream is not ready are tried again until
    /// [`STREAM_SETUP_WITHIN`]: a cluster that has just come back (all its
    /// servers restarted at once) may find the stream on one request and
    /// not on the next while it elects the stream's leader; and when several
    /// processes create the stream at once, NATS 2.9 may refuse all but one
    /// ("subjects overlap") although it now exists.
    pub async fn ensure_stream(
        &self,
        mut config: jetstream::stream::Config,
    ) -> Result<jetstream::stream::Stream, BusError> {
        fn setup(e: impl std::error::Error + Send + Sync + 'static) -> BusError {
            BusError::Setup(Cause::new(e))
        }
        config.num_replicas = self.replicas;
        let name = config.name.clone();
        let deadline = tokio::time::Instant::now() + STREAM_SETUP_WITHIN;
        let mut pause = Duration::from_millis(50);
        let mut stream = loop {
            let answered = async {
                let mut stream = match self.jetstream.get_or_create_stream(config.clone()).await {
                    Ok(stream) => stream,
                    Err(e) => self
                        .jetstream
                        .get_stream(&name)
                        .await
                        .map_err(|_| setup(e))?,
                };
                // Asked once more (one request at start-up): a cluster
                // electing the stream's leader may find it and then not, and
                // a service that starts on the first answer fails on its next
                // request.
                stream.info().await.map_err(setup)?;
                Ok::<_, BusError>(stream)
            }
            .await;
            match answered {
                Ok(stream) => break stream,
                Err(e) if tokio::time::Instant::now() + pause < deadline => {
                    tracing::warn!(stream = name, error = %e, "the stream is not ready, trying again");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                Err(e) => return Err(e),
            }
        };
        let existing = stream.cached_info().config.clone();
        if existing.num_replicas != self.replicas {
            let wanted = jetstream::stream::Config {
                num_replicas: self.replicas,
                ..existing.clone()
            };
            self.jetstream.update_stream(wanted).await.map_err(|e| {
                BusError::Setup(Cause::text(format!(
                    "stream {name} has {} replicas and NATS_STREAM_REPLICAS asks for {}; \
                     NATS refused the change: {e}",
                    existing.num_replicas, self.replicas
                )))
            })?;
            tracing::warn!(
                stream = name,
                from = existing.num_replicas,
                to = self.replicas,
                "stream replicas changed to NATS_STREAM_REPLICAS"
            );
            stream = self.jetstream.get_stream(&name).await.map_err(setup)?;
        }
        Ok(stream)
    }

    pub fn client(&self) -> &async_nats::Client {
        &self.client
    }

    /// JetStream on this connection (the chat log, the presence snapshot).
    pub fn jetstream(&self) -> &jetstream::Context {
        &self.jetstream
    }

    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// Changes each time core NATS messages may have missed this
    /// connection's subscriptions: it was made (first or again: what was
    /// published while it was down never comes), or a subscription fell so
    /// far behind that the client dropped messages for it.
    pub fn losses(&self) -> watch::Receiver<u64> {
        self.losses.clone()
    }

    async fn ready_subscription(
        &self,
        sub: Result<async_nats::Subscriber, async_nats::SubscribeError>,
    ) -> Result<Subscription, BusError> {
        let sub = sub.map_err(|e| BusError::Subscribe(Cause::new(e)))?;
        // The server has the subscription once a round trip completes: only
        // then is nothing published afterwards missed.
        self.client
            .flush()
            .await
            .map_err(|e| BusError::Subscribe(Cause::new(e)))?;
        Ok(Box::pin(sub.map(|m| {
            BusMessage {
                sequence: m
                    .headers
                    .as_ref()
                    .and_then(|h| number_header(h, "Nats-Sequence")),
                previous: m
                    .headers
                    .as_ref()
                    .and_then(|h| number_header(h, "Nats-Last-Sequence")),
                trace: m.headers.as_ref().and_then(trace_parent),
                subject: m.subject.to_string(),
                payload: m.payload,
            }
        })))
    }
}

#[async_trait]
impl Bus for NatsBus {
    async fn publish(&self, subject: String, payload: Bytes) -> Result<(), BusError> {
        let published = match TraceParent::current() {
            Some(trace) => {
                self.client
                    .publish_with_headers(subject, trace_headers(&trace), payload)
                    .await
            }
            None => self.client.publish(subject, payload).await,
        };
        published.map_err(|e| BusError::Publish(Cause::new(e)))
    }

    async fn subscribe(&self, subject: String) -> Result<Subscription, BusError> {
        let sub = self.client.subscribe(subject).await;
        self.ready_subscription(sub).await
    }

    async fn subscribe_queue(
        &self,
        subject: String,
        group: String,
    ) -> Result<Subscription, BusError> {
        let sub = self.client.queue_subscribe(subject, group).await;
        self.ready_subscription(sub).await
    }

    async fn flush(&self) -> Result<(), BusError> {
        self.client
            .flush()
            .await
            .map_err(|e| BusError::Publish(Cause::new(e)))
    }

    fn check_ready(&self) -> Result<(), BusError> {
        match self.client.connection_state() {
            async_nats::connection::State::Connected => Ok(()),
            _ => Err(BusError::NotConnected),
        }
    }
}

/// The NATS headers carrying a trace context.
pub(crate) fn trace_headers(trace: &TraceParent) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in trace.headers() {
        headers.insert(name, value);
    }
    headers
}

/// The trace context in a message's headers, if any.
pub(crate) fn trace_parent(headers: &HeaderMap) -> Option<TraceParent> {
    TraceParent::from_headers(|name| headers.get(name).map(|v| v.as_str()))
}

/// A sequence JetStream's RePublish puts on a message: its own
/// (`Nats-Sequence`) and that of the previous message on the same subject,
/// that is in the same room (`Nats-Last-Sequence`). RePublish can deliver a
/// room's messages out of order when several connections publish at once
/// (seen on NATS 2.9.10); the second lets subscribers restore the order.
fn number_header(headers: &HeaderMap, name: &str) -> Option<ChatId> {
    headers.get(name)?.as_str().parse().ok()
}
