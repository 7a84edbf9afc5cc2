//! The ASAP HTTP server on plain threads: handlers are ordinary closures.
//!
//! Same decisions as the tokio server (both drive [`asap_proto::server::Server`]);
//! this module reads bodies with a bound, runs closures on a fixed pool of
//! worker threads and writes responses.
//!
//! Under hostile load it holds what tiny_http lets it: the header cap (431 past
//! [`ServerConfig::max_header_bytes`], decided by the core once tiny_http has
//! parsed the head) and the global budget of body bytes in flight (503 +
//! `Retry-After`, [`asap_proto::server::BodyBudget`]). tiny_http exposes
//! neither its sockets nor its accept loop, so the header, body and keep-alive
//! timeouts and the connection budget are not enforced here: put this server
//! behind a proxy that has them, or use `asap-tokio`, which enforces all of them.
//!
//! ```no_run
//! use asap_blocking::server::{serve, Agent};
//! use asap_proto::model::{AgentUrn, Manifest, Skill};
//! use asap_proto::server::SkillResult;
//!
//! let mut manifest = Manifest::new(AgentUrn::new("urn:asap:agent:demo").unwrap(), "Demo", "1.0.0", "demo", "http://127.0.0.1:8000/asap");
//! manifest.capabilities.skills.push(Skill::new("echo", "Echo back the input"));
//! let agent = Agent::builder(manifest)
//!     .skill("echo", |_ctx, req| {
//!         let mut out = serde_json::Map::new();
//!         out.insert("echoed".into(), serde_json::Value::Object(req.input));
//!         Ok(SkillResult::completed(out))
//!     })
//!     .build();
//! let handle = serve("127.0.0.1:8000", agent, 4).unwrap();
//! println!("serving on {}", handle.local_addr());
//! handle.join();
//! ```

use std::io::Read;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Instant, SystemTime};

use crate::store::Stores;
use asap_proto::model::{Envelope, Manifest, Payload, PayloadKind, TaskRequest, UnixTime};
use asap_proto::server::{
    AgentCode, AgentParts, BodyBudget, BodyError, BodyGrant, FirstAnswer, HandlerError,
    HandlerOutcome, HandlerRef, HealthReport, Invocation, Metrics, Now, Parking, RequestHead,
    Server, ServerConfig, SkillResult, Step, Transport,
};
pub use asap_proto::server::{HandlerReply, SkillContext};
use asap_proto::store::StoreError;
use http::{HeaderMap, HeaderName, HeaderValue, Method, Response};

type SkillFn =
    Box<dyn Fn(SkillContext, TaskRequest) -> Result<SkillResult, HandlerError> + Send + Sync>;
type PayloadFn = Box<dyn Fn(Envelope, Payload) -> Result<HandlerReply, HandlerError> + Send + Sync>;
type HealthFn = Box<dyn Fn() -> HealthReport + Send + Sync>;

/// A blocking agent: manifest, policy, plain-closure skills and payload
/// handlers, task state behind a lock. Cheap to clone; run it with [`serve`]
/// or call [`Agent::handle`] from any HTTP server.
#[derive(Clone, Debug)]
pub struct Agent {
    inner: Arc<AgentInner>,
}

#[derive(Debug)]
struct AgentInner {
    core: Mutex<Server>,
    metrics: Mutex<Metrics>,
    /// Request-body bytes in flight, for all requests.
    bodies: Mutex<BodyBudget>,
    code: AgentCode<SkillFn, PayloadFn, HealthFn, Mutex<Stores>>,
    /// Copies of running envelopes, parked until the first answers.
    parked: Mutex<Parking<std::sync::mpsc::Sender<FirstAnswer>>>,
    /// The webhook outbox task events are published to.
    webhooks: Option<crate::webhook::Webhooks>,
}

/// Builds an [`Agent`] from plain closures.
#[derive(Debug)]
pub struct AgentBuilder {
    parts: AgentParts<SkillFn, PayloadFn, HealthFn, Mutex<Stores>>,
    webhooks: Option<crate::webhook::Webhooks>,
}

