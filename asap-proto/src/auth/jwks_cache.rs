//! [`JwksCache`]: the issuer's key set, fetched once and kept 24 h, refreshed
//! early only for an unknown `kid` (at most once per 30 s), never for a bad
//! signature; one fetch in flight; the last good set serves while the IdP is down.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::fetch::{check_url, Begin, Fetch, FetchId, RefreshSlot};
use super::jwk::{JwkSet, JwksError};
use super::AuthConfigError;
use crate::client::get_request;

/// JWKS cache settings; defaults per spec §11.3 and the issue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JwksCacheConfig {
    /// `GET` this URL for the key set. Required (the default is empty, which
    /// [`JwksCache::new`] refuses).
    pub jwks_uri: String,
    /// How long a fetched set is fresh. Default 24 h.
    pub ttl: Duration,
    /// Least time between fetches started for an unknown `kid`. Default 30 s.
    pub kid_miss_interval: Duration,
    /// After a failed fetch, no new fetch for this long. Default 5 s.
    pub failure_backoff: Duration,
    /// A fetch not reported within this counts as failed, so another may
    /// start (the adapter's task died). Default 15 s (the reference's 10 s
    /// request timeout plus margin).
    pub fetch_timeout: Duration,
}

impl Default for JwksCacheConfig {
    fn default() -> Self {
        Self {
            jwks_uri: String::new(),
            ttl: Duration::from_secs(86_400),
            kid_miss_interval: Duration::from_secs(30),
            failure_backoff: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(15),
        }
    }
}

impl JwksCacheConfig {
    /// Defaults with this URL.
    #[must_use]
    pub fn new(jwks_uri: impl Into<String>) -> Self {
        Self {
            jwks_uri: jwks_uri.into(),
            ..Self::default()
        }
    }
}

/// What [`JwksCache::lookup`] answers.
#[derive(Debug)]
#[must_use]
#[allow(clippy::large_enum_variant)] // a request handed straight to the adapter; boxing only adds an allocation
pub enum KeySetLookup {
    /// Use this set (fresh, or stale while a refresh cannot be had).
    Ready(Arc<JwkSet>),
    /// Perform this fetch, then [`JwksCache::handle_response`] / [`JwksCache::handle_failure`].
    Fetch(Fetch),
    /// No set yet and a fetch is in flight: wait for it to be reported, then look up again.
    Wait(FetchId),
    /// No set, and the last fetch failed moments ago.
    Unavailable,
}

/// What [`JwksCache::key_miss`] answers for a token whose key is not in the set.
#[derive(Debug)]
#[must_use]
#[allow(clippy::large_enum_variant)] // a request handed straight to the adapter; boxing only adds an allocation
pub enum KeyMiss {
    /// Refresh: perform this fetch, report it, then validate again.
    Fetch(Fetch),
    /// A fetch is in flight (it may bring the key): wait, then validate again.
    Wait(FetchId),
    /// No refresh allowed now (one started less than `kid_miss_interval` ago,
    /// or the last failed moments ago): the key is unknown.
    Refused,
}

/// Why a JWKS fetch did not bring a usable set (the IdP's fault; the last
/// good set stays in use).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwksFetchError {
    /// A status outside 2xx.
    #[error("JWKS endpoint answered HTTP {0}")]
    Status(u16),
    /// The body is not a usable key set.
    #[error("JWKS endpoint sent an invalid key set: {0}")]
    Document(JwksError),
    /// The endpoint could not be reached (the adapter's transport error).
    #[error("JWKS endpoint unreachable: {0}")]
    Unreachable(String),
}

/// The JWKS cache machine. No timer: freshness is checked at each lookup.
///
/// Call protocol: [`lookup(now)`](Self::lookup) before validating; when the
/// validator needs a key the set lacks, [`key_miss(now)`](Self::key_miss).
/// Every `Fetch` is answered with [`handle_response`](Self::handle_response)
/// or [`handle_failure`](Self::handle_failure); after that, whoever got
/// `Wait` looks up again.
///
/// ```
/// use asap_proto::auth::{JwksCache, JwksCacheConfig, KeySetLookup, KeyMiss};
/// let t0 = std::time::Instant::now(); // adapters pass the real clock; tests a fixed base
/// let mut cache = JwksCache::new(JwksCacheConfig::new("https://idp.example.com/jwks")).unwrap();
/// let KeySetLookup::Fetch(f) = cache.lookup(t0) else { panic!() };
/// assert!(matches!(cache.lookup(t0), KeySetLookup::Wait(_))); // single flight
/// let resp = http::Response::new(br#"{"keys":[]}"#.to_vec());
/// cache.handle_response(f.id, &resp, t0).unwrap();
/// assert!(matches!(cache.lookup(t0), KeySetLookup::Ready(_)));
/// let KeyMiss::Refused = cache.key_miss(t0) else { panic!() }; // fetched 0 s ago
/// ```
#[derive(Debug, Clone)]
pub struct JwksCache {
    config: JwksCacheConfig,
    slot: RefreshSlot<JwkSet>,
}

