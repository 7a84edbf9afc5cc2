//! The ASAP server on plain threads: handlers are ordinary closures.
//!
//! Same decisions as the tokio server (both drive [`asap_proto::server::Server`]);
//! this module reads HTTP/1.1 requests on a thread per connection (bodies
//! bounded), runs at most `workers` exchanges at once and writes responses.
//! `GET /asap/ws` upgrades to the WebSocket binding ([`crate::ws`]): its
//! frames run through the same driver loop as `POST /asap`.
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

use std::collections::HashMap;
use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime};

use crate::store::Stores;
use asap_proto::model::{Envelope, Manifest, Payload, PayloadKind, TaskRequest, UnixTime};
use asap_proto::server::{
    AgentCode, AgentParts, BodyBudget, BodyError, BodyShare, Exchange, FirstAnswer, HandlerError,
    HandlerOutcome, HandlerRef, HealthReport, Invocation, Metrics, Now, Parking, PushSink, Reply,
    RequestHead, Server, ServerConfig, SkillResult, Step, Transport,
};
pub use asap_proto::server::{HandlerReply, SkillContext};
use asap_proto::store::StoreError;
use asap_proto::ws::SessionConfig;
use http::{HeaderMap, Method, Response};

use crate::ws::Reports;

pub(crate) mod http1;

type SkillFn =
    Box<dyn Fn(SkillContext, TaskRequest) -> Result<SkillResult, HandlerError> + Send + Sync>;
type PayloadFn = Box<dyn Fn(Envelope, Payload) -> Result<HandlerReply, HandlerError> + Send + Sync>;
type HealthFn = Box<dyn Fn() -> HealthReport + Send + Sync>;

/// A blocking agent: manifest, policy, plain-closure skills and payload
/// handlers, task state behind a lock. Cheap to clone; run it with [`serve`]
/// or call [`Agent::handle`] from any HTTP server.
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
    code: AgentCode<SkillFn, PayloadFn, HealthFn, Mutex<Stores>>,
    /// Copies of running envelopes, parked until the first answers.
    parked: Mutex<Parking<std::sync::mpsc::Sender<FirstAnswer>>>,
    /// Policy of each `/asap/ws` connection.
    pub(crate) websocket: SessionConfig,
    /// `/asap/ws` connections open at once; more are refused with 503.
    pub(crate) max_websockets: usize,
    /// Performs the core's auth fetches (key sets, introspection).
    idp: ureq::Agent,
    /// The webhook outbox task events are published to.
    webhooks: Option<crate::webhook::Webhooks>,
}

/// `/asap/ws` connections a server keeps open at once by default (each has
/// two threads).
pub const DEFAULT_MAX_WEBSOCKETS: usize = 256;

