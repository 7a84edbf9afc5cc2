//! Monotonic ULID generation from caller-supplied time and a seeded generator.

use super::ids::Ulid;
use super::timestamp::UnixTime;

/// Generates ULIDs: time from the caller, randomness from a seeded SplitMix64
/// stream (seed it from the OS in adapters, from a fixed value in simulations).
/// Within one millisecond the random part increments, so ids sort in creation order.
///
/// ```
/// use asap_proto::model::{UlidGenerator, UnixTime};
/// let mut ids = UlidGenerator::new(7);
/// let now = UnixTime::from_millis(1_767_225_600_000);
/// let a = ids.next(now);
/// let b = ids.next(now);
/// assert!(a < b);
/// ```
#[derive(Debug, Clone)]
pub struct UlidGenerator {
    state: u64,
    last: Ulid,
}

impl UlidGenerator {
    /// A generator seeded with `seed`.
    #[must_use]
    pub fn new(seed: u64) -> Self {
        Self {
            state: seed,
            last: Ulid::from_u128(0),
        }
    }

    /// The next 64 bits of the generator's stream (for trace and span ids).
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// The next id at wall-clock time `now` (never smaller than the previous one).
    pub fn next(&mut self, now: UnixTime) -> Ulid {
        let random = (u128::from(self.next_u64()) << 64 | u128::from(self.next_u64())) >> 48;
        let candidate = Ulid::new(now, random);
        let id = if candidate.millis() <= self.last.millis() {
            // Same (or earlier) millisecond: keep order by incrementing the last id.
            Ulid::from_u128(self.last.to_u128().saturating_add(1))
        } else {
            candidate
        };
        self.last = id;
        id
    }

    /// The next id as text.
    pub fn next_string(&mut self, now: UnixTime) -> String {
        self.next(now).prefixed("")
    }
}
