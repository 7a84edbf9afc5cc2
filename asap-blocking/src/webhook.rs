//! Webhook delivery on threads: [`Webhooks`] runs a [`WebhookDispatcher`] on
//! a scheduler thread and a few sender threads, persists its rows in a
//! [`WebhookStore`] (SQLite: the task-state file), and sends each attempt to
//! the address the URL policy approved, and only there.
//!
//! Each attempt: resolve the host ([`Resolve`], the system resolver by
//! default), check the answer with the policy, then a ureq agent whose
//! resolver returns the approved addresses only (no DNS-rebinding window), no
//! proxy, no redirects, the delivery's timeout, and the response body read up
//! to [`MAX_RESPONSE_BYTES`]. The scheduling is the core's: this module only
//! performs what [`WebhookDispatcher::poll_output`] asks.
//!
//! ```no_run
//! use asap_blocking::webhook::{SystemResolver, Webhooks};
//! use asap_proto::webhook::{OutboxConfig, SigningKeys, UrlPolicy, WebhookSecret};
//! let store = asap_blocking::store::SqliteWebhookStore::open("asap_state.db").unwrap();
//! let keys = [("ops".to_owned(), SigningKeys::new(WebhookSecret::from_bytes(b"s3cret")))];
//! let hooks = Webhooks::start(OutboxConfig::default(), UrlPolicy::PRODUCTION, Box::new(store),
//!     std::sync::Arc::new(SystemResolver), keys, 4).unwrap();
//! // Agent::builder(manifest).webhooks(hooks.clone()) ... publishes task events here.
//! # let _ = hooks;
//! ```

use std::io::Read;
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, SystemTime};

use asap_proto::model::{Payload, UlidGenerator, UnixTime};
use asap_proto::server::{PushSink, TaskWebhooks};
use asap_proto::store::{StoreError, WebhookStore};
use asap_proto::webhook::{
    Delivery, DeliveryOutcome, DispatchOutput, OutboxConfig, OutboxRecord, SigningKeys, UrlPolicy,
    WebhookDispatcher, WebhookEvent,
};
use asap_proto::ws::PushError;

/// Longest response body read from a subscriber; the rest is not read.
pub const MAX_RESPONSE_BYTES: u64 = 64 * 1024;

/// One attempt for a sender thread: the delivery and the host (and port) to resolve.
type Job = (Delivery, Option<(String, u16)>);

/// Name resolution for deliveries (tests answer what they like: rebinding).
pub trait Resolve: Send + Sync + 'static {
    /// The addresses `host` has now.
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<IpAddr>>;
}

/// The system resolver (`ToSocketAddrs`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: &str, port: u16) -> std::io::Result<Vec<IpAddr>> {
        Ok((host, port).to_socket_addrs()?.map(|a| a.ip()).collect())
    }
}

/// The webhook outbox of an agent and its delivery threads. Cheap to clone;
/// the threads end when the last clone is dropped.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("held", &self.held())
            .finish()
    }
}

struct Inner {
    dispatcher: Mutex<WebhookDispatcher>,
    /// Writes are taken from the dispatcher and applied under this lock, in order.
    store: Mutex<Box<dyn WebhookStore + Send>>,
    wake: Mutex<mpsc::Sender<()>>,
    resolver: Arc<dyn Resolve>,
    ids: Mutex<UlidGenerator>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn wall_now() -> UnixTime {
    UnixTime::from_system_time(SystemTime::now())
}

impl Webhooks {
    /// Restores the outbox from `store` (pending and in-flight rows are sent
    /// again), registers the signing keys before the first attempt, and starts
    /// a scheduler thread and `senders` sender threads (at least one).
    pub fn start(
        config: OutboxConfig,
        policy: UrlPolicy,
        store: Box<dyn WebhookStore + Send>,
        resolver: Arc<dyn Resolve>,
        keys: impl IntoIterator<Item = (String, SigningKeys)>,
        senders: usize,
    ) -> Result<Self, StoreError> {
        let dispatcher = WebhookDispatcher::resume(config, policy, &*store, keys, wall_now())?;
        let (wake, woken) = mpsc::channel();
        let mut seed = [0u8; 8];
        let _ = getrandom::getrandom(&mut seed);
        let inner = Arc::new(Inner {
            dispatcher: Mutex::new(dispatcher),
            store: Mutex::new(store),
            wake: Mutex::new(wake),
            resolver,
            ids: Mutex::new(UlidGenerator::new(u64::from_le_bytes(seed))),
        });
        let (jobs, work) = mpsc::channel::<Job>();
        let work = Arc::new(Mutex::new(work));
        for _ in 0..senders.max(1) {
            let (work, weak) = (Arc::clone(&work), Arc::downgrade(&inner));
            std::thread::Builder::new()
                .name("asap-webhook-send".into())
                .spawn(move || sender(&work, &weak))
                .map_err(|e| StoreError::Backend(format!("cannot start a webhook thread: {e}")))?;
        }
        let weak = Arc::downgrade(&inner);
        std::thread::Builder::new()
            .name("asap-webhook-schedule".into())
            .spawn(move || scheduler(&weak, &woken, &jobs))
            .map_err(|e| StoreError::Backend(format!("cannot start a webhook thread: {e}")))?;
        Ok(Self { inner })
    }

    /// Enqueues events and returns once their rows are written (a crash after
    /// this loses none). Refused events (outbox full) are dropped and named on stderr.
    pub fn publish(&self, events: Vec<WebhookEvent>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        for (id, why) in lock(&self.inner.dispatcher).publish(events, wall_now()) {
            eprintln!("asap: webhook event {id} dropped: {why}");
        }
        let saved = flush(&self.inner);
        self.inner.wake();
        saved
    }

