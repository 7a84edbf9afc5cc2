//! One exchange, every transport: the whole server side of ASAP, sans I/O.
//!
//! The adapter moves bytes and runs handlers; the core decides everything
//! else. A request becomes an [`Exchange`] ([`Server::handle_request`]), and
//! the adapter performs the [`Step`]s it yields, feeding each result back:
//!
//! ```text
//! adapter                                   core
//! lock ─ handle_request(head, now) ───────▶ Exchange   (routes, 404/405, manifest,
//!                                                      Content-Length 413, IP rate
//!                                                      limit 429, encodings 415)
//! loop poll_step():
//!   ReadBody { limit }  read ≤ limit+1 ───▶ handle_body(bytes, wall) / handle_body_error
//!                                           (decompress, JSON, JSON-RPC, envelope,
//!                                            recipient, timestamp window, routing)
//!   Admit               lock ─────────────▶ Server::handle_admission(&mut ex, now)
//!                                           (nonce, per-sender rate limit; only when on)
//!   Invoke(inv)         run the handler ──▶ handle_outcome(outcome, wall)
//!   Persist(records)    save, one commit ─▶ handle_persisted(result, wall)
//!                       (task records, accepted nonce)
//!   QueryState(req)     req.run(store) ───▶ handle_state(result, wall)
//!   CheckHealth         app's verdict ────▶ handle_health(report, now)
//!   RenderMetrics       ──────────────────▶ handle_metrics(&metrics)
//!   Notify(frame)       send it (WebSocket: a MessageAck), poll again
//!   AwaitFirst{token}   park until woken ─▶ handle_first_answer(answer, wall)
//!   Fetch(request)      perform it, lock ▶ Server::handle_fetched(&mut ex, response, now)
//!                                           (auth on: the key set / introspection; see ServerAuth)
//!   AwaitFetch          wait ~100 ms, lock ▶ Server::handle_fetch_waited(&mut ex, now)
//!   Respond(reply)      ... and reply.answered ─▶ lock: Server::handle_answered → wake tokens
//!   Respond(reply)      send reply.response, record reply.record in Metrics: done
//! ```
//!
//! The core lock (the [`Server`]) is taken at most twice per request, three
//! times when an envelope ran under receiver dedup (to settle it); metrics
//! live in their own [`Metrics`] so recording them never waits for it. The
//! whole loop, with the echo skill and in-memory task state:
//!
//! ```
//! use std::time::Instant;
//! use asap_proto::model::{AgentUrn, Manifest, Skill, UnixTime};
//! use asap_proto::server::{
//!     HandlerOutcome, Metrics, Now, RequestHead, Server, ServerConfig, SkillResult, Step, Transport,
//! };
//! use asap_proto::store::{MemoryMeteringStore, MemorySnapshotStore, MeteringStore, SnapshotStore};
//!
//! let mut manifest = Manifest::new(AgentUrn::new("urn:asap:agent:demo").unwrap(), "Demo", "1.0.0", "demo", "http://127.0.0.1:8000/asap");
//! manifest.capabilities.skills.push(Skill::new("echo", "Echo back the input"));
//! let t0 = Instant::now(); // adapters read the clocks; the core is handed them
//! let now = Now { monotonic: t0, wall: UnixTime::from_secs(1_767_225_600) };
//! let mut server = Server::new(manifest, ServerConfig::default(), t0, 42);
//! server.routes_mut().add_skill("echo");
//! server.routes_mut().attach_task_state();
//! let (mut snapshots, mut metering) = (MemorySnapshotStore::new(), MemoryMeteringStore::new());
//! let mut metrics = Metrics::default();
//!
//! let body = br#"{"jsonrpc":"2.0","method":"asap.send","id":1,"params":{"envelope":{
//!   "asap_version":"0.1","timestamp":"2026-01-01T00:00:00Z","sender":"urn:asap:agent:client",
//!   "recipient":"urn:asap:agent:demo","payload_type":"task.request",
//!   "payload":{"conversation_id":"c","skill_id":"echo","input":{"m":1}}}}}"#;
//! let headers = http::HeaderMap::new();
//! let head = RequestHead {
//!     method: &http::Method::POST, path: "/asap", headers: &headers,
//!     peer: Some([127, 0, 0, 1].into()), transport: Transport::Http,
//! };
//! let mut ex = server.handle_request(&head, now); // lock 1
//! let reply = loop {
//!     match ex.poll_step() {
//!         Step::ReadBody { limit } => ex.handle_body(&body[..body.len().min(limit + 1)], now.wall),
//!         Step::Admit => server.handle_admission(&mut ex, now), // lock 2, only when needed
//!         Step::Invoke(inv) => {
//!             let outcome = HandlerOutcome::Skill(SkillResult::echo(&inv));
//!             ex.handle_outcome(outcome, now.wall);
//!         }
//!         Step::Persist(records) => {
//!             // The skill run's task records (and the nonce, when nonces are checked).
//!             let task = records.task.expect("a skill run with task state");
//!             let saved = snapshots.save(&task.snapshot).and_then(|()| metering.record(&task.usage));
//!             ex.handle_persisted(saved, now.wall);
//!         }
//!         Step::QueryState(request) => ex.handle_state(request.run(&mut snapshots), now.wall),
//!         Step::CheckHealth => ex.handle_health(Default::default(), now.monotonic),
//!         Step::RenderMetrics => ex.handle_metrics(&metrics),
//!         Step::Notify(_frame) => {} // WebSocket only: send the MessageAck frame now
//!         // A copy of a running envelope: park until handle_answered wakes this token.
//!         Step::AwaitFirst { token: _ } => ex.handle_first_answer(None, now.wall),
//!         // Auth configured (`Server::set_auth`) and keys not cached: fetch them.
//!         Step::Fetch(_request) => server.handle_fetched(&mut ex, Err("offline".into()), now),
//!         Step::AwaitFetch => server.handle_fetch_waited(&mut ex, now),
//!         // Only for replicas sharing replay state (`ServerConfig::shared_replay`).
//!         Step::Claim(_) | Step::AwaitClaim { .. } => unreachable!("no shared replay here"),
//!         Step::Respond(reply) => break reply,
//!     }
//! };
//! let mut reply = reply;
//! if let Some(answered) = reply.answered.take() {
//!     // Lock 3 (dedup on, the envelope ran): copies that waited get this answer.
//!     for (_token, _answer) in server.handle_answered(answered, now.wall) { /* wake them */ }
//! }
//! if let Some(record) = &reply.record {
//!     metrics.handle_record(record, now.monotonic);
//! }
//! assert_eq!(reply.response.status(), 200);
//! let answer: serde_json::Value = serde_json::from_slice(reply.response.body()).unwrap();
//! assert_eq!(answer["result"]["envelope"]["payload"]["result"]["echoed"]["m"], 1);
//! assert_eq!(snapshots.list_versions(answer["result"]["envelope"]["payload"]["task_id"].as_str().unwrap()).unwrap(), [1]);
//! ```
//!
//! ## How a skill reports failure
//!
//! | what happened | the skill returns | the caller gets |
//! |---|---|---|
//! | invalid input, or the work failed | `Ok(`[`SkillResult::failed`]`(msg))` | a `task.response` with status `failed`, `{"error": msg}`, recorded |
//! | a request it refuses outright (bad params) | `Err(`[`HandlerError::invalid_params`]`(reason, details))` | JSON-RPC `-32602` naming the problem |
//! | a bug, a dependency down | `Err(`[`HandlerError::failed`]`(msg))` or a panic | JSON-RPC `-32603` (`msg` only with [`ServerConfig::debug`]) |

