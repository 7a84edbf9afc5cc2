//! Typed payloads: one struct per `payload_type`, plus [`Payload`] tying them together.

use serde::{Deserialize, Deserializer, Serialize};

use super::lax;
use super::JsonObject;
use crate::error::{from_object, DecodeError};
use crate::task::TaskStatus;

/// A payload kind, independent of how `payload_type` spells it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum PayloadKind {
    /// Ask an agent to run a skill.
    TaskRequest,
    /// Result of a task.
    TaskResponse,
    /// Progress or status change of a task.
    TaskUpdate,
    /// Cancel a task.
    TaskCancel,
    /// A message within a task.
    MessageSend,
    /// Ask for a task's state snapshot.
    StateQuery,
    /// Restore a task from a snapshot.
    StateRestore,
    /// An artifact is available.
    ArtifactNotify,
    /// Call an MCP tool.
    McpToolCall,
    /// Result of an MCP tool call.
    McpToolResult,
    /// Fetch an MCP resource.
    McpResourceFetch,
    /// Content of an MCP resource.
    McpResourceData,
    /// Delivery acknowledgement (WebSocket, ASAP 1.1).
    MessageAck,
}

impl PayloadKind {
    /// Every kind, in spec order.
    pub const ALL: [PayloadKind; 13] = [
        Self::TaskRequest,
        Self::TaskResponse,
        Self::TaskUpdate,
        Self::TaskCancel,
        Self::MessageSend,
        Self::StateQuery,
        Self::StateRestore,
        Self::ArtifactNotify,
        Self::McpToolCall,
        Self::McpToolResult,
        Self::McpResourceFetch,
        Self::McpResourceData,
        Self::MessageAck,
    ];

    /// Recognises every spelling in use: PascalCase (`TaskRequest`), dotted
    /// (`task.request`) and snake (`task_request`). Case-sensitive, like the reference.
    #[must_use]
    pub fn from_payload_type(s: &str) -> Option<Self> {
        Some(match s {
            "TaskRequest" | "task.request" | "task_request" => Self::TaskRequest,
            "TaskResponse" | "task.response" | "task_response" => Self::TaskResponse,
            "TaskUpdate" | "task.update" | "task_update" => Self::TaskUpdate,
            "TaskCancel" | "task.cancel" | "task_cancel" => Self::TaskCancel,
            "MessageSend" | "message.send" | "message_send" => Self::MessageSend,
            "StateQuery" | "state.query" | "state_query" => Self::StateQuery,
            "StateRestore" | "state.restore" | "state_restore" => Self::StateRestore,
            "ArtifactNotify" | "artifact.notify" | "artifact_notify" => Self::ArtifactNotify,
            "McpToolCall" | "mcp.tool_call" | "mcp_tool_call" => Self::McpToolCall,
            "McpToolResult" | "mcp.tool_result" | "mcp_tool_result" => Self::McpToolResult,
            "McpResourceFetch" | "mcp.resource_fetch" | "mcp_resource_fetch" => {
                Self::McpResourceFetch
            }
            "McpResourceData" | "mcp.resource_data" | "mcp_resource_data" => Self::McpResourceData,
            "MessageAck" | "message.ack" | "message_ack" => Self::MessageAck,
            _ => return None,
        })
    }

