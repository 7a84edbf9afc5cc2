//! Bodies under hostile load: a global budget of body bytes in flight
//! ([`BodyBudget`]) and the body timeouts of one request ([`BodyTimer`]).
//!
//! The adapter holds one [`BodyBudget`] for all requests (behind its lock) and
//! one [`BodyTimer`] per request; it reads the body frame by frame:
//!
//! ```
//! use std::time::{Duration, Instant};
//! use asap_proto::server::{BodyBudget, BodyGrant, BodyTimer, Timeouts};
//!
//! let mut budget = BodyBudget::new(1024, 1);
//! let head_at = Instant::now(); // adapters read the clock; the core is handed it
//! let mut timer = BodyTimer::new(&Timeouts::default(), head_at);
//! let mut grant = BodyGrant::default();
//! // Content-Length known: reserve it before reading a byte (503 when it does not fit).
//! budget.handle_reserve(&mut grant, 600).unwrap();
//! let mut body = Vec::new();
//! for (i, frame) in [&b"{}"[..], b" "].iter().enumerate() {
//!     // Wait for the next frame until timer.poll_timeout(); on waking without
//!     // one, timer.handle_timeout(now) says whether to answer 408.
//!     let now = head_at + Duration::from_millis(10 * i as u64);
//!     assert!(timer.handle_timeout(now).is_ok());
//!     timer.handle_progress(now);
//!     body.extend_from_slice(frame); // unknown length: handle_reserve(&mut grant, body.len()) here
//! }
//! assert!(budget.handle_reserve(&mut BodyGrant::default(), 600).is_err()); // 503 for another
//! // ... decode, run the handler, answer; then give the bytes back:
//! budget.handle_release(grant);
//! assert_eq!(budget.in_flight(), 0);
//! ```

use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::body::{BodyError, BodyTimeout};
use super::config::Timeouts;

/// Bytes of request bodies that all requests together may hold at once.
///
/// A request reserves its bytes before it reads them (all of `Content-Length`
/// at once, or chunk by chunk), holds them until its answer is written (the
/// decoded envelope and the answer are proportional to them), then releases
/// them. A reservation that does not fit is refused with
/// [`BodyError::OverBudget`] (503 + `Retry-After`) instead of waiting, so memory
/// stays bounded and a client learns at once that it should come back. One
/// request alone is always admitted up to the budget, so the budget must be
/// at least [`ServerConfig::max_request_size`](super::ServerConfig::max_request_size)
/// for the largest request to pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyBudget {
    budget: usize,
    in_flight: usize,
    retry_after_secs: u64,
}

/// Bytes one request holds in a [`BodyBudget`]; give it back with
/// [`BodyBudget::handle_release`]. Not `Clone`: bytes are released once.
#[derive(Debug, Default, PartialEq, Eq)]
#[must_use = "a grant holds budget until it is released"]
pub struct BodyGrant {
    bytes: usize,
}

impl BodyGrant {
    /// Bytes held.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.bytes
    }
}

impl BodyBudget {
    /// A budget of `budget` bytes; refusals ask to retry after `retry_after_secs`.
    #[must_use]
    pub fn new(budget: usize, retry_after_secs: u64) -> Self {
        Self {
            budget,
            in_flight: 0,
            retry_after_secs,
        }
    }

    /// The budget in bytes.
    #[must_use]
    pub fn budget(&self) -> usize {
        self.budget
    }

    /// Bytes held by all grants.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Grows `grant` to hold `total` bytes (a grant never shrinks here). Refused,
    /// the grant and the budget are unchanged.
    pub fn handle_reserve(&mut self, grant: &mut BodyGrant, total: usize) -> Result<(), BodyError> {
        let more = total.saturating_sub(grant.bytes);
        if more == 0 {
            return Ok(());
        }
        if self.in_flight.saturating_add(more) > self.budget {
            return Err(BodyError::OverBudget {
                in_flight: self.in_flight - grant.bytes,
                wanted: total,
                budget: self.budget,
                retry_after_secs: self.retry_after_secs,
            });
        }
        self.in_flight += more;
        grant.bytes = total;
        Ok(())
    }

