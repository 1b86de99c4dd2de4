//! A test deployment: `komunikator all` on the embedded defaults, or the
//! separate services on MariaDB + NATS + Redis, each test with its own
//! database, data directory and subject/key prefix.

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;

use super::{Service, TestDb, run_to_end};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `komunikator api` on MariaDB, NATS and Redis.
    MySql,
    /// `komunikator all` on the embedded defaults (SQLite, in-process bus and presence).
    Embedded,
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

/// A token with `claims`, signed by `algorithm` with `secret`.
pub fn sign_with(algorithm: jsonwebtoken::Algorithm, secret: &[u8], claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(algorithm),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(secret),
    )
    .expect("sign token")
}

/// A token for `user`, well-formed and valid for ten minutes but signed
/// with a secret no server of the suite has.
pub fn forged_token(user: &str) -> String {
    sign_with(
        jsonwebtoken::Algorithm::HS256,
        b"some other secret, 32 bytes long!",
        &claims_for(user, 600),
    )
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
    pub(super) http: reqwest::Client,
}

impl TestApp {
    pub async fn start(backend: Backend) -> Self {
        Self::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend, options: Options) -> Self {
        let prefix = format!("t{}", random_hex(6));
        let mut env: Vec<(&'static str, String)> = vec![
            ("KOM_PREFIX", prefix.clone()),
            // Every user of the suite registers from 127.0.0.1; the tests
            // of the per-address limit set it back (`Options::with`).
            ("REGISTRATIONS_PER_ADDRESS", "1000000".into()),
        ];
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

    /// Every process of the deployment, the main one first.
    pub fn services(&self) -> impl Iterator<Item = &Service> {
        std::iter::once(&self.main)
            .chain(&self.apis)
            .chain(&self.gateways)
            .chain(&self.persister)
            .chain(&self.presence)
    }

    /// Sets `name` in the environment of every process of the deployment,
    /// for its next start.
    pub fn set_env(&mut self, name: &'static str, value: &str) {
        self.env.retain(|(k, _)| *k != name);
        self.env.push((name, value.to_owned()));
        for service in self.services_mut() {
            service.set_env(name, value);
        }
    }

    /// [`Self::services`], to kill and restart.
    pub fn services_mut(&mut self) -> impl Iterator<Item = &mut Service> {
        std::iter::once(&mut self.main)
            .chain(&mut self.apis)
            .chain(&mut self.gateways)
            .chain(&mut self.persister)
            .chain(&mut self.presence)
    }

    /// Everything every process of the deployment has logged so far.
    pub fn logs(&self) -> String {
        self.services()
            .map(Service::logs)
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// A token signed with this server's secret, with the given claims.
    pub fn sign(&self, claims: &Value) -> String {
        sign_with(
            jsonwebtoken::Algorithm::HS256,
            self.secret.as_bytes(),
            claims,
        )
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
            let subjects = common::adapters::bus::Subjects::new(&self.prefix);
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
