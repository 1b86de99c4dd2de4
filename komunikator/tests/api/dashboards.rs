//! The Grafana dashboard and the Prometheus alert rules in `deploy/` use
//! only metrics the services export: every process of a deployment serves
//! `/metrics` after some traffic, and `deploy/check_observability.py` looks
//! up every metric name the dashboard and the rules use in what they served
//! (it also runs `promtool check rules` and `promtool test rules`).

use std::path::PathBuf;

use crate::compat::python;
use serde_json::json;

use crate::harness::{Backend, TestApp, metrics};
use crate::sio::{Auth, Socket};

#[tokio::test]
async fn dashboards_and_alerts_use_the_metrics_the_services_export() {
    let mut app = TestApp::start(Backend::MySql).await;
    app.add_gateway().await;
    // Traffic that makes every labelled family show a series.
    let crate::harness::Chat(room, [ann, _], [socket, mut bob]) =
        app.chat("dashboards", ["ann", "bob"]).await;
    socket.send(room, "counted").await;
    bob.next_message().await;
    socket
        .emit_with_ack(
            "message",
            json!({ "room_id": room + 1, "message": "refused" }),
        )
        .await;
    assert!(
        Socket::connect(app.gateway_url(0), Auth::Payload("not-a-token"))
            .await
            .is_err()
    );
    app.as_user(&ann).try_create_room("", None).await;
    let dir = std::env::temp_dir().join(format!("kom-metrics-{}", app.prefix));
    std::fs::create_dir_all(&dir).expect("dump directory");
    let mut dumps = Vec::new();
    for (i, service) in app.services().enumerate() {
        let path = dir.join(format!("{i}.metrics"));
        std::fs::write(&path, metrics(&service.url).await).expect("dump written");
        dumps.push(path);
    }
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/check_observability.py");
    // The script finds promtool through KOM_PROMTOOL (scripts/test.sh) or PATH.
    let out = std::process::Command::new(python())
        .arg(script)
        .args(&dumps)
        .output()
        .expect("check_observability.py runs");
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