    /// Gives back what `grant` held.
    pub fn handle_release(&mut self, grant: BodyGrant) {
        self.in_flight = self.in_flight.saturating_sub(grant.bytes);
    }
}

/// Reservations of bodies of unknown length grow by at least this much, so a
/// chunked body takes the budget's lock once per 64 KiB, not once per frame.
pub const RESERVE_STEP: usize = 64 * 1024;

/// One request's body as it arrives: within the request size limit and its
/// share of the server's [`BodyBudget`] (shared by all requests behind a
/// lock), given back when this is dropped, once the answer is built.
///
/// The reservation rule every adapter follows: all of an announced
/// `Content-Length` before a byte is read, else a [`RESERVE_STEP`] ahead as
/// bytes arrive (exactly what arrived when a step does not fit).
///
/// ```
/// use std::sync::Mutex;
/// use asap_proto::server::{BodyBudget, BodyError, BodyShare};
///
/// let budget = Mutex::new(BodyBudget::new(100_000, 1));
/// let mut share = BodyShare::new(&budget, 1_000);
/// share.handle_received(600).unwrap(); // 600 bytes read so far: a step is reserved
/// assert_eq!(budget.lock().unwrap().in_flight(), 1_001);
/// assert!(matches!(share.handle_received(1_001), Err(BodyError::TooLarge(1_001))));
/// drop(share); // the answer is written: the bytes go back
/// assert_eq!(budget.lock().unwrap().in_flight(), 0);
/// ```
#[derive(Debug)]
pub struct BodyShare<'a> {
    budget: &'a Mutex<BodyBudget>,
    grant: BodyGrant,
    limit: usize,
}

impl<'a> BodyShare<'a> {
    /// A share of nothing yet, for a body of at most `limit` bytes.
    #[must_use]
    pub fn new(budget: &'a Mutex<BodyBudget>, limit: usize) -> Self {
        Self {
            budget,
            grant: BodyGrant::default(),
            limit,
        }
    }

    /// Input: the announced length, before reading: reserves all of it (at
    /// most `limit + 1`, enough to tell that it is too large). An error is
    /// the answer (503 when the budget is held by others).
    pub fn handle_announced(&mut self, length: usize) -> Result<(), BodyError> {
        let want = length.min(self.limit.saturating_add(1));
        lock(self.budget).handle_reserve(&mut self.grant, want)
    }

    /// Input: the body has reached `total` bytes. An error is the answer:
    /// [`BodyError::TooLarge`] past the limit (stop reading),
    /// [`BodyError::OverBudget`] when the bytes cannot be held.
    pub fn handle_received(&mut self, total: usize) -> Result<(), BodyError> {
        if total > self.limit {
            return Err(BodyError::TooLarge(total as u64));
        }
        if total > self.grant.bytes() {
            let ahead = self
                .grant
                .bytes()
                .saturating_add(RESERVE_STEP)
                .min(self.limit.saturating_add(1))
                .max(total);
            let mut budget = lock(self.budget);
            if budget.handle_reserve(&mut self.grant, ahead).is_err() {
                budget.handle_reserve(&mut self.grant, total)?;
            }
        }
        Ok(())
    }

    /// Bytes held.
    #[must_use]
    pub fn bytes(&self) -> usize {
        self.grant.bytes()
    }

    /// The request size limit this body is read within.
    #[must_use]
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl Drop for BodyShare<'_> {
    fn drop(&mut self) {
        let grant = std::mem::take(&mut self.grant);
        if grant.bytes() > 0 {
            lock(self.budget).handle_release(grant);
        }
    }
}

fn lock(m: &Mutex<BodyBudget>) -> std::sync::MutexGuard<'_, BodyBudget> {
    // A budget is consistent between calls: a poisoned lock only means a
    // request's thread panicked elsewhere.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The body timeouts of one request: silence longer than
