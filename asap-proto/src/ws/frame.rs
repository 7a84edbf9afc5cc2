//! The frames of `/asap/ws` (spec 13.2, 13.3, 13.5): what a text frame is,
//! and the exact bytes of the frames the binding defines.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::canonical_json::{self, JsonStyle};
use crate::jsonrpc::{ErrorResponse, RequestId};
use crate::model::{AckStatus, AgentUrn, Envelope, MessageAck, Payload, Timestamp};

/// The application heartbeat the server sends every 30 s (exact bytes).
pub const PING_TEXT: &str = r#"{"type": "ping"}"#;
/// The answer to [`PING_TEXT`] (exact bytes the reference client sends).
pub const PONG_TEXT: &str = r#"{"type": "pong"}"#;
/// JSON-RPC method of MessageAck notifications.
pub const ACK_METHOD: &str = "asap.ack";
/// JSON-RPC method of an envelope pushed without a request (server push).
pub const PUSH_METHOD: &str = "asap.send";

/// A frame the adapter received, as its WebSocket library decoded it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incoming<'a> {
    /// A text frame.
    Text(&'a str),
    /// A binary frame (not part of the binding: answered with an error).
    Binary(&'a [u8]),
    /// A protocol-level ping or pong (the library answers pings itself).
    Control,
    /// The peer's close frame.
    Close,
    /// The library could not read the peer's frames (RFC 6455 "fail the
    /// connection"): the session closes with the code the violation calls for.
    Violation(Violation),
}

/// Why a peer's frames could not be read, as far as the close code goes
/// (RFC 6455 section 7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Violation {
    /// A framing error: unmasked client frame, reserved bits or opcode, a
    /// fragmented or oversized control frame, a continuation out of place (1002).
    Protocol,
    /// A text frame (or close reason) that is not UTF-8 (1007).
    InvalidUtf8,
    /// A frame or message over the size limit (1009).
    TooLarge,
}

impl Violation {
    /// The close frame that fails the connection for this violation.
    ///
    /// ```
    /// use asap_proto::ws::{CloseFrame, Violation};
    /// assert_eq!(Violation::InvalidUtf8.close_frame().code, CloseFrame::INVALID_PAYLOAD);
    /// ```
    #[must_use]
    pub fn close_frame(self) -> CloseFrame {
        match self {
            Self::Protocol => {
                CloseFrame::new(CloseFrame::PROTOCOL_ERROR, "WebSocket protocol error")
            }
            Self::InvalidUtf8 => {
                CloseFrame::new(CloseFrame::INVALID_PAYLOAD, "text frame is not valid UTF-8")
            }
            Self::TooLarge => {
                CloseFrame::new(CloseFrame::MESSAGE_TOO_BIG, "frame or message too large")
            }
        }
    }
}

/// A close frame to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseFrame {
    /// Close code (RFC 6455 section 7.4).
    pub code: u16,
    /// Reason text (at most 123 bytes on the wire).
    pub reason: String,
}

impl CloseFrame {
    /// 1001 "going away": the reference's code for every close but the rate limit.
    pub const GOING_AWAY: u16 = 1001;
    /// 1008 "policy violation": the per-connection rate limit was exceeded.
    pub const POLICY_VIOLATION: u16 = 1008;
    /// 1000 normal closure.
    pub const NORMAL: u16 = 1000;
    /// 1002: the peer broke the framing rules.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// 1007: a text frame that is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// 1009: a frame or message over the size limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;

    /// A close frame with `code` and `reason` (cut to the 123 bytes a close frame holds).
    #[must_use]
    pub fn new(code: u16, reason: &str) -> Self {
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        Self {
            code,
            reason: reason[..end].to_owned(),
        }
    }
}

/// What a text frame is, as far as the session needs to know before the
/// exchange decodes it.
#[derive(Debug, Clone, PartialEq)]
pub enum TextKind {
    /// `{"type": "pong"}` without a `method`: a heartbeat answer.
    Pong,
    /// `{"type": "ping"}` without a `method`: the peer's heartbeat.
    Ping,
    /// Valid JSON; `id` is the JSON-RPC id when the frame is an object that has one.
    Json {
        /// The frame's `id`, if it has a usable one.
        id: Option<RequestId>,
        /// Whether the frame has a `method` member (a request or notification).
        has_method: bool,
    },
    /// Not JSON at all.
    InvalidJson,
}

