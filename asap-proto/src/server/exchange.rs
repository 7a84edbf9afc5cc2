//! One request from arrival to answer: the [`Exchange`] machine.
//!
//! [`Server::handle_request`](super::Server::handle_request) opens an exchange;
//! the adapter then drains [`Exchange::poll_step`] and performs each [`Step`]
//! without deciding anything, feeding the result back through the matching
//! `handle_*` input, until [`Step::Respond`].

use std::sync::Arc;
use std::time::Instant;

use http::{header, HeaderValue, Method, Response, StatusCode};

use super::admission::{self, Pending};
use super::answer;
use super::auth::Resume;
use super::body::{decode_body, BodyError, BodyPlan};
use super::handler::{HandlerError, HandlerOutcome, Invocation};
use super::metrics::{Metrics, METRICS_CONTENT_TYPE};
use super::state::{answer_state_query, apply_state_restore, task_records, TaskRecords};
use super::wellknown::{health_response, HealthReport};
use super::Shared;
use crate::auth::{AuthRejection, Identity};
use crate::model::{Payload, PayloadKind, StateQuery, StateRestore, UlidGenerator, UnixTime};
use crate::store::{ClaimOutcome, NonceRecord, ReplayClaim, SnapshotStore, StoreError};

/// Both clocks at one moment: monotonic for timers and rate limits, wall for
/// envelope timestamps and the replay window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    /// Monotonic time.
    pub monotonic: Instant,
    /// Wall-clock time.
    pub wall: UnixTime,
}

/// The transport a request arrived on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// `POST /asap` and the other HTTP routes.
    Http,
    /// A text frame on `/asap/ws` (answered byte-identically to `POST /asap`).
    WebSocket,
}

/// What the core needs to know of a request before its body.
#[derive(Debug, Clone, Copy)]
pub struct RequestHead<'a> {
    /// HTTP method.
    pub method: &'a Method,
    /// Path, without the query.
    pub path: &'a str,
    /// Request headers.
    pub headers: &'a http::HeaderMap,
    /// The peer's address: the rate-limit key (`None` counts as 127.0.0.1, as
    /// the reference does when it cannot tell).
    pub peer: Option<core::net::IpAddr>,
    /// Where the request came from.
    pub transport: Transport,
}

static POST: Method = Method::POST;

impl<'a> RequestHead<'a> {
    /// The head of one `/asap/ws` text frame: a `POST /asap` on the
    /// WebSocket transport; `headers` are those of the upgrade request.
    #[must_use]
    pub fn websocket(headers: &'a http::HeaderMap, peer: Option<core::net::IpAddr>) -> Self {
        Self {
            method: &POST,
            path: "/asap",
            headers,
            peer,
            transport: Transport::WebSocket,
        }
    }
}

/// How a `POST /asap` ended, for logs and traces.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Refused on its headers (size, rate limit, content type or encoding).
    RejectedHeaders,
    /// The body was too large, unreadable or did not decompress.
    BadBody,
    /// Answered with a JSON-RPC error before any handler ran.
    RpcError,
    /// Refused by the per-sender rate limit.
    RateLimited,
    /// Refused because a bounded store is full (the nonce store: 503, retry later).
    Overloaded,
    /// The handler (or persisting its task) failed.
    HandlerError,
    /// The handler's answer.
    Ok,
    /// A copy of an envelope already processed, answered from the dedup window.
    Duplicate,
    /// Refused by authentication (401, 403, 503 of spec §11), or the
    /// envelope sender is not the token's agent.
    Unauthorized,
}

impl Outcome {
    /// A short label (`ok`, `rpc_error`, ...).
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RejectedHeaders => "rejected_headers",
            Self::BadBody => "bad_body",
            Self::RpcError => "rpc_error",
            Self::RateLimited => "rate_limited",
            Self::Overloaded => "overloaded",
            Self::HandlerError => "handler_error",
            Self::Ok => "ok",
            Self::Duplicate => "duplicate",
            Self::Unauthorized => "unauthorized",
        }
    }
}

/// What to record in [`Metrics`] for a finished `POST /asap`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestRecord {
    /// The payload kind, once the envelope decoded.
    pub kind: Option<PayloadKind>,
    /// The envelope id, once decoded.
    pub envelope_id: Option<String>,
    /// The HTTP status answered.
    pub status: u16,
    /// How it ended.
    pub outcome: Outcome,
    /// When the request arrived (latency = the `now` it is recorded at minus this).
    pub started: Instant,
}

/// The final step: the response, and what to record.
#[derive(Debug)]
pub struct Reply {
    /// Send this.
    pub response: Response<Vec<u8>>,
    /// Record this in [`Metrics::handle_record`] (`POST /asap` only).
    pub record: Option<RequestRecord>,
    /// The body was refused before it was read whole: read and discard up to
    /// this many more bytes (bounded in time too) before answering, so a client
    /// still uploading reads this answer instead of a connection reset.
    pub drain_body: Option<usize>,
    /// The envelope ran with the dedup window's admission: hand this to
    /// [`Server::handle_answered`](super::Server::handle_answered) (core lock)
    /// and wake the copies it names (their `Step::AwaitFirst` tokens).
    pub answered: Option<Answered>,
    /// Webhook events of the answer (the final `task.response` for each
    /// subscriber): enqueue them in the outbox, then send the response.
    pub publish: Vec<crate::webhook::WebhookEvent>,
}

/// The end of a deduplicated envelope's first run, for [`Server::handle_answered`](super::Server::handle_answered).
#[derive(Debug)]
pub struct Answered {
    pub(super) ticket: crate::reliability::DedupTicket,
    /// The response body to keep for copies; `None`: the run failed, forget it.
    pub(super) body: Option<std::sync::Arc<[u8]>>,
}

/// A task-state operation the core asks the adapter to run on its snapshot store.
#[derive(Debug, Clone, PartialEq)]
pub enum StateRequest {
    /// `state.query`.
    Query(StateQuery),
    /// `state.restore`, saving the restored state as `snapshot_id` at `now`.
    Restore {
        /// The request.
        restore: StateRestore,
        /// Id of the new snapshot.
        snapshot_id: String,
        /// Its creation time.
        now: UnixTime,
    },
}

impl StateRequest {
    /// Runs the operation on `store` (on whatever thread owns it); hand the
    /// result to [`Exchange::handle_state`].
    pub fn run(self, store: &mut dyn SnapshotStore) -> Result<Payload, HandlerError> {
        match self {
            Self::Query(q) => answer_state_query(store, &q),
            Self::Restore {
                restore,
                snapshot_id,
                now,
            } => apply_state_restore(store, &restore, snapshot_id, now),
        }
    }
}

/// What to commit before an answer is sent (one transaction where the store
/// has them): the task records of a skill run, and the nonce of the envelope.
#[derive(Debug, Clone, PartialEq)]
pub struct Records {
    /// The skill run's task, snapshot and usage event (task state attached).
    pub task: Option<TaskRecords>,
    /// The envelope's nonce, so a restarted server still refuses its replay
    /// (a [`ReplayStore`](crate::store::ReplayStore); stores that do not
    /// outlive the process may skip it).
    pub nonce: Option<NonceRecord>,
    /// The answer a receiver-dedup window keeps for copies of this envelope,
    /// so a restarted server still answers them without running it again.
    pub dedup: Option<crate::store::DedupRecord>,
    /// Replay records expired at this instant may be purged in the same commit.
    pub now: UnixTime,
}

