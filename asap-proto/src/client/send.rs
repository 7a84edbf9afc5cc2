//! One `asap.send` call with retries: the sans-I/O state machine adapters drive.

use std::time::Instant;

use super::request::PreparedSend;
use super::response::{interpret_send_response, SendError};
use super::TransportError;
use crate::model::Envelope;
use crate::reliability::{JitterSource, RetryDecision, RetryPolicy};

/// What a finished call means for the agent's circuit breaker (spec 15).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerVerdict {
    /// Call `record_success`: the agent answered (including a JSON-RPC error).
    Success,
    /// Call `record_failure`: retries exhausted, 4xx, malformed answer, transport failure.
    Failure,
    /// Record nothing (the breaker itself refused the call).
    None,
}

/// The end of a [`SendCall`].
#[derive(Debug, Clone, PartialEq)]
pub struct SendOutcome {
    /// The response envelope, or the last attempt's error.
    pub result: Result<Envelope, SendError>,
    /// Attempts made (HTTP requests handed to the adapter).
    pub attempts: u32,
}

impl SendOutcome {
    /// What to tell the circuit breaker.
    #[must_use]
    pub fn breaker_verdict(&self) -> BreakerVerdict {
        match &self.result {
            Ok(_) | Err(SendError::Remote { .. }) => BreakerVerdict::Success,
            Err(SendError::CircuitOpen(_)) => BreakerVerdict::None,
            Err(_) => BreakerVerdict::Failure,
        }
    }
}

/// Everything a [`SendCall`] may ask of its driver, in str0m style.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // handed straight to the caller; boxing would only add an allocation
pub enum SendOutput {
    /// Perform this HTTP request, then call [`SendCall::handle_response`] or
    /// [`SendCall::handle_transport_error`].
    Transmit(http::Request<Vec<u8>>),
    /// Sleep until this instant, then call [`SendCall::handle_timeout`].
    Timeout(Instant),
    /// The call is over.
    Done(SendOutcome),
}

#[derive(Debug, Clone, PartialEq)]
enum State {
    Ready,
    InFlight,
    Waiting(Instant),
    Finished(Option<Box<SendOutcome>>),
}

/// One logical `asap.send` with the reference's retry behaviour: the same
/// request bytes (envelope id, `req-<n>`, idempotency key) on every attempt,
/// 5xx/429/connect/timeout retried after [`RetryPolicy`] delays, `Retry-After`
/// honoured.
///
/// Call protocol: loop on [`poll_output(now)`](Self::poll_output):
/// `Transmit` → do the request and report it with
/// [`handle_response`](Self::handle_response) or
/// [`handle_transport_error`](Self::handle_transport_error); `Timeout(t)` →
/// sleep until `t`, then [`handle_timeout(now)`](Self::handle_timeout);
/// `Done` → finished; `None` → a request is in flight, wait for it.
///
/// ```
/// use std::time::{Duration, Instant};
/// use asap_proto::client::{ClientConfig, ClientCore, SendCall, SendOutput, BreakerVerdict};
/// use asap_proto::model::{AgentUrn, Envelope, Payload, TaskRequest, Timestamp, Ulid, UnixTime};
/// use asap_proto::reliability::{CircuitBreaker, RetryPolicy};
///
/// # let env = Envelope::new("01KDXZ0000ENVREQ0000000001".into(),
/// #     Timestamp::from_unix(UnixTime::from_secs(1_767_225_600)),
/// #     AgentUrn::new("urn:asap:agent:client").unwrap(), AgentUrn::new("urn:asap:agent:echo-server").unwrap(),
/// #     Payload::TaskRequest(TaskRequest::new("c", "echo", Default::default())));
/// let mut core = ClientCore::new("http://127.0.0.1:8000", ClientConfig::default()).unwrap();
/// let mut breaker = CircuitBreaker::default();
/// let mut now = Instant::now(); // the adapter's clock
/// breaker.try_acquire(now).unwrap();                        // or fail fast: circuit open
/// let prepared = core.prepare_send(&env, Ulid::new(UnixTime::from_secs(1_767_225_600), 1));
/// let mut call = SendCall::new(prepared, RetryPolicy::default(), 42 /* jitter seed */);
/// let mut fake_statuses = vec![200, 503];                  // the "network"
/// let outcome = loop {
///     match call.poll_output(now) {
///         Some(SendOutput::Transmit(req)) => {
///             let status = fake_statuses.pop().unwrap();       // adapter: perform `req`
///             let body = if status == 200 {
///                 br#"{"jsonrpc":"2.0","result":{"envelope":{"id":"r","asap_version":"0.1","timestamp":"2026-01-01T00:00:00Z","sender":"urn:asap:agent:echo-server","recipient":"urn:asap:agent:client","payload_type":"task.response","payload":{},"correlation_id":"01KDXZ0000ENVREQ0000000001"}},"id":"req-1"}"#.to_vec()
///             } else { Vec::new() };
///             let resp = http::Response::builder().status(status).body(body).unwrap();
///             call.handle_response(resp, now);
///         }
///         Some(SendOutput::Timeout(t)) => { now = t; call.handle_timeout(now); } // adapter sleeps
///         Some(SendOutput::Done(outcome)) => break outcome,
///         None => unreachable!("this driver reports every request before polling again"),
///     }
/// };
/// match outcome.breaker_verdict() {
///     BreakerVerdict::Success => breaker.record_success(now),
///     BreakerVerdict::Failure => breaker.record_failure(now),
///     BreakerVerdict::None => {}
/// }
/// assert_eq!(outcome.attempts, 2);
/// assert_eq!(outcome.result.unwrap().id, "r");
/// ```
#[derive(Debug, Clone)]
pub struct SendCall {
    prepared: PreparedSend,
    policy: RetryPolicy,
    jitter: JitterSource,
    attempts: u32,
    state: State,
}

