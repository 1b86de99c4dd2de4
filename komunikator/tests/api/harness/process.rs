//! The `komunikator` processes of a test: run one to its end, or spawn one
//! that serves, collect what it logs, and kill, terminate or restart it.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_komunikator");

/// The binary under test: this build's, or another build given in
/// `KOM_TEST_BIN` (to show that a new test fails on an older build).
fn binary() -> String {
    std::env::var("KOM_TEST_BIN").unwrap_or_else(|_| BIN.to_owned())
}

/// The configuration variables the harness controls (inherited values are
/// removed); `config.rs` checks that `--help` documents each of them.
pub const CONFIG_VARS: &[&str] = &[
    "LISTEN_ADDR",
    "CORS_ALLOWED_ORIGINS",
    "DATABASE_URL",
    "DB_HOST",
    "DB_PORT",
    "DB_USER",
    "DB_PASSWORD",
    "DB_NAME",
    "JWT_SECRET_KEY",
    "JWT_ACCESS_TOKEN_EXPIRES",
    "NATS_URL",
    "NATS_STREAM_REPLICAS",
    "REDIS_URL",
    "PRESENCE_TIMEOUT_MS",
    "KOM_PREFIX",
    "LOG_FORMAT",
    "RUST_LOG",
    "PASSWORD_HASH_THREADS",
    "DATA_DIR",
    "TRUSTED_PROXIES",
    "LOGIN_ATTEMPTS_MAX",
    "LOGIN_ATTEMPTS_WINDOW_SECS",
    "JWT_REFRESH_TOKEN_EXPIRES",
    "HEADER_READ_TIMEOUT_SECS",
    "BODY_READ_TIMEOUT_SECS",
    "MAX_PENDING_CONNECTIONS_PER_ADDRESS",
    "REGISTRATIONS_PER_ADDRESS",
    "REGISTRATIONS_WINDOW_SECS",
    "MAX_SOCKETS_PER_USER",
    "SOCKET_CONNECT_TIMEOUT_SECS",
    "PER_USER_EVENTS_MAX_SOCKETS",
    // Traces go only where a test sends them.
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_PROTOCOL",
    "OTEL_SDK_DISABLED",
    "OTEL_TRACES_EXPORTER",
    "OTEL_SERVICE_NAME",
    "OTEL_RESOURCE_ATTRIBUTES",
    "OTEL_TRACES_SAMPLER",
    "OTEL_TRACES_SAMPLER_ARG",
];

/// `komunikator <args>` with exactly the configuration `env` gives it.
fn command(args: &[&str], env: &[(&str, String)]) -> Command {
    let mut cmd = Command::new(binary());
    cmd.args(args);
    for var in CONFIG_VARS {
        cmd.env_remove(var);
    }
    cmd.env("LOG_FORMAT", "json");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.kill_on_drop(true);
    cmd
}

/// Runs `komunikator <args>` to completion; returns (exit code, output).
pub async fn run_to_end(args: &[&str], env: &[(&str, String)]) -> (Option<i32>, String) {
    let out = tokio::time::timeout(Duration::from_secs(60), command(args, env).output())
        .await
        .expect("command finished within 60 s")
        .expect("run komunikator");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

/// One running `komunikator` process.
pub struct Service {
    /// `http://127.0.0.1:<port>`
    pub url: String,
    args: Vec<String>,
    env: Vec<(&'static str, String)>,
    logs: Arc<Mutex<Vec<String>>>,
    /// The tasks copying stdout and stderr into `logs`; done at EOF.
    pumps: Vec<tokio::task::JoinHandle<()>>,
    child: Child,
}

impl Service {
    /// Starts `komunikator <args> --listen <listen>` and waits until it listens.
    pub async fn spawn(args: &[&str], env: &[(&'static str, String)], listen: &str) -> Service {
        let mut cmd = command(args, env);
        cmd.args(["--listen", listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn komunikator");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr, pumps) = wait_for_listening(&mut child, logs.clone()).await;
        Service {
            url: format!("http://{addr}"),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: env.to_vec(),
            logs,
            pumps,
            child,
        }
    }

    /// The process's resident memory, in KiB (Linux).
    pub fn rss_kib(&self) -> u64 {
        self.memory_kib("VmRSS:")
    }

    /// The most resident memory the process has had since it started, in
    /// KiB: what a burst of allocation reached even after it was freed.
    pub fn peak_rss_kib(&self) -> u64 {
        self.memory_kib("VmHWM:")
    }

    fn memory_kib(&self, field: &str) -> u64 {
        let pid = self.child.id().expect("running");
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("no {field} in {status}"))
    }

    pub fn logs(&self) -> String {
        self.logs.lock().expect("logs").join("\n")
    }

    /// SIGKILL: the process dies at once, mid-work.
    pub async fn kill9(&mut self) {
        self.child.start_kill().expect("kill");
        self.child.wait().await.expect("wait");
        self.drain_logs().await;
    }

    /// Waits until every line the exited process wrote is in `logs`.
    async fn drain_logs(&mut self) {
        for pump in self.pumps.drain(..) {
            let _ = tokio::time::timeout(Duration::from_secs(5), pump).await;
        }
    }

    /// Sends SIGTERM and waits for the process to exit; returns its exit code.
    pub async fn terminate(&mut self) -> Option<i32> {
        self.sigterm();
        self.exited().await
    }

    /// Sends SIGTERM, without waiting.
    pub fn sigterm(&self) {
        self.signal("TERM");
    }

    /// Sends the signal `name` (`TERM`, `STOP`, ...), without waiting.
    pub fn signal(&self, name: &str) {
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// Waits (at most 10 s) for the process to exit; returns its exit code.
    pub async fn exited(&mut self) -> Option<i32> {
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("exited within 10 s after SIGTERM")
            .expect("wait");
        self.drain_logs().await;
        status.code()
    }

    /// Sets `name` in the environment the process is started with next
    /// ([`Self::restart`]).
    pub fn set_env(&mut self, name: &'static str, value: &str) {
        self.env.retain(|(k, _)| *k != name);
        self.env.push((name, value.to_owned()));
    }

    /// Starts the same command again on the same address (after a kill).
    pub async fn restart(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let listen = self.url.trim_start_matches("http://").to_owned();
        *self = Service::spawn(&args, &self.env, &listen).await;
    }
}

/// Reads the server's log lines until it says where it listens; keeps
/// collecting them afterwards (so the pipes never fill up).
async fn wait_for_listening(
    child: &mut Child,
    logs: Arc<Mutex<Vec<String>>>,
) -> (String, Vec<tokio::task::JoinHandle<()>>) {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let pumps = vec![
        pump(stdout, logs.clone(), tx.clone()),
        pump(stderr, logs.clone(), tx),
    ];
    let found = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = rx.recv().await {
            if let Ok(v) = serde_json::from_str::<Value>(&line)
                && v["message"] == "listening"
            {
                return v["addr"].as_str().map(str::to_owned);
            }
        }
        None
    })
    .await;
    match found {
        Ok(Some(addr)) => (addr, pumps),
        _ => panic!(
            "server did not start:\n{}",
            logs.lock().expect("logs").join("\n")
        ),
    }
}

fn pump<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    reader: R,
    logs: Arc<Mutex<Vec<String>>>,
    tx: tokio::sync::mpsc::UnboundedSender<String>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            logs.lock().expect("logs").push(line.clone());
            let _ = tx.send(line);
        }
    })
}
