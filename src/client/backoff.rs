//! Reconnect delays: exponential backoff with jitter, as a pure function.
//!
//! Owns: how long to wait before reconnect attempt `n`. Must not: sleep or draw random
//! numbers itself (the caller passes one in, so the schedule is testable).

use std::time::Duration;

/// `initial × multiplier^(attempt-1)`, capped at `max`, then spread by ± `jitter`
/// (a fraction) so that many clients cut off together do not reconnect together.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    pub initial: Duration,
    pub max: Duration,
    pub multiplier: f64,
    /// 0.0 for none; 0.2 spreads each delay over ±20 %.
    pub jitter: f64,
}

impl Default for Backoff {
    /// 1 s, 2 s, 4 s ... up to 30 s, ±20 %.
    fn default() -> Self {
        Backoff {
            initial: Duration::from_secs(1),
            max: Duration::from_secs(30),
            multiplier: 2.0,
            jitter: 0.2,
        }
    }
}

impl Backoff {
    /// The delay before attempt `attempt` (1 for the first retry), for a `random`
    /// number in `[0, 1)`. Never more than `max × (1 + jitter)`, never negative.
    pub fn delay(&self, attempt: u32, random: f64) -> Duration {
        let exp = attempt.saturating_sub(1).min(64) as i32;
        let base = (self.initial.as_secs_f64() * self.multiplier.max(1.0).powi(exp))
            .min(self.max.as_secs_f64());
        let jitter = self.jitter.clamp(0.0, 1.0);
        let spread = 1.0 + jitter * (2.0 * random.clamp(0.0, 1.0) - 1.0);
        Duration::from_secs_f64((base * spread).max(0.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_table() {
        let b = Backoff::default();
        let ms = |d: Duration| d.as_millis();
        // random 0.5 is the midpoint: no jitter.
        let table = [
            (1, 1000),
            (2, 2000),
            (3, 4000),
            (4, 8000),
            (5, 16000),
            (6, 30000),
            (7, 30000),
            (100, 30000),
        ];
        for (attempt, want) in table {
            assert_eq!(ms(b.delay(attempt, 0.5)), want, "attempt {attempt}");
        }
        // Jitter spreads ±20 % around that.
        assert_eq!(ms(b.delay(1, 0.0)), 800);
        assert_eq!(ms(b.delay(1, 0.999_999)), 1199);
        assert_eq!(ms(b.delay(6, 0.0)), 24000);
        // Attempt 0 is treated as the first; out-of-range inputs are clamped.
        assert_eq!(ms(b.delay(0, 0.5)), 1000);
        assert_eq!(ms(b.delay(1, 7.0)), 1200);
        let none = Backoff { jitter: 0.0, ..b };
        assert_eq!(none.delay(3, 0.0), none.delay(3, 0.9));
    }
}
