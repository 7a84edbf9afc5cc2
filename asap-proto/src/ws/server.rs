//! The server role of one `/asap/ws` connection: [`ServerSession`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::frame::{self, CloseFrame, Incoming, TextKind};
use crate::model::Envelope;
use crate::reliability::TokenBucket;

/// Per-connection policy (spec 13.5, 13.6). `Default` is the reference's.
#[derive(Debug, Clone, PartialEq)]
pub struct SessionConfig {
    /// How often the server sends `{"type": "ping"}` (30 s).
    pub heartbeat_interval: Duration,
    /// A connection that sent nothing for this long, with no request of its
    /// own in flight, is closed (90 s; the reference only marks it).
    pub idle_timeout: Duration,
    /// Messages per second per connection (10; `None` disables the limit).
    pub message_rate: Option<f64>,
    /// Burst, the bucket's capacity (10).
    pub message_burst: f64,
    /// Requests of one connection running at once; at this many the adapter
    /// stops reading frames until one is answered (backpressure).
    pub max_in_flight: usize,
    /// Frames waiting to be written before [`ServerSession::push`] refuses more.
    pub max_queued: usize,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            heartbeat_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(90),
            message_rate: Some(10.0),
            message_burst: 10.0,
            max_in_flight: 16,
            max_queued: 1024,
        }
    }
}

/// What to do with a received frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub enum FrameVerdict {
    /// A JSON-RPC message: run it through an [`Exchange`](crate::server::Exchange)
    /// (head from [`RequestHead::websocket`](crate::server::RequestHead::websocket),
    /// the frame's text as the body) and feed its `Step::Notify` frames to
    /// [`ServerSession::handle_notify`] and its reply to [`ServerSession::handle_reply`].
    Exchange,
    /// Nothing more to do: the session answered it, or it needs no answer.
    Handled,
}

/// Something for the adapter to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Send this text frame.
    Transmit(String),
    /// Send this close frame; the session is over (drop the connection after).
    Close(CloseFrame),
}

/// Why [`ServerSession::push`] refused an envelope.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PushError {
    /// The connection is closed or closing.
    #[error("the WebSocket connection is closed: deliver the envelope another way (webhook)")]
    Closed,
    /// Too many frames wait to be written: the peer does not read fast enough.
    #[error(
        "{0} frames already wait for a slow peer; retry later or deliver the envelope another way"
    )]
    Backlogged(usize),
    /// The request has no push channel (HTTP, and no webhook subscriber).
    #[error("no push channel for this request: it came over HTTP and no webhook subscriber is configured")]
    NoChannel,
}

/// One server-side `/asap/ws` connection, sans I/O: frame triage, the
/// per-connection rate limit, heartbeat and idle close, request accounting,
/// server push and shutdown. The JSON-RPC work itself is the same
/// [`Exchange`](crate::server::Exchange) as `POST /asap`, so answers are
/// byte-identical.
///
/// Call protocol: feed every received frame to [`handle_frame`](Self::handle_frame);
/// for [`FrameVerdict::Exchange`] drive an exchange and report its notices
/// and reply; drain [`poll_output`](Self::poll_output) after every input;
/// sleep until [`poll_timeout`](Self::poll_timeout) and call
/// [`handle_timeout`](Self::handle_timeout); read frames only while
/// [`wants_frames`](Self::wants_frames); stop after [`Output::Close`].
///
/// ```
/// use std::time::{Duration, Instant};
/// use asap_proto::ws::{frame::PING_TEXT, FrameVerdict, Incoming, Output, ServerSession, SessionConfig};
///
/// let t0 = Instant::now(); // the adapter's clock
/// let mut session = ServerSession::new(SessionConfig::default(), t0);
/// let text = r#"{"jsonrpc":"2.0","method":"asap.send","params":{},"id":"ws-1"}"#;
/// assert_eq!(session.handle_frame(Incoming::Text(text), t0), FrameVerdict::Exchange);
/// // ... the adapter runs the exchange; its reply body goes back to the session:
/// session.handle_reply(br#"{"jsonrpc":"2.0","error":{"code":-32602},"id":"ws-1"}"#.to_vec(), t0);
/// assert!(matches!(session.poll_output(), Some(Output::Transmit(_))));
/// // 30 s later the heartbeat is due.
/// let due = session.poll_timeout().unwrap();
/// assert_eq!(due, t0 + Duration::from_secs(30));
/// session.handle_timeout(due);
/// assert_eq!(session.poll_output(), Some(Output::Transmit(PING_TEXT.to_owned())));
/// ```
#[derive(Debug)]
pub struct ServerSession {
    config: SessionConfig,
    bucket: Option<TokenBucket>,
    last_activity: Instant,
    next_ping: Instant,
    last_now: Instant,
    in_flight: usize,
    out: VecDeque<Output>,
    closed: bool,
    /// When the upgrade request's access token expires: the connection ends then.
    token_expiry: Option<Instant>,
}

