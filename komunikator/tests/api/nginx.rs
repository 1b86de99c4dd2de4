//! nginx in front of a test deployment, configured by `deploy/nginx.conf`
//! itself: only the upstream and listen addresses are rewritten, so the
//! suite tests the load balancer configuration operators deploy.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{Backend, Options, TestApp, random_hex};

const CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/nginx.conf");

/// One nginx process (no master: killing it leaves nothing behind).
pub struct Nginx {
    /// `http://127.0.0.1:<port>`
    pub url: String,
    dir: PathBuf,
    child: Child,
}

impl Nginx {
    /// Starts nginx with `deploy/nginx.conf`, each upstream server
    /// `NAME:5000` replaced by the `http://` base URL given for `NAME`.
    pub async fn start(upstreams: &[(&str, &str)]) -> Nginx {
        let mut last_error = String::new();
        // The port is picked free, then bound by nginx: retry if another
        // process took it in between.
        for _ in 0..5 {
            match Self::try_start(upstreams).await {
                Ok(nginx) => return nginx,
                Err(e) => last_error = e,
            }
        }
        panic!("nginx did not start: {last_error}");
    }

    async fn try_start(upstreams: &[(&str, &str)]) -> Result<Nginx, String> {
        let port = free_port();
        let mut config = std::fs::read_to_string(CONFIG).expect("deploy/nginx.conf");
        for (name, url) in upstreams {
            let from = format!("server {name}:5000");
            assert!(config.contains(&from), "nginx.conf has no {from}");
            config = config.replace(
                &from,
                &format!("server {}", url.trim_start_matches("http://")),
            );
        }
        assert!(!config.contains(":5000"), "an upstream was not rewritten");
        assert!(config.contains("listen 80;"));
        config = config.replace("listen 80;", &format!("listen 127.0.0.1:{port};"));

        let dir = std::env::temp_dir().join(format!("kom-nginx-{}", random_hex(6)));
        std::fs::create_dir_all(&dir).expect("nginx dir");
        let conf = dir.join("nginx.conf");
        std::fs::write(&conf, config).expect("write nginx.conf");
        let error_log = dir.join("error.log");
        let globals = format!(
            "daemon off; master_process off; pid {}; error_log {} warn;",
            dir.join("nginx.pid").display(),
            error_log.display()
        );
        let child = Command::new(nginx_binary())
            .arg("-p")
            .arg(&dir)
            .arg("-c")
            .arg(&conf)
            .arg("-e")
            .arg(&error_log)
            .args(["-g", &globals])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run nginx (scripts/test.sh installs it): {e}"))?;
        let mut nginx = Nginx {
            url: format!("http://127.0.0.1:{port}"),
            dir,
            child,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        loop {
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                return Ok(nginx);
            }
            if let Ok(Some(status)) = nginx.child.try_wait() {
                return Err(format!("nginx exited with {status}: {}", nginx.errors()));
            }
            if tokio::time::Instant::now() > deadline {
                return Err(format!("nginx did not listen: {}", nginx.errors()));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// nginx's error log (upstream failures are logged there).
    pub fn errors(&self) -> String {
        std::fs::read_to_string(self.dir.join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn nginx_binary() -> PathBuf {
    ["/usr/sbin/nginx", "/usr/bin/nginx"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("nginx"))
}

/// A TCP port on 127.0.0.1 that nothing listens on now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// The deployment of `docker-compose.yml` on the real services: two api
/// replicas and two gateways behind nginx, with the persister and presence.
/// REST calls of `app` (its `base`) go through the proxy.
pub struct Proxied {
    pub app: TestApp,
    pub nginx: Nginx,
}

impl Proxied {
    pub async fn start(options: Options) -> Proxied {
        let mut app = TestApp::start_with(Backend::MySql, options).await;
        let api2 = app.add_api().await;
        app.add_gateway().await;
        let nginx = Nginx::start(&[
            ("api1", &app.main.url.clone()),
            ("api2", &api2),
            ("gateway1", &app.gateways[0].url.clone()),
            ("gateway2", &app.gateways[1].url.clone()),
        ])
        .await;
        app.base = nginx.url.clone();
        Proxied { app, nginx }
    }

    /// Everything the services and nginx logged, for failure messages.
    pub fn logs(&self) -> String {
        format!("{}\nnginx:\n{}", self.app.logs(), self.nginx.errors())
    }
}
