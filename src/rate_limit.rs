//! The per-connection publish budget: a GCRA token bucket (the `governor` crate) that
//! holds `limits.publish_burst` tokens and refills at `limits.publish_rate_per_sec`.
//!
//! Owns: one connection's bucket, and the `rate_limited` refusal it answers with. Every
//! valid event a connection publishes costs one token, alone or in a batch.
//! Must not: count, store or answer anything; the ingress decides what a refusal
//! takes down (a whole publish, or one result of a batch) and its caller how it
//! reaches the client.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::middleware::NoOpMiddleware;
use governor::state::{InMemoryState, NotKeyed};
use governor::{Quota, RateLimiter};

use crate::config::LimitsConfig;
use crate::error::{ErrorCode, ProtocolError};

type Bucket<C> = RateLimiter<NotKeyed, InMemoryState, C, NoOpMiddleware<<C as Clock>::Instant>>;

/// The events of one publish that found no token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OverBudget {
    /// How many events, from the first, got a token and may go ahead.
    pub granted: usize,
    /// The `rate_limited` error for each of the others.
    pub error: ProtocolError,
}

/// One connection's publish budget; unlimited when the rate is 0.
#[derive(Debug)]
pub struct PublishBudget<C: Clock = DefaultClock> {
    bucket: Option<Bucket<C>>,
    rate: u32,
    burst: u32,
}

impl PublishBudget {
    /// The budget `limits` give each connection, on the real clock.
    pub fn new(limits: &LimitsConfig) -> Self {
        Self::with_clock(
            limits.publish_rate_per_sec,
            limits.publish_burst,
            DefaultClock::default(),
        )
    }
}

impl<C: Clock> PublishBudget<C> {
    /// `rate` tokens per second (0 = no limit), at most `burst` at once, on `clock`.
    pub fn with_clock(rate: u32, burst: u32, clock: C) -> Self {
        let bucket = NonZeroU32::new(rate).map(|per_sec| {
            // Config validation refuses a zero burst with a rate; should one get here
            // anyway, one second's worth is the least surprising bucket.
            let burst = NonZeroU32::new(burst).unwrap_or(per_sec);
            RateLimiter::direct_with_clock(Quota::per_second(per_sec).allow_burst(burst), clock)
        });
        PublishBudget {
            bucket,
            rate,
            burst: burst.max(1),
        }
    }

    /// Takes one token for each of `events` events, in order. Once one finds none, the
    /// rest are refused too (no token is taken for them), so what goes ahead is always
    /// a prefix of the publish.
    pub fn take(&self, events: usize) -> Result<(), OverBudget> {
        let Some(bucket) = &self.bucket else {
            return Ok(());
        };
        for granted in 0..events {
            if let Err(not_until) = bucket.check() {
                let wait = not_until.wait_time_from(bucket.clock().now());
                return Err(OverBudget {
                    granted,
                    error: self.refusal(wait),
                });
            }
        }
        Ok(())
    }

    fn refusal(&self, wait: Duration) -> ProtocolError {
        // Whole milliseconds, rounded up: "retry in 0 ms" would invite a busy loop.
        let millis = wait.as_micros().div_ceil(1000).max(1);
        ProtocolError::new(
            ErrorCode::RateLimited,
            format!(
                "publish rate limit of this connection reached (at most {} events per \
                 second, bursts of {}); retry in {millis} ms",
                self.rate, self.burst
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use governor::clock::FakeRelativeClock;

    fn budget(rate: u32, burst: u32) -> (PublishBudget<FakeRelativeClock>, FakeRelativeClock) {
        let clock = FakeRelativeClock::default();
        (PublishBudget::with_clock(rate, burst, clock.clone()), clock)
    }

    #[test]
    fn zero_rate_is_unlimited() {
        let (b, _) = budget(0, 0);
        for _ in 0..10 {
            assert_eq!(b.take(100_000), Ok(()));
        }
    }

    #[test]
    fn a_burst_is_granted_then_refused_with_the_limit_and_a_wait() {
        let (b, _) = budget(2, 3);
        assert_eq!(b.take(1), Ok(()));
        assert_eq!(b.take(1), Ok(()));
        assert_eq!(b.take(1), Ok(()));
        let over = b.take(1).unwrap_err();
        assert_eq!(over.granted, 0);
        assert_eq!(over.error.code, ErrorCode::RateLimited);
        let msg = &over.error.message;
        assert!(msg.contains("at most 2 events per second"), "{msg}");
        assert!(msg.contains("bursts of 3"), "{msg}");
        assert!(msg.contains("retry in 500 ms"), "{msg}");
    }

    #[test]
    fn a_batch_gets_a_prefix_and_the_rest_takes_no_token() {
        let (b, clock) = budget(1, 4);
        let over = b.take(6).unwrap_err();
        assert_eq!(over.granted, 4);
        // The refused two took nothing: one second refills exactly one token.
        clock.advance(Duration::from_secs(1));
        assert_eq!(b.take(2).unwrap_err().granted, 1);
        assert_eq!(b.take(0), Ok(()));
    }

    #[test]
    fn tokens_refill_at_the_rate_up_to_the_burst() {
        let (b, clock) = budget(10, 5);
        assert_eq!(b.take(5), Ok(()));
        assert!(b.take(1).is_err());
        clock.advance(Duration::from_millis(100));
        assert_eq!(b.take(1), Ok(()));
        assert!(b.take(1).is_err());
        // A long pause refills no more than the burst.
        clock.advance(Duration::from_secs(60));
        assert_eq!(b.take(7).unwrap_err().granted, 5);
    }
}
