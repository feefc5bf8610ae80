//! Counters shared by every actor: lock-free atomics, written on the hot path and read
//! by `/api/stats`.
//!
//! Owns: the numbers. Must not: decide anything; actors only add to them.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::time::Instant;

use crate::routing::Priority;

/// One counter per priority.
#[derive(Debug, Default)]
pub struct PerPriority([AtomicU64; 4]);

impl PerPriority {
    pub fn add(&self, p: Priority, n: u64) {
        self.0[p.index()].fetch_add(n, Relaxed);
    }

    pub fn get(&self, p: Priority) -> u64 {
        self.0[p.index()].load(Relaxed)
    }

    pub fn total(&self) -> u64 {
        self.0.iter().map(|c| c.load(Relaxed)).sum()
    }

    /// `{"total": n, "critical": n, "high": n, "normal": n, "low": n}`.
    pub fn to_json(&self) -> serde_json::Value {
        let mut m = serde_json::Map::new();
        m.insert("total".into(), self.total().into());
        for p in Priority::HIGHEST_FIRST {
            m.insert(p.as_str().into(), self.get(p).into());
        }
        serde_json::Value::Object(m)
    }
}

#[derive(Debug)]
pub struct Metrics {
    pub started: Instant,
    pub published: PerPriority,
    pub delivered: PerPriority,
    pub dropped: PerPriority,
    pub dead_lettered: PerPriority,
    pub duplicates: AtomicU64,
    /// Publishes refused because the router queue was full.
    pub rejected_busy: AtomicU64,
    /// Bad frames answered with an `error`.
    pub protocol_errors: AtomicU64,
    /// Open WebSocket connections (see [`ConnectionPermit`]).
    pub connections: AtomicUsize,
    pub connections_total: AtomicU64,
    pub connections_refused: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            started: Instant::now(),
            published: PerPriority::default(),
            delivered: PerPriority::default(),
            dropped: PerPriority::default(),
            dead_lettered: PerPriority::default(),
            duplicates: AtomicU64::default(),
            rejected_busy: AtomicU64::default(),
            protocol_errors: AtomicU64::default(),
            connections: AtomicUsize::default(),
            connections_total: AtomicU64::default(),
            connections_refused: AtomicU64::default(),
        }
    }
}

/// One open connection, counted while it lives. Taken at upgrade; refused when the
/// limit is reached; released on drop, whatever way the session ends.
#[derive(Debug)]
pub struct ConnectionPermit {
    metrics: std::sync::Arc<Metrics>,
}

impl ConnectionPermit {
    pub fn acquire(metrics: &std::sync::Arc<Metrics>, max: usize) -> Option<ConnectionPermit> {
        let before = metrics.connections.fetch_add(1, Relaxed);
        if before >= max {
            metrics.connections.fetch_sub(1, Relaxed);
            metrics.connections_refused.fetch_add(1, Relaxed);
            return None;
        }
        metrics.connections_total.fetch_add(1, Relaxed);
        Some(ConnectionPermit {
            metrics: metrics.clone(),
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        self.metrics.connections.fetch_sub(1, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn permits_are_bounded_and_released() {
        let m = Arc::new(Metrics::default());
        let a = ConnectionPermit::acquire(&m, 2).unwrap();
        let _b = ConnectionPermit::acquire(&m, 2).unwrap();
        assert!(ConnectionPermit::acquire(&m, 2).is_none());
        drop(a);
        assert!(ConnectionPermit::acquire(&m, 2).is_some());
        assert_eq!(m.connections_refused.load(Relaxed), 1);
    }
}

/// Per-second rates over a sliding window, from periodic samples of a counter.
#[derive(Debug)]
pub struct RateWindow {
    samples: std::collections::VecDeque<(Instant, u64)>,
    window: std::time::Duration,
}

impl RateWindow {
    pub fn new(window: std::time::Duration) -> Self {
        RateWindow {
            samples: std::collections::VecDeque::new(),
            window,
        }
    }

    /// Records the counter's value at `now`.
    pub fn sample(&mut self, now: Instant, value: u64) {
        self.samples.push_back((now, value));
        while self
            .samples
            .front()
            .is_some_and(|(t, _)| now.duration_since(*t) > self.window)
        {
            self.samples.pop_front();
        }
    }

    /// Events per second between the oldest and newest sample in the window.
    pub fn per_second(&self) -> f64 {
        match (self.samples.front(), self.samples.back()) {
            (Some((t0, v0)), Some((t1, v1))) if t1 > t0 => {
                v1.saturating_sub(*v0) as f64 / t1.duration_since(*t0).as_secs_f64()
            }
            _ => 0.0,
        }
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn rate_over_window() {
        let t = Instant::now();
        let mut r = RateWindow::new(Duration::from_secs(10));
        assert_eq!(r.per_second(), 0.0);
        r.sample(t, 0);
        r.sample(t + Duration::from_secs(1), 100);
        r.sample(t + Duration::from_secs(2), 300);
        assert_eq!(r.per_second(), 150.0);
        // Samples older than the window fall out.
        r.sample(t + Duration::from_secs(13), 300);
        assert_eq!(r.per_second(), 0.0);
    }
}
