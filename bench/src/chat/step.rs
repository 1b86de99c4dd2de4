//! One step of a chat load: sending as planned, waiting for the
//! deliveries; and the check that every acknowledged message was stored.

use super::*;

pub(super) struct Step {
    pub(super) json: Value,
    pub(super) p99_ms: f64,
    pub(super) ratio: f64,
}

/// What one step sends: messages per second, for how long.
#[derive(Clone, Copy)]
pub(super) struct Plan {
    pub(super) rate: f64,
    pub(super) seconds: f64,
}

/// Sends as planned, waits for the deliveries, and resets the counters for
/// the next step.
pub(super) async fn run_step(
    load: &Load,
    Plan { rate, seconds }: Plan,
    epoch: Instant,
    tally: &Arc<Tally>,
    senders: &Arc<Vec<Sender>>,
    latencies: &[Arc<Mutex<Histogram<u64>>>],
    users: usize,
) -> Step {
    let per_sender = rate / senders.len() as f64;
    let interval = Duration::from_secs_f64(1.0 / per_sender);
    let start = epoch.elapsed() + Duration::from_millis(20);
    let end = start + Duration::from_secs_f64(seconds);
    let sent = Arc::new(AtomicU64::new(0));
    let mut schedulers = Vec::new();
    for (i, sender) in senders.iter().enumerate() {
        let sent = sent.clone();
        let out = sender.out.clone();
        let room = sender.room;
        // Spread the senders' schedules over one interval.
        let offset = interval.mul_f64(i as f64 / senders.len() as f64);
        schedulers.push(tokio::spawn(async move {
            let mut n = 0u32;
            loop {
                let intended = start + offset + interval * n;
                if intended >= end {
                    break;
                }
                tokio::time::sleep_until((epoch + intended).into()).await;
                let id = intended.as_micros();
                let frame = format!(r#"42{id}["message",{{"room_id":{room},"message":"{id} m"}}]"#);
                if out.send(frame).is_err() {
                    break;
                }
                sent.fetch_add(1, Ordering::Relaxed);
                n += 1;
            }
        }));
    }
    for s in schedulers {
        let _ = s.await;
    }
    let send_seconds = (epoch.elapsed() - start).as_secs_f64();
    let sent = sent.load(Ordering::Relaxed);
    // Wait for the acknowledgements and deliveries, while they progress.
    let mut last = (u64::MAX, u64::MAX);
    let mut still = Instant::now();
    loop {
        let acked = tally.acked.load(Ordering::Relaxed);
        let delivered = tally.delivered.load(Ordering::Relaxed);
        let refused = tally.refused.lock().map(|r| r.total()).unwrap_or(0);
        if acked + refused >= sent && delivered >= acked * users as u64 {
            break;
        }
        if (acked, delivered) != last {
            last = (acked, delivered);
            still = Instant::now();
        } else if still.elapsed().as_secs_f64() > load.drain {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acked = tally.acked.swap(0, Ordering::Relaxed);
    let delivered = tally.delivered.swap(0, Ordering::Relaxed);
    let mut errors = tally
        .refused
        .lock()
        .map(|mut r| std::mem::take(&mut *r))
        .unwrap_or_default();
    let refused = errors.total();
    errors.add("ack_missing", sent.saturating_sub(acked + refused));
    let expected = acked * users as u64;
    errors.add("delivery_missing", expected.saturating_sub(delivered));
    errors.add("delivery_unexpected", delivered.saturating_sub(expected));
    let mut latency = report::histogram();
    for h in latencies {
        if let Ok(mut h) = h.lock() {
            let _ = latency.add(&*h);
            h.reset();
        }
    }
    let mut ack_latency = report::histogram();
    for s in senders.iter() {
        if let Ok(mut a) = s.acks.lock() {
            let _ = ack_latency.add(&a.latency);
            a.latency.reset();
        }
    }
    let ratio = delivered as f64 / expected.max(1) as f64;
    let json = json!({
        "target_rate": rate, "seconds": round(send_seconds),
        "sent": sent, "acked": acked, "delivered": delivered, "expected": expected,
        "delivery_ratio": ratio,
        "messages_per_second": round(acked as f64 / send_seconds),
        "deliveries_per_second": round(delivered as f64 / send_seconds),
        "latency_ms": report::latency(&latency),
        "ack_latency_ms": report::latency(&ack_latency),
        "errors": errors.json(),
    });
    Step {
        p99_ms: latency.value_at_quantile(0.99) as f64 / 1000.0,
        ratio: if expected == 0 { 0.0 } else { ratio.min(1.0) },
        json,
    }
}

/// Looks every acknowledged chat id up in `GET /api/chat_history`, room by
/// room, newest pages first; retries while the persister catches up.
pub(super) async fn verify_persisted(
    http: &reqwest::Client,
    api: &str,
    acked: &HashMap<i64, Vec<u64>>,
) -> anyhow::Result<Value> {
    let total: usize = acked.values().map(Vec::len).sum();
    let deadline = Instant::now() + Duration::from_secs(60);
    let started = Instant::now();
    loop {
        let mut found = 0usize;
        for (room, ids) in acked {
            let Some(&oldest) = ids.iter().min() else {
                continue;
            };
            let wanted: BTreeSet<u64> = ids.iter().copied().collect();
            let mut seen = BTreeSet::new();
            let mut before: Option<u64> = None;
            loop {
                let mut url = format!("{api}/api/chat_history?room_id={room}&limit=1000");
                if let Some(b) = before {
                    url.push_str(&format!("&before={b}"));
                }
                let page: Vec<Value> = http.get(url).send().await?.json().await?;
                let ids: Vec<u64> = page.iter().filter_map(|m| m["chat_id"].as_u64()).collect();
                seen.extend(ids.iter().copied());
                match ids.iter().min() {
                    Some(&min) if min > oldest && ids.len() == 1000 => before = Some(min),
                    _ => break,
                }
            }
            found += wanted.intersection(&seen).count();
        }
        if found == total || Instant::now() > deadline {
            return Ok(json!({
                "acked": total, "found": found, "missing": total - found,
                "seconds_to_verify": round(started.elapsed().as_secs_f64()),
            }));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
