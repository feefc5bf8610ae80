//! Duplicate suppression: remembers the cursors of the last N event ids.

use std::collections::VecDeque;
use std::sync::Arc;

use foldhash::HashMap;
use foldhash::HashMapExt;

#[derive(Debug)]
pub struct DedupeWindow {
    /// Each id is allocated once and shared by the map and the eviction order. Ids
    /// come from clients: foldhash is seeded at random per map, so colliding ids cannot
    /// be prepared in advance.
    cursors: HashMap<Arc<str>, u64>,
    /// Insertion order, with the cursor each entry was inserted for: an evicted entry
    /// is forgotten only if it was not inserted again since (O(1) per insert).
    order: VecDeque<(Arc<str>, u64)>,
    capacity: usize,
}

/// The most ids the window reserves room for up front (a few tens of MB); a larger
/// window grows past it.
const MAX_RESERVED_IDS: usize = 1 << 20;

impl DedupeWindow {
    /// A window of `capacity` ids with room for all of them (up to
    /// `MAX_RESERVED_IDS`) from the start: it fills within seconds under load, and
    /// growing by doubling would rehash the map and copy the order on the router's
    /// thread, a pause every publish waits behind. The map gets twice the room: a full
    /// window removes one id per insert, and at under half full the removals leave
    /// few tombstones, so it is seldom rehashed in place (the map would otherwise grow
    /// to that size at the first such rehash anyway).
    pub fn new(capacity: usize) -> Self {
        let reserve = capacity.min(MAX_RESERVED_IDS);
        DedupeWindow {
            cursors: HashMap::with_capacity(reserve.saturating_mul(2)),
            order: VecDeque::with_capacity(reserve),
            capacity,
        }
    }

    /// The cursor an event with this id was accepted at, if it is still remembered.
    pub fn get(&self, id: &str) -> Option<u64> {
        self.cursors.get(id).copied()
    }

    /// Forgets `id` (its event was not stored after all). Its slot in the eviction
    /// order stays until it ages out.
    pub fn remove(&mut self, id: &str) {
        self.cursors.remove(id);
    }

    /// Remembers `id`, forgetting the oldest id when full.
    pub fn insert(&mut self, id: &str, cursor: u64) {
        if self.capacity == 0 {
            return;
        }
        if self.order.len() == self.capacity {
            if let Some((old, old_cursor)) = self.order.pop_front() {
                if self.cursors.get(&old) == Some(&old_cursor) {
                    self.cursors.remove(&old);
                }
            }
        }
        let id: Arc<str> = Arc::from(id);
        self.cursors.insert(id.clone(), cursor);
        self.order.push_back((id, cursor));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_window_never_grows_its_tables() {
        let mut w = DedupeWindow::new(1000);
        let (map, order) = (w.cursors.capacity(), w.order.capacity());
        assert!(map >= 2000 && order >= 1000, "{map} {order}");
        for cursor in 0..10_000u64 {
            w.insert(&format!("id-{cursor}"), cursor);
        }
        assert_eq!(w.cursors.len(), 1000);
        // The map's `capacity()` is its entries plus the room left before it grows,
        // and the slots of removed entries (tombstones) take from that room until
        // the table is rehashed in place: it varies with the per-process hash seed
        // (3555 against 3584 in one run in five). A table that grew would report
        // twice as much.
        assert!(
            w.cursors.capacity() <= map,
            "{} > {map}",
            w.cursors.capacity()
        );
        assert_eq!(w.order.capacity(), order);
        // A huge window reserves only up to the cap.
        let big = DedupeWindow::new(usize::MAX);
        assert!(big.order.capacity() < MAX_RESERVED_IDS * 2);
    }

    #[test]
    fn remembers_the_last_n() {
        let mut w = DedupeWindow::new(2);
        w.insert("a", 1);
        w.insert("b", 2);
        assert_eq!(w.get("a"), Some(1));
        w.insert("c", 3);
        assert_eq!(w.get("a"), None);
        assert_eq!(w.get("b"), Some(2));
        assert_eq!(w.get("c"), Some(3));
        // An id inserted again outlives its first slot.
        let mut w = DedupeWindow::new(2);
        w.insert("a", 1);
        w.remove("a");
        w.insert("a", 5);
        w.insert("b", 6);
        w.insert("c", 7);
        assert_eq!(w.get("a"), None, "its second slot aged out too");
        let mut w = DedupeWindow::new(3);
        w.insert("a", 1);
        w.remove("a");
        w.insert("b", 2);
        w.insert("a", 3);
        w.insert("c", 4);
        assert_eq!(
            w.get("a"),
            Some(3),
            "evicting the old slot keeps the new entry"
        );
        let mut off = DedupeWindow::new(0);
        off.insert("a", 1);
        assert_eq!(off.get("a"), None);
    }
}
