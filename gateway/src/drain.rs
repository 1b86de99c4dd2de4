//! Draining at shutdown: once it begins, new chat messages are refused
//! (code 8, "try again") and the ones in flight are acknowledged.

use std::sync::OnceLock;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Longest a shutdown waits for the chat messages in flight to be
/// acknowledged (a little more than the chat log's 10 s to confirm one),
/// well within the gateway's 45 s grace period (`deploy/k8s/gateway.yaml`).
const DRAIN_APPENDS: Duration = Duration::from_secs(12);

/// How long a shutdown lets the sockets' writer tasks send what was queued
/// last (the answers of the messages drained) before the runtime stops
/// them. Engine.IO does not say when a socket's queue is empty, so this is
/// a bound, not a wait on a condition: a writer is scheduled within
/// microseconds, a loaded machine takes milliseconds.
const FLUSH_ANSWERS: Duration = Duration::from_millis(200);

/// The chat messages in flight, and the token that ends the gateway.
#[derive(Default)]
pub struct Drain {
    /// Chat messages being appended, each waiting for its acknowledgement.
    appends: TaskTracker,
    /// The token `Gateway::run` stops on, the one `/readyz` reports.
    shutdown: OnceLock<CancellationToken>,
}

impl Drain {
    /// Drains once `shutdown` is cancelled.
    pub fn watch(&self, shutdown: &CancellationToken) {
        let _ = self.shutdown.set(shutdown.clone());
    }

    /// True once shutdown has begun: chat messages are refused.
    pub fn draining(&self) -> bool {
        self.shutdown
            .get()
            .is_some_and(CancellationToken::is_cancelled)
    }

    /// Runs a chat message's wait for its acknowledgement, which a drain
    /// lets finish.
    pub fn track(&self, append: impl Future<Output = ()> + Send + 'static) {
        self.appends.spawn(append);
    }

    /// Lets the chat messages in flight be acknowledged. The sockets stay
    /// open until the process exits: their connections then drop, which
    /// every client takes as a lost transport and reconnects (to another
    /// replica, and catches up there). Closing them with a Socket.IO or
    /// Engine.IO close packet instead would tell some clients (python-socketio)
    /// that the server meant it, and they would not reconnect.
    pub async fn finish(&self, sockets: usize) {
        self.appends.close();
        let in_flight = self.appends.len();
        if tokio::time::timeout(DRAIN_APPENDS, self.appends.wait())
            .await
            .is_err()
        {
            tracing::warn!(
                left = self.appends.len(),
                "chat messages still unconfirmed at shutdown; their senders resend"
            );
        }
        // The answers are queued on the sockets; the runtime's shutdown
        // would drop the tasks that write them.
        tokio::time::sleep(FLUSH_ANSWERS).await;
        tracing::info!(
            sockets,
            in_flight,
            "messages in flight acknowledged; the sockets close with the process"
        );
    }
}