/// What the adapter does next for an [`Exchange`]. Each step but
/// [`Step::Respond`] names the input to feed back before polling again.
#[derive(Debug)]
#[must_use]
#[allow(clippy::large_enum_variant)]
pub enum Step {
    /// Read the body, at most `limit + 1` bytes (one more tells "too large"),
    /// then [`Exchange::handle_body`] or, if the transport failed,
    /// [`Exchange::handle_body_error`].
    ReadBody {
        /// Largest accepted body.
        limit: usize,
    },
    /// Take the core lock and call [`Server::handle_admission`](super::Server::handle_admission)
    /// (nonce, per-sender rate limit: state shared by every request).
    Admit,
    /// Run the handler for this invocation (it is the adapter's to move into
    /// the handler), then [`Exchange::handle_outcome`].
    Invoke(Invocation),
    /// Save these records (one commit), then [`Exchange::handle_persisted`]:
    /// an answered task, and an accepted nonce, are on disk.
    Persist(Records),
    /// Run this on the snapshot store ([`StateRequest::run`]), then [`Exchange::handle_state`].
    QueryState(StateRequest),
    /// Ask the application for its health, then [`Exchange::handle_health`].
    CheckHealth,
    /// WebSocket only: send this text frame (a MessageAck notification) on
    /// the connection now, then poll again; no input.
    Notify(String),
    /// A copy of this envelope is running: park until the answer for `token`
    /// comes back from [`Server::handle_answered`](super::Server::handle_answered)
    /// (it may already have), then [`Exchange::handle_first_answer`].
    AwaitFirst {
        /// Names this exchange among the woken ones.
        token: u64,
    },
    /// Render the metrics, then [`Exchange::handle_metrics`].
    RenderMetrics,
    /// Authentication needs this fetched (the issuer's key set, or a token
    /// introspection): perform it, then take the core lock and call
    /// [`Server::handle_fetched`](super::Server::handle_fetched).
    Fetch(http::Request<Vec<u8>>),
    /// Another request's authentication fetch is in flight: wait until one
    /// is reported (or a moment, ~100 ms), then
    /// [`Server::handle_fetch_waited`](super::Server::handle_fetch_waited).
    AwaitFetch,
    /// Replicas share replay state ([`ServerConfig::shared_replay`](super::ServerConfig::shared_replay)):
    /// decide this claim on the store ([`ReplayStore::claim`](crate::store::ReplayStore::claim)),
    /// then [`Exchange::handle_claim`].
    Claim(ReplayClaim),
    /// Another replica runs this envelope: wait until `until` (monotonic),
    /// then [`Exchange::handle_claim_waited`] (it asks the store again).
    AwaitClaim {
        /// When to look again; never at or before the `now` of the input that led here.
        until: Instant,
    },
    /// Send the response; the exchange is over.
    Respond(Reply),
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
enum Stage {
    ReadBody(BodyPlan),
    Admit(Box<Pending>),
    AwaitFirst(Box<Pending>),
    Invoke(Box<Invocation>),
    Persist(Box<Built>, Box<Records>),
    State(Box<Answering>, StateRequest),
    Health,
    Metrics,
    Fetch(Box<Resume>, http::Request<Vec<u8>>),
    AwaitFetch(Box<Resume>),
    Claim(Box<Pending>, Box<ReplayClaim>),
    AwaitClaim(Box<Pending>, Box<ReplayClaim>, Instant),
    Waiting(Waiting),
    Respond(Reply),
    Over,
}

#[derive(Debug)]
enum Waiting {
    Body(BodyPlan),
    First(Box<Pending>),
    Outcome(Box<Answering>),
    Persisted(Box<Built>),
    State(Box<Answering>),
    Health,
    Metrics,
    Auth(Box<Resume>),
    Claim(Box<Pending>, Box<ReplayClaim>),
    ClaimRetry(Box<Pending>, Box<ReplayClaim>),
}

/// An answer built before its records are committed: sent as is once they
/// are, replaced by -32603 if they cannot be.
#[derive(Debug)]
struct Built {
    response: Response<Vec<u8>>,
    outcome: Outcome,
    request_id: crate::jsonrpc::RequestId,
    publish: Vec<crate::webhook::WebhookEvent>,
}

/// What the answer needs of an invocation handed to the adapter.
#[derive(Debug)]
struct Answering {
    request_id: crate::jsonrpc::RequestId,
    /// The request envelope without its payload (ids, addresses, trace context).
    envelope: crate::model::Envelope,
    task_id: Option<String>,
    accepted_at: UnixTime,
    /// The skill's request, kept for the task records when task state is attached.
    task: Option<crate::model::TaskRequest>,
    /// The run's webhook subscribers: the final answer is published to them.
    webhooks: Option<super::TaskWebhooks>,
}

impl Answering {
    fn of(inv: &Invocation, keep_task: bool) -> Self {
        let e = &inv.envelope;
        let envelope = crate::model::Envelope {
            id: e.id.clone(),
            asap_version: e.asap_version.clone(),
            timestamp: e.timestamp,
            sender: e.sender.clone(),
            recipient: e.recipient.clone(),
            payload_type: e.payload_type.clone(),
            payload: crate::model::JsonObject::new(),
            correlation_id: e.correlation_id.clone(),
            trace_id: e.trace_id.clone(),
            requires_ack: e.requires_ack,
            extensions: e.extensions.clone(),
        };
        let task = match (&inv.payload, keep_task && inv.task_id.is_some()) {
            (Payload::TaskRequest(r), true) => Some(r.clone()),
            _ => None,
        };
        Self {
            request_id: inv.request_id.clone(),
            envelope,
            task_id: inv.task_id.clone(),
            accepted_at: inv.accepted_at,
            task,
            webhooks: inv.webhooks.clone(),
        }
    }
}

/// One request, from arrival to answer. Owned by the adapter's task; only
/// [`Step::Admit`] needs the shared [`Server`](super::Server).
#[derive(Debug)]
pub struct Exchange {
    shared: Arc<Shared>,
    ids: UlidGenerator,
    stage: Stage,
    started: Instant,
    head_only: bool,
    post: bool,
    kind: Option<PayloadKind>,
    envelope_id: Option<String>,
    transport: Transport,
    /// WebSocket: the admitted envelope to acknowledge when it is answered.
    ack: Option<crate::ws::AckTarget>,
    /// Frames to send before the next step (WebSocket acks).
    notices: std::collections::VecDeque<String>,
    /// The latest wall clock an input brought (ack timestamps).
    wall: UnixTime,
    /// This exchange's waiter token in the dedup window.
    token: u64,
    /// The dedup window admitted the envelope as new: report how it ended.
    ticket: Option<crate::reliability::DedupTicket>,
    /// An accepted nonce to commit before the answer.
    nonce: Option<NonceRecord>,
    /// The authenticated caller (auth configured, protected route).
    pub(super) identity: Option<Identity>,
    /// The envelope sender must be the identity's agent.
    bind_sender: bool,
    /// A WebSocket frame refused by authentication: answered as a JSON-RPC
    /// error carrying the frame's request id, once the frame is read.
    frame_refusal: Option<AuthRejection>,
    /// Shared replay state: when the first claim was made, and the next pause.
    claiming: Option<(Instant, std::time::Duration)>,
    /// Shared replay state: the claim this exchange won and has not yet
    /// handed to the store as an answer (released if it ends without one).
    claimed: Option<(String, String)>,
}

impl Exchange {
    pub(super) fn new(
        shared: Arc<Shared>,
        id_seed: u64,
        started: Instant,
        transport: Transport,
    ) -> Self {
        Self {
            shared,
            ids: UlidGenerator::new(id_seed),
            stage: Stage::Over,
            started,
            head_only: false,
            post: false,
            kind: None,
            envelope_id: None,
            transport,
            ack: None,
            notices: std::collections::VecDeque::new(),
            wall: UnixTime::EPOCH,
            token: id_seed,
            ticket: None,
            nonce: None,
            identity: None,
            bind_sender: false,
            frame_refusal: None,
            claiming: None,
            claimed: None,
        }
    }

    pub(super) fn refuse_frame(mut self, rejection: AuthRejection, plan: BodyPlan) -> Self {
        self.frame_refusal = Some(rejection);
        self.read_body(plan)
    }