impl Agent {
    /// Starts building an agent serving `manifest`.
    #[must_use]
    pub fn builder(manifest: Manifest) -> AgentBuilder {
        AgentBuilder {
            parts: AgentParts::new(manifest),
            webhooks: None,
        }
    }

    /// Answers one HTTP request (usable from any blocking HTTP server): the
    /// driver loop of the core's exchange (see `asap_proto::server`).
    pub fn handle(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        body: &mut dyn Read,
    ) -> Response<Vec<u8>> {
        let inner = &*self.inner;
        let head = RequestHead {
            method,
            path,
            headers,
            peer,
            transport: Transport::Http,
        };
        let mut ex = lock(&inner.core).handle_request(&head, now());
        // Held until the answer is built: the decoded request is as large as its body.
        let mut grant = Grant {
            budget: &inner.bodies,
            grant: BodyGrant::default(),
        };
        let reply = loop {
            match ex.poll_step() {
                Step::ReadBody { limit } => match read_bounded(body, headers, limit, &mut grant) {
                    Ok(raw) => ex.handle_body(&raw, wall_now()),
                    Err(e) => ex.handle_body_error(e),
                },
                Step::Admit => lock(&inner.core).handle_admission(&mut ex, now()),
                Step::Invoke(inv) => ex.handle_outcome(self.run_handler(inv), wall_now()),
                Step::Persist(records) => {
                    let saved = inner
                        .code
                        .stores
                        .as_ref()
                        .map_or_else(no_store, |s| lock(s).record(records));
                    ex.handle_persisted(saved, wall_now());
                }
                Step::QueryState(request) => {
                    let result = match &inner.code.stores {
                        Some(s) => request.run(lock(s).snapshots.as_mut()),
                        None => Err(HandlerError::failed("no task-state store")),
                    };
                    ex.handle_state(result, wall_now());
                }
                Step::CheckHealth => {
                    let health = inner.code.health.as_ref().map(|f| f());
                    ex.handle_health(health.unwrap_or_default(), Instant::now());
                }
                Step::RenderMetrics => ex.handle_metrics(&lock(&inner.metrics)),
                Step::Notify(_) => {} // WebSocket acks: this server speaks HTTP only
                Step::AwaitFirst { token } => {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let ready = lock(&inner.parked).park(token, || tx);
                    let first = ready.unwrap_or_else(|| rx.recv().unwrap_or(None));
                    ex.handle_first_answer(first.as_deref(), wall_now());
                }
                Step::Respond(reply) => break reply,
            }
        };
        let mut reply = reply;
        // The answer's webhook events are on disk before the answer goes out.
        let events = std::mem::take(&mut reply.publish);
        if let (Some(w), false) = (&inner.webhooks, events.is_empty()) {
            if let Err(e) = w.publish(events) {
                eprintln!("asap: webhook events not persisted: {e}");
            }
        }
        if let Some(answered) = reply.answered.take() {
            let woken = lock(&inner.core).handle_answered(answered, wall_now());
            for (tx, answer) in lock(&inner.parked).wake(woken) {
                let _ = tx.send(answer);
            }
        }
        if let Some(record) = &reply.record {
            lock(&inner.metrics).handle_record(record, Instant::now());
        }
        reply.response
    }

    fn run_handler(&self, inv: Invocation) -> HandlerOutcome {
        let run = move || -> Result<HandlerOutcome, HandlerError> {
            match (self.inner.code.handlers.get(&inv.route), inv.payload) {
                (Some(HandlerRef::Skill(f)), Payload::TaskRequest(req)) => {
                    let mut ctx = SkillContext::new(inv.envelope, inv.task_id);
                    if let (Some(w), Some(task)) = (&self.inner.webhooks, inv.webhooks) {
                        ctx = ctx.with_push(w.push_sink(task));
                    }
                    f(ctx, req).map(HandlerOutcome::Skill)
                }
                (Some(HandlerRef::Payload(f)), p) => f(inv.envelope, p).map(HandlerOutcome::from),
                _ => Err(HandlerError::failed("route has no handler")),
            }
        };
        // A panicking handler answers -32603; the worker thread lives on.
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(run)) {
            Ok(Ok(o)) => o,
            Ok(Err(e)) => HandlerOutcome::Failed(e),
            Err(_) => HandlerOutcome::Failed(HandlerError::failed("handler panicked")),
        }
    }
}

