//! The ASAP HTTP server on tokio + axum: a [`Router`] to mount in your app, or
//! [`serve`] to run it on a listener with graceful shutdown.
//!
//! Every accept/reject decision is made by [`asap_proto::server::Server`];
//! this module reads bodies (bounded), decompresses them (bounded), runs the
//! user's async handlers and writes responses.
//!
//! ```no_run
//! use asap_tokio::server::{Agent, SkillContext};
//! use asap_proto::model::{AgentUrn, Manifest, Skill, TaskRequest};
//! use asap_proto::server::SkillResult;
//!
//! # async fn run() -> std::io::Result<()> {
//! let mut manifest = Manifest::new(AgentUrn::new("urn:asap:agent:demo").unwrap(), "Demo", "1.0.0", "demo", "http://127.0.0.1:8000/asap");
//! manifest.capabilities.skills.push(Skill::new("upper", "Upper-case the text"));
//! let agent = Agent::builder(manifest)
//!     .skill("upper", |_ctx: SkillContext, req: TaskRequest| async move {
//!         let text = req.input.get("text").and_then(|v| v.as_str()).unwrap_or("").to_uppercase();
//!         let mut out = serde_json::Map::new();
//!         out.insert("text".into(), text.into());
//!         Ok(SkillResult::completed(out))
//!     })
//!     .build();
//! // Mount in an existing axum app ...
//! let app: axum::Router = axum::Router::new().merge(asap_tokio::server::router(agent.clone()));
//! // ... or serve directly.
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! asap_tokio::server::serve(listener, agent, async { let _ = tokio::signal::ctrl_c().await; }).await
//! # }
//! ```

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use crate::store::TaskRecorder;
use asap_blocking::store::Stores;
use asap_proto::model::{Envelope, Manifest, Payload, PayloadKind, TaskRequest, UnixTime};
use asap_proto::server::state::{answer_state_query, apply_state_restore, task_records};
use asap_proto::server::{
    Decision, HandlerError, HandlerOutcome, HandlerRef, HandlerTable, HealthReport, Invocation,
    Server, ServerConfig, SkillResult,
};
pub use asap_proto::server::{HandlerReply, SkillContext};
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::any;
use axum::Router;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tracing::Instrument;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type SkillFn = Arc<
    dyn Fn(SkillContext, TaskRequest) -> BoxFuture<Result<SkillResult, HandlerError>> + Send + Sync,
>;
type PayloadFn =
    Arc<dyn Fn(Envelope, Payload) -> BoxFuture<Result<HandlerReply, HandlerError>> + Send + Sync>;
type HealthFn = Arc<dyn Fn() -> HealthReport + Send + Sync>;

/// An agent: manifest, policy, skills and payload handlers. Cheap to clone.
#[derive(Clone)]
pub struct Agent {
    inner: Arc<AgentInner>,
}

struct AgentInner {
    core: Mutex<Server>,
    handlers: HandlerTable<SkillFn, PayloadFn>,
    health: HealthFn,
    stores: Option<TaskRecorder>,
}

/// Runs a store operation on the recorder's thread, as a handler result.
async fn with_stores<T: Send + 'static>(
    recorder: &TaskRecorder,
    f: impl FnOnce(&mut Stores) -> Result<T, HandlerError> + Send + 'static,
) -> Result<T, HandlerError> {
    recorder.call(f).await.unwrap_or_else(|e| {
        Err(HandlerError::failed(format!(
            "state store unavailable: {e}"
        )))
    })
}

impl std::fmt::Debug for Agent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Agent")
            .field("handlers", &self.inner.handlers)
            .finish_non_exhaustive()
    }
}

/// Builds an [`Agent`].
pub struct AgentBuilder {
    manifest: Manifest,
    config: ServerConfig,
    handlers: HandlerTable<SkillFn, PayloadFn>,
    health: HealthFn,
    stores: Option<TaskRecorder>,
}

impl Agent {
    /// Starts building an agent serving `manifest`.
    #[must_use]
    pub fn builder(manifest: Manifest) -> AgentBuilder {
        AgentBuilder {
            manifest,
            config: ServerConfig::default(),
            handlers: HandlerTable::default(),
            health: Arc::new(HealthReport::default),
            stores: None,
        }
    }

    /// The manifest this agent serves.
    #[must_use]
    pub fn manifest(&self) -> Manifest {
        lock(&self.inner.core).manifest().clone()
    }
}

