//! Blocking ASAP HTTP client on [`ureq`] (rustls with ring): `send`,
//! `discover`, `health_check`, `registry` / `find_by_skill`.
//!
//! Every decision — request bytes, retries and their delays, `Retry-After`,
//! the circuit breaker, manifest/health/registry caching with ETag
//! revalidation, the `http://` policy — is made by
//! [`asap_proto::client::ClientState`]; this module performs the HTTP
//! requests it is handed and sleeps until the deadlines it is told.
//! `asap_tokio::client::Client` has the same methods, async.
//!
//! ```no_run
//! use asap_blocking::client::Client;
//! # fn run(envelope: asap_proto::model::Envelope) -> Result<(), asap_blocking::client::ClientError> {
//! let client = Client::new("https://agent.example.com")?;
//! let manifest = client.discover("https://agent.example.com")?;       // cached, revalidated with ETag
//! let health = client.health_check("https://agent.example.com")?;     // 503 → Unhealthy, not an error
//! let reply = client.send(&envelope)?;                                // retries, breaker
//! # Ok(()) }
//! ```

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use asap_proto::client::{
    BaseUrl, ClientState, ClientStateConfig, ClientStats, HttpPolicy, SendOutput, TransportError,
    TransportErrorKind,
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

/// The client's source of `now` and its way of waiting for a deadline the
/// core reported. [`SystemClock`] by default; a manual clock makes retry,
/// cache-expiry and breaker tests run without waiting on wall time.
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current instant (monotonic).
    fn now(&self) -> Instant;
    /// Blocks until `deadline` (returns at once if it has passed).
    fn sleep_until(&self, deadline: Instant);
}

/// The real monotonic clock and `std::thread::sleep`.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
    fn sleep_until(&self, deadline: Instant) {
        std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
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

    /// The clock the core's timing runs on (default [`SystemClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The client; fails on an unusable base URL.
    pub fn build(self) -> Result<Client, ClientError> {
        let state = ClientState::new(self.state);
        let base = self
            .base_url
            .as_deref()
            .map(|u| state.agent(u))
            .transpose()?;
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(self.timeouts.connect));
        if let Some(ua) = state.config().client.user_agent.as_deref() {
            config = config.user_agent(ua);
        }
        let agent = ureq::Agent::new_with_config(config.build());
        Ok(Client {
            inner: Arc::new(Inner {
                http: agent,
                base,
                timeouts: self.timeouts,
                max_response_size: self.max_response_size.unwrap_or(DEFAULT_MAX_RESPONSE_SIZE),
                clock: self.clock.unwrap_or_else(|| Arc::new(SystemClock)),
                state: Mutex::new(state),
            }),
        })
    }
}

#[derive(Debug)]
struct Inner {
    http: ureq::Agent,
    base: Option<BaseUrl>,
    timeouts: Timeouts,
    max_response_size: u64,
    clock: Arc<dyn Clock>,
    state: Mutex<ClientState>,
}