impl ServerSession {
    /// A session for a connection accepted at `now`.
    #[must_use]
    pub fn new(config: SessionConfig, now: Instant) -> Self {
        let bucket = config
            .message_rate
            .filter(|r| *r > 0.0)
            .map(|rate| TokenBucket::new(rate, config.message_burst.max(1.0)));
        Self {
            next_ping: now + config.heartbeat_interval,
            config,
            bucket,
            last_activity: now,
            last_now: now,
            in_flight: 0,
            out: VecDeque::new(),
            closed: false,
            token_expiry: None,
        }
    }

    /// Input: the access token of the upgrade request expires at `expires_at`
    /// (wall clock, read against `now`); the connection closes then with
    /// 1008 "Access token expired" (every frame rides on that token).
    pub fn set_token_expiry(
        &mut self,
        expires_at: crate::model::UnixTime,
        now: crate::server::Now,
    ) {
        let left = expires_at.as_micros().saturating_sub(now.wall.as_micros());
        let left = Duration::from_micros(u64::try_from(left).unwrap_or(0));
        self.token_expiry = Some(now.monotonic.checked_add(left).unwrap_or(now.monotonic));
        self.see(now.monotonic);
    }

    fn see(&mut self, now: Instant) {
        if now > self.last_now {
            self.last_now = now;
        }
    }

    fn close(&mut self, code: u16, reason: &str) {
        if !self.closed {
            self.closed = true;
            self.out
                .push_back(Output::Close(CloseFrame::new(code, reason)));
        }
    }

    fn take_token(&mut self, now: Instant) -> bool {
        self.bucket.as_mut().is_none_or(|b| b.try_take(now))
    }

    /// Input: a frame the peer sent.
    pub fn handle_frame(&mut self, frame: Incoming<'_>, now: Instant) -> FrameVerdict {
        self.see(now);
        if self.closed {
            return FrameVerdict::Handled;
        }
        self.last_activity = self.last_activity.max(now);
        match frame {
            Incoming::Control => FrameVerdict::Handled,
            Incoming::Close => {
                // The library answers the close handshake; nothing more to send.
                self.closed = true;
                FrameVerdict::Handled
            }
            Incoming::Violation(v) => {
                // Nothing more can be read: say why, then close (RFC 6455 7.1.7).
                let c = v.close_frame();
                self.close(c.code, &c.reason);
                FrameVerdict::Handled
            }
            Incoming::Binary(_) => {
                if self.take_token(now) {
                    self.out
                        .push_back(Output::Transmit(frame::binary_refused_text()));
                } else {
                    self.rate_limited(None);
                }
                FrameVerdict::Handled
            }
            Incoming::Text(text) => match frame::classify(text) {
                TextKind::Pong => FrameVerdict::Handled,
                // Invalid JSON is free (spec 13.6) and answered -32700 by the exchange.
                TextKind::InvalidJson => self.admit(),
                TextKind::Ping | TextKind::Json { .. } if self.take_token(now) => self.admit(),
                TextKind::Json { id, .. } => {
                    self.rate_limited(id.as_ref());
                    FrameVerdict::Handled
                }
                TextKind::Ping => {
                    self.rate_limited(None);
                    FrameVerdict::Handled
                }
            },
        }
    }

    fn admit(&mut self) -> FrameVerdict {
        self.in_flight += 1;
        FrameVerdict::Exchange
    }

    fn rate_limited(&mut self, id: Option<&crate::jsonrpc::RequestId>) {
        self.out
            .push_back(Output::Transmit(frame::rate_limited_text(id)));
        self.close(CloseFrame::POLICY_VIOLATION, "");
    }

    /// Input: a `Step::Notify` frame (a MessageAck) of one of this
    /// connection's exchanges; it is sent before that exchange's reply.
    pub fn handle_notify(&mut self, text: String) {
        if !self.closed {
            self.out.push_back(Output::Transmit(text));
        }
    }