    pub(super) fn hold_identity(&mut self, identity: Identity, bind_sender: bool) {
        self.identity = Some(identity);
        self.bind_sender = bind_sender;
    }

    pub(super) fn fetch(mut self, resume: Box<Resume>, request: http::Request<Vec<u8>>) -> Self {
        self.stage = Stage::Fetch(resume, request);
        self
    }

    pub(super) fn await_fetch(mut self, resume: Box<Resume>) -> Self {
        self.stage = Stage::AwaitFetch(resume);
        self
    }

    pub(super) fn take_resume(&mut self) -> Option<Box<Resume>> {
        match std::mem::replace(&mut self.stage, Stage::Over) {
            Stage::Waiting(Waiting::Auth(r)) => Some(r),
            other => {
                self.stage = other;
                None
            }
        }
    }

    /// Holds an accepted nonce until the answer's records are persisted.
    pub(super) fn hold_nonce(&mut self, record: NonceRecord) {
        self.nonce = Some(record);
    }

    pub(super) fn read_body(mut self, plan: BodyPlan) -> Self {
        self.post = true;
        self.stage = Stage::ReadBody(plan);
        self
    }

    pub(super) fn respond_now(
        mut self,
        response: Response<Vec<u8>>,
        post: bool,
        outcome: Outcome,
    ) -> Self {
        self.post = post;
        let drain = post.then_some(self.shared.config.max_request_size);
        self.finish_with(response, outcome, drain);
        self
    }

    pub(super) fn ask_health(mut self, head_only: bool) -> Self {
        self.head_only = head_only;
        self.stage = Stage::Health;
        self
    }

    pub(super) fn ask_metrics(mut self, head_only: bool) -> Self {
        self.head_only = head_only;
        self.stage = Stage::Metrics;
        self
    }

    pub(super) fn answer_get(mut self, response: Response<Vec<u8>>, head_only: bool) -> Self {
        self.head_only = head_only;
        self.finish_with(response, Outcome::Ok, None);
        self
    }

    /// The adapter drops this exchange unanswered (its client went away):
    /// what to hand [`Server::handle_answered`](super::Server::handle_answered)
    /// so copies waiting on it are not left waiting.
    pub fn abandon(&mut self) -> Option<Answered> {
        self.ticket
            .take()
            .map(|ticket| Answered { ticket, body: None })
    }

    /// Shared replay state: call when the exchange ends (answered or
    /// dropped). If it won a claim whose answer never went to the store (the
    /// client went away mid-run, or the envelope was answered with an error
    /// that is not kept), these records release it, so a copy runs at once
    /// instead of waiting for the lease; persist them like [`Step::Persist`]'s.
    pub fn abandon_claim(&mut self, now: UnixTime) -> Option<Records> {
        let (sender, envelope_id) = self.claimed.take()?;
        Some(Records {
            task: None,
            nonce: None,
            dedup: Some(crate::store::DedupRecord {
                sender,
                envelope_id,
                response: Vec::new(),
                expires_at_unix_ms: now.as_millis().saturating_sub(1),
            }),
            now,
        })
    }

    /// This exchange's token (the one [`Step::AwaitFirst`] names).
    #[must_use]
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The timeouts that apply to this exchange's body (for a [`BodyTimer`](super::BodyTimer)).
    #[must_use]
    pub fn timeouts(&self) -> super::Timeouts {
        self.shared.config.timeouts
    }

    /// The transport this exchange came on.
    #[must_use]
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The next thing to do. After a step other than [`Step::Respond`], feed
    /// its input before polling again; polling while an input is awaited (or
    /// after the response) yields a 500 response, so a driver loop always ends.
    pub fn poll_step(&mut self) -> Step {
        if let Some(text) = self.notices.pop_front() {
            return Step::Notify(text);
        }
        match std::mem::replace(&mut self.stage, Stage::Over) {
            Stage::ReadBody(plan) => {
                self.stage = Stage::Waiting(Waiting::Body(plan));
                Step::ReadBody {
                    limit: plan.max_body,
                }
            }
            Stage::Admit(p) => {
                self.stage = Stage::Admit(p);
                Step::Admit
            }
            Stage::AwaitFirst(p) => {
                self.stage = Stage::Waiting(Waiting::First(p));
                Step::AwaitFirst { token: self.token }
            }
            Stage::Invoke(inv) => {
                let answering = Answering::of(&inv, self.shared.routes.task_state);
                self.stage = Stage::Waiting(Waiting::Outcome(Box::new(answering)));
                Step::Invoke(*inv)
            }
            Stage::Persist(run, records) => {
                if records.dedup.is_some() {
                    // The store gets the answer (or the release) with these records.
                    self.claimed = None;
                }
                self.stage = Stage::Waiting(Waiting::Persisted(run));
                Step::Persist(*records)
            }
            Stage::State(answering, request) => {
                self.stage = Stage::Waiting(Waiting::State(answering));
                Step::QueryState(request)
            }
            Stage::Health => {
                self.stage = Stage::Waiting(Waiting::Health);
                Step::CheckHealth
            }
            Stage::Metrics => {
                self.stage = Stage::Waiting(Waiting::Metrics);
                Step::RenderMetrics
            }
            Stage::Fetch(resume, request) => {
                self.stage = Stage::Waiting(Waiting::Auth(resume));
                Step::Fetch(request)
            }
            Stage::AwaitFetch(resume) => {
                self.stage = Stage::Waiting(Waiting::Auth(resume));
                Step::AwaitFetch
            }
            Stage::Claim(pending, claim) => {
                let step = Step::Claim((*claim).clone());
                self.stage = Stage::Waiting(Waiting::Claim(pending, claim));
                step
            }
            Stage::AwaitClaim(pending, claim, until) => {
                self.stage = Stage::Waiting(Waiting::ClaimRetry(pending, claim));
                Step::AwaitClaim { until }
            }
            Stage::Respond(reply) => Step::Respond(reply),
            Stage::Waiting(_) | Stage::Over => self.misuse(),
        }
    }

    fn misuse(&mut self) -> Step {
        Step::Respond(Reply {
            response: answer::detail(
                StatusCode::INTERNAL_SERVER_ERROR,
                "exchange polled while it waits for an input (adapter bug)",
            ),
            record: None,
            drain_body: None,
            answered: None,
            publish: Vec::new(),
        })
    }

    /// Input for [`Step::ReadBody`]: the bytes read (up to `limit + 1`; more
    /// than `limit` answers 413). `now` is the wall clock (envelope timestamps).
    pub fn handle_body(&mut self, raw: &[u8], now: UnixTime) {
        let Stage::Waiting(Waiting::Body(plan)) = std::mem::replace(&mut self.stage, Stage::Over)
        else {
            return;
        };
        self.wall = now;
        let body = match decode_body(raw, plan) {
            Ok(b) => b,
            Err(e) => return self.body_failed(&e),
        };
        if let Some(r) = self.frame_refusal.take() {
            #[derive(serde::Deserialize)]
            struct IdOnly {
                id: Option<crate::jsonrpc::RequestId>,
            }
            let id = serde_json::from_slice::<IdOnly>(&body)
                .ok()
                .and_then(|v| v.id);
            return self.finish_with(frame_refusal(&r, id), Outcome::Unauthorized, None);
        }
        let pending = match admission::decode(&self.shared, &mut self.ids, &body, now) {
            Ok(p) => p,
            Err(resp) => return self.finish_with(resp, Outcome::RpcError, None),
        };
        self.kind = pending.envelope.kind();
        self.envelope_id = Some(pending.envelope.id.clone());
        if let Some(identity) = self.identity.as_ref().filter(|_| self.bind_sender) {
            if let Err(r) = identity.check_sender(pending.envelope.sender.as_str()) {
                return self.sender_refused(&r, pending.request_id);
            }
        }
        if self.shared.needs_admission {
            self.stage = Stage::Admit(Box::new(pending));
        } else {
            self.proceed(Box::new(pending), now);
        }
    }