/// Builds an [`Agent`] from plain closures.
#[derive(Debug)]
pub struct AgentBuilder {
    parts: AgentParts<SkillFn, PayloadFn, HealthFn, Mutex<Stores>>,
    websocket: SessionConfig,
    max_websockets: usize,
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
            max_websockets: DEFAULT_MAX_WEBSOCKETS,
            auth: None,
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
        self.exchange_http(method, path, headers, peer, body)
            .response
    }

    /// [`handle`](Self::handle), keeping what the connection needs to know
    /// (how much of a refused body to drain).
    pub(crate) fn exchange_http(
        &self,
        method: &Method,
        path: &str,
        headers: &HeaderMap,
        peer: Option<IpAddr>,
        body: &mut dyn Read,
    ) -> Reply {
        let head = RequestHead {
            method,
            path,
            headers,
            peer,
            transport: Transport::Http,
        };
        let ex = lock(&self.inner.core).handle_request(&head, now());
        self.drive(ex, BodySource::Http(body, headers), None)
    }

    /// The driver loop, for HTTP requests and WebSocket frames alike:
    /// performs each step of the core's exchange (see `asap_proto::server`
    /// for the call order). `ws` is the connection's report channel when the
    /// exchange is a WebSocket frame (acks and pushes go there).
    pub(crate) fn drive(
        &self,
        mut ex: Exchange,
        mut body: BodySource<'_>,
        ws: Option<&Reports>,
    ) -> Reply {
        let inner = &*self.inner;
        // Held until the answer is built: the decoded request is as large as its body.
        let mut share = None;
        let reply = loop {
            match ex.poll_step() {
                Step::ReadBody { limit } => match &mut body {
                    BodySource::Http(body, headers) => {
                        let share = share.insert(BodyShare::new(&inner.bodies, limit));
                        match read_bounded(&mut **body, headers, share) {
                            Ok(raw) => ex.handle_body(&raw, wall_now()),
                            Err(e) => ex.handle_body_error(e),
                        }
                    }
                    BodySource::Frame(raw) => {
                        ex.handle_body(&raw[..raw.len().min(limit + 1)], wall_now());
                    }
                },
                Step::Admit => lock(&inner.core).handle_admission(&mut ex, now()),
                Step::Invoke(inv) => {
                    let push = ws.map(|reports| reports.push_sink(&inv, self));
                    ex.handle_outcome(self.run_handler(inv, push), wall_now());
                }
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
                Step::Notify(text) => {
                    if let Some(reports) = ws {
                        reports.notify(text);
                    }
                }
                Step::AwaitFirst { token } => {
                    let (tx, rx) = std::sync::mpsc::channel();
                    let ready = lock(&inner.parked).park(token, || tx);
                    let first = ready.unwrap_or_else(|| rx.recv().unwrap_or(None));
                    ex.handle_first_answer(first.as_deref(), wall_now());
                }
                Step::Fetch(request) => {
                    let result = crate::auth::perform(&inner.idp, request);
                    lock(&inner.core).handle_fetched(&mut ex, result, now());
                }
                // Another thread's fetch is out: a short pause, then the core again.
                Step::AwaitFetch => {
                    std::thread::sleep(std::time::Duration::from_millis(20));
                    lock(&inner.core).handle_fetch_waited(&mut ex, now());
                }
                Step::Claim(claim) => {
                    let decided = inner
                        .code
                        .stores
                        .as_ref()
                        .map_or(Ok(asap_proto::store::ClaimOutcome::Won), |s| {
                            lock(s).claim(&claim)
                        });
                    ex.handle_claim(decided, now());
                }
                Step::AwaitClaim { until } => {
                    std::thread::sleep(until.saturating_duration_since(Instant::now()));
                    ex.handle_claim_waited(now());
                }
                Step::Respond(reply) => break reply,
            }
        };
        // A won claim that no answer replaced (an error answer): release it.
        if let (Some(records), Some(stores)) =
            (ex.abandon_claim(wall_now()), inner.code.stores.as_ref())
        {
            if let Err(e) = lock(stores).record(records) {
                eprintln!(
                    "asap: an unanswered claim was not released (it ends with its lease): {e}"
                );
            }
        }
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
        reply
    }

    fn run_handler(&self, inv: Invocation, push: Option<Arc<dyn PushSink>>) -> HandlerOutcome {
        let run = move || -> Result<HandlerOutcome, HandlerError> {
            match (self.inner.code.handlers.get(&inv.route), inv.payload) {
                (Some(HandlerRef::Skill(f)), Payload::TaskRequest(req)) => {
                    let mut ctx = SkillContext::new(inv.envelope, inv.task_id);
                    let hooked = match (&self.inner.webhooks, inv.webhooks) {
                        (Some(w), Some(task)) => Some(w.push_sink(task)),
                        _ => None,
                    };
                    if let Some(sink) = push.or(hooked) {
                        ctx = ctx.with_push(sink);
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

/// Bytes read (and reserved) at a time when the length is not announced.
const READ_STEP: usize = 64 * 1024;

/// Reads the body within its share (the request size limit and the body
/// budget): past the limit, `TooLarge` is the answer.
fn read_bounded(
    body: &mut dyn Read,
    headers: &HeaderMap,
    share: &mut BodyShare<'_>,
) -> Result<Vec<u8>, BodyError> {
    let limit = share.limit();
    let announced = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if let Some(n) = announced {
        share.handle_announced(n)?;
    }
    let mut raw = Vec::with_capacity(announced.unwrap_or(0).min(limit + 1));
    let mut chunk = vec![0u8; READ_STEP];
    loop {
        // One byte past the limit is enough to tell that the body is too large.
        let room = (limit + 1 - raw.len()).min(READ_STEP);
        let n = match body.read(&mut chunk[..room]) {
            Ok(0) => return Ok(raw),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(BodyError::Unreadable(e.to_string())),
        };
        share.handle_received(raw.len() + n)?;
        raw.extend_from_slice(&chunk[..n]);
    }
}

fn no_store() -> Result<(), StoreError> {
    Err(StoreError::Backend("no task-state store".into()))
}

pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The core is left consistent between calls; a poisoned lock only means a
    // handler thread panicked elsewhere.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

pub(crate) fn now() -> Now {
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

    /// Replaces the `/asap/ws` per-connection policy (heartbeat, idle close,
    /// message rate).
    #[must_use]
    pub fn websocket(mut self, config: SessionConfig) -> Self {
        self.websocket = config;
        self
    }

    /// How many `/asap/ws` connections may be open at once (default
    /// [`DEFAULT_MAX_WEBSOCKETS`]); upgrades beyond it are answered 503.
    #[must_use]
    pub fn max_websockets(mut self, max: usize) -> Self {
        self.max_websockets = max;
        self
    }

    /// Declares `skill` in the served manifest and registers `f` as its handler,
    /// in one call (the declaration replaces a manifest entry with the same id).
    #[must_use]
    pub fn skill_with<F>(mut self, skill: asap_proto::model::Skill, f: F) -> Self
    where
        F: Fn(SkillContext, TaskRequest) -> Result<SkillResult, HandlerError>
            + Send
            + Sync
            + 'static,
    {
        let id = skill.id.clone();
        self.parts.declare_skill(skill);
        self.skill(&id, f)
    }

    /// Registers a skill for `task.request` with `skill_id`. A skill the
    /// manifest does not declare is listed with its id as description;
    /// [`skill_with`](Self::skill_with) declares and registers it in one call.
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
        self.parts.restored_dedup = stores.take_restored_dedup();
        self.parts.stores = Some(Mutex::new(stores));
        self
    }

    /// Requires tokens on the protected routes (spec §11).
    #[must_use]
    pub fn auth(mut self, auth: asap_proto::server::ServerAuth) -> Self {
        self.auth = Some(auth);
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
        let (mut core, code) = self.parts.into_server(Instant::now(), seed());
        if let Some(auth) = self.auth {
            core.set_auth(auth);
        }
        Agent {
            inner: Arc::new(AgentInner {
                core: Mutex::new(core),
                metrics: Mutex::default(),
                bodies: Mutex::new(bodies),
                code,
                parked: Mutex::default(),
                websocket: self.websocket,
                max_websockets: self.max_websockets,
                idp: crate::auth::idp_agent(),
                webhooks: self.webhooks,
            }),
        }
    }
}

pub(crate) fn seed() -> u64 {
    let mut b = [0u8; 8];
    getrandom::getrandom(&mut b).map_or_else(
        // Ids stay unique without OS randomness (time + counter), only guessable.
        |_| wall_now().as_micros().unsigned_abs(),
        |()| u64::from_le_bytes(b),
    )
}

pub(crate) fn wall_now() -> UnixTime {
    UnixTime::from_system_time(SystemTime::now())
}

/// Where an exchange's body comes from.
pub(crate) enum BodySource<'a> {
    /// An HTTP request body and its headers, read bounded (bytes, the body budget).
    Http(&'a mut dyn Read, &'a HeaderMap),
    /// One WebSocket text frame.
    Frame(&'a [u8]),
}

/// At most `workers` exchanges run at once (HTTP requests and WebSocket
/// frames alike); the others wait for a turn.
#[derive(Debug)]
pub(crate) struct Permits {
    free: Mutex<usize>,
    freed: Condvar,
}

impl Permits {
    fn new(n: usize) -> Self {
        Self {
            free: Mutex::new(n.max(1)),
            freed: Condvar::new(),
        }
    }

    /// Runs `f` once a permit is free.
    pub(crate) fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        let mut free = lock(&self.free);
        while *free == 0 {
            free = self
                .freed
                .wait(free)
                .unwrap_or_else(std::sync::PoisonError::into_inner);
        }
        *free -= 1;
        drop(free);
        // Handed back even if `f` unwinds (handlers' panics are caught, a bug's are not).
        struct Release<'a>(&'a Permits);
        impl Drop for Release<'_> {
            fn drop(&mut self) {
                *lock(&self.0.free) += 1;
                self.0.freed.notify_one();
            }
        }
        let _release = Release(self);
        f()
    }
}

/// What the accept loop, its connections and the handle share.
#[derive(Debug)]
pub(crate) struct Listener {
    pub(crate) agent: Agent,
    pub(crate) permits: Permits,
    stopping: AtomicBool,
    /// Open HTTP connections: a handle on each socket, and whether it is
    /// between requests (then shutdown may close it).
    http: Mutex<HashMap<u64, (TcpStream, Arc<AtomicBool>)>>,
    next_id: AtomicU64,
    /// Open `/asap/ws` connections.
    pub(crate) websockets: crate::ws::Connections,
}

impl Listener {
    pub(crate) fn stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }
}

