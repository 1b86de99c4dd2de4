//! The one harness of the black-box suite: starts the real `komunikator`
//! binary on 127.0.0.1 against MariaDB + NATS + Redis (each test with its own
//! database and subject/key prefix) or against the embedded defaults (each
//! test with its own data directory), and talks HTTP to it like a client.

#![allow(dead_code)] // each test binary uses the helpers it needs

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::Value;
use sqlx::{AssertSqlSafe, Connection, MySqlConnection};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

pub const BIN: &str = env!("CARGO_BIN_EXE_komunikator");

/// Configuration variables the harness controls; inherited values are removed.
const CONFIG_VARS: &[&str] = &[
    "DATABASE_URL",
    "DB_HOST",
    "DB_PORT",
    "DB_USER",
    "DB_PASSWORD",
    "DB_NAME",
    "JWT_SECRET_KEY",
    "JWT_ACCESS_TOKEN_EXPIRES",
    "NATS_URL",
    "REDIS_URL",
    "KOM_PREFIX",
    "LISTEN_ADDR",
    "DATA_DIR",
    "CORS_ALLOWED_ORIGINS",
    "PRESENCE_TIMEOUT_MS",
    "RUST_LOG",
    "LOG_FORMAT",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `komunikator api` on MariaDB, NATS and Redis.
    MySql,
    /// `komunikator all` on the embedded defaults (SQLite, in-process bus and presence).
    Embedded,
}

pub fn mysql_server_url() -> String {
    std::env::var("KOM_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

pub fn nats_url() -> String {
    std::env::var("KOM_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

pub fn redis_url() -> String {
    std::env::var("KOM_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

pub fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).expect("random bytes");
    hex::encode(buf)
}

/// The claims of a well-formed access token for `user`, expiring
/// `from_now` seconds from now (negative: expired). Sign with [`TestApp::sign`].
pub fn claims_for(user: &str, from_now: i64) -> Value {
    let now = chrono::Utc::now().timestamp();
    serde_json::json!({ "sub": user, "iat": now, "nbf": now, "exp": now + from_now,
                        "jti": random_hex(8), "type": "access" })
}

/// The Prometheus text a process serves at `<base>/metrics`.
pub async fn metrics(base: &str) -> String {
    reqwest::Client::builder()
        .no_proxy()
        .build()
        .expect("client")
        .get(format!("{base}/metrics"))
        .send()
        .await
        .expect("metrics")
        .text()
        .await
        .expect("metrics text")
}

/// A fresh MariaDB database, dropped when this value is.
pub struct TestDb {
    pub name: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let name = format!("kom_t_{}", random_hex(6));
        let mut conn = MySqlConnection::connect(&mysql_server_url())
            .await
            .expect("connect to MariaDB");
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE DATABASE {name} CHARACTER SET utf8mb4"
        )))
        .execute(&mut conn)
        .await
        .expect("create database");
        Self { name }
    }

    pub fn url(&self) -> String {
        format!("{}/{}", mysql_server_url(), self.name)
    }

    pub async fn connect(&self) -> MySqlConnection {
        MySqlConnection::connect(&self.url())
            .await
            .expect("connect to test database")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs inside the test's runtime: do the async cleanup on a thread of its own.
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?;
            rt.block_on(async {
                let mut conn = MySqlConnection::connect(&mysql_server_url()).await?;
                sqlx::raw_sql(AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name}")))
                    .execute(&mut conn)
                    .await?;
                Ok::<_, sqlx::Error>(())
            })
            .map_err(std::io::Error::other)
        });
        let _ = cleanup.join();
    }
}

/// Runs `komunikator <args>` to completion; returns (success, output).
pub async fn run_to_end(args: &[&str], env: &[(&str, String)]) -> (Option<i32>, String) {
    let mut cmd = Command::new(BIN);
    cmd.args(args);
    for var in CONFIG_VARS {
        cmd.env_remove(var);
    }
    cmd.env("LOG_FORMAT", "json");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.kill_on_drop(true).output())
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

/// The environment of `komunikator api` on the real services, with `db`.
pub fn service_env(db: &TestDb, secret: &str) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", db.url()),
        ("JWT_SECRET_KEY", secret.to_owned()),
        ("NATS_URL", nats_url()),
        ("REDIS_URL", redis_url()),
    ]
}

/// Extra settings for a server.
#[derive(Default, Clone)]
pub struct Options {
    pub env: Vec<(&'static str, String)>,
    /// Embedded backend: use this data directory and leave it in place
    /// (for restart tests); by default each server gets a fresh one.
    pub data_dir: Option<PathBuf>,
}

impl Options {
    /// Sockets may send as fast as the test wants (no message rate limit).
    pub fn unlimited() -> Options {
        Options::default().with("MESSAGE_RATE_LIMIT", "0")
    }