    /// Input for [`Step::ReadBody`] when the transport failed: `TooLarge` when
    /// the adapter stopped reading past the limit, `Unreadable(text)` otherwise.
    pub fn handle_body_error(&mut self, err: BodyError) {
        if matches!(self.stage, Stage::Waiting(Waiting::Body(_))) {
            self.body_failed(&err);
        }
    }

    fn body_failed(&mut self, err: &BodyError) {
        let max = self.shared.config.max_request_size;
        // A client still uploading reads these answers only if we read on.
        let drain =
            matches!(err, BodyError::TooLarge(_) | BodyError::OverBudget { .. }).then_some(max);
        self.finish_with(err.response(max), Outcome::BadBody, drain);
    }

    /// The envelope `sender` is not the token's agent: 403 on HTTP; on a
    /// WebSocket frame (no status to carry it) -32602 with the request id.
    fn sender_refused(&mut self, r: &AuthRejection, id: crate::jsonrpc::RequestId) {
        let response = match self.transport {
            Transport::Http => r.to_response(),
            Transport::WebSocket => frame_refusal(r, Some(id)),
        };
        self.finish_with(response, Outcome::Unauthorized, None);
    }

    pub(super) fn take_pending(&mut self) -> Option<Box<Pending>> {
        match std::mem::replace(&mut self.stage, Stage::Over) {
            Stage::Admit(p) => Some(p),
            other => {
                self.stage = other;
                None
            }
        }
    }

    pub(super) fn refuse(&mut self, response: Response<Vec<u8>>, outcome: Outcome) {
        self.finish_with(response, outcome, None);
    }

    /// Routes an admitted envelope: an error decided earlier, the task-state
    /// built-ins, or the user's handler.
    pub(super) fn proceed(&mut self, pending: Box<Pending>, now: UnixTime) {
        let Pending {
            request_id,
            envelope,
            routed,
        } = *pending;
        self.arrive(&envelope, now);
        let (payload, route) = match routed {
            Ok(r) => r,
            Err(resp) => return self.finish_with(resp, Outcome::RpcError, None),
        };
        let task_id = matches!(route, admission::Target::Handler(super::Route::Skill(_)))
            .then(|| self.ids.next(now).prefixed("task_"));
        // A callback is checked before the skill runs (a refused URL is -32602).
        let webhooks = match (&task_id, &payload) {
            (Some(task_id), Payload::TaskRequest(r)) => {
                match self.shared.config.webhooks.for_task(r, &request_id) {
                    Ok(targets) if targets.is_empty() => None,
                    Ok(targets) => Some(super::TaskWebhooks::new(
                        task_id.clone(),
                        self.shared.manifest.manifest().id.clone(),
                        envelope.clone(),
                        targets,
                    )),
                    Err(e) => {
                        return self.finish_with(answer::rpc_error(&e), Outcome::RpcError, None)
                    }
                }
            }
            _ => None,
        };
        let state = match (&route, &payload) {
            (admission::Target::TaskState, Payload::StateQuery(q)) => {
                Some(StateRequest::Query(q.clone()))
            }
            (admission::Target::TaskState, Payload::StateRestore(r)) => {
                Some(StateRequest::Restore {
                    restore: r.clone(),
                    snapshot_id: self.ids.next(now).prefixed("snap_"),
                    now,
                })
            }
            _ => None,
        };
        let inv = Invocation {
            request_id,
            envelope,
            payload,
            route: match route {
                admission::Target::Handler(r) => r,
                admission::Target::TaskState => {
                    super::Route::Kind(self.kind.unwrap_or(PayloadKind::StateQuery))
                }
            },
            task_id,
            accepted_at: now,
            webhooks,
        };
        self.stage = match state {
            Some(request) => Stage::State(Box::new(Answering::of(&inv, false)), request),
            None => Stage::Invoke(Box::new(inv)),
        };
    }

    /// Input for [`Step::Invoke`]: what the handler of the invocation did.
    pub fn handle_outcome(&mut self, outcome: HandlerOutcome, now: UnixTime) {
        let Stage::Waiting(Waiting::Outcome(mut answering)) =
            std::mem::replace(&mut self.stage, Stage::Over)
        else {
            return;
        };
        let task = match (
            &outcome,
            answering.task.take(),
            answering.task_id.as_deref(),
        ) {
            (HandlerOutcome::Skill(result), Some(request), Some(task_id)) => {
                let snapshot_id = self.ids.next(now).prefixed("snap_");
                Some(task_records(
                    task_id,
                    snapshot_id,
                    &answering.envelope,
                    request,
                    result,
                    answering.accepted_at,
                    now,
                ))
            }
            _ => None,
        };
        self.persist_then_reply(*answering, outcome, task, now);
    }

    /// Answers now, or first yields [`Step::Persist`] when there is a task, a
    /// nonce or a kept answer to commit (the answer is built first, so the
    /// dedup record holds the very bytes sent).
    fn persist_then_reply(
        &mut self,
        answering: Answering,
        outcome: HandlerOutcome,
        task: Option<TaskRecords>,
        now: UnixTime,
    ) {
        let nonce = self.nonce.take();
        let failed = matches!(outcome, HandlerOutcome::Failed(_));
        let keeps_answer = self.ticket.is_some() && self.shared.routes.task_state && !failed;
        // Replicas share the claim: a failed run releases it in the store
        // (as the local window forgets it), so a copy may run it again.
        let releases =
            self.ticket.is_some() && failed && self.shared.config.shared_replay.is_some();
        if task.is_none() && nonce.is_none() && !keeps_answer && !releases {
            return self.reply(answering, outcome, now);
        }
        let key = (
            answering.envelope.sender.to_string(),
            answering.envelope.id.clone(),
        );
        let request_id = answering.request_id.clone();
        let (response, outcome, publish) = self.build_reply(answering, outcome, now);
        let dedup = match (&self.shared.config.dedup, keeps_answer) {
            (Some(config), true) => Some(crate::store::DedupRecord {
                sender: key.0,
                envelope_id: key.1,
                response: self.kept_answer(response.body()).to_vec(),
                expires_at_unix_ms: now.saturating_add(config.max_age).as_millis(),
            }),
            _ if releases => Some(crate::store::DedupRecord {
                sender: key.0,
                envelope_id: key.1,
                response: Vec::new(),
                expires_at_unix_ms: now.as_millis().saturating_sub(1),
            }),
            _ => None,
        };
        let records = Records {
            task,
            nonce,
            dedup,
            now,
        };
        let built = Built {
            response,
            outcome,
            request_id,
            publish,
        };
        self.stage = Stage::Persist(Box::new(built), Box::new(records));
    }

    /// Input for [`Step::Persist`]: whether the records were committed. A
    /// failure answers -32603: the caller must not believe an unsaved task.
    pub fn handle_persisted(&mut self, result: Result<(), StoreError>, now: UnixTime) {
        let Stage::Waiting(Waiting::Persisted(built)) =
            std::mem::replace(&mut self.stage, Stage::Over)
        else {
            return;
        };
        self.wall = now;
        let Built {
            response,
            outcome,
            request_id,
            publish,
        } = *built;
        match result {
            Ok(()) => self.finish_publishing(response, outcome, publish),
            Err(e) => {
                let err = HandlerError::failed(format!("could not persist task state: {e}"));
                let config = &self.shared.config;
                let r = answer::rpc_error(&answer::handler_error(config, Some(request_id), &err));
                self.finish_with(r, Outcome::HandlerError, None);
            }
        }
    }

    /// Input for [`Step::QueryState`]: the result of [`StateRequest::run`]
    /// (`Err` also when the store could not be reached).
    pub fn handle_state(&mut self, result: Result<Payload, HandlerError>, now: UnixTime) {
        let Stage::Waiting(Waiting::State(answering)) =
            std::mem::replace(&mut self.stage, Stage::Over)
        else {
            return;
        };
        let outcome = result.map_or_else(HandlerOutcome::Failed, HandlerOutcome::Reply);
        self.persist_then_reply(*answering, outcome, None, now);
    }

