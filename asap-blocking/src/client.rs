//! Blocking ASAP HTTP client on [`ureq`] (rustls with ring): `send`,
//! `discover`, `health_check`, `registry` / `find_by_skill`.
//!
//! Every decision — request bytes, retries and their delays, `Retry-After`,
//! the circuit breaker, manifest/health/registry caching with ETag
//! revalidation, the `http://` policy, the options and their defaults — is
//! [`asap_proto::client`]'s ([`ClientState`] and its exchanges); this module
//! performs the HTTP requests it is handed, classifies failures, and sleeps
//! until the deadlines it is told. `asap_tokio::client::Client` has the same
//! methods, async.
//!
//! ```no_run
//! use asap_blocking::client::{Client, ClientOptions};
//! # fn run(envelope: asap_proto::model::Envelope) -> Result<(), asap_blocking::client::ClientError> {
//! let client = Client::new("https://agent.example.com")?;
//! let manifest = client.discover("https://agent.example.com")?;       // cached, revalidated with ETag
//! let health = client.health_check("https://agent.example.com")?;     // 503 → Unhealthy, not an error
//! let reply = client.send(&envelope)?;                                // retries, breaker
//! let quick = Client::new(ClientOptions::default().timeout(std::time::Duration::from_secs(5)))?;
//! # Ok(()) }
//! ```

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use asap_proto::auth::BearerSource;
use asap_proto::client::{ClientState, Exchange, ExchangeOutput};
use asap_proto::client::{TransportError, TransportErrorKind};
use asap_proto::discovery::{HealthVerdict, LiteRegistry, RegistryEntry, DEFAULT_REGISTRY_URL};
use asap_proto::model::{Envelope, Manifest, UnixTime};

pub use asap_proto::client::CallError as ClientError;
pub use asap_proto::client::{ClientHandle, ClientOptions, ClientStats, Fault, Timeouts};

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

/// A blocking ASAP client; cheap to clone, shareable across threads (the
/// clones share caches, breakers and the connection pool).
#[derive(Debug, Clone)]
pub struct Client {
    http: ureq::Agent,
    base: Option<Arc<str>>,
    max_response_size: u64,
    clock: Arc<dyn Clock>,
    state: Arc<Mutex<ClientState>>,
    /// Where the bearer token of `asap.send` requests comes from.
    auth: Arc<Mutex<Option<BearerSource>>>,
}

impl Client {
    /// A client with `options` (or a base URL and default options) on the
    /// system clock; without a base URL it can discover, check health, read
    /// registries and [`send_to`](Self::send_to).
    pub fn new(options: impl Into<ClientOptions>) -> Result<Self, ClientError> {
        Self::with_clock(options.into(), Arc::new(SystemClock))
    }

    /// A client whose timing runs on `clock`; fails on an unusable base URL.
    pub fn with_clock(options: ClientOptions, clock: Arc<dyn Clock>) -> Result<Self, ClientError> {
        let mut config = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_connect(Some(options.timeouts.connect));
        if let Some(ua) = options.request.user_agent.as_deref() {
            config = config.user_agent(ua);
        }
        let max_response_size = options.max_response_size;
        let state = ClientState::new(options)?;
        Ok(Self {
            http: ureq::Agent::new_with_config(config.build()),
            base: state.base_url().map(|b| b.as_str().into()),
            max_response_size,
            clock,
            state: Arc::new(Mutex::new(state)),
            auth: Arc::default(),
        })
    }

    /// The agent `send` talks to, if any.
    #[must_use]
    pub fn base_url(&self) -> Option<&str> {
        self.base.as_deref()
    }

    /// Sends `Authorization: Bearer <token>` on every `asap.send` (POST)
    /// request; GETs (manifest, health, registries) go without it.
    #[must_use]
    pub fn with_token(self, token: impl Into<String>) -> Self {
        self.with_bearer(BearerSource::token(token))
    }

    /// OAuth2 client credentials (`client_secret_basic` at `token_url`),
    /// refreshed 30 s before expiry; the token rides on `asap.send` requests.
    pub fn with_oauth2(
        self,
        token_url: &str,
        client_id: &str,
        client_secret: &str,
        scopes: &[&str],
    ) -> Result<Self, ClientError> {
        let source = BearerSource::oauth2(token_url, client_id, client_secret, scopes)
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(self.with_bearer(source))
    }

    /// Client credentials at the token endpoint `issuer`'s OIDC discovery names.
    pub fn with_oidc(
        self,
        issuer: &str,
        client_id: &str,
        client_secret: &str,
        scopes: &[&str],
    ) -> Result<Self, ClientError> {
        let scopes = scopes.iter().map(|s| (*s).to_owned()).collect();
        let source = BearerSource::oidc(issuer, client_id, client_secret, scopes)
            .map_err(|e| ClientError::Setup(e.to_string()))?;
        Ok(self.with_bearer(source))
    }

    /// Any [`BearerSource`] (shared by clones of this client).
    #[must_use]
    pub fn with_bearer(self, source: BearerSource) -> Self {
        *self
            .auth
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(source);
        self
    }

