//! A room's task: takes what the bus delivers for the room, puts chat
//! messages in `chat_id` order (reading those lost on their way from the
//! chat log), and hands each to the room; sends presence batches when due.

use std::time::Duration;

use common::adapters::bus::Subscription;
use common::domain::ChatId;
use futures_util::StreamExt;
use tokio::sync::watch;
use tokio::time::Instant;

use super::Room;
use crate::sequencer::Sequencer;

/// How long after a sign of lost messages the rooms read the log: the
/// live copies still on their way arrive first.
const GAP_READ_DELAY: Duration = Duration::from_millis(250);

/// Pause between two reads of a log that could not be read (a stream
/// still electing its leader), and how many are tried: a election takes
/// up to ten seconds.
const GAP_READ_RETRY: Duration = Duration::from_secs(1);
const GAP_READ_TRIES: u32 = 30;

/// Emits a room's bus messages to its local sockets, chat messages in
/// `chat_id` order, presence in batches to the sockets that asked for it.
/// Chat messages lost on their way here (live delivery is at most once) are
/// read from the chat log: those a later message shows missing, and those
/// after the last delivered when `gaps` says some may be; counting from
/// `floor`, the room's newest message before it was subscribed
/// ([`ChatLog::live_floor`](common::adapters::chat_log::ChatLog::live_floor)).
pub async fn forward(
    mut room: Room,
    mut subscription: Subscription,
    mut gaps: watch::Receiver<u64>,
    floor: Option<ChatId>,
) {
    let mut sequencer = Sequencer::after(floor);
    // A read of the log for lost messages: when, and the tries so far.
    let mut gap_read: Option<(Instant, u32)> = None;
    let mut gaps_open = true;
    loop {
        let ready = tokio::select! {
            message = subscription.next() => match message {
                Some(message) => sequencer.push(message, Instant::now()),
                None => break,
            },
            () = sleep_until(sequencer.deadline()) => {
                // A predecessor did not come in time: lost on its way, or
                // published before the room was subscribed here.
                let mut ready = match sequencer.last() {
                    Some(last) => match room.read_after(last).await {
                        Ok(found) => room.fill(&mut sequencer, found),
                        Err(e) => {
                            tracing::error!(room_id = room.room_id, after = last, error = %e,
                                "chat messages missing live and not read from the log: skipped");
                            Vec::new()
                        }
                    },
                    None => Vec::new(),
                };
                ready.extend(sequencer.flush());
                ready
            }
            changed = gaps.changed(), if gaps_open => {
                match changed {
                    Ok(()) => gap_read = Some((Instant::now() + GAP_READ_DELAY, 0)),
                    Err(_) => gaps_open = false,
                }
                continue;
            }
            () = sleep_until(gap_read.map(|(at, _)| at)) => {
                let tries = gap_read.take().map_or(0, |(_, tries)| tries) + 1;
                // Without a floor (it could not be read) and before its
                // first message, the room does not know where to read from.
                let Some(last) = sequencer.last() else { continue };
                match room.read_after(last).await {
                    Ok(found) => room.fill(&mut sequencer, found),
                    Err(e) if tries < GAP_READ_TRIES => {
                        tracing::debug!(room_id = room.room_id, error = %e, "chat log not read; tried again");
                        gap_read = Some((Instant::now() + GAP_READ_RETRY, tries));
                        continue;
                    }
                    Err(e) => {
                        tracing::error!(room_id = room.room_id, after = last, error = %e,
                            "chat log not read after a sign of lost messages");
                        continue;
                    }
                }
            }
            () = sleep_until(room.presence.due) => {
                room.send_presence();
                continue;
            }
        };
        for message in ready {
            room.deliver(message).await;
        }
    }
}

/// Sleeps until `deadline`, or forever when there is none.
async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}