/// A request's share of the body budget, given back when the request is answered.
struct Grant<'a> {
    budget: &'a Mutex<BodyBudget>,
    grant: BodyGrant,
}

impl Grant<'_> {
    fn reserve(&mut self, total: usize) -> Result<(), BodyError> {
        lock(self.budget).handle_reserve(&mut self.grant, total)
    }
}

impl Drop for Grant<'_> {
    fn drop(&mut self) {
        let grant = std::mem::take(&mut self.grant);
        if grant.bytes() > 0 {
            lock(self.budget).handle_release(grant);
        }
    }
}

/// Bytes read (and reserved) at a time when the length is not announced.
const READ_STEP: usize = 64 * 1024;

/// Reads at most `limit + 1` bytes within the body budget: all of an announced
/// `Content-Length` is reserved before reading, else each 64 KiB as it comes.
fn read_bounded(
    body: &mut dyn Read,
    headers: &HeaderMap,
    limit: usize,
    grant: &mut Grant<'_>,
) -> Result<Vec<u8>, BodyError> {
    let announced = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if let Some(n) = announced {
        grant.reserve(n.min(limit + 1))?;
    }
    let mut raw = Vec::with_capacity(announced.unwrap_or(0).min(limit + 1));
    let mut chunk = vec![0u8; READ_STEP];
    loop {
        let room = (limit + 1 - raw.len()).min(READ_STEP);
        if room == 0 {
            return Ok(raw);
        }
        let n = match body.read(&mut chunk[..room]) {
            Ok(0) => return Ok(raw),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BodyError::Unreadable(e.to_string())),
        };
        let total = raw.len() + n;
        if total > grant.grant.bytes() {
            // A step ahead when it fits, else exactly what arrived.
            let ahead = (raw.len() + READ_STEP).min(limit + 1).max(total);
            if grant.reserve(ahead).is_err() {
                grant.reserve(total)?;
            }
        }
        raw.extend_from_slice(&chunk[..n]);
    }
}

fn no_store() -> Result<(), StoreError> {
    Err(StoreError::Backend("no task-state store".into()))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The core is left consistent between calls; a poisoned lock only means a
    // handler thread panicked elsewhere.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn now() -> Now {
    Now {
        monotonic: Instant::now(),
        wall: wall_now(),
    }
}

impl AgentBuilder {
    /// Replaces the server policy.
    #[must_use]
    pub fn config(mut self, config: ServerConfig) -> Self {
        self.parts.config = config;
        self
    }

    /// Registers a skill for `task.request` with `skill_id`.
    #[must_use]
    pub fn skill<F>(mut self, skill_id: &str, f: F) -> Self
    where
        F: Fn(SkillContext, TaskRequest) -> Result<SkillResult, HandlerError>
            + Send
            + Sync
            + 'static,
    {
        self.parts.handlers.add_skill(skill_id, Box::new(f));
        self
    }

    /// Registers the reference's echo skill under `skill_id`.
    #[must_use]
    pub fn echo_skill(self, skill_id: &str) -> Self {
        self.skill(skill_id, |_ctx, req| Ok(SkillResult::echo_input(req.input)))
    }

    /// Registers a handler for a payload kind (all its spellings).
    #[must_use]
    pub fn handler<F>(mut self, kind: PayloadKind, f: F) -> Self
    where
        F: Fn(Envelope, Payload) -> Result<HandlerReply, HandlerError> + Send + Sync + 'static,
    {
        self.parts.handlers.add_kind(kind, Box::new(f));
        self
    }

    /// Registers a handler for a custom `payload_type` (exact spelling).
    #[must_use]
    pub fn custom_handler<F>(mut self, payload_type: &str, f: F) -> Self
    where
        F: Fn(Envelope, Payload) -> Result<HandlerReply, HandlerError> + Send + Sync + 'static,
    {
        self.parts.handlers.add_custom(payload_type, Box::new(f));
        self
    }

