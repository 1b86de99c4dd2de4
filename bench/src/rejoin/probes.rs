//! The probes of a rejoin storm: chat sent at a fixed rate in a storm
//! room and outside it, each message timed until it comes back.
//!
//! The probes run on a thread and a runtime of their own, as clients on
//! another machine would: on the generator's runtime each probe frame
//! queued behind the frames of the storm's 10,000 sockets, so the probe
//! timed the generator as much as the servers.

use super::*;

/// The probes' thread: stopped by `finish`, which gets their latencies.
pub(super) struct Probes {
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: tokio::sync::oneshot::Receiver<(serde_json::Value, Errors)>,
}

impl Probes {
    /// Connects the probes (one per user and room) on their own thread and
    /// starts them sending.
    pub(super) async fn start(
        args: &RejoinArgs,
        users: Vec<User>,
        rooms: [i64; 2],
    ) -> anyhow::Result<Self> {
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = tokio::sync::oneshot::channel();
        let args = args.clone();
        std::thread::Builder::new()
            .name("probes".into())
            .spawn(move || {
                let runtime = match tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    Ok(runtime) => runtime,
                    Err(e) => {
                        let _ = started_tx.send(Err(anyhow::Error::from(e)));
                        return;
                    }
                };
                runtime.block_on(async move {
                    let running = match Running::start(&args, &users, rooms).await {
                        Ok(running) => {
                            let _ = started_tx.send(Ok(()));
                            running
                        }
                        Err(e) => {
                            let _ = started_tx.send(Err(e));
                            return;
                        }
                    };
                    let _ = stopped.await;
                    let mut errors = Errors::default();
                    let latencies = running.finish(&mut errors).await;
                    let _ = done_tx.send((latencies, errors));
                });
            })?;
        started.await.context("the probes' thread ended")??;
        Ok(Self {
            stop: Some(stop),
            done,
        })
    }

    /// Stops the probes: `{storm_room, outside}` latencies.
    pub(super) async fn finish(mut self, errors: &mut Errors) -> serde_json::Value {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match self.done.await {
            Ok((latencies, probe_errors)) => {
                errors.merge(&probe_errors);
                latencies
            }
            Err(_) => {
                errors.add("probes_failed", 1);
                json!(null)
            }
        }
    }
}

/// Two sockets sending chat at a fixed rate during the storm, one in a
/// storm room and one outside it, each timing its own messages from when
/// they were due to when they came back as `new_message`.
struct Running {
    stop_sending: CancellationToken,
    stop: CancellationToken,
    tasks: Vec<tokio::task::JoinHandle<(Probe, bool)>>,
    /// Each probe's sender: how many it sent.
    tickers: Vec<tokio::task::JoinHandle<u64>>,
    /// How many each probe received so far.
    counts: Vec<Arc<AtomicU64>>,
}

impl Running {
    async fn start(args: &RejoinArgs, users: &[User], rooms: [i64; 2]) -> anyhow::Result<Self> {
        let stop = CancellationToken::new();
        let stop_sending = CancellationToken::new();
        let mut tasks = Vec::new();
        let mut tickers = Vec::new();
        let mut counts = Vec::new();
        let epoch = Instant::now();
        let period = Duration::from_secs_f64(1.0 / f64::from(args.probe_rate));
        for (user, room) in users.iter().zip(rooms) {
            let mut socket = Socket::connect(&args.gateway, &user.name, &user.token, None).await?;
            socket.join(room).await?;
            let (tx, rx) = mpsc::unbounded_channel();
            let received = Arc::new(AtomicU64::new(0));
            let probe = Probe {
                epoch,
                latency: report::histogram(),
                received: received.clone(),
            };
            counts.push(received);
            tasks.push(tokio::spawn(socket.drive(
                probe,
                None,
                Some(rx),
                stop.clone(),
            )));
            let stop = stop_sending.clone();
            tickers.push(tokio::spawn(async move {
                let mut tick = tokio::time::interval(period);
                let mut sent = 0;
                loop {
                    tokio::select! {
                        () = stop.cancelled() => break,
                        due = tick.tick() => {
                            // The text carries when the message was due (µs
                            // since the epoch): open loop, no coordinated omission.
                            let due = due.into_std().duration_since(epoch).as_micros();
                            let message = json!({ "room_id": room, "message": format!("{due} probe") });
                            if tx.send(format!("42{}", json!(["message", message]))).is_err() {
                                break;
                            }
                            sent += 1;
                        }
                    }
                }
                sent
            }));
        }
        Ok(Self {
            stop_sending,
            stop,
            tasks,
            tickers,
            counts,
        })
    }

    /// Stops the probes: `{storm_room, outside}` latencies.
    async fn finish(self, errors: &mut Errors) -> serde_json::Value {
        self.stop_sending.cancel();
        let mut sent = Vec::new();
        for ticker in self.tickers {
            sent.push(ticker.await.unwrap_or(0));
        }
        // What is in flight comes back (a message not back within 30 s
        // counts as lost).
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline
            && sent
                .iter()
                .zip(&self.counts)
                .any(|(sent, got)| got.load(Ordering::Relaxed) < *sent)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        self.stop.cancel();
        let mut out = Vec::new();
        for (sent, task) in sent.into_iter().zip(self.tasks) {
            let Ok((probe, _)) = task.await else {
                continue;
            };
            errors.add(
                "probe_lost",
                sent.saturating_sub(probe.received.load(Ordering::Relaxed)),
            );
            out.push(report::latency(&probe.latency));
        }
        let mut out = out.into_iter();
        json!({ "storm_room": out.next(), "outside": out.next() })
    }
}

/// One probe socket's deliveries.
struct Probe {
    epoch: Instant,
    latency: Histogram<u64>,
    received: Arc<AtomicU64>,
}

impl Events for Probe {
    fn event(&mut self, name: &str, frame: &str) {
        if name != "new_message" {
            return;
        }
        // The text starts with when the message was due, as in `chat`.
        let Some(due) = field_u64(frame, r#""message""#) else {
            return;
        };
        self.received.fetch_add(1, Ordering::Relaxed);
        let now = u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX);
        let _ = self.latency.record(now.saturating_sub(due).max(1));
    }
}