fn lock(m: &Mutex<Server>) -> std::sync::MutexGuard<'_, Server> {
    // A panic while holding the lock cannot leave the core half-updated in a way
    // that matters more than refusing all further requests would.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AgentBuilder {
    /// Replaces the server policy.
    #[must_use]
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.config = config;
        self
    }

    /// Registers an async skill for `task.request` with `skill_id`.
    #[must_use]
    pub fn skill<F, Fut>(mut self, skill_id: &str, f: F) -> Self
    where
        F: Fn(SkillContext, TaskRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<SkillResult, HandlerError>> + Send + 'static,
    {
        self.handlers
            .add_skill(skill_id, Arc::new(move |c, r| Box::pin(f(c, r))));
        self
    }

    /// Registers the reference's echo skill under `skill_id`: result `{"echoed": input}`.
    #[must_use]
    pub fn echo_skill(self, skill_id: &str) -> Self {
        self.skill(skill_id, |_ctx, req: TaskRequest| async move {
            Ok(SkillResult::echo_input(req.input))
        })
    }

    /// Registers an async handler for a payload kind (all its spellings).
    #[must_use]
    pub fn handler<F, Fut>(mut self, kind: PayloadKind, f: F) -> Self
    where
        F: Fn(Envelope, Payload) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HandlerReply, HandlerError>> + Send + 'static,
    {
        self.handlers
            .add_kind(kind, Arc::new(move |e, p| Box::pin(f(e, p))));
        self
    }

    /// Registers an async handler for a custom `payload_type` (exact spelling).
    #[must_use]
    pub fn custom_handler<F, Fut>(mut self, payload_type: &str, f: F) -> Self
    where
        F: Fn(Envelope, Payload) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<HandlerReply, HandlerError>> + Send + 'static,
    {
        self.handlers
            .add_custom(payload_type, Arc::new(move |e, p| Box::pin(f(e, p))));
        self
    }

    /// Supplies the health verdict and load figures served at `/.well-known/asap/health`.
    #[must_use]
    pub fn health<F: Fn() -> HealthReport + Send + Sync + 'static>(mut self, f: F) -> Self {
        self.health = Arc::new(f);
        self
    }

    /// Persists task state through `recorder` (memory or SQLite stores moved to
    /// their thread with [`TaskRecorder::spawn`]): every skill run is recorded
    /// (task transitions, snapshot, usage event, group-committed) before it is
    /// answered, and `state.query` / `state.restore` are answered from the
    /// snapshot store.
    ///
    /// ```no_run
    /// # fn demo(manifest: asap_proto::model::Manifest) -> Result<(), Box<dyn std::error::Error>> {
    /// use asap_proto::store::{StorageBackend, StorageConfig};
    /// let config = StorageConfig::from_values_or(StorageBackend::Sqlite, None, None)?;
    /// let stores = asap_blocking::store::open_stores(&config)?;
    /// let agent = asap_tokio::Agent::builder(manifest)
    ///     .echo_skill("echo")
    ///     .stores(asap_tokio::store::TaskRecorder::spawn(stores)?)
    ///     .build();
    /// # let _ = agent; Ok(()) }
    /// ```
    #[must_use]
    pub fn stores(mut self, recorder: TaskRecorder) -> Self {
        let q = recorder.clone();
        self = self.handler(PayloadKind::StateQuery, move |_env, p| {
            let q = q.clone();
            async move {
                let Payload::StateQuery(query) = p else {
                    return Err(HandlerError::failed("expected a state.query payload"));
                };
                with_stores(&q, move |s| {
                    answer_state_query(s.snapshots.as_ref(), &query)
                })
                .await
                .map(HandlerReply::Payload)
            }
        });
        let r = recorder.clone();
        self = self.handler(PayloadKind::StateRestore, move |_env, p| {
            let r = r.clone();
            async move {
                let Payload::StateRestore(restore) = p else {
                    return Err(HandlerError::failed("expected a state.restore payload"));
                };
                let now = wall_now();
                let id = format!(
                    "snap_{}",
                    asap_proto::model::Ulid::new(now, u128::from(random_seed()))
                );
                with_stores(&r, move |s| {
                    apply_state_restore(s.snapshots.as_mut(), &restore, id, now)
                })
                .await
                .map(HandlerReply::Payload)
            }
        });
        self.stores = Some(recorder);
        self
    }

    /// Finishes the agent.
    #[must_use]
    pub fn build(self) -> Agent {
        let mut core = Server::new(self.manifest, self.config, Instant::now(), random_seed());
        core.set_routes(self.handlers.routes());
        Agent {
            inner: Arc::new(AgentInner {
                core: Mutex::new(core),
                handlers: self.handlers,
                health: self.health,
                stores: self.stores,
            }),
        }
    }
}

