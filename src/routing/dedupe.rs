//! Duplicate suppression: remembers the cursors of the last N event ids, each in the
//! scope of its publisher (the principal that published it). The same id from two
//! principals is two events: one never suppresses the other, nor is answered with the
//! other's cursor. The capacity is shared by all publishers.

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
    /// Where a lookup's key is built, so that a lookup allocates nothing.
    scratch: String,
}

/// Writes the key of `id` published by `publisher` into `out`: the publisher's length
/// first, so that no (publisher, id) pair spells another's key.
fn scoped_key(out: &mut String, publisher: &str, id: &str) {
    use std::fmt::Write;
    out.clear();
    // Writing to a `String` cannot fail.
    let _ = write!(out, "{}:{publisher}", publisher.len());
    out.push_str(id);
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
            scratch: String::new(),
        }
    }

    /// The cursor `publisher`'s event with this id was accepted at, if it is still
    /// remembered.
    pub fn get(&mut self, publisher: &str, id: &str) -> Option<u64> {
        scoped_key(&mut self.scratch, publisher, id);
        self.cursors.get(self.scratch.as_str()).copied()
    }

    /// Forgets `publisher`'s `id` (its event was not stored after all). Its slot in
    /// the eviction order stays until it ages out.
    pub fn remove(&mut self, publisher: &str, id: &str) {
        scoped_key(&mut self.scratch, publisher, id);
        self.cursors.remove(self.scratch.as_str());
    }

    /// Remembers `publisher`'s `id`, forgetting the oldest id when full.
    pub fn insert(&mut self, publisher: &str, id: &str, cursor: u64) {
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
        scoped_key(&mut self.scratch, publisher, id);
        let key: Arc<str> = Arc::from(self.scratch.as_str());
        self.cursors.insert(key.clone(), cursor);
        self.order.push_back((key, cursor));
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
            w.insert("p", &format!("id-{cursor}"), cursor);
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
        w.insert("p", "a", 1);
        w.insert("p", "b", 2);
        assert_eq!(w.get("p", "a"), Some(1));
        w.insert("p", "c", 3);
        assert_eq!(w.get("p", "a"), None);
        assert_eq!(w.get("p", "b"), Some(2));
        assert_eq!(w.get("p", "c"), Some(3));
        // An id inserted again outlives its first slot.
        let mut w = DedupeWindow::new(2);
        w.insert("p", "a", 1);
        w.remove("p", "a");
        w.insert("p", "a", 5);
        w.insert("p", "b", 6);
        w.insert("p", "c", 7);
        assert_eq!(w.get("p", "a"), None, "its second slot aged out too");
        let mut w = DedupeWindow::new(3);
        w.insert("p", "a", 1);
        w.remove("p", "a");
        w.insert("p", "b", 2);
        w.insert("p", "a", 3);
        w.insert("p", "c", 4);
        assert_eq!(
            w.get("p", "a"),
            Some(3),
            "evicting the old slot keeps the new entry"
        );
        let mut off = DedupeWindow::new(0);
        off.insert("p", "a", 1);
        assert_eq!(off.get("p", "a"), None);
    }

    #[test]
    fn ids_are_scoped_by_publisher() {
        let mut w = DedupeWindow::new(8);
        w.insert("alice", "x", 1);
        assert_eq!(w.get("alice", "x"), Some(1));
        assert_eq!(w.get("bob", "x"), None, "another principal's id is unknown");
        w.insert("bob", "x", 2);
        assert_eq!((w.get("alice", "x"), w.get("bob", "x")), (Some(1), Some(2)));
        // No (publisher, id) pair spells another pair's key.
        w.insert("a", "b:c", 3);
        assert_eq!(w.get("a:b", "c"), None);
        assert_eq!(w.get("", "1:ab:c"), None);
        w.insert("", "id", 4);
        assert_eq!(w.get("", "id"), Some(4));
        w.remove("alice", "x");
        assert_eq!((w.get("alice", "x"), w.get("bob", "x")), (None, Some(2)));
    }
}
