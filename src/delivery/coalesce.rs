//! Coalescing windows of one subscription (`coalesce`, docs/protocol.md section 4.5).
//!
//! The first event of a key goes out at once and opens a window of `window_ms`. Events
//! of that key arriving while the window is open replace one another: only the latest
//! is kept. When the window ends, the kept event (if any) goes out and opens the next
//! window; an idle window just closes. Twenty rapid updates of one task therefore give
//! one or two deliveries, and a steady stream gives one per window, always the latest.
//!
//! Open windows are bounded (`limits.max_coalesce_windows`): a new key past the bound
//! ends the oldest window at once, delivering what it held early rather than growing
//! without end on a stream of distinct keys. Every step is O(1) amortised (a map by key
//! and a queue of ends in time order; the held count is kept, not counted).
//!
//! Owns: windows and the events they hold back. Must not: send anything or decide what
//! a replaced event means for acks (the worker resolves it).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::protocol::EncodedEvent;

/// What became of an offered event.
#[derive(Debug)]
pub enum Offer {
    /// No window was open for its key: deliver it now (a window is now open). When
    /// that was one window too many, the oldest ended early: deliver what it held
    /// (`ended_early`) first.
    Deliver {
        event: Arc<EncodedEvent>,
        ended_early: Option<Arc<EncodedEvent>>,
    },
    /// Held until the window ends; it replaced `replaced`, if anything was held.
    Held { replaced: Option<Arc<EncodedEvent>> },
}

#[derive(Debug)]
struct Window {
    ends: Instant,
    latest: Option<Arc<EncodedEvent>>,
}

/// Open windows by key, and their ends in time order.
#[derive(Debug)]
pub struct Coalescer {
    window: Duration,
    windows: HashMap<String, Window>,
    /// Every window lasts `window`, so ends are queued in the order they come.
    ends: VecDeque<(Instant, String)>,
    /// Windows holding an event.
    held: usize,
}

impl Coalescer {
    pub fn new(window: Duration) -> Self {
        Coalescer {
            window,
            windows: HashMap::new(),
            ends: VecDeque::new(),
            held: 0,
        }
    }

    /// Offers an event of `key`; at most `max_windows` windows stay open.
    pub fn offer(
        &mut self,
        key: String,
        event: Arc<EncodedEvent>,
        now: Instant,
        max_windows: usize,
    ) -> Offer {
        if let Some(w) = self.windows.get_mut(&key) {
            let replaced = w.latest.replace(event);
            if replaced.is_none() {
                self.held += 1;
            }
            return Offer::Held { replaced };
        }
        let ended_early = if self.windows.len() >= max_windows {
            self.end_oldest()
        } else {
            None
        };
        self.open(key, now);
        Offer::Deliver { event, ended_early }
    }

    /// Ends the window that ends first, now; answers what it held.
    fn end_oldest(&mut self) -> Option<Arc<EncodedEvent>> {
        while let Some((ends, key)) = self.ends.pop_front() {
            match self.windows.remove(&key) {
                Some(w) if w.ends == ends => {
                    self.held -= usize::from(w.latest.is_some());
                    return w.latest;
                }
                // Stale entry of a window that was reopened meanwhile.
                Some(w) => {
                    self.windows.insert(key, w);
                }
                None => {}
            }
        }
        None
    }

    fn open(&mut self, key: String, now: Instant) {
        let ends = now + self.window;
        self.ends.push_back((ends, key.clone()));
        self.windows.insert(key, Window { ends, latest: None });
    }

    /// Ends the windows due at `now`; answers the events they held, oldest window
    /// first. A window that held an event is opened again.
    pub fn due(&mut self, now: Instant) -> Vec<Arc<EncodedEvent>> {
        let mut out = Vec::new();
        while let Some((ends, _)) = self.ends.front() {
            if *ends > now {
                break;
            }
            let Some((ends, key)) = self.ends.pop_front() else {
                break;
            };
            let Some(window) = self.windows.remove(&key) else {
                continue;
            };
            if window.ends != ends {
                // Stale entry of a window that was reopened meanwhile.
                self.windows.insert(key, window);
                continue;
            }
            if let Some(event) = window.latest {
                self.held -= 1;
                out.push(event);
                self.open(key, now);
            }
        }
        out
    }

    /// When the first open window ends (possibly a stale entry of a window reopened
    /// since: waking early for it is harmless, [`due`](Self::due) skips it).
    pub fn next_end(&self) -> Option<Instant> {
        self.ends.front().map(|(at, _)| *at)
    }

