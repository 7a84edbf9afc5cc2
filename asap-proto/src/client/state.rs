//! Everything one HTTP client remembers between calls, in one sans-I/O value,
//! so that every adapter (`asap-tokio`, `asap-blocking`, yours) drives the
//! same machines the same way.

use std::time::{Duration, Instant};

use super::request::{BaseUrl, ClientConfig, ClientCore};
use super::response::SendError;
use super::send::{BreakerVerdict, SendCall, SendOutcome};
use super::{ClientError, Fault, TransportError, TransportErrorKind};
use crate::discovery::lru::LruMap;
use crate::discovery::{
    manifest_ttl, DiscoveryError, HealthCache, HealthCacheConfig, HealthVerdict, LiteRegistry,
    Lookup, ManifestCache, ManifestCacheConfig, RegistryCache, RegistryCacheConfig,
};
use crate::model::{Envelope, Manifest, Ulid, DEFAULT_MANIFEST_TTL_SECONDS};
use crate::reliability::{
    CircuitBreaker, CircuitBreakerConfig, CircuitOpen, CircuitState, RetryPolicy,
};

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

/// Configuration of a [`ClientState`]; `Default` follows the reference
/// client except where noted.
#[derive(Debug, Clone, PartialEq)]
pub struct ClientStateConfig {
    /// Request building and the `http://` policy.
    pub client: ClientConfig,
    /// Retries of `asap.send` (reference: 3 attempts, 1-2-4 s, 10 % jitter).
    pub retry: RetryPolicy,
    /// One breaker per agent base URL; `None` disables it. On by default with
    /// the reference's thresholds (5 failures, 60 s); the reference itself
    /// ships it disabled.
    pub breaker: Option<CircuitBreakerConfig>,
    /// Manifest cache (max-age / `ttl_seconds` / ETag).
    pub manifest_cache: ManifestCacheConfig,
    /// Health verdict cache.
    pub health_cache: HealthCacheConfig,
    /// Lite Registry cache (15 min).
    pub registry_cache: RegistryCacheConfig,
    /// How many agents' request counters and breakers are kept (LRU).
    pub max_agents: usize,
}

