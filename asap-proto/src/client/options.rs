//! Everything a client is configured with, defined once for every adapter.

use std::time::Duration;

use super::request::{ClientConfig, HttpPolicy};
use crate::discovery::{HealthCacheConfig, ManifestCacheConfig, RegistryCacheConfig};
use crate::reliability::{CircuitBreakerConfig, RetryPolicy};

/// Timeout of one `asap.send` attempt (the reference client's 60 s).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Connection setup including TLS (10 s).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Manifest and health GETs (the reference's `min(timeout, 10 s)`).
pub const DEFAULT_DISCOVERY_TIMEOUT: Duration = Duration::from_secs(10);
/// Registry GET (the reference's 30 s).
pub const DEFAULT_REGISTRY_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest response body accepted (10 MiB, the reference server's request limit).
pub const DEFAULT_MAX_RESPONSE_SIZE: u64 = 10 * 1024 * 1024;
/// Agents whose request counter and breaker a client keeps (LRU).
pub const DEFAULT_MAX_AGENTS: usize = 1000;

/// Per-phase timeouts. The adapter applies `connect` to its HTTP library
/// and, to each request, the timeout its exchange names
/// ([`Exchange::request_timeout`](super::Exchange::request_timeout)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// Whole `asap.send` attempt. Default [`DEFAULT_REQUEST_TIMEOUT`].
    pub request: Duration,
    /// Connection setup including TLS. Default [`DEFAULT_CONNECT_TIMEOUT`].
    pub connect: Duration,
    /// Manifest and health GETs; the smaller of this and `request` applies.
    /// Default [`DEFAULT_DISCOVERY_TIMEOUT`].
    pub discovery: Duration,
    /// Registry GET. Default [`DEFAULT_REGISTRY_TIMEOUT`].
    pub registry: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            request: DEFAULT_REQUEST_TIMEOUT,
            connect: DEFAULT_CONNECT_TIMEOUT,
            discovery: DEFAULT_DISCOVERY_TIMEOUT,
            registry: DEFAULT_REGISTRY_TIMEOUT,
        }
    }
}

/// A client's configuration, the same for every adapter: build it with the
/// setters (or from a base URL: `"https://agent.example.com".into()`), hand
/// it to the adapter's `Client::new` (or to
/// [`ClientState::new`](super::ClientState::new) when writing an adapter).
/// `Default` follows the reference client except where noted.
///
/// ```
/// use std::time::Duration;
/// use asap_proto::client::{ClientOptions, HttpPolicy};
/// use asap_proto::reliability::RetryPolicy;
/// let o = ClientOptions::default()
///     .base_url("https://agent.example.com")
///     .timeout(Duration::from_secs(5))
///     .retry_policy(RetryPolicy::no_retries())
///     .max_response_size(1 << 20);
/// assert_eq!(o.timeouts.request, Duration::from_secs(5));
/// assert_eq!(o.request.http_policy, HttpPolicy::LoopbackOnly);
/// let from_url = ClientOptions::from("https://agent.example.com");
/// assert_eq!(from_url, ClientOptions::default().base_url("https://agent.example.com"));
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct ClientOptions {
    /// The agent `send` talks to; `None`: only `send_to`, discovery and registries.
    pub base_url: Option<String>,
    /// Request shaping (`User-Agent`, `Accept-Encoding`) and the `http://` policy.
    pub request: ClientConfig,
    /// Retries of `asap.send` (reference: 3 attempts, 1-2-4 s, 10 % jitter).
    pub retry: RetryPolicy,
    /// One breaker per agent base URL; `None` disables it. On by default with
    /// the reference's thresholds (5 failures, 60 s); the reference itself
    /// ships it disabled.
    pub breaker: Option<CircuitBreakerConfig>,
    /// Connect and per-request timeouts.
    pub timeouts: Timeouts,
    /// Largest response body the adapter reads; a larger one is
    /// [`TransportErrorKind::ResponseTooLarge`](super::TransportErrorKind::ResponseTooLarge).
    /// Default [`DEFAULT_MAX_RESPONSE_SIZE`].
    pub max_response_size: u64,
    /// Manifest cache (max-age / `ttl_seconds` / ETag).
    pub manifest_cache: ManifestCacheConfig,
    /// Health verdict cache.
    pub health_cache: HealthCacheConfig,
    /// Lite Registry cache (15 min).
    pub registry_cache: RegistryCacheConfig,
    /// How many agents' request counters and breakers are kept (LRU).
    /// Default [`DEFAULT_MAX_AGENTS`].
    pub max_agents: usize,
}

