//! The client role of `/asap/ws`: [`ClientSession`].

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

use super::frame::{Incoming, ACK_METHOD, PONG_TEXT, PUSH_METHOD};
use crate::canonical_json::{self, JsonStyle};
use crate::client::{decode_send_result, SendError, TransportError, TransportErrorKind};
use crate::jsonrpc::{JSONRPC_VERSION, METHOD_SEND};
use crate::model::{AckStatus, Envelope, MessageAck, Payload, UnixTime};
use crate::reliability::{set_requires_ack, AckConfig, AckEvent, AckGiveUp, AckTracker};

/// Client policy. `Default`: 60 s per request (the reference client's), acks
/// as [`AckConfig::default`] except that an ack-required envelope is settled
/// by `processed`/`rejected` or by its response, not by `received` alone.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientSessionConfig {
    /// How long a request waits for its response (the reference's client timeout).
    pub request_timeout: Duration,
    /// Requests awaiting responses at once; more are refused.
    pub max_pending: usize,
    /// Acknowledgement tracking of ack-required envelopes.
    pub ack: AckConfig,
}

impl Default for ClientSessionConfig {
    fn default() -> Self {
        Self {
            request_timeout: Duration::from_secs(60),
            max_pending: 1024,
            // `received` alone does not end the wait: a connection lost after it
            // would leave the envelope acknowledged but never run. The response
            // (or `processed`) ends it, so reference peers, which never send
            // `processed`, are settled by their answers.
            ack: AckConfig {
                await_processed: true,
                ..AckConfig::default()
            },
        }
    }
}

/// Names one [`ClientSession::send`] among the session's events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestHandle(pub u64);

/// What the session tells its user.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
#[allow(clippy::large_enum_variant)] // moved once, from the queue to the user
pub enum ClientEvent {
    /// The answer of a request: the response envelope, or why there is none.
    Response {
        /// The request.
        request: RequestHandle,
        /// Its outcome.
        result: Result<Envelope, SendError>,
    },
    /// An envelope the server sent without a request (server push).
    Push(Box<Envelope>),
    /// A MessageAck for an envelope this session sent.
    Acked {
        /// The acknowledged envelope.
        envelope_id: String,
        /// `received`, `processed` or `rejected`.
        status: AckStatus,
        /// The reason, with `rejected`.
        error: Option<String>,
    },
    /// Acks for this envelope stopped coming: it may not have been delivered
    /// (count it against the peer's circuit breaker unless `reason` is `Closed`).
    GaveUp {
        /// The envelope.
        envelope_id: String,
        /// Why.
        reason: AckGiveUp,
    },
}

/// Something for the adapter to do.
#[derive(Debug, Clone, PartialEq)]
#[allow(clippy::large_enum_variant)] // moved once, from the queue to the adapter
pub enum ClientOutput {
    /// Send this text frame (when connected; frames produced while
    /// disconnected may be dropped: pending acks are resent on reconnect).
    Transmit(String),
    /// Tell the user.
    Event(ClientEvent),
}

/// Why [`ClientSession::send`] refused an envelope; nothing was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ClientSessionError {
    /// Not connected: connect (or wait for the reconnect) and send again.
    #[error("not connected to the agent's /asap/ws: connect first, then send")]
    NotConnected,
    /// Too many requests await answers.
    #[error("{0} requests already await answers on this connection; wait for some to finish")]
    TooManyPending(usize),
    /// The ack tracker refused the envelope (see the text).
    #[error("{0}")]
    Ack(String),
}

#[derive(Debug)]
struct Pending {
    handle: RequestHandle,
    deadline: Instant,
}