    /// These settings plus `name=value`.
    pub fn with(mut self, name: &'static str, value: impl Into<String>) -> Options {
        self.env.push((name, value.into()));
        self
    }
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
        let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
        let mut cmd = Command::new(BIN);
        cmd.args(&args).args(["--listen", listen]);
        for var in CONFIG_VARS {
            cmd.env_remove(var);
        }
        cmd.env("LOG_FORMAT", "json");
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn komunikator");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (addr, pumps) = wait_for_listening(&mut child, logs.clone()).await;
        Service {
            url: format!("http://{addr}"),
            args,
            env: env.to_vec(),
            logs,
            pumps,
            child,
        }
    }

    /// Everything the process has logged so far.
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
        let pid = self.child.id().expect("running");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("kill");
        assert!(status.success());
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("exited within 10 s after SIGTERM")
            .expect("wait");
        self.drain_logs().await;
        status.code()
    }

    /// Starts the same command again on the same address (after a kill).
    pub async fn restart(&mut self) {
        let args: Vec<&str> = self.args.iter().map(String::as_str).collect();
        let listen = self.url.trim_start_matches("http://").to_owned();
        *self = Service::spawn(&args, &self.env, &listen).await;
    }
}

/// A running deployment and what a test needs to talk to it: on the
/// embedded backend one `all` process; on MariaDB the separate services
/// `api`, `gateway` and `persister` (more gateways on demand).
pub struct TestApp {
    pub backend: Backend,
    /// The REST API's base URL.
    pub base: String,
    /// Prefix of this deployment's NATS subjects and Redis keys.
    pub prefix: String,
    pub secret: String,
    pub db: Option<TestDb>,
    pub data_dir: Option<PathBuf>,
    /// Whether the data directory is removed when the server is dropped.
    owns_data_dir: bool,
    /// `api` (MariaDB) or `all` (embedded).
    pub main: Service,
    /// More `api` replicas (MariaDB only), started on demand.
    pub apis: Vec<Service>,
    /// Gateway processes (MariaDB only; the embedded `all` serves sockets itself).
    pub gateways: Vec<Service>,
    pub persister: Option<Service>,
    pub presence: Option<Service>,
    env: Vec<(&'static str, String)>,
    http: reqwest::Client,
}

/// An HTTP answer: status and JSON body (`Value::Null` when not JSON).
#[derive(Debug)]
pub struct Resp {
    pub status: u16,
    pub body: Value,
    pub headers: reqwest::header::HeaderMap,
}

impl Resp {
    /// The `error` text of an error body.
    pub fn error(&self) -> &str {
        self.body["error"]
            .as_str()
            .unwrap_or_else(|| panic!("no error in {self:?}"))
    }

    #[track_caller]
    pub fn expect(&self, status: u16, error: &str) {
        assert_eq!((self.status, self.error()), (status, error), "{self:?}");
    }

    #[track_caller]
    pub fn expect_message(&self, message: &str) {
        assert_eq!(
            (self.status, self.body["message"].as_str()),
            (200, Some(message)),
            "{self:?}"
        );
    }
}

/// A registered user.
#[derive(Debug, Clone)]
pub struct User {
    pub name: String,
    pub password: String,
    pub token: String,
}

impl TestApp {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend, options: Options) -> Self {
        let prefix = format!("t{}", random_hex(6));
        let mut env: Vec<(&'static str, String)> = vec![("KOM_PREFIX", prefix.clone())];
        let (secret, db, data_dir) = match backend {
            Backend::MySql => {
                let db = TestDb::create().await;
                let secret = random_hex(32);
                env.extend(service_env(&db, &secret));
                (secret, Some(db), None)
            }
            Backend::Embedded => {
                let dir = options.data_dir.clone().unwrap_or_else(|| {
                    std::env::temp_dir().join(format!("kom-test-{}", random_hex(6)))
                });
                env.push(("DATA_DIR", dir.display().to_string()));
                (String::new(), None, Some(dir))
            }
        };
        env.extend(options.env.iter().cloned());
        let (main, gateways, persister, presence) = match backend {
            Backend::MySql => {
                let (code, out) = run_to_end(&["migrate"], &env).await;
                assert_eq!(code, Some(0), "migrate failed: {out}");
                let any = "127.0.0.1:0";
                let (main, gateway, persister, presence) = tokio::join!(
                    Service::spawn(&["api"], &env, any),
                    Service::spawn(&["gateway"], &env, any),
                    Service::spawn(&["persister"], &env, any),
                    Service::spawn(&["presence"], &env, any),
                );
                (main, vec![gateway], Some(persister), Some(presence))
            }
            Backend::Embedded => (
                Service::spawn(&["all"], &env, "127.0.0.1:0").await,
                vec![],
                None,
                None,
            ),
        };
        let secret = match &data_dir {
            Some(dir) => std::fs::read_to_string(dir.join("jwt_secret")).expect("generated secret"),
            None => secret,
        };
        let http = reqwest::Client::builder()
            .no_proxy()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("http client");
        Self {
            backend,
            base: main.url.clone(),
            prefix,
            secret,
            db,
            owns_data_dir: options.data_dir.is_none(),
            data_dir,
            main,
            apis: Vec::new(),
            gateways,
            persister,
            presence,
            env,
            http,
        }
    }

