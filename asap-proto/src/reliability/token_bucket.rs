//! A token bucket: the WebSocket per-connection message limit (spec 13.6).

use std::time::Instant;

/// Tokens refill continuously at `rate` per second up to `capacity`; the
/// bucket starts full. One message costs one token.
///
/// ```
/// use std::time::{Duration, Instant};
/// use asap_proto::reliability::TokenBucket;
///
/// let t0 = Instant::now();
/// let mut bucket = TokenBucket::new(10.0, 10.0);
/// assert!((0..10).all(|_| bucket.try_take(t0)));
/// assert!(!bucket.try_take(t0)); // the 11th message in the same instant
/// assert!(bucket.try_take(t0 + Duration::from_millis(100))); // one token back
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct TokenBucket {
    rate: f64,
    capacity: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket refilling `rate` tokens per second up to `capacity`.
    #[must_use]
    pub fn new(rate: f64, capacity: f64) -> Self {
        let capacity = if capacity.is_finite() && capacity > 0.0 {
            capacity
        } else {
            0.0
        };
        Self {
            rate: if rate.is_finite() && rate > 0.0 {
                rate
            } else {
                0.0
            },
            capacity,
            tokens: capacity,
            last: None,
        }
    }

    /// Takes one token if there is one at `now`. A `now` earlier than the
    /// latest seen refills nothing (clocks that step back cannot mint tokens).
    pub fn try_take(&mut self, now: Instant) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
        }
        if self.last.is_none_or(|last| now > last) {
            self.last = Some(now);
        }
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }

    /// Tokens available as of the latest `now` seen.
    #[must_use]
    pub fn tokens(&self) -> f64 {
        self.tokens
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::time::Duration;

    #[test]
    fn reference_burst_then_refill() {
        let t0 = crate::test_clock::base();
        let mut b = TokenBucket::new(10.0, 10.0);
        for _ in 0..10 {
            assert!(b.try_take(t0));
        }
        assert!(!b.try_take(t0));
        assert!(!b.try_take(t0 + Duration::from_millis(99)));
        assert!(b.try_take(t0 + Duration::from_millis(200)));
        // A long pause refills to capacity, not beyond.
        let later = t0 + Duration::from_secs(3600);
        assert!((0..10).all(|_| b.try_take(later)));
        assert!(!b.try_take(later));
    }

    #[test]
    fn clock_stepping_back_mints_nothing() {
        let t0 = crate::test_clock::base() + Duration::from_secs(10);
        let mut b = TokenBucket::new(1.0, 1.0);
        assert!(b.try_take(t0));
        assert!(!b.try_take(t0 - Duration::from_secs(5)));
        assert!(!b.try_take(t0 + Duration::from_millis(500)));
        assert!(b.try_take(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn tokens_reports_what_is_left_and_refills_partially() {
        let t0 = crate::test_clock::base();
        let mut b = TokenBucket::new(4.0, 2.0);
        assert_eq!(b.tokens(), 2.0);
        assert!(b.try_take(t0));
        assert_eq!(b.tokens(), 1.0);
        assert!(b.try_take(t0));
        assert_eq!(b.tokens(), 0.0);
        assert!(!b.try_take(t0));
        assert_eq!(b.tokens(), 0.0);
        // 125 ms at 4/s is half a token: not enough, but kept.
        assert!(!b.try_take(t0 + Duration::from_millis(125)));
        assert_eq!(b.tokens(), 0.5);
        assert!(b.try_take(t0 + Duration::from_millis(250)));
        assert_eq!(b.tokens(), 0.0);
        // Capped at capacity, never above.
        assert!(b.try_take(t0 + Duration::from_secs(60)));
        assert_eq!(b.tokens(), 1.0);
    }

    proptest! {
        /// Over any schedule, at most capacity + rate × elapsed messages pass.
        #[test]
        fn never_more_than_capacity_plus_refill(steps in proptest::collection::vec(0u64..300, 1..200)) {
            let t0 = crate::test_clock::base();
            let mut b = TokenBucket::new(10.0, 10.0);
            let mut now = t0;
            let mut passed = 0u64;
            for ms in steps {
                now += Duration::from_millis(ms);
                if b.try_take(now) { passed += 1; }
            }
            let elapsed = now.duration_since(t0).as_secs_f64();
            prop_assert!(passed as f64 <= 10.0 + elapsed * 10.0 + 1e-9);
        }
    }
}
