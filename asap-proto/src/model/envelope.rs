//! The ASAP envelope: the one message shape every transport carries.

use serde::{Deserialize, Deserializer, Serialize};

use super::ids::AgentUrn;
use super::lax;
use super::payload::{Payload, PayloadKind};
use super::timestamp::Timestamp;
use super::JsonObject;
use crate::error::{from_value, DecodeError, DecodeErrorKind};

/// The protocol version string the reference puts in `asap_version` by default.
pub const ASAP_PROTOCOL_VERSION: &str = "0.1";

/// Payload kinds whose envelopes must carry a `correlation_id`: the answers.
///
/// The rule holds for every spelling of these kinds (`task.response`,
/// `mcp.tool_result`, ...); the reference only checks the PascalCase names.
pub const CORRELATED_PAYLOAD_KINDS: [PayloadKind; 3] = [
    PayloadKind::TaskResponse,
    PayloadKind::McpToolResult,
    PayloadKind::McpResourceData,
];

/// Whether an envelope with `payload_type` (any spelling) must carry a `correlation_id`.
#[must_use]
pub fn needs_correlation_id(payload_type: &str) -> bool {
    PayloadKind::from_payload_type(payload_type)
        .is_some_and(|k| CORRELATED_PAYLOAD_KINDS.contains(&k))
}

/// An envelope as received: `id` and `timestamp` may be absent, and the receiver
/// fills them in with [`EnvelopeInput::materialize`] (the reference does so at parse time).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "EnvelopeWire")]
pub struct EnvelopeInput {
    /// Envelope id; `None` when absent or `null`.
    pub id: Option<String>,
    /// Protocol version string (not validated, as in the reference).
    pub asap_version: String,
    /// Creation time; `None` when absent or `null`.
    pub timestamp: Option<Timestamp>,
    /// Sending agent.
    pub sender: AgentUrn,
    /// Receiving agent.
    pub recipient: AgentUrn,
    /// Dispatch key (see [`PayloadKind::from_payload_type`]).
    pub payload_type: String,
    /// The payload object, kept verbatim.
    pub payload: JsonObject,
    /// Id of the envelope this one answers.
    pub correlation_id: Option<String>,
    /// Trace id.
    pub trace_id: Option<String>,
    /// Whether the receiver must answer with a `MessageAck` (WebSocket).
    pub requires_ack: bool,
    /// Free-form extensions (`nonce`, `trace_id`, `span_id` are reserved keys).
    pub extensions: Option<JsonObject>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct EnvelopeWire {
    #[serde(default)]
    id: Option<String>,
    asap_version: String,
    #[serde(default)]
    timestamp: Option<Timestamp>,
    sender: AgentUrn,
    recipient: AgentUrn,
    payload_type: String,
    payload: JsonObject,
    #[serde(default)]
    correlation_id: Option<String>,
    #[serde(default)]
    trace_id: Option<String>,
    #[serde(default, deserialize_with = "lax::lax_bool")]
    requires_ack: bool,
    #[serde(default)]
    extensions: Option<JsonObject>,
}

impl TryFrom<EnvelopeWire> for EnvelopeInput {
    type Error = String;
    fn try_from(w: EnvelopeWire) -> Result<Self, String> {
        if needs_correlation_id(&w.payload_type)
            && w.correlation_id.as_deref().is_none_or(str::is_empty)
        {
            return Err(crate::error::blame(
                "correlation_id",
                true,
                format_args!(
                    "{} must have correlation_id for request tracking",
                    w.payload_type
                ),
            ));
        }
        Ok(Self {
            id: w.id,
            asap_version: w.asap_version,
            timestamp: w.timestamp,
            sender: w.sender,
            recipient: w.recipient,
            payload_type: w.payload_type,
            payload: w.payload,
            correlation_id: w.correlation_id,
            trace_id: w.trace_id,
            requires_ack: w.requires_ack,
            extensions: w.extensions,
        })
    }
}

impl EnvelopeInput {
    /// Decodes an envelope object (as found in `params.envelope`).
    pub fn from_value(value: serde_json::Value) -> Result<Self, DecodeError> {
        from_value(value)
    }

    /// Decodes envelope JSON text.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, DecodeError> {
        crate::error::from_slice(bytes)
    }

    /// Fills a missing `id` (from `new_id`, called only when needed) and a missing
    /// `timestamp` (with `now`), as the reference receiver does.
    pub fn materialize(self, now: Timestamp, new_id: impl FnOnce() -> String) -> Envelope {
        Envelope {
            id: self.id.unwrap_or_else(new_id),
            asap_version: self.asap_version,
            timestamp: self.timestamp.unwrap_or(now),
            sender: self.sender,
            recipient: self.recipient,
            payload_type: self.payload_type,
            payload: self.payload,
            correlation_id: self.correlation_id,
            trace_id: self.trace_id,
            requires_ack: self.requires_ack,
            extensions: self.extensions,
        }
    }
}

