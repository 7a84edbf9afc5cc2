//! What handlers get and give back: [`Invocation`], [`SkillResult`],
//! [`HandlerReply`], [`HandlerOutcome`], [`HandlerError`].

use serde_json::Value;

use super::routes::Route;
use crate::jsonrpc::{AsapError, RequestId};
use crate::model::{Envelope, JsonObject, Payload, UnixTime};
use crate::task::TaskStatus;

/// What a skill handler gets besides its `TaskRequest`.
#[derive(Debug, Clone)]
pub struct SkillContext {
    /// The request envelope.
    pub envelope: Envelope,
}

/// What a payload handler answers.
#[derive(Debug, Clone, PartialEq)]
pub enum HandlerReply {
    /// Reply with this payload (the server builds the envelope: ids, correlation, addresses).
    Payload(Payload),
    /// Reply with a complete envelope built by the handler.
    Envelope(Envelope),
}

impl From<HandlerReply> for HandlerOutcome {
    fn from(r: HandlerReply) -> Self {
        match r {
            HandlerReply::Payload(p) => Self::Reply(p),
            HandlerReply::Envelope(e) => Self::Envelope(e),
        }
    }
}

/// An accepted envelope waiting for its handler.
#[derive(Debug, Clone)]
pub struct Invocation {
    /// JSON-RPC id to echo.
    pub request_id: RequestId,
    /// The envelope (id and timestamp materialised).
    pub envelope: Envelope,
    /// The typed payload.
    pub payload: Payload,
    /// Which handler.
    pub route: Route,
    /// The task id a skill run gets (`task_<ULID>`); `None` for other routes.
    pub task_id: Option<String>,
    /// When the envelope was accepted (wall clock).
    pub accepted_at: UnixTime,
}

/// What a skill produced.
///
/// A skill reports bad input or a failed attempt as a result with status
/// `failed` ([`SkillResult::failed`]): the task exists, ended badly, and is
/// recorded. A crash (`Err(HandlerError)` or a panic) means the task did not
/// run to an end; the caller gets -32603.
#[derive(Debug, Clone, PartialEq)]
pub struct SkillResult {
    /// Final (or current) task status.
    pub status: TaskStatus,
    /// Result object.
    pub result: Option<JsonObject>,
    /// Final state object.
    pub final_state: Option<JsonObject>,
    /// Metrics (duration, tokens, ...).
    pub metrics: Option<JsonObject>,
}

impl SkillResult {
    /// A completed task with `result`.
    #[must_use]
    pub fn completed(result: JsonObject) -> Self {
        Self {
            status: TaskStatus::Completed,
            result: Some(result),
            final_state: None,
            metrics: None,
        }
    }

    /// A failed task: `result` is `{"error": message}`.
    #[must_use]
    pub fn failed(message: impl Into<String>) -> Self {
        let mut result = JsonObject::new();
        result.insert("error".into(), Value::String(message.into()));
        Self {
            status: TaskStatus::Failed,
            result: Some(result),
            final_state: None,
            metrics: None,
        }
    }

    /// The reference echo skill on an invocation: `{"echoed": <input>}`.
    #[must_use]
    pub fn echo(inv: &Invocation) -> Self {
        match &inv.payload {
            Payload::TaskRequest(r) => Self::echo_input(r.input.clone()),
            _ => Self::echo_input(JsonObject::new()),
        }
    }

    /// The reference echo skill: a completed task whose result is `{"echoed": input}`.
    #[must_use]
    pub fn echo_input(input: JsonObject) -> Self {
        let mut result = JsonObject::new();
        result.insert("echoed".into(), Value::Object(input));
        Self::completed(result)
    }
}

/// A handler failure.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum HandlerError {
    /// An ASAP error (`TaskNotFound`, `InvalidTransition`, ...).
    #[error("{0}")]
    Asap(AsapError),
    /// Any other failure; `kind` names it in debug responses.
    #[error("{message}")]
    Failed {
        /// What went wrong.
        message: String,
        /// Error type name.
        kind: String,
    },
}

impl HandlerError {
    /// A plain failure.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed {
            message: message.into(),
            kind: "HandlerError".into(),
        }
    }
}

/// What the adapter reports back after running a handler.
#[derive(Debug, Clone, PartialEq)]
pub enum HandlerOutcome {
    /// A skill ran; the server wraps it in a `task.response`.
    Skill(SkillResult),
    /// A payload handler answered with this payload (sent back as a reply envelope).
    Reply(Payload),
    /// A handler built the whole response envelope itself.
    Envelope(Envelope),
    /// The handler failed.
    Failed(HandlerError),
}
