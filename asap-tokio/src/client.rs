//! Async ASAP HTTP client on [`reqwest`] (rustls with ring): `send`,
//! `discover`, `health_check`, `registry` / `find_by_skill`.
//!
//! Every decision — request bytes, retries and their delays, `Retry-After`,
//! the circuit breaker, manifest/health/registry caching with ETag
//! revalidation, the `http://` policy — is made by
//! [`asap_proto::client::ClientState`]; this module performs the HTTP
//! requests it is handed and sleeps until the deadlines it is told.
//! `asap_blocking::client::Client` has the same methods, blocking.
//!
//! ```no_run
//! use asap_tokio::client::Client;
//! # async fn run(envelope: asap_proto::model::Envelope) -> Result<(), asap_tokio::client::ClientError> {
//! let client = Client::new("https://agent.example.com")?;
//! let manifest = client.discover("https://agent.example.com").await?;   // cached, revalidated with ETag
//! let health = client.health_check("https://agent.example.com").await?; // 503 → Unhealthy, not an error
//! let reply = client.send(&envelope).await?;                            // retries, breaker
//! # Ok(()) }
//! ```
//!
//! A `send` future dropped mid-call gives its half-open breaker probe back.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use asap_proto::client::{
    BaseUrl, ClientState, ClientStateConfig, ClientStats, HttpPolicy, SendOutput, SendTicket,
    TransportError, TransportErrorKind,
};
use asap_proto::discovery::{
    DiscoveryError, HealthVerdict, LiteRegistry, Lookup, RegistryEntry, DEFAULT_REGISTRY_URL,
};
use asap_proto::model::{Envelope, Manifest, Ulid, UnixTime};
use asap_proto::reliability::{CircuitBreakerConfig, CircuitState, RetryPolicy};

pub use asap_proto::client::CallError as ClientError;
pub use asap_proto::client::Fault;

/// Default limit on a response body (10 MiB, the reference server's request limit).
pub const DEFAULT_MAX_RESPONSE_SIZE: u64 = 10 * 1024 * 1024;

/// Per-phase timeouts (defaults follow the reference client).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Whole `asap.send` attempt (reference: 60 s).
    pub request: Duration,
    /// Connection setup including TLS (10 s).
    pub connect: Duration,
    /// Manifest and health GETs; the smaller of this and `request` applies (reference: 10 s).
    pub discovery: Duration,
    /// Registry GET (reference: 30 s).
    pub registry: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            request: Duration::from_secs(60),
            connect: Duration::from_secs(10),
            discovery: Duration::from_secs(10),
            registry: Duration::from_secs(30),
        }
    }
}

/// A sleep the client awaits.
pub type Sleep = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// The client's source of `now` and its way of waiting for a deadline the
/// core reported. [`TokioClock`] by default; a manual clock makes retry,
/// cache-expiry and breaker tests run without waiting on wall time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant (monotonic).
    fn now(&self) -> Instant;
    /// Completes at `deadline` (at once if it has passed).
    fn sleep_until(&self, deadline: Instant) -> Sleep;
}

/// `Instant::now()` and `tokio::time::sleep_until`.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

impl Clock for TokioClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep_until(&self, deadline: Instant) -> Sleep {
        Box::pin(tokio::time::sleep_until(tokio::time::Instant::from_std(
            deadline,
        )))
    }
}

/// Builds a [`Client`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ClientBuilder {
    base_url: Option<String>,
    state: ClientStateConfig,
    timeouts: Timeouts,
    max_response_size: Option<u64>,
    clock: Option<Arc<dyn Clock>>,
}