/// [`Timeouts::body`] and a body still incomplete [`Timeouts::request`] after
/// the head are [`BodyError::TimedOut`] (408, connection closed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BodyTimer {
    silence: Duration,
    whole: Duration,
    head_at: Instant,
    last_progress: Instant,
    expired: bool,
}

impl BodyTimer {
    /// The timer of a request whose head arrived at `head_at`.
    #[must_use]
    pub fn new(timeouts: &Timeouts, head_at: Instant) -> Self {
        Self {
            silence: timeouts.body,
            whole: timeouts.request,
            head_at,
            last_progress: head_at,
            expired: false,
        }
    }

    /// Input: body bytes arrived at `now`.
    pub fn handle_progress(&mut self, now: Instant) {
        if now > self.last_progress {
            self.last_progress = now;
        }
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) if no byte arrives
    /// before; `None` once expired.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        (!self.expired).then(|| self.silent_at().min(self.deadline()))
    }

    /// Input: the reported deadline may have passed. `Err` (once, and then
    /// every time) when a timeout is over; early calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) -> Result<(), BodyError> {
        let timeout = if now >= self.deadline() {
            BodyTimeout::Deadline(self.whole)
        } else if now >= self.silent_at() {
            BodyTimeout::Silent(self.silence)
        } else if self.expired {
            BodyTimeout::Deadline(self.whole)
        } else {
            return Ok(());
        };
        self.expired = true;
        Err(BodyError::TimedOut(timeout))
    }

    fn silent_at(&self) -> Instant {
        checked_add(self.last_progress, self.silence)
    }

    fn deadline(&self) -> Instant {
        checked_add(self.head_at, self.whole)
    }
}

