//! Everything one HTTP client remembers between calls, in one sans-I/O value,
//! so that every adapter (`asap-tokio`, `asap-blocking`, yours) drives the
//! same machines the same way.

use std::time::{Duration, Instant};

use super::exchange::{FetchExchange, SendExchange};
use super::options::ClientOptions;
use super::request::{BaseUrl, ClientCore};
use super::response::SendError;
use super::send::{BreakerVerdict, SendCall, SendOutcome};
use super::{ClientError, Fault, TransportError, TransportErrorKind};
use crate::discovery::lru::LruMap;
use crate::discovery::{
    manifest_ttl, DiscoveryError, HealthCache, HealthVerdict, LiteRegistry, Lookup, ManifestCache,
    RegistryCache,
};
use crate::model::{Envelope, Manifest, Ulid, UnixTime, DEFAULT_MANIFEST_TTL_SECONDS};
use crate::reliability::{CircuitBreaker, CircuitOpen, CircuitState};

/// A failed client call, as an adapter's `Client` reports it: whose fault it
/// is ([`CallError::fault`]) and what to tell a user.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum CallError {
    /// The URL is unusable or plain `http://` to a non-loopback host (local).
    #[error(transparent)]
    Config(#[from] ClientError),
    /// `send` on a client built without an agent base URL (local).
    #[error("this client has no agent base URL: build it with one, or use send_to")]
    NoBaseUrl,
    /// The HTTP stack could not be set up, e.g. TLS roots (local).
    #[error("HTTP client setup failed: {0}")]
    Setup(String),
    /// The peer could not be reached or the exchange broke off (network).
    #[error("transport failure talking to {url} ({kind}): {detail}")]
    Transport {
        /// Connect, timeout, or other (never [`TransportErrorKind::ResponseTooLarge`]:
        /// that is [`CallError::ResponseTooLarge`]).
        kind: TransportErrorKind,
        /// The URL requested.
        url: String,
        /// The HTTP library's description.
        detail: String,
    },
    /// The response body exceeded the client's limit (peer); raise
    /// `max_response_size` if the agent's answers are legitimately this large.
    #[error("response from {url} exceeds {limit} bytes ({detail})")]
    ResponseTooLarge {
        /// The URL requested.
        url: String,
        /// The configured limit.
        limit: u64,
        /// The HTTP library's (or adapter's) description.
        detail: String,
    },
    /// `asap.send` failed: JSON-RPC error, HTTP status, malformed answer,
    /// or the circuit is open (see [`SendError::fault`]).
    #[error(transparent)]
    Send(SendError),
    /// Discovery failed: HTTP status, invalid manifest/health/registry document.
    #[error(transparent)]
    Discovery(DiscoveryError),
}

impl CallError {
    /// The user-facing error for a transport failure talking to `url`.
    #[must_use]
    pub fn from_transport(url: String, error: TransportError) -> Self {
        let TransportError { kind, detail } = error;
        match kind {
            TransportErrorKind::ResponseTooLarge { limit } => {
                Self::ResponseTooLarge { url, limit, detail }
            }
            kind => Self::Transport { kind, url, detail },
        }
    }

    /// Whose fault the failure is.
    #[must_use]
    pub fn fault(&self) -> Fault {
        match self {
            Self::Config(_) | Self::NoBaseUrl | Self::Setup(_) => Fault::Local,
            Self::Transport { .. } => Fault::Network,
            Self::ResponseTooLarge { .. } => Fault::Peer,
            Self::Send(e) => e.fault(),
            Self::Discovery(e) => e.fault(),
        }
    }

    /// The JSON-RPC error code, when the agent answered with one.
    #[must_use]
    pub fn remote_code(&self) -> Option<i64> {
        match self {
            Self::Send(e) => e.remote_code(),
            _ => None,
        }
    }

    /// Whether the circuit breaker refused the call without any I/O.
    #[must_use]
    pub fn is_circuit_open(&self) -> bool {
        matches!(self, Self::Send(SendError::CircuitOpen(_)))
    }
}

impl From<SendError> for CallError {
    fn from(e: SendError) -> Self {
        Self::Send(e)
    }
}

impl From<DiscoveryError> for CallError {
    fn from(e: DiscoveryError) -> Self {
        match e {
            DiscoveryError::InvalidUrl { url, reason } => {
                Self::Config(ClientError::InvalidBaseUrl { url, reason })
            }
            other => Self::Discovery(other),
        }
    }
}

impl From<CircuitOpen> for CallError {
    fn from(e: CircuitOpen) -> Self {
        Self::Send(SendError::CircuitOpen(e))
    }
}

/// Counters an adapter's user can read to see what the caches did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClientStats {
    /// `asap.send` calls started (after the breaker let them through).
    pub sends: u64,
    /// HTTP attempts of those calls.
    pub send_attempts: u64,
    /// Calls the open breaker refused without I/O.
    pub circuit_rejections: u64,
    /// Manifest lookups answered from the cache.
    pub manifest_hits: u64,
    /// Manifest GETs handed to the adapter (unconditional or revalidating).
    pub manifest_fetches: u64,
    /// Of those, answered `304 Not Modified`.
    pub manifest_not_modified: u64,
    /// Health lookups answered from the cache.
    pub health_hits: u64,
    /// Health GETs handed to the adapter.
    pub health_fetches: u64,
    /// Registry lookups answered from the cache.
    pub registry_hits: u64,
    /// Registry GETs handed to the adapter.
    pub registry_fetches: u64,
}

