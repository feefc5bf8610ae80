//! Replies in command order. A session keeps reading frames while earlier publishes
//! wait for their commit, yet a client that sends commands and reads gets the replies
//! in the order it sent the commands (docs/protocol.md section 3.9).

use std::collections::VecDeque;

#[derive(Debug)]
enum Slot {
    /// Owed, not known yet.
    Pending,
    Ready(String),
    /// The command needs no reply after all (a successful `ack`).
    Nothing,
}

/// The replies still owed, oldest first.
#[derive(Debug, Default)]
pub struct ReplyOrder {
    slots: VecDeque<Slot>,
    /// Sequence number of `slots[0]`.
    base: u64,
}

impl ReplyOrder {
    /// Reserves the place of a reply that comes later; returns its ticket.
    pub fn reserve(&mut self) -> u64 {
        self.slots.push_back(Slot::Pending);
        self.base + self.slots.len() as u64 - 1
    }

    /// A reply known now: returned to be written at once when nothing is owed before
    /// it, otherwise queued behind what is.
    pub fn ready(&mut self, text: String) -> Option<String> {
        if self.slots.is_empty() {
            return Some(text);
        }
        self.slots.push_back(Slot::Ready(text));
        None
    }

    /// Settles a reserved reply (`None`: nothing to send) and returns every reply that
    /// can now be written, in order.
    pub fn settle(&mut self, ticket: u64, reply: Option<String>) -> Vec<String> {
        if let Some(slot) = ticket
            .checked_sub(self.base)
            .and_then(|i| self.slots.get_mut(usize::try_from(i).ok()?))
        {
            *slot = reply.map_or(Slot::Nothing, Slot::Ready);
        }
        let mut out = Vec::new();
        while matches!(self.slots.front(), Some(Slot::Ready(_) | Slot::Nothing)) {
            if let Some(Slot::Ready(text)) = self.slots.pop_front() {
                out.push(text);
            }
            self.base += 1;
        }
        out
    }

    /// Replies not yet written (pending or queued).
    pub fn owed(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replies_leave_in_command_order() {
        let mut o = ReplyOrder::default();
        assert_eq!(
            o.ready("a".into()),
            Some("a".into()),
            "nothing owed: straight out"
        );
        let p1 = o.reserve();
        let p2 = o.reserve();
        assert_eq!(o.ready("pong".into()), None, "queued behind the publishes");
        assert!(
            o.settle(p2, Some("published-2".into())).is_empty(),
            "p1 still owed"
        );
        assert_eq!(
            o.settle(p1, Some("published-1".into())),
            ["published-1", "published-2", "pong"]
        );
        assert_eq!(o.owed(), 0);
        let ack = o.reserve();
        let p3 = o.reserve();
        assert!(o.settle(p3, Some("published-3".into())).is_empty());
        assert_eq!(
            o.settle(ack, None),
            ["published-3"],
            "a silent ack frees the way"
        );
        assert_eq!(o.ready("b".into()), Some("b".into()));
        assert!(
            o.settle(12345, Some("stale".into())).is_empty(),
            "unknown tickets are ignored"
        );
    }
}