/// A complete envelope: every member present, in wire order.
///
/// The payload object is kept verbatim (so re-encoding reproduces what the peer
/// sent); [`Envelope::payload`] gives the typed view.
///
/// ```
/// use asap_proto::model::{AgentUrn, Envelope, Payload, TaskRequest, Timestamp, UnixTime};
/// let req = TaskRequest::new("conv-1", "echo", serde_json::json!({"message": "hi"}).as_object().unwrap().clone());
/// let env = Envelope::new(
///     "01KDXZ0000ENVREQ0000000001".into(),
///     Timestamp::from_unix(UnixTime::from_secs(1_767_225_600)),
///     AgentUrn::new("urn:asap:agent:client").unwrap(),
///     AgentUrn::new("urn:asap:agent:echo-server").unwrap(),
///     Payload::TaskRequest(req),
/// );
/// let bytes = env.to_vec();
/// let back = Envelope::from_slice(&bytes).unwrap();
/// assert_eq!(back, env);
/// assert!(matches!(back.payload().unwrap(), Payload::TaskRequest(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Envelope {
    /// Envelope id (a ULID when generated by asap-rs or the reference).
    pub id: String,
    /// Protocol version string.
    pub asap_version: String,
    /// Creation time.
    pub timestamp: Timestamp,
    /// Sending agent.
    pub sender: AgentUrn,
    /// Receiving agent.
    pub recipient: AgentUrn,
    /// Dispatch key, spelled as the sender spelled it.
    pub payload_type: String,
    /// The payload object, verbatim.
    pub payload: JsonObject,
    /// Id of the envelope this one answers.
    pub correlation_id: Option<String>,
    /// Trace id.
    pub trace_id: Option<String>,
    /// Whether the receiver must answer with a `MessageAck` (WebSocket).
    pub requires_ack: bool,
    /// Free-form extensions.
    pub extensions: Option<JsonObject>,
}

impl<'de> Deserialize<'de> for Envelope {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let input = EnvelopeInput::deserialize(d)?;
        if input.id.is_none() {
            return Err(serde::de::Error::missing_field("id"));
        }
        if input.timestamp.is_none() {
            return Err(serde::de::Error::missing_field("timestamp"));
        }
        Ok(input.materialize(Timestamp::from_unix(super::UnixTime::EPOCH), String::new))
    }
}

impl Envelope {
    /// A new envelope carrying `payload`, with the payload type spelled as
    /// [`Payload::payload_type`] says and the default protocol version.
    #[must_use]
    pub fn new(
        id: String,
        timestamp: Timestamp,
        sender: AgentUrn,
        recipient: AgentUrn,
        payload: Payload,
    ) -> Self {
        let (payload_type, payload) = payload.into_parts();
        Self {
            id,
            asap_version: ASAP_PROTOCOL_VERSION.to_owned(),
            timestamp,
            sender,
            recipient,
            payload_type,
            payload,
            correlation_id: None,
            trace_id: None,
            requires_ack: false,
            extensions: None,
        }
    }

    /// A reply to `self`: sender and recipient swapped, `correlation_id` set to
    /// `self.id`, `asap_version` and `trace_id` carried over.
    #[must_use]
    pub fn reply(
        &self,
        id: String,
        timestamp: Timestamp,
        from: AgentUrn,
        payload: Payload,
    ) -> Self {
        let (payload_type, payload) = payload.into_parts();
        Self {
            id,
            asap_version: self.asap_version.clone(),
            timestamp,
            sender: from,
            recipient: self.sender.clone(),
            payload_type,
            payload,
            correlation_id: Some(self.id.clone()),
            trace_id: self.trace_id.clone(),
            requires_ack: false,
            extensions: None,
        }
    }

    /// Sets `requires_ack`.
    #[must_use]
    pub fn with_requires_ack(mut self, requires_ack: bool) -> Self {
        self.requires_ack = requires_ack;
        self
    }

    /// Sets `correlation_id`.
    #[must_use]
    pub fn with_correlation_id(mut self, id: impl Into<String>) -> Self {
        self.correlation_id = Some(id.into());
        self
    }

    /// Decodes a complete envelope (`id` and `timestamp` required) from JSON text.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, DecodeError> {
        crate::error::from_slice(bytes)
    }

    /// Decodes a complete envelope from a JSON value.
    pub fn from_value(value: serde_json::Value) -> Result<Self, DecodeError> {
        from_value(value)
    }

    /// Compact JSON (what the reference's server emits).
    #[must_use]
    pub fn to_vec(&self) -> Vec<u8> {
        // Serialising plain data into a Vec cannot fail.
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// The payload kind named by `payload_type`, accepting every spelling in use.
    #[must_use]
    pub fn kind(&self) -> Option<PayloadKind> {
        PayloadKind::from_payload_type(&self.payload_type)
    }

    /// The typed payload. Unknown payload types come back as [`Payload::Unknown`];
    /// a known type whose object does not match its model is a [`DecodeError`]
    /// with a `payload.`-prefixed path.
    pub fn payload(&self) -> Result<Payload, DecodeError> {
        Payload::decode_ref(&self.payload_type, &self.payload).map_err(|e| e.within("payload"))
    }

    /// Whether this envelope's payload type must carry a `correlation_id`.
    #[must_use]
    pub fn needs_correlation_id(&self) -> bool {
        needs_correlation_id(&self.payload_type)
    }

    /// Checks the envelope-level rules the decoder enforces, for envelopes built in code.
    pub fn validate(&self) -> Result<(), DecodeError> {
        if self.needs_correlation_id() && self.correlation_id.as_deref().is_none_or(str::is_empty) {
            return Err(DecodeError::new(
                "correlation_id",
                DecodeErrorKind::Missing,
                format!(
                    "{} must have correlation_id for request tracking",
                    self.payload_type
                ),
            ));
        }
        Ok(())
    }
}