/// A running blocking server: `/asap`, `/asap/ws`, `/.well-known/asap/*`,
/// `/health`, `/ready`, `/asap/metrics`.
pub struct ServerHandle {
    listener: Arc<Listener>,
    addr: SocketAddr,
    acceptor: JoinHandle<()>,
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

    /// Closes every open `/asap/ws` connection with 1001 "Server shutting
    /// down" ([`shutdown`](Self::shutdown) does this too).
    pub fn shutdown_websockets(&self) {
        self.listener.websockets.shutdown();
    }

    /// Stops accepting, closes WebSocket connections (1001) and idle
    /// keep-alive connections, lets requests in progress finish, and waits
    /// for them.
    pub fn shutdown(self) {
        let l = &self.listener;
        l.stopping.store(true, Ordering::SeqCst);
        // The acceptor blocks in accept(): one connection wakes it to see the flag.
        let _ = TcpStream::connect_timeout(&wake_addr(self.addr), Duration::from_secs(1));
        let _ = self.acceptor.join();
        l.websockets.shutdown();
        for (stream, idle) in lock(&l.http).values() {
            if idle.load(Ordering::SeqCst) {
                let _ = stream.shutdown(std::net::Shutdown::Both);
            }
        }
        l.websockets.wait_closed(Duration::from_secs(5));
        // Busy connections end after their response (they see `stopping`).
        let deadline = Instant::now() + Duration::from_secs(60);
        while !lock(&l.http).is_empty() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Blocks until the server stops (its listener fails).
    pub fn join(self) {
        let _ = self.acceptor.join();
    }
}

/// Where to connect to reach a listener bound to `addr` (a wildcard address
/// is reached through loopback).
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    let ip = match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(std::net::Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, addr.port())
}

