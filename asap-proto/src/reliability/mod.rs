//! Reliability policies: [`Backoff`], [`RetryPolicy`], [`CircuitBreaker`],
//! the moving-window [`SlidingWindowLimiter`] for HTTP rate limiting, and the
//! two halves of reliable WebSocket delivery: the sender's [`AckTracker`]
//! (retransmit until acked, inside the receiver's replay window; see [`ack`])
//! and the receiver's [`DedupWindow`] (an envelope runs once per sender and
//! id; see [`dedup`]).
//!
//! These are small policies, so they are plain methods that take `now`
//! (a [`std::time::Instant`] from the adapter's clock) and return values; none
//! reads a clock or sleeps, and all time arithmetic saturates.
//!
//! A client's driver loop for one `asap.send` combines them (this is what
//! [`crate::client::SendCall`] does internally for the retry part):
//!
//! ```
//! use std::time::{Duration, Instant};
//! use asap_proto::reliability::{AttemptOutcome, CircuitBreaker, RetryDecision, RetryPolicy};
//!
//! // A fake transport: two 503s, then success.
//! let mut answers = vec![AttemptOutcome::Success,
//!                        AttemptOutcome::ServerError { status: 503 },
//!                        AttemptOutcome::ServerError { status: 503 }];
//! let mut now = Instant::now(); // the adapter's clock
//! let mut breaker = CircuitBreaker::default(); // one per peer base URL, kept by the adapter
//! let policy = RetryPolicy::default();
//!
//! breaker.try_acquire(now).expect("circuit closed");
//! let mut attempt = 0;
//! loop {
//!     let outcome = answers.pop().unwrap(); // send the SAME request bytes every attempt
//!     match policy.decide(attempt, outcome, 0.0 /* caller's jitter in [0,1] */) {
//!         RetryDecision::Done => { breaker.record_success(now); break; }
//!         RetryDecision::RetryAfter(d) => { now += d; attempt += 1; } // adapter sleeps d
//!         RetryDecision::GiveUp(_) => { breaker.record_failure(now); break; }
//!     }
//! }
//! assert_eq!(attempt, 2);
//! ```
//!
//! The server side uses the limiter before decoding a `POST /asap` body:
//! `limiter.check(client_ip, now)` → `Allowed`, or `Limited` → HTTP 429 with
//! `Retry-After` (see [`SlidingWindowLimiter`]).

pub mod ack;
mod backoff;
mod breaker;
pub mod dedup;
pub mod rate_limit;
mod retry;

pub use ack::{
    requires_ack, set_requires_ack, AckConfig, AckError, AckEvent, AckGiveUp, AckMatch, AckTracker,
    RetransmitCause,
};
pub use backoff::{Backoff, JitterSource};
pub use breaker::{CircuitBreaker, CircuitBreakerConfig, CircuitOpen, CircuitState};
pub use dedup::{
    Admission, Completed, DedupConfig, DedupError, DedupKey, DedupRecord, DedupStats, DedupTicket,
    DedupWindow, DEFAULT_DEDUP_MAX_AGE,
};
pub use rate_limit::{
    Granularity, RateDecision, RateLimitItem, RateLimitParseError, RateLimitSpec,
    SlidingWindowLimiter, DEFAULT_RATE_LIMIT,
};
pub use retry::{
    parse_http_date, retry_after_delay, AttemptOutcome, GiveUpReason, RetryDecision, RetryPolicy,
};

mod token_bucket;
pub use token_bucket::TokenBucket;