    /// Input for [`Step::CheckHealth`]: the application's verdict.
    pub fn handle_health(&mut self, report: HealthReport, now: Instant) {
        if matches!(self.stage, Stage::Waiting(Waiting::Health)) {
            let uptime = now.saturating_duration_since(self.shared.started);
            let response = health_response(self.shared.manifest.manifest(), uptime, report);
            self.finish_with(response, Outcome::Ok, None);
        }
    }

    /// Input for [`Step::RenderMetrics`]: the metrics to serve.
    pub fn handle_metrics(&mut self, metrics: &Metrics) {
        if matches!(self.stage, Stage::Waiting(Waiting::Metrics)) {
            let response = Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, METRICS_CONTENT_TYPE)
                .body(metrics.render().into_bytes())
                .unwrap_or_default();
            self.finish_with(response, Outcome::Ok, None);
        }
    }

    /// An envelope was admitted: over WebSocket, acknowledge its arrival
    /// (spec 13.3) and remember to settle the ack with the answer.
    fn arrive(&mut self, envelope: &crate::model::Envelope, now: UnixTime) {
        self.wall = now;
        if self.transport == Transport::WebSocket
            && envelope.requires_ack
            && !envelope.id.is_empty()
        {
            let target = crate::ws::AckTarget {
                envelope_id: envelope.id.clone(),
                sender: envelope.sender.clone(),
                agent: self.shared.manifest.manifest().id.clone(),
                asap_version: envelope.asap_version.clone(),
            };
            let frame = self.ack_frame(&target, crate::model::AckStatus::Received, None);
            self.notices.push_back(frame);
            self.ack = Some(target);
        }
    }

    /// The dedup window admitted the envelope as new.
    pub(super) fn admitted_new(&mut self, ticket: crate::reliability::DedupTicket) {
        self.ticket = Some(ticket);
    }

    /// The dedup window says a copy is running: park (`Step::AwaitFirst`).
    pub(super) fn await_first(&mut self, pending: Box<Pending>) {
        self.stage = Stage::AwaitFirst(pending);
    }

    /// Answers a copy of an envelope already processed with the first answer
    /// (`None`: it was processed but its answer is not kept, or the first run
    /// failed), re-addressed to this request's JSON-RPC id.
    pub(super) fn answer_copy(
        &mut self,
        pending: Box<Pending>,
        first: Option<&[u8]>,
        now: UnixTime,
    ) {
        let Pending {
            request_id,
            envelope,
            ..
        } = *pending;
        self.arrive(&envelope, now);
        let response = match first.filter(|body| !body.is_empty()) {
            Some(body) => answer::readdress(body, &request_id),
            None => answer::rpc_error(&crate::jsonrpc::ErrorResponse::new(
                crate::jsonrpc::codes::INTERNAL_ERROR,
                Some(serde_json::json!({"error": format!(
                    "envelope {} from {} was already received; its first answer is not available (it failed or was too large to keep): send a new envelope with a new id to run it again",
                    envelope.id, envelope.sender
                )})),
                Some(request_id),
            )),
        };
        self.finish_with(response, Outcome::Duplicate, None);
    }

    /// Shared replay state: claim `pending` on the store before it runs.
    pub(super) fn claim(&mut self, pending: Box<Pending>, claim: ReplayClaim, now: Instant) {
        let poll = self
            .shared
            .config
            .shared_replay
            .map_or(std::time::Duration::from_millis(20), |c| c.claim_poll);
        self.claiming = Some((now, poll));
        self.stage = Stage::Claim(pending, Box::new(claim));
    }

    /// Input for [`Step::Claim`]: what the store decided (an error fails
    /// closed: 503, nothing runs). `now` is both clocks at the answer.
    pub fn handle_claim(&mut self, result: Result<ClaimOutcome, StoreError>, now: Now) {
        let Stage::Waiting(Waiting::Claim(pending, claim)) =
            std::mem::replace(&mut self.stage, Stage::Over)
        else {
            return;
        };
        match result {
            Ok(ClaimOutcome::Won) => {
                self.claimed = claim
                    .dedup
                    .as_ref()
                    .map(|d| (d.sender.clone(), d.envelope_id.clone()));
                self.proceed(pending, now.wall);
            }
            Ok(ClaimOutcome::Answered(first)) => self.answer_copy(pending, Some(&first), now.wall),
            Ok(ClaimOutcome::NonceReplayed) => {
                let nonce = claim.nonce.as_ref().map_or("", |n| n.nonce.as_str());
                let err = super::replay::duplicate_nonce(nonce, &pending.envelope.id);
                let body = crate::jsonrpc::ErrorResponse::invalid_params_asap(
                    "Invalid envelope nonce",
                    &err,
                    Some(pending.request_id.clone()),
                );
                self.release_and_refuse(answer::rpc_error(&body), Outcome::RpcError);
            }
            Ok(ClaimOutcome::Running) => {
                let config = self.shared.config.shared_replay.unwrap_or_default();
                let (since, pause) = self.claiming.unwrap_or((now.monotonic, config.claim_poll));
                let waited = now.monotonic.saturating_duration_since(since);
                if waited >= config.claim_wait {
                    let e = &pending.envelope;
                    let why = format!(
                        "envelope {} from {} is being processed by another replica; send the same envelope again in a moment to get its first answer",
                        e.id, e.sender
                    );
                    return self.release_and_refuse(answer::busy(1, &why), Outcome::Overloaded);
                }
                // Never a deadline at or before `now`.
                let pause = pause.max(std::time::Duration::from_millis(1));
                let next = (pause * 2).min(std::time::Duration::from_millis(500));
                self.claiming = Some((since, next));
                self.stage = Stage::AwaitClaim(pending, claim, now.monotonic + pause);
            }
            Err(e) => {
                let why = format!(
                    "the shared replay store could not decide whether envelope {} was already received ({e}); nothing ran: retry",
                    pending.envelope.id
                );
                self.release_and_refuse(answer::busy(1, &why), Outcome::Overloaded);
            }
        }
    }

    /// Input for [`Step::AwaitClaim`]: the wait is over; the claim is asked
    /// again with the wall clock of `now`.
    pub fn handle_claim_waited(&mut self, now: Now) {
        let Stage::Waiting(Waiting::ClaimRetry(pending, mut claim)) =
            std::mem::replace(&mut self.stage, Stage::Over)
        else {
            return;
        };
        claim.now = now.wall;
        self.stage = Stage::Claim(pending, claim);
    }

    /// Refuses an envelope this server admitted into its own dedup window:
    /// the window forgets it (a refusal is not its answer).
    fn release_and_refuse(&mut self, response: Response<Vec<u8>>, outcome: Outcome) {
        let ticket = self.ticket.take();
        self.finish_with(response, outcome, None);
        if let (Some(ticket), Stage::Respond(reply)) = (ticket, &mut self.stage) {
            reply.answered = Some(Answered { ticket, body: None });
        }
    }

    /// Input for [`Step::AwaitFirst`]: the first copy's answer body, as
    /// [`Server::handle_answered`](super::Server::handle_answered) handed it
    /// out for this exchange's token (`None` when the first run failed).
    pub fn handle_first_answer(&mut self, first: Option<&[u8]>, now: UnixTime) {
        let Stage::Waiting(Waiting::First(pending)) =
            std::mem::replace(&mut self.stage, Stage::Over)
        else {
            return;
        };
        self.answer_copy(pending, first, now);
    }

    fn ack_frame(
        &mut self,
        target: &crate::ws::AckTarget,
        status: crate::model::AckStatus,
        error: Option<String>,
    ) -> String {
        let id = self.ids.next_string(self.wall);
        target.frame(
            id,
            crate::model::Timestamp::from_unix(self.wall),
            status,
            error,
        )
    }