/// The client side of one agent's `/asap/ws`, sans I/O: frames requests like
/// the reference client (`ws-req-<n>` ids, `requires_ack` set for the
/// state-changing payloads), correlates responses by JSON-RPC id, answers the
/// server's heartbeat, tracks acks with an [`AckTracker`] (retransmitting the
/// same envelope in a new frame, resending what is pending after a
/// reconnect), times requests out, and reports pushes.
///
/// The session outlives connections: call [`handle_disconnect`](Self::handle_disconnect)
/// when the socket is lost (requests in flight fail; acks stay pending) and
/// [`handle_connected`](Self::handle_connected) when a new one is up.
///
/// ```
/// use std::time::Instant;
/// use asap_proto::model::{AgentUrn, Envelope, Payload, TaskRequest, Timestamp, UnixTime};
/// use asap_proto::ws::{ClientEvent, ClientOutput, ClientSession, ClientSessionConfig, Incoming};
///
/// let (now, wall) = (Instant::now(), UnixTime::from_secs(1_767_225_600)); // the adapter's clocks
/// let mut session = ClientSession::new(ClientSessionConfig::default());
/// session.handle_connected(now);
/// let env = Envelope::new("01KDXZ0000ENVREQ0000000001".into(), Timestamp::from_unix(wall),
///     AgentUrn::new("urn:asap:agent:client").unwrap(), AgentUrn::new("urn:asap:agent:srv").unwrap(),
///     Payload::TaskRequest(TaskRequest::new("c", "echo", Default::default())));
/// let request = session.send(env, now, wall).unwrap();
/// let Some(ClientOutput::Transmit(frame)) = session.poll_output() else { panic!() };
/// assert!(frame.contains(r#""id": "ws-req-1""#) && frame.contains(r#""requires_ack": true"#));
/// // ... the server's frames come back:
/// session.handle_frame(Incoming::Text(r#"{"type": "ping"}"#), now);
/// assert_eq!(session.poll_output(), Some(ClientOutput::Transmit(r#"{"type": "pong"}"#.into())));
/// session.handle_frame(Incoming::Text(r#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":"ws-req-1"}"#), now);
/// assert!(matches!(session.poll_output(),
///     Some(ClientOutput::Event(ClientEvent::Response { request: r, result: Err(_) })) if r == request));
/// ```
#[derive(Debug)]
pub struct ClientSession {
    config: ClientSessionConfig,
    acks: AckTracker,
    next_frame: u64,
    next_handle: u64,
    /// JSON-RPC id → the request it answers (retransmissions get new ids).
    frames: HashMap<String, Pending>,
    /// Requests awaiting answers: handle → envelope id.
    requests: HashMap<RequestHandle, String>,
    /// Envelope id → the request handle (a retransmission's answer settles it).
    by_envelope: HashMap<String, RequestHandle>,
    deadlines: BTreeSet<(Instant, String)>,
    out: VecDeque<ClientOutput>,
    connected: bool,
    last_now: Option<Instant>,
}

impl ClientSession {
    /// A disconnected session.
    #[must_use]
    pub fn new(config: ClientSessionConfig) -> Self {
        Self {
            acks: AckTracker::new(config.ack),
            config,
            next_frame: 0,
            next_handle: 0,
            frames: HashMap::new(),
            requests: HashMap::new(),
            by_envelope: HashMap::new(),
            deadlines: BTreeSet::new(),
            out: VecDeque::new(),
            connected: false,
            last_now: None,
        }
    }

    fn see(&mut self, now: Instant) {
        self.last_now = Some(self.last_now.map_or(now, |t| t.max(now)));
    }

    fn frame_for(&mut self, envelope: &Envelope, handle: Option<RequestHandle>, now: Instant) {
        self.next_frame += 1;
        let id = format!("ws-req-{}", self.next_frame);
        let mut params = Map::new();
        params.insert(
            "envelope".into(),
            serde_json::to_value(envelope).unwrap_or(Value::Null),
        );
        let mut top = Map::new();
        top.insert("jsonrpc".into(), JSONRPC_VERSION.into());
        top.insert("method".into(), METHOD_SEND.into());
        top.insert("params".into(), Value::Object(params));
        top.insert("id".into(), Value::String(id.clone()));
        let text = canonical_json::to_string(&Value::Object(top), JsonStyle::default());
        if let Some(handle) = handle {
            let deadline = now + self.config.request_timeout;
            self.deadlines.insert((deadline, id.clone()));
            self.frames.insert(id, Pending { handle, deadline });
        }
        self.out.push_back(ClientOutput::Transmit(text));
    }

