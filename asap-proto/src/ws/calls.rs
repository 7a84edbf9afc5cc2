//! What a WebSocket client adapter keeps around its [`ClientSession`]:
//! [`ClientCalls`] and its policy, [`WsClientConfig`].

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use super::client::{ClientEvent, ClientOutput, ClientSession, ClientSessionConfig, RequestHandle};
use super::frame::Incoming;
use super::RECONNECT_BACKOFF;
use crate::client::{HttpPolicy, SendError, TransportError, TransportErrorKind};
use crate::model::{Envelope, UnixTime};
use crate::reliability::{CircuitBreaker, CircuitBreakerConfig, JitterSource};

/// Settings of a WebSocket client (`asap_tokio::ws::WsClient`,
/// `asap_blocking::ws::WsClient`). `Default`: the reference client's
/// timeouts, loopback-only `ws://`, reconnect on, the default breaker.
#[derive(Debug, Clone, PartialEq)]
pub struct WsClientConfig {
    /// Request timeout and ack policy.
    pub session: ClientSessionConfig,
    /// Whether plain `ws://` is allowed for hosts other than loopback.
    pub http_policy: HttpPolicy,
    /// Reconnect after a lost connection ([`RECONNECT_BACKOFF`]: 1, 2, 4 … 30 s, jittered).
    pub reconnect: bool,
    /// Circuit breaker fed by answers and ack give-ups (`None`: no breaker).
    pub breaker: Option<CircuitBreakerConfig>,
    /// Pushed envelopes buffered for the user before newer ones are dropped.
    pub push_buffer: usize,
    /// Longest wait for the TCP connect, and again for the (TLS and) WebSocket handshake.
    pub connect_timeout: Duration,
    /// `Authorization` value sent on the upgrade request (and on reconnects):
    /// the server checks the token there and binds every frame to it.
    pub authorization: Option<http::HeaderValue>,
}

impl Default for WsClientConfig {
    fn default() -> Self {
        Self {
            session: ClientSessionConfig::default(),
            http_policy: HttpPolicy::LoopbackOnly,
            reconnect: true,
            breaker: Some(CircuitBreakerConfig::default()),
            push_buffer: 256,
            connect_timeout: Duration::from_secs(10),
            authorization: None,
        }
    }
}

/// Something for a client adapter to do.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // moved once, from the queue to the adapter
pub enum CallOutput<W> {
    /// Send this text frame (when connected).
    Transmit(String),
    /// Hand `result` to the caller waiting on `waiter`.
    Answer {
        /// The handle given to [`ClientCalls::send`].
        waiter: W,
        /// The response envelope, or why there is none.
        result: Result<Envelope, SendError>,
    },
    /// An envelope the server pushed.
    Push(Box<Envelope>),
    /// An ack or an ack give-up, already counted by the breaker: for logs.
    Event(ClientEvent),
}

