//! The ASAP HTTP server on tokio + axum: a [`Router`] to mount in your app, or
//! [`serve`] to run it on a listener with graceful shutdown.
//!
//! Every accept/reject decision is made by [`asap_proto::server::Server`];
//! this module reads bodies (bounded), decompresses them (bounded), runs the
//! user's async handlers and writes responses.
//!
//! ```no_run
//! use asap_tokio::server::{Agent, SkillContext};
//! use asap_tokio::{AgentUrn, Manifest, Skill, SkillResult, TaskRequest};
//!
//! # async fn run() -> std::io::Result<()> {
//! let manifest = Manifest::new(AgentUrn::new("urn:asap:agent:demo").unwrap(), "Demo", "1.0.0", "demo", "http://127.0.0.1:8000/asap");
//! let agent = Agent::builder(manifest)
//!     .skill_with(Skill::new("upper", "Upper-case the text"), |_ctx: SkillContext, req: TaskRequest| async move {
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
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Instant, SystemTime};

use crate::store::TaskRecorder;
use asap_proto::model::{Envelope, Manifest, Payload, PayloadKind, Skill, TaskRequest, UnixTime};
use asap_proto::server::{
    AgentCode, AgentParts, BodyBudget, BodyError, BodyShare, BodyTimer, Exchange, FirstAnswer,
    HandlerError, HandlerOutcome, HandlerRef, HealthReport, Invocation, Metrics, Now, Parking,
    PushSink, Reply, RequestHead, Server, ServerConfig, SkillResult, StateRequest, Step, Transport,
};
pub use asap_proto::server::{HandlerReply, SkillContext};
use asap_proto::store::StoreError;
use asap_proto::ws::SessionConfig;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::routing::any;
use axum::Router;
use http::{Request, Response};
use http_body_util::BodyExt;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;
type SkillFn = Arc<
    dyn Fn(SkillContext, TaskRequest) -> BoxFuture<Result<SkillResult, HandlerError>> + Send + Sync,
>;
type PayloadFn =
    Arc<dyn Fn(Envelope, Payload) -> BoxFuture<Result<HandlerReply, HandlerError>> + Send + Sync>;
type HealthFn = Arc<dyn Fn() -> HealthReport + Send + Sync>;

/// An async agent: manifest, policy, async skills and payload handlers, task
/// state on its recorder thread. Cheap to clone; mount it with [`router`].
#[derive(Clone, Debug)]
pub struct Agent {
    pub(crate) inner: Arc<AgentInner>,
}

#[derive(Debug)]
pub(crate) struct AgentInner {
    pub(crate) core: Mutex<Server>,
    metrics: Mutex<Metrics>,
    /// Request-body bytes in flight, for all requests.
    bodies: Mutex<BodyBudget>,
    code: AgentCode<SkillFn, PayloadFn, HealthFn, TaskRecorder>,
    /// Policy of each `/asap/ws` connection.
    pub(crate) websocket: SessionConfig,
    /// Tells open WebSocket connections the server is going away.
    pub(crate) shutdown: tokio::sync::watch::Sender<bool>,
    /// Copies of running envelopes, parked until the first answers (`Step::AwaitFirst`).
    parked: Mutex<Parking<tokio::sync::oneshot::Sender<FirstAnswer>>>,
    /// Performs the core's auth fetches (key sets, introspection).
    idp: reqwest::Client,
    /// Woken after each auth fetch is reported (`Step::AwaitFetch`).
    auth_fetched: tokio::sync::Notify,
    /// The webhook outbox task events are published to.
    webhooks: Option<crate::webhook::Webhooks>,
}

/// Builds an [`Agent`] from async handlers.
#[derive(Debug)]
pub struct AgentBuilder {
    parts: AgentParts<SkillFn, PayloadFn, HealthFn, TaskRecorder>,
    websocket: SessionConfig,
    auth: Option<asap_proto::server::ServerAuth>,
    webhooks: Option<crate::webhook::Webhooks>,
}

impl Agent {
    /// Starts building an agent serving `manifest`.
    #[must_use]
    pub fn builder(manifest: Manifest) -> AgentBuilder {
        AgentBuilder {
            parts: AgentParts::new(manifest),
            websocket: SessionConfig::default(),
            auth: None,
            webhooks: None,
        }
    }