    /// The spelling asap-rs emits: dotted names for the task/message/state/artifact
    /// family (what the reference's server registers and answers with), PascalCase
    /// for MCP payloads and `MessageAck` (the only spellings the reference knows).
    #[must_use]
    pub fn payload_type(self) -> &'static str {
        match self {
            Self::TaskRequest => "task.request",
            Self::TaskResponse => "task.response",
            Self::TaskUpdate => "task.update",
            Self::TaskCancel => "task.cancel",
            Self::MessageSend => "message.send",
            Self::StateQuery => "state.query",
            Self::StateRestore => "state.restore",
            Self::ArtifactNotify => "artifact.notify",
            Self::McpToolCall => "McpToolCall",
            Self::McpToolResult => "McpToolResult",
            Self::McpResourceFetch => "McpResourceFetch",
            Self::McpResourceData => "McpResourceData",
            Self::MessageAck => "MessageAck",
        }
    }

    /// The PascalCase model name (`TaskRequest`).
    #[must_use]
    pub fn model_name(self) -> &'static str {
        match self {
            Self::TaskRequest => "TaskRequest",
            Self::TaskResponse => "TaskResponse",
            Self::TaskUpdate => "TaskUpdate",
            Self::TaskCancel => "TaskCancel",
            Self::MessageSend => "MessageSend",
            Self::StateQuery => "StateQuery",
            Self::StateRestore => "StateRestore",
            Self::ArtifactNotify => "ArtifactNotify",
            Self::McpToolCall => "McpToolCall",
            Self::McpToolResult => "McpToolResult",
            Self::McpResourceFetch => "McpResourceFetch",
            Self::McpResourceData => "McpResourceData",
            Self::MessageAck => "MessageAck",
        }
    }

    /// Whether a WebSocket receiver must acknowledge this kind when `requires_ack`
    /// is unset by the sender's client (state-changing payloads, spec 13.3).
    #[must_use]
    pub fn is_state_changing(self) -> bool {
        matches!(
            self,
            Self::TaskRequest | Self::TaskCancel | Self::StateRestore | Self::MessageSend
        )
    }
}

/// `task.request`: run a skill.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskRequest {
    /// Conversation the task belongs to.
    pub conversation_id: String,
    /// Parent task, for sub-tasks.
    #[serde(default)]
    pub parent_task_id: Option<String>,
    /// Skill to run.
    pub skill_id: String,
    /// Skill input.
    pub input: JsonObject,
    /// Free-form configuration (`timeout_seconds`, `priority`, `streaming`).
    #[serde(default)]
    pub config: Option<JsonObject>,
}

impl TaskRequest {
    /// A request with no parent and no config.
    #[must_use]
    pub fn new(
        conversation_id: impl Into<String>,
        skill_id: impl Into<String>,
        input: JsonObject,
    ) -> Self {
        Self {
            conversation_id: conversation_id.into(),
            parent_task_id: None,
            skill_id: skill_id.into(),
            input,
            config: None,
        }
    }
}

/// `task.response`: outcome of a task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskResponse {
    /// Task id.
    pub task_id: String,
    /// Status (not required to be terminal).
    pub status: TaskStatus,
    /// Result object.
    #[serde(default)]
    pub result: Option<JsonObject>,
    /// Final state object.
    #[serde(default)]
    pub final_state: Option<JsonObject>,
    /// Metrics (duration, tokens, ...).
    #[serde(default)]
    pub metrics: Option<JsonObject>,
}

/// What a [`TaskUpdate`] reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateType {
    /// Progress report.
    Progress,
    /// The task needs input.
    InputRequired,
    /// The task changed status.
    StatusChange,
}

/// `task.update`: progress or status change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskUpdate {
    /// Task id.
    pub task_id: String,
    /// Kind of update.
    pub update_type: UpdateType,
    /// Current status.
    pub status: TaskStatus,
    /// Progress object; `percent`, if present, is a number in 0..=100.
    #[serde(default, deserialize_with = "progress_object")]
    pub progress: Option<JsonObject>,
    /// What input is needed.
    #[serde(default)]
    pub input_request: Option<JsonObject>,
}

fn progress_object<'de, D: Deserializer<'de>>(d: D) -> Result<Option<JsonObject>, D::Error> {
    let progress = Option::<JsonObject>::deserialize(d)?;
    if let Some(p) = &progress {
        check_percent(p).map_err(serde::de::Error::custom)?;
    }
    Ok(progress)
}

/// The reference's rule for `progress.percent` (a JSON number or boolean, 0 to 100).
pub(crate) fn check_percent(p: &JsonObject) -> Result<(), &'static str> {
    let Some(v) = p.get("percent") else {
        return Ok(());
    };
    let x = match v {
        serde_json::Value::Number(n) => n.as_f64().unwrap_or(f64::NAN),
        // Python bools are ints.
        serde_json::Value::Bool(b) => f64::from(u8::from(*b)),
        _ => return Err("progress.percent must be a number"),
    };
    if (0.0..=100.0).contains(&x) {
        Ok(())
    } else {
        Err("progress.percent must be between 0 and 100")
    }
}