    /// Sends `envelope` (`requires_ack` set when its payload type needs it)
    /// and returns the handle its [`ClientEvent::Response`] will carry.
    pub fn send(
        &mut self,
        mut envelope: Envelope,
        now: Instant,
        wall: UnixTime,
    ) -> Result<RequestHandle, ClientSessionError> {
        self.see(now);
        if !self.connected {
            return Err(ClientSessionError::NotConnected);
        }
        if self.requests.len() >= self.config.max_pending {
            return Err(ClientSessionError::TooManyPending(self.requests.len()));
        }
        if set_requires_ack(&mut envelope) && !envelope.id.is_empty() {
            self.acks
                .track(&envelope, now, wall)
                .map_err(|e| ClientSessionError::Ack(e.to_string()))?;
        }
        self.next_handle += 1;
        let handle = RequestHandle(self.next_handle);
        self.requests.insert(handle, envelope.id.clone());
        self.by_envelope.insert(envelope.id.clone(), handle);
        self.frame_for(&envelope, Some(handle), now);
        Ok(handle)
    }

    /// Input: a frame the server sent.
    pub fn handle_frame(&mut self, frame: Incoming<'_>, now: Instant) {
        self.see(now);
        let Incoming::Text(text) = frame else {
            if matches!(frame, Incoming::Close | Incoming::Violation(_)) {
                self.handle_disconnect(now);
            }
            return;
        };
        let Ok(Value::Object(mut obj)) = serde_json::from_str::<Value>(text) else {
            return; // not ours to answer; the server never sends non-objects
        };
        if obj.get("type").and_then(Value::as_str) == Some("ping") && !obj.contains_key("method") {
            self.out
                .push_back(ClientOutput::Transmit(PONG_TEXT.to_owned()));
            return;
        }
        match obj.get("method").and_then(Value::as_str) {
            Some(ACK_METHOD) => return self.on_ack(&obj, now),
            Some(PUSH_METHOD) if !obj.contains_key("id") => {
                if let Some(env) = envelope_param(&mut obj) {
                    self.out
                        .push_back(ClientOutput::Event(ClientEvent::Push(Box::new(env))));
                }
                return;
            }
            _ => {}
        }
        let id = obj.get("id").and_then(Value::as_str).map(str::to_owned);
        let pending = id.as_ref().and_then(|id| self.frames.remove(id));
        let Some(pending) = pending else {
            // An answer to no request of ours: the reference client calls it a push.
            if let Some(env) = obj
                .get_mut("result")
                .and_then(|r| r.as_object_mut())
                .and_then(envelope_param)
            {
                self.out
                    .push_back(ClientOutput::Event(ClientEvent::Push(Box::new(env))));
            }
            return;
        };
        if let Some(id) = id {
            self.deadlines.remove(&(pending.deadline, id));
        }
        let result = decode_send_result(text.as_bytes());
        // A result settles the ack: the envelope was processed, whether or not
        // its `processed` ack got through. An error does not: refusals before
        // admission (rate limit, busy, replay window) are worth a retransmission,
        // and a refusal after admission comes with its own `rejected` ack.
        let processed = result
            .is_ok()
            .then(|| self.requests.get(&pending.handle).cloned())
            .flatten()
            .filter(|id| self.acks.is_pending(id));
        self.settle(pending.handle, result);
        if let Some(id) = processed {
            let ack = MessageAck {
                original_envelope_id: id,
                status: AckStatus::Processed,
                error: None,
            };
            let _ = self.acks.handle_ack(&ack, now);
            self.drain_acks(now);
        }
    }