impl ClientBuilder {
    /// The agent [`Client::send`] talks to.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// Timeout of one `asap.send` attempt.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeouts.request = d;
        self
    }

    /// Connect (and TLS handshake) timeout.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.timeouts.connect = d;
        self
    }

    /// All timeouts at once.
    pub fn timeouts(mut self, t: Timeouts) -> Self {
        self.timeouts = t;
        self
    }

    /// Allows plain `http://` to hosts other than loopback (off by default, spec 14).
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.state.client.http_policy = if allow {
            HttpPolicy::AllowInsecure
        } else {
            HttpPolicy::LoopbackOnly
        };
        self
    }

    /// Retries of `asap.send`.
    pub fn retry_policy(mut self, p: RetryPolicy) -> Self {
        self.state.retry = p;
        self
    }

    /// Circuit breaker per agent; `None` disables it.
    pub fn circuit_breaker(mut self, c: Option<CircuitBreakerConfig>) -> Self {
        self.state.breaker = c;
        self
    }

    /// The whole core configuration (caches, retries, breaker, policy).
    pub fn state_config(mut self, c: ClientStateConfig) -> Self {
        self.state = c;
        self
    }

    /// Largest response body accepted (default [`DEFAULT_MAX_RESPONSE_SIZE`]).
    pub fn max_response_size(mut self, bytes: u64) -> Self {
        self.max_response_size = Some(bytes);
        self
    }

    /// The clock the core's timing runs on (default [`TokioClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The client; fails on an unusable base URL or when TLS cannot be set up.
    pub fn build(self) -> Result<Client, ClientError> {
        let state = ClientState::new(self.state);
        let base = self
            .base_url
            .as_deref()
            .map(|u| state.agent(u))
            .transpose()?;
        let mut http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(self.timeouts.connect);
        if let Some(ua) = state.config().client.user_agent.as_deref() {
            http = http.user_agent(ua);
        }
        let http = http
            .build()
            .map_err(|e| ClientError::Setup(error_chain(&e)))?;
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                base,
                timeouts: self.timeouts,
                max_response_size: self.max_response_size.unwrap_or(DEFAULT_MAX_RESPONSE_SIZE),
                clock: self.clock.unwrap_or_else(|| Arc::new(TokioClock)),
                state: Mutex::new(state),
            }),
        })
    }
}

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    base: Option<BaseUrl>,
    timeouts: Timeouts,
    max_response_size: u64,
    clock: Arc<dyn Clock>,
    state: Mutex<ClientState>,
}

impl Inner {
    fn state(&self) -> MutexGuard<'_, ClientState> {
        // The core's methods do not panic midway, so a poisoned lock holds a consistent value.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// An async ASAP client; cheap to clone, shareable across tasks (clones
/// share caches, breakers and the connection pool).
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Gives a half-open probe back if a `send` future is dropped mid-call.
struct TicketGuard<'a> {
    inner: &'a Inner,
    ticket: Option<SendTicket>,
}

impl Drop for TicketGuard<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            self.inner.state().abandon_send(t);
        }
    }
}

impl Client {
    /// A client for the agent at `base_url` with default settings.
    pub fn new(base_url: &str) -> Result<Self, ClientError> {
        Self::builder().base_url(base_url).build()
    }

    /// A builder; without [`ClientBuilder::base_url`] the client can discover,
    /// check health, read registries and [`send_to`](Self::send_to).
    pub fn builder() -> ClientBuilder {
        ClientBuilder::default()
    }

    /// The agent `send` talks to, if any.
    #[must_use]
    pub fn base_url(&self) -> Option<&str> {
        self.inner.base.as_ref().map(BaseUrl::as_str)
    }

    /// What the caches, retries and breakers did so far.
    #[must_use]
    pub fn stats(&self) -> ClientStats {
        self.inner.state().stats()
    }

    /// The circuit breaker state for the agent at `base_url` (`None` before any send).
    #[must_use]
    pub fn breaker_state(&self, base_url: &str) -> Option<CircuitState> {
        let st = self.inner.state();
        st.agent(base_url).ok().and_then(|a| st.breaker_state(&a))
    }

    fn now(&self) -> Instant {
        self.inner.clock.now()
    }