#[derive(Debug, Clone)]
struct AgentEntry {
    core: ClientCore,
    breaker: Option<CircuitBreaker>,
}

/// Proof that the breaker let a send through, held by its [`SendExchange`]
/// until the exchange finishes or is abandoned.
#[derive(Debug)]
pub(crate) struct SendTicket {
    agent: BaseUrl,
    probe: bool,
}

impl SendTicket {
    /// The agent being called.
    pub(crate) fn agent(&self) -> &BaseUrl {
        &self.agent
    }
}

/// What one client remembers: per agent a [`ClientCore`] (the `req-<n>`
/// counter) and a [`CircuitBreaker`], plus the [`ManifestCache`],
/// [`HealthCache`] and [`RegistryCache`]. Every decision is the core's; an
/// adapter performs the requests it gets and sleeps until the deadlines it
/// is told. Share it as you like (`Mutex`); no call blocks.
///
/// Call protocol: make an exchange — [`begin_send`](Self::begin_send),
/// [`discover`](Self::discover), [`health_check`](Self::health_check),
/// [`registry`](Self::registry) — and drive it with the loop on
/// [`Exchange`](super::Exchange). The `*_lookup` / `handle_*_response` /
/// `*_failed` methods are the steps a [`FetchExchange`] takes, for drivers
/// that want them one by one.
///
/// ```
/// use std::time::{Duration, Instant};
/// use asap_proto::client::{ClientOptions, ClientState, Exchange, ExchangeOutput};
///
/// let mut state = ClientState::new(ClientOptions::default()).unwrap();
/// assert!(state.agent("http://agent.example.com").is_err()); // plain http off loopback
/// let now = Instant::now(); // the adapter's clock
/// let mut discover = state.discover("http://127.0.0.1:8000");
/// let ExchangeOutput::Transmit(req) = discover.poll_output(&mut state, now) else { unreachable!() };
/// assert_eq!(req.uri(), "http://127.0.0.1:8000/.well-known/asap/manifest.json");
/// let body = br#"{"id":"urn:asap:agent:a","name":"A","version":"1.0.0","description":"d",
///     "capabilities":{},"endpoints":{"asap":"http://127.0.0.1:8000/asap"}}"#.to_vec();
/// let resp = http::Response::builder().status(200).header("etag", "\"x\"")
///     .header("cache-control", "max-age=60").body(body).unwrap();
/// discover.handle_result(&mut state, Ok(resp), now);
/// let ExchangeOutput::Done(Ok(m)) = discover.poll_output(&mut state, now) else { unreachable!() };
/// assert_eq!(m.name, "A");
/// // Cached: the next exchange is done at once.
/// let mut again = state.discover("http://127.0.0.1:8000/");
/// assert!(matches!(again.poll_output(&mut state, now), ExchangeOutput::Done(Ok(_))));
/// // Stale: revalidated with the ETag; a 304 refreshes it.
/// let later = now + Duration::from_secs(60);
/// let mut revalidate = state.discover("http://127.0.0.1:8000");
/// let ExchangeOutput::Transmit(req) = revalidate.poll_output(&mut state, later) else { unreachable!() };
/// assert_eq!(req.headers()["if-none-match"], "\"x\"");
/// let not_modified = http::Response::builder().status(304).body(Vec::new()).unwrap();
/// revalidate.handle_result(&mut state, Ok(not_modified), later);
/// assert!(matches!(revalidate.poll_output(&mut state, later), ExchangeOutput::Done(Ok(_))));
/// assert_eq!(state.stats().manifest_not_modified, 1);
/// ```
#[derive(Debug, Clone)]
pub struct ClientState {
    options: ClientOptions,
    base: Option<BaseUrl>,
    agents: LruMap<AgentEntry>,
    manifests: ManifestCache,
    health: HealthCache,
    registries: RegistryCache,
    stats: ClientStats,
    keys_issued: u64,
}

/// What every adapter's client shares: access to its [`ClientState`]
/// (however the adapter shares it, e.g. behind a `Mutex`), and the
/// read-outs defined once on top of it. Bring it into scope to call them:
/// `use asap_tokio::client::ClientHandle as _;`.
pub trait ClientHandle {
    /// Runs `f` on the client's state (briefly: no I/O happens meanwhile).
    fn with_state<R>(&self, f: impl FnOnce(&mut ClientState) -> R) -> R;

    /// What the caches, retries and breakers did so far.
    #[must_use]
    fn stats(&self) -> ClientStats {
        self.with_state(|s| s.stats())
    }

    /// The circuit breaker state for the agent at `base_url` (`None` before any send).
    #[must_use]
    fn breaker_state(&self, base_url: &str) -> Option<CircuitState> {
        self.with_state(|s| s.breaker_state(base_url))
    }
}

/// Read access to a [`ClientState`]'s caches.
pub(crate) struct Caches<'a> {
    pub(crate) manifests: &'a ManifestCache,
    pub(crate) health: &'a HealthCache,
    pub(crate) registries: &'a RegistryCache,
}

impl Default for ClientState {
    fn default() -> Self {
        Self::with_base(ClientOptions::default(), None)
    }
}

impl ClientState {
    /// An empty state; fails when `options.base_url` is unusable or plain
    /// `http://` to a non-loopback host without opting in.
    pub fn new(options: ClientOptions) -> Result<Self, ClientError> {
        let base = options
            .base_url
            .as_deref()
            .map(|u| BaseUrl::parse(u, options.request.http_policy))
            .transpose()?;
        Ok(Self::with_base(options, base))
    }