    fn on_ack(&mut self, obj: &Map<String, Value>, now: Instant) {
        let ack = obj
            .get("params")
            .and_then(|p| p.get("envelope"))
            .and_then(|e| Envelope::from_value(e.clone()).ok())
            .filter(|e| e.kind() == Some(crate::model::PayloadKind::MessageAck))
            .and_then(|e| match e.payload() {
                Ok(Payload::MessageAck(a)) => Some(a),
                _ => None,
            });
        if let Some(ack) = ack {
            let _ = self.acks.handle_ack(&ack, now);
            self.drain_acks(now);
        }
    }

    fn settle(&mut self, handle: RequestHandle, result: Result<Envelope, SendError>) {
        if let Some(envelope_id) = self.requests.remove(&handle) {
            self.by_envelope.remove(&envelope_id);
            // Other frames of this request (retransmissions) answer nothing now.
            self.frames.retain(|_, p| p.handle != handle);
            self.out
                .push_back(ClientOutput::Event(ClientEvent::Response {
                    request: handle,
                    result,
                }));
        }
    }

    fn drain_acks(&mut self, now: Instant) {
        while let Some(event) = self.acks.poll_event() {
            match event {
                AckEvent::Retransmit { envelope, .. } => {
                    if self.connected {
                        let handle = self.by_envelope.get(&envelope.id).copied();
                        self.frame_for(&envelope, handle, now);
                    }
                }
                AckEvent::Acked {
                    envelope_id,
                    status,
                    error,
                    ..
                } => self.out.push_back(ClientOutput::Event(ClientEvent::Acked {
                    envelope_id,
                    status,
                    error,
                })),
                AckEvent::GaveUp {
                    envelope_id,
                    reason,
                    ..
                } => {
                    if let Some(handle) = self.by_envelope.get(&envelope_id).copied() {
                        let err = TransportError::new(
                            TransportErrorKind::Timeout,
                            format!(
                                "no MessageAck for envelope {envelope_id}: gave up ({reason:?})"
                            ),
                        );
                        self.settle(handle, Err(SendError::Transport(err)));
                    }
                    self.out.push_back(ClientOutput::Event(ClientEvent::GaveUp {
                        envelope_id,
                        reason,
                    }));
                }
            }
        }
    }

    /// Input: a new connection is up; everything awaiting an ack is resent.
    pub fn handle_connected(&mut self, now: Instant) {
        self.see(now);
        self.connected = true;
        self.acks.handle_reconnect(now);
        self.drain_acks(now);
    }

    /// Input: the connection is lost. Requests waiting for a response fail
    /// (the agent may have processed them: ack-required ones are resent on
    /// reconnect and deduplicated by asap-rs servers); acks stay pending.
    pub fn handle_disconnect(&mut self, now: Instant) {
        self.see(now);
        if !self.connected {
            return;
        }
        self.connected = false;
        self.frames.clear();
        self.deadlines.clear();
        let mut lost: Vec<RequestHandle> = self.requests.keys().copied().collect();
        lost.sort();
        for handle in lost {
            // Ack-required requests stay open: their retransmission's answer settles them.
            let ack_pending = self
                .requests
                .get(&handle)
                .is_some_and(|id| self.acks.is_pending(id));
            if !ack_pending {
                let err = TransportError::new(
                    TransportErrorKind::Other,
                    "the WebSocket connection closed before the response",
                );
                self.settle(handle, Err(SendError::Transport(err)));
            }
        }
    }

    /// Input: a deadline from [`poll_timeout`](Self::poll_timeout) passed.
    pub fn handle_timeout(&mut self, now: Instant) {
        self.see(now);
        while let Some((at, id)) = self.deadlines.first().cloned() {
            if at > now {
                break;
            }
            self.deadlines.pop_first();
            if let Some(p) = self.frames.remove(&id) {
                // Only the newest frame of a request times it out.
                if self.frames.values().any(|q| q.handle == p.handle) {
                    continue;
                }
                let err = TransportError::new(
                    TransportErrorKind::Timeout,
                    format!("no response within {:?}", self.config.request_timeout),
                );
                self.settle(p.handle, Err(SendError::Transport(err)));
            }
        }
        self.acks.handle_timeout(now);
        self.drain_acks(now);
    }