    /// The environment every process of this deployment runs with.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        self.env.clone()
    }

    /// Starts one more gateway process (MariaDB backend); returns its index.
    pub async fn add_gateway(&mut self) -> usize {
        assert_eq!(
            self.backend,
            Backend::MySql,
            "the embedded backend has one process"
        );
        self.gateways
            .push(Service::spawn(&["gateway"], &self.env, "127.0.0.1:0").await);
        self.gateways.len() - 1
    }

    /// Starts one more api replica (MariaDB backend); returns its base URL.
    pub async fn add_api(&mut self) -> String {
        assert_eq!(
            self.backend,
            Backend::MySql,
            "one `all` process serves the API"
        );
        let api = Service::spawn(&["api"], &self.env, "127.0.0.1:0").await;
        let url = api.url.clone();
        self.apis.push(api);
        url
    }

    /// The base URL of gateway `i` (the `all` process on the embedded backend).
    pub fn gateway_url(&self, i: usize) -> &str {
        match self.backend {
            Backend::MySql => &self.gateways[i].url,
            Backend::Embedded => &self.main.url,
        }
    }

    /// A socket of `user` on the first gateway, authenticated by its token.
    pub async fn socket(&self, user: &User) -> crate::sio::Socket {
        self.socket_on(0, user).await
    }

    /// A socket of `user` on gateway `i`.
    pub async fn socket_on(&self, i: usize, user: &User) -> crate::sio::Socket {
        crate::sio::Socket::connect(self.gateway_url(i), crate::sio::Auth::Payload(&user.token))
            .await
            .expect("socket connects")
    }

