//! Webhook delivery on tokio: [`Webhooks`] runs a
//! [`WebhookDispatcher`] on a worker task, persists its rows in a
//! [`WebhookStore`] (SQLite: the task-state file), and sends each attempt to the
//! address the URL policy approved, and only there.
//!
//! Each attempt: resolve the host ([`Resolve`], `tokio::net::lookup_host` by
//! default), check the answer with the policy, then a reqwest client pinned to
//! the approved addresses (`resolve_to_addrs`, so reqwest never resolves the
//! name itself: no DNS-rebinding window), no proxy, no redirects, the
//! delivery's timeout, and the response body read up to
//! [`MAX_RESPONSE_BYTES`]. The outcome goes back to the dispatcher.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use asap_proto::webhook::{OutboxConfig, SigningKeys, UrlPolicy, WebhookSecret};
//! use asap_tokio::webhook::{SystemResolver, Webhooks};
//! let store = asap_tokio::store::SqliteWebhookStore::open("asap_state.db")?;
//! let keys = [("ops".to_owned(), SigningKeys::new(WebhookSecret::from_bytes(b"s3cret")))];
//! let hooks = Webhooks::start(OutboxConfig::default(), UrlPolicy::PRODUCTION, Box::new(store), std::sync::Arc::new(SystemResolver), keys)?;
//! // Agent::builder(manifest).webhooks(hooks.clone()) ... publishes task events here.
//! # Ok(()) }
//! ```

pub mod receive;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use asap_proto::model::{Payload, UlidGenerator, UnixTime};
use asap_proto::server::{PushSink, TaskWebhooks};
use asap_proto::store::{StoreError, WebhookStore};
use asap_proto::webhook::{
    Delivery, DeliveryOutcome, DispatchOutput, OutboxConfig, OutboxEvent, SigningKeys, UrlPolicy,
    WebhookDispatcher, WebhookEvent,
};
use asap_proto::ws::PushError;

use crate::server::{lock, wall_now};

/// Longest response body read from a subscriber; the rest is not read.
pub const MAX_RESPONSE_BYTES: usize = 64 * 1024;

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// Name resolution for deliveries (tests answer what they like: rebinding).
pub trait Resolve: Send + Sync + 'static {
    /// The addresses `host` has now.
    fn resolve(&self, host: String, port: u16) -> BoxFuture<std::io::Result<Vec<IpAddr>>>;
}

/// The system resolver (`tokio::net::lookup_host`).
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemResolver;

impl Resolve for SystemResolver {
    fn resolve(&self, host: String, port: u16) -> BoxFuture<std::io::Result<Vec<IpAddr>>> {
        Box::pin(async move {
            let addrs = tokio::net::lookup_host((host.as_str(), port)).await?;
            Ok(addrs.map(|a| a.ip()).collect())
        })
    }
}

/// The webhook outbox of an agent and its delivery worker. Cheap to clone.
#[derive(Clone)]
pub struct Webhooks {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Webhooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhooks")
            .field("held", &lock(&self.inner.dispatcher).outbox().len())
            .finish()
    }
}

struct Inner {
    dispatcher: Mutex<WebhookDispatcher>,
    /// Writes are taken from the dispatcher and applied under this lock, in order.
    store: Mutex<Box<dyn WebhookStore + Send>>,
    wake: tokio::sync::Notify,
    resolver: Arc<dyn Resolve>,
    ids: Mutex<UlidGenerator>,
    clients: Mutex<Clients>,
}

/// Clients by (host, approved addresses): a client only ever connects to the
/// addresses it was built with, so reusing it keeps the pinning and its
/// kept-alive connections. Bounded: cleared when full.
type Clients = std::collections::HashMap<(Option<String>, Vec<SocketAddr>), reqwest::Client>;

/// Most events of stopped replicas taken over per renewal.
pub const ORPHANS_PER_CLAIM: usize = 256;