fn random_seed() -> u64 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 8];
    if SystemRandom::new().fill(&mut b).is_err() {
        // No OS randomness: ids stay unique (time + counter), only less unpredictable.
        return SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
    }
    u64::from_le_bytes(b)
}

fn wall_now() -> UnixTime {
    UnixTime::from_system_time(SystemTime::now())
}

/// The ASAP routes (`/asap`, `/.well-known/asap/*`, `/health`, `/ready`) as an
/// axum [`Router`] to merge into your own app. Client IPs for rate limiting come
/// from `ConnectInfo<SocketAddr>` when the app is served with
/// `into_make_service_with_connect_info`, else every client counts as 127.0.0.1
/// (as the reference does when it cannot tell).
pub fn router(agent: Agent) -> Router {
    routes().with_state(agent)
}

fn routes() -> Router<Agent> {
    Router::new()
        .route("/asap", any(handle))
        .route("/.well-known/asap/manifest.json", any(handle))
        .route("/.well-known/asap/health", any(handle))
        .route("/health", any(handle))
        .route("/ready", any(handle))
        .route("/asap/metrics", any(handle))
}

/// Serves `agent` on `listener` until `shutdown` completes, then drains in-flight requests.
pub async fn serve<S>(
    listener: tokio::net::TcpListener,
    agent: Agent,
    shutdown: S,
) -> std::io::Result<()>
where
    S: Future<Output = ()> + Send + 'static,
{
    let app = routes().fallback(any(handle)).with_state(agent);
    axum::serve(
        listener,
        app.into_make_service_with_connect_info::<SocketAddr>(),
    )
    .with_graceful_shutdown(shutdown)
    .await
}

async fn handle(
    axum::extract::State(agent): axum::extract::State<Agent>,
    req: Request<Body>,
) -> Response<Body> {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let span = tracing::info_span!(
        "asap.request",
        http.method = %method,
        http.path = %path,
        payload_type = tracing::field::Empty,
        envelope_id = tracing::field::Empty,
        outcome = tracing::field::Empty,
        status = tracing::field::Empty,
        latency_us = tracing::field::Empty,
    );
    let is_post = path == "/asap" && method == http::Method::POST;
    let mut kind = None;
    let response = async {
        if is_post {
            handle_post(&agent, req, &mut kind).await
        } else {
            let health = (agent.inner.health)();
            lock(&agent.inner.core).handle_get(
                &method,
                &path,
                req.headers(),
                Instant::now(),
                health,
            )
        }
    }
    .instrument(span.clone())
    .await;
    span.record("status", response.status().as_u16());
    if is_post {
        lock(&agent.inner.core).record_request(kind, response.status().as_u16(), started.elapsed());
    }
    span.record("latency_us", started.elapsed().as_micros() as u64);
    tracing::debug!(parent: &span, "request done");
    response.map(Body::from)
}