#[derive(Deserialize)]
struct Probe {
    #[serde(rename = "type", default)]
    kind: Option<Value>,
    #[serde(default)]
    method: Option<serde::de::IgnoredAny>,
    #[serde(default)]
    id: Option<RequestId>,
}

/// Classifies a text frame with one validating pass (no tree is built for
/// the members it does not name).
#[must_use]
pub fn classify(text: &str) -> TextKind {
    if !text.trim_start().starts_with('{') {
        // serde would read an array into the probe's fields: check it is JSON, nothing more.
        return match serde_json::from_str::<serde::de::IgnoredAny>(text) {
            Ok(_) => TextKind::Json {
                id: None,
                has_method: false,
            },
            Err(_) => TextKind::InvalidJson,
        };
    }
    match serde_json::from_str::<Probe>(text) {
        Ok(p) => match (p.kind.as_ref().and_then(Value::as_str), &p.method) {
            (Some("pong"), None) => TextKind::Pong,
            (Some("ping"), None) => TextKind::Ping,
            _ => TextKind::Json {
                id: p.id,
                has_method: p.method.is_some(),
            },
        },
        // A member of the wrong type stops the probe before the rest is read:
        // only a whole second pass tells valid JSON from a later syntax error.
        Err(e) if e.is_data() && serde_json::from_str::<serde::de::IgnoredAny>(text).is_ok() => {
            TextKind::Json {
                id: None,
                has_method: false,
            }
        }
        Err(_) => TextKind::InvalidJson,
    }
}

/// A JSON-RPC id as Python's `json.dumps` writes it.
fn python_id(id: Option<&RequestId>) -> String {
    match id {
        None => "null".to_owned(),
        Some(RequestId::Str(s)) => {
            canonical_json::to_string(&Value::String(s.clone()), JsonStyle::default())
        }
        Some(other) => serde_json::to_string(other).unwrap_or_else(|_| "null".to_owned()),
    }
}

/// The -32001 frame sent before closing with 1008 (spec 13.6, exact bytes).
#[must_use]
pub fn rate_limited_text(id: Option<&RequestId>) -> String {
    format!(
        r#"{{"jsonrpc": "2.0", "error": {{"code": -32001, "message": "Rate limit exceeded; too many messages per second"}}, "id": {}}}"#,
        python_id(id)
    )
}

/// The answer to a binary frame: the binding carries JSON-RPC in text frames only.
#[must_use]
pub fn binary_refused_text() -> String {
    let err = ErrorResponse::new(
        crate::jsonrpc::codes::INVALID_REQUEST,
        Some(json!({
            "error": "Binary frames are not supported: send each JSON-RPC message as one UTF-8 text frame"
        })),
        None,
    );
    String::from_utf8(err.to_vec()).unwrap_or_default()
}

/// Who acknowledges what: the parts of a received envelope a `MessageAck` needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AckTarget {
    /// The acknowledged envelope's id.
    pub envelope_id: String,
    /// Its sender (the ack's recipient).
    pub sender: AgentUrn,
    /// The acknowledging agent (the ack's sender).
    pub agent: AgentUrn,
    /// Its `asap_version`, copied into the ack.
    pub asap_version: String,
}

impl AckTarget {
    /// The `asap.ack` notification frame for this envelope (spec 13.3: Python
    /// spacing, no JSON-RPC `id`), with a fresh envelope `id` and `timestamp`.
    #[must_use]
    pub fn frame(
        &self,
        ack_id: String,
        timestamp: Timestamp,
        status: AckStatus,
        error: Option<String>,
    ) -> String {
        let ack = Payload::MessageAck(MessageAck {
            original_envelope_id: self.envelope_id.clone(),
            status,
            error,
        });
        let mut envelope = Envelope::new(
            ack_id,
            timestamp,
            self.agent.clone(),
            self.sender.clone(),
            ack,
        );
        envelope.asap_version.clone_from(&self.asap_version);
        let frame = json!({
            "jsonrpc": "2.0",
            "method": ACK_METHOD,
            "params": {"envelope": envelope},
        });
        canonical_json::to_string(&frame, JsonStyle::default())
    }
}

