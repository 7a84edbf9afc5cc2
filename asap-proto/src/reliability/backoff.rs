//! Exponential backoff with caller-supplied jitter.

use std::time::Duration;

/// Exponential backoff: `min(base × 2^attempt, max)` plus up to `jitter_ratio`
/// of that delay, as the reference client computes it (spec 14).
///
/// The core has no random source: the jitter fraction is an argument
/// (`unit` in `[0, 1]`, e.g. `rng.gen::<f64>()` in the adapter, or a value
/// derived from a seed). With `unit = 0` the schedule is the vector's
/// `1, 2, 4, 8, 16, 32, 60, 60` seconds.
///
/// ```
/// use std::time::Duration;
/// use asap_proto::reliability::Backoff;
/// let b = Backoff::default();
/// assert_eq!(b.delay(0, 0.0), Duration::from_secs(1));
/// assert_eq!(b.delay(6, 0.0), Duration::from_secs(60));
/// // Full jitter adds 10 %, applied after the cap (as the reference does).
/// assert_eq!(b.delay(6, 1.0), Duration::from_secs(66));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Backoff {
    /// Delay before the first retry (attempt 0). Default 1 s.
    pub base: Duration,
    /// Largest delay before jitter. Default 60 s.
    pub max: Duration,
    /// Largest jitter as a fraction of the delay. Default 0.1 (10 %).
    pub jitter_ratio: f64,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
            jitter_ratio: 0.1,
        }
    }
}

impl Backoff {
    /// A backoff without jitter.
    #[must_use]
    pub fn without_jitter(mut self) -> Self {
        self.jitter_ratio = 0.0;
        self
    }

    /// The delay before retry number `attempt` (0 = first retry) without jitter:
    /// `min(base × 2^attempt, max)`, saturating.
    #[must_use]
    pub fn base_delay(&self, attempt: u32) -> Duration {
        let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
        let d = if attempt >= 32 {
            self.max
        } else {
            self.base.saturating_mul(factor)
        };
        d.min(self.max)
    }

    /// The delay before retry number `attempt` with jitter fraction `unit`
    /// (clamped to `[0, 1]`; NaN counts as 0): `base_delay × (1 + jitter_ratio × unit)`.
    #[must_use]
    pub fn delay(&self, attempt: u32, unit: f64) -> Duration {
        let d = self.base_delay(attempt);
        let unit = if unit.is_nan() {
            0.0
        } else {
            unit.clamp(0.0, 1.0)
        };
        let ratio = if self.jitter_ratio.is_nan() {
            0.0
        } else {
            self.jitter_ratio.max(0.0)
        };
        let extra = d.as_secs_f64() * ratio * unit;
        d.saturating_add(Duration::try_from_secs_f64(extra).unwrap_or(Duration::ZERO))
    }
}

/// A small deterministic source of jitter fractions (SplitMix64), for state
/// machines that need one jitter value per retry and take a seed from the caller.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JitterSource {
    state: u64,
}

impl JitterSource {
    /// Seeds the sequence (adapters pass OS randomness; simulations a fixed seed).
    #[must_use]
    pub const fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// The next fraction in `[0, 1)`.
    pub fn next_unit(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        // 53 random bits → [0, 1).
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reference_table_without_jitter() {
        let b = Backoff::default();
        let table: Vec<u64> = (0..8).map(|k| b.delay(k, 0.0).as_secs()).collect();
        assert_eq!(table, [1, 2, 4, 8, 16, 32, 60, 60]);
        assert_eq!(b.delay(u32::MAX, 0.0), Duration::from_secs(60));
    }

    #[test]
    fn jitter_is_clamped() {
        let b = Backoff::default();
        assert_eq!(b.delay(0, f64::NAN), Duration::from_secs(1));
        assert_eq!(b.delay(0, -3.0), Duration::from_secs(1));
        assert_eq!(b.delay(0, 7.0), Duration::from_millis(1100));
        assert_eq!(b.without_jitter().delay(3, 1.0), Duration::from_secs(8));
    }

    #[test]
    fn huge_configuration_saturates() {
        let b = Backoff {
            base: Duration::MAX,
            max: Duration::MAX,
            jitter_ratio: 1e300,
        };
        assert_eq!(b.delay(40, 1.0), Duration::MAX);
    }

    #[test]
    fn jitter_source_is_splitmix64() {
        // SplitMix64's published outputs for seeds 0 and 1; a fraction is the top 53 bits / 2^53.
        let top53 = |u: f64| (u * (1u64 << 53) as f64) as u64;
        let mut j = JitterSource::new(0);
        assert_eq!(top53(j.next_unit()), 0xe220_a839_7b1d_cdaf >> 11);
        assert_eq!(top53(j.next_unit()), 0x6e78_9e6a_a1b9_65f4 >> 11);
        assert_eq!(top53(j.next_unit()), 0x06c4_5d18_8009_454f >> 11);
        let mut j = JitterSource::new(1);
        assert_eq!(top53(j.next_unit()), 0x910a_2dec_8902_5cc1 >> 11);
        assert_eq!(
            j.next_unit(),
            6_717_404_888_216_029.0 / 9_007_199_254_740_992.0
        );
        // The same seed gives the same sequence.
        assert_eq!(JitterSource::new(7), JitterSource::new(7));
    }

    #[test]
    fn jitter_scales_with_ratio_and_unit() {
        let b = Backoff {
            base: Duration::from_secs(2),
            max: Duration::from_secs(100),
            jitter_ratio: 0.5,
        };
        assert_eq!(b.delay(0, 0.5), Duration::from_millis(2_500));
        assert_eq!(b.delay(1, 0.25), Duration::from_millis(4_500));
        assert_eq!(b.delay(0, 0.0), Duration::from_secs(2));
        assert_eq!(b.base_delay(31), Duration::from_secs(100));
        assert_eq!(b.base_delay(32), Duration::from_secs(100));
    }

    proptest! {
        #[test]
        fn delay_is_monotone_and_bounded(attempt in 0u32..100, unit in 0.0f64..=1.0) {
            let b = Backoff::default();
            let d = b.delay(attempt, unit);
            prop_assert!(d >= b.base_delay(attempt));
            prop_assert!(d <= b.max.mul_f64(1.1) + Duration::from_nanos(1));
            prop_assert!(b.base_delay(attempt) <= b.base_delay(attempt + 1));
        }

        #[test]
        fn jitter_source_in_unit_interval(seed: u64) {
            let mut j = JitterSource::new(seed);
            for _ in 0..16 {
                let u = j.next_unit();
                prop_assert!((0.0..1.0).contains(&u));
            }
        }
    }
}
