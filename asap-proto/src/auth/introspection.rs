//! RFC 7662 token introspection for opaque tokens: the request, the answer
//! mapping, and [`IntrospectionCache`] (LRU 1000; inactive 60 s, active
//! without `exp` 60 s, active with `exp` `min(exp − now − 30 s, 1 h)`), single
//! flight per token.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::claims::scope_list;
use super::fetch::{basic_authorization, check_url, form_encode, form_post, Fetch, FetchId};
use super::AuthConfigError;
use crate::discovery::lru::LruMap;
use crate::model::UnixTime;
use crate::server::Now;

/// Introspection endpoint and cache settings (defaults per spec §11.6).
#[derive(Clone, PartialEq, Eq)]
pub struct IntrospectionConfig {
    /// The endpoint (`POST`). Required.
    pub url: String,
    /// Client id for HTTP Basic.
    pub client_id: String,
    /// Client secret for HTTP Basic (redacted in `Debug`).
    pub client_secret: String,
    /// Cached answers at most. Default 1000.
    pub capacity: usize,
    /// How long "not active" and "active without exp" are cached. Default 60 s.
    pub short_ttl: Duration,
    /// Longest an active answer is cached. Default 1 h.
    pub max_ttl: Duration,
    /// An active answer is dropped this long before its `exp`. Default 30 s.
    pub expiry_margin: Duration,
    /// After a failed introspection of a token, no new one for it for this long. Default 5 s.
    pub failure_backoff: Duration,
    /// A fetch not reported within this counts as failed. Default 15 s.
    pub fetch_timeout: Duration,
    /// Introspections in flight at most (an opaque-token flood cannot queue more). Default 256.
    pub max_in_flight: usize,
}

impl fmt::Debug for IntrospectionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("IntrospectionConfig")
            .field("url", &self.url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("capacity", &self.capacity)
            .finish_non_exhaustive()
    }
}

impl Default for IntrospectionConfig {
    fn default() -> Self {
        Self {
            url: String::new(),
            client_id: String::new(),
            client_secret: String::new(),
            capacity: 1000,
            short_ttl: Duration::from_secs(60),
            max_ttl: Duration::from_secs(3600),
            expiry_margin: Duration::from_secs(30),
            failure_backoff: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(15),
            max_in_flight: 256,
        }
    }
}

/// An introspection answer (the reference's `TokenInfo`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct TokenInfo {
    /// `active` (a non-boolean reads as `false`).
    pub active: bool,
    /// `sub`.
    pub sub: Option<String>,
    /// `scope` (string or list).
    pub scope: Vec<String>,
    /// `exp`, whole seconds.
    pub exp: Option<i64>,
    /// `client_id`.
    pub client_id: Option<String>,
    /// `username`.
    pub username: Option<String>,
    /// `token_type`.
    pub token_type: Option<String>,
}

impl TokenInfo {
    /// Maps a 2xx body as the reference does.
    pub fn from_slice(body: &[u8]) -> Result<Self, IntrospectionError> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| IntrospectionError::Document(e.to_string()))?;
        let Value::Object(o) = v else {
            return Err(IntrospectionError::Document("not a JSON object".into()));
        };
        let string = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(Self {
            active: o.get("active").and_then(Value::as_bool).unwrap_or(false),
            sub: string("sub"),
            scope: scope_list(o.get("scope")),
            exp: o
                .get("exp")
                .and_then(|e| e.as_i64().or_else(|| e.as_f64().map(|f| f as i64))),
            client_id: string("client_id"),
            username: string("username"),
            token_type: string("token_type"),
        })
    }
}

/// Why an introspection gave no answer (the endpoint's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IntrospectionError {
    /// A status outside 2xx.
    #[error("introspection endpoint answered HTTP {0}")]
    Status(u16),
    /// The body is not a JSON object.
    #[error("introspection endpoint sent an invalid answer: {0}")]
    Document(String),
    /// The id names no introspection in flight (answered twice, or timed out).
    #[error("no introspection {0:?} is in flight (already answered or timed out)")]
    NotInFlight(FetchId),
}