    /// Everything every process of the deployment has logged so far.
    pub fn logs(&self) -> String {
        let services = std::iter::once(&self.main)
            .chain(&self.apis)
            .chain(&self.gateways)
            .chain(&self.persister)
            .chain(&self.presence);
        services.map(Service::logs).collect::<Vec<_>>().join("\n")
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub async fn send(&self, req: reqwest::RequestBuilder) -> Resp {
        let res = req.send().await.expect("request sent");
        let status = res.status().as_u16();
        let headers = res.headers().clone();
        let bytes = res.bytes().await.expect("response body");
        let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
        if status >= 500 {
            let errors: Vec<String> = self
                .logs()
                .lines()
                .filter(|l| l.contains("\"ERROR\"") || l.contains("\"WARN\""))
                .map(str::to_owned)
                .collect();
            panic!(
                "server error {status}: {}\nwarnings and errors logged:\n{}",
                String::from_utf8_lossy(&bytes),
                errors.join("\n")
            );
        }
        Resp {
            status,
            body,
            headers,
        }
    }

    pub fn request(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
    ) -> reqwest::RequestBuilder {
        let req = self.http.request(method, self.url(path));
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    pub async fn get(&self, path: &str, token: Option<&str>) -> Resp {
        self.send(self.request(reqwest::Method::GET, path, token))
            .await
    }

    pub async fn post(&self, path: &str, token: Option<&str>, body: Value) -> Resp {
        self.send(self.request(reqwest::Method::POST, path, token).json(&body))
            .await
    }

    /// Registers a user with a unique name starting with `stem`.
    pub async fn user(&self, stem: &str) -> User {
        let name = format!("{stem}_{}", random_hex(3));
        let password = format!("pw-{name}");
        let res = self
            .post(
                "/api/register",
                None,
                serde_json::json!({ "user_name": name, "password": password }),
            )
            .await;
        assert_eq!(res.status, 201, "{res:?}");
        let token = res.body["access_token"].as_str().expect("token").to_owned();
        User {
            name,
            password,
            token,
        }
    }

    /// `user` joins the public room over REST.
    pub async fn join_public(&self, user: &User, room: i64) {
        self.post(
            "/api/room/join_public",
            Some(&user.token),
            serde_json::json!({ "room_id": room }),
        )
        .await
        .expect_message("Joined room successfully");
    }

    /// Creates a room owned by `owner`; private when `key` is given.
    pub async fn room(&self, owner: &User, name: &str, key: Option<&str>) -> i64 {
        let res = self
            .post(
                "/api/room/create",
                Some(&owner.token),
                serde_json::json!({ "room_name": name, "is_private": key.is_some(), "access_key": key }),
            )
            .await;
        res.expect_message("Room created successfully");
        res.body["room_id"].as_i64().expect("room_id")
    }

    /// A token signed with this server's secret, with the given claims.
    pub fn sign(&self, claims: &Value) -> String {
        jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            claims,
            &jsonwebtoken::EncodingKey::from_secret(self.secret.as_bytes()),
        )
        .expect("sign token")
    }

    /// Runs SQL on this server's database, for seeding what no REST call
    /// writes yet (chat history) and for checking what was stored.
    pub async fn sql(&self, statement: impl Into<String>) {
        let statement = AssertSqlSafe(statement.into());
        match self.backend {
            Backend::MySql => {
                let mut conn = self.db.as_ref().expect("db").connect().await;
                sqlx::raw_sql(statement)
                    .execute(&mut conn)
                    .await
                    .expect("sql");
            }
            Backend::Embedded => {
                let mut conn = self.sqlite().await;
                sqlx::raw_sql(statement)
                    .execute(&mut conn)
                    .await
                    .expect("sql");
            }
        }
    }

    /// One value read back from this server's database.
    pub async fn scalar<T>(&self, query: impl Into<String>) -> T
    where
        T: Send + Unpin,
        T: for<'r> sqlx::Decode<'r, sqlx::MySql> + sqlx::Type<sqlx::MySql>,
        T: for<'r> sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
    {
        let query = AssertSqlSafe(query.into());
        match self.backend {
            Backend::MySql => {
                let mut conn = self.db.as_ref().expect("db").connect().await;
                sqlx::query_scalar(query)
                    .fetch_one(&mut conn)
                    .await
                    .expect("scalar")
            }
            Backend::Embedded => {
                let mut conn = self.sqlite().await;
                sqlx::query_scalar(query)
                    .fetch_one(&mut conn)
                    .await
                    .expect("scalar")
            }
        }
    }

    /// A stored password, read back from the database.
    pub async fn stored_password(&self, user: &str) -> String {
        self.scalar(format!(
            "SELECT password FROM users WHERE user_name = '{user}'"
        ))
        .await
    }

    async fn sqlite(&self) -> sqlx::SqliteConnection {
        let path = self
            .data_dir
            .as_ref()
            .expect("data dir")
            .join("komunikator.sqlite3");
        let opts = sqlx::sqlite::SqliteConnectOptions::new()
            .filename(path)
            .busy_timeout(Duration::from_secs(5));
        sqlx::SqliteConnection::connect_with(&opts)
            .await
            .expect("open sqlite")
    }

    /// Sends SIGTERM to every process and waits for them to exit; returns
    /// the main process's exit code (each must exit).
    pub async fn terminate(&mut self) -> Option<i32> {
        let others = self
            .gateways
            .iter_mut()
            .chain(&mut self.apis)
            .chain(&mut self.persister)
            .chain(&mut self.presence);
        for service in others {
            assert_eq!(service.terminate().await, Some(0), "{}", service.logs());
        }
        self.main.terminate().await
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if self.backend == Backend::MySql {
            // The deployment's chat stream would otherwise stay on the NATS server.
            let subjects = common::bus::Subjects::new(&self.prefix);
            let streams = [subjects.chat_stream(), subjects.presence_stream()];
            let cleanup = std::thread::spawn(move || {
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(async {
                    let client = async_nats::connect(nats_url())
                        .await
                        .map_err(std::io::Error::other)?;
                    let jetstream = async_nats::jetstream::new(client);
                    for stream in &streams {
                        let _ = jetstream.delete_stream(stream).await;
                    }
                    Ok::<_, std::io::Error>(())
                })
            });
            let _ = cleanup.join();
        }
        if let Some(dir) = self.data_dir.as_ref().filter(|_| self.owns_data_dir) {
            let _ = std::fs::remove_dir_all(dir);
        }
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

/// Instantiates each scenario `async fn name(backend: Backend)` as two tests:
/// `mysql::name` (MariaDB + NATS + Redis) and `embedded::name`.
#[macro_export]
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod mysql {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::harness::Backend::MySql).await
                }
            )*
        }
        mod embedded {
            $(
                #[tokio::test]
                async fn $name() {
                    super::$name($crate::harness::Backend::Embedded).await
                }
            )*
        }
    };
}
