//! Restores the order of a room's chat messages. A message names its
//! predecessor in the room (`previous`); it is delivered once that
//! predecessor has been, or, if the predecessor does not show up within
//! [`REORDER_WINDOW`], together with everything held, in `chat_id` order.
//! A predecessor that never shows up was lost on its way here (live
//! delivery is at most once): the room's task reads it from the chat log
//! and hands it in with [`Sequencer::fill`] before the held ones go.

use std::collections::BTreeMap;

use common::adapters::bus::BusMessage;
use common::domain::ChatId;
use tokio::time::{Duration, Instant};

/// Longest a message waits for a predecessor that is late (or was published
/// before this gateway subscribed to the room).
pub const REORDER_WINDOW: Duration = Duration::from_millis(100);

#[derive(Debug, Default)]
pub struct Sequencer {
    /// The last `chat_id` delivered.
    last: Option<ChatId>,
    held: BTreeMap<ChatId, (ChatId, BusMessage)>,
    deadline: Option<Instant>,
}

impl Sequencer {
    /// A sequencer whose room had delivered up to `floor` (0: nothing yet)
    /// before it started; `None` when that is not known: then the first
    /// message starts the sequence, or waits [`REORDER_WINDOW`] for a
    /// predecessor.
    pub fn after(floor: Option<ChatId>) -> Self {
        Self {
            last: floor,
            ..Self::default()
        }
    }

    /// Takes one message; returns those now deliverable, in order.
    pub fn push(&mut self, message: BusMessage, now: Instant) -> Vec<BusMessage> {
        let (Some(id), Some(previous)) = (message.sequence, message.previous) else {
            // No ordering information: the bus delivers in order itself.
            return vec![message];
        };
        if self.last.is_some_and(|last| id <= last) {
            // Delivered already, read from the log (or out of order, after
            // the window: too late to put in order).
            tracing::debug!(
                chat_id = id,
                "chat message arrived after a later one; dropped live"
            );
            return vec![];
        }
        self.held.insert(id, (previous, message));
        let ready = self.release_chain();
        if self.held.is_empty() {
            self.deadline = None;
        } else {
            self.deadline.get_or_insert(now + REORDER_WINDOW);
        }
        ready
    }

    /// When the oldest held message stops waiting, if any is held.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The last `chat_id` delivered; `None` before the first.
    pub fn last(&self) -> Option<ChatId> {
        self.last
    }

    /// Takes the room's messages read from the chat log after
    /// [`Self::last`]: every one acknowledged when it was read. Returns
    /// them with the held ones up to the newest of them, in order, and then
    /// whatever held follows on from it; and how many of them had not come
    /// live.
    pub fn fill(&mut self, found: Vec<BusMessage>) -> (Vec<BusMessage>, usize) {
        let Some(newest) = found.iter().filter_map(|m| m.sequence).max() else {
            return (vec![], 0);
        };
        if self.last.is_some_and(|last| newest <= last) {
            return (vec![], 0);
        }
        let mut missed = 0;
        for message in found {
            let Some(id) = message.sequence else { continue };
            if self.last.is_none_or(|last| id > last)
                && let std::collections::btree_map::Entry::Vacant(entry) = self.held.entry(id)
            {
                entry.insert((0, message));
                missed += 1;
            }
        }
        let later = self.held.split_off(&(newest + 1));
        let covered = std::mem::replace(&mut self.held, later);
        self.last = Some(newest);
        let mut ready: Vec<BusMessage> = covered.into_values().map(|(_, m)| m).collect();
        ready.extend(self.release_chain());
        if self.held.is_empty() {
            self.deadline = None;
        }
        (ready, missed)
    }

    /// The window has passed: delivers everything held, in order.
    pub fn flush(&mut self) -> Vec<BusMessage> {
        self.deadline = None;
        let held = std::mem::take(&mut self.held);
        if let Some((&id, _)) = held.last_key_value() {
            self.last = Some(id);
        }
        held.into_values().map(|(_, message)| message).collect()
    }