    /// Supplies the health verdict served at `/.well-known/asap/health`.
    #[must_use]
    pub fn health<F: Fn() -> HealthReport + Send + Sync + 'static>(mut self, f: F) -> Self {
        self.parts.health = Some(Box::new(f));
        self
    }

    /// Persists task state in `stores`: every skill run is recorded (snapshot +
    /// usage event) before it is answered, and `state.query` / `state.restore`
    /// are answered from the snapshot store. With nonces checked, accepted
    /// nonces are recorded too, and those live when the stores were opened
    /// are refused again (a restart forgets none).
    #[must_use]
    pub fn stores(mut self, mut stores: Stores) -> Self {
        self.parts.restored_nonces = stores.take_restored_nonces();
        self.parts.stores = Some(Mutex::new(stores));
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
        let bodies = BodyBudget::new(
            self.parts.config.max_body_bytes_in_flight,
            self.parts.config.connections.retry_after_secs,
        );
        let (core, code) = self.parts.into_server(Instant::now(), seed());
        Agent {
            inner: Arc::new(AgentInner {
                core: Mutex::new(core),
                metrics: Mutex::default(),
                bodies: Mutex::new(bodies),
                code,
                parked: Mutex::default(),
                webhooks: self.webhooks,
            }),
        }
    }
}

fn seed() -> u64 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).map_or_else(
        // Ids stay unique without OS randomness (time + counter), only guessable.
        |_| wall_now().as_micros().unsigned_abs(),
        |()| u64::from_le_bytes(b),
    )
}

fn wall_now() -> UnixTime {
    UnixTime::from_system_time(SystemTime::now())
}

/// A running blocking server.
pub struct ServerHandle {
    server: Arc<tiny_http::Server>,
    addr: SocketAddr,
    workers: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl ServerHandle {
    /// The bound address.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, lets workers finish their current request, and waits for them.
    pub fn shutdown(self) {
        for _ in &self.workers {
            self.server.unblock();
        }
        for w in self.workers {
            let _ = w.join();
        }
    }

    /// Blocks until the server stops.
    pub fn join(self) {
        for w in self.workers {
            let _ = w.join();
        }
    }
}

/// Serves `agent` on `addr` with `workers` threads.
pub fn serve(
    addr: impl std::net::ToSocketAddrs,
    agent: Agent,
    workers: usize,
) -> std::io::Result<ServerHandle> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    let addr = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| std::io::Error::other("server is not bound to an IP address"))?;
    let server = Arc::new(server);
    let workers = (0..workers.max(1))
        .map(|_| {
            let server = Arc::clone(&server);
            let agent = agent.clone();
            std::thread::spawn(move || {
                while let Ok(req) = server.recv() {
                    respond(&agent, req);
                }
            })
        })
        .collect();
    Ok(ServerHandle {
        server,
        addr,
        workers,
    })
}

fn respond(agent: &Agent, mut req: tiny_http::Request) {
    let method = Method::from_bytes(req.method().as_str().as_bytes()).unwrap_or(Method::GET);
    let path = req.url().split('?').next().unwrap_or("/").to_owned();
    let mut headers = HeaderMap::new();
    for h in req.headers() {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(h.field.as_str().as_bytes()),
            HeaderValue::from_bytes(h.value.as_bytes()),
        ) {
            headers.append(name, value);
        }
    }
    let peer = req.remote_addr().map(SocketAddr::ip);
    let response = agent.handle(&method, &path, &headers, peer, req.as_reader());
    let (parts, body) = response.into_parts();
    let mut out = tiny_http::Response::from_data(body).with_status_code(parts.status.as_u16());
    for (name, value) in &parts.headers {
        if let Ok(h) = tiny_http::Header::from_bytes(name.as_str().as_bytes(), value.as_bytes()) {
            out.add_header(h);
        }
    }
    // The client may have gone away; nothing to do about it.
    let _ = req.respond(out);
}