    /// The manifest this agent serves.
    #[must_use]
    pub fn manifest(&self) -> Manifest {
        lock(&self.inner.core).manifest().clone()
    }

    /// Closes every open `/asap/ws` connection with 1001 "Server shutting
    /// down" ([`serve`] does this on shutdown; call it yourself when you
    /// mount [`router`] in your own app).
    pub fn shutdown_websockets(&self) {
        self.inner.shutdown.send_replace(true);
    }
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding the lock cannot leave the core half-updated in a way
    // that matters more than refusing all further requests would.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl AgentBuilder {
    /// Replaces the server policy.
    #[must_use]
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.parts.config = config;
        self
    }

    /// Requires tokens on the protected routes (spec §11; see
    /// [`crate::auth::AuthSettings::server_auth`] or
    /// [`ServerAuth::custom`](asap_proto::server::ServerAuth::custom)).
    #[must_use]
    pub fn auth(mut self, auth: asap_proto::server::ServerAuth) -> Self {
        self.auth = Some(auth);
        self
    }

    /// Replaces the `/asap/ws` per-connection policy (heartbeat, idle close,
    /// message rate).
    #[must_use]
    pub fn websocket(mut self, config: SessionConfig) -> Self {
        self.websocket = config;
        self
    }

    /// Declares `skill` in the served manifest and registers `f` as its handler,
    /// in one call: the manifest entry (description, schemas) and the code
    /// cannot drift apart. The declaration replaces a manifest entry with the
    /// same id.
    ///
    /// ```
    /// use asap_tokio::{Agent, AgentUrn, Manifest, Skill, SkillResult};
    /// let manifest = Manifest::new(AgentUrn::new("urn:asap:agent:demo").unwrap(), "Demo",
    ///     "1.0.0", "demo", "http://127.0.0.1:8000/asap");
    /// let agent = Agent::builder(manifest)
    ///     .skill_with(Skill::new("upper", "Upper-case the text"), |_ctx, req| async move {
    ///         match req.input.get("text").and_then(|v| v.as_str()) {
    ///             Some(text) => {
    ///                 let mut out = asap_tokio::JsonObject::new();
    ///                 out.insert("text".into(), text.to_uppercase().into());
    ///                 Ok(SkillResult::completed(out))
    ///             }
    ///             None => Ok(SkillResult::failed("input.text must be a string")),
    ///         }
    ///     })
    ///     .build();
    /// assert_eq!(agent.manifest().capabilities.skills[0].description, "Upper-case the text");
    /// ```
    #[must_use]
    pub fn skill_with<F, Fut>(mut self, skill: Skill, f: F) -> Self
    where
        F: Fn(SkillContext, TaskRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<SkillResult, HandlerError>> + Send + 'static,
    {
        let id = skill.id.clone();
        self.parts.declare_skill(skill);
        self.skill(&id, f)
    }

    /// Registers an async skill for `task.request` with `skill_id`. A skill
    /// the manifest does not declare is listed with its id as description;
    /// [`skill_with`](Self::skill_with) declares and registers it in one call.
    #[must_use]
    pub fn skill<F, Fut>(mut self, skill_id: &str, f: F) -> Self
    where
        F: Fn(SkillContext, TaskRequest) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<SkillResult, HandlerError>> + Send + 'static,
    {
        self.parts
            .handlers
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
        self.parts
            .handlers
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
        self.parts
            .handlers
            .add_custom(payload_type, Arc::new(move |e, p| Box::pin(f(e, p))));
        self
    }

    /// Supplies the health verdict and load figures served at `/.well-known/asap/health`.
    #[must_use]
    pub fn health<F: Fn() -> HealthReport + Send + Sync + 'static>(mut self, f: F) -> Self {
        self.parts.health = Some(Arc::new(f));
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
    /// let stores = asap_tokio::store::open_stores(&config)?;
    /// let agent = asap_tokio::Agent::builder(manifest)
    ///     .echo_skill("echo")
    ///     .stores(asap_tokio::store::TaskRecorder::spawn(stores)?)
    ///     .build();
    /// # let _ = agent; Ok(()) }
    /// ```
    ///
    /// With nonces checked, accepted nonces are recorded too, and those live
    /// when the stores were opened are refused again (a restart forgets none).
    #[must_use]
    pub fn stores(mut self, mut recorder: TaskRecorder) -> Self {
        self.parts.restored_nonces = recorder.take_restored_nonces();
        self.parts.restored_dedup = recorder.take_restored_dedup();
        self.parts.stores = Some(recorder);
        self
    }

    /// Publishes task events to webhook subscribers through `webhooks`
    /// (subscribers and the callback policy are [`ServerConfig::webhooks`]):
    /// a skill's pushes and its final `task.response`, written to the outbox
    /// before the response is sent.
    #[must_use]
    pub fn webhooks(mut self, webhooks: crate::webhook::Webhooks) -> Self {
        self.webhooks = Some(webhooks);
        self
    }

    /// Finishes the agent.
    #[must_use]
    pub fn build(self) -> Agent {
        let config = &self.parts.config;
        let bodies = BodyBudget::new(
            config.max_body_bytes_in_flight,
            config.connections.retry_after_secs,
        );
        let (mut core, code) = self.parts.into_server(Instant::now(), random_seed());
        if let Some(auth) = self.auth {
            core.set_auth(auth);
        }
        let inner = AgentInner {
            core: Mutex::new(core),
            metrics: Mutex::default(),
            bodies: Mutex::new(bodies),
            code,
            websocket: self.websocket,
            shutdown: tokio::sync::watch::Sender::new(false),
            parked: Mutex::default(),
            idp: crate::auth::idp_client(),
            auth_fetched: tokio::sync::Notify::new(),
            webhooks: self.webhooks,
        };
        Agent {
            inner: Arc::new(inner),
        }
    }
}