/// A WebSocket client's calls around its [`ClientSession`]: the waiter
/// (`W`: a oneshot or channel sender) of each `send`, the circuit breaker
/// (answers and acks record successes, ack give-ups failures; an open
/// circuit refuses without sending), sends refused while disconnected, and
/// the reconnect schedule. The adapter owns the socket and the waiters.
///
/// Driver loop (one task or thread per client):
///
/// ```text
/// loop {                                           // connected
///     while let Some(out) = calls.poll_output() {
///         Transmit(text) → write it; Answer { waiter, result } → waiter.send(result);
///         Push(envelope) → to the user; Event(e) → log
///     }
///     wait for: frame → calls.handle_frame(frame, now)
///               send(envelope, waiter) → calls.send(envelope, waiter, now, wall)
///               calls.poll_timeout() → calls.handle_timeout(now)
///               socket lost → calls.handle_disconnect(now); sleep calls.reconnect_delay()
///                             (sends meanwhile are answered at once); reconnect;
///                             calls.handle_connected(now)
/// }
/// ```
///
/// ```
/// use std::time::Instant;
/// use asap_proto::model::{AgentUrn, Envelope, Payload, TaskRequest, Timestamp, UnixTime};
/// use asap_proto::ws::{CallOutput, ClientCalls, Incoming, WsClientConfig};
///
/// let (now, wall) = (Instant::now(), UnixTime::from_secs(1_767_225_600)); // the adapter's clocks
/// let mut calls: ClientCalls<&str> = ClientCalls::new(&WsClientConfig::default(), 7);
/// let env = Envelope::new("01KDXZ0000ENVREQ0000000001".into(), Timestamp::from_unix(wall),
///     AgentUrn::new("urn:asap:agent:client").unwrap(), AgentUrn::new("urn:asap:agent:srv").unwrap(),
///     Payload::TaskRequest(TaskRequest::new("c", "echo", Default::default())));
/// // Not connected: answered at once, nothing sent.
/// calls.send(env.clone(), "first", now, wall);
/// assert!(matches!(calls.poll_output(), Some(CallOutput::Answer { waiter: "first", result: Err(_) })));
/// calls.handle_connected(now);
/// calls.send(env, "second", now, wall);
/// assert!(matches!(calls.poll_output(), Some(CallOutput::Transmit(_))));
/// calls.handle_frame(Incoming::Text(r#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":"ws-req-1"}"#), now);
/// assert!(matches!(calls.poll_output(), Some(CallOutput::Answer { waiter: "second", result: Err(_) })));
/// ```
#[derive(Debug)]
pub struct ClientCalls<W> {
    session: ClientSession,
    breaker: Option<CircuitBreaker>,
    waiting: HashMap<RequestHandle, W>,
    answers: VecDeque<(W, Result<Envelope, SendError>)>,
    jitter: JitterSource,
    attempt: u32,
    last_now: Option<Instant>,
}

fn transport(kind: TransportErrorKind, detail: impl Into<String>) -> SendError {
    SendError::Transport(TransportError::new(kind, detail))
}

impl<W> ClientCalls<W> {
    /// Calls of a disconnected client; `jitter_seed` (the adapter's
    /// randomness) spreads reconnects.
    #[must_use]
    pub fn new(config: &WsClientConfig, jitter_seed: u64) -> Self {
        Self {
            session: ClientSession::new(config.session.clone()),
            breaker: config.breaker.map(CircuitBreaker::new),
            waiting: HashMap::new(),
            answers: VecDeque::new(),
            jitter: JitterSource::new(jitter_seed),
            attempt: 0,
            last_now: None,
        }
    }

    fn see(&mut self, now: Instant) -> Instant {
        let now = self.last_now.map_or(now, |t| t.max(now));
        self.last_now = Some(now);
        now
    }

    /// Sends `envelope`; its answer comes out as [`CallOutput::Answer`] with
    /// `waiter` (at once when disconnected, the circuit is open, or the
    /// session refuses it).
    pub fn send(&mut self, envelope: Envelope, waiter: W, now: Instant, wall: UnixTime) {
        let now = self.see(now);
        if !self.session.is_connected() {
            let err = transport(
                TransportErrorKind::Connect,
                "reconnecting to the agent's /asap/ws; retry shortly",
            );
            return self.answers.push_back((waiter, Err(err)));
        }
        if let Some(b) = &mut self.breaker {
            if let Err(open) = b.try_acquire(now) {
                return self
                    .answers
                    .push_back((waiter, Err(SendError::CircuitOpen(open))));
            }
        }
        match self.session.send(envelope, now, wall) {
            Ok(handle) => {
                self.waiting.insert(handle, waiter);
            }
            Err(e) => {
                let err = transport(TransportErrorKind::Other, e.to_string());
                self.answers.push_back((waiter, Err(err)));
            }
        }
    }

    /// Input: a frame the server sent.
    pub fn handle_frame(&mut self, frame: Incoming<'_>, now: Instant) {
        let now = self.see(now);
        self.session.handle_frame(frame, now);
    }