    /// Sends `envelope` to the client's agent with `asap.send`; returns the response envelope.
    pub fn send(&self, envelope: &Envelope) -> Result<Envelope, ClientError> {
        self.send_to_agent(None, envelope)
    }

    /// Sends `envelope` to the agent at `base_url`.
    pub fn send_to(&self, base_url: &str, envelope: &Envelope) -> Result<Envelope, ClientError> {
        self.send_to_agent(Some(base_url), envelope)
    }

    fn send_to_agent(
        &self,
        base_url: Option<&str>,
        envelope: &Envelope,
    ) -> Result<Envelope, ClientError> {
        let mut random = [0u8; 24];
        // Should the OS refuse, zeros still give unique keys (the core counts them).
        let _ = getrandom::getrandom(&mut random);
        let wall_clock = UnixTime::from_system_time(SystemTime::now());
        let now = self.clock.now();
        let exchange = self
            .state()
            .begin_send(base_url, envelope, wall_clock, random, now);
        self.run(exchange)
    }

    /// The agent's manifest (`GET {base}/.well-known/asap/manifest.json`),
    /// cached per `Cache-Control: max-age` and the manifest's `ttl_seconds`,
    /// revalidated with `If-None-Match` once stale.
    pub fn discover(&self, base_url: &str) -> Result<Arc<Manifest>, ClientError> {
        // Bound first: the state's lock must be released before the exchange runs.
        let exchange = self.state().discover(base_url);
        self.run(exchange)
    }

    /// The agent's health (`GET {base}/.well-known/asap/health`): a 503 is
    /// [`HealthVerdict::Unhealthy`], not an error. Cached for the manifest's
    /// `ttl_seconds` (300 s when the manifest is not cached).
    pub fn health_check(&self, base_url: &str) -> Result<Arc<HealthVerdict>, ClientError> {
        let exchange = self.state().health_check(base_url);
        self.run(exchange)
    }

    /// The Lite Registry at `url` ([`DEFAULT_REGISTRY_URL`] is the public one), cached 15 min.
    pub fn registry(&self, url: &str) -> Result<Arc<LiteRegistry>, ClientError> {
        let exchange = self.state().registry(url);
        self.run(exchange)
    }

    /// The entries of the registry at `url` that offer `skill` (exact match), in registry order.
    pub fn find_by_skill(&self, url: &str, skill: &str) -> Result<Vec<RegistryEntry>, ClientError> {
        let registry = self.registry(url)?;
        Ok(registry.find_by_skill(skill).into_iter().cloned().collect())
    }

    /// [`registry`](Self::registry) of [`DEFAULT_REGISTRY_URL`].
    pub fn default_registry(&self) -> Result<Arc<LiteRegistry>, ClientError> {
        self.registry(DEFAULT_REGISTRY_URL)
    }

    fn state(&self) -> MutexGuard<'_, ClientState> {
        // A panic elsewhere cannot leave the core inconsistent (its methods do not panic midway).
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drives one exchange: the core decides, this performs and sleeps.
    fn run<E: Exchange>(&self, mut exchange: E) -> Result<E::Value, ClientError> {
        loop {
            let now = self.clock.now();
            // Bound first, so that the state's lock is released before any I/O.
            let step = exchange.poll_output(&mut self.state(), now);
            match step {
                ExchangeOutput::Done(result) => return result,
                ExchangeOutput::Timeout(at) => self.clock.sleep_until(at),
                ExchangeOutput::Transmit(req) => {
                    let result = self.execute(req, exchange.request_timeout());
                    let now = self.clock.now();
                    exchange.handle_result(&mut self.state(), result, now);
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
        let limit = self.max_response_size;
        let (mut parts, body) = req.into_parts();
        if parts.method == http::Method::POST {
            let value = crate::auth::authorization(&self.auth, &self.http).map_err(|e| {
                TransportError::new(TransportErrorKind::Other, format!("access token: {e}"))
            })?;
            if let Some(v) = value {
                parts.headers.insert(http::header::AUTHORIZATION, v);
            }
        }
        // ureq sends no body (and no Content-Length) for a `()` GET.
        let resp = if body.is_empty() && parts.method == http::Method::GET {
            self.perform(http::Request::from_parts(parts, ()), timeout)
        } else {
            self.perform(http::Request::from_parts(parts, body), timeout)
        }
        .map_err(|e| classify(e, limit))?;
        let (parts, mut body) = resp.into_parts();
        let bytes = body
            .with_config()
            .limit(limit)
            .read_to_vec()
            .map_err(|e| classify(e, limit))?;
        Ok(http::Response::from_parts(parts, bytes))
    }

    fn perform<B: ureq::AsSendBody>(
        &self,
        req: http::Request<B>,
        timeout: Duration,
    ) -> Result<http::Response<ureq::Body>, ureq::Error> {
        let req = self
            .http
            .configure_request(req)
            .timeout_global(Some(timeout))
            .build();
        self.http.run(req)
    }
}

/// `stats()` and `breaker_state()` come from here.
impl ClientHandle for Client {
    fn with_state<R>(&self, f: impl FnOnce(&mut ClientState) -> R) -> R {
        f(&mut self.state())
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
