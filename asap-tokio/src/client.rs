//! Async ASAP HTTP client on [`reqwest`] (rustls with ring): `send`,
//! `discover`, `health_check`, `registry` / `find_by_skill`.
//!
//! Every decision — request bytes, retries and their delays, `Retry-After`,
//! the circuit breaker, manifest/health/registry caching with ETag
//! revalidation, the `http://` policy, the options and their defaults — is
//! [`asap_proto::client`]'s ([`ClientState`] and its exchanges); this module
//! performs the HTTP requests it is handed, classifies failures, and sleeps
//! until the deadlines it is told. `asap_blocking::client::Client` has the
//! same methods, blocking.
//!
//! ```no_run
//! use asap_tokio::client::{Client, ClientOptions};
//! # async fn run(envelope: asap_proto::model::Envelope) -> Result<(), asap_tokio::client::ClientError> {
//! let client = Client::new("https://agent.example.com")?;
//! let manifest = client.discover("https://agent.example.com").await?;   // cached, revalidated with ETag
//! let health = client.health_check("https://agent.example.com").await?; // 503 → Unhealthy, not an error
//! let reply = client.send(&envelope).await?;                            // retries, breaker
//! let quick = Client::new(ClientOptions::default().timeout(std::time::Duration::from_secs(5)))?;
//! # Ok(()) }
//! ```
//!
//! A `send` future dropped mid-call gives its half-open breaker probe back.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use asap_proto::auth::BearerSource;
use asap_proto::client::{ClientState, Exchange, ExchangeOutput};
use asap_proto::client::{TransportError, TransportErrorKind};
use asap_proto::discovery::{HealthVerdict, LiteRegistry, RegistryEntry, DEFAULT_REGISTRY_URL};
use asap_proto::model::{Envelope, Manifest, UnixTime};

pub use asap_proto::client::CallError as ClientError;
pub use asap_proto::client::{ClientHandle, ClientOptions, ClientStats, Fault, Timeouts};

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

#[derive(Debug)]
struct Inner {
    http: reqwest::Client,
    base: Option<String>,
    max_response_size: u64,
    clock: Arc<dyn Clock>,
    state: Mutex<ClientState>,
    /// Where the bearer token of `asap.send` requests comes from.
    auth: Mutex<Option<BearerSource>>,
}

/// An async ASAP client; cheap to clone, shareable across tasks (clones
/// share caches, breakers and the connection pool).
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

/// Abandons the exchange if a future is dropped mid-call (returns a
/// half-open probe); a no-op once the exchange is done.
struct Abandon<'a, E: Exchange> {
    client: &'a Client,
    exchange: E,
}

impl<E: Exchange> Drop for Abandon<'_, E> {
    fn drop(&mut self) {
        self.exchange.abandon(&mut self.client.state());
    }
}

impl Client {
    /// A client with `options` (or a base URL and default options) on the
    /// tokio clock; without a base URL it can discover, check health, read
    /// registries and [`send_to`](Self::send_to).
    pub fn new(options: impl Into<ClientOptions>) -> Result<Self, ClientError> {
        Self::with_clock(options.into(), Arc::new(TokioClock))
    }

    /// A client whose timing runs on `clock`; fails on an unusable base URL
    /// or when TLS cannot be set up.
    pub fn with_clock(options: ClientOptions, clock: Arc<dyn Clock>) -> Result<Self, ClientError> {
        let mut http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(options.timeouts.connect);
        if let Some(ua) = options.request.user_agent.as_deref() {
            http = http.user_agent(ua);
        }
        let http = http
            .build()
            .map_err(|e| ClientError::Setup(error_chain(&e)))?;
        let max_response_size = options.max_response_size;
        let state = ClientState::new(options)?;
        let base = state.base_url().map(|b| b.as_str().to_owned());
        let state = Mutex::new(state);
        Ok(Self {
            inner: Arc::new(Inner {
                http,
                base,
                max_response_size,
                clock,
                state,
                auth: Mutex::new(None),
            }),
        })
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
        *crate::server::lock(&self.inner.auth) = Some(source);
        self
    }

    /// The current `Authorization` value (fetching a token if due), e.g. for
    /// a [`WsClient`](crate::ws::WsClient) upgrade; `None` without a source.
    pub async fn authorization(&self) -> Result<Option<http::HeaderValue>, ClientError> {
        crate::auth::authorization(&self.inner.auth, &self.inner.http)
            .await
            .map_err(|e| ClientError::Setup(format!("access token: {e}")))
    }