async fn handle_post(
    agent: &Agent,
    req: Request<Body>,
    kind: &mut Option<PayloadKind>,
) -> Response<Vec<u8>> {
    let client = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map_or_else(|| "127.0.0.1".to_owned(), |c| c.0.ip().to_string());
    let early = lock(&agent.inner.core).begin_post(req.headers(), &client, Instant::now());
    let plan = match early {
        Ok(plan) => plan,
        Err(resp) => {
            let limit = lock(&agent.inner.core).config().max_request_size;
            drain(req.into_body(), limit).await;
            return outcome(resp, "rejected_headers");
        }
    };
    let mut body = req.into_body();
    let raw = match read_bounded(&mut body, plan.max_body).await {
        Ok(b) => b,
        Err(ReadError::TooLarge(n)) => {
            drain(body, plan.max_body).await;
            return outcome(lock(&agent.inner.core).body_too_large(n), "too_large");
        }
        Err(ReadError::Transport) => {
            return outcome(
                Response::builder()
                    .status(StatusCode::BAD_REQUEST)
                    .body(asap_proto::jsonrpc::detail_body(
                        "Could not read request body",
                    ))
                    .unwrap_or_default(),
                "body_error",
            )
        }
    };
    let body = match asap_proto::server::decode_body(&raw, plan) {
        Ok(b) => b,
        Err(e) => return outcome(lock(&agent.inner.core).body_error(&e), "bad_body"),
    };
    let decision = lock(&agent.inner.core).handle_body(&body, wall_now());
    let inv = match decision {
        Decision::Respond(resp) => return outcome(resp, "rpc_error"),
        Decision::Invoke(inv) => inv,
    };
    *kind = inv.envelope.kind();
    let span = tracing::Span::current();
    span.record("payload_type", inv.envelope.payload_type.as_str());
    span.record("envelope_id", inv.envelope.id.as_str());
    if let Some(resp) = lock(&agent.inner.core).check_sender_rate(&inv, Instant::now()) {
        return outcome(resp, "rate_limited");
    }
    let mut result = run_handler(agent, &inv).await;
    if let (HandlerOutcome::Skill(skill), Some(stores), Some(task_id)) =
        (&result, &agent.inner.stores, &inv.task_id)
    {
        // Persist before answering: an acknowledged task is on disk.
        let now = wall_now();
        let snapshot_id = format!("snap_{}", lock(&agent.inner.core).new_id(now));
        let records = task_records(task_id, snapshot_id, &inv, skill, inv.accepted_at, now);
        let saved = stores
            .record(records)
            .await
            .map_err(|e| HandlerError::failed(format!("could not persist task state: {e}")));
        if let Err(e) = saved {
            result = HandlerOutcome::Failed(e);
        }
    }
    let ok = !matches!(result, HandlerOutcome::Failed(_));
    if let HandlerOutcome::Failed(err) = &result {
        tracing::warn!(error = %err, "handler failed");
    }
    let resp = lock(&agent.inner.core).finish(inv, result, wall_now());
    outcome(resp, if ok { "ok" } else { "handler_error" })
}

fn outcome(resp: Response<Vec<u8>>, what: &'static str) -> Response<Vec<u8>> {
    tracing::Span::current().record("outcome", what);
    resp
}

async fn run_handler(agent: &Agent, inv: &Invocation) -> HandlerOutcome {
    use futures_util::FutureExt as _;
    // A panicking handler must not take the connection down: catch it in place
    // (a spawned task would cost a cross-thread wake-up per request).
    let joined = match (agent.inner.handlers.get(&inv.route), &inv.payload) {
        (Some(HandlerRef::Skill(f)), Payload::TaskRequest(req)) => {
            let ctx = SkillContext {
                envelope: inv.envelope.clone(),
            };
            match std::panic::AssertUnwindSafe(f(ctx, req.clone()))
                .catch_unwind()
                .await
            {
                Ok(r) => r.map(HandlerOutcome::Skill),
                Err(_) => Err(HandlerError::failed("skill handler panicked")),
            }
        }
        (Some(HandlerRef::Payload(f)), _) => {
            match std::panic::AssertUnwindSafe(f(inv.envelope.clone(), inv.payload.clone()))
                .catch_unwind()
                .await
            {
                Ok(r) => r.map(HandlerOutcome::from),
                Err(_) => Err(HandlerError::failed("handler panicked")),
            }
        }
        _ => Err(HandlerError::failed("route has no handler")),
    };
    joined.unwrap_or_else(HandlerOutcome::Failed)
}

enum ReadError {
    TooLarge(u64),
    Transport,
}

/// Reads and discards what is left of a refused body (bounded in bytes and time),
/// so the client, still uploading, can read our error instead of a connection reset.
async fn drain(mut body: Body, limit: usize) {
    let budget = limit.saturating_mul(2);
    let read = async {
        let mut seen = 0usize;
        while let Some(Ok(frame)) = body.frame().await {
            seen += frame.data_ref().map_or(0, |d| d.len());
            if seen > budget {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(std::time::Duration::from_secs(5), read).await;
}

async fn read_bounded(body: &mut Body, max: usize) -> Result<Vec<u8>, ReadError> {
    let mut out = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| ReadError::Transport)?;
        if let Ok(data) = frame.into_data() {
            if out.len() + data.len() > max {
                return Err(ReadError::TooLarge((out.len() + data.len()) as u64));
            }
            out.extend_from_slice(&data);
        }
    }
    Ok(out)
}