/// What [`IntrospectionCache::lookup`] answers.
#[derive(Debug)]
#[must_use]
#[allow(clippy::large_enum_variant)] // a request handed straight to the adapter; boxing only adds an allocation
pub enum IntrospectionLookup {
    /// The (cached) answer.
    Known(Arc<TokenInfo>),
    /// Perform this introspection, then report it.
    Fetch(Fetch),
    /// This token's introspection is in flight: wait, then look up again.
    Wait(FetchId),
    /// It failed moments ago, or too many are in flight.
    Unavailable,
}

#[derive(Debug, Clone)]
enum Entry {
    Known {
        info: Arc<TokenInfo>,
        until: Instant,
    },
    Failed {
        until: Instant,
    },
}

/// The introspection cache machine, keyed by the SHA-256 of the token (raw
/// tokens are not kept). No timer: expiry is checked at lookup.
#[derive(Debug, Clone)]
pub struct IntrospectionCache {
    config: IntrospectionConfig,
    entries: LruMap<Entry>,
    in_flight: HashMap<FetchId, (String, Instant)>,
    next_id: u64,
    started: u64,
}

fn token_key(token: &str) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, token.as_bytes());
    d.as_ref().iter().map(|b| format!("{b:02x}")).collect()
}

impl IntrospectionCache {
    /// An empty cache; the URL must be absolute `http(s)`.
    pub fn new(config: IntrospectionConfig) -> Result<Self, AuthConfigError> {
        check_url(&config.url).map_err(|reason| AuthConfigError::InvalidUrl {
            name: "introspection url",
            reason,
        })?;
        Ok(Self {
            entries: LruMap::new(config.capacity),
            config,
            in_flight: HashMap::new(),
            next_id: 0,
            started: 0,
        })
    }

    /// Introspections started so far.
    #[must_use]
    pub fn fetches_started(&self) -> u64 {
        self.started
    }

    /// The request introspecting `token` (`token=..&token_type_hint=access_token`, Basic auth).
    #[must_use]
    pub fn request(&self, token: &str) -> http::Request<Vec<u8>> {
        let body = form_encode(&[("token", token), ("token_type_hint", "access_token")]);
        let auth = basic_authorization(&self.config.client_id, &self.config.client_secret);
        form_post(
            &self.config.url,
            "application/x-www-form-urlencoded",
            Some(&auth),
            body,
        )
        .unwrap_or_else(|_| http::Request::new(Vec::new())) // URL checked at `new`
    }

    /// The cached answer for `token`, or what to do first.
    pub fn lookup(&mut self, token: &str, now: Instant) -> IntrospectionLookup {
        let key = token_key(token);
        match self.entries.get_mut(&key) {
            Some(Entry::Known { info, until }) if now < *until => {
                return IntrospectionLookup::Known(Arc::clone(info))
            }
            Some(Entry::Failed { until }) if now < *until => {
                return IntrospectionLookup::Unavailable
            }
            Some(_) => {
                self.entries.remove(&key);
            }
            None => {}
        }
        let timeout = self.config.fetch_timeout;
        self.in_flight
            .retain(|_, (_, started)| now.saturating_duration_since(*started) < timeout);
        if let Some((id, _)) = self.in_flight.iter().find(|(_, (k, _))| *k == key) {
            return IntrospectionLookup::Wait(*id);
        }
        if self.in_flight.len() >= self.config.max_in_flight {
            return IntrospectionLookup::Unavailable;
        }
        let id = FetchId(self.next_id);
        self.next_id += 1;
        self.started += 1;
        self.in_flight.insert(id, (key, now));
        IntrospectionLookup::Fetch(Fetch {
            id,
            request: self.request(token),
        })
    }