/// A blocking ASAP client; cheap to clone, shareable across threads (the
/// clones share caches, breakers and the connection pool).
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
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
        self.state().stats()
    }

    /// The circuit breaker state for the agent at `base_url` (`None` before any send).
    #[must_use]
    pub fn breaker_state(&self, base_url: &str) -> Option<CircuitState> {
        let st = self.state();
        st.agent(base_url).ok().and_then(|a| st.breaker_state(&a))
    }

    fn now(&self) -> Instant {
        self.inner.clock.now()
    }

    fn state(&self) -> MutexGuard<'_, ClientState> {
        // A panic elsewhere cannot leave the core inconsistent (its methods do not panic midway).
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends `envelope` to the client's agent with `asap.send`; returns the response envelope.
    pub fn send(&self, envelope: &Envelope) -> Result<Envelope, ClientError> {
        let agent = self.inner.base.clone().ok_or(ClientError::NoBaseUrl)?;
        self.send_agent(&agent, envelope)
    }

    /// Sends `envelope` to the agent at `base_url`.
    pub fn send_to(&self, base_url: &str, envelope: &Envelope) -> Result<Envelope, ClientError> {
        let agent = self.state().agent(base_url)?;
        self.send_agent(&agent, envelope)
    }

    fn send_agent(&self, agent: &BaseUrl, envelope: &Envelope) -> Result<Envelope, ClientError> {
        let key = Ulid::new(UnixTime::from_system_time(SystemTime::now()), random_u128());
        let (mut call, ticket) =
            self.state()
                .begin_send(agent, envelope, key, random_u64(), self.now())?;
        let outcome = loop {
            match call.poll_output(self.now()) {
                Some(SendOutput::Transmit(req)) => {
                    match self.execute(req, self.inner.timeouts.request) {
                        Ok(resp) => call.handle_response(resp, self.now()),
                        Err(e) => call.handle_transport_error(e, self.now()),
                    }
                }
                Some(SendOutput::Timeout(at)) => {
                    self.inner.clock.sleep_until(at);
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
        self.state().finish_send(ticket, outcome, self.now())
    }

    /// The agent's manifest (`GET {base}/.well-known/asap/manifest.json`),
    /// cached per `Cache-Control: max-age` and the manifest's `ttl_seconds`,
    /// revalidated with `If-None-Match` once stale.
    pub fn discover(&self, base_url: &str) -> Result<Arc<Manifest>, ClientError> {
        let agent = self.state().agent(base_url)?;
        self.fetch(
            &agent.manifest_url(),
            self.discovery_timeout(),
            |st, now| st.manifest_lookup(&agent, now).map_err(Into::into),
            |st, resp, now| st.handle_manifest_response(&agent, resp, now),
            |st| st.manifest_failed(&agent),
        )
    }

    /// The agent's health (`GET {base}/.well-known/asap/health`): a 503 is
    /// [`HealthVerdict::Unhealthy`], not an error. Cached for the manifest's
    /// `ttl_seconds` (300 s when the manifest is not cached).
    pub fn health_check(&self, base_url: &str) -> Result<Arc<HealthVerdict>, ClientError> {
        let agent = self.state().agent(base_url)?;
        self.fetch(
            &agent.health_url(),
            self.discovery_timeout(),
            |st, now| st.health_lookup(&agent, now).map_err(Into::into),
            |st, resp, now| st.handle_health_response(&agent, resp, now),
            |st| st.health_failed(&agent),
        )
    }

    /// The Lite Registry at `url` ([`DEFAULT_REGISTRY_URL`] is the public one), cached 15 min.
    pub fn registry(&self, url: &str) -> Result<Arc<LiteRegistry>, ClientError> {
        self.fetch(
            url,
            self.inner.timeouts.registry,
            |st, now| st.registry_lookup(url, now),
            |st, resp, now| st.handle_registry_response(url, resp, now),
            |st| st.registry_failed(url),
        )
    }

    /// The entries of the registry at `url` that offer `skill` (exact match), in registry order.
    pub fn find_by_skill(&self, url: &str, skill: &str) -> Result<Vec<RegistryEntry>, ClientError> {
        Ok(self
            .registry(url)?
            .find_by_skill(skill)
            .into_iter()
            .cloned()
            .collect())
    }

    /// [`registry`](Self::registry) of [`DEFAULT_REGISTRY_URL`].
    pub fn default_registry(&self) -> Result<Arc<LiteRegistry>, ClientError> {
        self.registry(DEFAULT_REGISTRY_URL)
    }

    fn discovery_timeout(&self) -> Duration {
        self.inner
            .timeouts
            .discovery
            .min(self.inner.timeouts.request)
    }

    /// One cached GET: lookup → (request → handle) with the core deciding everything.
    fn fetch<T>(
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
            match self.execute(req, timeout) {
                Ok(resp) => step = handle(&mut self.state(), &resp, self.now())?,
                Err(e) => {
                    failed(&mut self.state());
                    return Err(ClientError::from_transport(url.to_owned(), e));
                }
            }
        }
    }

    /// Performs one HTTP exchange and reads the (bounded) body.
    fn execute(
        &self,
        req: http::Request<Vec<u8>>,
        timeout: Duration,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        let (parts, body) = req.into_parts();
        let resp = if body.is_empty() && parts.method == http::Method::GET {
            self.run(http::Request::from_parts(parts, ()), timeout)
        } else {
            self.run(http::Request::from_parts(parts, body), timeout)
        }?;
        let (parts, mut body) = resp.into_parts();
        let bytes = body
            .with_config()
            .limit(self.inner.max_response_size)
            .read_to_vec()
            .map_err(|e| classify(e, self.inner.max_response_size))?;
        Ok(http::Response::from_parts(parts, bytes))
    }

    fn run<B: ureq::AsSendBody>(
        &self,
        req: http::Request<B>,
        timeout: Duration,
    ) -> Result<http::Response<ureq::Body>, TransportError> {
        let req = self
            .inner
            .http
            .configure_request(req)
            .timeout_global(Some(timeout))
            .build();
        self.inner
            .http
            .run(req)
            .map_err(|e| classify(e, self.inner.max_response_size))
    }
}

/// Maps ureq's error to the core's transport kinds (connect and timeout are retried).
fn classify(e: ureq::Error, limit: u64) -> TransportError {
    use std::io::ErrorKind as K;
    let kind = match &e {
        ureq::Error::BodyExceedsLimit(_) => TransportErrorKind::ResponseTooLarge { limit },
        ureq::Error::Timeout(_) => TransportErrorKind::Timeout,
        ureq::Error::HostNotFound
        | ureq::Error::ConnectionFailed
        | ureq::Error::Tls(_)
        | ureq::Error::Rustls(_) => TransportErrorKind::Connect,
        ureq::Error::Io(io) => match io.kind() {
            K::TimedOut | K::WouldBlock => TransportErrorKind::Timeout,
            K::ConnectionRefused
            | K::AddrNotAvailable
            | K::NotFound
            | K::HostUnreachable
            | K::NetworkUnreachable => TransportErrorKind::Connect,
            _ => TransportErrorKind::Other,
        },
        _ => TransportErrorKind::Other,
    };
    TransportError::new(kind, e.to_string())
}

fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    if getrandom::getrandom(&mut b).is_err() {
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

fn random_u64() -> u64 {
    u64::from_le_bytes(random_bytes())
}

fn random_u128() -> u128 {
    u128::from_le_bytes(random_bytes())
}
