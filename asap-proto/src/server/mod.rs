//! The `POST /asap` decision pipeline and the well-known endpoints, sans I/O.
//!
//! The adapter moves bytes; [`Server`] decides. One request flows like this:
//!
//! ```text
//! adapter                                  Server
//! headers ───────────────────────────────▶ begin_post(headers, client_key, now)
//!          ◀── Err(response: 413/429/415)   or Ok(BodyPlan { encoding, max_body })
//! read ≤ max_body bytes (else body_too_large), decompress with the same bound
//! body ──────────────────────────────────▶ handle_body(body, wall_now)
//!          ◀── Decision::Respond(response)  (JSON-RPC error; keep serving)
//!          ◀── Decision::Invoke(invocation) (run the user's handler)
//! outcome ───────────────────────────────▶ finish(invocation, outcome, wall_now)
//!          ◀── response
//! ```
//!
//! ```
//! use std::time::Instant;
//! use asap_proto::model::{AgentUrn, Manifest, Skill, UnixTime};
//! use asap_proto::server::{Decision, HandlerOutcome, Route, Server, ServerConfig, SkillResult};
//!
//! let mut manifest = Manifest::new(AgentUrn::new("urn:asap:agent:demo").unwrap(), "Demo", "1.0.0", "demo", "http://127.0.0.1:8000/asap");
//! manifest.capabilities.skills.push(Skill::new("echo", "Echo back the input"));
//! let mut config = ServerConfig::default();
//! config.rate_limit = None;
//! let mut server = Server::new(manifest, config, Instant::now(), 42);
//! server.routes_mut().add_skill("echo");
//!
//! let headers = http::HeaderMap::new();
//! let plan = server.begin_post(&headers, "127.0.0.1", Instant::now()).unwrap();
//! assert!(plan.max_body > 0);
//! let body = br#"{"jsonrpc":"2.0","method":"asap.send","id":1,"params":{"envelope":{
//!   "asap_version":"0.1","timestamp":"2026-01-01T00:00:00Z","sender":"urn:asap:agent:client",
//!   "recipient":"urn:asap:agent:demo","payload_type":"task.request",
//!   "payload":{"conversation_id":"c","skill_id":"echo","input":{"m":1}}}}}"#;
//! let now = UnixTime::from_secs(1_767_225_600);
//! let Decision::Invoke(inv) = server.handle_body(body, now) else { panic!() };
//! assert!(matches!(inv.route, Route::Skill(ref s) if s == "echo"));
//! let outcome = HandlerOutcome::Skill(SkillResult::echo(&inv));
//! let response = server.finish(inv, outcome, now);
//! assert_eq!(response.status(), 200);
//! ```

pub mod metrics;
mod replay;
pub mod state;
mod wellknown;

use std::collections::HashSet;
use std::time::{Duration, Instant};

use http::{header, HeaderMap, Response, StatusCode};
use serde_json::{json, Value};

pub use replay::{NonceStore, ReplayWindow, MAX_ENVELOPE_AGE, MAX_FUTURE_TOLERANCE, NONCE_TTL};
pub use wellknown::{health_response, HealthReport, ManifestDocument, MANIFEST_CACHE_CONTROL};

use crate::jsonrpc::{self, AsapError, ErrorResponse, RequestId, SuccessResponse};
use crate::model::{
    Envelope, JsonObject, Manifest, Payload, PayloadKind, TaskResponse, Timestamp, UlidGenerator,
    UnixTime,
};
use crate::reliability::rate_limit::{RateDecision, RateLimitSpec, SlidingWindowLimiter};
use crate::task::TaskStatus;

/// Reference default maximum request size (before and after decompression).
pub const DEFAULT_MAX_REQUEST_SIZE: usize = 10 * 1024 * 1024;
/// Default bound on JSON nesting.
pub const DEFAULT_MAX_JSON_DEPTH: usize = 64;
/// The reference's default rate limit.
pub const DEFAULT_RATE_LIMIT: &str = "10/second;100/minute";