fn health(source: &Option<HealthFn>) -> HealthReport {
    source.as_ref().map_or_else(HealthReport::default, |f| f())
}

pub(crate) fn random_seed() -> u64 {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; 8];
    // Without OS randomness ids stay unique (time + counter), only less unpredictable.
    match SystemRandom::new().fill(&mut b) {
        Ok(()) => u64::from_le_bytes(b),
        Err(_) => wall_now().as_micros().unsigned_abs(),
    }
}

pub(crate) fn wall_now() -> UnixTime {
    UnixTime::from_system_time(SystemTime::now())
}

/// The ASAP routes (`/asap`, `/asap/ws`, `/.well-known/asap/*`, `/health`, `/ready`) as an
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
        .route("/asap/ws", any(crate::ws::upgrade))
        .route("/.well-known/asap/manifest.json", any(handle))
        .route("/.well-known/asap/health", any(handle))
        .route("/health", any(handle))
        .route("/ready", any(handle))
        .route("/asap/metrics", any(handle))
}

/// Serves `agent` on `listener` until `shutdown` completes, then drains in-flight
/// requests. Connections are held to the agent's [`ServerConfig`]: the
/// connection budget (from the descriptor limit), header, keep-alive and body
/// timeouts, the header cap (see [`crate::connection`]).
pub async fn serve<S>(
    listener: tokio::net::TcpListener,
    agent: Agent,
    shutdown: S,
) -> std::io::Result<()>
where
    S: Future<Output = ()> + Send + 'static,
{
    let config = lock(&agent.inner.core).config().clone();
    let app = routes().fallback(any(handle)).with_state(agent.clone());
    let shutdown = async move {
        shutdown.await;
        // Upgraded connections are not hyper's to drain: tell them, then give
        // their close frames a moment to go out.
        agent.shutdown_websockets();
        crate::ws::wait_closed(&agent, std::time::Duration::from_secs(5)).await;
    };
    crate::connection::serve(listener, app, &config, shutdown).await
}

pub(crate) fn now() -> Now {
    Now {
        monotonic: Instant::now(),
        wall: wall_now(),
    }
}