    /// Events held back, not yet delivered.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Windows open.
    pub fn open_windows(&self) -> usize {
        self.windows.len()
    }

    /// True when no window is open.
    pub fn is_idle(&self) -> bool {
        self.windows.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::Event;
    use serde_json::json;

    fn ev(n: u64) -> Arc<EncodedEvent> {
        let mut e = Event::from_json(json!({"topic": "t"}), "s").unwrap();
        e.cursor = n;
        EncodedEvent::new(e)
    }

    fn cursor(offer: &Offer) -> Option<u64> {
        match offer {
            Offer::Deliver { event, .. } => Some(event.event.cursor),
            Offer::Held { .. } => None,
        }
    }

    const MAX: usize = 100;

    #[test]
    fn first_goes_out_latest_follows_at_window_end() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = Coalescer::new(ms(100));
        assert_eq!(c.next_end(), None, "no window: nothing to wake for");
        assert_eq!(cursor(&c.offer("a".into(), ev(1), t0, MAX)), Some(1));
        assert_eq!(c.next_end(), Some(t0 + ms(100)));
        let mut replaced = 0;
        for n in 2..=20 {
            match c.offer("a".into(), ev(n), t0 + ms(n), MAX) {
                Offer::Held { replaced: Some(_) } => replaced += 1,
                Offer::Held { replaced: None } => {}
                Offer::Deliver { .. } => panic!("window is open"),
            }
        }
        assert_eq!(replaced, 18, "2 was held, 3..=20 each replaced one");
        // Another key has its own window.
        assert_eq!(
            cursor(&c.offer("b".into(), ev(21), t0 + ms(50), MAX)),
            Some(21)
        );
        assert_eq!(c.held(), 1);
        assert!(c.due(t0 + ms(99)).is_empty());
        let out: Vec<u64> = c.due(t0 + ms(100)).iter().map(|e| e.event.cursor).collect();
        assert_eq!(out, [20]);
        assert_eq!(c.next_end(), Some(t0 + ms(150)), "then `b`'s window");
        // The window of `a` was reopened at 100 ms; `b`'s (idle) closes at 150 ms.
        assert!(c.due(t0 + ms(150)).is_empty());
        assert_eq!(
            cursor(&c.offer("b".into(), ev(22), t0 + ms(151), MAX)),
            Some(22)
        );
        assert!(matches!(
            c.offer("a".into(), ev(23), t0 + ms(160), MAX),
            Offer::Held { replaced: None }
        ));
        let out: Vec<u64> = c.due(t0 + ms(200)).iter().map(|e| e.event.cursor).collect();
        assert_eq!(out, [23]);
        assert!(c.due(t0 + ms(400)).is_empty());
        assert!(c.is_idle());
        assert_eq!(c.next_end(), None);
    }

    #[test]
    fn past_the_bound_the_oldest_window_ends_early() {
        let t0 = Instant::now();
        let ms = Duration::from_millis;
        let mut c = Coalescer::new(ms(100));
        let early = |o: Offer| match o {
            Offer::Deliver { ended_early, .. } => ended_early.map(|e| e.event.cursor),
            Offer::Held { .. } => panic!("a new key opens a window"),
        };
        assert_eq!(early(c.offer("a".into(), ev(1), t0, 2)), None);
        assert_eq!(early(c.offer("b".into(), ev(2), t0 + ms(1), 2)), None);
        assert!(matches!(
            c.offer("a".into(), ev(3), t0 + ms(2), 2),
            Offer::Held { .. }
        ));
        assert_eq!(c.held(), 1);
        // A third key: `a`, the oldest window, ends now and its held event goes first.
        assert_eq!(early(c.offer("c".into(), ev(4), t0 + ms(3), 2)), Some(3));
        assert_eq!((c.open_windows(), c.held()), (2, 0));
        // Then `b` (idle: nothing held) makes room for `d`.
        assert_eq!(early(c.offer("d".into(), ev(5), t0 + ms(4), 2)), None);
        assert_eq!(c.open_windows(), 2);
        assert!(c.due(t0 + ms(200)).is_empty());
        assert!(c.is_idle());
    }

    #[test]
    fn many_distinct_keys_stay_bounded() {
        let t0 = Instant::now();
        let mut c = Coalescer::new(Duration::from_secs(3600));
        for n in 0..50_000u64 {
            let _ = c.offer(n.to_string(), ev(n), t0, 1000);
            let _ = c.offer(n.to_string(), ev(n), t0, 1000);
            assert!(c.open_windows() <= 1000);
        }
        assert_eq!(c.held(), 1000);
    }
}
