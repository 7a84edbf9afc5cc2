//! The health document (`GET /.well-known/asap/health`) and a cached liveness verdict.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::cache::{base_key, check_encoding, decode_answer, CacheDocument, HttpCache};
use super::DiscoveryError;
use crate::client::{get_request, BaseUrl, HttpPolicy};
use crate::model::{Manifest, ASAP_PROTOCOL_VERSION, DEFAULT_MANIFEST_TTL_SECONDS};

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
    let url = HealthVerdict::request_url(&base_key(base_url))?;
    get_request(&url, None).map_err(|reason| DiscoveryError::InvalidUrl {
        url: base_url.to_owned(),
        reason,
    })
}

/// Interprets a health response: 200 → verdict from the document; 503 →
/// [`HealthVerdict::Unhealthy`]; anything else → [`DiscoveryError`].
pub fn interpret_health_response(
    response: &http::Response<Vec<u8>>,
) -> Result<HealthVerdict, DiscoveryError> {
    decode_answer(response)
}

impl CacheDocument for HealthVerdict {
    type Config = HealthCacheConfig;
    // The reference's health check is never conditional.
    const REVALIDATE: bool = false;

    fn capacity(config: &HealthCacheConfig) -> usize {
        config.capacity
    }

    fn key(base_url: &str) -> String {
        base_key(base_url)
    }

    fn request_url(key: &str) -> Result<String, DiscoveryError> {
        // Only builds the URL: the http:// policy is the client's, checked before.
        Ok(BaseUrl::parse(key, HttpPolicy::AllowInsecure)?.health_url())
    }

    /// Without the agent's manifest at hand, the manifest default; callers
    /// that have it use `handle_response_with_ttl` and [`manifest_ttl`].
    fn freshness(_: &HealthCacheConfig, _: &http::Response<Vec<u8>>, _: &Self) -> Duration {
        Duration::from_secs(DEFAULT_MANIFEST_TTL_SECONDS)
    }

    fn is_answer(status: http::StatusCode) -> bool {
        status == http::StatusCode::SERVICE_UNAVAILABLE
    }

    fn decode(response: &http::Response<Vec<u8>>) -> Result<Self, DiscoveryError> {
        if response.status() == http::StatusCode::SERVICE_UNAVAILABLE {
            // The agent said it is down; its document, if readable, is a bonus.
            let doc = check_encoding(response)
                .ok()
                .and_then(|()| HealthStatus::from_slice(response.body()).ok());
            return Ok(Self::Unhealthy(doc));
        }
        let doc =
            HealthStatus::from_slice(response.body()).map_err(DiscoveryError::InvalidHealth)?;
        Ok(if doc.is_healthy() {
            Self::Healthy(doc)
        } else {
            Self::Unhealthy(Some(doc))
        })
    }
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

/// Cached liveness verdicts keyed by base URL. A verdict stays fresh for the
/// TTL the caller passes with the answer to
/// [`handle_response_with_ttl`](HttpCache::handle_response_with_ttl) — the
/// agent manifest's `ttl_seconds` ([`manifest_ttl`]) — and is fresh while
/// `now < stored + ttl`. Errors are not cached; no `If-None-Match` is sent.
///
/// ```
/// use std::time::{Duration, Instant};
/// use asap_proto::discovery::{HealthCache, HealthCacheConfig, Lookup};
/// let mut cache = HealthCache::new(HealthCacheConfig::default());
/// let now = Instant::now(); // the adapter's clock
/// let Lookup::Transmit(req) = cache.lookup("http://127.0.0.1:8000", now).unwrap() else { unreachable!() };
/// assert_eq!(req.uri(), "http://127.0.0.1:8000/.well-known/asap/health");
/// let resp = http::Response::builder().status(503).body(Vec::new()).unwrap();
/// let ttl = Duration::from_secs(300);
/// let verdict = cache.handle_response_with_ttl("http://127.0.0.1:8000", &resp, ttl, now).unwrap().fresh().unwrap();
/// assert!(!verdict.is_healthy());                      // an answer, not an error
/// assert!(matches!(cache.lookup("http://127.0.0.1:8000/", now).unwrap(), Lookup::Fresh(_)));
/// ```
pub type HealthCache = HttpCache<HealthVerdict>;

/// The freshness a manifest asks for (`ttl_seconds`).
#[must_use]
pub fn manifest_ttl(manifest: &Manifest) -> Duration {
    Duration::from_secs(manifest.ttl_seconds)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::Lookup;
    use std::time::Instant;
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
    fn without_the_manifest_a_verdict_is_fresh_for_the_manifest_default() {
        let mut c = HealthCache::new(HealthCacheConfig { capacity: 2 });
        let t0 = base();
        let ttl = Duration::from_secs(DEFAULT_MANIFEST_TTL_SECONDS);
        c.handle_response("http://a", &resp(200, HEALTHY), t0)
            .unwrap();
        let just_before = t0 + ttl - Duration::from_nanos(1);
        assert!(matches!(
            c.lookup("http://a", just_before).unwrap(),
            Lookup::Fresh(_)
        ));
        assert!(matches!(
            c.lookup("http://a", t0 + ttl).unwrap(),
            Lookup::Transmit(_)
        ));
    }

    #[test]
    fn a_document_without_a_version_speaks_the_envelope_version() {
        let h: HealthStatus = serde_json::from_str(
            r#"{"status":"healthy","agent_id":"a","version":"1","uptime_seconds":1.0}"#,
        )
        .unwrap();
        assert_eq!(h.asap_version, "0.1");
    }

    #[test]
    fn verdict_expires_exactly_at_ttl() {
        let mut c = HealthCache::new(HealthCacheConfig { capacity: 2 });
        let t0 = base();
        let ttl = Duration::from_secs(300);
        c.handle_response_with_ttl("http://a", &resp(200, HEALTHY), ttl, t0)
            .unwrap();
        assert!(matches!(
            c.lookup("http://a/", t0 + ttl - Duration::from_nanos(1))
                .unwrap(),
            Lookup::Fresh(_)
        ));
        assert!(matches!(
            c.lookup("http://a", t0 + ttl).unwrap(),
            Lookup::Transmit(_)
        ));
        // An error evicts; capacity bounds the cache.
        c.handle_response_with_ttl("http://a", &resp(500, ""), ttl, t0)
            .unwrap_err();
        assert!(c.is_empty());
        for u in ["http://a", "http://b", "http://c"] {
            c.handle_response_with_ttl(u, &resp(200, HEALTHY), ttl, t0)
                .unwrap();
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