    /// The bytes of an answer the dedup window keeps: all of it, or nothing
    /// past `max_answer_bytes` (empty: processed, answer not kept).
    fn kept_answer<'b>(&self, body: &'b [u8]) -> &'b [u8] {
        let max = self.shared.config.dedup.map_or(0, |d| d.max_answer_bytes);
        if body.len() <= max {
            body
        } else {
            &[]
        }
    }

    fn reply(&mut self, answering: Answering, outcome: HandlerOutcome, now: UnixTime) {
        let (response, outcome, publish) = self.build_reply(answering, outcome, now);
        self.finish_publishing(response, outcome, publish);
    }

    /// Finishes with `response`, the webhook events of the answer riding on the reply.
    fn finish_publishing(
        &mut self,
        response: Response<Vec<u8>>,
        outcome: Outcome,
        publish: Vec<crate::webhook::WebhookEvent>,
    ) {
        self.finish_with(response, outcome, None);
        if let Stage::Respond(reply) = &mut self.stage {
            reply.publish = publish;
        }
    }

    fn build_reply(
        &mut self,
        answering: Answering,
        outcome: HandlerOutcome,
        now: UnixTime,
    ) -> (
        Response<Vec<u8>>,
        Outcome,
        Vec<crate::webhook::WebhookEvent>,
    ) {
        self.wall = now;
        let ok = !matches!(outcome, HandlerOutcome::Failed(_));
        let webhooks = answering.webhooks.clone();
        let shared = Arc::clone(&self.shared);
        let response = answer::reply(
            &shared.config,
            &shared.manifest.manifest().id,
            &mut self.ids,
            answering.request_id,
            &answering.envelope,
            answering.task_id,
            outcome,
            now,
        );
        let outcome = if ok {
            Outcome::Ok
        } else {
            Outcome::HandlerError
        };
        let publish = match (&webhooks, ok) {
            (Some(w), true) => w.response_events(response.body()),
            _ => Vec::new(),
        };
        (response, outcome, publish)
    }

    fn finish_with(
        &mut self,
        mut response: Response<Vec<u8>>,
        outcome: Outcome,
        drain_body: Option<usize>,
    ) {
        if self.head_only {
            // HEAD: the GET's headers, with the length the body would have had.
            let len = response.body().len();
            response.body_mut().clear();
            if response.status() != StatusCode::NOT_MODIFIED {
                response
                    .headers_mut()
                    .insert(header::CONTENT_LENGTH, HeaderValue::from(len));
            }
        }
        if let Some(target) = self.ack.take() {
            // The final ack goes out just before the response it settles.
            let settled = matches!(outcome, Outcome::Ok | Outcome::Duplicate)
                && response.status() == StatusCode::OK
                && !answer::is_error_body(response.body());
            let (status, error) = if settled {
                (crate::model::AckStatus::Processed, None)
            } else {
                let why = answer::rejection_reason(response.body());
                (crate::model::AckStatus::Rejected, Some(why))
            };
            let frame = self.ack_frame(&target, status, error);
            self.notices.push_back(frame);
        }
        let keep = self.kept_answer(response.body());
        let answered = self.ticket.take().map(|ticket| Answered {
            ticket,
            // A crash or an unsaved task is not an answer to keep: a copy may run it again.
            body: (outcome != Outcome::HandlerError).then(|| std::sync::Arc::from(keep)),
        });
        let record = self.post.then(|| RequestRecord {
            kind: self.kind,
            envelope_id: self.envelope_id.take(),
            status: response.status().as_u16(),
            outcome,
            started: self.started,
        });
        self.stage = Stage::Respond(Reply {
            response,
            record,
            drain_body,
            answered,
            publish: Vec::new(),
        });
    }
}

