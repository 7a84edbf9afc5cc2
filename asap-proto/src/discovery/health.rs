//! The health document (`GET /.well-known/asap/health`) and a cached liveness verdict.

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::cache::{check_encoding, snippet, Lookup};
use super::lru::LruMap;
use super::DiscoveryError;
use crate::client::{get_request, BaseUrl, HttpPolicy};
use crate::model::{Manifest, ASAP_PROTOCOL_VERSION};

/// `status` of a healthy agent.
pub const STATUS_HEALTHY: &str = "healthy";
/// `status` of an unhealthy agent.
pub const STATUS_UNHEALTHY: &str = "unhealthy";

/// Optional load figures in a health document.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct HealthLoad {
    /// Tasks being processed (≥ 0).
    pub active_tasks: u64,
    /// Tasks waiting (≥ 0).
    pub queue_depth: u64,
}

fn default_asap_version() -> String {
    ASAP_PROTOCOL_VERSION.to_owned()
}

fn non_negative<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    let x = f64::deserialize(d)?;
    if x.is_nan() || x < 0.0 {
        return Err(serde::de::Error::custom(
            "Input should be greater than or equal to 0",
        ));
    }
    Ok(x)
}

/// The health document (spec 12.2). Members in wire order; unknown members
/// are ignored, as the reference client ignores them.
///
/// ```
/// use asap_proto::discovery::HealthStatus;
/// let h = HealthStatus::from_slice(br#"{"status":"healthy","agent_id":"urn:asap:agent:a","version":"1.0","uptime_seconds":0.38,"load":null}"#).unwrap();
/// assert!(h.is_healthy());
/// assert_eq!(h.asap_version, "0.1");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HealthStatus {
    /// `healthy` or `unhealthy` (free string on the wire).
    pub status: String,
    /// The agent's URN (not validated, as in the reference).
    pub agent_id: String,
    /// The agent's version.
    pub version: String,
    /// The agent's protocol version (default `"0.1"`).
    #[serde(default = "default_asap_version")]
    pub asap_version: String,
    /// Seconds since the agent started (≥ 0).
    #[serde(deserialize_with = "non_negative")]
    pub uptime_seconds: f64,
    /// Load figures, if the agent reports them.
    #[serde(default)]
    pub load: Option<HealthLoad>,
}

impl HealthStatus {
    /// The document an agent with `manifest` serves (`uptime_seconds` rounded to 2 decimals).
    #[must_use]
    pub fn for_manifest(
        manifest: &Manifest,
        healthy: bool,
        uptime: Duration,
        load: Option<HealthLoad>,
    ) -> Self {
        Self {
            status: if healthy {
                STATUS_HEALTHY
            } else {
                STATUS_UNHEALTHY
            }
            .to_owned(),
            agent_id: manifest.id.to_string(),
            version: manifest.version.clone(),
            asap_version: manifest.capabilities.asap_version.clone(),
            uptime_seconds: (uptime.as_secs_f64() * 100.0).round() / 100.0,
            load,
        }
    }

    /// Decodes a health document.
    pub fn from_slice(bytes: &[u8]) -> Result<Self, crate::error::DecodeError> {
        crate::error::from_slice(bytes)
    }

    /// Compact JSON, as the reference server writes it.
    #[must_use]
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Whether `status` is `healthy`.
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        self.status == STATUS_HEALTHY
    }
}

/// A liveness answer: an agent that says it is unhealthy (HTTP 503, or a
/// document whose `status` is not `healthy`) is an answer, not an error.
#[derive(Debug, Clone, PartialEq)]
pub enum HealthVerdict {
    /// 200 and `status: "healthy"`.
    Healthy(HealthStatus),
    /// 503 (document included when it parsed), or 200 with another `status`.
    Unhealthy(Option<HealthStatus>),
}

impl HealthVerdict {
    /// Whether the agent is healthy.
    #[must_use]
    pub fn is_healthy(&self) -> bool {
        matches!(self, Self::Healthy(_))
    }

    /// The document, when there was one.
    #[must_use]
    pub fn status(&self) -> Option<&HealthStatus> {
        match self {
            Self::Healthy(s) | Self::Unhealthy(Some(s)) => Some(s),
            Self::Unhealthy(None) => None,
        }
    }
}

/// `GET {base}/.well-known/asap/health`.
pub fn health_request(base_url: &str) -> Result<http::Request<Vec<u8>>, DiscoveryError> {
    let base = BaseUrl::parse(base_url, HttpPolicy::AllowInsecure)?;
    get_request(&base.health_url(), None).map_err(|reason| DiscoveryError::InvalidUrl {
        url: base_url.to_owned(),
        reason,
    })
}