    /// The response to introspection `id`; the answer is cached per the spec's TTLs
    /// (at least 1 s, so the caller's next lookup sees it; `exp` is re-checked at use).
    pub fn handle_response(
        &mut self,
        id: FetchId,
        response: &http::Response<Vec<u8>>,
        now: Now,
    ) -> Result<Arc<TokenInfo>, IntrospectionError> {
        let Some((key, _)) = self.in_flight.remove(&id) else {
            return Err(IntrospectionError::NotInFlight(id));
        };
        let info = if response.status().is_success() {
            TokenInfo::from_slice(response.body())
        } else {
            Err(IntrospectionError::Status(response.status().as_u16()))
        };
        match info {
            Ok(info) => {
                let ttl = self.ttl(&info, now.wall).max(Duration::from_secs(1));
                let info = Arc::new(info);
                let until = now.monotonic.checked_add(ttl).unwrap_or(now.monotonic);
                self.entries.insert(
                    key,
                    Entry::Known {
                        info: Arc::clone(&info),
                        until,
                    },
                );
                Ok(info)
            }
            Err(e) => {
                self.remember_failure(key, now.monotonic);
                Err(e)
            }
        }
    }

    /// Introspection `id` failed in transport.
    pub fn handle_failure(&mut self, id: FetchId, now: Instant) {
        if let Some((key, _)) = self.in_flight.remove(&id) {
            self.remember_failure(key, now);
        }
    }

    fn remember_failure(&mut self, key: String, now: Instant) {
        let until = now.checked_add(self.config.failure_backoff).unwrap_or(now);
        self.entries.insert(key, Entry::Failed { until });
    }

    fn ttl(&self, info: &TokenInfo, now: UnixTime) -> Duration {
        match (info.active, info.exp) {
            (true, Some(exp)) => {
                let left = UnixTime::from_secs(exp).micros_since(now).saturating_sub(
                    i64::try_from(self.config.expiry_margin.as_micros()).unwrap_or(i64::MAX),
                );
                Duration::from_micros(u64::try_from(left).unwrap_or(0)).min(self.config.max_ttl)
            }
            _ => self.config.short_ttl,
        }
    }

    /// Answers cached (including remembered failures).
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is cached.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache() -> IntrospectionCache {
        IntrospectionCache::new(IntrospectionConfig {
            url: "https://idp.example.com/oauth/introspect".into(),
            client_id: "rs-client".into(),
            client_secret: "rs-secret".into(),
            capacity: 3,
            ..Default::default()
        })
        .unwrap()
    }

    fn ok(body: &str) -> http::Response<Vec<u8>> {
        http::Response::new(body.as_bytes().to_vec())
    }

    #[test]
    fn request_matches_the_reference() {
        let r = cache().request("opaque-token-1");
        assert_eq!(r.method(), http::Method::POST);
        assert_eq!(r.uri(), "https://idp.example.com/oauth/introspect");
        assert_eq!(
            r.headers()["authorization"],
            "Basic cnMtY2xpZW50OnJzLXNlY3JldA=="
        );
        assert_eq!(
            r.headers()["content-type"],
            "application/x-www-form-urlencoded"
        );
        assert_eq!(r.headers()["accept"], "application/json");
        assert_eq!(
            r.body(),
            b"token=opaque-token-1&token_type_hint=access_token"
        );
    }