/// Serves `agent` on `addr`: one thread per connection, at most `workers`
/// exchanges running at once.
pub fn serve(
    addr: impl std::net::ToSocketAddrs,
    agent: Agent,
    workers: usize,
) -> std::io::Result<ServerHandle> {
    let socket = std::net::TcpListener::bind(addr)?;
    let addr = socket.local_addr()?;
    let listener = Arc::new(Listener {
        websockets: crate::ws::Connections::new(agent.inner.max_websockets),
        agent,
        permits: Permits::new(workers),
        stopping: AtomicBool::new(false),
        http: Mutex::default(),
        next_id: AtomicU64::new(0),
    });
    let shared = Arc::clone(&listener);
    let acceptor = std::thread::Builder::new()
        .name("asap-accept".into())
        .spawn(move || accept(&shared, &socket))?;
    Ok(ServerHandle {
        listener,
        addr,
        acceptor,
    })
}

fn accept(listener: &Arc<Listener>, socket: &std::net::TcpListener) {
    loop {
        let (stream, peer) = match socket.accept() {
            Ok(s) => s,
            // Out of descriptors and the like: pause rather than spin.
            Err(_) if !listener.stopping() => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(_) => return,
        };
        if listener.stopping() {
            return;
        }
        let Ok(handle) = stream.try_clone() else {
            continue;
        };
        let id = listener.next_id.fetch_add(1, Ordering::Relaxed);
        let idle = Arc::new(AtomicBool::new(true));
        lock(&listener.http).insert(id, (handle, Arc::clone(&idle)));
        let shared = Arc::clone(listener);
        let spawned = std::thread::Builder::new()
            .name("asap-conn".into())
            .spawn(move || {
                http1::connection(&shared, stream, peer, &idle);
                lock(&shared.http).remove(&id);
            });
        if spawned.is_err() {
            lock(&listener.http).remove(&id);
        }
    }
}