/// `task.cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskCancel {
    /// Task id.
    pub task_id: String,
    /// Why.
    #[serde(default)]
    pub reason: Option<String>,
}

/// Role of a message author.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MessageRole {
    /// A user.
    User,
    /// An assistant.
    Assistant,
    /// The system.
    System,
}

/// `message.send`: a message within a task (parts by id).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageSend {
    /// Task id.
    pub task_id: String,
    /// Message id.
    pub message_id: String,
    /// Author (free string, not URN-checked).
    pub sender: String,
    /// Author role.
    pub role: MessageRole,
    /// Part ids.
    pub parts: Vec<String>,
}

/// `state.query`: ask for a snapshot (latest when `version` is `None`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateQuery {
    /// Task id.
    pub task_id: String,
    /// Snapshot version.
    #[serde(default, deserialize_with = "lax::lax_opt_int")]
    pub version: Option<i64>,
}

/// `state.restore`: restore a task from a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateRestore {
    /// Task id.
    pub task_id: String,
    /// Snapshot id.
    pub snapshot_id: String,
}

/// `artifact.notify`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ArtifactNotify {
    /// Artifact id.
    pub artifact_id: String,
    /// Task id.
    pub task_id: String,
    /// Display name.
    #[serde(default)]
    pub name: Option<String>,
}

/// `McpToolCall`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpToolCall {
    /// Request id.
    pub request_id: String,
    /// Tool name.
    pub tool_name: String,
    /// Tool arguments.
    pub arguments: JsonObject,
    /// MCP context.
    #[serde(default)]
    pub mcp_context: Option<JsonObject>,
}

/// `McpToolResult`: exactly one of `result` (success) or `error` (failure).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "McpToolResultWire")]
pub struct McpToolResult {
    /// Request id.
    pub request_id: String,
    /// Whether the call succeeded.
    pub success: bool,
    /// Result when `success`.
    pub result: Option<JsonObject>,
    /// Error when not `success`.
    pub error: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct McpToolResultWire {
    request_id: String,
    #[serde(deserialize_with = "lax::lax_bool")]
    success: bool,
    #[serde(default)]
    result: Option<JsonObject>,
    #[serde(default)]
    error: Option<String>,
}

impl TryFrom<McpToolResultWire> for McpToolResult {
    type Error = &'static str;
    fn try_from(w: McpToolResultWire) -> Result<Self, Self::Error> {
        match (w.success, &w.result, &w.error) {
            (true, None, _) => Err("result must be provided when success=True"),
            (true, Some(_), Some(_)) => Err("error must be None when success=True"),
            (false, _, None) => Err("error must be provided when success=False"),
            (false, Some(_), Some(_)) => Err("result must be None when success=False"),
            _ => Ok(Self {
                request_id: w.request_id,
                success: w.success,
                result: w.result,
                error: w.error,
            }),
        }
    }
}

/// `McpResourceFetch`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpResourceFetch {
    /// Resource URI.
    pub resource_uri: String,
}

/// `McpResourceData`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct McpResourceData {
    /// Resource URI.
    pub resource_uri: String,
    /// Content.
    pub content: JsonObject,
}

/// Delivery status carried by a [`MessageAck`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AckStatus {
    /// The envelope arrived (sent before processing).
    Received,
    /// The envelope was processed.
    Processed,
    /// The envelope was rejected.
    Rejected,
}

/// `MessageAck` (ASAP 1.1): acknowledges a state-changing envelope over WebSocket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessageAck {
    /// Id of the acknowledged envelope.
    pub original_envelope_id: String,
    /// Delivery status.
    pub status: AckStatus,
    /// Why it was rejected.
    #[serde(default)]
    pub error: Option<String>,
}