mod admission;
mod answer;
mod auth;
mod body;
mod body_budget;
mod config;
mod connection;
mod exchange;
mod handler;
mod inline;
pub mod metrics;
mod parking;
mod replay;
mod routes;
pub mod state;
mod webhooks;
mod wellknown;

use core::net::{IpAddr, Ipv4Addr};
use std::sync::Arc;
use std::time::Instant;

use http::{header, Method, StatusCode};

pub use answer::{
    busy, encode_http1, handler_error, has_remote_trace_context, headers_too_large,
    nonce_store_full, rate_limited, request_timeout,
};
pub use auth::{BearerCheck, BearerCheckFn, ServerAuth};
pub use body::{check_depth, decode_body, BodyError, BodyPlan, BodyTimeout, ContentEncoding};
pub use body_budget::{BodyBudget, BodyGrant, BodyShare, BodyTimer, RESERVE_STEP};
pub use config::{
    ConnectionLimits, ServerConfig, SharedReplay, Timeouts, DEFAULT_BODY_TIMEOUT,
    DEFAULT_BUSY_RETRY_AFTER_SECS, DEFAULT_HEADER_TIMEOUT, DEFAULT_KEEP_ALIVE_TIMEOUT,
    DEFAULT_MAX_BODY_BYTES_IN_FLIGHT, DEFAULT_MAX_CONNECTIONS, DEFAULT_MAX_HEADER_BYTES,
    DEFAULT_MAX_JSON_DEPTH, DEFAULT_MAX_NONCES, DEFAULT_MAX_REQUEST_SIZE, DEFAULT_RATE_LIMIT,
    DEFAULT_REQUEST_TIMEOUT, RESERVED_FDS,
};
pub use connection::{Admission, Close, CloseReason, ConnectionBudget, ConnectionId};
pub use exchange::{
    Answered, Exchange, Now, Outcome, Records, Reply, RequestHead, RequestRecord, StateRequest,
    Step, Transport,
};
pub use handler::{
    HandlerError, HandlerOutcome, HandlerReply, Invocation, PushReplies, PushSink, SkillContext,
    SkillResult,
};
pub use inline::{drive_inline, drive_inline_frame, TaskState};
pub use metrics::Metrics;
pub use parking::{FirstAnswer, Parking};
pub use replay::{
    NonceError, NonceMode, NonceStore, ReplayWindow, MAX_ENVELOPE_AGE, MAX_FUTURE_TOLERANCE,
    MAX_NONCE_LEN,
};
pub use routes::{AgentCode, AgentParts, HandlerRef, HandlerTable, Route, Routes};
pub use webhooks::{Subscriber, TaskWebhooks, WebhookConfig, CALLBACK_MEMBER};
pub use wellknown::{health_response, HealthReport, ManifestDocument, MANIFEST_CACHE_CONTROL};