impl Default for ClientStateConfig {
    fn default() -> Self {
        Self {
            client: ClientConfig::default(),
            retry: RetryPolicy::default(),
            breaker: Some(CircuitBreakerConfig::default()),
            manifest_cache: ManifestCacheConfig::default(),
            health_cache: HealthCacheConfig::default(),
            registry_cache: RegistryCacheConfig::default(),
            max_agents: 1000,
        }
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

/// Proof that [`ClientState::begin_send`] let a call through; hand it back
/// to [`finish_send`](ClientState::finish_send) or
/// [`abandon_send`](ClientState::abandon_send).
#[derive(Debug)]
#[must_use = "finish or abandon the send, or a half-open breaker stays blocked"]
pub struct SendTicket {
    agent: BaseUrl,
    probe: bool,
}

impl SendTicket {
    /// The agent being called.
    #[must_use]
    pub fn agent(&self) -> &BaseUrl {
        &self.agent
    }
}

/// What one client remembers: per agent a [`ClientCore`] (the `req-<n>`
/// counter) and a [`CircuitBreaker`], plus the [`ManifestCache`],
/// [`HealthCache`] and [`RegistryCache`]. Every decision is the core's; an
/// adapter performs the requests it gets and sleeps until the deadlines it
/// is told. Share it as you like (`Mutex`); no call blocks.
///
/// Call protocol for `send`:
///
/// ```text
/// let agent = state.agent(base_url)?;                                  // http:// policy
/// let (mut call, ticket) = state.begin_send(&agent, &env, ulid, seed, now)?;  // breaker
/// /* drive `call` (see SendCall): Transmit → HTTP, Timeout → sleep, Done → outcome */
/// let result = state.finish_send(ticket, outcome, now);              // breaker verdict
/// // dropped mid-call instead (future cancelled): state.abandon_send(ticket)
/// ```
///
/// and for each discovery resource (manifest / health / registry):
///
/// ```text
/// let mut step = state.manifest_lookup(&agent, now)?;
/// let manifest = loop {
///     match step {
///         Lookup::Fresh(m) => break m,
///         Lookup::Transmit(req) => match http(req) {
///             Ok(resp) => step = state.handle_manifest_response(&agent, &resp, now)?,
///             Err(e) => { state.manifest_failed(&agent); return Err(transport(e)) }
///         },
///     }
/// };
/// ```
///
/// ```
/// use std::time::{Duration, Instant};
/// use asap_proto::client::{ClientState, ClientStateConfig};
/// use asap_proto::discovery::Lookup;
///
/// let mut state = ClientState::new(ClientStateConfig::default());
/// let agent = state.agent("http://127.0.0.1:8000").unwrap();
/// assert!(state.agent("http://agent.example.com").is_err()); // plain http off loopback
/// let now = Instant::now(); // the adapter's clock
/// let Lookup::Transmit(req) = state.manifest_lookup(&agent, now).unwrap() else { unreachable!() };
/// assert_eq!(req.uri(), "http://127.0.0.1:8000/.well-known/asap/manifest.json");
/// let body = br#"{"id":"urn:asap:agent:a","name":"A","version":"1.0.0","description":"d",
///     "capabilities":{},"endpoints":{"asap":"http://127.0.0.1:8000/asap"}}"#.to_vec();
/// let resp = http::Response::builder().status(200).header("etag", "\"x\"")
///     .header("cache-control", "max-age=60").body(body).unwrap();
/// let m = state.handle_manifest_response(&agent, &resp, now).unwrap().fresh().unwrap();
/// assert_eq!(m.name, "A");
/// assert!(matches!(state.manifest_lookup(&agent, now).unwrap(), Lookup::Fresh(_)));
/// let later = now + Duration::from_secs(60);
/// let Lookup::Transmit(req) = state.manifest_lookup(&agent, later).unwrap() else { unreachable!() };
/// assert_eq!(req.headers()["if-none-match"], "\"x\"");           // revalidate
/// let not_modified = http::Response::builder().status(304).body(Vec::new()).unwrap();
/// state.handle_manifest_response(&agent, &not_modified, later).unwrap();
/// assert_eq!(state.stats().manifest_not_modified, 1);
/// ```
#[derive(Debug, Clone)]
pub struct ClientState {
    config: ClientStateConfig,
    agents: LruMap<AgentEntry>,
    manifests: ManifestCache,
    health: HealthCache,
    registries: RegistryCache,
    stats: ClientStats,
}

impl Default for ClientState {
    fn default() -> Self {
        Self::new(ClientStateConfig::default())
    }
}

impl ClientState {
    /// An empty state.
    #[must_use]
    pub fn new(config: ClientStateConfig) -> Self {
        Self {
            agents: LruMap::new(config.max_agents),
            manifests: ManifestCache::new(config.manifest_cache),
            health: HealthCache::new(config.health_cache),
            registries: RegistryCache::new(config.registry_cache),
            stats: ClientStats::default(),
            config,
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &ClientStateConfig {
        &self.config
    }

    /// What the caches and breakers did so far.
    #[must_use]
    pub fn stats(&self) -> ClientStats {
        self.stats
    }

    /// Parses an agent base URL and applies the `http://` policy (spec 14).
    pub fn agent(&self, base_url: &str) -> Result<BaseUrl, ClientError> {
        BaseUrl::parse(base_url, self.config.client.http_policy)
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
        match BaseUrl::parse(
            &format!("{scheme}://{authority}"),
            self.config.client.http_policy,
        ) {
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
            let core = ClientCore::new(key, self.config.client.clone())?;
            self.agents.insert(
                key.to_owned(),
                AgentEntry {
                    core,
                    breaker: self.config.breaker.map(CircuitBreaker::new),
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

    /// Starts one `asap.send` to `agent`: asks the agent's breaker, then
    /// builds the request (next `req-<n>`, `idempotency_key` from the
    /// adapter's clock and randomness) and the retrying [`SendCall`]
    /// (`jitter_seed` from OS randomness).
    pub fn begin_send(
        &mut self,
        agent: &BaseUrl,
        envelope: &Envelope,
        idempotency_key: Ulid,
        jitter_seed: u64,
        now: Instant,
    ) -> Result<(SendCall, SendTicket), CallError> {
        let retry = self.config.retry;
        let entry = self.entry(agent)?;
        let mut probe = false;
        if let Some(b) = entry.breaker.as_mut() {
            if let Err(e) = b.try_acquire(now) {
                self.stats.circuit_rejections += 1;
                return Err(e.into());
            }
            probe = b.state() == CircuitState::HalfOpen;
        }
        let prepared = entry.core.prepare_send(envelope, idempotency_key);
        self.stats.sends += 1;
        Ok((
            SendCall::new(prepared, retry, jitter_seed),
            SendTicket {
                agent: agent.clone(),
                probe,
            },
        ))
    }

    /// Ends a call: tells the breaker what the outcome means and returns the
    /// result (a transport failure keeps the text the adapter reported).
    pub fn finish_send(
        &mut self,
        ticket: SendTicket,
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

    /// The caller gave up on a call mid-way (e.g. its future was dropped):
    /// returns a half-open probe so the breaker is not blocked forever.
    pub fn abandon_send(&mut self, ticket: SendTicket) {
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

    /// The breaker state for `agent`, if it has been called.
    #[must_use]
    pub fn breaker_state(&self, agent: &BaseUrl) -> Option<CircuitState> {
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
    use crate::client::HttpPolicy;
    use crate::model::{AgentUrn, Payload, TaskRequest, Timestamp, UnixTime};
    use crate::reliability::Backoff;
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

    /// Runs one call against a fixed status; returns the result.
    fn run(
        state: &mut ClientState,
        agent: &BaseUrl,
        s: u16,
        now: Instant,
    ) -> Result<Envelope, CallError> {
        let (mut call, ticket) = state.begin_send(agent, &env(), Ulid::from_u128(1), 0, now)?;
        let mut t = now;
        let outcome = loop {
            match call.poll_output(t) {
                Some(super::super::SendOutput::Transmit(_)) => call.handle_response(status(s), t),
                Some(super::super::SendOutput::Timeout(d)) => {
                    t = d;
                    call.handle_timeout(t);
                }
                Some(super::super::SendOutput::Done(o)) => break o,
                None => unreachable!(),
            }
        };
        state.finish_send(ticket, outcome, t)
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
        let open = ClientState::new(ClientStateConfig {
            client: ClientConfig {
                http_policy: HttpPolicy::AllowInsecure,
                ..ClientConfig::default()
            },
            ..ClientStateConfig::default()
        });
        assert!(open.agent("http://10.0.0.1").is_ok());
        assert!(open.check_url("http://reg.example/r.json").is_ok());
    }

    #[test]
    fn breaker_opens_per_agent_and_counts() {
        let mut s = ClientState::new(ClientStateConfig {
            retry: RetryPolicy::no_retries(),
            breaker: Some(CircuitBreakerConfig {
                failure_threshold: 2,
                ..CircuitBreakerConfig::default()
            }),
            ..ClientStateConfig::default()
        });
        let a = s.agent("http://127.0.0.1:1").unwrap();
        let b = s.agent("http://127.0.0.1:2").unwrap();
        let now = base();
        assert!(matches!(
            run(&mut s, &a, 503, now),
            Err(CallError::Send(SendError::ServerError { .. }))
        ));
        assert_eq!(s.breaker_state(&a), Some(CircuitState::Closed));
        let _ = run(&mut s, &a, 503, now);
        assert_eq!(s.breaker_state(&a), Some(CircuitState::Open));
        let e = run(&mut s, &a, 200, now).unwrap_err();
        assert!(e.is_circuit_open());
        assert_eq!(s.breaker_state(&b), None);
        assert!(run(&mut s, &b, 404, now).is_err());
        assert_eq!(s.breaker_state(&b), Some(CircuitState::Closed));
        let st = s.stats();
        assert_eq!(
            (st.sends, st.send_attempts, st.circuit_rejections),
            (3, 3, 1)
        );
        // Half-open: the one probe is returned when abandoned.
        let later = now + Duration::from_secs(60);
        let (_call, ticket) = s
            .begin_send(&a, &env(), Ulid::from_u128(2), 0, later)
            .unwrap();
        assert!(s
            .begin_send(&a, &env(), Ulid::from_u128(3), 0, later)
            .is_err());
        s.abandon_send(ticket);
        let (_call, ticket) = s
            .begin_send(&a, &env(), Ulid::from_u128(4), 0, later)
            .unwrap();
        s.abandon_send(ticket);
    }

    #[test]
    fn transport_failures_carry_detail_and_retry() {
        let mut s = ClientState::new(ClientStateConfig {
            retry: RetryPolicy {
                backoff: Backoff::default().without_jitter(),
                ..RetryPolicy::default()
            },
            breaker: None,
            ..ClientStateConfig::default()
        });
        let a = s.agent("http://127.0.0.1:1").unwrap();
        let now = base();
        let (mut call, ticket) = s
            .begin_send(&a, &env(), Ulid::from_u128(1), 0, now)
            .unwrap();
        let mut t = now;
        let outcome = loop {
            match call.poll_output(t) {
                Some(super::super::SendOutput::Transmit(req)) => {
                    assert_eq!(req.uri(), "http://127.0.0.1:1/asap");
                    call.handle_transport_error(
                        TransportError::new(TransportErrorKind::Connect, "refused"),
                        t,
                    );
                }
                Some(super::super::SendOutput::Timeout(d)) => {
                    t = d;
                    call.handle_timeout(t);
                }
                Some(super::super::SendOutput::Done(o)) => break o,
                None => unreachable!(),
            }
        };
        assert_eq!(t - now, Duration::from_secs(3));
        let e = s.finish_send(ticket, outcome, t).unwrap_err();
        assert_eq!(e.fault(), Fault::Network);
        assert_eq!(
            e.to_string(),
            "transport failure talking to http://127.0.0.1:1/asap (connection failed): refused"
        );
        assert_eq!(s.stats().send_attempts, 3);
        assert_eq!(s.breaker_state(&a), None);
    }

    #[test]
    fn oversized_response_keeps_kind_and_text_in_the_users_error() {
        let mut s = ClientState::default();
        let a = s.agent("http://127.0.0.1:1").unwrap();
        let now = base();
        let (mut call, ticket) = s
            .begin_send(&a, &env(), Ulid::from_u128(1), 0, now)
            .unwrap();
        let Some(super::super::SendOutput::Transmit(_)) = call.poll_output(now) else {
            panic!("first attempt")
        };
        let limit = 1024;
        call.handle_transport_error(
            TransportError::new(
                TransportErrorKind::ResponseTooLarge { limit },
                "body reached 4096 bytes",
            ),
            now,
        );
        let Some(super::super::SendOutput::Done(outcome)) = call.poll_output(now) else {
            panic!("an oversized answer is not retried")
        };
        let e = s.finish_send(ticket, outcome, now).unwrap_err();
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