/// The frame that pushes `envelope` to the peer without a request: a
/// JSON-RPC notification `asap.send` (compact JSON, as responses are).
#[must_use]
pub fn push_text(envelope: &Envelope) -> String {
    let frame = json!({"jsonrpc": "2.0", "method": PUSH_METHOD, "params": {"envelope": envelope}});
    frame.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_heartbeats_requests_and_garbage() {
        assert_eq!(classify(PONG_TEXT), TextKind::Pong);
        assert_eq!(classify(r#"{"type":"pong"}"#), TextKind::Pong);
        assert_eq!(classify(PING_TEXT), TextKind::Ping);
        // A pong that carries a method is a request like any other.
        assert!(matches!(
            classify(r#"{"type":"pong","method":"asap.send","id":1}"#),
            TextKind::Json {
                id: Some(RequestId::Int(1)),
                has_method: true
            }
        ));
        assert_eq!(classify("not json"), TextKind::InvalidJson);
        // A wrongly typed member before a syntax error is still invalid JSON
        // (free of the rate limit, spec 13.6); found by the ws_frame fuzzer's oracle.
        assert_eq!(classify(r#"{"id": [1], oops"#), TextKind::InvalidJson);
        assert_eq!(classify(r#"{"id": {}, "#), TextKind::InvalidJson);
        assert_eq!(
            classify(r#"{"id": [1], "method": "asap.send"}"#),
            TextKind::Json {
                id: None,
                has_method: false
            }
        );
        assert_eq!(classify(r#"{"a":"#), TextKind::InvalidJson);
        for not_object in ["[1,2]", "5", "\"x\"", "null"] {
            assert_eq!(
                classify(not_object),
                TextKind::Json {
                    id: None,
                    has_method: false
                },
                "{not_object}"
            );
        }
        assert_eq!(
            classify(r#"{"jsonrpc":"2.0","id":"f-10","method":"asap.unknown"}"#),
            TextKind::Json {
                id: Some(RequestId::Str("f-10".into())),
                has_method: true
            }
        );
    }

    #[test]
    fn rate_limit_frame_is_the_reference_bytes() {
        // vectors/websocket/rate_limit.json, the last frame.
        let v = r#"{"jsonrpc": "2.0", "error": {"code": -32001, "message": "Rate limit exceeded; too many messages per second"}, "id": "f-10"}"#;
        assert_eq!(rate_limited_text(Some(&RequestId::Str("f-10".into()))), v);
        assert!(rate_limited_text(None).ends_with(r#""id": null}"#));
        assert!(
            rate_limited_text(Some(&RequestId::Str("é".into()))).ends_with(r#""id": "\u00e9"}"#)
        );
    }

    #[test]
    fn ack_frame_is_the_reference_shape() {
        let target = AckTarget {
            envelope_id: "01KDXZ0000ENVREQ0000000001".into(),
            sender: AgentUrn::new("urn:asap:agent:client").unwrap(),
            agent: AgentUrn::new("urn:asap:agent:echo-server").unwrap(),
            asap_version: "0.1".into(),
        };
        let ts: Timestamp = "2026-11-24T03:21:09.922452Z".parse().unwrap();
        let text = target.frame(
            "01M85S4P123DMG6RHS311KMNNW".into(),
            ts,
            AckStatus::Received,
            None,
        );
        // vectors/websocket/message_ack.json, ack_received_frame_text.
        assert_eq!(
            text,
            r#"{"jsonrpc": "2.0", "method": "asap.ack", "params": {"envelope": {"id": "01M85S4P123DMG6RHS311KMNNW", "asap_version": "0.1", "timestamp": "2026-11-24T03:21:09.922452Z", "sender": "urn:asap:agent:echo-server", "recipient": "urn:asap:agent:client", "payload_type": "MessageAck", "payload": {"original_envelope_id": "01KDXZ0000ENVREQ0000000001", "status": "received", "error": null}, "correlation_id": null, "trace_id": null, "requires_ack": false, "extensions": null}}}"#
        );
    }

    #[test]
    fn close_reason_fits_a_close_frame() {
        let long = "é".repeat(100);
        let c = CloseFrame::new(1001, &long);
        assert!(c.reason.len() <= 123);
        assert!(long.starts_with(&c.reason));
    }
}
