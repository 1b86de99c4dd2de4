//! Restores the order of a room's chat messages. A message names its
//! predecessor in the room (`previous`); it is delivered once that
//! predecessor has been, or, if the predecessor does not show up within
//! [`REORDER_WINDOW`], together with everything held, in `chat_id` order.

use std::collections::BTreeMap;

use common::bus::BusMessage;
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
    /// Takes one message; returns those now deliverable, in order.
    pub fn push(&mut self, message: BusMessage, now: Instant) -> Vec<BusMessage> {
        let (Some(id), Some(previous)) = (message.sequence, message.previous) else {
            // No ordering information: the bus delivers in order itself.
            return vec![message];
        };
        if self.last.is_some_and(|last| id <= last) {
            tracing::warn!(
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
    fn messages_without_order_information_are_not_held() {
        let mut s = Sequencer::default();
        let mut m = chat(7, 0);
        m.previous = None;
        assert_eq!(ids(&s.push(m, Instant::now())), [7]);
    }
}
