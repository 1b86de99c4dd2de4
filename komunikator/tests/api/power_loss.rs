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

/// How many messages a test acknowledges at a time.
const MESSAGES: usize = 200;

/// Sends [`MESSAGES`] messages, 64 in flight at a time (all a socket may
/// have: more than a gateway publishes one by one, so the rest go in
/// batches; SQLite commits several at once); their `(chat_id, text)`, as
/// acknowledged, in the order sent.
async fn acknowledged(sock: &crate::sio::Socket, room: i64) -> Vec<(i64, String)> {
    let mut acked = Vec::with_capacity(MESSAGES);
    let texts: Vec<String> = (0..MESSAGES)
        .map(|i| format!("before the power cut {i}"))
        .collect();
    for chunk in texts.chunks(64) {
        let ids =
            futures_util::future::join_all(chunk.iter().map(|text| sock.send(room, text))).await;
        acked.extend(ids.into_iter().zip(chunk.iter().cloned()));
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

/// The distributed services on the shipped NATS configuration (a current
/// nats-server syncing every write) and a MariaDB that syncs its commits,
/// both with their data on LazyFS: every server and service is killed, the
/// power goes, everything starts again.
#[tokio::test]
async fn acknowledged_messages_survive_a_power_loss_of_every_server() {
    let fs = LazyFs::mount();
    let mut nats = crate::servers::nats_shipped_in(fs.dir().join("nats")).await;
    power_loss_of_every_server(&fs, std::slice::from_mut(&mut nats), 1).await;
}

/// The same with the production shape: three NATS servers, every stream on
/// all three (`NATS_STREAM_REPLICAS=3`), all losing their power at once.
#[tokio::test]
async fn acknowledged_messages_survive_a_power_loss_of_a_whole_nats_cluster() {
    let fs = LazyFs::mount();
    let mut cluster = crate::servers::NatsCluster::start_in(3, fs.dir().join("nats")).await;
    power_loss_of_every_server(&fs, &mut cluster.servers, 3).await;
}

async fn power_loss_of_every_server(
    fs: &LazyFs,
    nats: &mut [crate::servers::OwnedServer],
    replicas: u8,
) {
    let urls: Vec<String> = nats.iter().map(|s| s.url.clone()).collect();
    let mut db = crate::servers::mariadb_in(fs.dir().join("mariadb")).await;
    let options = Options::unlimited()
        .with("NATS_URL", urls.join(","))
        .with("NATS_STREAM_REPLICAS", replicas.to_string())
        .with("DATABASE_URL", db.url.clone());
    let mut app = TestApp::start_with(Backend::MySql, options).await;
    let Chat(room, [ann], [sock]) = app.chat("durable", ["ann"]).await;
    // The persister is frozen for the second half: those messages are
    // acknowledged by the stream and not yet in MariaDB when the power goes.
    let mut acked = acknowledged(&sock, room).await;
    app.persister.as_ref().expect("persister").signal("STOP");
    acked.extend(acknowledged(&sock, room).await);
    drop(sock);
    // Published in atomic batches (on this server's chat stream).
    let gateway = &app.gateways[0].url;
    let metrics = crate::harness::metrics(gateway).await;
    let metric = |name: &str| crate::harness::metric_in(&metrics, name);
    let messages = metric("komunikator_chat_publish_batch_messages_sum");
    let publishes = metric("komunikator_chat_publish_batch_messages_count");
    assert!(
        publishes < messages,
        "published in batches: {publishes:?} publishes of {messages:?} messages"
    );

    for service in app.services_mut() {
        service.kill9().await;
    }
    for server in nats.iter_mut() {
        server.kill9();
    }
    db.kill9();
    fs.power_loss();
    db.launch().await;
    for server in nats.iter_mut() {
        server.launch().await;
    }
    // The chat stream has a leader again (a cluster elects one first).
    // The services would wait for it themselves (the cluster test
    // `services_started_before_their_nats_cluster_is_ready_wait_for_it`),
    // but reads answer 503 until it has one, and this test reads once.
    let stream = common::adapters::bus::Subjects::new(&app.prefix).chat_stream();
    let js = async_nats::jetstream::new(async_nats::connect(urls.as_slice()).await.expect("NATS"));
    crate::harness::eventually(std::time::Duration::from_secs(60), async || {
        js.get_stream(&stream)
            .await
            .map(drop)
            .map_err(|e| format!("{stream}: {e}"))
    })
    .await;
    for service in app.services_mut() {
        service.restart().await;
    }
    assert_all_survived(&app, &ann, room, &acked, fs.dir().as_path()).await;
}

/// Should the chat stream be lost all the same (its volume gone, a NATS
/// that did not sync), the acknowledged messages not yet stored are gone
/// with it; but the services say so loudly, and no id a client has seen is
/// handed out again: the gateways record the highest acknowledged id every
/// second, and a new stream starts above it.
#[tokio::test]
async fn a_lost_chat_stream_never_hands_out_an_acknowledged_id_again() {
    let mut app = TestApp::start_with(Backend::MySql, Options::unlimited()).await;
    let Chat(room, [ann], [sock]) = app.chat("lost", ["ann"]).await;
    let stored = acknowledged(&sock, room).await;
    // Stored in MariaDB, then the persister is frozen.
    let in_room = format!("room_id = {room}");
    crate::harness::eventually(std::time::Duration::from_secs(10), async || {
        match app.count_rows("chat_history", &in_room).await {
            n if n >= MESSAGES as i64 => Ok(()),
            n => Err(format!("{n} of {MESSAGES} stored")),
        }
    })
    .await;
    app.persister.as_ref().expect("persister").signal("STOP");
    let unstored = acknowledged(&sock, room).await;
    drop(sock);
    let highest = unstored.iter().map(|(id, _)| *id).max().unwrap_or(0);
    // The gateway's once-a-second record of what it acknowledged.
    crate::harness::eventually(std::time::Duration::from_secs(10), async || {
        match app
            .scalar::<i64>("SELECT acked_up_to FROM chat_log_state WHERE id = 1")
            .await
        {
            recorded if recorded >= highest => Ok(()),
            recorded => Err(format!(
                "acknowledged ids recorded up to {recorded} of {highest}"
            )),
        }
    })
    .await;

    for service in app.services_mut() {
        service.kill9().await;
    }
    let nats = async_nats::connect(crate::harness::nats_url())
        .await
        .expect("NATS");
    let stream = common::adapters::bus::Subjects::new(&app.prefix).chat_stream();
    async_nats::jetstream::new(nats)
        .delete_stream(&stream)
        .await
        .expect("the stream is lost");
    for service in app.services_mut() {
        service.restart().await;
    }

    assert!(
        app.logs()
            .contains("THE CHAT STREAM LOST ACKNOWLEDGED MESSAGES"),
        "the loss went unsaid: {}",
        app.logs()
    );
    let survived = app
        .chat_history(&format!("room_id={room}&limit=1000"), None)
        .await
        .chat_ids();
    let stored_ids: Vec<i64> = stored.iter().map(|(id, _)| *id).collect();
    eprintln!(
        "lost stream: {} stored survived, {} acknowledged and unstored lost",
        survived.len(),
        unstored.len()
    );
    assert_eq!(survived, stored_ids, "the stored messages are all there");
    let mut sock = app.socket(&ann).await;
    sock.join(room).await;
    let next = sock.send(room, "after the loss").await;
    assert!(
        next > highest,
        "id {next} handed out again (acknowledged up to {highest})"
    );
}
