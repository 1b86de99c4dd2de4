//! An acknowledged message survives a power loss, not only a crash: the
//! data directories live on LazyFS (`scripts/lazyfs/`), a FUSE file system
//! that drops every write not synced when told to, as a machine losing its
//! power does. Every process writing there is killed with SIGKILL, the
//! unsynced writes are dropped, and the servers start again on what is
//! left. (A `kill -9` alone proves nothing here: the kernel's page cache
//! survives a process's death.)

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::harness::{Backend, Chat, Options, TestApp, User, random_hex};

const SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../scripts/lazyfs/lazyfs.sh");

/// One LazyFS mount of a test's own (its own run directory, so tests run
/// in parallel), unmounted when dropped.
pub struct LazyFs {
    run: PathBuf,
}

impl LazyFs {
    /// Mounts LazyFS (built by `scripts/lazyfs/build.sh`, which
    /// `scripts/test.sh` runs) with a cache of 128 MiB.
    pub fn mount() -> LazyFs {
        let fs = LazyFs {
            run: std::env::temp_dir().join(format!("kom-lazyfs-{}", random_hex(4))),
        };
        fs.script("mount");
        fs
    }

    /// The mounted directory: what is written under it is lost on
    /// [`Self::power_loss`] unless synced.
    pub fn dir(&self) -> PathBuf {
        self.run.join("mnt")
    }

    /// Drops every write not synced: the machine lost its power. Kill the
    /// processes writing under [`Self::dir`] first.
    pub fn power_loss(&self) {
        self.script("clear-cache");
    }

    fn script(&self, command: &str) {
        let out = Command::new("bash")
            .arg(SCRIPT)
            .arg(command)
            .env("LAZYFS_RUN", &self.run)
            .env("LAZYFS_CACHE", "128mb")
            .output()
            .expect("run lazyfs.sh");
        assert!(
            out.status.success(),
            "lazyfs.sh {command} failed (scripts/test.sh builds LazyFS): {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for LazyFs {
    fn drop(&mut self) {
        let _ = Command::new("bash")
            .arg(SCRIPT)
            .arg("umount")
            .env("LAZYFS_RUN", &self.run)
            .output();
        let _ = std::fs::remove_dir_all(&self.run);
    }
}

/// How many messages each test has acknowledged before the power goes.
const MESSAGES: usize = 200;

/// Sends [`MESSAGES`] messages one by one; their `(chat_id, text)`, as
/// acknowledged.
async fn acknowledged(sock: &crate::sio::Socket, room: i64) -> Vec<(i64, String)> {
    let mut acked = Vec::with_capacity(MESSAGES);
    for i in 0..MESSAGES {
        let text = format!("before the power cut {i}");
        acked.push((sock.send(room, &text).await, text));
    }
    acked
}

/// Asserts the room's history holds exactly `acked`, in order, and that
/// the next message gets an id none of them had.
/// `ann`'s token, issued before the power cut, still works: the secret
/// that signs tokens and her session survived too.
async fn assert_all_survived(
    app: &TestApp,
    ann: &User,
    room: i64,
    acked: &[(i64, String)],
    data: &Path,
) {
    let history = app
        .chat_history(&format!("room_id={room}&limit=1000"), None)
        .await
        .list();
    let survived: Vec<(i64, String)> = history
        .iter()
        .map(|m| {
            (
                m["chat_id"].as_i64().expect("chat_id"),
                m["message"].as_str().expect("message").to_owned(),
            )
        })
        .collect();
    let lost = acked.iter().filter(|m| !survived.contains(m)).count();
    eprintln!(
        "power loss: {} acknowledged, {} in the history after it, {lost} lost ({})",
        acked.len(),
        survived.len(),
        data.display()
    );
    assert_eq!(survived, acked, "acknowledged messages lost or changed");
    let mut sock = app.socket(ann).await;
    sock.join(room).await;
    let next = sock.send(room, "after the power came back").await;
    let highest = acked.iter().map(|(id, _)| *id).max().unwrap_or(0);
    assert!(
        next > highest,
        "id {next} handed out again (acked up to {highest})"
    );
}

#[tokio::test]
async fn acknowledged_messages_survive_a_power_loss_in_single_node_mode() {
    let fs = LazyFs::mount();
    let data = fs.dir().join("data");
    let options = Options {
        data_dir: Some(data.clone()),
        ..Options::unlimited()
    };
    let mut app = TestApp::start_with(Backend::Embedded, options).await;
    let Chat(room, [ann], [sock]) = app.chat("durable", ["ann"]).await;
    let acked = acknowledged(&sock, room).await;
    drop(sock);

    app.main.kill9().await;
    fs.power_loss();
    app.main.restart().await;
    assert_all_survived(&app, &ann, room, &acked, &data).await;
}