/// A typed payload. Decoding picks the variant from `payload_type`; a payload
/// type no one defined stays [`Payload::Unknown`] so a server can answer it
/// with "no handler" instead of failing the whole envelope.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
#[allow(missing_docs)]
pub enum Payload {
    TaskRequest(TaskRequest),
    TaskResponse(TaskResponse),
    TaskUpdate(TaskUpdate),
    TaskCancel(TaskCancel),
    MessageSend(MessageSend),
    StateQuery(StateQuery),
    StateRestore(StateRestore),
    ArtifactNotify(ArtifactNotify),
    McpToolCall(McpToolCall),
    McpToolResult(McpToolResult),
    McpResourceFetch(McpResourceFetch),
    McpResourceData(McpResourceData),
    MessageAck(MessageAck),
    /// A payload type outside the protocol vocabulary, kept verbatim.
    Unknown {
        /// The payload type as sent.
        payload_type: String,
        /// The payload object as sent.
        payload: JsonObject,
    },
}

macro_rules! payload_dispatch {
    ($($v:ident),*) => {
        impl Payload {
            /// The kind, or `None` for [`Payload::Unknown`].
            #[must_use]
            pub fn kind(&self) -> Option<PayloadKind> {
                match self {
                    $(Self::$v(_) => Some(PayloadKind::$v),)*
                    Self::Unknown { .. } => None,
                }
            }

            /// Decodes `payload` as the model named by `payload_type`.
            pub fn decode(payload_type: &str, payload: JsonObject) -> Result<Self, DecodeError> {
                match PayloadKind::from_payload_type(payload_type) {
                    Some(_) => Self::decode_ref(payload_type, &payload),
                    None => Ok(Self::Unknown { payload_type: payload_type.to_owned(), payload }),
                }
            }

            /// As [`decode`](Self::decode), reading a borrowed object (an unknown
            /// payload type's object is copied).
            pub fn decode_ref(payload_type: &str, payload: &JsonObject) -> Result<Self, DecodeError> {
                match PayloadKind::from_payload_type(payload_type) {
                    $(Some(PayloadKind::$v) => from_object(payload).map(Self::$v),)*
                    None => Ok(Self::Unknown { payload_type: payload_type.to_owned(), payload: payload.clone() }),
                }
            }

            /// Writes the payload object [`to_object`](Self::to_object) would
            /// build, straight to `s` (no intermediate JSON tree).
            pub(crate) fn serialize_object<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                match self {
                    $(Self::$v(p) => serde::Serialize::serialize(p, s),)*
                    Self::Unknown { payload, .. } => serde::Serialize::serialize(payload, s),
                }
            }

            /// The payload as a JSON object (every optional member present, as the reference emits).
            #[must_use]
            pub fn to_object(&self) -> JsonObject {
                let v = match self {
                    $(Self::$v(p) => serde_json::to_value(p),)*
                    Self::Unknown { payload, .. } => return payload.clone(),
                };
                match v {
                    Ok(serde_json::Value::Object(m)) => m,
                    _ => JsonObject::new(),
                }
            }
        }
        $(
        impl From<$v> for Payload {
            fn from(p: $v) -> Self {
                Self::$v(p)
            }
        }
        )*
    };
}

payload_dispatch!(
    TaskRequest,
    TaskResponse,
    TaskUpdate,
    TaskCancel,
    MessageSend,
    StateQuery,
    StateRestore,
    ArtifactNotify,
    McpToolCall,
    McpToolResult,
    McpResourceFetch,
    McpResourceData,
    MessageAck
);

impl Payload {
    /// The `payload_type` asap-rs writes for this payload ([`PayloadKind::payload_type`]).
    #[must_use]
    pub fn payload_type(&self) -> &str {
        match self {
            Self::Unknown { payload_type, .. } => payload_type,
            other => other.kind().map_or("", PayloadKind::payload_type),
        }
    }

    /// Splits into `(payload_type, payload object)` for an envelope.
    #[must_use]
    pub fn into_parts(self) -> (String, JsonObject) {
        match self {
            Self::Unknown {
                payload_type,
                payload,
            } => (payload_type, payload),
            other => (other.payload_type().to_owned(), other.to_object()),
        }
    }
}