impl SendCall {
    /// A call whose first attempt is due at once. `jitter_seed` feeds the
    /// retry jitter (pass OS randomness; a fixed value makes runs reproducible).
    #[must_use]
    pub fn new(prepared: PreparedSend, policy: RetryPolicy, jitter_seed: u64) -> Self {
        Self {
            prepared,
            policy,
            jitter: JitterSource::new(jitter_seed),
            attempts: 0,
            state: State::Ready,
        }
    }

    /// The request being sent.
    #[must_use]
    pub fn prepared(&self) -> &PreparedSend {
        &self.prepared
    }

    /// Attempts handed out so far.
    #[must_use]
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// Whether the call has finished (its outcome may already have been taken).
    #[must_use]
    pub fn is_done(&self) -> bool {
        matches!(self.state, State::Finished(_))
    }

    /// The next output, if any (see the type docs).
    #[must_use]
    pub fn poll_output(&mut self, now: Instant) -> Option<SendOutput> {
        if let Some(req) = self.poll_transmit(now) {
            return Some(SendOutput::Transmit(req));
        }
        if let Some(outcome) = self.poll_outcome() {
            return Some(SendOutput::Done(outcome));
        }
        self.poll_timeout().map(SendOutput::Timeout)
    }

    /// The request to perform now, when an attempt is due.
    #[must_use]
    pub fn poll_transmit(&mut self, now: Instant) -> Option<http::Request<Vec<u8>>> {
        self.handle_timeout(now);
        if self.state != State::Ready {
            return None;
        }
        self.state = State::InFlight;
        self.attempts = self.attempts.saturating_add(1);
        Some(self.prepared.http_request())
    }

