//! The ASAP 1.1 wire model: envelope, payloads, parts, entities and identifiers.
//!
//! Every type decodes exactly what the reference accepts (including its lax
//! coercions) and encodes members in the reference's order with `null`s present.

mod entities;
mod envelope;
mod ids;
mod lax;
mod part;
mod payload;
mod timestamp;
mod ulid_generator;

/// A JSON object with member order preserved (wire order matters for byte equality).
pub type JsonObject = serde_json::Map<String, serde_json::Value>;

pub use entities::{
    is_pep440_version, Agent, Artifact, AuthScheme, Capability, Conversation, Endpoint, Manifest,
    Message, Skill, StateSnapshot, Task, DEFAULT_MANIFEST_TTL_SECONDS, MAX_TASK_DEPTH,
    SUPPORTED_AUTH_SCHEMES,
};
pub use envelope::{
    needs_correlation_id, Envelope, EnvelopeInput, ASAP_PROTOCOL_VERSION, CORRELATED_PAYLOAD_KINDS,
};
pub(crate) use ids::push_lower_hex;
pub use ids::{AgentUrn, Ulid, UlidError, UrnError, MAX_URN_LENGTH};
pub use part::{
    check_file_uri, check_mime_type, DataPart, FilePart, Part, ResourcePart, TemplatePart, TextPart,
};
pub use payload::{
    AckStatus, ArtifactNotify, McpResourceData, McpResourceFetch, McpToolCall, McpToolResult,
    MessageAck, MessageRole, MessageSend, Payload, PayloadKind, StateQuery, StateRestore,
    TaskCancel, TaskRequest, TaskResponse, TaskUpdate, UpdateType,
};
/// Calendar arithmetic shared with the metering periods.
pub(crate) mod timestamp_calendar {
    pub(crate) use super::timestamp::{civil_from_days, days_from_civil};
}
pub use timestamp::{Timestamp, TimestampError, TzOffset, UnixTime};
pub use ulid_generator::UlidGenerator;