/// Server policy. `Default` matches the reference, except `require_timestamp`.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// Largest accepted body, bytes, checked on `Content-Length`, raw and decompressed.
    pub max_request_size: usize,
    /// Deepest accepted JSON nesting.
    pub max_json_depth: usize,
    /// Reject envelopes without `timestamp` (the reference fills "now", which
    /// bypasses the replay window). Default on.
    pub require_timestamp: bool,
    /// Replay window.
    pub replay_window: ReplayWindow,
    /// Enforce `extensions.nonce` uniqueness (opt-in, as in the reference).
    pub require_nonce: bool,
    /// Nonce memory.
    pub nonce_ttl: Duration,
    /// Nonce memory cap (oldest evicted first).
    pub max_nonces: usize,
    /// HTTP rate limit (`None` = off), per client IP.
    pub rate_limit: Option<RateLimitSpec>,
    /// Also rate-limit per envelope sender (after decoding), with the same spec.
    pub rate_limit_by_sender: bool,
    /// Rate limiter key cap.
    pub max_rate_limit_keys: usize,
    /// Reject a `Content-Type` other than JSON with 415 (a missing one is accepted).
    pub require_json_content_type: bool,
    /// Put handler error details in -32603 responses (never in production).
    pub debug: bool,
    /// Give replies `extensions.trace_id`/`span_id` (and `trace_id` when empty) of the
    /// request's server-side span, as the reference's tracing does, unless the request
    /// carried its own W3C context (32-hex `trace_id` + 16-hex `extensions.span_id`).
    pub trace_extensions: bool,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self {
            max_request_size: DEFAULT_MAX_REQUEST_SIZE,
            max_json_depth: DEFAULT_MAX_JSON_DEPTH,
            require_timestamp: true,
            replay_window: ReplayWindow::default(),
            require_nonce: false,
            nonce_ttl: NONCE_TTL,
            max_nonces: 100_000,
            rate_limit: Some(RateLimitSpec::default()),
            rate_limit_by_sender: false,
            max_rate_limit_keys: 10_000,
            require_json_content_type: true,
            debug: false,
            trace_extensions: true,
        }
    }
}

/// Content encodings accepted on `POST /asap`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ContentEncoding {
    /// No compression.
    Identity,
    /// gzip.
    Gzip,
    /// Brotli (what the reference client sends above 1 KiB).
    Brotli,
}

/// What the adapter must do to read the body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BodyPlan {
    /// How to decompress.
    pub encoding: ContentEncoding,
    /// Stop reading (and decompressing) past this many bytes and answer
    /// [`Server::body_too_large`] / [`Server::decompressed_too_large`].
    pub max_body: usize,
}

/// Which handler an accepted envelope goes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// A `task.request` for a registered skill.
    Skill(String),
    /// A registered payload kind.
    Kind(PayloadKind),
    /// A registered custom payload type (exact spelling).
    Custom(String),
}

/// Registered skills and payload handlers (names only; the adapter holds the code).
#[derive(Debug, Clone, Default)]
pub struct Routes {
    skills: HashSet<String>,
    kinds: HashSet<PayloadKind>,
    custom: HashSet<String>,
}

impl Routes {
    /// Registers a skill for `task.request`.
    pub fn add_skill(&mut self, skill_id: &str) {
        self.skills.insert(skill_id.to_owned());
    }
    /// Registers a handler for a payload kind (every spelling of it).
    pub fn add_kind(&mut self, kind: PayloadKind) {
        self.kinds.insert(kind);
    }
    /// Registers a handler for a payload type outside the protocol vocabulary.
    pub fn add_custom(&mut self, payload_type: &str) {
        self.custom.insert(payload_type.to_owned());
    }
    /// Whether skill `id` is registered.
    #[must_use]
    pub fn has_skill(&self, id: &str) -> bool {
        self.skills.contains(id)
    }
}

/// The adapter's handler code, looked up by [`Route`]. Generic over the
/// closure types so the tokio (async) and blocking (plain closure) adapters
/// share one registry; [`HandlerTable::routes`] tells the [`Server`] what exists.
pub struct HandlerTable<S, P> {
    skills: std::collections::HashMap<String, S>,
    kinds: std::collections::HashMap<PayloadKind, P>,
    custom: std::collections::HashMap<String, P>,
}

impl<S, P> Default for HandlerTable<S, P> {
    fn default() -> Self {
        Self {
            skills: Default::default(),
            kinds: Default::default(),
            custom: Default::default(),
        }
    }
}