impl JwksCache {
    /// An empty cache; the URL must be absolute `http(s)`.
    pub fn new(config: JwksCacheConfig) -> Result<Self, AuthConfigError> {
        check_url(&config.jwks_uri).map_err(|reason| AuthConfigError::InvalidUrl {
            name: "jwks_uri",
            reason,
        })?;
        Ok(Self {
            slot: RefreshSlot::new(config.fetch_timeout, config.failure_backoff),
            config,
        })
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &JwksCacheConfig {
        &self.config
    }

    /// The last good set, fresh or stale.
    #[must_use]
    pub fn keys(&self) -> Option<&Arc<JwkSet>> {
        self.slot.value()
    }

    /// Fetches started so far (for tests and metrics).
    #[must_use]
    pub fn fetches_started(&self) -> u64 {
        self.slot.fetches_started()
    }

    /// The set to validate with, or what to do first.
    pub fn lookup(&mut self, now: Instant) -> KeySetLookup {
        if self.slot.is_fresh(now) {
            if let Some(v) = self.slot.value() {
                return KeySetLookup::Ready(Arc::clone(v));
            }
        }
        let stale = self.slot.value().cloned();
        match (self.slot.begin(now, Duration::ZERO), stale) {
            (Begin::Start(id), _) => KeySetLookup::Fetch(self.fetch(id)),
            // A refresh is out or cannot be had: the stale set serves meanwhile.
            (_, Some(v)) => KeySetLookup::Ready(v),
            (Begin::Joined(id), None) => KeySetLookup::Wait(id),
            (Begin::Refused, None) => KeySetLookup::Unavailable,
        }
    }

    /// The validator needs a key the current set lacks (unknown `kid`).
    pub fn key_miss(&mut self, now: Instant) -> KeyMiss {
        match self.slot.begin(now, self.config.kid_miss_interval) {
            Begin::Start(id) => KeyMiss::Fetch(self.fetch(id)),
            Begin::Joined(id) => KeyMiss::Wait(id),
            Begin::Refused => KeyMiss::Refused,
        }
    }

    fn fetch(&self, id: FetchId) -> Fetch {
        let request = get_request(&self.config.jwks_uri, None)
            .unwrap_or_else(|_| http::Request::new(Vec::new())); // checked at `new`
        Fetch { id, request }
    }

    /// The response to fetch `id`. A good set replaces the old one; anything
    /// else keeps the last good set and starts the failure back-off.
    pub fn handle_response(
        &mut self,
        id: FetchId,
        response: &http::Response<Vec<u8>>,
        now: Instant,
    ) -> Result<Arc<JwkSet>, JwksFetchError> {
        let parsed = if response.status().is_success() {
            JwkSet::from_slice(response.body()).map_err(JwksFetchError::Document)
        } else {
            Err(JwksFetchError::Status(response.status().as_u16()))
        };
        match parsed {
            Ok(set) => Ok(self.slot.succeed(id, set, self.config.ttl, now)),
            Err(e) => {
                self.slot.fail(id, now);
                Err(e)
            }
        }
    }

    /// Fetch `id` failed in transport (connection, timeout).
    pub fn handle_failure(&mut self, id: FetchId, now: Instant) {
        self.slot.fail(id, now);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(body: &str) -> http::Response<Vec<u8>> {
        http::Response::new(body.as_bytes().to_vec())
    }

    #[test]
    fn config_and_keys_report_what_was_given_and_fetched() {
        let t0 = crate::test_clock::base();
        let mut config = JwksCacheConfig::new("https://idp.example.com/jwks");
        config.ttl = Duration::from_secs(60);
        let mut c = JwksCache::new(config.clone()).unwrap();
        assert_eq!(c.config(), &config);
        assert!(c.keys().is_none());
        let KeySetLookup::Fetch(f) = c.lookup(t0) else {
            panic!()
        };
        let body = r#"{"keys":[{"kty":"OKP","kid":"ed","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}]}"#;
        c.handle_response(f.id, &ok(body), t0).unwrap();
        let keys = c.keys().expect("the fetched set");
        assert_eq!(keys.keys().len(), 1);
    }

    #[test]
    fn ttl_refresh_serves_stale_and_keeps_last_good_set() {
        let t0 = crate::test_clock::base();
        let s = Duration::from_secs;
        let mut c = JwksCache::new(JwksCacheConfig::new("https://idp.example.com/jwks")).unwrap();
        let KeySetLookup::Fetch(f) = c.lookup(t0) else {
            panic!()
        };
        assert_eq!(f.request.method(), http::Method::GET);
        assert_eq!(f.request.uri(), "https://idp.example.com/jwks");
        assert_eq!(f.request.headers()["accept"], "application/json");
        c.handle_response(f.id, &ok(r#"{"keys":[]}"#), t0).unwrap();
        assert!(matches!(c.lookup(t0 + s(86_399)), KeySetLookup::Ready(_)));
        // Expired: the first caller refreshes, the others use the stale set.
        let KeySetLookup::Fetch(f) = c.lookup(t0 + s(86_400)) else {
            panic!()
        };
        assert!(matches!(c.lookup(t0 + s(86_400)), KeySetLookup::Ready(_)));
        let bad = http::Response::builder()
            .status(500)
            .body(Vec::new())
            .unwrap();
        assert_eq!(
            c.handle_response(f.id, &bad, t0 + s(86_401)).unwrap_err(),
            JwksFetchError::Status(500)
        );
        // IdP down: the last good set keeps serving, no fetch during back-off.
        assert!(matches!(c.lookup(t0 + s(86_402)), KeySetLookup::Ready(_)));
        assert_eq!(c.fetches_started(), 2);
        let KeySetLookup::Fetch(f) = c.lookup(t0 + s(86_407)) else {
            panic!()
        };
        assert!(matches!(
            c.handle_response(f.id, &ok("not json"), t0 + s(86_408)),
            Err(JwksFetchError::Document(_))
        ));
        assert!(c.keys().is_some());
    }

    #[test]
    fn nothing_loaded_and_idp_down_is_unavailable_then_retried() {
        let t0 = crate::test_clock::base();
        let s = Duration::from_secs;
        let mut c = JwksCache::new(JwksCacheConfig::new("https://idp.example.com/jwks")).unwrap();
        let KeySetLookup::Fetch(f) = c.lookup(t0) else {
            panic!()
        };
        assert!(matches!(c.lookup(t0), KeySetLookup::Wait(id) if id == f.id));
        c.handle_failure(f.id, t0 + s(1));
        assert!(matches!(c.lookup(t0 + s(2)), KeySetLookup::Unavailable));
        assert!(matches!(c.lookup(t0 + s(6)), KeySetLookup::Fetch(_)));
    }

    #[test]
    fn kid_miss_refresh_is_rate_limited() {
        let t0 = crate::test_clock::base();
        let s = Duration::from_secs;
        let mut c = JwksCache::new(JwksCacheConfig::new("https://idp.example.com/jwks")).unwrap();
        let KeySetLookup::Fetch(f) = c.lookup(t0) else {
            panic!()
        };
        c.handle_response(f.id, &ok(r#"{"keys":[]}"#), t0).unwrap();
        assert!(matches!(c.key_miss(t0 + s(29)), KeyMiss::Refused));
        let KeyMiss::Fetch(f) = c.key_miss(t0 + s(30)) else {
            panic!()
        };
        assert!(matches!(c.key_miss(t0 + s(31)), KeyMiss::Wait(id) if id == f.id));
        c.handle_response(f.id, &ok(r#"{"keys":[]}"#), t0 + s(31))
            .unwrap();
        assert!(matches!(c.key_miss(t0 + s(59)), KeyMiss::Refused));
        assert_eq!(c.fetches_started(), 2);
    }

    #[test]
    fn bad_url_is_a_configuration_error() {
        assert!(matches!(
            JwksCache::new(JwksCacheConfig::default()),
            Err(AuthConfigError::InvalidUrl {
                name: "jwks_uri",
                ..
            })
        ));
    }
}