/// Pinned clients kept at once.
const MAX_CLIENTS: usize = 256;

impl Webhooks {
    /// Restores the outbox from `store` (pending and in-flight rows are sent
    /// again), registers the signing keys (before the first attempt: a
    /// restored event whose keys are missing would be a dead letter) and
    /// spawns the delivery worker on the current runtime.
    pub fn start(
        config: OutboxConfig,
        policy: UrlPolicy,
        store: Box<dyn WebhookStore + Send>,
        resolver: Arc<dyn Resolve>,
        keys: impl IntoIterator<Item = (String, SigningKeys)>,
    ) -> Result<Self, StoreError> {
        let dispatcher = WebhookDispatcher::resume(config, policy, &*store, keys, wall_now())?;
        let inner = Arc::new(Inner {
            dispatcher: Mutex::new(dispatcher),
            store: Mutex::new(store),
            wake: tokio::sync::Notify::new(),
            resolver,
            ids: Mutex::new(UlidGenerator::new(crate::server::random_seed())),
            clients: Mutex::default(),
        });
        tokio::spawn(worker(Arc::clone(&inner)));
        Ok(Self { inner })
    }

    /// Several replicas on one store: every `every`, renew this replica's
    /// leases and take over the undelivered events of replicas whose leases
    /// ended ([`WebhookStore::claim_orphans`]); choose `every` well inside
    /// the store's lease (a third of it). Stops with the last handle.
    #[must_use]
    pub fn with_orphan_claims(self, every: Duration) -> Self {
        let weak = Arc::downgrade(&self.inner);
        let every = every.max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let claimer = Arc::clone(&inner);
                let claimed = tokio::task::spawn_blocking(move || {
                    lock(&claimer.store).claim_orphans(ORPHANS_PER_CLAIM)
                })
                .await;
                match claimed {
                    Ok(Ok(records)) if !records.is_empty() => {
                        let n = records.len();
                        match lock(&inner.dispatcher).adopt(records, wall_now()) {
                            Ok(taken) => tracing::info!(
                                taken,
                                offered = n,
                                "took over webhook events of a stopped replica"
                            ),
                            Err(e) => tracing::error!(error = %e, "stored webhook events refused"),
                        }
                        inner.wake.notify_one();
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        tracing::error!(error = %e, "webhook leases not renewed; retrying")
                    }
                    Err(e) => tracing::error!(error = %e, "webhook lease renewal panicked"),
                }
            }
        });
        self
    }

    /// Registers the keys that sign events naming `secret_ref`.
    pub fn set_signing_keys(&self, secret_ref: impl Into<String>, keys: SigningKeys) {
        lock(&self.inner.dispatcher).set_signing_keys(secret_ref, keys);
        self.inner.wake.notify_one();
    }

    /// Enqueues events and returns once their rows are written (so a crash
    /// after this loses none). Refused events (outbox full) are logged.
    pub async fn publish(&self, events: Vec<WebhookEvent>) -> Result<(), StoreError> {
        if events.is_empty() {
            return Ok(());
        }
        self.enqueue(events);
        let inner = Arc::clone(&self.inner);
        let saved = tokio::task::spawn_blocking(move || flush(&inner))
            .await
            .unwrap_or_else(|e| Err(StoreError::Closed(e.to_string())));
        self.inner.wake.notify_one();
        saved
    }

    /// Enqueues events now; the worker writes their rows shortly.
    pub fn publish_now(&self, events: Vec<WebhookEvent>) {
        self.enqueue(events);
        self.inner.wake.notify_one();
    }

    fn enqueue(&self, events: Vec<WebhookEvent>) {
        for (id, why) in lock(&self.inner.dispatcher).publish(events, wall_now()) {
            tracing::warn!(event_id = id, error = %why, "webhook event dropped");
        }
    }

    /// A push channel for one skill run: each pushed payload becomes an
    /// envelope for every subscriber of the run.
    #[must_use]
    pub fn push_sink(&self, hooks: TaskWebhooks) -> Arc<dyn PushSink> {
        Arc::new(WebhookPush {
            hooks: self.clone(),
            task: hooks,
        })
    }

    /// Events held (pending, in flight, dead letters).
    #[must_use]
    pub fn held(&self) -> usize {
        lock(&self.inner.dispatcher).outbox().len()
    }

    /// The dead letters held now.
    #[must_use]
    pub fn dead_letters(&self) -> Vec<asap_proto::webhook::OutboxRecord> {
        lock(&self.inner.dispatcher)
            .outbox()
            .dead_letters()
            .cloned()
            .collect()
    }

    /// Replays a dead letter (the row is rewritten as pending).
    pub async fn replay(
        &self,
        event_id: &str,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        lock(&self.inner.dispatcher).replay(event_id, wall_now())?;
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || flush(&inner)).await??;
        self.inner.wake.notify_one();
        Ok(())
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
        self.hooks.publish_now(self.task.events(payload, id, wall));
        Ok(())
    }
}

