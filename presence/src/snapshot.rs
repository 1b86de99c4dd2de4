//! Who is online, kept durably outside Redis: a JetStream stream with one
//! subject per online user (`<prefix>.presence.online.<hex of the name>`,
//! one message each), published when the user comes online and purged when
//! they go offline. When Redis restarts empty, the presence state is
//! restored from it, so that users who were online are not announced online
//! again, and those who left meanwhile still get their `user_offline`
//! (docs/protocol.md, "Presence").
//!
//! (A stream rather than a KV bucket: async-nats's KV client cannot create
//! buckets on the NATS 2.9 servers we support.)

use async_nats::jetstream::{self, stream};
use common::adapters::bus::{NatsBus, Subjects};
use futures_util::TryStreamExt;

/// The online users of a deployment.
#[derive(Clone)]
pub struct OnlineSnapshot {
    jetstream: jetstream::Context,
    stream: stream::Stream,
    /// `<prefix>.presence.online`
    subject: String,
}

impl std::fmt::Debug for OnlineSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnlineSnapshot")
            .field("subject", &self.subject)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, thiserror::Error)]
#[error("presence snapshot: {0}")]
pub struct SnapshotError(String);

fn error(e: impl std::fmt::Display) -> SnapshotError {
    SnapshotError(e.to_string())
}

impl OnlineSnapshot {
    /// Opens the stream `<PREFIX>_PRESENCE`, creating it when it does not exist.
    pub async fn open(nats: &NatsBus, subjects: &Subjects) -> Result<Self, SnapshotError> {
        let subject = subjects.presence_online();
        let config = stream::Config {
            name: subjects.presence_stream(),
            subjects: vec![format!("{subject}.*")],
            storage: stream::StorageType::File,
            max_messages_per_subject: 1,
            ..Default::default()
        };
        let jetstream = nats.jetstream().clone();
        let stream = nats.ensure_stream(config).await.map_err(error)?;
        Ok(Self {
            jetstream,
            stream,
            subject,
        })
    }

    /// Subject tokens allow only some characters: the name in hex.
    fn user_subject(&self, user: &str) -> String {
        format!("{}.{}", self.subject, hex::encode(user))
    }

    pub async fn online(&self, user: &str) -> Result<(), SnapshotError> {
        self.jetstream
            .publish(self.user_subject(user), bytes::Bytes::new())
            .await
            .map_err(error)?
            .await
            .map(drop)
            .map_err(error)
    }

    pub async fn offline(&self, user: &str) -> Result<(), SnapshotError> {
        self.stream
            .purge()
            .filter(self.user_subject(user))
            .await
            .map(drop)
            .map_err(error)
    }

    /// Everyone recorded online.
    pub async fn users(&self) -> Result<Vec<String>, SnapshotError> {
        let subjects: Vec<(String, usize)> = self
            .stream
            .info_with_subjects(format!("{}.*", self.subject))
            .await
            .map_err(error)?
            .try_collect()
            .await
            .map_err(error)?;
        Ok(subjects
            .iter()
            .filter(|(_, count)| *count > 0)
            .filter_map(|(subject, _)| subject.rsplit('.').next())
            .filter_map(|token| hex::decode(token).ok())
            .filter_map(|bytes| String::from_utf8(bytes).ok())
            .collect())
    }
}