    fn state(&self) -> MutexGuard<'_, ClientState> {
        self.inner.state()
    }

    /// Sends `envelope` to the client's agent with `asap.send`; returns the response envelope.
    pub async fn send(&self, envelope: &Envelope) -> Result<Envelope, ClientError> {
        let agent = self.inner.base.clone().ok_or(ClientError::NoBaseUrl)?;
        self.send_agent(&agent, envelope).await
    }

    /// Sends `envelope` to the agent at `base_url`.
    pub async fn send_to(
        &self,
        base_url: &str,
        envelope: &Envelope,
    ) -> Result<Envelope, ClientError> {
        let agent = self.inner.state().agent(base_url)?;
        self.send_agent(&agent, envelope).await
    }

    async fn send_agent(
        &self,
        agent: &BaseUrl,
        envelope: &Envelope,
    ) -> Result<Envelope, ClientError> {
        let key = Ulid::new(
            UnixTime::from_system_time(SystemTime::now()),
            u128::from_le_bytes(random_bytes()),
        );
        let seed = u64::from_le_bytes(random_bytes());
        let (mut call, ticket) =
            self.inner
                .state()
                .begin_send(agent, envelope, key, seed, self.now())?;
        let mut guard = TicketGuard {
            inner: &self.inner,
            ticket: Some(ticket),
        };
        let outcome = loop {
            match call.poll_output(self.now()) {
                Some(SendOutput::Transmit(req)) => {
                    match self.execute(req, self.inner.timeouts.request).await {
                        Ok(resp) => call.handle_response(resp, self.now()),
                        Err(e) => call.handle_transport_error(e, self.now()),
                    }
                }
                Some(SendOutput::Timeout(at)) => {
                    self.inner.clock.sleep_until(at).await;
                    call.handle_timeout(self.now());
                }
                Some(SendOutput::Done(outcome)) => break outcome,
                // Only while a request is in flight, and this driver always reports one.
                None => call.handle_transport_error(
                    TransportError::new(TransportErrorKind::Other, "no response reported"),
                    self.now(),
                ),
            }
        };
        let Some(ticket) = guard.ticket.take() else {
            unreachable!("the ticket is taken only here")
        };
        self.inner.state().finish_send(ticket, outcome, self.now())
    }

    /// The agent's manifest (`GET {base}/.well-known/asap/manifest.json`),
    /// cached per `Cache-Control: max-age` and the manifest's `ttl_seconds`,
    /// revalidated with `If-None-Match` once stale.
    pub async fn discover(&self, base_url: &str) -> Result<Arc<Manifest>, ClientError> {
        let agent = self.inner.state().agent(base_url)?;
        self.fetch(
            &agent.manifest_url(),
            self.discovery_timeout(),
            |st, now| st.manifest_lookup(&agent, now).map_err(Into::into),
            |st, resp, now| st.handle_manifest_response(&agent, resp, now),
            |st| st.manifest_failed(&agent),
        )
        .await
    }

    /// The agent's health (`GET {base}/.well-known/asap/health`): a 503 is
    /// [`HealthVerdict::Unhealthy`], not an error. Cached for the manifest's
    /// `ttl_seconds` (300 s when the manifest is not cached).
    pub async fn health_check(&self, base_url: &str) -> Result<Arc<HealthVerdict>, ClientError> {
        let agent = self.inner.state().agent(base_url)?;
        self.fetch(
            &agent.health_url(),
            self.discovery_timeout(),
            |st, now| st.health_lookup(&agent, now).map_err(Into::into),
            |st, resp, now| st.handle_health_response(&agent, resp, now),
            |st| st.health_failed(&agent),
        )
        .await
    }

    /// The Lite Registry at `url` ([`DEFAULT_REGISTRY_URL`] is the public one), cached 15 min.
    pub async fn registry(&self, url: &str) -> Result<Arc<LiteRegistry>, ClientError> {
        self.fetch(
            url,
            self.inner.timeouts.registry,
            |st, now| st.registry_lookup(url, now),
            |st, resp, now| st.handle_registry_response(url, resp, now),
            |st| st.registry_failed(url),
        )
        .await
    }

    /// The entries of the registry at `url` that offer `skill` (exact match), in registry order.
    pub async fn find_by_skill(
        &self,
        url: &str,
        skill: &str,
    ) -> Result<Vec<RegistryEntry>, ClientError> {
        Ok(self
            .registry(url)
            .await?
            .find_by_skill(skill)
            .into_iter()
            .cloned()
            .collect())
    }

    /// [`registry`](Self::registry) of [`DEFAULT_REGISTRY_URL`].
    pub async fn default_registry(&self) -> Result<Arc<LiteRegistry>, ClientError> {
        self.registry(DEFAULT_REGISTRY_URL).await
    }

    fn discovery_timeout(&self) -> Duration {
        self.inner
            .timeouts
            .discovery
            .min(self.inner.timeouts.request)
    }

    /// One cached GET: lookup → (request → handle) with the core deciding everything.
    async fn fetch<T>(
        &self,
        url: &str,
        timeout: Duration,
        lookup: impl Fn(&mut ClientState, Instant) -> Result<Lookup<T>, ClientError>,
        handle: impl Fn(
            &mut ClientState,
            &http::Response<Vec<u8>>,
            Instant,
        ) -> Result<Lookup<T>, DiscoveryError>,
        failed: impl Fn(&mut ClientState),
    ) -> Result<Arc<T>, ClientError> {
        let mut step = lookup(&mut self.state(), self.now())?;
        loop {
            let req = match step {
                Lookup::Fresh(v) => return Ok(v),
                Lookup::Transmit(req) => req,
            };
            match self.execute(req, timeout).await {
                Ok(resp) => step = handle(&mut self.state(), &resp, self.now())?,
                Err(e) => {
                    failed(&mut self.state());
                    return Err(ClientError::from_transport(url.to_owned(), e));
                }
            }
        }
    }

    /// Performs one HTTP exchange and reads the (bounded) body.
    async fn execute(
        &self,
        req: http::Request<Vec<u8>>,
        timeout: Duration,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        let (parts, body) = req.into_parts();
        let mut builder = self
            .inner
            .http
            .request(parts.method, parts.uri.to_string())
            .headers(parts.headers)
            .timeout(timeout);
        if !body.is_empty() {
            builder = builder.body(body);
        }
        let mut resp = builder.send().await.map_err(classify)?;
        let limit = self.inner.max_response_size;
        let too_large = |detail: String| {
            TransportError::new(TransportErrorKind::ResponseTooLarge { limit }, detail)
        };
        if let Some(n) = resp.content_length().filter(|n| *n > limit) {
            return Err(too_large(format!("Content-Length is {n}")));
        }
        let mut out = http::Response::builder()
            .status(resp.status())
            .version(resp.version());
        if let Some(h) = out.headers_mut() {
            *h = std::mem::take(resp.headers_mut());
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(classify)? {
            let read = bytes.len() as u64 + chunk.len() as u64;
            if read > limit {
                return Err(too_large(format!("body reached {read} bytes")));
            }
            bytes.extend_from_slice(&chunk);
        }
        out.body(bytes)
            .map_err(|e| TransportError::new(TransportErrorKind::Other, e.to_string()))
    }
}

/// Maps reqwest's error to the core's transport kinds (connect and timeout are retried).
fn classify(e: reqwest::Error) -> TransportError {
    let kind = if e.is_timeout() {
        TransportErrorKind::Timeout
    } else if e.is_connect() {
        TransportErrorKind::Connect
    } else {
        TransportErrorKind::Other
    };
    TransportError::new(kind, error_chain(&e))
}

/// The error and its sources, "a: b: c" (reqwest's own text names no cause).
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let s_text = s.to_string();
        if !text.contains(&s_text) {
            text.push_str(": ");
            text.push_str(&s_text);
        }
        source = s.source();
    }
    text
}

fn random_bytes<const N: usize>() -> [u8; N] {
    use ring::rand::{SecureRandom, SystemRandom};
    let mut b = [0u8; N];
    if SystemRandom::new().fill(&mut b).is_err() {
        // No OS randomness: keys stay unique by time, only less unpredictable.
        let t = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        for (i, x) in b.iter_mut().enumerate() {
            *x = (t >> ((i % 16) * 8)) as u8;
        }
    }
    b
}