    /// Delivers the held messages that follow, one by one, from the last delivered.
    fn release_chain(&mut self) -> Vec<BusMessage> {
        let mut ready = Vec::new();
        while let Some(entry) = self.held.first_entry() {
            let (previous, _) = entry.get();
            let follows = match self.last {
                Some(last) => *previous == last,
                // Nothing delivered yet: only a room's very first message is
                // known to have no predecessor still to come.
                None => *previous == 0,
            };
            if !follows {
                break;
            }
            let (id, (_, message)) = entry.remove_entry();
            self.last = Some(id);
            ready.push(message);
        }
        ready
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;

    fn chat(id: ChatId, previous: ChatId) -> BusMessage {
        BusMessage {
            trace: None,
            subject: "kom.room.1.new_message".into(),
            payload: Bytes::new(),
            sequence: Some(id),
            previous: Some(previous),
        }
    }

    fn ids(messages: &[BusMessage]) -> Vec<ChatId> {
        messages.iter().filter_map(|m| m.sequence).collect()
    }

    #[test]
    fn in_order_messages_pass_at_once() {
        let mut s = Sequencer::default();
        let now = Instant::now();
        assert_eq!(ids(&s.push(chat(1, 0), now)), [1]);
        assert_eq!(ids(&s.push(chat(4, 1), now)), [4]);
        assert_eq!(s.deadline(), None);
    }

    #[test]
    fn a_late_predecessor_releases_what_waited_for_it() {
        let mut s = Sequencer::default();
        let now = Instant::now();
        assert_eq!(ids(&s.push(chat(10, 0), now)), [10]);
        assert_eq!(ids(&s.push(chat(12, 11), now)), Vec::<ChatId>::new());
        assert_eq!(ids(&s.push(chat(13, 12), now)), Vec::<ChatId>::new());
        assert_eq!(s.deadline(), Some(now + REORDER_WINDOW));
        assert_eq!(ids(&s.push(chat(11, 10), now)), [11, 12, 13]);
        assert_eq!(s.deadline(), None);
    }

    #[test]
    fn after_the_window_held_messages_go_out_in_order() {
        let mut s = Sequencer::default();
        let now = Instant::now();
        // Subscribed mid-conversation: 52's predecessor was published before.
        assert!(s.push(chat(53, 52), now).is_empty());
        assert!(s.push(chat(52, 40), now).is_empty());
        assert_eq!(ids(&s.flush()), [52, 53]);
        assert_eq!(ids(&s.push(chat(54, 53), now)), [54]);
        // Anything older than what was delivered cannot be put in order.
        assert!(s.push(chat(50, 45), now).is_empty());
    }

    #[test]
    fn messages_read_from_the_log_close_the_gap_before_the_held_ones() {
        let mut s = Sequencer::default();
        let now = Instant::now();
        assert_eq!(ids(&s.push(chat(10, 0), now)), [10]);
        // 11 and 13 were lost on the way; 12 and 14 wait for them.
        assert!(s.push(chat(12, 11), now).is_empty());
        assert!(s.push(chat(14, 13), now).is_empty());
        assert!(s.push(chat(16, 15), now).is_empty());
        assert_eq!(s.last(), Some(10));
        // The log, read after 10: everything up to 14, 12 among them.
        let found = vec![chat(11, 10), chat(12, 11), chat(13, 12), chat(14, 13)];
        let (ready, missed) = s.fill(found);
        assert_eq!((ids(&ready), missed), (vec![11, 12, 13, 14], 2));
        assert_eq!(s.last(), Some(14));
        // 16 still waits for 15, which the read did not have yet.
        assert!(s.deadline().is_some());
        assert_eq!(ids(&s.push(chat(15, 14), now)), [15, 16]);
        assert_eq!(s.deadline(), None);
        // A read that finds nothing newer changes nothing.
        assert_eq!(s.fill(vec![chat(16, 15)]).1, 0);
        assert!(s.fill(Vec::new()).0.is_empty());
        assert_eq!(ids(&s.push(chat(17, 16), now)), [17]);
    }

    #[test]
    fn from_a_floor_the_next_message_passes_at_once_and_a_lost_one_shows() {
        let now = Instant::now();
        // The room's newest message was 52 when it was subscribed.
        let mut s = Sequencer::after(Some(52));
        assert_eq!(ids(&s.push(chat(53, 52), now)), [53]);
        // An empty room: its first message has no predecessor.
        let mut empty = Sequencer::after(Some(0));
        assert_eq!(ids(&empty.push(chat(1, 0), now)), [1]);
        // 53 was lost on its way: 54 waits, and the log is read after 52.
        let mut lost = Sequencer::after(Some(52));
        assert!(lost.push(chat(54, 53), now).is_empty());
        assert_eq!(lost.last(), Some(52));
        let (ready, missed) = lost.fill(vec![chat(53, 52), chat(54, 53)]);
        assert_eq!((ids(&ready), missed), (vec![53, 54], 1));
    }

    #[test]
    fn messages_without_order_information_are_not_held() {
        let mut s = Sequencer::default();
        let mut m = chat(7, 0);
        m.previous = None;
        assert_eq!(ids(&s.push(m, Instant::now())), [7]);
    }
}