impl<S, P> std::fmt::Debug for HandlerTable<S, P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HandlerTable")
            .field("skills", &self.skills.keys().collect::<Vec<_>>())
            .field("kinds", &self.kinds.keys().collect::<Vec<_>>())
            .field("custom", &self.custom.keys().collect::<Vec<_>>())
            .finish()
    }
}

/// A handler found for a route.
#[derive(Debug)]
pub enum HandlerRef<'a, S, P> {
    /// A skill handler (gets the `TaskRequest`).
    Skill(&'a S),
    /// A payload handler (gets the envelope and payload).
    Payload(&'a P),
}

impl<S, P> HandlerTable<S, P> {
    /// Registers a skill handler.
    pub fn add_skill(&mut self, skill_id: &str, handler: S) {
        self.skills.insert(skill_id.to_owned(), handler);
    }
    /// Registers a handler for a payload kind.
    pub fn add_kind(&mut self, kind: PayloadKind, handler: P) {
        self.kinds.insert(kind, handler);
    }
    /// Registers a handler for a custom payload type.
    pub fn add_custom(&mut self, payload_type: &str, handler: P) {
        self.custom.insert(payload_type.to_owned(), handler);
    }
    /// The route names, for [`Server::set_routes`].
    #[must_use]
    pub fn routes(&self) -> Routes {
        let mut r = Routes::default();
        self.skills.keys().for_each(|k| r.add_skill(k));
        self.kinds.keys().for_each(|k| r.add_kind(*k));
        self.custom.keys().for_each(|k| r.add_custom(k));
        r
    }
    /// The handler for `route`.
    #[must_use]
    pub fn get(&self, route: &Route) -> Option<HandlerRef<'_, S, P>> {
        match route {
            Route::Skill(id) => self.skills.get(id).map(HandlerRef::Skill),
            Route::Kind(k) => self.kinds.get(k).map(HandlerRef::Payload),
            Route::Custom(t) => self.custom.get(t).map(HandlerRef::Payload),
        }
    }
}

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

/// Where the pipeline stopped.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Decision {
    /// Send this response; nothing else to do.
    Respond(Response<Vec<u8>>),
    /// Run the handler for this envelope, then call [`Server::finish`].
    Invoke(Invocation),
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

/// The sans-I/O HTTP server of one agent.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    manifest: ManifestDocument,
    routes: Routes,
    started: Instant,
    ids: UlidGenerator,
    nonces: NonceStore,
    limiter: Option<SlidingWindowLimiter>,
    metrics: metrics::Metrics,
}

fn json_response(status: StatusCode, body: Vec<u8>) -> Response<Vec<u8>> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(body)
        .unwrap_or_default()
}

fn detail(status: StatusCode, text: &str) -> Response<Vec<u8>> {
    json_response(status, jsonrpc::detail_body(text))
}