    fn with_base(options: ClientOptions, base: Option<BaseUrl>) -> Self {
        Self {
            base,
            agents: LruMap::new(options.max_agents),
            manifests: ManifestCache::new(options.manifest_cache),
            health: HealthCache::new(options.health_cache),
            registries: RegistryCache::new(options.registry_cache),
            stats: ClientStats::default(),
            keys_issued: 0,
            options,
        }
    }

    /// The caches, for the exchanges' peeks.
    pub(crate) fn caches(&self) -> Caches<'_> {
        Caches {
            manifests: &self.manifests,
            health: &self.health,
            registries: &self.registries,
        }
    }

    /// The options.
    #[must_use]
    pub fn options(&self) -> &ClientOptions {
        &self.options
    }

    /// The agent `send` talks to (validated `options.base_url`).
    #[must_use]
    pub fn base_url(&self) -> Option<&BaseUrl> {
        self.base.as_ref()
    }

    /// What the caches and breakers did so far.
    #[must_use]
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Parses an agent base URL and applies the `http://` policy (spec 14).
    pub fn agent(&self, base_url: &str) -> Result<BaseUrl, ClientError> {
        BaseUrl::parse(base_url, self.options.request.http_policy)
    }

    /// Checks a registry (or any other absolute) URL against the `http://` policy.
    pub fn check_url(&self, url: &str) -> Result<(), ClientError> {
        let invalid = |reason: String| ClientError::InvalidBaseUrl {
            url: url.to_owned(),
            reason,
        };
        let uri: http::Uri = url
            .trim()
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(e.to_string()))?;
        let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
            return Err(invalid(
                "an absolute http:// or https:// URL is required".to_owned(),
            ));
        };
        // The policy lives in BaseUrl::parse alone; the registry's origin is judged like an agent's.
        match self.agent(&format!("{scheme}://{authority}")) {
            Err(ClientError::InsecureUrl { .. }) => Err(ClientError::InsecureUrl {
                url: url.to_owned(),
            }),
            Err(ClientError::InvalidBaseUrl { reason, .. }) => Err(invalid(reason)),
            Ok(_) => Ok(()),
        }
    }

    fn entry(&mut self, agent: &BaseUrl) -> Result<&mut AgentEntry, ClientError> {
        let key = agent.as_str();
        if self.agents.peek(key).is_none() {
            // Applies the http:// policy again: a BaseUrl may have been parsed elsewhere.
            let core = ClientCore::new(key, self.options.request.clone())?;
            self.agents.insert(
                key.to_owned(),
                AgentEntry {
                    core,
                    breaker: self.options.breaker.map(CircuitBreaker::new),
                },
            );
        }
        self.agents
            .get_mut(key)
            .ok_or_else(|| ClientError::InvalidBaseUrl {
                url: key.to_owned(),
                reason: "agent table has no room".to_owned(),
            })
    }

    /// Starts one `asap.send` of `envelope` to the agent at `base_url`
    /// (`None`: the options' base URL). `wall_clock` and `random` (OS
    /// randomness) make the idempotency key and seed the retry jitter; the
    /// key stays unique per client even if `random` is all zeros. A refused
    /// URL or an open circuit is the exchange's first (and only) output.
    pub fn begin_send(
        &mut self,
        base_url: Option<&str>,
        envelope: &Envelope,
        wall_clock: UnixTime,
        random: [u8; 24],
        now: Instant,
    ) -> SendExchange {
        let start = self.start_send(base_url, envelope, wall_clock, random, now);
        SendExchange::new(start, self.options.timeouts.request)
    }

    fn start_send(
        &mut self,
        base_url: Option<&str>,
        envelope: &Envelope,
        wall_clock: UnixTime,
        random: [u8; 24],
        now: Instant,
    ) -> Result<(SendCall, SendTicket), CallError> {
        let agent = match base_url {
            Some(url) => self.agent(url)?,
            None => self.base.clone().ok_or(CallError::NoBaseUrl)?,
        };
        let (mut key_bytes, mut seed_bytes) = ([0u8; 16], [0u8; 8]);
        key_bytes.copy_from_slice(&random[..16]);
        seed_bytes.copy_from_slice(&random[16..]);
        self.keys_issued = self.keys_issued.wrapping_add(1);
        let key = Ulid::new(
            wall_clock,
            u128::from_le_bytes(key_bytes) ^ u128::from(self.keys_issued),
        );
        let retry = self.options.retry;
        let entry = self.entry(&agent)?;
        let mut probe = false;
        if let Some(b) = entry.breaker.as_mut() {
            if let Err(e) = b.try_acquire(now) {
                self.stats.circuit_rejections += 1;
                return Err(e.into());
            }
            probe = b.state() == CircuitState::HalfOpen;
        }
        let prepared = entry.core.prepare_send(envelope, key);
        self.stats.sends += 1;
        Ok((
            SendCall::new(prepared, retry, u64::from_le_bytes(seed_bytes)),
            SendTicket { agent, probe },
        ))
    }

    /// Ends a call: tells the breaker what the outcome means and returns the
    /// result (a transport failure keeps the text the adapter reported).
    pub(crate) fn finish_send(
        &mut self,
        ticket: &SendTicket,
        outcome: SendOutcome,
        now: Instant,
    ) -> Result<Envelope, CallError> {
        self.stats.send_attempts += u64::from(outcome.attempts);
        let verdict = outcome.breaker_verdict();
        if let Some(b) = self
            .agents
            .get_mut(ticket.agent.as_str())
            .and_then(|e| e.breaker.as_mut())
        {
            match verdict {
                BreakerVerdict::Success => b.record_success(now),
                BreakerVerdict::Failure => b.record_failure(now),
                BreakerVerdict::None => {}
            }
        }
        outcome.result.map_err(|e| match e {
            SendError::Transport(t) => CallError::from_transport(ticket.agent.asap_url(), t),
            other => CallError::Send(other),
        })
    }

    /// The caller gave up on a call mid-way: returns a half-open probe so
    /// the breaker is not blocked forever.
    pub(crate) fn abandon_send(&mut self, ticket: &SendTicket) {
        if ticket.probe {
            if let Some(b) = self
                .agents
                .get_mut(ticket.agent.as_str())
                .and_then(|e| e.breaker.as_mut())
            {
                b.release_probe();
            }
        }
    }

    /// The agent's manifest (`GET {base}/.well-known/asap/manifest.json`):
    /// cached per `Cache-Control: max-age` and `ttl_seconds`, revalidated
    /// with `If-None-Match` once stale.
    #[must_use]
    pub fn discover(&self, base_url: &str) -> FetchExchange<Manifest> {
        FetchExchange::new(self, base_url)
    }

    /// The agent's health verdict (`GET {base}/.well-known/asap/health`; a
    /// 503 is an answer), cached for its manifest's `ttl_seconds`.
    #[must_use]
    pub fn health_check(&self, base_url: &str) -> FetchExchange<HealthVerdict> {
        FetchExchange::new(self, base_url)
    }

    /// The Lite Registry at `url`, cached 15 min.
    #[must_use]
    pub fn registry(&self, url: &str) -> FetchExchange<LiteRegistry> {
        FetchExchange::new(self, url)
    }

    /// The breaker state for the agent at `base_url`, if it has been called.
    #[must_use]
    pub fn breaker_state(&self, base_url: &str) -> Option<CircuitState> {
        let agent = self.agent(base_url).ok()?;
        self.agents
            .peek(agent.as_str())
            .and_then(|e| e.breaker.as_ref())
            .map(CircuitBreaker::state)
    }

    /// The agent's cached manifest, or the GET (with `If-None-Match`) to perform.
    pub fn manifest_lookup(
        &mut self,
        agent: &BaseUrl,
        now: Instant,
    ) -> Result<Lookup<Manifest>, DiscoveryError> {
        let l = self.manifests.lookup(agent.as_str(), now)?;
        match &l {
            Lookup::Fresh(_) => self.stats.manifest_hits += 1,
            Lookup::Transmit(_) => self.stats.manifest_fetches += 1,
        }
        Ok(l)
    }

    /// Feeds the manifest GET's response (200 / 304 / error); a 304 for an
    /// entry evicted meanwhile answers with the unconditional GET to perform next.
    pub fn handle_manifest_response(
        &mut self,
        agent: &BaseUrl,
        response: &http::Response<Vec<u8>>,
        now: Instant,
    ) -> Result<Lookup<Manifest>, DiscoveryError> {
        if response.status() == http::StatusCode::NOT_MODIFIED {
            self.stats.manifest_not_modified += 1;
        }
        let l = self
            .manifests
            .handle_response(agent.as_str(), response, now)?;
        if let Lookup::Transmit(_) = l {
            self.stats.manifest_fetches += 1;
        }
        Ok(l)
    }

    /// The manifest GET failed in the transport: forget the entry (as the reference does).
    pub fn manifest_failed(&mut self, agent: &BaseUrl) {
        self.manifests.invalidate(agent.as_str());
    }

    /// The agent's cached health verdict, or the GET to perform.
    pub fn health_lookup(
        &mut self,
        agent: &BaseUrl,
        now: Instant,
    ) -> Result<Lookup<HealthVerdict>, DiscoveryError> {
        let l = self.health.lookup(agent.as_str(), now)?;
        match &l {
            Lookup::Fresh(_) => self.stats.health_hits += 1,
            Lookup::Transmit(_) => self.stats.health_fetches += 1,
        }
        Ok(l)
    }

    /// Feeds the health GET's response: a 503 is [`HealthVerdict::Unhealthy`],
    /// not an error. The verdict is cached for the agent's manifest
    /// `ttl_seconds` when its manifest is cached, else 300 s.
    pub fn handle_health_response(
        &mut self,
        agent: &BaseUrl,
        response: &http::Response<Vec<u8>>,
        now: Instant,
    ) -> Result<Lookup<HealthVerdict>, DiscoveryError> {
        let ttl = self
            .manifests
            .peek(agent.as_str())
            .map_or(Duration::from_secs(DEFAULT_MANIFEST_TTL_SECONDS), |m| {
                manifest_ttl(&m)
            });
        self.health
            .handle_response_with_ttl(agent.as_str(), response, ttl, now)
    }

    /// The health GET failed in the transport: forget the verdict.
    pub fn health_failed(&mut self, agent: &BaseUrl) {
        self.health.invalidate(agent.as_str());
    }

    /// The cached registry at `url`, or the GET to perform (after the `http://` policy).
    pub fn registry_lookup(
        &mut self,
        url: &str,
        now: Instant,
    ) -> Result<Lookup<LiteRegistry>, CallError> {
        self.check_url(url)?;
        let l = self.registries.lookup(url, now)?;
        match &l {
            Lookup::Fresh(_) => self.stats.registry_hits += 1,
            Lookup::Transmit(_) => self.stats.registry_fetches += 1,
        }
        Ok(l)
    }

    /// Feeds the registry GET's response (a 304 for an entry evicted
    /// meanwhile answers with the unconditional GET to perform next).
    pub fn handle_registry_response(
        &mut self,
        url: &str,
        response: &http::Response<Vec<u8>>,
        now: Instant,
    ) -> Result<Lookup<LiteRegistry>, DiscoveryError> {
        let l = self.registries.handle_response(url, response, now)?;
        if let Lookup::Transmit(_) = l {
            self.stats.registry_fetches += 1;
        }
        Ok(l)
    }

    /// The registry GET failed in the transport: forget the entry.
    pub fn registry_failed(&mut self, url: &str) {
        self.registries.invalidate(url);
    }

    /// Drops every cached manifest, health verdict and registry (breakers stay).
    pub fn clear_caches(&mut self) {
        self.manifests.clear();
        self.health.clear();
        self.registries.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{Exchange, ExchangeOutput, HttpPolicy};
    use crate::model::{AgentUrn, Payload, TaskRequest, Timestamp};
    use crate::reliability::{Backoff, CircuitBreakerConfig, RetryPolicy};
    use proptest::prelude::*;
    use std::time::Duration;

    fn base() -> Instant {
        crate::test_clock::base()
    }

    fn env() -> Envelope {
        Envelope::new(
            "01KDXZ0000ENVREQ0000000001".into(),
            Timestamp::from_unix(UnixTime::from_secs(1_767_225_600)),
            AgentUrn::new("urn:asap:agent:client").unwrap(),
            AgentUrn::new("urn:asap:agent:echo-server").unwrap(),
            Payload::TaskRequest(TaskRequest::new("c", "echo", Default::default())),
        )
    }

    fn status(s: u16) -> http::Response<Vec<u8>> {
        http::Response::builder()
            .status(s)
            .body(Vec::new())
            .unwrap()
    }

    type Answer = Result<http::Response<Vec<u8>>, TransportError>;
    /// An exchange's result, the requests it made, and the time it ended.
    type Driven<V> = (Result<V, CallError>, Vec<http::Request<Vec<u8>>>, Instant);

    /// Drives `e` as an adapter does, answering each request with `answer`
    /// and jumping the clock to each deadline; returns the result, the
    /// requests made and the final time.
    fn drive<E: Exchange>(
        mut e: E,
        st: &mut ClientState,
        mut answer: impl FnMut(&http::Request<Vec<u8>>) -> Answer,
        mut now: Instant,
    ) -> Driven<E::Value> {
        let mut sent = Vec::new();
        for _ in 0..32 {
            match e.poll_output(st, now) {
                ExchangeOutput::Transmit(req) => {
                    let a = answer(&req);
                    sent.push(req);
                    e.handle_result(st, a, now);
                }
                ExchangeOutput::Timeout(t) => {
                    assert!(t > now, "a deadline not after now");
                    now = t;
                }
                ExchangeOutput::Done(r) => {
                    // Done is stable.
                    assert!(matches!(e.poll_output(st, now), ExchangeOutput::Done(_)));
                    return (r, sent, now);
                }
            }
        }
        panic!("the exchange never finished")
    }

    fn send(st: &mut ClientState, url: &str, s: u16, now: Instant) -> Result<Envelope, CallError> {
        let e = st.begin_send(Some(url), &env(), UnixTime::from_secs(1), [7; 24], now);
        drive(e, st, |_| Ok(status(s)), now).0
    }

    const MANIFEST: &[u8] = br#"{"id":"urn:asap:agent:a","name":"A","version":"1.0.0","description":"d","capabilities":{},"endpoints":{"asap":"x"}}"#;

    fn manifest_ok(etag: &str) -> http::Response<Vec<u8>> {
        http::Response::builder()
            .status(200)
            .header("etag", etag)
            .header("cache-control", "max-age=10")
            .body(MANIFEST.to_vec())
            .unwrap()
    }

    #[test]
    fn url_policy() {
        let s = ClientState::default();
        assert!(s.agent("http://localhost:1").is_ok());
        assert!(matches!(
            s.agent("http://10.0.0.1"),
            Err(ClientError::InsecureUrl { .. })
        ));
        assert!(s.check_url("http://127.0.0.1:9/registry.json?x=1").is_ok());
        assert!(s.check_url("https://reg.example/registry.json").is_ok());
        assert!(matches!(
            s.check_url("http://reg.example/registry.json"),
            Err(ClientError::InsecureUrl { .. })
        ));
        assert!(matches!(
            s.check_url("/relative"),
            Err(ClientError::InvalidBaseUrl { .. })
        ));
        let open = ClientState::new(ClientOptions::default().allow_insecure_http(true)).unwrap();
        assert_eq!(
            open.options().request.http_policy,
            HttpPolicy::AllowInsecure
        );
        assert!(open.agent("http://10.0.0.1").is_ok());
        assert!(open.check_url("http://reg.example/r.json").is_ok());
    }

    #[test]
    fn plain_http_off_loopback_is_refused_with_the_insecure_url_error_before_any_io() {
        let refused = |url: &str| {
            CallError::Config(ClientError::InsecureUrl {
                url: url.to_owned(),
            })
        };
        let insecure = "http://agent.example.com";
        assert_eq!(
            ClientState::new(ClientOptions::default().base_url(insecure)).unwrap_err(),
            ClientError::InsecureUrl {
                url: insecure.to_owned()
            }
        );
        let mut st = ClientState::default();
        let now = base();
        let no_io =
            |_: &http::Request<Vec<u8>>| -> Answer { panic!("no request for a refused URL") };
        let (r, _, _) = drive(st.discover(insecure), &mut st, no_io, now);
        assert_eq!(r.unwrap_err(), refused(insecure));
        let (r, _, _) = drive(st.health_check(insecure), &mut st, no_io, now);
        assert_eq!(r.unwrap_err(), refused(insecure));
        let reg = "http://registry.example/registry.json";
        let (r, _, _) = drive(st.registry(reg), &mut st, no_io, now);
        assert_eq!(r.unwrap_err(), refused(reg));
        let e = st.begin_send(Some(insecure), &env(), UnixTime::from_secs(1), [0; 24], now);
        let (r, _, _) = drive(e, &mut st, no_io, now);
        let e = r.unwrap_err();
        assert_eq!(e, refused(insecure));
        assert_eq!(e.fault(), Fault::Local);
        let e = st.begin_send(None, &env(), UnixTime::from_secs(1), [0; 24], now);
        assert_eq!(drive(e, &mut st, no_io, now).0, Err(CallError::NoBaseUrl));
        assert_eq!(st.stats(), ClientStats::default());
    }

    #[test]
    fn breaker_opens_per_agent_and_counts() {
        let mut s = ClientState::new(
            ClientOptions::default()
                .retry_policy(RetryPolicy::no_retries())
                .circuit_breaker(Some(CircuitBreakerConfig {
                    failure_threshold: 2,
                    ..CircuitBreakerConfig::default()
                })),
        )
        .unwrap();
        let (a, b) = ("http://127.0.0.1:1", "http://127.0.0.1:2");
        let now = base();
        assert!(matches!(
            send(&mut s, a, 503, now),
            Err(CallError::Send(SendError::ServerError { .. }))
        ));
        assert_eq!(s.breaker_state(a), Some(CircuitState::Closed));
        let _ = send(&mut s, a, 503, now);
        assert_eq!(s.breaker_state(a), Some(CircuitState::Open));
        let e = send(&mut s, a, 200, now).unwrap_err();
        assert!(e.is_circuit_open());
        assert_eq!(s.breaker_state(b), None);
        assert!(send(&mut s, b, 404, now).is_err());
        assert_eq!(s.breaker_state(b), Some(CircuitState::Closed));
        let st = s.stats();
        assert_eq!(
            (st.sends, st.send_attempts, st.circuit_rejections),
            (3, 3, 1)
        );
        // Half-open: the one probe is taken by an exchange and returned when it is abandoned.
        let later = now + Duration::from_secs(60);
        let mut probe = s.begin_send(Some(a), &env(), UnixTime::from_secs(1), [1; 24], later);
        assert!(matches!(
            probe.poll_output(&mut s, later),
            ExchangeOutput::Transmit(_)
        ));
        assert!(send(&mut s, a, 200, later).unwrap_err().is_circuit_open());
        probe.abandon(&mut s);
        probe.abandon(&mut s); // twice: harmless
        let ExchangeOutput::Done(Err(cut)) = probe.poll_output(&mut s, later) else {
            panic!("an abandoned exchange is over")
        };
        assert!(cut.to_string().contains("abandoned"), "{cut}");
        assert!(send(&mut s, a, 200, later).is_err_and(|e| !e.is_circuit_open()));
    }

    #[test]
    fn transport_failures_carry_detail_and_retry() {
        let mut s = ClientState::new(
            ClientOptions::default()
                .retry_policy(RetryPolicy {
                    backoff: Backoff::default().without_jitter(),
                    ..RetryPolicy::default()
                })
                .circuit_breaker(None),
        )
        .unwrap();
        let now = base();
        let e = s.begin_send(
            Some("http://127.0.0.1:1"),
            &env(),
            UnixTime::from_secs(1),
            [0; 24],
            now,
        );
        assert_eq!(e.request_timeout(), crate::client::DEFAULT_REQUEST_TIMEOUT);
        let refused = |req: &http::Request<Vec<u8>>| -> Answer {
            assert_eq!(req.uri(), "http://127.0.0.1:1/asap");
            Err(TransportError::new(TransportErrorKind::Connect, "refused"))
        };
        let (r, sent, t) = drive(e, &mut s, refused, now);
        assert_eq!(t - now, Duration::from_secs(3));
        assert_eq!(sent.len(), 3);
        let e = r.unwrap_err();
        assert_eq!(e.fault(), Fault::Network);
        assert_eq!(
            e.to_string(),
            "transport failure talking to http://127.0.0.1:1/asap (connection failed): refused"
        );
        assert_eq!(s.stats().send_attempts, 3);
        assert_eq!(s.breaker_state("http://127.0.0.1:1"), None);
        // The same for a GET: the text reaches the user and the entry is forgotten.
        let (r, _, _) = drive(s.discover("http://127.0.0.1:1"), &mut s, refused_get, now);
        assert_eq!(
            r.unwrap_err(),
            CallError::Transport {
                kind: TransportErrorKind::Timeout,
                url: "http://127.0.0.1:1/.well-known/asap/manifest.json".into(),
                detail: "read timed out".into(),
            }
        );
    }

    fn refused_get(_: &http::Request<Vec<u8>>) -> Answer {
        Err(TransportError::new(
            TransportErrorKind::Timeout,
            "read timed out",
        ))
    }

    #[test]
    fn oversized_response_keeps_kind_and_text_in_the_users_error() {
        let mut s = ClientState::default();
        let now = base();
        let limit = 1024;
        let too_large = |_: &http::Request<Vec<u8>>| -> Answer {
            Err(TransportError::new(
                TransportErrorKind::ResponseTooLarge { limit },
                "body reached 4096 bytes",
            ))
        };
        let e = s.begin_send(
            Some("http://127.0.0.1:1"),
            &env(),
            UnixTime::from_secs(1),
            [0; 24],
            now,
        );
        let (r, sent, _) = drive(e, &mut s, too_large, now);
        assert_eq!(sent.len(), 1, "an oversized answer is not retried");
        let e = r.unwrap_err();
        assert_eq!(
            e,
            CallError::ResponseTooLarge {
                url: "http://127.0.0.1:1/asap".into(),
                limit,
                detail: "body reached 4096 bytes".into(),
            }
        );
        assert_eq!(e.fault(), Fault::Peer);
        assert_eq!(
            e.to_string(),
            "response from http://127.0.0.1:1/asap exceeds 1024 bytes (body reached 4096 bytes)"
        );
        let (r, _, _) = drive(
            s.registry("http://127.0.0.1:1/r.json"),
            &mut s,
            too_large,
            now,
        );
        assert!(matches!(
            r.unwrap_err(),
            CallError::ResponseTooLarge { url, limit: 1024, detail } if url == "http://127.0.0.1:1/r.json" && detail == "body reached 4096 bytes"
        ));
    }

    #[test]
    fn a_304_for_an_evicted_manifest_is_answered_by_a_new_fetch() {
        let mut options = ClientOptions::default();
        options.manifest_cache.capacity = 1;
        let mut s = ClientState::new(options).unwrap();
        let (a, b) = ("http://127.0.0.1:1", "http://127.0.0.1:2");
        let now = base();
        let (r, _, _) = drive(s.discover(a), &mut s, |_| Ok(manifest_ok("\"v1\"")), now);
        assert_eq!(r.unwrap().name, "A");
        // Stale: the revalidation goes out with the ETag...
        let later = now + Duration::from_secs(10);
        let mut revalidate = s.discover(a);
        let ExchangeOutput::Transmit(req) = revalidate.poll_output(&mut s, later) else {
            panic!("stale")
        };
        assert_eq!(req.headers()["if-none-match"], "\"v1\"");
        // ...while another agent's manifest takes the only slot.
        drive(s.discover(b), &mut s, |_| Ok(manifest_ok("\"b\"")), later)
            .0
            .unwrap();
        revalidate.handle_result(&mut s, Ok(status(304)), later);
        let ExchangeOutput::Transmit(again) = revalidate.poll_output(&mut s, later) else {
            panic!("a 304 for an evicted entry is a new fetch, not an error")
        };
        assert_eq!(
            again.uri(),
            "http://127.0.0.1:1/.well-known/asap/manifest.json"
        );
        assert!(again.headers().get("if-none-match").is_none());
        revalidate.handle_result(&mut s, Ok(manifest_ok("\"v2\"")), later);
        let ExchangeOutput::Done(Ok(m)) = revalidate.poll_output(&mut s, later) else {
            panic!("the refetch's 200 is the answer")
        };
        assert_eq!(m.name, "A");
        let st = s.stats();
        assert_eq!((st.manifest_fetches, st.manifest_not_modified), (4, 1));
        // A server that answers the refetch with 304 again gets an error, not a loop.
        let later = later + Duration::from_secs(10);
        let mut revalidate = s.discover(a);
        let ExchangeOutput::Transmit(_) = revalidate.poll_output(&mut s, later) else {
            panic!("stale again")
        };
        s.manifest_failed(&s.agent(a).unwrap());
        revalidate.handle_result(&mut s, Ok(status(304)), later);
        let (r, sent, _) = drive(revalidate, &mut s, |_| Ok(status(304)), later);
        assert_eq!(sent.len(), 1, "one refetch");
        let e = r.unwrap_err();
        assert_eq!(
            e,
            CallError::Discovery(DiscoveryError::NotModifiedWithoutCache)
        );
        assert_eq!(e.fault(), Fault::Peer);
    }

    #[test]
    fn idempotency_keys_stay_unique_without_randomness() {
        let mut s = ClientState::new(ClientOptions::default().circuit_breaker(None)).unwrap();
        let now = base();
        let mut keys = std::collections::HashSet::new();
        for _ in 0..50 {
            let e = s.begin_send(
                Some("http://127.0.0.1:1"),
                &env(),
                UnixTime::from_secs(1),
                [0; 24],
                now,
            );
            let (_, sent, _) = drive(e, &mut s, |_| Ok(status(404)), now);
            let key = sent[0].headers()["x-idempotency-key"]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(keys.insert(key), "a key repeated");
        }
    }

    #[derive(Debug, Clone)]
    enum Reply {
        Ok,
        NotModified,
        ServerError,
        Lost,
        EvictFirst,
    }

    fn reply() -> impl Strategy<Value = Reply> {
        prop_oneof![
            Just(Reply::Ok),
            Just(Reply::NotModified),
            Just(Reply::ServerError),
            Just(Reply::Lost),
            Just(Reply::EvictFirst),
        ]
    }

    proptest! {
        /// Whatever the server answers and whatever is evicted meanwhile, a
        /// discovery exchange ends after at most two requests (the second
        /// unconditional), finishes with the manifest exactly when a 200 or
        /// a 304 for a stored entry came, and its stats add up.
        #[test]
        fn discover_exchanges_end_and_count(
            rounds in proptest::collection::vec((0usize..3, proptest::collection::vec(reply(), 2), 0u64..20), 1..40),
        ) {
            let agents = ["http://127.0.0.1:1", "http://127.0.0.1:2", "http://127.0.0.1:3"];
            let mut options = ClientOptions::default();
            options.manifest_cache.capacity = 2;
            let mut s = ClientState::new(options).unwrap();
            let mut now = base();
            for (agent, replies, step) in rounds {
                now += Duration::from_secs(step);
                let before = s.stats();
                let mut replies = replies.into_iter();
                let mut e = s.discover(agents[agent]);
                let mut requests = 0;
                let done = loop {
                    match e.poll_output(&mut s, now) {
                        ExchangeOutput::Transmit(req) => {
                            requests += 1;
                            prop_assert!(requests <= 2);
                            if requests == 2 {
                                prop_assert!(req.headers().get("if-none-match").is_none());
                            }
                            let answer = match replies.next().unwrap_or(Reply::Ok) {
                                Reply::Ok => Ok(manifest_ok("\"e\"")),
                                Reply::NotModified => Ok(status(304)),
                                Reply::ServerError => Ok(status(500)),
                                Reply::Lost => Err(TransportError::new(TransportErrorKind::Other, "reset")),
                                Reply::EvictFirst => {
                                    s.clear_caches();
                                    Ok(status(304))
                                }
                            };
                            e.handle_result(&mut s, answer, now);
                        }
                        ExchangeOutput::Timeout(_) => prop_assert!(false, "discovery never waits"),
                        ExchangeOutput::Done(r) => break r,
                    }
                };
                let after = s.stats();
                let fetched = after.manifest_fetches - before.manifest_fetches;
                let hits = after.manifest_hits - before.manifest_hits;
                prop_assert_eq!(fetched, requests);
                prop_assert_eq!(hits + u64::from(requests > 0), 1);
                if done.is_ok() {
                    prop_assert!(s.manifest_lookup(&s.agent(agents[agent]).unwrap(), now).unwrap().fresh().is_some());
                }
            }
        }
    }

    #[test]
    fn health_ttl_follows_cached_manifest() {
        let mut s = ClientState::default();
        let a = s.agent("http://127.0.0.1:1").unwrap();
        let now = base();
        let body = br#"{"status":"healthy","agent_id":"urn:asap:agent:a","version":"1","asap_version":"0.1","uptime_seconds":1.0,"load":null}"#;
        let ok = http::Response::builder()
            .status(200)
            .body(body.to_vec())
            .unwrap();
        assert!(s.health_lookup(&a, now).unwrap().fresh().is_none());
        assert!(s
            .handle_health_response(&a, &ok, now)
            .unwrap()
            .fresh()
            .unwrap()
            .is_healthy());
        let just_before = now + Duration::from_secs(299);
        assert!(s.health_lookup(&a, just_before).unwrap().fresh().is_some());
        assert!(s
            .health_lookup(&a, now + Duration::from_secs(300))
            .unwrap()
            .fresh()
            .is_none());
        // With a manifest (ttl 10 s) cached, the verdict lives 10 s.
        let m = br#"{"id":"urn:asap:agent:a","name":"A","version":"1.0.0","description":"d","capabilities":{},"endpoints":{"asap":"x"},"ttl_seconds":10}"#;
        let mr = http::Response::builder()
            .status(200)
            .body(m.to_vec())
            .unwrap();
        let _ = s.manifest_lookup(&a, now).unwrap();
        s.handle_manifest_response(&a, &mr, now).unwrap();
        let v = s
            .handle_health_response(&a, &status(503), now)
            .unwrap()
            .fresh()
            .unwrap();
        assert!(!v.is_healthy());
        assert!(s
            .health_lookup(&a, now + Duration::from_secs(9))
            .unwrap()
            .fresh()
            .is_some());
        assert!(s
            .health_lookup(&a, now + Duration::from_secs(10))
            .unwrap()
            .fresh()
            .is_none());
        s.health_failed(&a);
        s.manifest_failed(&a);
        assert!(s.manifest_lookup(&a, now).unwrap().fresh().is_none());
        let st = s.stats();
        assert_eq!(
            (st.health_hits, st.health_fetches, st.manifest_fetches),
            (2, 3, 2)
        );
    }

    #[test]
    fn registry_policy_and_cache() {
        let mut s = ClientState::default();
        assert!(matches!(
            s.registry_lookup("http://reg.example/r.json", base()),
            Err(CallError::Config(ClientError::InsecureUrl { .. }))
        ));
        let url = "http://127.0.0.1:9/r.json";
        let now = base();
        assert!(s.registry_lookup(url, now).unwrap().fresh().is_none());
        let body = br#"{"version":"1.0","updated_at":"2026-01-01T00:00:00Z","agents":[]}"#;
        let ok = http::Response::builder()
            .status(200)
            .body(body.to_vec())
            .unwrap();
        s.handle_registry_response(url, &ok, now).unwrap();
        assert!(s.registry_lookup(url, now).unwrap().fresh().is_some());
        s.registry_failed(url);
        assert!(s.registry_lookup(url, now).unwrap().fresh().is_none());
        s.clear_caches();
        let e = s
            .handle_registry_response(url, &status(404), now)
            .unwrap_err();
        assert_eq!(CallError::from(e).fault(), Fault::Peer);
    }
}