/// `POST /asap` and the other HTTP routes: one exchange, driven by [`drive`].
async fn handle(
    axum::extract::State(agent): axum::extract::State<Agent>,
    req: Request<Body>,
) -> Response<Body> {
    let (parts, body) = req.into_parts();
    let peer = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let head = RequestHead {
        method: &parts.method,
        path: parts.uri.path(),
        headers: &parts.headers,
        peer,
        transport: Transport::Http,
    };
    let opened = now();
    let ex = lock(&agent.inner.core).handle_request(&head, opened);
    let mut body = BodySource::Http(body);
    let reply = drive(&agent, ex, &mut body, None, opened).await;
    if let (Some(limit), BodySource::Http(body)) = (reply.drain_body, body) {
        drain(body, limit).await;
    }
    record(&agent, &reply);
    reply.response.map(Body::from)
}

/// Where an exchange's body comes from.
pub(crate) enum BodySource {
    /// An HTTP request body, read bounded (bytes, time, the body budget).
    Http(Body),
    /// One WebSocket text frame.
    Frame(axum::extract::ws::Utf8Bytes),
}

/// The driver loop: performs each step of the core's exchange (see
/// `asap_proto::server` for the call order). `ws` is the connection's report
/// channel when the exchange is a WebSocket frame (acks and pushes go there);
/// `opened` is when the request arrived (its body timers run from there).
pub(crate) async fn drive(
    agent: &Agent,
    ex: Exchange,
    body: &mut BodySource,
    ws: Option<&crate::ws::Reports>,
    opened: Now,
) -> Reply {
    let inner = &agent.inner;
    let mut held = Unanswered {
        agent,
        ex: Some(ex),
    };
    // Held until the answer is built: the decoded request is as large as its body.
    let mut share = None;
    // A large body makes every later step large too: those run off the runtime.
    let mut heavy = false;
    loop {
        let Some(ex) = held.ex.as_mut() else {
            return internal_error();
        };
        match ex.poll_step() {
            Step::ReadBody { limit } => {
                let raw = match body {
                    BodySource::Http(body) => {
                        let timer = BodyTimer::new(&ex.timeouts(), opened.monotonic);
                        let share = share.insert(BodyShare::new(&inner.bodies, limit));
                        read_bounded(body, timer, share)
                            .await
                            .map(axum::body::Bytes::from)
                    }
                    BodySource::Frame(text) => {
                        // Zero-copy: the frame's bytes are shared, not copied.
                        let bytes = axum::body::Bytes::from(text.clone());
                        Ok(bytes.slice(..bytes.len().min(limit + 1)))
                    }
                };
                match raw {
                    Ok(raw) if raw.len() >= OFFLOAD_BYTES => {
                        heavy = true;
                        // The body's bytes are freed off the runtime too.
                        held.off_runtime(move |ex| ex.handle_body(&raw, wall_now()))
                            .await;
                    }
                    Ok(raw) => ex.handle_body(&raw, wall_now()),
                    Err(e) => ex.handle_body_error(e),
                }
            }
            Step::Admit => lock(&inner.core).handle_admission(ex, now()),
            Step::Invoke(inv) => {
                let push = push_sink(agent, ws, &inv);
                let outcome = run_handler(agent, inv, push).await;
                if heavy {
                    // Building the task records of a large request copies it.
                    held.off_runtime(move |ex| ex.handle_outcome(outcome, wall_now()))
                        .await;
                } else {
                    ex.handle_outcome(outcome, wall_now());
                }
            }
            Step::Persist(records) => {
                let saved = match &inner.code.stores {
                    Some(recorder) => recorder.record(records).await,
                    None => Err(StoreError::Backend("no task-state store".into())),
                };
                if heavy {
                    // Encoding the answer of a large request takes as long as decoding it.
                    held.off_runtime(move |ex| ex.handle_persisted(saved, wall_now()))
                        .await;
                } else {
                    ex.handle_persisted(saved, wall_now());
                }
            }
            Step::QueryState(request) => {
                ex.handle_state(run_state(agent, request).await, wall_now())
            }
            Step::CheckHealth => ex.handle_health(health(&inner.code.health), Instant::now()),
            Step::RenderMetrics => ex.handle_metrics(&lock(&inner.metrics)),
            Step::Notify(text) => {
                if let Some(reports) = ws {
                    reports.notify(text);
                }
            }
            Step::AwaitFirst { token } => {
                let (tx, rx) = tokio::sync::oneshot::channel();
                let ready = lock(&inner.parked).park(token, || tx);
                let first = match ready {
                    Some(answer) => answer,
                    None => rx.await.unwrap_or(None),
                };
                ex.handle_first_answer(first.as_deref(), wall_now());
            }
            Step::Fetch(request) => {
                let result = crate::auth::fetch_for_server(&inner.idp, request).await;
                lock(&inner.core).handle_fetched(ex, result, now());
                inner.auth_fetched.notify_waiters();
            }
            Step::AwaitFetch => {
                // Bounded: a fetch not reported in time is taken as lost by the core.
                let woken = inner.auth_fetched.notified();
                let _ = tokio::time::timeout(AUTH_WAIT, woken).await;
                lock(&inner.core).handle_fetch_waited(ex, now());
            }
            Step::Claim(claim) => {
                let decided = match &inner.code.stores {
                    Some(recorder) => recorder.claim(claim).await,
                    None => Ok(asap_proto::store::ClaimOutcome::Won),
                };
                ex.handle_claim(decided, now());
            }
            Step::AwaitClaim { until } => {
                tokio::time::sleep_until(until.into()).await;
                ex.handle_claim_waited(now());
            }
            Step::Respond(mut reply) => {
                if let Some(answered) = reply.answered.take() {
                    settle(agent, answered);
                }
                publish(agent, std::mem::take(&mut reply.publish)).await;
                return reply;
            }
        }
    }
}

