//! Dependency servers a test owns (NATS, MariaDB, Redis), on free ports, to
//! kill and restart under load without any other test seeing the fault.
//! Their data directories survive a kill, as a real server's volume does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::harness::random_hex;

pub struct OwnedServer {
    /// How clients reach it (`nats://…`, `mysql://…/kom`, `redis://…`).
    pub url: String,
    port: u16,
    dir: PathBuf,
    command: fn(u16, &Path) -> Command,
    child: Option<Child>,
}

impl OwnedServer {
    async fn start(name: &str, url: fn(u16) -> String, command: fn(u16, &Path) -> Command) -> Self {
        let port = crate::nginx::free_port();
        let dir = std::env::temp_dir().join(format!("kom-{name}-{}", random_hex(6)));
        std::fs::create_dir_all(&dir).expect("server dir");
        let mut server = OwnedServer {
            url: url(port),
            port,
            dir,
            command,
            child: None,
        };
        server.launch().await;
        server
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub async fn launch(&mut self) {
        let child = (self.command)(self.port, &self.dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("server binary (scripts/test.sh installs it)");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(Instant::now() < deadline, "{} did not listen", self.url);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// Sends the signal `name` (`STOP`: the server hangs with its
    /// connections open, as behind a cut-off network; `CONT`: it goes on).
    pub fn signal(&self, name: &str) {
        let child = self.child.as_ref().expect("running");
        let status = std::process::Command::new("kill")
            .args([&format!("-{name}"), &child.id().to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
    }

    /// SIGKILL: the server dies at once, mid-work.
    pub fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for OwnedServer {
    fn drop(&mut self) {
        self.kill9();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Debian installs servers in /usr/sbin, which a CI's PATH may lack.
fn binary(name: &str) -> PathBuf {
    ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
        .iter()
        .map(|dir| Path::new(dir).join(name))
        .find(|path| path.exists())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// nats-server with JetStream.
pub async fn nats() -> OwnedServer {
    OwnedServer::start(
        "nats",
        |port| format!("nats://127.0.0.1:{port}"),
        |port, dir| {
            let mut cmd = Command::new(binary("nats-server"));
            cmd.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
                .arg(dir);
            cmd
        },
    )
    .await
}

/// redis-server, keeping nothing on disk (a restart comes back empty).
pub async fn redis() -> OwnedServer {
    OwnedServer::start(
        "redis",
        |port| format!("redis://127.0.0.1:{port}"),
        |port, _| {
            let mut cmd = Command::new(binary("redis-server"));
            cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                .args(["--save", "", "--appendonly", "no"]);
            cmd
        },
    )
    .await
}

/// mariadbd without grant tables (any user may do anything), with an empty
/// database `kom`.
pub async fn mariadb() -> OwnedServer {
    let server = OwnedServer::start(
        "mariadb",
        |port| format!("mysql://root@127.0.0.1:{port}/kom"),
        |port, dir| {
            let data = dir.join("data");
            if !data.exists() {
                let status = Command::new(binary("mariadb-install-db"))
                    .args(["--no-defaults", "--user=root", "--skip-test-db"])
                    .arg(format!("--datadir={}", data.display()))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("mariadb-install-db (scripts/test.sh installs MariaDB)");
                assert!(status.success(), "mariadb-install-db failed");
            }
            let mut cmd = Command::new(binary("mariadbd"));
            cmd.args([
                "--no-defaults",
                "--user=root",
                "--skip-grant-tables",
                "--skip-log-bin",
            ])
            .args(["--bind-address=127.0.0.1", "--innodb-buffer-pool-size=16M"])
            .arg(format!("--port={port}"))
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", dir.join("sock").display()));
            cmd
        },
    )
    .await;
    let admin = server.url.trim_end_matches("/kom").to_owned() + "/mysql";
    let mut conn = sqlx::MySqlConnection::connect(&admin)
        .await
        .expect("connect");
    sqlx::raw_sql("CREATE DATABASE kom")
        .execute(&mut conn)
        .await
        .expect("create database");
    server
}
