//! Circuit breaker: closed → open after consecutive failures → half-open probes.

use std::time::{Duration, Instant};

/// Breaker settings. Defaults are the reference's (spec 15): 5 consecutive
/// failures open the circuit, 60 s later one probe is let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CircuitBreakerConfig {
    /// Consecutive failures that open a closed circuit. Default 5 (`0` acts as `1`).
    pub failure_threshold: u32,
    /// Time after the last failure before an open circuit lets probes through. Default 60 s.
    pub open_timeout: Duration,
    /// Attempts let through while half-open, until one reports back. Default 1
    /// (the reference's single permit; `0` acts as `1`).
    pub half_open_max_probes: u32,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: 5,
            open_timeout: Duration::from_secs(60),
            half_open_max_probes: 1,
        }
    }
}

/// The breaker's state (the reference's `closed` / `open` / `half_open`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CircuitState {
    /// Requests flow.
    Closed,
    /// Requests are refused without I/O.
    Open,
    /// A limited number of probe requests may go through.
    HalfOpen,
}

impl CircuitState {
    /// The reference's spelling: `closed`, `open`, `half_open`.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half_open",
        }
    }
}

/// Refusal from an open (or fully probing half-open) circuit: the caller
/// reports `asap:transport/circuit_open` without touching the network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("circuit open after {consecutive_failures} consecutive failures")]
#[non_exhaustive]
pub struct CircuitOpen {
    /// Failures counted so far.
    pub consecutive_failures: u32,
    /// When probes may next be let through (`None` while half-open probes are out).
    pub retry_at: Option<Instant>,
}

/// A circuit breaker for one peer (the reference shares one per base URL; an
/// adapter keeps a map of them).
///
/// Plain methods, explicit `now`, no clock. Call protocol:
///
/// 1. Before each logical request: [`try_acquire(now)`](Self::try_acquire)
///    (the reference's `can_attempt`; it takes the half-open probe, hence
///    the name). `Err` → fail fast.
/// 2. When the request is finished: [`record_success(now)`](Self::record_success)
///    or [`record_failure(now)`](Self::record_failure); if it was abandoned
///    without a verdict, [`release_probe()`](Self::release_probe).
/// 3. Optionally, to learn when an open circuit becomes probe-able without
///    polling: sleep until [`poll_timeout()`](Self::poll_timeout) and call
///    [`handle_timeout(now)`](Self::handle_timeout).
///
/// ```
/// use std::time::{Duration, Instant};
/// use asap_proto::reliability::{CircuitBreaker, CircuitBreakerConfig, CircuitState};
/// let t0 = Instant::now(); // adapters pass the real clock; tests a fixed base
/// let mut b = CircuitBreaker::new(CircuitBreakerConfig { failure_threshold: 2, ..Default::default() });
/// b.record_failure(t0);
/// b.record_failure(t0);
/// assert_eq!(b.state(), CircuitState::Open);
/// assert!(b.try_acquire(t0).is_err());
/// let later = t0 + Duration::from_secs(60);
/// assert_eq!(b.poll_timeout(), Some(later));
/// assert!(b.try_acquire(later).is_ok());      // the single half-open probe
/// assert!(b.try_acquire(later).is_err());     // everyone else waits
/// b.record_success(later);
/// assert_eq!(b.state(), CircuitState::Closed);
/// ```
#[derive(Debug, Clone)]
pub struct CircuitBreaker {
    config: CircuitBreakerConfig,
    state: CircuitState,
    consecutive_failures: u32,
    last_failure: Option<Instant>,
    probes_granted: u32,
    probes_outstanding: u32,
    last_now: Option<Instant>,
}

impl Default for CircuitBreaker {
    fn default() -> Self {
        Self::new(CircuitBreakerConfig::default())
    }
}