/// Longest wait for another request's auth fetch before asking the core again.
const AUTH_WAIT: std::time::Duration = std::time::Duration::from_millis(100);

/// Where a skill's pushes go: the open WebSocket, the webhook subscribers of
/// the run, or both.
fn push_sink(
    agent: &Agent,
    ws: Option<&crate::ws::Reports>,
    inv: &Invocation,
) -> Option<Arc<dyn PushSink>> {
    let socket = ws.map(|reports| reports.push_sink(inv, agent));
    let hooked = match (&agent.inner.webhooks, &inv.webhooks) {
        (Some(w), Some(task)) => Some(w.push_sink(task.clone())),
        _ => None,
    };
    match (socket, hooked) {
        (Some(a), Some(b)) => Some(Arc::new(crate::webhook::BothPush(a, b))),
        (a, b) => a.or(b),
    }
}

/// The answer's webhook events, on disk before the answer goes out.
async fn publish(agent: &Agent, events: Vec<asap_proto::webhook::WebhookEvent>) {
    if events.is_empty() {
        return;
    }
    match &agent.inner.webhooks {
        Some(w) => {
            if let Err(e) = w.publish(events).await {
                tracing::error!(error = %e, "webhook events not persisted");
            }
        }
        None => tracing::warn!(
            count = events.len(),
            "webhook subscribers configured but no outbox attached (AgentBuilder::webhooks)"
        ),
    }
}

/// Bodies from this size on are decoded on the blocking pool: decoding a
/// pathological body (a million keys) takes long enough to delay every other
/// request queued on the same runtime worker.
const OFFLOAD_BYTES: usize = 256 * 1024;

fn internal_error() -> Reply {
    let mut response = Response::new(br#"{"detail":"Internal Server Error"}"#.to_vec());
    *response.status_mut() = http::StatusCode::INTERNAL_SERVER_ERROR;
    Reply {
        response,
        record: None,
        drain_body: None,
        answered: None,
        publish: Vec::new(),
    }
}

/// The exchange being driven. Dropped unanswered (its HTTP client or
/// WebSocket went away mid-handler), it settles its dedup admission so
/// copies waiting on it are not left waiting.
struct Unanswered<'a> {
    agent: &'a Agent,
    ex: Option<Exchange>,
}

impl Unanswered<'_> {
    /// Feeds the exchange one input on the blocking pool (if that panics the
    /// exchange is gone and the driver answers 500).
    async fn off_runtime(&mut self, input: impl FnOnce(&mut Exchange) + Send + 'static) {
        let Some(mut ex) = self.ex.take() else {
            return;
        };
        self.ex = tokio::task::spawn_blocking(move || {
            input(&mut ex);
            ex
        })
        .await
        .ok();
    }
}