/// Pushes to the open WebSocket and to the webhook subscribers.
pub(crate) struct BothPush(pub(crate) Arc<dyn PushSink>, pub(crate) Arc<dyn PushSink>);

impl PushSink for BothPush {
    fn push(&self, payload: Payload) -> Result<(), PushError> {
        let hooked = self.1.push(payload.clone());
        self.0.push(payload).or(hooked)
    }
}

/// Writes the dispatcher's queued rows, in order (a store failure is logged
/// and returned; the rows are rewritten by the next change of each event).
fn flush(inner: &Inner) -> Result<(), StoreError> {
    let mut store = lock(&inner.store);
    let changes = lock(&inner.dispatcher).take_changes();
    if changes.is_empty() {
        return Ok(());
    }
    store.apply(&changes).inspect_err(|e| {
        tracing::error!(error = %e, "webhook outbox rows not written");
    })
}

async fn worker(inner: Arc<Inner>) {
    loop {
        let mut sends = Vec::new();
        let mut sleep_until = None;
        {
            let mut d = lock(&inner.dispatcher);
            let now = wall_now();
            while let Some(out) = d.poll_output(now) {
                match out {
                    DispatchOutput::Transmit(delivery) => {
                        let host = d.host_to_resolve(&delivery);
                        sends.push((delivery, host));
                    }
                    DispatchOutput::Event(e) => log_event(&e),
                    DispatchOutput::Timeout(t) => {
                        sleep_until = Some(t);
                        break;
                    }
                }
            }
        }
        let flushing = Arc::clone(&inner);
        let _ = tokio::task::spawn_blocking(move || flush(&flushing)).await;
        for (delivery, host) in sends {
            tokio::spawn(attempt(Arc::clone(&inner), delivery, host));
        }
        let wait = sleep_until.map_or(Duration::from_secs(3600), |t| {
            let ms = t.as_millis().saturating_sub(wall_now().as_millis());
            Duration::from_millis(u64::try_from(ms).unwrap_or(0).max(1))
        });
        tokio::select! {
            () = inner.wake.notified() => {}
            () = tokio::time::sleep(wait) => {}
        }
    }
}

fn log_event(e: &OutboxEvent) {
    match e {
        OutboxEvent::Delivered {
            event_id,
            attempts,
            status,
            ..
        } => tracing::debug!(event_id, attempts, status, "webhook delivered"),
        OutboxEvent::RetryScheduled {
            event_id,
            attempts,
            failure,
            ..
        } => tracing::info!(event_id, attempts, failure = %failure, "webhook retry scheduled"),
        OutboxEvent::DeadLettered {
            event_id,
            attempts,
            reason,
            ..
        } => tracing::warn!(event_id, attempts, reason = %reason, "webhook dead letter"),
        _ => {}
    }
}