impl CircuitBreaker {
    /// A closed breaker.
    #[must_use]
    pub fn new(config: CircuitBreakerConfig) -> Self {
        Self {
            config,
            state: CircuitState::Closed,
            consecutive_failures: 0,
            last_failure: None,
            probes_granted: 0,
            probes_outstanding: 0,
            last_now: None,
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &CircuitBreakerConfig {
        &self.config
    }

    /// The current state (an open circuit whose timeout has passed still
    /// reads `Open` until [`try_acquire`](Self::try_acquire) or
    /// [`handle_timeout`](Self::handle_timeout) sees the time).
    #[must_use]
    pub fn state(&self) -> CircuitState {
        self.state
    }

    /// Consecutive failures recorded since the last success.
    #[must_use]
    pub fn consecutive_failures(&self) -> u32 {
        self.consecutive_failures
    }

    /// Probes currently let through and not yet reported (half-open only).
    #[must_use]
    pub fn probes_outstanding(&self) -> u32 {
        self.probes_outstanding
    }

    fn see(&mut self, now: Instant) {
        self.last_now = Some(self.last_now.map_or(now, |t| t.max(now)));
    }

    fn reopen_at(&self) -> Option<Instant> {
        self.last_failure
            .map(|t| t.checked_add(self.config.open_timeout).unwrap_or(t))
    }

    fn max_probes(&self) -> u32 {
        self.config.half_open_max_probes.max(1)
    }

    /// Moves an open circuit to half-open when its timeout has passed at `now`.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.see(now);
        if self.state == CircuitState::Open {
            // Time since the last failure, saturating if the caller's clock stepped back.
            let due = match self.last_failure {
                Some(t) => now.saturating_duration_since(t) >= self.config.open_timeout,
                None => true,
            };
            if due {
                self.state = CircuitState::HalfOpen;
                self.probes_granted = 0;
                self.probes_outstanding = 0;
            }
        }
    }

    /// When an open circuit will let a probe through; `None` unless open.
    /// Never at or before the latest `now` this breaker was given.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state != CircuitState::Open {
            return None;
        }
        let at = self.reopen_at()?;
        match self.last_now {
            Some(seen) if at <= seen => {
                Some(seen.checked_add(Duration::from_nanos(1)).unwrap_or(seen))
            }
            _ => Some(at),
        }
    }

    /// Lets a request through or refuses it; while half-open, at most
    /// `half_open_max_probes` are let through until one reports back.
    pub fn try_acquire(&mut self, now: Instant) -> Result<(), CircuitOpen> {
        self.handle_timeout(now);
        match self.state {
            CircuitState::Closed => Ok(()),
            CircuitState::HalfOpen if self.probes_granted < self.max_probes() => {
                self.probes_granted += 1;
                self.probes_outstanding += 1;
                Ok(())
            }
            CircuitState::HalfOpen => Err(CircuitOpen {
                consecutive_failures: self.consecutive_failures,
                retry_at: None,
            }),
            CircuitState::Open => Err(CircuitOpen {
                consecutive_failures: self.consecutive_failures,
                retry_at: self.poll_timeout(),
            }),
        }
    }

    /// A request succeeded: failures reset; a half-open circuit closes.
    /// (As in the reference, a success reported while open leaves it open.)
    pub fn record_success(&mut self, now: Instant) {
        self.see(now);
        self.consecutive_failures = 0;
        if self.state == CircuitState::HalfOpen {
            self.state = CircuitState::Closed;
            self.last_failure = None;
            self.probes_granted = 0;
            self.probes_outstanding = 0;
        }
    }

    /// A request failed: counts it; opens a closed circuit at the threshold and
    /// re-opens a half-open one at once. The open timeout runs from the latest failure.
    pub fn record_failure(&mut self, now: Instant) {
        self.see(now);
        self.consecutive_failures = self.consecutive_failures.saturating_add(1);
        self.last_failure = Some(now);
        let threshold_reached = self.state == CircuitState::Closed
            && self.consecutive_failures >= self.config.failure_threshold.max(1);
        if self.state == CircuitState::HalfOpen || threshold_reached {
            self.state = CircuitState::Open;
            self.probes_granted = 0;
            self.probes_outstanding = 0;
        }
    }

    /// A probe let through while half-open was abandoned without a verdict
    /// (cancelled, local error): its permit becomes available again.
    pub fn release_probe(&mut self) {
        if self.state == CircuitState::HalfOpen && self.probes_outstanding > 0 {
            self.probes_outstanding -= 1;
            self.probes_granted = self.probes_granted.saturating_sub(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An arbitrary base instant; tests then only add explicit durations to it.
    fn base() -> Instant {
        crate::test_clock::base()
    }

    fn t(base: Instant, ms: u64) -> Instant {
        base + Duration::from_millis(ms)
    }

    #[test]
    fn reference_trace() {
        // vectors/client/circuit_breaker_trace.json: threshold 3, timeout 0.2 s.
        let t0 = base();
        let mut b = CircuitBreaker::new(CircuitBreakerConfig {
            failure_threshold: 3,
            open_timeout: Duration::from_millis(200),
            half_open_max_probes: 1,
        });
        assert_eq!(
            (b.state(), b.consecutive_failures()),
            (CircuitState::Closed, 0)
        );
        b.record_failure(t0);
        b.record_failure(t0);
        assert_eq!(
            (b.state(), b.consecutive_failures()),
            (CircuitState::Closed, 2)
        );
        b.record_failure(t0);
        assert_eq!(
            (b.state(), b.consecutive_failures()),
            (CircuitState::Open, 3)
        );
        assert!(b.try_acquire(t0).is_err());
        // One tick before the timeout: still open. Exactly at it: half-open.
        assert!(b.try_acquire(t(t0, 199)).is_err());
        assert!(b.try_acquire(t(t0, 200)).is_ok());
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert!(b.try_acquire(t(t0, 200)).is_err());
        b.record_failure(t(t0, 210));
        assert_eq!(
            (b.state(), b.consecutive_failures()),
            (CircuitState::Open, 4)
        );
        assert!(b.try_acquire(t(t0, 409)).is_err());
        assert!(b.try_acquire(t(t0, 410)).is_ok());
        b.record_success(t(t0, 420));
        assert_eq!(
            (b.state(), b.consecutive_failures()),
            (CircuitState::Closed, 0)
        );
    }

    #[test]
    fn success_while_open_keeps_it_open() {
        let t0 = base();
        let mut b = CircuitBreaker::new(CircuitBreakerConfig {
            failure_threshold: 1,
            ..Default::default()
        });
        b.record_failure(t0);
        b.record_success(t0);
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.consecutive_failures(), 0);
    }

    #[test]
    fn poll_timeout_is_after_now() {
        let t0 = base();
        let mut b = CircuitBreaker::new(CircuitBreakerConfig {
            failure_threshold: 1,
            open_timeout: Duration::ZERO,
            half_open_max_probes: 1,
        });
        b.record_failure(t0);
        let d = b.poll_timeout().unwrap();
        assert!(d > t0);
        b.handle_timeout(d);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(b.poll_timeout(), None);
        // Early or repeated timeouts are harmless.
        let mut c = CircuitBreaker::new(CircuitBreakerConfig {
            failure_threshold: 1,
            ..Default::default()
        });
        c.record_failure(t0);
        c.handle_timeout(t0);
        c.handle_timeout(t0);
        assert_eq!(c.state(), CircuitState::Open);
        assert!(c.poll_timeout().unwrap() > t0);
    }

    #[test]
    fn released_probe_can_be_reused() {
        let t0 = base();
        let mut b = CircuitBreaker::new(CircuitBreakerConfig {
            failure_threshold: 1,
            open_timeout: Duration::from_secs(1),
            half_open_max_probes: 2,
        });
        b.record_failure(t0);
        let t1 = t(t0, 1000);
        assert!(b.try_acquire(t1).is_ok());
        assert!(b.try_acquire(t1).is_ok());
        assert!(b.try_acquire(t1).is_err());
        b.release_probe();
        assert!(b.try_acquire(t1).is_ok());
        assert_eq!(b.probes_outstanding(), 2);
    }

    fn open_breaker(t0: Instant, probes: u32) -> CircuitBreaker {
        let mut b = CircuitBreaker::new(CircuitBreakerConfig {
            failure_threshold: 1,
            open_timeout: Duration::from_secs(60),
            half_open_max_probes: probes,
        });
        b.record_failure(t0);
        b
    }

    #[test]
    fn state_names_are_the_references() {
        assert_eq!(CircuitState::Closed.as_str(), "closed");
        assert_eq!(CircuitState::Open.as_str(), "open");
        assert_eq!(CircuitState::HalfOpen.as_str(), "half_open");
    }

    #[test]
    fn config_is_the_one_given() {
        let config = CircuitBreakerConfig {
            failure_threshold: 7,
            open_timeout: Duration::from_millis(1234),
            half_open_max_probes: 3,
        };
        assert_eq!(CircuitBreaker::new(config).config(), &config);
    }

    #[test]
    fn zero_threshold_and_zero_probes_act_as_one() {
        let t0 = base();
        let mut b = CircuitBreaker::new(CircuitBreakerConfig {
            failure_threshold: 0,
            open_timeout: Duration::from_secs(1),
            half_open_max_probes: 0,
        });
        b.record_failure(t0);
        assert_eq!(b.state(), CircuitState::Open);
        let t1 = t(t0, 1000);
        assert_eq!(b.try_acquire(t1), Ok(()));
        assert_eq!(b.probes_outstanding(), 1);
        assert!(b.try_acquire(t1).is_err());
    }

    #[test]
    fn poll_timeout_is_exactly_the_reopen_time() {
        // Open at t0 with 60 s: the deadline is t0 + 60 s to the nanosecond, not
        // nudged past `now` while `now` is earlier.
        let t0 = base();
        let mut b = open_breaker(t0, 1);
        assert_eq!(b.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        b.handle_timeout(t(t0, 59_999));
        assert_eq!(b.poll_timeout(), Some(t0 + Duration::from_secs(60)));
    }

    #[test]
    fn poll_timeout_moves_past_a_later_now_that_left_it_open() {
        // A success reported while open leaves it open but shows the breaker a
        // `now` past the reopen time: the deadline is 1 ns after that `now`.
        let t0 = base();
        let mut b = open_breaker(t0, 1);
        let late = t(t0, 100_000);
        b.record_success(late);
        assert_eq!(b.state(), CircuitState::Open);
        assert_eq!(b.poll_timeout(), Some(late + Duration::from_nanos(1)));

        // A zero timeout is due at the failure itself, which the breaker has seen.
        let mut z = CircuitBreaker::new(CircuitBreakerConfig {
            failure_threshold: 1,
            open_timeout: Duration::ZERO,
            half_open_max_probes: 1,
        });
        z.record_failure(t0);
        assert_eq!(z.poll_timeout(), Some(t0 + Duration::from_nanos(1)));
    }

    #[test]
    fn refusals_say_why_and_when() {
        let t0 = base();
        let mut b = open_breaker(t0, 1);
        b.record_failure(t(t0, 10)); // the timeout runs from the latest failure
        let reopen = t(t0, 60_010);
        assert_eq!(
            b.try_acquire(t(t0, 60_009)),
            Err(CircuitOpen {
                consecutive_failures: 2,
                retry_at: Some(reopen),
            })
        );
        assert_eq!(b.try_acquire(reopen), Ok(()));
        // Half-open with its probe out: no time to offer, the probe's verdict decides.
        assert_eq!(
            b.try_acquire(reopen),
            Err(CircuitOpen {
                consecutive_failures: 2,
                retry_at: None,
            })
        );
    }

    #[test]
    fn a_failed_probe_reopens_and_a_successful_one_closes() {
        let t0 = base();
        let mut b = open_breaker(t0, 1);
        let t1 = t(t0, 60_000);
        b.handle_timeout(t1);
        assert_eq!(b.state(), CircuitState::HalfOpen);
        assert_eq!(b.try_acquire(t1), Ok(()));
        b.record_failure(t1);
        assert_eq!((b.state(), b.probes_outstanding()), (CircuitState::Open, 0));
        let t2 = t(t1, 60_000);
        assert_eq!(b.try_acquire(t2), Ok(()));
        b.record_success(t2);
        assert_eq!(
            (b.state(), b.probes_outstanding(), b.poll_timeout()),
            (CircuitState::Closed, 0, None)
        );
        // Closed again with the count reset: one failure (threshold 1) reopens.
        assert_eq!(b.try_acquire(t2), Ok(()));
        b.record_failure(t2);
        assert_eq!(b.state(), CircuitState::Open);
    }

    #[test]
    fn a_success_while_closed_resets_the_count_only() {
        let t0 = base();
        let mut b = CircuitBreaker::new(CircuitBreakerConfig {
            failure_threshold: 2,
            ..Default::default()
        });
        b.record_failure(t0);
        b.record_success(t0);
        assert_eq!(
            (b.state(), b.consecutive_failures()),
            (CircuitState::Closed, 0)
        );
        b.record_failure(t0);
        assert_eq!(b.state(), CircuitState::Closed, "the count restarted");
    }

    #[test]
    fn releasing_with_no_probe_out_changes_nothing() {
        let t0 = base();
        let mut b = open_breaker(t0, 1);
        b.release_probe(); // open
        let t1 = t(t0, 60_000);
        b.handle_timeout(t1);
        b.release_probe(); // half-open, nothing out: must not free a permit
        assert_eq!(b.probes_outstanding(), 0);
        assert_eq!(b.try_acquire(t1), Ok(()));
        assert!(b.try_acquire(t1).is_err());
        b.release_probe();
        assert_eq!(b.probes_outstanding(), 0);
        assert_eq!(b.try_acquire(t1), Ok(()));
        assert_eq!(b.probes_outstanding(), 1);
        b.record_success(t1);
        b.release_probe(); // closed
        assert_eq!(
            (b.state(), b.probes_outstanding()),
            (CircuitState::Closed, 0)
        );
    }

    #[test]
    fn each_release_frees_exactly_one_permit() {
        let t0 = base();
        let mut b = open_breaker(t0, 3);
        let t1 = t(t0, 60_000);
        for _ in 0..3 {
            assert_eq!(b.try_acquire(t1), Ok(()));
        }
        assert_eq!(b.probes_outstanding(), 3);
        b.release_probe();
        assert_eq!(b.probes_outstanding(), 2);
        assert_eq!(b.try_acquire(t1), Ok(()));
        assert!(b.try_acquire(t1).is_err());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Acquire,
        Success,
        Failure,
        Release,
        Advance(u64),
        Timeout,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => Just(Op::Acquire),
            2 => Just(Op::Success),
            3 => Just(Op::Failure),
            1 => Just(Op::Release),
            3 => (0u64..3000).prop_map(Op::Advance),
            1 => Just(Op::Timeout),
        ]
    }

    proptest! {
        #[test]
        fn half_open_never_exceeds_probe_limit(
            threshold in 1u32..5,
            probes in 1u32..4,
            ops in proptest::collection::vec(op(), 0..200),
        ) {
            let t0 = base();
            let mut now = t0;
            let mut b = CircuitBreaker::new(CircuitBreakerConfig {
                failure_threshold: threshold,
                open_timeout: Duration::from_millis(1000),
                half_open_max_probes: probes,
            });
            // Probes let through during the current half-open episode.
            let mut let_through = 0u32;
            for op in ops {
                let before = b.state();
                match op {
                    Op::Acquire => {
                        let ok = b.try_acquire(now).is_ok();
                        if before != CircuitState::HalfOpen && b.state() == CircuitState::HalfOpen {
                            let_through = 0;
                        }
                        if ok && b.state() == CircuitState::HalfOpen {
                            let_through += 1;
                        }
                        if before == CircuitState::Open && b.state() == CircuitState::Open {
                            prop_assert!(!ok, "open circuit let a request through");
                        }
                    }
                    Op::Success => b.record_success(now),
                    Op::Failure => b.record_failure(now),
                    Op::Release => {
                        if b.state() == CircuitState::HalfOpen && b.probes_outstanding() > 0 {
                            let_through -= 1;
                        }
                        b.release_probe();
                    }
                    Op::Advance(ms) => now += Duration::from_millis(ms),
                    Op::Timeout => {
                        b.handle_timeout(now);
                        if before != CircuitState::HalfOpen && b.state() == CircuitState::HalfOpen {
                            let_through = 0;
                        }
                        if let Some(d) = b.poll_timeout() {
                            prop_assert!(d > now);
                        }
                    }
                }
                prop_assert!(let_through <= probes);
                prop_assert!(b.probes_outstanding() <= probes);
            }
        }
    }
}