use crate::jsonrpc::ErrorResponse;
use crate::model::UnixTime;
use crate::model::{Manifest, UlidGenerator};
use crate::reliability::rate_limit::{RateDecision, SlidingWindowLimiter};
use crate::reliability::{Admission as DedupAdmission, DedupKey, DedupWindow};
use crate::store::NonceRecord;

/// What every exchange reads and none changes: policy, manifest, routes.
#[derive(Debug, Clone)]
struct Shared {
    config: ServerConfig,
    manifest: ManifestDocument,
    routes: Routes,
    started: Instant,
    /// Whether accepted envelopes need [`Server::handle_admission`] (nonces or a
    /// per-sender limiter exist); else an exchange never takes the lock again.
    needs_admission: bool,
}

/// The state one agent's requests share: rate limiters, nonces, the id
/// stream. Adapters keep it behind one lock and take it at most twice per
/// request ([`Server::handle_request`], [`Server::handle_admission`]).
#[derive(Debug)]
pub struct Server {
    shared: Arc<Shared>,
    ids: UlidGenerator,
    nonces: NonceStore,
    limiter: Option<SlidingWindowLimiter>,
    /// Receiver dedup window; `u64` waiters are exchange tokens (`Step::AwaitFirst`).
    dedup: Option<DedupWindow<u64>>,
    /// Token checks for protected routes ([`Server::set_auth`]).
    auth: Option<ServerAuth>,
}

/// The paths served and the method each takes.
fn allowed_method(path: &str) -> Option<Method> {
    match path {
        "/asap" => Some(Method::POST),
        "/asap/ws"
        | "/asap/metrics"
        | "/.well-known/asap/manifest.json"
        | "/.well-known/asap/health"
        | "/health"
        | "/ready" => Some(Method::GET),
        _ => None,
    }
}

/// Bytes of a request head as sent: request line and `name: value\r\n` lines
/// (the path stands for the target: the query is not in [`RequestHead`]).
fn head_size(head: &RequestHead<'_>) -> usize {
    let line = head.method.as_str().len() + head.path.len() + " HTTP/1.1\r\n ".len();
    head.headers.iter().fold(line + 2, |n, (name, value)| {
        n + name.as_str().len() + value.len() + 4
    })
}