/// One attempt: resolve, approve, send pinned, report.
async fn attempt(inner: Arc<Inner>, delivery: Delivery, host: Option<(String, u16)>) {
    let outcome = 'attempt: {
        let resolved = match &host {
            Some((h, port)) => match inner.resolver.resolve(h.clone(), *port).await {
                Ok(a) if !a.is_empty() => a,
                _ => break 'attempt DeliveryOutcome::ConnectFailed,
            },
            None => Vec::new(),
        };
        let approved = lock(&inner.dispatcher).approve(&delivery, &resolved);
        match approved {
            Ok(target) => {
                let addrs: Vec<SocketAddr> = target.socket_addrs().collect();
                let host = host.as_ref().map(|(h, _)| h.clone());
                match pinned_client(&inner, host, addrs) {
                    Some(client) => send_pinned(&client, &delivery).await,
                    None => DeliveryOutcome::ConnectFailed,
                }
            }
            Err(refused) => DeliveryOutcome::UrlRefused(refused),
        }
    };
    let _ = lock(&inner.dispatcher).handle_result(delivery.id, outcome, wall_now());
    inner.wake.notify_one();
}

/// The client that connects to `addrs` only (for `host`): no proxy, no redirects.
fn pinned_client(
    inner: &Inner,
    host: Option<String>,
    addrs: Vec<SocketAddr>,
) -> Option<reqwest::Client> {
    let key = (host, addrs);
    let mut clients = lock(&inner.clients);
    if let Some(c) = clients.get(&key) {
        return Some(c.clone());
    }
    let mut builder = reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .pool_max_idle_per_host(32);
    if let Some(host) = &key.0 {
        builder = builder.resolve_to_addrs(host, &key.1);
    }
    let client = builder.build().ok()?;
    if clients.len() >= MAX_CLIENTS {
        clients.clear();
    }
    clients.insert(key, client.clone());
    Some(client)
}

/// Sends one attempt within its timeout; the response body is read up to the cap.
async fn send_pinned(client: &reqwest::Client, delivery: &Delivery) -> DeliveryOutcome {
    let Ok(request) = reqwest::Request::try_from(delivery.request.clone()) else {
        return DeliveryOutcome::ConnectFailed;
    };
    let mut request = request;
    *request.timeout_mut() = Some(delivery.timeout);
    let mut response = match client.execute(request).await {
        Ok(r) => r,
        Err(e) if e.is_timeout() => return DeliveryOutcome::TimedOut,
        Err(_) => return DeliveryOutcome::ConnectFailed,
    };
    let mut head = http::Response::new(());
    *head.status_mut() = response.status();
    if let Some(v) = response.headers().get(http::header::RETRY_AFTER) {
        head.headers_mut()
            .insert(http::header::RETRY_AFTER, v.clone());
    }
    // The body is read up to the cap (and within the timeout), then dropped.
    let mut read = 0usize;
    let drain = async {
        while let Ok(Some(chunk)) = response.chunk().await {
            read += chunk.len();
            if read > MAX_RESPONSE_BYTES {
                break;
            }
        }
    };
    let _ = tokio::time::timeout(delivery.timeout, drain).await;
    DeliveryOutcome::from_response(&head)
}

/// Reads a `--webhook-secret` value: `whsec_<base64>` (Standard Webhooks)
/// or any other text, whose UTF-8 bytes are the key (the reference's form).
pub fn parse_secret(text: &str) -> Result<asap_proto::webhook::WebhookSecret, String> {
    use asap_proto::webhook::{WebhookSecret, WHSEC_PREFIX};
    if text.is_empty() {
        return Err("a webhook secret must not be empty".into());
    }
    if text.starts_with(WHSEC_PREFIX) {
        WebhookSecret::from_whsec(text).map_err(|e| e.to_string())
    } else {
        Ok(WebhookSecret::from_bytes(text.as_bytes()))
    }
}

/// Unix time from the wall clock, for callers outside the server.
#[must_use]
pub fn now() -> UnixTime {
    wall_now()
}