fn rpc_error(err: &ErrorResponse) -> Response<Vec<u8>> {
    json_response(StatusCode::OK, err.to_vec())
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
        Self {
            nonces: NonceStore::new(config.nonce_ttl, config.max_nonces),
            manifest: ManifestDocument::new(manifest),
            routes: Routes::default(),
            started,
            ids: UlidGenerator::new(id_seed),
            limiter,
            metrics: metrics::Metrics::default(),
            config,
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// The served manifest.
    #[must_use]
    pub fn manifest(&self) -> &Manifest {
        self.manifest.manifest()
    }

    /// The prepared manifest document (body + ETag).
    #[must_use]
    pub fn manifest_document(&self) -> &ManifestDocument {
        &self.manifest
    }

    /// Replaces the registered routes.
    pub fn set_routes(&mut self, routes: Routes) {
        self.routes = routes;
    }

    /// Registered routes.
    pub fn routes_mut(&mut self) -> &mut Routes {
        &mut self.routes
    }

    /// Registered routes.
    #[must_use]
    pub fn routes(&self) -> &Routes {
        &self.routes
    }

    /// Records a finished `POST /asap` for `GET /asap/metrics`.
    pub fn record_request(&mut self, kind: Option<PayloadKind>, status: u16, elapsed: Duration) {
        self.metrics.record(kind, status, elapsed);
    }

    /// The request metrics.
    #[must_use]
    pub fn metrics(&self) -> &metrics::Metrics {
        &self.metrics
    }

    /// A fresh ULID string at `now`.
    pub fn new_id(&mut self, now: UnixTime) -> String {
        self.ids.next_string(now)
    }

    /// Answers a request that is not `POST /asap`: well-known manifest and health,
    /// `/health` and `/ready`, 405 for a wrong method, 404 otherwise.
    #[must_use]
    pub fn handle_get(
        &self,
        method: &http::Method,
        path: &str,
        headers: &HeaderMap,
        now: Instant,
        health: HealthReport,
    ) -> Response<Vec<u8>> {
        let allowed: &str = match path {
            "/asap" => "POST",
            "/asap/metrics"
            | "/.well-known/asap/manifest.json"
            | "/.well-known/asap/health"
            | "/health"
            | "/ready" => "GET",
            _ => return detail(StatusCode::NOT_FOUND, "Not Found"),
        };
        // As the reference: GET only (HEAD is 405 too).
        let is_get = method == http::Method::GET;
        if !is_get || allowed == "POST" {
            let mut r = detail(StatusCode::METHOD_NOT_ALLOWED, "Method Not Allowed");
            r.headers_mut().insert(
                header::ALLOW,
                http::HeaderValue::from_static(if allowed == "POST" { "POST" } else { "GET" }),
            );
            return r;
        }
        match path {
            "/.well-known/asap/manifest.json" => self.manifest.respond(headers),
            "/.well-known/asap/health" => health_response(
                self.manifest(),
                now.saturating_duration_since(self.started),
                health,
            ),
            "/asap/metrics" => Response::builder()
                .status(StatusCode::OK)
                .header(header::CONTENT_TYPE, metrics::METRICS_CONTENT_TYPE)
                .body(self.metrics.render().into_bytes())
                .unwrap_or_default(),
            _ => json_response(StatusCode::OK, br#"{"status":"ok"}"#.to_vec()),
        }
    }

    /// Header stage of `POST /asap` (spec 8.4 steps 2-4): `Content-Length`
    /// (413), rate limit by `client_key` (429), `Content-Type` and
    /// `Content-Encoding` (415).
    pub fn begin_post(
        &mut self,
        headers: &HeaderMap,
        client_key: &str,
        now: Instant,
    ) -> Result<BodyPlan, Response<Vec<u8>>> {
        let max = self.config.max_request_size;
        if let Some(len) = headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
        {
            match len.trim().parse::<u64>() {
                Ok(n) if n > max as u64 => return Err(self.body_too_large(n)),
                Ok(_) => {}
                Err(_) => {
                    return Err(detail(
                        StatusCode::BAD_REQUEST,
                        "Invalid Content-Length header",
                    ))
                }
            }
        }
        if let Some(limiter) = &mut self.limiter {
            if let RateDecision::Limited {
                retry_after_secs,
                limit_text: limit,
            } = limiter.check(client_key, now)
            {
                return Err(rate_limited(retry_after_secs, &limit));
            }
        }
        if self.config.require_json_content_type {
            if let Some(ct) = headers.get(header::CONTENT_TYPE) {
                let text = ct.to_str().unwrap_or("");
                let mime = text
                    .split(';')
                    .next()
                    .unwrap_or("")
                    .trim()
                    .to_ascii_lowercase();
                if !(mime == "application/json" || mime.ends_with("+json")) {
                    return Err(detail(
                        StatusCode::UNSUPPORTED_MEDIA_TYPE,
                        &format!("Unsupported Content-Type: {text}. Supported: application/json"),
                    ));
                }
            }
        }
        let encoding = match headers
            .get(header::CONTENT_ENCODING)
            .map(|v| v.to_str().unwrap_or("?").trim().to_ascii_lowercase())
        {
            None => ContentEncoding::Identity,
            Some(e) if e.is_empty() || e == "identity" => ContentEncoding::Identity,
            Some(e) if e == "gzip" => ContentEncoding::Gzip,
            Some(e) if e == "br" => ContentEncoding::Brotli,
            Some(e) => {
                return Err(detail(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    &format!("Unsupported Content-Encoding: {e}. Supported: br, gzip"),
                ))
            }
        };
        Ok(BodyPlan {
            encoding,
            max_body: max,
        })
    }

    /// 413 for a body of `size` bytes (or more) on the wire.
    #[must_use]
    pub fn body_too_large(&self, size: u64) -> Response<Vec<u8>> {
        detail(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "Request size ({size} bytes) exceeds maximum ({} bytes)",
                self.config.max_request_size
            ),
        )
    }

    /// 413 for a body that decompresses to more than the limit.
    #[must_use]
    pub fn decompressed_too_large(&self, size: u64) -> Response<Vec<u8>> {
        detail(
            StatusCode::PAYLOAD_TOO_LARGE,
            &format!(
                "Decompressed request size ({size} bytes) exceeds maximum ({} bytes)",
                self.config.max_request_size
            ),
        )
    }

    /// 400 for a body that does not decompress.
    #[must_use]
    pub fn decompress_failed(&self, reason: &str) -> Response<Vec<u8>> {
        detail(
            StatusCode::BAD_REQUEST,
            &format!("Invalid compressed data: {reason}"),
        )
    }

    /// The response for a body that could not be read or decoded.
    #[must_use]
    pub fn body_error(&self, err: &BodyError) -> Response<Vec<u8>> {
        match err {
            BodyError::TooLarge(n) => self.body_too_large(*n),
            BodyError::DecompressedTooLarge(n) => self.decompressed_too_large(*n),
            BodyError::InvalidCompressedData(msg) => self.decompress_failed(msg),
        }
    }

    /// Body stage (spec 8.4 steps 5-14): JSON, JSON-RPC, envelope, replay
    /// window, nonce, routing. `now` is wall-clock time.
    pub fn handle_body(&mut self, body: &[u8], now: UnixTime) -> Decision {
        match self.decide(body, now) {
            Ok(inv) => Decision::Invoke(inv),
            Err(resp) => Decision::Respond(resp),
        }
    }

    fn decide(&mut self, body: &[u8], now: UnixTime) -> Result<Invocation, Response<Vec<u8>>> {
        if let Err(depth) = check_depth(body, self.config.max_json_depth) {
            return Err(rpc_error(&ErrorResponse::parse_error(&format!(
                "nesting depth exceeds the maximum of {} (found at least {depth})",
                self.config.max_json_depth
            ))));
        }
        let value = jsonrpc::parse_json(body).map_err(|e| rpc_error(&e))?;
        let mut request = jsonrpc::decode_request_raw(value, body).map_err(|e| rpc_error(&e))?;
        let input = request.take_envelope().map_err(|e| rpc_error(&e))?;
        let id = Some(request.id.clone());
        let missing_timestamp = input.timestamp.is_none();
        let envelope = {
            let ids = &mut self.ids;
            input.materialize(Timestamp::from_unix(now), || ids.next_string(now))
        };
        if missing_timestamp && self.config.require_timestamp {
            let err = ReplayWindow::missing_timestamp(&envelope.id);
            return Err(rpc_error(&ErrorResponse::invalid_params_asap(
                "Invalid envelope timestamp",
                &err,
                id,
            )));
        }
        self.config
            .replay_window
            .check(&envelope, now)
            .map_err(|e| {
                rpc_error(&ErrorResponse::invalid_params_asap(
                    "Invalid envelope timestamp",
                    &e,
                    id.clone(),
                ))
            })?;
        if self.config.require_nonce {
            self.nonces.check(&envelope, now).map_err(|e| {
                rpc_error(&ErrorResponse::invalid_params_asap(
                    "Invalid envelope nonce",
                    &e,
                    id.clone(),
                ))
            })?;
        }
        let payload = envelope.payload().map_err(|e| {
            rpc_error(&ErrorResponse::new(
                jsonrpc::codes::INVALID_PARAMS,
                Some(json!({
                    "error": format!("Invalid {} payload", envelope.kind().map_or("", PayloadKind::model_name)),
                    "validation_errors": [e.to_validation_item()],
                })),
                id.clone(),
            ))
        })?;
        let route = match (&payload, envelope.kind()) {
            (Payload::TaskRequest(req), _) if self.routes.skills.contains(&req.skill_id) => {
                Route::Skill(req.skill_id.clone())
            }
            (_, Some(kind)) if self.routes.kinds.contains(&kind) => Route::Kind(kind),
            (Payload::TaskRequest(req), _) if !self.routes.skills.is_empty() => {
                return Err(rpc_error(&ErrorResponse::new(
                    jsonrpc::codes::METHOD_NOT_FOUND,
                    Some(json!({
                        "payload_type": envelope.payload_type,
                        "skill_id": req.skill_id,
                        "error": format!("No skill registered with id: {}", req.skill_id),
                    })),
                    id,
                )));
            }
            _ if self.routes.custom.contains(&envelope.payload_type) => {
                Route::Custom(envelope.payload_type.clone())
            }
            _ => {
                return Err(rpc_error(&ErrorResponse::no_handler(
                    &envelope.payload_type,
                    id,
                )))
            }
        };
        let task_id =
            matches!(route, Route::Skill(_)).then(|| format!("task_{}", self.ids.next(now)));
        Ok(Invocation {
            request_id: request.id,
            envelope,
            payload,
            route,
            task_id,
            accepted_at: now,
        })
    }

    /// Per-sender rate limit check for an accepted invocation (when
    /// `rate_limit_by_sender` is on); `Some(response)` means answer 429.
    pub fn check_sender_rate(
        &mut self,
        inv: &Invocation,
        now: Instant,
    ) -> Option<Response<Vec<u8>>> {
        if !self.config.rate_limit_by_sender {
            return None;
        }
        let limiter = self.limiter.as_mut()?;
        let key = format!("sender:{}", inv.envelope.sender);
        match limiter.check(&key, now) {
            RateDecision::Limited {
                retry_after_secs,
                limit_text: limit,
            } => Some(rate_limited(retry_after_secs, &limit)),
            RateDecision::Allowed => None,
        }
    }

    /// Encodes the handler's outcome (spec 8.3 / 9): a reply envelope from the
    /// agent to the sender, or -32603 with a sanitised message.
    pub fn finish(
        &mut self,
        inv: Invocation,
        outcome: HandlerOutcome,
        now: UnixTime,
    ) -> Response<Vec<u8>> {
        let payload = match outcome {
            HandlerOutcome::Skill(r) => Payload::TaskResponse(TaskResponse {
                task_id: inv
                    .task_id
                    .clone()
                    .unwrap_or_else(|| format!("task_{}", self.ids.next(now))),
                status: r.status,
                result: r.result,
                final_state: r.final_state,
                metrics: r.metrics,
            }),
            HandlerOutcome::Reply(p) => p,
            HandlerOutcome::Envelope(env) => {
                return json_response(
                    StatusCode::OK,
                    SuccessResponse::new(env, inv.request_id).to_vec(),
                );
            }
            HandlerOutcome::Failed(err) => {
                return rpc_error(&self.internal_error(Some(inv.request_id), &err))
            }
        };
        let id = self.ids.next_string(now);
        let mut reply = inv.envelope.reply(
            id,
            Timestamp::from_unix(now),
            self.manifest().id.clone(),
            payload,
        );
        if self.config.trace_extensions && !has_remote_trace_context(&inv.envelope) {
            let trace = format!("{:016x}{:016x}", self.ids.next_u64(), self.ids.next_u64());
            let span = format!("{:016x}", self.ids.next_u64());
            let mut ext = JsonObject::new();
            ext.insert("trace_id".into(), trace.clone().into());
            ext.insert("span_id".into(), span.into());
            reply.extensions = Some(ext);
            reply.trace_id.get_or_insert(trace);
        }
        json_response(
            StatusCode::OK,
            SuccessResponse::new(reply, inv.request_id).to_vec(),
        )
    }

    /// The error response for a handler failure: an ASAP protocol error
    /// (`asap:task/not_found`, `asap:protocol/invalid_state`, ...) is -32602 with
    /// the error object in `data`, as the protocol documentation maps it (the
    /// reference answers -32603); anything else is -32603, details only in debug mode.
    #[must_use]
    pub fn internal_error(&self, id: Option<RequestId>, err: &HandlerError) -> ErrorResponse {
        if let HandlerError::Asap(e) = err {
            if e.code.starts_with("asap:task/") || e.code.starts_with("asap:protocol/") {
                return ErrorResponse::invalid_params_asap(&e.message, e, id);
            }
        }
        let detail = self.config.debug.then(|| match err {
            HandlerError::Asap(e) => {
                json!({"error": e.message, "type": e.code, "details": e.details})
            }
            HandlerError::Failed { message, kind } => json!({"error": message, "type": kind}),
        });
        ErrorResponse::internal(id, detail)
    }
}

fn is_lower_hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        && s.bytes().any(|b| b != b'0')
}