    /// The agent `send` talks to, if any.
    #[must_use]
    pub fn base_url(&self) -> Option<&str> {
        self.inner.base.as_deref()
    }

    /// Sends `envelope` to the client's agent with `asap.send`; returns the response envelope.
    pub async fn send(&self, envelope: &Envelope) -> Result<Envelope, ClientError> {
        self.send_to_agent(None, envelope).await
    }

    /// Sends `envelope` to the agent at `base_url`.
    pub async fn send_to(
        &self,
        base_url: &str,
        envelope: &Envelope,
    ) -> Result<Envelope, ClientError> {
        self.send_to_agent(Some(base_url), envelope).await
    }

    async fn send_to_agent(
        &self,
        base_url: Option<&str>,
        envelope: &Envelope,
    ) -> Result<Envelope, ClientError> {
        use ring::rand::{SecureRandom, SystemRandom};
        let mut random = [0u8; 24];
        // Should the OS refuse, zeros still give unique keys (the core counts them).
        let _ = SystemRandom::new().fill(&mut random);
        let wall_clock = UnixTime::from_system_time(SystemTime::now());
        let exchange = self
            .state()
            .begin_send(base_url, envelope, wall_clock, random, self.now());
        self.run(exchange).await
    }

    /// The agent's manifest (`GET {base}/.well-known/asap/manifest.json`),
    /// cached per `Cache-Control: max-age` and the manifest's `ttl_seconds`,
    /// revalidated with `If-None-Match` once stale.
    pub async fn discover(&self, base_url: &str) -> Result<Arc<Manifest>, ClientError> {
        let exchange = self.state().discover(base_url);
        self.run(exchange).await
    }

    /// The agent's health (`GET {base}/.well-known/asap/health`): a 503 is
    /// [`HealthVerdict::Unhealthy`], not an error. Cached for the manifest's
    /// `ttl_seconds` (300 s when the manifest is not cached).
    pub async fn health_check(&self, base_url: &str) -> Result<Arc<HealthVerdict>, ClientError> {
        let exchange = self.state().health_check(base_url);
        self.run(exchange).await
    }

    /// The Lite Registry at `url` ([`DEFAULT_REGISTRY_URL`] is the public one), cached 15 min.
    pub async fn registry(&self, url: &str) -> Result<Arc<LiteRegistry>, ClientError> {
        let exchange = self.state().registry(url);
        self.run(exchange).await
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

    fn now(&self) -> Instant {
        self.inner.clock.now()
    }

    fn state(&self) -> MutexGuard<'_, ClientState> {
        // The core's methods do not panic midway, so a poisoned lock holds a consistent value.
        self.inner
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Drives one exchange: the core decides, this performs and sleeps.
    async fn run<E: Exchange>(&self, exchange: E) -> Result<E::Value, ClientError> {
        let mut guard = Abandon {
            client: self,
            exchange,
        };
        let e = &mut guard.exchange;
        loop {
            // The lock is taken per step, never across an await.
            let step = e.poll_output(&mut self.state(), self.now());
            match step {
                ExchangeOutput::Transmit(req) => {
                    let result = self.execute(req, e.request_timeout()).await;
                    e.handle_result(&mut self.state(), result, self.now());
                }
                ExchangeOutput::Timeout(at) => self.inner.clock.sleep_until(at).await,
                ExchangeOutput::Done(result) => return result,
            }
        }
    }

    /// Performs one HTTP exchange and reads the (bounded) body.
    async fn execute(
        &self,
        req: http::Request<Vec<u8>>,
        timeout: Duration,
    ) -> Result<http::Response<Vec<u8>>, TransportError> {
        let (mut parts, body) = req.into_parts();
        if parts.method == http::Method::POST {
            let value = crate::auth::authorization(&self.inner.auth, &self.inner.http)
                .await
                .map_err(|e| {
                    TransportError::new(TransportErrorKind::Other, format!("access token: {e}"))
                })?;
            if let Some(v) = value {
                parts.headers.insert(http::header::AUTHORIZATION, v);
            }
        }
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

/// `stats()` and `breaker_state()` come from here.
impl ClientHandle for Client {
    fn with_state<R>(&self, f: impl FnOnce(&mut ClientState) -> R) -> R {
        f(&mut self.state())
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
    // The URL is the caller's to name (CallError::Transport does): once.
    TransportError::new(kind, error_chain(&e.without_url()))
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