/// Interprets a health response: 200 → verdict from the document; 503 →
/// [`HealthVerdict::Unhealthy`]; anything else → [`DiscoveryError`].
pub fn interpret_health_response(
    response: &http::Response<Vec<u8>>,
) -> Result<HealthVerdict, DiscoveryError> {
    let status = response.status().as_u16();
    if status == 503 {
        let doc = check_encoding(response)
            .ok()
            .and_then(|()| HealthStatus::from_slice(response.body()).ok());
        return Ok(HealthVerdict::Unhealthy(doc));
    }
    if !(200..300).contains(&status) {
        return Err(if status >= 400 {
            DiscoveryError::HttpStatus {
                status,
                snippet: snippet(response.body()),
            }
        } else {
            DiscoveryError::UnexpectedStatus { status }
        });
    }
    check_encoding(response)?;
    let doc = HealthStatus::from_slice(response.body()).map_err(DiscoveryError::InvalidHealth)?;
    Ok(if doc.is_healthy() {
        HealthVerdict::Healthy(doc)
    } else {
        HealthVerdict::Unhealthy(Some(doc))
    })
}

/// Settings of a [`HealthCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthCacheConfig {
    /// Agents remembered at once (least recently used forgotten first). Default 1000.
    pub capacity: usize,
}

impl Default for HealthCacheConfig {
    fn default() -> Self {
        Self { capacity: 1000 }
    }
}

#[derive(Debug, Clone)]
struct HealthEntry {
    verdict: Arc<HealthVerdict>,
    fresh_until: Instant,
}

/// Cached liveness verdicts keyed by base URL. A verdict stays fresh for the
/// TTL the caller passes with the answer — the agent manifest's
/// `ttl_seconds` ([`manifest_ttl`]) — and is fresh while `now < stored + ttl`.
/// Errors are not cached.
///
/// ```
/// use std::time::{Duration, Instant};
/// use asap_proto::discovery::{HealthCache, HealthCacheConfig, Lookup};
/// let mut cache = HealthCache::new(HealthCacheConfig::default());
/// let now = Instant::now(); // the adapter's clock
/// let Lookup::Fetch(req) = cache.lookup("http://127.0.0.1:8000", now).unwrap() else { unreachable!() };
/// assert_eq!(req.uri(), "http://127.0.0.1:8000/.well-known/asap/health");
/// let resp = http::Response::builder().status(503).body(Vec::new()).unwrap();
/// let verdict = cache.handle_response("http://127.0.0.1:8000", &resp, Duration::from_secs(300), now).unwrap();
/// assert!(!verdict.is_healthy());                      // an answer, not an error
/// assert!(matches!(cache.lookup("http://127.0.0.1:8000/", now).unwrap(), Lookup::Fresh(_)));
/// ```
#[derive(Debug, Clone)]
pub struct HealthCache {
    entries: LruMap<HealthEntry>,
}

/// The freshness a manifest asks for (`ttl_seconds`).
#[must_use]
pub fn manifest_ttl(manifest: &Manifest) -> Duration {
    Duration::from_secs(manifest.ttl_seconds)
}

impl HealthCache {
    /// An empty cache.
    #[must_use]
    pub fn new(config: HealthCacheConfig) -> Self {
        Self {
            entries: LruMap::new(config.capacity),
        }
    }

    /// A fresh verdict, or the request to make.
    pub fn lookup(
        &mut self,
        base_url: &str,
        now: Instant,
    ) -> Result<Lookup<HealthVerdict>, DiscoveryError> {
        let key = super::cache::base_key(base_url);
        if let Some(e) = self.entries.get_mut(&key) {
            if now < e.fresh_until {
                return Ok(Lookup::Fresh(Arc::clone(&e.verdict)));
            }
        }
        health_request(&key).map(Lookup::Fetch)
    }

    /// Interprets the answer to the request from [`lookup`](Self::lookup) and
    /// caches the verdict for `ttl`. Errors evict the entry.
    pub fn handle_response(
        &mut self,
        base_url: &str,
        response: &http::Response<Vec<u8>>,
        ttl: Duration,
        now: Instant,
    ) -> Result<Arc<HealthVerdict>, DiscoveryError> {
        let key = super::cache::base_key(base_url);
        match interpret_health_response(response) {
            Ok(v) => {
                let verdict = Arc::new(v);
                let fresh_until = now.checked_add(ttl).unwrap_or(now);
                self.entries.insert(
                    key,
                    HealthEntry {
                        verdict: Arc::clone(&verdict),
                        fresh_until,
                    },
                );
                Ok(verdict)
            }
            Err(e) => {
                self.entries.remove(&key);
                Err(e)
            }
        }
    }