    /// A push channel for one skill run: each pushed payload becomes an
    /// envelope for every subscriber of the run.
    #[must_use]
    pub fn push_sink(&self, task: TaskWebhooks) -> Arc<dyn PushSink> {
        Arc::new(WebhookPush {
            hooks: self.clone(),
            task,
        })
    }

    /// Events held (pending, in flight, dead letters).
    #[must_use]
    pub fn held(&self) -> usize {
        lock(&self.inner.dispatcher).outbox().len()
    }

    /// The dead letters held now.
    #[must_use]
    pub fn dead_letters(&self) -> Vec<OutboxRecord> {
        lock(&self.inner.dispatcher)
            .outbox()
            .dead_letters()
            .cloned()
            .collect()
    }
}

impl Inner {
    fn wake(&self) {
        let _ = lock(&self.wake).send(());
    }
}

struct WebhookPush {
    hooks: Webhooks,
    task: TaskWebhooks,
}

impl PushSink for WebhookPush {
    fn push(&self, payload: Payload) -> Result<(), PushError> {
        let wall = wall_now();
        let id = lock(&self.hooks.inner.ids).next_string(wall);
        // A push is durable before the skill goes on, as the final answer is.
        self.hooks
            .publish(self.task.events(payload, id, wall))
            .map_err(|_| PushError::Closed)
    }
}

/// Writes the dispatcher's queued rows, in order.
fn flush(inner: &Inner) -> Result<(), StoreError> {
    let mut store = lock(&inner.store);
    let changes = lock(&inner.dispatcher).take_changes();
    if changes.is_empty() {
        return Ok(());
    }
    store.apply(&changes).inspect_err(|e| {
        eprintln!("asap: webhook outbox rows not written: {e}");
    })
}

fn scheduler(weak: &Weak<Inner>, woken: &mpsc::Receiver<()>, jobs: &mpsc::Sender<Job>) {
    loop {
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let mut wait = Duration::from_secs(3600);
        {
            let mut d = lock(&inner.dispatcher);
            let now = wall_now();
            while let Some(out) = d.poll_output(now) {
                match out {
                    DispatchOutput::Transmit(delivery) => {
                        let host = d.host_to_resolve(&delivery);
                        if jobs.send((delivery, host)).is_err() {
                            return;
                        }
                    }
                    DispatchOutput::Event(_) => {}
                    DispatchOutput::Timeout(t) => {
                        let ms = t.as_millis().saturating_sub(wall_now().as_millis());
                        wait = Duration::from_millis(u64::try_from(ms).unwrap_or(0).max(1));
                        break;
                    }
                }
            }
        }
        let _ = flush(&inner);
        drop(inner);
        match woken.recv_timeout(wait) {
            Ok(()) | Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
    }
}

fn sender(work: &Mutex<mpsc::Receiver<Job>>, weak: &Weak<Inner>) {
    loop {
        let job = lock(work).recv();
        let Ok((delivery, host)) = job else {
            return;
        };
        let Some(inner) = weak.upgrade() else {
            return;
        };
        let outcome = attempt(&inner, &delivery, host.as_ref());
        let _ = lock(&inner.dispatcher).handle_result(delivery.id, outcome, wall_now());
        inner.wake();
    }
}

/// One attempt: resolve, approve, send pinned.
fn attempt(inner: &Inner, delivery: &Delivery, host: Option<&(String, u16)>) -> DeliveryOutcome {
    let resolved = match host {
        Some((h, port)) => match inner.resolver.resolve(h, *port) {
            Ok(a) if !a.is_empty() => a,
            _ => return DeliveryOutcome::ConnectFailed,
        },
        None => Vec::new(),
    };
    let approved = lock(&inner.dispatcher).approve(delivery, &resolved);
    match approved {
        Ok(target) => send_pinned(delivery, target.socket_addrs().collect()),
        Err(refused) => DeliveryOutcome::UrlRefused(refused),
    }
}

/// ureq's resolver seam: answers every lookup with the approved addresses.
#[derive(Debug)]
struct Pinned(Vec<SocketAddr>);

impl ureq::unversioned::resolver::Resolver for Pinned {
    fn resolve(
        &self,
        _uri: &http::Uri,
        _config: &ureq::config::Config,
        _timeout: ureq::unversioned::transport::NextTimeout,
    ) -> Result<ureq::unversioned::resolver::ResolvedSocketAddrs, ureq::Error> {
        let mut out = self.empty();
        for a in self.0.iter().take(16) {
            out.push(*a);
        }
        if self.0.is_empty() {
            return Err(ureq::Error::HostNotFound);
        }
        Ok(out)
    }
}

/// Sends to `addrs` only: no proxy, no redirects, bounded body.
fn send_pinned(delivery: &Delivery, addrs: Vec<SocketAddr>) -> DeliveryOutcome {
    let config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .max_redirects(0)
        .proxy(None)
        .timeout_global(Some(delivery.timeout))
        .build();
    let agent = ureq::Agent::with_parts(
        config,
        ureq::unversioned::transport::DefaultConnector::default(),
        Pinned(addrs),
    );
    match agent.run(delivery.request.clone()) {
        Ok(mut response) => {
            // Read up to the cap, then drop the rest with the connection.
            let mut sink = Vec::new();
            let _ = response
                .body_mut()
                .as_reader()
                .take(MAX_RESPONSE_BYTES)
                .read_to_end(&mut sink);
            DeliveryOutcome::from_response(&response)
        }
        Err(ureq::Error::Timeout(_)) => DeliveryOutcome::TimedOut,
        Err(_) => DeliveryOutcome::ConnectFailed,
    }
}