impl Drop for Unanswered<'_> {
    fn drop(&mut self) {
        let Some(ex) = self.ex.as_mut() else { return };
        if let Some(answered) = ex.abandon() {
            settle(self.agent, answered);
        }
        // A won claim that no answer replaced: release it in the shared store.
        if let (Some(records), Some(recorder), Ok(rt)) = (
            ex.abandon_claim(wall_now()),
            self.agent.inner.code.stores.clone(),
            tokio::runtime::Handle::try_current(),
        ) {
            rt.spawn(async move {
                if let Err(e) = recorder.record(records).await {
                    tracing::warn!(error = %e, "an unanswered claim was not released; it ends with its lease");
                }
            });
        }
    }
}

/// Hands a first run's end to the core and wakes the copies that waited.
fn settle(agent: &Agent, answered: asap_proto::server::Answered) {
    let woken = lock(&agent.inner.core).handle_answered(answered, wall_now());
    if woken.is_empty() {
        return;
    }
    for (tx, answer) in lock(&agent.inner.parked).wake(woken) {
        let _ = tx.send(answer);
    }
}

/// Records a finished exchange in the metrics and the trace log.
pub(crate) fn record(agent: &Agent, reply: &Reply) {
    if let Some(record) = &reply.record {
        lock(&agent.inner.metrics).handle_record(record, Instant::now());
        tracing::debug!(
            payload_type = record.kind.map_or("", PayloadKind::payload_type),
            envelope_id = record.envelope_id.as_deref().unwrap_or(""),
            outcome = record.outcome.as_str(),
            status = record.status,
            latency_us = record.started.elapsed().as_micros() as u64,
            "asap.request"
        );
    }
}

async fn run_state(agent: &Agent, request: StateRequest) -> Result<Payload, HandlerError> {
    let Some(recorder) = &agent.inner.code.stores else {
        return Err(HandlerError::failed("no task-state store"));
    };
    recorder
        .call(move |s| request.run(s.snapshots.as_mut()))
        .await
        .unwrap_or_else(|e| {
            Err(HandlerError::failed(format!(
                "state store unavailable: {e}"
            )))
        })
}

async fn run_handler(
    agent: &Agent,
    inv: Invocation,
    push: Option<Arc<dyn PushSink>>,
) -> HandlerOutcome {
    use futures_util::FutureExt as _;
    // A panicking handler must not take the connection down: catch it in place
    // (a spawned task would cost a cross-thread wake-up per request).
    let joined = match (agent.inner.code.handlers.get(&inv.route), inv.payload) {
        (Some(HandlerRef::Skill(f)), Payload::TaskRequest(req)) => {
            let mut ctx = SkillContext::new(inv.envelope, inv.task_id);
            if let Some(sink) = push {
                ctx = ctx.with_push(sink);
            }
            match std::panic::AssertUnwindSafe(f(ctx, req))
                .catch_unwind()
                .await
            {
                Ok(r) => r.map(HandlerOutcome::Skill),
                Err(_) => Err(HandlerError::failed("skill handler panicked")),
            }
        }
        (Some(HandlerRef::Payload(f)), payload) => {
            match std::panic::AssertUnwindSafe(f(inv.envelope, payload))
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

/// Reads the body within its share (the request size limit and the body
/// budget) and the body timeouts.
async fn read_bounded(
    body: &mut Body,
    mut timer: BodyTimer,
    share: &mut BodyShare<'_>,
) -> Result<Vec<u8>, BodyError> {
    use axum::body::HttpBody as _;
    let announced = body.size_hint().exact().map(|n| n as usize);
    if let Some(n) = announced {
        // Refuse before reading a byte when the whole body cannot fit.
        share.handle_announced(n)?;
    }
    let mut out = Vec::with_capacity(announced.unwrap_or(0).min(share.limit()));
    loop {
        let deadline = timer.poll_timeout().unwrap_or_else(Instant::now);
        let frame = match tokio::time::timeout_at(deadline.into(), body.frame()).await {
            Ok(Some(frame)) => frame,
            Ok(None) => return Ok(out),
            Err(_) => {
                timer.handle_timeout(Instant::now())?;
                continue;
            }
        };
        timer.handle_progress(Instant::now());
        let frame = frame.map_err(|e| BodyError::Unreadable(e.to_string()))?;
        if let Ok(data) = frame.into_data() {
            share.handle_received(out.len() + data.len())?;
            out.extend_from_slice(&data);
        }
    }
}