    /// Input: a deadline from [`poll_timeout`](Self::poll_timeout) passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        let now = self.see(now);
        self.session.handle_timeout(now);
    }

    /// Input: a connection is up (the reconnect schedule starts over).
    pub fn handle_connected(&mut self, now: Instant) {
        let now = self.see(now);
        self.attempt = 0;
        self.session.handle_connected(now);
    }

    /// Input: the connection is lost (see [`ClientSession::handle_disconnect`]).
    pub fn handle_disconnect(&mut self, now: Instant) {
        let now = self.see(now);
        self.session.handle_disconnect(now);
    }

    /// How long to wait before the next reconnect attempt (1, 2, 4 … 30 s,
    /// jittered; each call is the next attempt's).
    pub fn reconnect_delay(&mut self) -> Duration {
        let delay = RECONNECT_BACKOFF.delay(self.attempt, self.jitter.next_unit());
        self.attempt = self.attempt.saturating_add(1);
        delay
    }

    /// Input: the client is closing; every waiting call fails with `why`.
    pub fn handle_close(&mut self, why: &str) {
        let mut waiting: Vec<_> = self.waiting.drain().collect();
        waiting.sort_by_key(|(h, _)| *h);
        for (_, waiter) in waiting {
            let err = transport(TransportErrorKind::Other, why);
            self.answers.push_back((waiter, Err(err)));
        }
    }

    /// The next deadline of the session (request timeouts, ack waits).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.session.poll_timeout()
    }

    /// The next thing to do, after every input.
    pub fn poll_output(&mut self) -> Option<CallOutput<W>> {
        if let Some((waiter, result)) = self.answers.pop_front() {
            return Some(CallOutput::Answer { waiter, result });
        }
        loop {
            let event = match self.session.poll_output()? {
                ClientOutput::Transmit(text) => return Some(CallOutput::Transmit(text)),
                ClientOutput::Event(event) => event,
            };
            let now = self.last_now;
            let breaker = self.breaker.as_mut().zip(now);
            match event {
                ClientEvent::Response { request, result } => {
                    if let (Some((b, now)), Ok(_)) = (breaker, &result) {
                        b.record_success(now);
                    }
                    if let Some(waiter) = self.waiting.remove(&request) {
                        return Some(CallOutput::Answer { waiter, result });
                    }
                }
                ClientEvent::Push(envelope) => return Some(CallOutput::Push(envelope)),
                ClientEvent::Acked { .. } => {
                    if let Some((b, now)) = breaker {
                        b.record_success(now);
                    }
                    return Some(CallOutput::Event(event));
                }
                ClientEvent::GaveUp { reason, .. } => {
                    if let (Some((b, now)), true) = (breaker, reason.is_peer_failure()) {
                        b.record_failure(now);
                    }
                    return Some(CallOutput::Event(event));
                }
            }
        }
    }

    /// The session (pending requests and acks).
    #[must_use]
    pub fn session(&self) -> &ClientSession {
        &self.session
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AgentUrn, Payload, TaskRequest, Timestamp};
    use crate::reliability::AckConfig;

    fn env(id: &str) -> Envelope {
        Envelope::new(
            id.into(),
            Timestamp::from_unix(wall()),
            AgentUrn::new("urn:asap:agent:client").unwrap(),
            AgentUrn::new("urn:asap:agent:srv").unwrap(),
            Payload::TaskRequest(TaskRequest::new("c", "echo", Default::default())),
        )
    }

    fn wall() -> UnixTime {
        UnixTime::from_secs(1_767_225_600)
    }

    fn drain(c: &mut ClientCalls<u32>) -> Vec<CallOutput<u32>> {
        std::iter::from_fn(|| c.poll_output()).collect()
    }

    fn answers(out: &[CallOutput<u32>]) -> Vec<(u32, bool)> {
        out.iter()
            .filter_map(|o| match o {
                CallOutput::Answer { waiter, result } => Some((*waiter, result.is_ok())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn ack_give_ups_open_the_circuit_and_it_refuses_without_sending() {
        let t0 = crate::test_clock::base();
        let config = WsClientConfig {
            session: ClientSessionConfig {
                ack: AckConfig {
                    ack_timeout: Duration::from_secs(1),
                    max_retries: 0,
                    ..AckConfig::default()
                },
                ..ClientSessionConfig::default()
            },
            breaker: Some(CircuitBreakerConfig {
                failure_threshold: 1,
                ..CircuitBreakerConfig::default()
            }),
            ..WsClientConfig::default()
        };
        let mut c = ClientCalls::new(&config, 1);
        c.handle_connected(t0);
        c.send(env("e1"), 1, t0, wall());
        assert!(matches!(drain(&mut c)[..], [CallOutput::Transmit(_)]));
        let at = c.poll_timeout().unwrap();
        c.handle_timeout(at);
        let out = drain(&mut c);
        assert_eq!(answers(&out), [(1, false)]);
        assert!(out
            .iter()
            .any(|o| matches!(o, CallOutput::Event(ClientEvent::GaveUp { .. }))));
        c.send(env("e2"), 2, at, wall());
        let out = drain(&mut c);
        assert!(matches!(
            &out[..],
            [CallOutput::Answer {
                waiter: 2,
                result: Err(SendError::CircuitOpen(_))
            }]
        ));
    }

    #[test]
    fn disconnected_sends_are_answered_at_once_and_close_fails_the_waiting() {
        let t0 = crate::test_clock::base();
        let mut c = ClientCalls::new(&WsClientConfig::default(), 1);
        c.send(env("e1"), 1, t0, wall());
        let out = drain(&mut c);
        assert!(
            matches!(&out[..], [CallOutput::Answer { waiter: 1, result: Err(e) }] if e.to_string().contains("reconnecting"))
        );
        c.handle_connected(t0);
        c.send(env("e2"), 2, t0, wall());
        c.send(env("e3"), 3, t0, wall());
        let _ = drain(&mut c);
        c.handle_close("closed by the user");
        assert_eq!(answers(&drain(&mut c)), [(2, false), (3, false)]);
        assert_eq!(c.poll_output().map(|_| ()), None);
    }

    #[test]
    fn frames_reach_the_session_and_a_disconnect_stops_sending() {
        let t0 = crate::test_clock::base();
        let mut c = ClientCalls::new(&WsClientConfig::default(), 1);
        c.handle_connected(t0);
        c.send(env("e1"), 1, t0, wall());
        assert!(matches!(drain(&mut c)[..], [CallOutput::Transmit(_)]));
        // The server's answer to the first request settles its waiter.
        c.handle_frame(
            Incoming::Text(r#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":"ws-req-1"}"#),
            t0,
        );
        assert_eq!(answers(&drain(&mut c)), [(1, false)]);
        // Once the connection is lost, a send is answered at once, nothing sent.
        c.handle_disconnect(t0);
        let _ = drain(&mut c);
        c.send(env("e2"), 2, t0, wall());
        let out = drain(&mut c);
        assert!(
            matches!(&out[..], [CallOutput::Answer { waiter: 2, result: Err(e) }] if e.to_string().contains("reconnecting")),
            "{out:?}"
        );
    }

    #[test]
    fn reconnect_delays_grow_to_the_cap_and_start_over_when_connected() {
        let t0 = crate::test_clock::base();
        let mut c: ClientCalls<u32> = ClientCalls::new(&WsClientConfig::default(), 9);
        let delays: Vec<_> = (0..8).map(|_| c.reconnect_delay()).collect();
        for (d, base) in delays.iter().zip([1u64, 2, 4, 8, 16, 30, 30, 30]) {
            let base = Duration::from_secs(base);
            assert!(*d >= base && *d <= base.mul_f64(1.1), "{d:?} vs {base:?}");
        }
        c.handle_connected(t0);
        assert!(c.reconnect_delay() <= Duration::from_millis(1100));
    }
}