/// An auth refusal as a WebSocket frame answer (a frame has no status): the
/// reference's bearer-mode errors (spec 11.1), -32602 for 403, else -32600,
/// `data: {"error": detail, "status_code": status}`.
fn frame_refusal(r: &AuthRejection, id: Option<crate::jsonrpc::RequestId>) -> Response<Vec<u8>> {
    use crate::jsonrpc::codes;
    let status = r.status();
    let code = if status == StatusCode::FORBIDDEN {
        codes::INVALID_PARAMS
    } else {
        codes::INVALID_REQUEST
    };
    let data = serde_json::json!({"error": r.detail(), "status_code": status.as_u16()});
    answer::rpc_error(&crate::jsonrpc::ErrorResponse::new(code, Some(data), id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{AgentUrn, Manifest, Skill};
    use crate::server::{NonceMode, Server, ServerConfig, SkillResult};

    const BODY: &[u8] = br#"{"jsonrpc":"2.0","method":"asap.send","id":1,"params":{"envelope":{"asap_version":"0.1","timestamp":"2026-01-01T00:00:00Z","sender":"urn:asap:agent:c","recipient":"urn:asap:agent:x","payload_type":"task.request","extensions":{"nonce":"n1"},"payload":{"conversation_id":"c","skill_id":"echo","input":{"k":1}}}}}"#;

    fn now() -> Now {
        Now {
            monotonic: crate::test_clock::base(),
            wall: UnixTime::from_secs(1_767_225_600),
        }
    }

    fn server(config: ServerConfig, task_state: bool) -> Server {
        let mut m = Manifest::new(
            AgentUrn::new("urn:asap:agent:x").unwrap(),
            "x",
            "1.0.0",
            "x",
            "http://127.0.0.1/asap",
        );
        m.capabilities.skills.push(Skill::new("echo", "echo"));
        let mut s = Server::new(
            m,
            ServerConfig {
                rate_limit: None,
                ..config
            },
            now().monotonic,
            5,
        );
        s.routes_mut().add_skill("echo");
        if task_state {
            s.routes_mut().attach_task_state();
        }
        s
    }

    /// No shared state to consult after decoding: no `Step::Admit`.
    fn no_dedup() -> ServerConfig {
        ServerConfig {
            dedup: None,
            ..ServerConfig::default()
        }
    }

    fn open(s: &mut Server, method: &Method, path: &str) -> Exchange {
        let headers = http::HeaderMap::new();
        let head = RequestHead {
            method,
            path,
            headers: &headers,
            peer: None,
            transport: Transport::Http,
        };
        s.handle_request(&head, now())
    }

    fn json(r: &Response<Vec<u8>>) -> serde_json::Value {
        serde_json::from_slice(r.body()).unwrap()
    }

    #[test]
    fn a_skill_run_is_persisted_before_it_is_answered() {
        let mut s = server(no_dedup(), true);
        let mut ex = open(&mut s, &Method::POST, "/asap");
        assert!(
            matches!(ex.poll_step(), Step::ReadBody { limit } if limit == crate::server::DEFAULT_MAX_REQUEST_SIZE)
        );
        ex.handle_body(BODY, now().wall);
        let Step::Invoke(inv) = ex.poll_step() else {
            panic!("no Admit without nonce, sender limits or dedup")
        };
        let task_id = inv.task_id.clone().unwrap();
        drop(inv); // the adapter's to move into the handler
        ex.handle_outcome(
            HandlerOutcome::Skill(SkillResult::echo_input(crate::model::JsonObject::new())),
            now().wall,
        );
        let Step::Persist(records) = ex.poll_step() else {
            panic!("expected Persist")
        };
        let task = records.task.expect("task records");
        assert_eq!(task.snapshot.task_id, task_id);
        assert_eq!(task.usage.task_id, task_id);
        assert_eq!(records.nonce, None, "nonces are off");
        // Until the adapter reports the commit, there is no answer.
        assert!(matches!(ex.poll_step(), Step::Respond(r) if r.response.status() == 500));
    }

    #[test]
    fn an_unsaved_task_is_an_internal_error_and_a_saved_one_is_answered() {
        for saved in [true, false] {
            let mut s = server(no_dedup(), true);
            let mut ex = open(&mut s, &Method::POST, "/asap");
            let _ = ex.poll_step();
            ex.handle_body(BODY, now().wall);
            let Step::Invoke(inv) = ex.poll_step() else {
                panic!()
            };
            let o = HandlerOutcome::Skill(SkillResult::echo(&inv));
            ex.handle_outcome(o, now().wall);
            let Step::Persist(_) = ex.poll_step() else {
                panic!()
            };
            let result = if saved {
                Ok(())
            } else {
                Err(StoreError::Backend("disk full".into()))
            };
            ex.handle_persisted(result, now().wall);
            let Step::Respond(reply) = ex.poll_step() else {
                panic!()
            };
            let v = json(&reply.response);
            assert_eq!(v.get("result").is_some(), saved, "{v}");
            let record = reply.record.unwrap();
            assert_eq!(
                record.outcome,
                if saved {
                    Outcome::Ok
                } else {
                    Outcome::HandlerError
                }
            );
            assert_eq!(record.kind, Some(PayloadKind::TaskRequest));
        }
    }

    #[test]
    fn nonce_checks_need_the_shared_server_and_come_before_routing_errors() {
        let mut s = server(
            ServerConfig {
                nonce: NonceMode::WhenPresent,
                ..ServerConfig::default()
            },
            false,
        );
        let unknown_skill = std::str::from_utf8(BODY)
            .unwrap()
            .replace("\"echo\"", "\"nope\"");
        for (body, want) in [
            (BODY.to_vec(), None),
            (BODY.to_vec(), Some(-32602)),
            (unknown_skill.into_bytes(), Some(-32602)),
        ] {
            let mut ex = open(&mut s, &Method::POST, "/asap");
            let _ = ex.poll_step();
            ex.handle_body(&body, now().wall);
            assert!(matches!(ex.poll_step(), Step::Admit));
            s.handle_admission(&mut ex, now());
            match (ex.poll_step(), want) {
                (Step::Invoke(_), None) => {}
                (Step::Respond(r), Some(code)) => {
                    let v = json(&r.response);
                    assert_eq!(v["error"]["code"], code);
                    assert_eq!(
                        v["error"]["data"]["code"], "asap:protocol/invalid_nonce",
                        "{v}"
                    );
                }
                (other, _) => panic!("{other:?}"),
            }
        }
    }

    fn nonce_server(nonce: NonceMode, max_nonces: usize, task_state: bool) -> Server {
        server(
            ServerConfig {
                nonce,
                max_nonces,
                ..ServerConfig::default()
            },
            task_state,
        )
    }

    /// Drives `body` through admission to the step after it.
    fn admitted(s: &mut Server, body: &[u8]) -> (Exchange, Step) {
        let mut ex = open(s, &Method::POST, "/asap");
        let _ = ex.poll_step();
        ex.handle_body(body, now().wall);
        assert!(matches!(ex.poll_step(), Step::Admit));
        s.handle_admission(&mut ex, now());
        let step = ex.poll_step();
        (ex, step)
    }

    fn with_nonce(nonce: &str) -> Vec<u8> {
        std::str::from_utf8(BODY)
            .unwrap()
            .replace("\"n1\"", &format!("\"{nonce}\""))
            .into_bytes()
    }

    #[test]
    fn an_accepted_nonce_is_committed_with_the_task_records() {
        let mut s = nonce_server(NonceMode::WhenPresent, 8, true);
        let (mut ex, Step::Invoke(inv)) = admitted(&mut s, BODY) else {
            panic!("expected Invoke")
        };
        ex.handle_outcome(HandlerOutcome::Skill(SkillResult::echo(&inv)), now().wall);
        let Step::Persist(records) = ex.poll_step() else {
            panic!("expected Persist")
        };
        assert!(records.task.is_some());
        assert_eq!(records.now, now().wall);
        let nonce = records.nonce.expect("the nonce is persisted");
        assert_eq!(
            (nonce.sender.as_str(), nonce.nonce.as_str()),
            ("urn:asap:agent:c", "n1")
        );
        // The envelope's timestamp (2026-01-01T00:00:00Z) plus 300 s.
        assert_eq!(nonce.expires_at_unix_ms, 1_767_225_900_000);
        ex.handle_persisted(Ok(()), now().wall);
        assert!(
            matches!(ex.poll_step(), Step::Respond(r) if json(&r.response).get("result").is_some())
        );
    }

    #[test]
    fn a_nonce_without_task_records_is_still_committed_before_the_answer() {
        // A handler error: the envelope was admitted, its nonce is used up.
        let mut s = nonce_server(NonceMode::Required, 8, true);
        let (mut ex, Step::Invoke(_)) = admitted(&mut s, &with_nonce("n2")) else {
            panic!("expected Invoke")
        };
        ex.handle_outcome(
            HandlerOutcome::Failed(HandlerError::failed("boom")),
            now().wall,
        );
        let Step::Persist(records) = ex.poll_step() else {
            panic!("expected Persist for the nonce")
        };
        assert_eq!(records.task, None);
        assert_eq!(records.nonce.map(|n| n.nonce), Some("n2".to_owned()));
        // Not committed: -32603, and the nonce stays refused in memory.
        ex.handle_persisted(Err(StoreError::Backend("disk full".into())), now().wall);
        let Step::Respond(reply) = ex.poll_step() else {
            panic!()
        };
        assert_eq!(json(&reply.response)["error"]["code"], -32603);
        let (_, Step::Respond(again)) = admitted(&mut s, &with_nonce("n2")) else {
            panic!()
        };
        assert_eq!(
            json(&again.response)["error"]["data"]["code"],
            "asap:protocol/invalid_nonce"
        );
    }

    #[test]
    fn without_task_state_nonces_live_in_memory_only() {
        let mut s = nonce_server(NonceMode::WhenPresent, 8, false);
        let (mut ex, Step::Invoke(inv)) = admitted(&mut s, BODY) else {
            panic!("expected Invoke")
        };
        ex.handle_outcome(HandlerOutcome::Skill(SkillResult::echo(&inv)), now().wall);
        assert!(matches!(ex.poll_step(), Step::Respond(r) if r.response.status() == 200));
    }

    #[test]
    fn a_required_nonce_that_is_missing_is_invalid_params() {
        let mut s = nonce_server(NonceMode::Required, 8, true);
        let body = std::str::from_utf8(BODY)
            .unwrap()
            .replace(r#""extensions":{"nonce":"n1"},"#, "");
        let (_, Step::Respond(reply)) = admitted(&mut s, body.as_bytes()) else {
            panic!("expected a refusal")
        };
        let v = json(&reply.response);
        assert_eq!(v["error"]["code"], -32602, "{v}");
        assert_eq!(v["error"]["data"]["error"], "Invalid envelope nonce");
        assert_eq!(
            v["error"]["data"]["details"]["nonce"],
            serde_json::Value::Null
        );
        assert_eq!(reply.record.unwrap().outcome, Outcome::RpcError);
        // The reference's mode lets it through.
        let mut s = nonce_server(NonceMode::WhenPresent, 8, true);
        assert!(matches!(
            admitted(&mut s, body.as_bytes()).1,
            Step::Invoke(_)
        ));
    }

    #[test]
    fn a_full_nonce_store_answers_503_with_retry_after_and_forgets_nothing() {
        let mut s = nonce_server(NonceMode::WhenPresent, 1, false);
        assert!(matches!(
            admitted(&mut s, &with_nonce("a")).1,
            Step::Invoke(_)
        ));
        let (_, Step::Respond(reply)) = admitted(&mut s, &with_nonce("b")) else {
            panic!("expected a refusal")
        };
        assert_eq!(reply.response.status(), 503);
        // "a" was stamped 2026-01-01T00:00:00Z = now: it leaves 300 s + 1 µs later.
        assert_eq!(reply.response.headers()[header::RETRY_AFTER], "301");
        let v = json(&reply.response);
        assert_eq!(v["code"], "asap:transport/nonce_store_full", "{v}");
        assert_eq!(
            v["details"],
            serde_json::json!({"max_nonces": 1, "retry_after_seconds": 301})
        );
        assert_eq!(reply.record.unwrap().outcome, Outcome::Overloaded);
        assert_eq!(Outcome::Overloaded.as_str(), "overloaded");
        let (_, Step::Respond(again)) = admitted(&mut s, &with_nonce("a")) else {
            panic!()
        };
        assert_eq!(json(&again.response)["error"]["code"], -32602);
        assert_eq!(s.nonces().len(), 1);
    }

    #[test]
    fn restored_nonces_are_refused_after_a_restart() {
        use crate::server::AgentParts;
        let mut m = Manifest::new(
            AgentUrn::new("urn:asap:agent:x").unwrap(),
            "x",
            "1.0.0",
            "x",
            "http://127.0.0.1/asap",
        );
        m.capabilities.skills.push(Skill::new("echo", "echo"));
        let record = crate::store::NonceRecord {
            sender: "urn:asap:agent:c".into(),
            nonce: "n1".into(),
            expires_at_unix_ms: 1_767_225_900_000,
        };
        for (mode, refused) in [(NonceMode::WhenPresent, true), (NonceMode::Off, false)] {
            let mut parts: AgentParts<(), (), (), ()> = AgentParts::new(m.clone());
            parts.config = ServerConfig {
                nonce: mode,
                rate_limit: None,
                dedup: None,
                ..ServerConfig::default()
            };
            parts.handlers.add_skill("echo", ());
            parts.restored_nonces = vec![record.clone()];
            let (mut s, _) = parts.into_server(now().monotonic, 1);
            assert_eq!(s.nonces().len(), usize::from(refused));
            let mut ex = open(&mut s, &Method::POST, "/asap");
            let _ = ex.poll_step();
            ex.handle_body(BODY, now().wall);
            if mode == NonceMode::Off {
                assert!(matches!(ex.poll_step(), Step::Invoke(_)));
                continue;
            }
            assert!(matches!(ex.poll_step(), Step::Admit));
            s.handle_admission(&mut ex, now());
            let Step::Respond(reply) = ex.poll_step() else {
                panic!("the restored nonce must be refused")
            };
            assert_eq!(
                json(&reply.response)["error"]["data"]["message"],
                "Duplicate nonce detected: n1"
            );
        }
    }

    #[test]
    fn state_queries_go_to_the_store_and_unknown_tasks_are_named() {
        let mut s = server(no_dedup(), true);
        let body = std::str::from_utf8(BODY).unwrap().replace(
            r#""payload_type":"task.request","extensions":{"nonce":"n1"},"payload":{"conversation_id":"c","skill_id":"echo","input":{"k":1}}"#,
            r#""payload_type":"state.query","payload":{"task_id":"task_x"}"#,
        );
        let mut ex = open(&mut s, &Method::POST, "/asap");
        let _ = ex.poll_step();
        ex.handle_body(body.as_bytes(), now().wall);
        let Step::QueryState(request) = ex.poll_step() else {
            panic!("expected QueryState")
        };
        let mut store = crate::store::MemorySnapshotStore::new();
        ex.handle_state(request.run(&mut store), now().wall);
        let Step::Respond(reply) = ex.poll_step() else {
            panic!()
        };
        let v = json(&reply.response);
        assert_eq!(v["error"]["data"]["code"], "asap:task/not_found", "{v}");
    }

    #[test]
    fn get_routes_answer_in_the_first_call_and_are_not_recorded() {
        let mut s = server(ServerConfig::default(), false);
        for (method, path, status) in [
            (Method::GET, "/health", 200),
            (Method::HEAD, "/ready", 200),
            (Method::GET, "/nope", 404),
            (Method::DELETE, "/health", 405),
            (Method::GET, "/asap", 405),
        ] {
            let mut ex = open(&mut s, &method, path);
            let Step::Respond(reply) = ex.poll_step() else {
                panic!("{method} {path}")
            };
            assert_eq!(reply.response.status(), status, "{method} {path}");
            assert!(reply.record.is_none());
            if method == Method::HEAD {
                assert!(reply.response.body().is_empty());
                assert_eq!(reply.response.headers()[header::CONTENT_LENGTH], "15");
            }
        }
        let mut ex = open(&mut s, &Method::HEAD, "/.well-known/asap/health");
        assert!(matches!(ex.poll_step(), Step::CheckHealth));
        ex.handle_health(
            HealthReport {
                unhealthy: true,
                load: None,
            },
            now().monotonic,
        );
        let Step::Respond(reply) = ex.poll_step() else {
            panic!()
        };
        assert_eq!(reply.response.status(), 503);
        assert!(reply.response.body().is_empty());
    }

    #[test]
    fn a_head_over_the_header_cap_is_431_on_every_route() {
        let mut s = server(
            ServerConfig {
                max_header_bytes: 200,
                ..ServerConfig::default()
            },
            false,
        );
        let mut headers = http::HeaderMap::new();
        headers.insert("x-pad", HeaderValue::from_str(&"a".repeat(150)).unwrap());
        for (method, path) in [(Method::POST, "/asap"), (Method::GET, "/health")] {
            let head = RequestHead {
                method: &method,
                path,
                headers: &headers,
                peer: None,
                transport: Transport::Http,
            };
            let mut ex = s.handle_request(&head, now());
            let step = ex.poll_step();
            assert!(
                matches!(&step, Step::ReadBody { .. })
                    || matches!(&step, Step::Respond(r) if r.response.status() == 200),
                "{step:?}"
            );
        }
        headers.insert("x-more", HeaderValue::from_str(&"b".repeat(40)).unwrap());
        let head = RequestHead {
            method: &Method::POST,
            path: "/asap",
            headers: &headers,
            peer: None,
            transport: Transport::Http,
        };
        let mut ex = s.handle_request(&head, now());
        let Step::Respond(reply) = ex.poll_step() else {
            panic!()
        };
        assert_eq!(reply.response.status(), 431);
        assert_eq!(
            reply.response.body(),
            br#"{"detail":"Request headers (232 bytes) exceed maximum (200 bytes)"}"#
        );
    }

    #[test]
    fn refusals_on_headers_are_recorded_and_ask_for_the_body_to_be_drained() {
        let mut s = server(
            ServerConfig {
                max_request_size: 10,
                ..ServerConfig::default()
            },
            false,
        );
        let mut headers = http::HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(11));
        let head = RequestHead {
            method: &Method::POST,
            path: "/asap",
            headers: &headers,
            peer: None,
            transport: Transport::Http,
        };
        let mut ex = s.handle_request(&head, now());
        let Step::Respond(reply) = ex.poll_step() else {
            panic!()
        };
        assert_eq!(reply.response.status(), 413);
        assert_eq!(reply.drain_body, Some(10));
        assert_eq!(reply.record.unwrap().outcome, Outcome::RejectedHeaders);
        // A body longer than the limit, read anyway: 413 too.
        let mut ex = open(&mut s, &Method::POST, "/asap");
        let _ = ex.poll_step();
        ex.handle_body(&[b' '; 11], now().wall);
        let Step::Respond(reply) = ex.poll_step() else {
            panic!()
        };
        assert_eq!(reply.response.status(), 413);
        // A transport failure says so, in one text for every adapter.
        let mut ex = open(&mut s, &Method::POST, "/asap");
        let _ = ex.poll_step();
        ex.handle_body_error(BodyError::Unreadable("connection reset".into()));
        let Step::Respond(reply) = ex.poll_step() else {
            panic!()
        };
        assert_eq!(
            reply.response.body(),
            br#"{"detail":"Could not read request body: connection reset"}"#
        );
    }
}