    /// Forgets the verdict for `base_url` (e.g. after a transport failure).
    pub fn invalidate(&mut self, base_url: &str) {
        self.entries.remove(&super::cache::base_key(base_url));
    }

    /// Agents remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether nothing is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.entries.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    fn base() -> Instant {
        crate::test_clock::base()
    }

    fn resp(status: u16, body: &str) -> http::Response<Vec<u8>> {
        http::Response::builder()
            .status(status)
            .body(body.as_bytes().to_vec())
            .unwrap()
    }

    const HEALTHY: &str = r#"{"status":"healthy","agent_id":"urn:asap:agent:echo-server","version":"1.0.0","asap_version":"0.1","uptime_seconds":0.38,"load":null,"extra":1}"#;

    #[test]
    fn verdicts() {
        assert!(interpret_health_response(&resp(200, HEALTHY))
            .unwrap()
            .is_healthy());
        let v = interpret_health_response(&resp(
            503,
            r#"{"status":"unhealthy","agent_id":"a","version":"1","uptime_seconds":0.0,"load":{"active_tasks":2,"queue_depth":5}}"#,
        ))
        .unwrap();
        assert_eq!(
            v.status().unwrap().load,
            Some(HealthLoad {
                active_tasks: 2,
                queue_depth: 5
            })
        );
        assert_eq!(
            interpret_health_response(&resp(503, "busy")).unwrap(),
            HealthVerdict::Unhealthy(None)
        );
        let v =
            interpret_health_response(&resp(200, &HEALTHY.replace("\"healthy\"", "\"degraded\"")))
                .unwrap();
        assert!(!v.is_healthy());
        assert!(matches!(
            interpret_health_response(&resp(404, "")),
            Err(DiscoveryError::HttpStatus { status: 404, .. })
        ));
        assert!(matches!(
            interpret_health_response(&resp(200, "{}")),
            Err(DiscoveryError::InvalidHealth(_))
        ));
        assert!(matches!(
            interpret_health_response(&resp(200, &HEALTHY.replace("0.38", "-1"))),
            Err(DiscoveryError::InvalidHealth(_))
        ));
        assert!(matches!(
            interpret_health_response(&resp(301, "")),
            Err(DiscoveryError::UnexpectedStatus { status: 301 })
        ));
    }

    #[test]
    fn verdict_expires_exactly_at_ttl() {
        let mut c = HealthCache::new(HealthCacheConfig { capacity: 2 });
        let t0 = base();
        let ttl = Duration::from_secs(300);
        c.handle_response("http://a", &resp(200, HEALTHY), ttl, t0)
            .unwrap();
        assert!(matches!(
            c.lookup("http://a/", t0 + ttl - Duration::from_nanos(1))
                .unwrap(),
            Lookup::Fresh(_)
        ));
        assert!(matches!(
            c.lookup("http://a", t0 + ttl).unwrap(),
            Lookup::Fetch(_)
        ));
        // An error evicts; capacity bounds the cache.
        c.handle_response("http://a", &resp(500, ""), ttl, t0)
            .unwrap_err();
        assert!(c.is_empty());
        for u in ["http://a", "http://b", "http://c"] {
            c.handle_response(u, &resp(200, HEALTHY), ttl, t0).unwrap();
        }
        assert_eq!(c.len(), 2);
        c.invalidate("http://c");
        assert_eq!(c.len(), 1);
        assert!(health_request("not a url").is_err());
    }

    #[test]
    fn document_round_trip() {
        let m: Manifest = serde_json::from_str(r#"{"id":"urn:asap:agent:echo-server","name":"Echo Server","version":"1.0.0","description":"d","capabilities":{},"endpoints":{"asap":"http://x/asap"}}"#).unwrap();
        let h = HealthStatus::for_manifest(&m, true, Duration::from_millis(383), None);
        assert_eq!(
            String::from_utf8(h.to_vec()).unwrap(),
            r#"{"status":"healthy","agent_id":"urn:asap:agent:echo-server","version":"1.0.0","asap_version":"0.1","uptime_seconds":0.38,"load":null}"#
        );
        assert_eq!(manifest_ttl(&m), Duration::from_secs(300));
    }
}