    /// The next deadline (request timeout or ack wait), after the latest `now` seen.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let mine = self.deadlines.first().map(|(at, _)| *at);
        let at = match (mine, self.acks.poll_timeout()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }?;
        Some(match self.last_now {
            Some(seen) if at <= seen => seen + Duration::from_nanos(1),
            _ => at,
        })
    }

    /// The next frame to send or event to report.
    #[must_use]
    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.out.pop_front()
    }

    /// Whether a connection is up.
    #[must_use]
    pub fn is_connected(&self) -> bool {
        self.connected
    }

    /// Requests awaiting answers.
    #[must_use]
    pub fn pending_requests(&self) -> usize {
        self.requests.len()
    }

    /// Envelopes awaiting acks.
    #[must_use]
    pub fn pending_acks(&self) -> usize {
        self.acks.len()
    }
}

fn envelope_param(obj: &mut Map<String, Value>) -> Option<Envelope> {
    let env = obj
        .get_mut("params")
        .and_then(|p| p.as_object_mut())
        .and_then(|p| p.remove("envelope"))
        .or_else(|| obj.remove("envelope"))?;
    Envelope::from_value(env).ok()
}

/// Decodes a MessageAck from an `asap.ack` frame (for adapters and tests).
#[must_use]
pub fn decode_ack_frame(text: &str) -> Option<MessageAck> {
    let v: Value = serde_json::from_str(text).ok()?;
    if v.get("method").and_then(Value::as_str) != Some(ACK_METHOD) {
        return None;
    }
    let env = Envelope::from_value(v.get("params")?.get("envelope")?.clone()).ok()?;
    match env.payload().ok()? {
        Payload::MessageAck(a) => Some(a),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AgentUrn, TaskRequest, Timestamp};
    use crate::ws::frame;

    fn wall() -> UnixTime {
        UnixTime::from_secs(1_767_225_600)
    }

    fn env(id: &str, kind: &str) -> Envelope {
        let payload = match kind {
            "request" => Payload::TaskRequest(TaskRequest::new("c", "echo", Default::default())),
            _ => Payload::decode(
                "task.update",
                serde_json::from_str(
                    r#"{"task_id":"t","update_type":"progress","status":"working"}"#,
                )
                .unwrap(),
            )
            .unwrap(),
        };
        Envelope::new(
            id.into(),
            Timestamp::from_unix(wall()),
            AgentUrn::new("urn:asap:agent:client").unwrap(),
            AgentUrn::new("urn:asap:agent:srv").unwrap(),
            payload,
        )
    }

    fn transmitted(s: &mut ClientSession) -> Vec<String> {
        let mut out = Vec::new();
        while let Some(o) = s.poll_output() {
            if let ClientOutput::Transmit(t) = o {
                out.push(t);
            }
        }
        out
    }

    fn ack_text(id: &str, status: &str) -> String {
        format!(
            r#"{{"jsonrpc": "2.0", "method": "asap.ack", "params": {{"envelope": {{"id": "01M85S4P123DMG6RHS311KMNNW", "asap_version": "0.1", "timestamp": "2026-11-24T03:21:09.922452Z", "sender": "urn:asap:agent:srv", "recipient": "urn:asap:agent:client", "payload_type": "MessageAck", "payload": {{"original_envelope_id": "{id}", "status": "{status}", "error": null}}, "correlation_id": null, "trace_id": null, "requires_ack": false, "extensions": null}}}}}}"#
        )
    }

    #[test]
    fn frames_match_the_reference_client() {
        let t0 = crate::test_clock::base();
        let mut s = ClientSession::new(ClientSessionConfig::default());
        assert_eq!(
            s.send(env("e1", "request"), t0, wall()),
            Err(ClientSessionError::NotConnected)
        );
        s.handle_connected(t0);
        s.send(env("e1", "request"), t0, wall()).unwrap();
        s.send(env("e2", "update"), t0, wall()).unwrap();
        let frames = transmitted(&mut s);
        assert!(
            frames[0].starts_with(
                r#"{"jsonrpc": "2.0", "method": "asap.send", "params": {"envelope": {"id": "e1""#
            ),
            "{}",
            frames[0]
        );
        assert!(frames[0].contains(r#""requires_ack": true"#));
        assert!(frames[0].ends_with(r#""id": "ws-req-1"}"#));
        assert!(frames[1].contains(r#""requires_ack": false"#));
        assert!(frames[1].ends_with(r#""id": "ws-req-2"}"#));
        assert_eq!(s.pending_acks(), 1);
    }

    #[test]
    fn lost_ack_retransmits_the_same_envelope_and_the_late_answer_settles_the_request() {
        let t0 = crate::test_clock::base();
        let mut s = ClientSession::new(ClientSessionConfig::default());
        s.handle_connected(t0);
        let h = s.send(env("e1", "request"), t0, wall()).unwrap();
        let first = transmitted(&mut s).remove(0);
        let at = s.poll_timeout().unwrap();
        assert_eq!(at, t0 + Duration::from_secs(30));
        s.handle_timeout(at);
        let again = transmitted(&mut s).remove(0);
        assert_eq!(
            first.replace("ws-req-1", "ws-req-2"),
            again,
            "same envelope, new JSON-RPC id"
        );
        // The answer to the retransmission settles the request; the ack clears the entry.
        s.handle_frame(Incoming::Text(&ack_text("e1", "received")), at);
        assert_eq!(s.pending_acks(), 1, "received alone does not settle it");
        s.handle_frame(Incoming::Text(&ack_text("e1", "rejected")), at);
        let resp = r#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"Method not found"},"id":"ws-req-2"}"#;
        s.handle_frame(Incoming::Text(resp), at);
        let events: Vec<_> = std::iter::from_fn(|| s.poll_output()).collect();
        assert!(events.iter().any(|e| matches!(
            e,
            ClientOutput::Event(ClientEvent::Acked {
                status: AckStatus::Rejected,
                ..
            })
        )));
        assert!(events.iter().any(|e| matches!(e, ClientOutput::Event(ClientEvent::Response { request, .. }) if *request == h)));
        assert_eq!(s.pending_requests(), 0);
        assert_eq!(s.pending_acks(), 0);
        // A late answer to the first frame is nobody's: ignored.
        let late = r#"{"jsonrpc":"2.0","error":{"code":-32601,"message":"x"},"id":"ws-req-1"}"#;
        s.handle_frame(Incoming::Text(late), at);
        assert_eq!(s.poll_output(), None);
    }

    #[test]
    fn an_unreadable_frame_from_the_server_is_a_disconnect() {
        let t0 = crate::test_clock::base();
        let mut s = ClientSession::new(ClientSessionConfig::default());
        s.handle_connected(t0);
        let plain = s.send(env("u1", "update"), t0, wall()).unwrap();
        let _ = transmitted(&mut s);
        s.handle_frame(Incoming::Violation(crate::ws::Violation::Protocol), t0);
        let events: Vec<_> = std::iter::from_fn(|| s.poll_output()).collect();
        assert!(
            matches!(&events[..], [ClientOutput::Event(ClientEvent::Response { request, result: Err(_) })] if *request == plain),
            "{events:?}"
        );
    }

    #[test]
    fn disconnect_fails_plain_requests_and_keeps_acked_ones_for_the_reconnect() {
        let t0 = crate::test_clock::base();
        let mut s = ClientSession::new(ClientSessionConfig::default());
        s.handle_connected(t0);
        let plain = s.send(env("u1", "update"), t0, wall()).unwrap();
        let acked = s.send(env("e1", "request"), t0, wall()).unwrap();
        let _ = transmitted(&mut s);
        s.handle_disconnect(t0);
        let events: Vec<_> = std::iter::from_fn(|| s.poll_output()).collect();
        assert_eq!(events.len(), 1);
        assert!(
            matches!(&events[0], ClientOutput::Event(ClientEvent::Response { request, result: Err(_) }) if *request == plain)
        );
        s.handle_connected(t0 + Duration::from_secs(2));
        let resent = transmitted(&mut s);
        assert_eq!(resent.len(), 1);
        assert!(resent[0].contains(r#""id": "e1""#));
        let id = resent[0]
            .rsplit("\"id\": \"")
            .next()
            .unwrap()
            .trim_end_matches("\"}");
        let ok = format!(
            r#"{{"jsonrpc":"2.0","result":{{"envelope":{{"id":"r1","asap_version":"0.1","timestamp":"2026-01-01T00:00:00Z","sender":"urn:asap:agent:srv","recipient":"urn:asap:agent:client","payload_type":"task.response","payload":{{"task_id":"t","status":"completed"}},"correlation_id":"e1"}}}},"id":"{id}"}}"#
        );
        s.handle_frame(Incoming::Text(&ok), t0 + Duration::from_secs(2));
        let got: Vec<_> = std::iter::from_fn(|| s.poll_output()).collect();
        assert!(got.iter().any(|e| matches!(e, ClientOutput::Event(ClientEvent::Response { request, result: Ok(_) }) if *request == acked)), "{got:?}");
    }

    #[test]
    fn pushes_and_unknown_answers_are_reported_and_pings_answered() {
        let t0 = crate::test_clock::base();
        let mut s = ClientSession::new(ClientSessionConfig::default());
        s.handle_connected(t0);
        let push = frame::push_text(&env("p1", "update"));
        s.handle_frame(Incoming::Text(&push), t0);
        assert!(
            matches!(s.poll_output(), Some(ClientOutput::Event(ClientEvent::Push(e))) if e.id == "p1")
        );
        s.handle_frame(Incoming::Text(frame::PING_TEXT), t0);
        assert_eq!(
            s.poll_output(),
            Some(ClientOutput::Transmit(PONG_TEXT.into()))
        );
        s.handle_frame(Incoming::Text("garbage"), t0);
        assert_eq!(s.poll_output(), None);
    }

    fn error_answer(frame_id: &str) -> String {
        format!(
            r#"{{"jsonrpc":"2.0","error":{{"code":-32601,"message":"Method not found"}},"id":"{frame_id}"}}"#
        )
    }

    fn responses(s: &mut ClientSession) -> Vec<(RequestHandle, bool)> {
        std::iter::from_fn(|| s.poll_output())
            .filter_map(|o| match o {
                ClientOutput::Event(ClientEvent::Response { request, result }) => {
                    Some((request, result.is_ok()))
                }
                _ => None,
            })
            .collect()
    }

    #[test]
    fn each_request_times_out_at_its_own_deadline_and_answers_settle_only_theirs() {
        let t0 = crate::test_clock::base();
        let mut s = ClientSession::new(ClientSessionConfig::default());
        assert!(!s.is_connected());
        s.handle_connected(t0);
        assert!(s.is_connected());
        let h1 = s.send(env("u1", "update"), t0, wall()).unwrap();
        let h2 = s
            .send(env("u2", "update"), t0 + Duration::from_secs(10), wall())
            .unwrap();
        let h3 = s
            .send(env("u3", "update"), t0 + Duration::from_secs(20), wall())
            .unwrap();
        assert_eq!(transmitted(&mut s).len(), 3);
        assert_eq!(s.pending_requests(), 3);
        assert_eq!(s.pending_acks(), 0);
        // The answer to the second frame settles h2 alone; h1 and h3 keep their frames.
        s.handle_frame(
            Incoming::Text(&error_answer("ws-req-2")),
            t0 + Duration::from_secs(30),
        );
        assert_eq!(responses(&mut s), [(h2, false)]);
        assert_eq!(s.pending_requests(), 2);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        // h1's deadline: h1 times out, h3 (due 20 s later) does not.
        s.handle_timeout(t0 + Duration::from_secs(60));
        assert_eq!(responses(&mut s), [(h1, false)]);
        assert_eq!(s.pending_requests(), 1);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(80)));
        s.handle_frame(
            Incoming::Text(&error_answer("ws-req-3")),
            t0 + Duration::from_secs(61),
        );
        assert_eq!(responses(&mut s), [(h3, false)]);
        assert_eq!(s.pending_requests(), 0);
        assert_eq!(s.poll_timeout(), None);
        s.handle_disconnect(t0 + Duration::from_secs(62));
        assert!(!s.is_connected());
    }

    #[test]
    fn a_retransmitted_request_times_out_by_its_newest_frame_only() {
        let t0 = crate::test_clock::base();
        let mut s = ClientSession::new(ClientSessionConfig::default());
        s.handle_connected(t0);
        let h = s.send(env("e1", "request"), t0, wall()).unwrap();
        let _ = transmitted(&mut s);
        // No ack: the envelope goes again at 30 s in frame ws-req-2 (due at 90 s).
        s.handle_timeout(t0 + Duration::from_secs(30));
        assert_eq!(transmitted(&mut s).len(), 1);
        // The first frame's deadline passes: the request still waits for ws-req-2.
        s.handle_timeout(t0 + Duration::from_secs(60));
        assert_eq!(responses(&mut s), []);
        assert_eq!(s.pending_requests(), 1);
        s.handle_frame(
            Incoming::Text(&error_answer("ws-req-2")),
            t0 + Duration::from_secs(61),
        );
        assert_eq!(responses(&mut s), [(h, false)]);
    }

    #[test]
    fn poll_timeout_is_after_the_latest_now_seen() {
        let t0 = crate::test_clock::base();
        let mut s = ClientSession::new(ClientSessionConfig::default());
        s.handle_connected(t0);
        s.send(env("u1", "update"), t0, wall()).unwrap();
        let _ = transmitted(&mut s);
        assert_eq!(s.poll_timeout(), Some(t0 + Duration::from_secs(60)));
        // A frame handled long after the deadline, before any timeout call.
        let late = t0 + Duration::from_secs(100);
        s.handle_frame(Incoming::Text(frame::PING_TEXT), late);
        assert_eq!(s.poll_timeout(), Some(late + Duration::from_nanos(1)));
    }

    #[test]
    fn a_server_send_with_an_id_is_not_a_push_and_ack_frames_decode() {
        let t0 = crate::test_clock::base();
        let mut s = ClientSession::new(ClientSessionConfig::default());
        s.handle_connected(t0);
        let push = frame::push_text(&env("p1", "update"));
        let request = format!("{},\"id\":\"srv-1\"}}", push.strip_suffix('}').unwrap());
        assert!(serde_json::from_str::<Value>(&request).is_ok(), "{request}");
        s.handle_frame(Incoming::Text(&request), t0);
        assert_eq!(s.poll_output(), None);
        let ack = decode_ack_frame(&ack_text("e1", "processed")).unwrap();
        assert_eq!(ack.original_envelope_id, "e1");
        assert_eq!(ack.status, AckStatus::Processed);
        assert_eq!(decode_ack_frame(&push), None);
        let not_an_ack = ack_text("e1", "processed").replace("\"MessageAck\"", "\"task.update\"");
        assert_eq!(decode_ack_frame(&not_an_ack), None);
        assert_eq!(decode_ack_frame("nope"), None);
    }

    #[test]
    fn a_silent_server_times_requests_out() {
        let t0 = crate::test_clock::base();
        let mut s = ClientSession::new(ClientSessionConfig::default());
        s.handle_connected(t0);
        let h = s.send(env("u1", "update"), t0, wall()).unwrap();
        let _ = transmitted(&mut s);
        let at = s.poll_timeout().unwrap();
        assert_eq!(at, t0 + Duration::from_secs(60));
        s.handle_timeout(at);
        assert!(
            matches!(s.poll_output(), Some(ClientOutput::Event(ClientEvent::Response { request, result: Err(SendError::Transport(_)) })) if request == h)
        );
        assert!(s.poll_timeout().is_none());
    }
}