/// Whether the envelope carries a W3C trace context (32-hex `trace_id` and
/// 16-hex `extensions.span_id`) that the reply continues without new extensions.
#[must_use]
pub fn has_remote_trace_context(env: &Envelope) -> bool {
    let span = env
        .extensions
        .as_ref()
        .and_then(|e| e.get("span_id"))
        .and_then(Value::as_str);
    matches!((env.trace_id.as_deref(), span), (Some(t), Some(s)) if is_lower_hex(t, 32) && is_lower_hex(s, 16))
}

/// The reference's 429: JSON-RPC-shaped body with code 429 and `Retry-After`.
#[must_use]
pub fn rate_limited(retry_after_secs: u64, limit: &str) -> Response<Vec<u8>> {
    let mut r = json_response(
        StatusCode::TOO_MANY_REQUESTS,
        ErrorResponse::rate_limited_body(retry_after_secs, limit),
    );
    r.headers_mut().insert(
        header::RETRY_AFTER,
        http::HeaderValue::from(retry_after_secs),
    );
    r
}

/// Why a request body was refused before JSON parsing.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BodyError {
    /// More bytes on the wire than allowed (413).
    #[error("request body of at least {0} bytes exceeds the maximum")]
    TooLarge(u64),
    /// More bytes after decompression than allowed (413).
    #[error("decompressed body of at least {0} bytes exceeds the maximum")]
    DecompressedTooLarge(u64),
    /// The body does not decode with its `Content-Encoding` (400).
    #[error("invalid compressed data: {0}")]
    InvalidCompressedData(String),
}