impl Default for ClientOptions {
    fn default() -> Self {
        Self {
            base_url: None,
            request: ClientConfig::default(),
            retry: RetryPolicy::default(),
            breaker: Some(CircuitBreakerConfig::default()),
            timeouts: Timeouts::default(),
            max_response_size: DEFAULT_MAX_RESPONSE_SIZE,
            manifest_cache: ManifestCacheConfig::default(),
            health_cache: HealthCacheConfig::default(),
            registry_cache: RegistryCacheConfig::default(),
            max_agents: DEFAULT_MAX_AGENTS,
        }
    }
}

/// Default options for the agent at this base URL.
impl From<&str> for ClientOptions {
    fn from(base_url: &str) -> Self {
        Self::default().base_url(base_url)
    }
}

/// Default options for the agent at this base URL.
impl From<&String> for ClientOptions {
    fn from(base_url: &String) -> Self {
        Self::default().base_url(base_url)
    }
}

/// Default options for the agent at this base URL.
impl From<String> for ClientOptions {
    fn from(base_url: String) -> Self {
        Self::default().base_url(base_url)
    }
}

impl ClientOptions {
    /// The agent `send` talks to.
    #[must_use]
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = Some(url.into());
        self
    }

    /// Timeout of one `asap.send` attempt (also bounds discovery GETs).
    #[must_use]
    pub fn timeout(mut self, d: Duration) -> Self {
        self.timeouts.request = d;
        self
    }

    /// Connect (and TLS handshake) timeout.
    #[must_use]
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.timeouts.connect = d;
        self
    }

    /// All timeouts at once.
    #[must_use]
    pub fn timeouts(mut self, t: Timeouts) -> Self {
        self.timeouts = t;
        self
    }

    /// Allows plain `http://` to hosts other than loopback (off by default, spec 14).
    #[must_use]
    pub fn allow_insecure_http(mut self, allow: bool) -> Self {
        self.request.http_policy = if allow {
            HttpPolicy::AllowInsecure
        } else {
            HttpPolicy::LoopbackOnly
        };
        self
    }

    /// `User-Agent`, or `None` to leave it to the HTTP library.
    #[must_use]
    pub fn user_agent(mut self, ua: Option<String>) -> Self {
        self.request.user_agent = ua;
        self
    }

    /// Retries of `asap.send`.
    #[must_use]
    pub fn retry_policy(mut self, p: RetryPolicy) -> Self {
        self.retry = p;
        self
    }

    /// Circuit breaker per agent; `None` disables it.
    #[must_use]
    pub fn circuit_breaker(mut self, c: Option<CircuitBreakerConfig>) -> Self {
        self.breaker = c;
        self
    }

    /// Largest response body accepted.
    #[must_use]
    pub fn max_response_size(mut self, bytes: u64) -> Self {
        self.max_response_size = bytes;
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setter_sets_its_own_field_and_nothing_else() {
        let d = ClientOptions::default();
        assert_eq!(DEFAULT_MAX_RESPONSE_SIZE, 10_485_760);
        assert_eq!(d.max_response_size, DEFAULT_MAX_RESPONSE_SIZE);
        let url = "https://agent.example.com";
        let with_url = ClientOptions {
            base_url: Some(url.into()),
            ..d.clone()
        };
        assert_eq!(d.clone().base_url(url), with_url);
        assert_eq!(ClientOptions::from(url), with_url);
        assert_eq!(ClientOptions::from(&url.to_owned()), with_url);
        assert_eq!(ClientOptions::from(url.to_owned()), with_url);

        let five = Duration::from_secs(5);
        let mut want = d.clone();
        want.timeouts.request = five;
        assert_eq!(d.clone().timeout(five), want);
        let mut want = d.clone();
        want.timeouts.connect = five;
        assert_eq!(d.clone().connect_timeout(five), want);
        let t = Timeouts {
            request: Duration::from_secs(1),
            connect: Duration::from_secs(2),
            discovery: Duration::from_secs(3),
            registry: Duration::from_secs(4),
        };
        assert_eq!(d.clone().timeouts(t).timeouts, t);

        let insecure = d.clone().allow_insecure_http(true);
        assert_eq!(insecure.request.http_policy, HttpPolicy::AllowInsecure);
        assert_eq!(
            insecure.allow_insecure_http(false).request.http_policy,
            HttpPolicy::LoopbackOnly
        );
        let mut want = d.clone();
        want.request.user_agent = Some("ua/1".into());
        assert_eq!(d.clone().user_agent(Some("ua/1".into())), want);
        assert_eq!(d.clone().user_agent(None).request.user_agent, None);

        let no_retries = RetryPolicy::no_retries();
        assert_eq!(d.clone().retry_policy(no_retries).retry, no_retries);
        assert_eq!(d.clone().circuit_breaker(None).breaker, None);
        let mut want = d.clone();
        want.max_response_size = 1 << 20;
        assert_eq!(d.max_response_size(1 << 20), want);
    }
}