    /// When the next attempt is due, while waiting between attempts.
    /// Always later than the `now` of the call that scheduled it.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Waiting(t) => Some(t),
            _ => None,
        }
    }

    /// Makes a due attempt ready. Harmless when early or repeated.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let State::Waiting(t) = self.state {
            if now >= t {
                self.state = State::Ready;
            }
        }
    }

    /// The finished call's outcome (given once).
    #[must_use]
    pub fn poll_outcome(&mut self) -> Option<SendOutcome> {
        match &mut self.state {
            State::Finished(o) => o.take().map(|b| *b),
            _ => None,
        }
    }

    /// Reports the HTTP response to the request in flight (ignored otherwise).
    pub fn handle_response(&mut self, response: http::Response<Vec<u8>>, now: Instant) {
        if self.state != State::InFlight {
            return;
        }
        let result = interpret_send_response(&response);
        self.after_attempt(result, now);
    }

    /// Reports that the request in flight failed in the transport (ignored
    /// otherwise); the error, with its text, ends up in the outcome when it
    /// was the last attempt.
    pub fn handle_transport_error(&mut self, error: TransportError, now: Instant) {
        if self.state != State::InFlight {
            return;
        }
        self.after_attempt(Err(SendError::Transport(error)), now);
    }

    fn after_attempt(&mut self, result: Result<Envelope, SendError>, now: Instant) {
        let decision = match &result {
            Ok(_) => RetryDecision::Done,
            Err(e) => {
                let jitter = self.jitter.next_unit();
                self.policy
                    .decide(self.attempts.saturating_sub(1), e.attempt_outcome(), jitter)
            }
        };
        self.state = match decision {
            RetryDecision::RetryAfter(d) => match now.checked_add(d) {
                Some(t) if t > now => State::Waiting(t),
                Some(_) => State::Ready,
                None => self.finish(result),
            },
            RetryDecision::Done | RetryDecision::GiveUp(_) => self.finish(result),
        };
    }

    fn finish(&self, result: Result<Envelope, SendError>) -> State {
        State::Finished(Some(Box::new(SendOutcome {
            result,
            attempts: self.attempts,
        })))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{ClientConfig, ClientCore, TransportErrorKind};
    use crate::model::{AgentUrn, Payload, TaskRequest, Timestamp, Ulid, UnixTime};
    use crate::reliability::Backoff;
    use std::time::Duration;
    fn base() -> Instant {
        crate::test_clock::base()
    }

    fn prepared() -> PreparedSend {
        let env = Envelope::new(
            "01KDXZ0000ENVREQ0000000001".into(),
            Timestamp::from_unix(UnixTime::from_secs(1_767_225_600)),
            AgentUrn::new("urn:asap:agent:client").unwrap(),
            AgentUrn::new("urn:asap:agent:echo-server").unwrap(),
            Payload::TaskRequest(TaskRequest::new("c", "echo", Default::default())),
        );
        let mut core = ClientCore::new("http://127.0.0.1:1", ClientConfig::default()).unwrap();
        core.prepare_send(&env, Ulid::new(UnixTime::from_secs(1), 1))
    }

    fn status(s: u16, headers: &[(&str, &str)]) -> http::Response<Vec<u8>> {
        let mut b = http::Response::builder().status(s);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(Vec::new()).unwrap()
    }

    /// Drives a call against scripted answers; returns (sleeps, bodies sent, outcome).
    fn drive(
        policy: RetryPolicy,
        mut answers: Vec<Result<http::Response<Vec<u8>>, TransportErrorKind>>,
    ) -> (Vec<Duration>, Vec<Vec<u8>>, SendOutcome) {
        answers.reverse();
        let mut call = SendCall::new(prepared(), policy, 7);
        let t0 = base();
        let mut now = t0;
        let mut sleeps = Vec::new();
        let mut sent = Vec::new();
        loop {
            match call.poll_output(now) {
                Some(SendOutput::Transmit(req)) => {
                    assert!(call.poll_output(now).is_none(), "nothing while in flight");
                    sent.push(req.body().clone());
                    match answers.pop().expect("scripted answer") {
                        Ok(r) => call.handle_response(r, now),
                        Err(k) => {
                            call.handle_transport_error(TransportError::new(k, "scripted"), now)
                        }
                    }
                }
                Some(SendOutput::Timeout(t)) => {
                    assert!(t > now);
                    // An early timeout changes nothing.
                    call.handle_timeout(now);
                    assert_eq!(call.poll_timeout(), Some(t));
                    sleeps.push(t - now);
                    now = t;
                    call.handle_timeout(now);
                    assert_eq!(call.poll_timeout(), None);
                }
                Some(SendOutput::Done(o)) => {
                    assert!(call.is_done());
                    assert!(call.poll_output(now).is_none());
                    return (sleeps, sent, o);
                }
                None => panic!("stalled"),
            }
        }
    }

    fn no_jitter() -> RetryPolicy {
        RetryPolicy {
            backoff: Backoff::default().without_jitter(),
            ..RetryPolicy::default()
        }
    }

    #[test]
    fn five_hundreds_exhaust_with_same_bytes() {
        let (sleeps, sent, o) = drive(
            no_jitter(),
            vec![
                Ok(status(500, &[])),
                Ok(status(502, &[])),
                Ok(status(503, &[])),
            ],
        );
        assert_eq!(sleeps, [Duration::from_secs(1), Duration::from_secs(2)]);
        assert_eq!(sent.len(), 3);
        assert!(sent.iter().all(|b| *b == sent[0]));
        assert_eq!(o.attempts, 3);
        assert!(matches!(
            o.result,
            Err(SendError::ServerError { status: 503, .. })
        ));
        assert_eq!(o.breaker_verdict(), BreakerVerdict::Failure);
    }

    #[test]
    fn retry_after_is_honoured() {
        let r = || Ok(status(429, &[("retry-after", "7")]));
        let (sleeps, _, o) = drive(no_jitter(), vec![r(), r(), r()]);
        assert_eq!(sleeps, [Duration::from_secs(7), Duration::from_secs(7)]);
        assert!(matches!(o.result, Err(SendError::RateLimited { .. })));
    }

    #[test]
    fn client_errors_and_dropped_connections_are_not_retried() {
        let (sleeps, _, o) = drive(no_jitter(), vec![Ok(status(401, &[]))]);
        assert!(sleeps.is_empty());
        assert_eq!(o.attempts, 1);
        let (_, _, o) = drive(no_jitter(), vec![Err(TransportErrorKind::Other)]);
        assert_eq!(
            o.result,
            Err(SendError::Transport(TransportError::new(
                TransportErrorKind::Other,
                "scripted"
            )))
        );
        // An oversized answer is not retried, keeps the adapter's text, and is the peer's fault.
        let too_large = TransportErrorKind::ResponseTooLarge { limit: 1024 };
        let (sleeps, _, o) = drive(no_jitter(), vec![Err(too_large)]);
        assert!(sleeps.is_empty());
        assert_eq!(o.breaker_verdict(), BreakerVerdict::Failure);
        let e = o.result.unwrap_err();
        assert_eq!(
            e,
            SendError::Transport(TransportError::new(too_large, "scripted"))
        );
        assert_eq!(e.fault(), crate::error::Fault::Peer);
        assert_eq!(
            e.to_string(),
            "transport failure (response exceeds 1024 bytes: scripted)"
        );
        let (sleeps, _, o) = drive(
            no_jitter(),
            vec![
                Err(TransportErrorKind::Connect),
                Err(TransportErrorKind::Timeout),
                Err(TransportErrorKind::Timeout),
            ],
        );
        assert_eq!(sleeps.len(), 2);
        assert_eq!(
            o.result,
            Err(SendError::Transport(TransportError::new(
                TransportErrorKind::Timeout,
                "scripted"
            )))
        );
    }

    #[test]
    fn jitter_stays_within_ten_percent() {
        let (sleeps, _, _) = drive(
            RetryPolicy::default(),
            vec![
                Ok(status(500, &[])),
                Ok(status(500, &[])),
                Ok(status(500, &[])),
            ],
        );
        assert!(sleeps[0] >= Duration::from_secs(1) && sleeps[0] <= Duration::from_millis(1100));
        assert!(sleeps[1] >= Duration::from_secs(2) && sleeps[1] <= Duration::from_millis(2200));
    }

    #[test]
    fn zero_delay_retries_without_timeout_and_stray_reports_are_ignored() {
        let policy = RetryPolicy {
            backoff: Backoff {
                base: Duration::ZERO,
                ..Backoff::default()
            },
            ..RetryPolicy::default()
        };
        let (sleeps, sent, _) = drive(
            policy,
            vec![
                Ok(status(500, &[])),
                Ok(status(500, &[])),
                Ok(status(500, &[])),
            ],
        );
        assert!(sleeps.is_empty());
        assert_eq!(sent.len(), 3);
        let mut call = SendCall::new(prepared(), RetryPolicy::default(), 0);
        let now = base();
        // Nothing in flight: reports are ignored.
        call.handle_response(status(200, &[]), now);
        call.handle_transport_error(TransportError::new(TransportErrorKind::Connect, "x"), now);
        assert_eq!(call.attempts(), 0);
        assert!(call.poll_transmit(now).is_some());
        assert_eq!(call.prepared().envelope_id(), "01KDXZ0000ENVREQ0000000001");
    }

    #[test]
    fn attempts_and_done_are_reported_as_the_call_goes_and_a_zero_delay_sets_no_deadline() {
        let policy = RetryPolicy {
            backoff: Backoff {
                base: Duration::ZERO,
                ..Backoff::default()
            },
            max_attempts: 2,
            ..RetryPolicy::default()
        };
        let mut call = SendCall::new(prepared(), policy, 0);
        let now = base();
        assert!(!call.is_done());
        assert!(call.poll_transmit(now).is_some());
        assert_eq!(call.attempts(), 1);
        assert!(!call.is_done());
        // A retry due at once: ready now, with no deadline to sleep until.
        call.handle_response(status(500, &[]), now);
        assert_eq!(call.poll_timeout(), None);
        assert!(!call.is_done());
        assert!(call.poll_transmit(now).is_some());
        assert_eq!(call.attempts(), 2);
        call.handle_response(status(500, &[]), now);
        assert!(call.is_done());
        let outcome = call.poll_outcome().unwrap();
        assert_eq!(outcome.attempts, 2);
        assert!(call.poll_outcome().is_none(), "given once");
    }

    proptest::proptest! {
        /// Whatever the peer answers and whenever the driver wakes up: the
        /// deadline is always after the last `now`, attempts never exceed the
        /// policy, every attempt carries the same bytes, and the call ends.
        #[test]
        fn call_invariants(
            max_attempts in 1u32..6,
            seed: u64,
            answers in proptest::collection::vec((0usize..8, 0u64..5000), 1..12),
        ) {
            let policy = RetryPolicy { max_attempts, ..RetryPolicy::default() };
            let mut call = SendCall::new(prepared(), policy, seed);
            let mut now = base();
            let mut first: Option<Vec<u8>> = None;
            let mut answers = answers.into_iter();
            let mut done = false;
            for _ in 0..64 {
                match call.poll_output(now) {
                    Some(SendOutput::Transmit(req)) => {
                        let body = req.body().clone();
                        proptest::prop_assert_eq!(first.get_or_insert_with(|| body.clone()), &body);
                        let (kind, late) = answers.next().unwrap_or((0, 0));
                        now += Duration::from_millis(late);
                        match kind {
                            0 => call.handle_response(status(500, &[]), now),
                            1 => call.handle_response(status(429, &[("retry-after", "2")]), now),
                            2 => call.handle_response(status(429, &[]), now),
                            3 => call.handle_transport_error(TransportError::new(TransportErrorKind::Timeout, "t"), now),
                            4 => call.handle_transport_error(TransportError::new(TransportErrorKind::Connect, "c"), now),
                            5 => call.handle_response(status(404, &[]), now),
                            6 => call.handle_transport_error(TransportError::new(TransportErrorKind::Other, "o"), now),
                            _ => call.handle_response(status(200, &[]), now),
                        }
                        if let Some(t) = call.poll_timeout() {
                            proptest::prop_assert!(t > now);
                        }
                    }
                    Some(SendOutput::Timeout(t)) => {
                        proptest::prop_assert!(t > now);
                        // Wake up late (or exactly on time).
                        now = t + Duration::from_millis(seed % 7);
                        call.handle_timeout(now);
                        proptest::prop_assert!(call.poll_timeout().is_none_or(|d| d > now));
                    }
                    Some(SendOutput::Done(o)) => {
                        proptest::prop_assert!(o.attempts >= 1 && o.attempts <= max_attempts);
                        done = true;
                        break;
                    }
                    None => proptest::prop_assert!(false, "stalled"),
                }
                proptest::prop_assert!(call.attempts() <= max_attempts);
            }
            proptest::prop_assert!(done);
        }
    }
}
