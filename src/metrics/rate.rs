//! Per-second rates over a sliding window (`/api/stats`).

use std::time::Instant;

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
mod tests {
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