    #[test]
    fn ttls_single_flight_and_bounds() {
        let t0 = crate::test_clock::base();
        let s = Duration::from_secs;
        let wall = UnixTime::from_secs(1_800_000_000);
        let now = |d: u64| Now {
            monotonic: t0 + s(d),
            wall: wall.saturating_add(s(d)),
        };
        let mut c = cache();
        let IntrospectionLookup::Fetch(f) = c.lookup("a", t0) else {
            panic!()
        };
        assert!(matches!(c.lookup("a", t0), IntrospectionLookup::Wait(id) if id == f.id));
        let exp = 1_800_000_000 + 100;
        let info = c
            .handle_response(
                f.id,
                &ok(&format!(
                    r#"{{"active":true,"sub":"s","scope":"asap:read x","exp":{exp}}}"#
                )),
                now(0),
            )
            .unwrap();
        assert_eq!(info.scope, ["asap:read", "x"]);
        // exp − now − 30 = 70 s.
        assert!(matches!(
            c.lookup("a", t0 + s(69)),
            IntrospectionLookup::Known(_)
        ));
        assert!(matches!(
            c.lookup("a", t0 + s(70)),
            IntrospectionLookup::Fetch(_)
        ));
        // Inactive: 60 s.
        let IntrospectionLookup::Fetch(f) = c.lookup("b", t0) else {
            panic!()
        };
        let info = c
            .handle_response(f.id, &ok(r#"{"active":"yes"}"#), now(0))
            .unwrap();
        assert!(!info.active);
        assert!(matches!(
            c.lookup("b", t0 + s(59)),
            IntrospectionLookup::Known(_)
        ));
        // Failure: remembered for the back-off, then retried.
        let IntrospectionLookup::Fetch(f) = c.lookup("c", t0) else {
            panic!()
        };
        let e = c.handle_response(
            f.id,
            &http::Response::builder().status(502).body(vec![]).unwrap(),
            now(0),
        );
        assert_eq!(e.unwrap_err(), IntrospectionError::Status(502));
        assert!(matches!(
            c.lookup("c", t0 + s(4)),
            IntrospectionLookup::Unavailable
        ));
        assert!(matches!(
            c.lookup("c", t0 + s(5)),
            IntrospectionLookup::Fetch(_)
        ));
        assert!(c.len() <= 3);
        assert_eq!(
            c.handle_response(FetchId(999), &ok("{}"), now(0))
                .unwrap_err(),
            IntrospectionError::NotInFlight(FetchId(999))
        );
    }

    #[test]
    fn in_flight_is_bounded_and_lost_fetches_expire() {
        let t0 = crate::test_clock::base();
        let mut c = IntrospectionCache::new(IntrospectionConfig {
            url: "https://idp.example.com/i".into(),
            max_in_flight: 2,
            ..Default::default()
        })
        .unwrap();
        assert!(matches!(c.lookup("1", t0), IntrospectionLookup::Fetch(_)));
        assert!(matches!(c.lookup("2", t0), IntrospectionLookup::Fetch(_)));
        assert!(matches!(
            c.lookup("3", t0),
            IntrospectionLookup::Unavailable
        ));
        assert!(matches!(
            c.lookup("3", t0 + Duration::from_secs(15)),
            IntrospectionLookup::Fetch(_)
        ));
    }

    #[test]
    fn counts_ids_and_transport_failures_are_exact() {
        let t0 = crate::test_clock::base();
        let s = Duration::from_secs;
        let now = |d: u64| Now {
            monotonic: t0 + s(d),
            wall: UnixTime::from_secs(1_800_000_000).saturating_add(s(d)),
        };
        let mut c = cache();
        assert!(c.is_empty());
        assert_eq!((c.len(), c.fetches_started()), (0, 0));
        let IntrospectionLookup::Fetch(a) = c.lookup("a", t0) else {
            panic!()
        };
        let IntrospectionLookup::Fetch(b) = c.lookup("b", t0) else {
            panic!()
        };
        let IntrospectionLookup::Fetch(d) = c.lookup("d", t0) else {
            panic!()
        };
        assert_eq!((a.id, b.id, d.id), (FetchId(0), FetchId(1), FetchId(2)));
        assert_eq!(c.fetches_started(), 3);
        // Nothing is cached until an answer (or a failure) is reported.
        assert!(c.is_empty());
        c.handle_response(a.id, &ok(r#"{"active":false}"#), now(0))
            .unwrap();
        assert_eq!(c.len(), 1);
        assert!(!c.is_empty());
        // A transport failure is remembered for the back-off, then retried.
        c.handle_failure(b.id, t0);
        assert_eq!(c.len(), 2);
        assert!(matches!(
            c.lookup("b", t0 + Duration::from_millis(4999)),
            IntrospectionLookup::Unavailable
        ));
        let IntrospectionLookup::Fetch(again) = c.lookup("b", t0 + s(5)) else {
            panic!()
        };
        assert_eq!(again.id, FetchId(3));
        assert_eq!(c.fetches_started(), 4);
        // Reporting a failure twice, or for an unknown id, changes nothing.
        c.handle_failure(b.id, t0);
        c.handle_failure(FetchId(77), t0);
        assert_eq!(c.len(), 1, "the expired failure of b was dropped at lookup");
        // Each token has its own entry: a's answer is not d's.
        assert!(matches!(c.lookup("a", t0 + s(1)), IntrospectionLookup::Known(i) if !i.active));
        assert!(matches!(c.lookup("d", t0 + s(1)), IntrospectionLookup::Wait(id) if id == d.id));
    }
}