/// Decompresses a request body per `plan`, stopping at `plan.max_body + 1`
/// output bytes so a decompression bomb costs one bound's worth of work.
pub fn decode_body(raw: &[u8], plan: BodyPlan) -> Result<std::borrow::Cow<'_, [u8]>, BodyError> {
    use std::io::Read;
    if raw.len() > plan.max_body {
        return Err(BodyError::TooLarge(raw.len() as u64));
    }
    let reader: Box<dyn Read + '_> = match plan.encoding {
        ContentEncoding::Identity => return Ok(std::borrow::Cow::Borrowed(raw)),
        ContentEncoding::Gzip => {
            if raw.len() < 2 || raw[0] != 0x1f || raw[1] != 0x8b {
                let head: String = raw.iter().take(2).map(|b| char::from(*b)).collect();
                return Err(BodyError::InvalidCompressedData(format!(
                    "Not a gzipped file (b'{head}')"
                )));
            }
            Box::new(flate2::read::MultiGzDecoder::new(raw))
        }
        ContentEncoding::Brotli => Box::new(brotli_decompressor::Decompressor::new(raw, 16 * 1024)),
    };
    let mut out = Vec::with_capacity(raw.len().saturating_mul(4).min(plan.max_body));
    reader
        .take(plan.max_body as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| BodyError::InvalidCompressedData(e.to_string()))?;
    if out.len() > plan.max_body {
        return Err(BodyError::DecompressedTooLarge(out.len() as u64));
    }
    Ok(std::borrow::Cow::Owned(out))
}

/// Scans JSON text for nesting deeper than `max` without parsing it;
/// `Err(depth)` when exceeded. Strings (and escapes in them) are skipped.
pub fn check_depth(bytes: &[u8], max: usize) -> Result<(), usize> {
    let mut depth = 0usize;
    let mut in_str = false;
    let mut escaped = false;
    for &b in bytes {
        if in_str {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_str = false;
            }
            continue;
        }
        match b {
            b'"' => in_str = true,
            b'{' | b'[' => {
                depth += 1;
                if depth > max {
                    return Err(depth);
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    Ok(())
}
