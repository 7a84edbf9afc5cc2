//! What handlers get and give back: [`Invocation`], [`SkillResult`],
//! [`HandlerReply`], [`HandlerOutcome`], [`HandlerError`].
//!
//! How a skill reports what went wrong (the rule is also in the docs of
//! [`SkillResult`] and of the `asap_proto::server` module):
//!
//! | what happened | return | the caller gets |
//! |---|---|---|
//! | bad input, or the work failed (a task that ended badly) | `Ok(SkillResult::failed(msg))` | a `task.response` with status `failed` and `{"error": msg}`, recorded with the task state |
//! | a request the skill cannot take at all (bad params) | `Err(HandlerError::invalid_params(reason, details))` | JSON-RPC `-32602` naming the problem; no task |
//! | a bug or a dependency down | `Err(HandlerError::failed(msg))`, or a panic | JSON-RPC `-32603 Internal error` (`msg` only with `debug`) |

use serde_json::Value;

use super::routes::Route;
use crate::jsonrpc::{AsapError, RequestId};
use crate::model::{AgentUrn, Envelope, JsonObject, Payload, Timestamp, UlidGenerator, UnixTime};
use crate::task::TaskStatus;

/// Where a running handler's pushed payloads go: the requester's open
/// WebSocket, or the webhook subscribers. Adapters implement it; the sink
/// addresses the envelope as a reply to the request (see [`Envelope::reply`]).
pub trait PushSink: Send + Sync {
    /// Sends `payload` to the requester now.
    fn push(&self, payload: Payload) -> Result<(), crate::ws::PushError>;
}

/// The envelopes a running handler's pushed payloads become: replies to
/// the request envelope (its id as `correlation_id`), from the agent, each
/// with a fresh ULID. A [`PushSink`] keeps one (behind its own lock: `push`
/// takes `&self`).
///
/// ```
/// use asap_proto::model::{AgentUrn, Envelope, Payload, TaskRequest, TaskUpdate, Timestamp, UnixTime};
/// use asap_proto::server::PushReplies;
/// let wall = UnixTime::from_secs(1_767_225_600);
/// let request = Envelope::new("01KDXZ0000ENVREQ0000000001".into(), Timestamp::from_unix(wall),
///     AgentUrn::new("urn:asap:agent:client").unwrap(), AgentUrn::new("urn:asap:agent:srv").unwrap(),
///     Payload::TaskRequest(TaskRequest::new("c", "echo", Default::default())));
/// let mut replies = PushReplies::new(request, AgentUrn::new("urn:asap:agent:srv").unwrap(), 7);
/// let update: TaskUpdate = serde_json::from_value(serde_json::json!({
///     "task_id": "task_1", "update_type": "progress", "status": "working"})).unwrap();
/// let pushed = replies.reply(Payload::TaskUpdate(update), wall);
/// assert_eq!(pushed.correlation_id.as_deref(), Some("01KDXZ0000ENVREQ0000000001"));
/// assert_eq!(pushed.recipient.as_str(), "urn:asap:agent:client");
/// ```
#[derive(Debug)]
pub struct PushReplies {
    request: Envelope,
    agent: AgentUrn,
    ids: UlidGenerator,
}

impl PushReplies {
    /// Replies to `request` from `agent`; `seed` (the adapter's randomness) seeds the ids.
    #[must_use]
    pub fn new(request: Envelope, agent: AgentUrn, seed: u64) -> Self {
        Self {
            request,
            agent,
            ids: UlidGenerator::new(seed),
        }
    }

    /// The envelope carrying `payload`, stamped `wall`.
    pub fn reply(&mut self, payload: Payload, wall: UnixTime) -> Envelope {
        let id = self.ids.next_string(wall);
        self.request
            .reply(id, Timestamp::from_unix(wall), self.agent.clone(), payload)
    }
}

/// What a skill handler gets besides its `TaskRequest`.
#[derive(Clone)]
pub struct SkillContext {
    /// The request envelope.
    pub envelope: Envelope,
    /// The task this run is (`task_<ULID>`), as the final `task.response` will name it.
    pub task_id: Option<String>,
    push: Option<std::sync::Arc<dyn PushSink>>,
}

impl std::fmt::Debug for SkillContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SkillContext")
            .field("envelope", &self.envelope)
            .field("task_id", &self.task_id)
            .field("push", &self.push.is_some())
            .finish()
    }
}

impl SkillContext {
    /// The context of an invocation, without a push channel.
    #[must_use]
    pub fn new(envelope: Envelope, task_id: Option<String>) -> Self {
        Self {
            envelope,
            task_id,
            push: None,
        }
    }

    /// Lets the handler push through `sink`.
    #[must_use]
    pub fn with_push(mut self, sink: std::sync::Arc<dyn PushSink>) -> Self {
        self.push = Some(sink);
        self
    }