impl Server {
    /// A server for `manifest`. `started` anchors `uptime_seconds`; `id_seed`
    /// seeds envelope/task id generation (from the OS in adapters).
    #[must_use]
    pub fn new(manifest: Manifest, config: ServerConfig, started: Instant, id_seed: u64) -> Self {
        let limiter = config
            .rate_limit
            .clone()
            .filter(|spec| !spec.is_unlimited())
            .map(|spec| SlidingWindowLimiter::with_max_keys(spec, config.max_rate_limit_keys));
        let dedup = config.dedup.map(DedupWindow::new);
        let needs_admission = config.nonce != NonceMode::Off
            || (config.rate_limit_by_sender && limiter.is_some())
            || dedup.is_some();
        Self {
            nonces: NonceStore::new(config.replay_window, config.max_nonces),
            ids: UlidGenerator::new(id_seed),
            limiter,
            dedup,
            auth: None,
            shared: Arc::new(Shared {
                manifest: ManifestDocument::new(manifest),
                routes: Routes::default(),
                started,
                needs_admission,
                config,
            }),
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &ServerConfig {
        &self.shared.config
    }

    /// The served manifest.
    #[must_use]
    pub fn manifest(&self) -> &Manifest {
        self.shared.manifest.manifest()
    }

    /// The prepared manifest document (body + ETag).
    #[must_use]
    pub fn manifest_document(&self) -> &ManifestDocument {
        &self.shared.manifest
    }

    /// Replaces the registered routes.
    pub fn set_routes(&mut self, routes: Routes) {
        Arc::make_mut(&mut self.shared).routes = routes;
    }

    /// Registered routes, to change (before serving: open exchanges keep the old ones).
    pub fn routes_mut(&mut self) -> &mut Routes {
        &mut Arc::make_mut(&mut self.shared).routes
    }

    /// Registered routes.
    #[must_use]
    pub fn routes(&self) -> &Routes {
        &self.shared.routes
    }

    /// Remembered nonces (bounded by [`ServerConfig::max_nonces`]).
    #[must_use]
    pub fn nonces(&self) -> &NonceStore {
        &self.nonces
    }

    /// Remembers the nonces accepted before a restart (the live records of a
    /// [`ReplayStore`](crate::store::ReplayStore)), before serving; every one
    /// is kept, even past the capacity. [`AgentParts::into_server`] calls it.
    pub fn restore_nonces<'a>(&mut self, records: impl IntoIterator<Item = &'a NonceRecord>) {
        self.nonces.restore(records);
    }

    /// Remembers the answers kept for receiver dedup before a restart (live
    /// records of a [`ReplayStore`](crate::store::ReplayStore)), so copies of
    /// those envelopes are answered without running them again. Records with
    /// an invalid sender are skipped. Returns how many were restored.
    pub fn restore_dedup<'a>(
        &mut self,
        records: impl IntoIterator<Item = &'a crate::store::DedupRecord>,
        now: UnixTime,
    ) -> usize {
        let Some(window) = &mut self.dedup else {
            return 0;
        };
        let rows = records.into_iter().filter_map(|r| {
            Some(crate::reliability::DedupRecord {
                sender: crate::model::AgentUrn::new(r.sender.as_str()).ok()?,
                envelope_id: r.envelope_id.clone(),
                response: Some(r.response.clone()),
                expires_at_unix_ms: r.expires_at_unix_ms,
            })
        });
        window.restore(rows, now)
    }

    /// Opens the exchange of one request (spec 8.1 routes; for `POST /asap`
    /// spec 8.4 steps 2-4: `Content-Length` 413, rate limit by peer 429,
    /// `Content-Type`/`Content-Encoding` 415). `HEAD` is answered wherever `GET` is.
    ///
    /// With auth configured ([`Server::set_auth`]), protected routes are
    /// authenticated here, before anything else is read (see [`ServerAuth`]).
    /// `GET /asap/ws` answers 101 when the upgrade may proceed.
    pub fn handle_request(&mut self, head: &RequestHead<'_>, now: Now) -> Exchange {
        self.open(head, now, now.monotonic, 0)
    }