/// `at + d`, saturating far in the future instead of overflowing.
pub(super) fn checked_add(at: Instant, d: Duration) -> Instant {
    at.checked_add(d)
        .or_else(|| at.checked_add(Duration::from_secs(u64::from(u32::MAX))))
        .unwrap_or(at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> Instant {
        // One base for the whole test binary: tests compare instants built from it.
        static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *BASE.get_or_init(crate::test_clock::base)
    }

    #[test]
    fn a_share_reserves_the_announced_length_or_a_step_ahead_and_gives_it_back() {
        let budget = Mutex::new(BodyBudget::new(200_000, 1));
        let in_flight = || budget.lock().unwrap().in_flight();
        // Announced: all of it, capped at limit + 1.
        let mut a = BodyShare::new(&budget, 100_000);
        a.handle_announced(5_000).unwrap();
        assert_eq!((a.bytes(), in_flight()), (5_000, 5_000));
        a.handle_received(5_000).unwrap();
        assert_eq!(in_flight(), 5_000, "covered: no new reservation");
        let mut b = BodyShare::new(&budget, 100_000);
        b.handle_announced(1 << 40).unwrap();
        assert_eq!(b.bytes(), 100_001);
        drop(b);
        assert_eq!(in_flight(), 5_000);
        // Unknown length: a step ahead, then exactly the limit + 1 at most.
        let mut c = BodyShare::new(&budget, 100_000);
        c.handle_received(10).unwrap();
        assert_eq!(c.bytes(), RESERVE_STEP);
        c.handle_received(RESERVE_STEP).unwrap();
        assert_eq!(c.bytes(), RESERVE_STEP);
        c.handle_received(RESERVE_STEP + 1).unwrap();
        assert_eq!(c.bytes(), 100_001);
        c.handle_received(100_000).unwrap();
        assert_eq!(
            c.handle_received(100_001),
            Err(BodyError::TooLarge(100_001))
        );
        drop((a, c));
        assert_eq!(in_flight(), 0);
    }

    #[test]
    fn a_step_that_does_not_fit_falls_back_to_what_arrived_then_to_503() {
        let budget = Mutex::new(BodyBudget::new(RESERVE_STEP + 100, 3));
        let mut other = BodyShare::new(&budget, usize::MAX);
        other.handle_announced(RESERVE_STEP).unwrap();
        let mut s = BodyShare::new(&budget, usize::MAX);
        s.handle_received(60).unwrap();
        assert_eq!(s.bytes(), 60, "a step does not fit: exactly what arrived");
        assert_eq!(
            s.handle_received(101),
            Err(BodyError::OverBudget {
                in_flight: RESERVE_STEP,
                wanted: 101,
                budget: RESERVE_STEP + 100,
                retry_after_secs: 3,
            })
        );
        assert_eq!(s.bytes(), 60, "refused: the share is unchanged");
        assert!(matches!(
            s.handle_announced(RESERVE_STEP),
            Err(BodyError::OverBudget { .. })
        ));
    }

    #[test]
    fn a_reservation_that_does_not_fit_is_503_and_changes_nothing() {
        let mut b = BodyBudget::new(100, 2);
        let mut g1 = BodyGrant::default();
        b.handle_reserve(&mut g1, 60).unwrap();
        let mut g2 = BodyGrant::default();
        b.handle_reserve(&mut g2, 30).unwrap();
        let err = b.handle_reserve(&mut g2, 50).unwrap_err();
        assert_eq!(
            err,
            BodyError::OverBudget {
                in_flight: 60,
                wanted: 50,
                budget: 100,
                retry_after_secs: 2
            }
        );
        assert_eq!((b.in_flight(), g2.bytes()), (90, 30));
        let r = err.response(10);
        assert_eq!(r.status(), 503);
        assert_eq!(r.headers()["retry-after"], "2");
        assert_eq!(r.headers()["connection"], "close");
        b.handle_release(g1);
        b.handle_reserve(&mut g2, 50).unwrap();
        assert_eq!(b.in_flight(), 50);
        b.handle_release(g2);
        assert_eq!(b.in_flight(), 0);
    }

    #[test]
    fn one_request_the_size_of_the_budget_passes() {
        let mut b = BodyBudget::new(100, 1);
        let mut g = BodyGrant::default();
        assert!(b.handle_reserve(&mut g, 100).is_ok());
        assert!(b.handle_reserve(&mut g, 101).is_err());
    }

    #[test]
    fn silence_and_the_whole_request_deadline_are_408() {
        let t = Timeouts {
            body: Duration::from_secs(10),
            request: Duration::from_secs(25),
            ..Timeouts::default()
        };
        let mut timer = BodyTimer::new(&t, t0());
        assert_eq!(timer.poll_timeout(), Some(t0() + Duration::from_secs(10)));
        assert!(timer.handle_timeout(t0() + Duration::from_secs(9)).is_ok());
        timer.handle_progress(t0() + Duration::from_secs(9));
        assert_eq!(timer.poll_timeout(), Some(t0() + Duration::from_secs(19)));
        timer.handle_progress(t0() + Duration::from_secs(18));
        // Dripping keeps silence away, not the deadline.
        assert_eq!(timer.poll_timeout(), Some(t0() + Duration::from_secs(25)));
        let err = timer
            .handle_timeout(t0() + Duration::from_secs(25))
            .unwrap_err();
        assert_eq!(
            err,
            BodyError::TimedOut(BodyTimeout::Deadline(Duration::from_secs(25)))
        );
        let r = err.response(1);
        assert_eq!(r.status(), 408);
        assert_eq!(r.headers()["connection"], "close");
        assert_eq!(
            r.body(),
            br#"{"detail":"Request timed out: the request body was not complete 25 s after the request head (request timeout)"}"#
        );
        assert_eq!(timer.poll_timeout(), None);
        assert!(timer.handle_timeout(t0()).is_err());

        let mut silent = BodyTimer::new(&t, t0());
        assert_eq!(
            silent.handle_timeout(t0() + Duration::from_secs(10)),
            Err(BodyError::TimedOut(BodyTimeout::Silent(
                Duration::from_secs(10)
            )))
        );
    }

    #[test]
    fn huge_timeouts_saturate() {
        let t = Timeouts {
            body: Duration::MAX,
            request: Duration::MAX,
            ..Timeouts::default()
        };
        let mut timer = BodyTimer::new(&t, t0());
        assert!(timer.poll_timeout().unwrap() > t0());
        assert!(timer.handle_timeout(t0() + Duration::from_secs(1)).is_ok());
    }

    proptest! {
        /// Shares hold at least what they received (never more than the
        /// limit + 1), the budget holds exactly what live shares hold, a
        /// total past the limit is refused, and dropping gives all back.
        #[test]
        fn shares_account_for_every_byte(
            ops in proptest::collection::vec((0usize..4, 0usize..70_000), 0..48),
        ) {
            let budget = Mutex::new(BodyBudget::new(150_000, 1));
            let limit = 100_000;
            let mut shares: Vec<(BodyShare<'_>, usize)> =
                (0..4).map(|_| (BodyShare::new(&budget, limit), 0)).collect();
            for (k, add) in ops {
                let (share, received) = &mut shares[k];
                let total = *received + add;
                let before = share.bytes();
                match share.handle_received(total) {
                    Ok(()) => {
                        *received = total;
                        prop_assert!(share.bytes() >= total);
                        prop_assert!(share.bytes() <= limit + 1);
                    }
                    Err(BodyError::TooLarge(n)) => {
                        prop_assert!(total > limit);
                        prop_assert_eq!(n, total as u64);
                        prop_assert_eq!(share.bytes(), before);
                    }
                    Err(BodyError::OverBudget { .. }) => prop_assert_eq!(share.bytes(), before),
                    Err(e) => prop_assert!(false, "unexpected {e:?}"),
                }
                let held: usize = shares.iter().map(|(s, _)| s.bytes()).sum();
                prop_assert_eq!(budget.lock().unwrap().in_flight(), held);
                prop_assert!(held <= 150_000);
            }
            drop(shares);
            prop_assert_eq!(budget.lock().unwrap().in_flight(), 0);
        }
    }

    proptest! {
        /// The budget is never exceeded, refusals change nothing, and releasing
        /// every grant returns to zero.
        #[test]
        fn in_flight_is_the_sum_of_grants_and_never_exceeds_the_budget(
            budget in 0usize..1000,
            ops in proptest::collection::vec((0usize..8, 0usize..600, any::<bool>()), 0..64),
        ) {
            let mut b = BodyBudget::new(budget, 1);
            let mut grants: Vec<BodyGrant> = (0..8).map(|_| BodyGrant::default()).collect();
            for (i, bytes, release) in ops {
                if release {
                    let g = std::mem::take(&mut grants[i]);
                    b.handle_release(g);
                } else {
                    let before = (b.in_flight(), grants[i].bytes());
                    if b.handle_reserve(&mut grants[i], bytes).is_err() {
                        prop_assert_eq!(before, (b.in_flight(), grants[i].bytes()));
                    }
                }
                prop_assert!(b.in_flight() <= budget);
                prop_assert_eq!(b.in_flight(), grants.iter().map(BodyGrant::bytes).sum::<usize>());
            }
            for g in grants {
                b.handle_release(g);
            }
            prop_assert_eq!(b.in_flight(), 0);
        }

        /// After handle_timeout(now) succeeds, the next deadline is later than now.
        #[test]
        fn deadlines_are_after_now(steps in proptest::collection::vec((0u64..5_000, any::<bool>()), 0..40)) {
            let t = Timeouts { body: Duration::from_secs(2), request: Duration::from_secs(30), ..Timeouts::default() };
            let mut timer = BodyTimer::new(&t, t0());
            let mut now = t0();
            for (ms, progress) in steps {
                now += Duration::from_millis(ms);
                if progress {
                    timer.handle_progress(now);
                }
                match timer.handle_timeout(now) {
                    Ok(()) => prop_assert!(timer.poll_timeout().unwrap() > now),
                    Err(_) => prop_assert_eq!(timer.poll_timeout(), None),
                }
            }
        }
    }
}