    /// Server push: sends `payload` to the requester while the skill runs
    /// (a `task.update`, a late `task.response`). Over HTTP without webhook
    /// subscribers there is no one to push to: [`PushError::NoChannel`](crate::ws::PushError::NoChannel).
    pub fn push(&self, payload: Payload) -> Result<(), crate::ws::PushError> {
        match &self.push {
            Some(sink) => sink.push(payload),
            None => Err(crate::ws::PushError::NoChannel),
        }
    }

    /// Pushes a `task.update` of this task with `update_type: status_change`
    /// (e.g. `working` when a long run starts, `input_required`): over
    /// WebSocket to the requester, over HTTP to the webhook subscribers.
    pub fn status(&self, status: TaskStatus) -> Result<(), crate::ws::PushError> {
        let update = crate::model::TaskUpdate {
            task_id: self.task_id.clone().unwrap_or_default(),
            update_type: crate::model::UpdateType::StatusChange,
            status,
            progress: None,
            input_request: None,
        };
        self.push(Payload::TaskUpdate(update))
    }

    /// Pushes a `task.update` of this task: `status` with an optional
    /// progress percentage and message.
    pub fn progress(
        &self,
        status: TaskStatus,
        percent: Option<f64>,
        message: Option<&str>,
    ) -> Result<(), crate::ws::PushError> {
        let mut progress = JsonObject::new();
        if let Some(p) = percent {
            progress.insert("percent".into(), p.into());
        }
        if let Some(m) = message {
            progress.insert("message".into(), m.into());
        }
        let update = crate::model::TaskUpdate {
            task_id: self.task_id.clone().unwrap_or_default(),
            update_type: crate::model::UpdateType::Progress,
            status,
            // Out-of-range percentages are clamped: a receiver would refuse them.
            progress: (!progress.is_empty()).then(|| {
                if let Some(p) = percent {
                    progress.insert("percent".into(), p.clamp(0.0, 100.0).into());
                }
                progress
            }),
            input_request: None,
        };
        self.push(Payload::TaskUpdate(update))
    }
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
    /// The run's webhook subscribers (operators' and the request's callback):
    /// push payloads become events with [`TaskWebhooks::events`](super::TaskWebhooks::events).
    /// `None`: nobody subscribed.
    pub webhooks: Option<super::TaskWebhooks>,
}

/// What a skill produced.
///
/// The rule: invalid input or a failed attempt is a result with status
/// `failed` ([`SkillResult::failed`]): the task exists, ended badly, and is
/// recorded. A request the skill refuses outright may instead be
/// [`HandlerError::invalid_params`] (JSON-RPC -32602). A bug
/// ([`HandlerError::failed`] or a panic) means the task did not run to an
/// end; the caller gets -32603.
///
/// ```
/// use asap_proto::server::{HandlerError, SkillResult};
/// use asap_proto::model::JsonObject;
/// fn upper(input: &JsonObject) -> Result<SkillResult, HandlerError> {
///     let Some(text) = input.get("text").and_then(|v| v.as_str()) else {
///         return Ok(SkillResult::failed("input.text must be a string")); // bad input: failed task
///     };
///     let mut out = JsonObject::new();
///     out.insert("text".into(), text.to_uppercase().into());
///     Ok(SkillResult::completed(out))
/// }
/// let failed = upper(&JsonObject::new()).unwrap();
/// assert_eq!(failed.status, asap_proto::task::TaskStatus::Failed);
/// assert_eq!(failed.result.unwrap()["error"], "input.text must be a string");
/// ```
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
    /// A plain failure (a bug, a dependency down): the caller gets -32603, the
    /// message only in debug mode.
    pub fn failed(message: impl Into<String>) -> Self {
        Self::Failed {
            message: message.into(),
            kind: "HandlerError".into(),
        }
    }

    /// A request the handler refuses as malformed: the caller gets -32602 with
    /// `data = {"error", "code": "asap:protocol/malformed_envelope", "message",
    /// "details"}` (the reference's `MalformedEnvelopeError`; `message` is
    /// `Malformed envelope: <reason>`). For input a skill merely cannot work
    /// with, prefer a failed task ([`SkillResult::failed`]).
    ///
    /// ```
    /// use asap_proto::server::HandlerError;
    /// let e = HandlerError::invalid_params("input.text is missing", serde_json::json!({"member": "input.text"}));
    /// let HandlerError::Asap(asap) = &e else { unreachable!() };
    /// assert_eq!(asap.code, "asap:protocol/malformed_envelope");
    /// assert_eq!(asap.message, "Malformed envelope: input.text is missing");
    /// ```
    pub fn invalid_params(reason: &str, details: Value) -> Self {
        Self::Asap(AsapError::malformed_envelope(reason, details))
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