    /// Input: the reply body of one of this connection's exchanges, answered at `now`.
    pub fn handle_reply(&mut self, body: Vec<u8>, now: Instant) {
        self.see(now);
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            // A peer waiting on a long handler is not idle.
            self.last_activity = self.last_activity.max(now);
        }
        if self.closed || body.is_empty() {
            return;
        }
        let text = String::from_utf8(body)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        self.out.push_back(Output::Transmit(text));
    }

    /// Server push: sends `envelope` to the peer now (a `task.update` while a
    /// skill runs, a late `task.response`), as an `asap.send` notification.
    pub fn push(&mut self, envelope: &Envelope) -> Result<(), PushError> {
        if self.closed {
            return Err(PushError::Closed);
        }
        if self.out.len() >= self.config.max_queued {
            return Err(PushError::Backlogged(self.out.len()));
        }
        self.out
            .push_back(Output::Transmit(frame::push_text(envelope)));
        Ok(())
    }

    /// Input: the server is shutting down (close 1001 "Server shutting down").
    pub fn handle_shutdown(&mut self) {
        self.close(CloseFrame::GOING_AWAY, "Server shutting down");
    }

    /// Input: a deadline from [`poll_timeout`](Self::poll_timeout) passed
    /// (harmless when early or repeated).
    pub fn handle_timeout(&mut self, now: Instant) {
        self.see(now);
        if self.closed {
            return;
        }
        if self.token_expiry.is_some_and(|at| now >= at) {
            self.close(
                CloseFrame::POLICY_VIOLATION,
                "Access token expired: reconnect with a fresh token",
            );
            return;
        }
        if self.in_flight == 0 && now >= self.last_activity + self.config.idle_timeout {
            let secs = self.config.idle_timeout.as_secs();
            self.close(
                CloseFrame::GOING_AWAY,
                &format!("No frame received for {secs} s: heartbeat timeout"),
            );
            return;
        }
        if now >= self.next_ping {
            self.out
                .push_back(Output::Transmit(frame::PING_TEXT.to_owned()));
            let interval = self.config.heartbeat_interval.max(Duration::from_millis(1));
            while self.next_ping <= now {
                self.next_ping += interval;
            }
        }
    }

    /// The next deadline (heartbeat or idle close), never at or before the
    /// latest `now` seen; `None` once closed.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.closed {
            return None;
        }
        let idle = (self.in_flight == 0).then(|| self.last_activity + self.config.idle_timeout);
        let at = idle.map_or(self.next_ping, |i| i.min(self.next_ping));
        let at = self.token_expiry.map_or(at, |e| e.min(at));
        Some(if at <= self.last_now {
            self.last_now + Duration::from_nanos(1)
        } else {
            at
        })
    }

    /// The next frame to write, then the close frame, then `None`.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.out.pop_front()
    }

    /// Whether to read another frame now (open, and below `max_in_flight`).
    #[must_use]
    pub fn wants_frames(&self) -> bool {
        !self.closed && self.in_flight < self.config.max_in_flight
    }

    /// Whether the session has ended (close sent or received).
    #[must_use]
    pub fn is_closed(&self) -> bool {
        self.closed
    }

    /// Requests of this connection still running.
    #[must_use]
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn t0() -> Instant {
        crate::test_clock::base()
    }

    fn drain(s: &mut ServerSession) -> Vec<Output> {
        std::iter::from_fn(|| s.poll_output()).collect()
    }

    const REQ: &str = r#"{"jsonrpc":"2.0","method":"asap.unknown","params":{},"id":"f-0"}"#;

    #[test]
    fn a_notify_is_sent_as_is_until_the_close() {
        let mut s = ServerSession::new(SessionConfig::default(), t0());
        s.handle_notify("ack-1".into());
        assert_eq!(drain(&mut s), vec![Output::Transmit("ack-1".into())]);
        s.handle_shutdown();
        let _ = drain(&mut s);
        s.handle_notify("ack-2".into());
        assert_eq!(s.poll_output(), None);
    }

    #[test]
    fn an_unreadable_frame_closes_with_the_code_its_violation_calls_for() {
        for (violation, code) in [
            (super::super::Violation::Protocol, 1002),
            (super::super::Violation::InvalidUtf8, 1007),
            (super::super::Violation::TooLarge, 1009),
        ] {
            let mut s = ServerSession::new(SessionConfig::default(), t0());
            assert_eq!(
                s.handle_frame(Incoming::Violation(violation), t0()),
                FrameVerdict::Handled
            );
            let Some(Output::Close(c)) = s.poll_output() else {
                panic!("close frame expected for {violation:?}")
            };
            assert_eq!(c.code, code);
            assert!(!c.reason.is_empty());
            assert!(s.is_closed());
            assert!(!s.wants_frames());
            // Closed once: nothing follows, a second violation adds nothing.
            let _ = s.handle_frame(Incoming::Violation(violation), t0());
            assert_eq!(s.poll_output(), None);
            assert_eq!(s.poll_timeout(), None);
        }
    }

    #[test]
    fn an_expired_token_ends_the_connection_with_1008() {
        let base = t0();
        let mut s = ServerSession::new(SessionConfig::default(), base);
        let wall = crate::model::UnixTime::from_secs(1_800_000_000);
        let now = crate::server::Now {
            monotonic: base,
            wall,
        };
        s.set_token_expiry(wall.saturating_add(Duration::from_secs(5)), now);
        let due = s.poll_timeout().unwrap();
        assert_eq!(due, base + Duration::from_secs(5));
        s.handle_timeout(due - Duration::from_millis(1));
        assert!(!s.is_closed());
        assert!(s.poll_timeout().unwrap() > due - Duration::from_millis(1));
        s.handle_timeout(due);
        assert!(s.is_closed());
        let Some(Output::Close(c)) = s.poll_output() else {
            panic!("close frame expected")
        };
        assert_eq!(c.code, CloseFrame::POLICY_VIOLATION);
        assert!(c.reason.contains("token expired"), "{}", c.reason);
        // An already expired token closes at the first timeout.
        let mut s = ServerSession::new(SessionConfig::default(), base);
        s.set_token_expiry(wall.saturating_sub(Duration::from_secs(1)), now);
        let due = s.poll_timeout().unwrap();
        assert!(due > base);
        s.handle_timeout(due);
        assert!(s.is_closed());
    }

    #[test]
    fn eleventh_frame_in_a_burst_is_refused_and_closes_1008() {
        let mut s = ServerSession::new(SessionConfig::default(), t0());
        for i in 0..10 {
            assert_eq!(
                s.handle_frame(Incoming::Text(REQ), t0()),
                FrameVerdict::Exchange,
                "{i}"
            );
        }
        let last = r#"{"jsonrpc":"2.0","method":"asap.unknown","params":{},"id":"f-10"}"#;
        assert_eq!(
            s.handle_frame(Incoming::Text(last), t0()),
            FrameVerdict::Handled
        );
        let out = drain(&mut s);
        assert_eq!(
            out,
            [
                Output::Transmit(frame::rate_limited_text(Some(
                    &crate::jsonrpc::RequestId::Str("f-10".into())
                ))),
                Output::Close(CloseFrame::new(1008, "")),
            ]
        );
        assert!(s.is_closed());
        // Replies of requests already running are dropped, nothing after the close.
        s.handle_reply(b"{}".to_vec(), t0());
        assert_eq!(s.poll_output(), None);
        assert_eq!(s.poll_timeout(), None);
    }

    #[test]
    fn pongs_and_invalid_json_cost_no_token() {
        let mut s = ServerSession::new(SessionConfig::default(), t0());
        for _ in 0..50 {
            assert_eq!(
                s.handle_frame(Incoming::Text(frame::PONG_TEXT), t0()),
                FrameVerdict::Handled
            );
            assert_eq!(
                s.handle_frame(Incoming::Text("{oops"), t0()),
                FrameVerdict::Exchange
            );
            // Invalid even though a member has the wrong type before the syntax error.
            assert_eq!(
                s.handle_frame(Incoming::Text(r#"{"id": [1], oops"#), t0()),
                FrameVerdict::Exchange
            );
        }
        assert!(!s.is_closed());
        assert_eq!(
            s.handle_frame(Incoming::Text(REQ), t0()),
            FrameVerdict::Exchange
        );
    }

    #[test]
    fn binary_frames_are_answered_and_the_connection_stays() {
        let mut s = ServerSession::new(SessionConfig::default(), t0());
        assert_eq!(
            s.handle_frame(Incoming::Binary(b"\x00\x01"), t0()),
            FrameVerdict::Handled
        );
        let out = drain(&mut s);
        assert_eq!(out.len(), 1);
        let Output::Transmit(text) = &out[0] else {
            panic!("{out:?}")
        };
        let v: serde_json::Value = serde_json::from_str(text).unwrap();
        assert_eq!(v["error"]["code"], -32600);
        assert!(v["error"]["data"]["error"]
            .as_str()
            .unwrap()
            .contains("text frame"));
        assert!(!s.is_closed());
    }

    #[test]
    fn heartbeat_every_30_s_and_a_silent_peer_closed_after_90_s() {
        let start = t0();
        let mut s = ServerSession::new(SessionConfig::default(), start);
        let mut pings = 0;
        let mut now = start;
        let mut deadlines = 0;
        while let Some(at) = s.poll_timeout() {
            // Bounded, so a session that never closes fails here instead of hanging.
            deadlines += 1;
            assert!(deadlines <= 10, "still open after {deadlines} deadlines");
            assert!(at > now);
            now = at;
            s.handle_timeout(now);
            for o in drain(&mut s) {
                match o {
                    Output::Transmit(t) => {
                        assert_eq!(t, frame::PING_TEXT);
                        pings += 1;
                    }
                    Output::Close(c) => {
                        assert_eq!(c.code, 1001);
                        assert!(c.reason.contains("90 s"), "{}", c.reason);
                    }
                }
            }
        }
        assert_eq!(now, start + Duration::from_secs(90));
        assert_eq!(pings, 2); // at 30 s and 60 s; at 90 s the close wins
    }

    #[test]
    fn the_idle_deadline_counts_from_the_last_frame_and_only_while_nothing_runs() {
        let base = t0();
        let secs = |n: u64| base + Duration::from_secs(n);
        // Idle: the last frame at 29 s puts the close at 119 s, before the 120 s ping.
        let mut s = ServerSession::new(SessionConfig::default(), base);
        let _ = s.handle_frame(Incoming::Text(frame::PONG_TEXT), secs(29));
        for n in [30, 60, 90] {
            assert_eq!(s.poll_timeout(), Some(secs(n)));
            s.handle_timeout(secs(n));
        }
        assert_eq!(s.poll_timeout(), Some(secs(119)));
        // A request in flight: no idle deadline, the next ping is what comes.
        let mut s = ServerSession::new(SessionConfig::default(), base);
        let _ = s.handle_frame(Incoming::Text(REQ), secs(29));
        assert_eq!(s.in_flight(), 1);
        for n in [30, 60, 90] {
            s.handle_timeout(secs(n));
        }
        assert_eq!(s.poll_timeout(), Some(secs(120)));
    }

    #[test]
    fn pongs_keep_the_connection_open() {
        let mut s = ServerSession::new(SessionConfig::default(), t0());
        for k in 1..=10u64 {
            let now = t0() + Duration::from_secs(30 * k);
            s.handle_timeout(now);
            let _ = s.handle_frame(Incoming::Text(frame::PONG_TEXT), now);
        }
        assert!(!s.is_closed());
    }

    #[test]
    fn a_long_running_request_is_not_idleness() {
        let mut s = ServerSession::new(SessionConfig::default(), t0());
        let _ = s.handle_frame(Incoming::Text(REQ), t0());
        s.handle_timeout(t0() + Duration::from_secs(200));
        assert!(!s.is_closed());
        s.handle_reply(b"{}".to_vec(), t0() + Duration::from_secs(200));
        s.handle_timeout(t0() + Duration::from_secs(250));
        assert!(!s.is_closed());
        s.handle_timeout(t0() + Duration::from_secs(290));
        assert!(s.is_closed());
    }

    #[test]
    fn shutdown_closes_1001_with_the_reference_reason() {
        let mut s = ServerSession::new(SessionConfig::default(), t0());
        s.handle_shutdown();
        assert_eq!(
            drain(&mut s),
            [Output::Close(CloseFrame::new(1001, "Server shutting down"))]
        );
        assert_eq!(s.push(&sample()), Err(PushError::Closed));
    }

    #[test]
    fn push_is_bounded() {
        let mut s = ServerSession::new(
            SessionConfig {
                max_queued: 2,
                ..Default::default()
            },
            t0(),
        );
        s.push(&sample()).unwrap();
        s.push(&sample()).unwrap();
        assert_eq!(s.push(&sample()), Err(PushError::Backlogged(2)));
        let Some(Output::Transmit(t)) = s.poll_output() else {
            panic!()
        };
        let v: serde_json::Value = serde_json::from_str(&t).unwrap();
        assert_eq!(v["method"], "asap.send");
        assert!(v.get("id").is_none());
        assert_eq!(v["params"]["envelope"]["payload_type"], "task.update");
    }

    #[test]
    fn backpressure_at_max_in_flight() {
        let mut s = ServerSession::new(
            SessionConfig {
                max_in_flight: 2,
                message_rate: None,
                ..Default::default()
            },
            t0(),
        );
        let _ = s.handle_frame(Incoming::Text(REQ), t0());
        assert!(s.wants_frames());
        let _ = s.handle_frame(Incoming::Text(REQ), t0());
        assert!(!s.wants_frames());
        s.handle_reply(b"{}".to_vec(), t0());
        assert!(s.wants_frames());
    }

    fn sample() -> Envelope {
        use crate::model::{AgentUrn, Payload, TaskUpdate, Timestamp, UnixTime};
        let update: TaskUpdate = serde_json::from_value(serde_json::json!({
            "task_id": "task_1", "update_type": "progress", "status": "working"
        }))
        .unwrap();
        Envelope::new(
            "01KDXZ0000PUSH000000000001".into(),
            Timestamp::from_unix(UnixTime::from_secs(1_767_225_600)),
            AgentUrn::new("urn:asap:agent:s").unwrap(),
            AgentUrn::new("urn:asap:agent:c").unwrap(),
            Payload::TaskUpdate(update),
        )
    }

    #[derive(Debug, Clone)]
    enum Op {
        Text(u8),
        Binary,
        Pong,
        Reply,
        Advance(u32),
        Timeout,
        Shutdown,
        /// The token expires this many ms from now (negative: already expired).
        Expiry(i32),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            any::<u8>().prop_map(Op::Text),
            Just(Op::Binary),
            Just(Op::Pong),
            Just(Op::Reply),
            (0u32..120_000).prop_map(Op::Advance),
            Just(Op::Timeout),
            Just(Op::Shutdown),
            (-5_000i32..120_000).prop_map(Op::Expiry),
        ]
    }

    proptest! {
        /// Deadlines are after `now`; nothing follows a close; in-flight
        /// never exceeds what was admitted; the queue stays bounded.
        #[test]
        fn session_invariants(ops in proptest::collection::vec(op(), 1..200)) {
            let mut now = t0();
            let mut s = ServerSession::new(SessionConfig::default(), now);
            let mut admitted = 0usize;
            let mut replied = 0usize;
            let mut closed_seen = false;
            let mut seen = now;
            for op in ops {
                match op {
                    Op::Text(b) => {
                        let text = if b % 3 == 0 { "{bad".to_owned() } else { REQ.to_owned() };
                        seen = now;
                        if s.handle_frame(Incoming::Text(&text), now) == FrameVerdict::Exchange {
                            admitted += 1;
                        }
                    }
                    Op::Binary => { seen = now; let _ = s.handle_frame(Incoming::Binary(b"x"), now); }
                    Op::Pong => { seen = now; let _ = s.handle_frame(Incoming::Text(frame::PONG_TEXT), now); }
                    Op::Reply => if replied < admitted {
                        replied += 1;
                        seen = now;
                        s.handle_reply(b"{}".to_vec(), now);
                    },
                    Op::Advance(ms) => now += Duration::from_millis(u64::from(ms)),
                    Op::Timeout => { seen = now; s.handle_timeout(now) }
                    Op::Shutdown => s.handle_shutdown(),
                    Op::Expiry(ms) => {
                        seen = now;
                        let wall = crate::model::UnixTime::from_secs(1_800_000_000);
                        let at = wall.as_millis() + i64::from(ms);
                        let n = crate::server::Now { monotonic: now, wall };
                        s.set_token_expiry(crate::model::UnixTime::from_millis(at), n);
                    }
                }
                prop_assert_eq!(s.in_flight(), admitted - replied);
                if let Some(at) = s.poll_timeout() { prop_assert!(at > seen); }
                while let Some(o) = s.poll_output() {
                    prop_assert!(!closed_seen, "output after close: {:?}", o);
                    if matches!(o, Output::Close(_)) { closed_seen = true; }
                }
                prop_assert!(s.out.len() <= 2);
            }
        }
    }
}