    fn open(&mut self, head: &RequestHead<'_>, now: Now, started: Instant, rounds: u8) -> Exchange {
        let mut ex = Exchange::new(
            Arc::clone(&self.shared),
            self.ids.next_u64(),
            started,
            head.transport,
        );
        let head_bytes = head_size(head);
        if head_bytes > self.shared.config.max_header_bytes {
            let r = answer::headers_too_large(head_bytes, self.shared.config.max_header_bytes);
            return ex.respond_now(r, false, Outcome::RejectedHeaders);
        }
        let Some(allowed) = allowed_method(head.path) else {
            return ex.answer_get(answer::detail(StatusCode::NOT_FOUND, "Not Found"), false);
        };
        let is_head = head.method == Method::HEAD && allowed == Method::GET;
        if head.method != allowed && !is_head {
            let mut r = answer::detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            let allow = if allowed == Method::GET {
                "GET, HEAD"
            } else {
                "POST"
            };
            r.headers_mut()
                .insert(header::ALLOW, http::HeaderValue::from_static(allow));
            return ex.answer_get(r, false);
        }
        match self.authenticate(head, started, rounds, now) {
            auth::Gate::Open => {}
            auth::Gate::Pass(identity, bind) => ex.hold_identity(identity, bind),
            auth::Gate::Refuse(r) if head.transport == Transport::WebSocket => {
                let plan = BodyPlan {
                    encoding: ContentEncoding::Identity,
                    max_body: self.shared.config.max_request_size,
                };
                return ex.refuse_frame(r, plan);
            }
            auth::Gate::Refuse(r) => {
                let post = head.path == "/asap";
                return ex.respond_now(auth::refusal(&r), post, Outcome::Unauthorized);
            }
            auth::Gate::Fetch(resume, request) => return ex.fetch(resume, request),
            auth::Gate::Wait(resume) => return ex.await_fetch(resume),
        }
        match head.path {
            "/asap/ws" => {
                let r = auth::upgrade_response(ex.identity());
                ex.answer_get(r, false)
            }
            // A WebSocket frame has no HTTP headers of its own and no HTTP rate
            // limit (spec 13.1); the session limits messages per connection.
            "/asap" if head.transport == Transport::WebSocket => ex.read_body(BodyPlan {
                encoding: ContentEncoding::Identity,
                max_body: self.shared.config.max_request_size,
            }),
            "/asap" => self.begin_post(ex, head, now),
            "/.well-known/asap/manifest.json" => {
                let r = self.shared.manifest.respond(head.headers);
                ex.answer_get(r, is_head)
            }
            "/.well-known/asap/health" => ex.ask_health(is_head),
            "/asap/metrics" => ex.ask_metrics(is_head),
            _ => ex.answer_get(
                answer::json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec()),
                is_head,
            ),
        }
    }

    fn begin_post(&mut self, ex: Exchange, head: &RequestHead<'_>, now: Now) -> Exchange {
        let config = &self.shared.config;
        // Spec order: Content-Length (413) before the rate limit (429) before encodings (415).
        if let Err(r) = body::check_content_length(head.headers, config.max_request_size) {
            return ex.respond_now(r, true, Outcome::RejectedHeaders);
        }
        if let Some(limiter) = &mut self.limiter {
            let peer = head.peer.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
            if let RateDecision::Limited {
                retry_after_secs,
                limit_text,
            } = limiter.check(&peer.to_string(), now.monotonic)
            {
                let r = rate_limited(retry_after_secs, &limit_text);
                return ex.respond_now(r, true, Outcome::RejectedHeaders);
            }
        }
        match body::plan_body(head.headers, config) {
            Ok(plan) => ex.read_body(plan),
            Err(r) => ex.respond_now(r, true, Outcome::RejectedHeaders),
        }
    }

    /// Input for [`Step::Admit`]: the checks on state every request shares,
    /// in spec order (nonce, step 13, before the dispatch errors of step 14),
    /// then the per-sender rate limit, then receiver dedup.
    pub fn handle_admission(&mut self, ex: &mut Exchange, now: Now) {
        let Some(pending) = ex.take_pending() else {
            return;
        };
        let config = &self.shared.config;
        let mut claimed_nonce = None;
        match self.nonces.check(&pending.envelope, config.nonce, now.wall) {
            // With task state attached, the nonce is committed with the
            // answer's records, so a restart keeps refusing it.
            Ok(Some(record)) => {
                if config.shared_replay.is_some() {
                    claimed_nonce = Some(record.clone());
                }
                if self.shared.routes.task_state {
                    ex.hold_nonce(record);
                }
            }
            Ok(None) => {}
            Err(NonceError::Invalid(e)) => {
                let err = ErrorResponse::invalid_params_asap(
                    "Invalid envelope nonce",
                    &e,
                    Some(pending.request_id.clone()),
                );
                return ex.refuse(answer::rpc_error(&err), Outcome::RpcError);
            }
            Err(NonceError::Full {
                capacity,
                retry_after_secs,
            }) => {
                let r = nonce_store_full(capacity, retry_after_secs);
                return ex.refuse(r, Outcome::Overloaded);
            }
        }
        if config.rate_limit_by_sender && pending.routed.is_ok() {
            if let Some(limiter) = &mut self.limiter {
                let key = format!("sender:{}", pending.envelope.sender);
                if let RateDecision::Limited {
                    retry_after_secs,
                    limit_text,
                } = limiter.check(&key, now.monotonic)
                {
                    let r = rate_limited(retry_after_secs, &limit_text);
                    return ex.refuse(r, Outcome::RateLimited);
                }
            }
        }
        // Dedup last: a copy that passed the nonce check (nonces off, or
        // none given) gets the first answer. With nonces on, an identical
        // copy is a replay (-32602), byte for byte as the reference answers.
        let mut claimed_key = None;
        if let Some(window) = &mut self.dedup {
            match window.check(DedupKey::of(&pending.envelope), ex.token(), now.wall) {
                Ok(DedupAdmission::New(ticket)) => {
                    ex.admitted_new(ticket);
                    claimed_key = Some(window.config().max_age);
                }
                Ok(DedupAdmission::Duplicate(done)) => {
                    return ex.answer_copy(pending, done.response.as_deref(), now.wall)
                }
                Ok(DedupAdmission::InProgress) => return ex.await_first(pending),
                Err(e) => {
                    let r = answer::busy(1, &e.to_string());
                    return ex.refuse(r, Outcome::Overloaded);
                }
            }
        }
        // Replicas sharing replay state: the store has the last word on
        // what this replica's own checks let through.
        if let Some(shared) = self.shared.config.shared_replay {
            if claimed_nonce.is_some() || claimed_key.is_some() {
                let at = |d: std::time::Duration| {
                    now.wall
                        .as_millis()
                        .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                };
                let dedup = claimed_key.map(|max_age| crate::store::DedupClaim {
                    sender: pending.envelope.sender.to_string(),
                    envelope_id: pending.envelope.id.clone(),
                    lease_until_unix_ms: at(shared.claim_lease),
                    expires_at_unix_ms: at(max_age),
                });
                let claim = crate::store::ReplayClaim {
                    nonce: claimed_nonce,
                    dedup,
                    now: now.wall,
                };
                return ex.claim(pending, claim, now.monotonic);
            }
        }
        ex.proceed(pending, now.wall);
    }

    /// Input: a deduplicated envelope's first run ended ([`Reply::answered`]).
    /// Returns the copies that waited for it (`Step::AwaitFirst` tokens) and
    /// the answer body each gets (`None`: the run failed; they answer so).
    pub fn handle_answered(
        &mut self,
        answered: Answered,
        now: UnixTime,
    ) -> Vec<(u64, FirstAnswer)> {
        let Some(window) = &mut self.dedup else {
            return Vec::new();
        };
        match answered.body {
            Some(body) => match window.handle_completed(&answered.ticket, Arc::clone(&body), now) {
                Ok(waiters) => waiters
                    .into_iter()
                    .map(|w| (w, Some(Arc::clone(&body))))
                    .collect(),
                Err(_) => Vec::new(),
            },
            None => window
                .handle_abandoned(&answered.ticket)
                .map(|waiters| waiters.into_iter().map(|w| (w, None)).collect())
                .unwrap_or_default(),
        }
    }

    /// The receiver dedup window, when on ([`ServerConfig::dedup`]).
    #[must_use]
    pub fn dedup(&self) -> Option<&DedupWindow<u64>> {
        self.dedup.as_ref()
    }
}
