//! The Lite Registry: a static `registry.json` listing agents, its cache and queries.

use std::fmt;
use std::time::Duration;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::cache::{CacheDocument, HttpCache};
use super::DiscoveryError;
use crate::error::DecodeError;
use crate::model::{AgentUrn, Manifest, Timestamp};

/// The official registry's URL (the reference's default).
pub const DEFAULT_REGISTRY_URL: &str = "https://asap-protocol.github.io/registry/registry.json";
/// How long a fetched registry is used before refetching (15 minutes).
pub const DEFAULT_REGISTRY_TTL: Duration = Duration::from_secs(900);

/// An entry's endpoints: endpoint kind (`http`, `ws`, `manifest`, ...) → URL,
/// in document order (a repeated kind keeps its first position and last value,
/// as a Python dict does).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegistryEndpoints(Vec<(String, String)>);

impl RegistryEndpoints {
    /// The URL for `kind`.
    #[must_use]
    pub fn get(&self, kind: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == kind)
            .map(|(_, v)| v.as_str())
    }

    /// Sets the URL for `kind` (replacing in place when present).
    pub fn insert(&mut self, kind: impl Into<String>, url: impl Into<String>) {
        let (kind, url) = (kind.into(), url.into());
        match self.0.iter_mut().find(|(k, _)| *k == kind) {
            Some(slot) => slot.1 = url,
            None => self.0.push((kind, url)),
        }
    }

    /// `(kind, url)` pairs in order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &str)> {
        self.0.iter().map(|(k, v)| (k.as_str(), v.as_str()))
    }

    /// Number of endpoints.
    #[must_use]
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether there are none.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<K: Into<String>, V: Into<String>> FromIterator<(K, V)> for RegistryEndpoints {
    fn from_iter<I: IntoIterator<Item = (K, V)>>(iter: I) -> Self {
        let mut e = Self::default();
        for (k, v) in iter {
            e.insert(k, v);
        }
        e
    }
}

impl Serialize for RegistryEndpoints {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}

impl<'de> Deserialize<'de> for RegistryEndpoints {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = RegistryEndpoints;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an object of endpoint kind to URL strings")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut m: A) -> Result<Self::Value, A::Error> {
                let mut out = RegistryEndpoints::default();
                while let Some((k, v)) = m.next_entry::<String, String>()? {
                    out.insert(k, v);
                }
                Ok(out)
            }
        }
        d.deserialize_map(V)
    }
}

/// One agent listed in a Lite Registry (spec 12.4). Unknown members are rejected.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryEntry {
    /// Agent URN.
    pub id: AgentUrn,
    /// Display name.
    pub name: String,
    /// What the agent does.
    pub description: String,
    /// Endpoint kind → URL (`http`, `ws`, `manifest` by convention).
    pub endpoints: RegistryEndpoints,
    /// Skill ids (default empty).
    #[serde(default)]
    pub skills: Vec<String>,
    /// Protocol version the agent speaks (free string).
    pub asap_version: String,
}

impl RegistryEntry {
    /// Whether the entry lists `skill` (exact, case-sensitive).
    #[must_use]
    pub fn has_skill(&self, skill: &str) -> bool {
        self.skills.iter().any(|s| s == skill)
    }
}

/// A Lite Registry document: `{version, updated_at, agents}`. Unknown members are rejected.
///
/// ```
/// use asap_proto::discovery::LiteRegistry;
/// let reg = LiteRegistry::from_slice(br#"{"version":"1.0","updated_at":"2026-02-07T00:00:00Z","agents":[
///   {"id":"urn:asap:agent:echo","name":"Echo","description":"Echo agent",
///    "endpoints":{"http":"https://echo.example.com/asap"},"skills":["echo"],"asap_version":"0.1"}]}"#).unwrap();
/// assert_eq!(reg.find_by_skill("echo").len(), 1);
/// assert!(reg.find_by_id("urn:asap:agent:echo").is_some());
/// let err = LiteRegistry::from_slice(br#"{"version":"1.0","updated_at":"2026-02-07T00:00:00Z","agents":[{"id":"bad"}]}"#).unwrap_err();
/// assert_eq!(err.path, "agents[0].id");
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LiteRegistry {
    /// Registry schema version.
    pub version: String,
    /// When the registry was last updated.
    pub updated_at: Timestamp,
    /// The listed agents (default empty).
    #[serde(default)]
    pub agents: Vec<RegistryEntry>,
}

impl LiteRegistry {
    /// Decodes registry JSON, with the path of the first problem (`agents[2].id`).
    pub fn from_slice(bytes: &[u8]) -> Result<Self, DecodeError> {
        crate::error::from_slice(bytes)
    }

    /// Compact JSON in model order (defaults filled in).
    #[must_use]
    pub fn to_vec(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Entries listing `skill` (exact, case-sensitive), in registry order.
    #[must_use]
    pub fn find_by_skill(&self, skill: &str) -> Vec<&RegistryEntry> {
        self.agents.iter().filter(|e| e.has_skill(skill)).collect()
    }

    /// The first entry whose `id` is `id`.
    #[must_use]
    pub fn find_by_id(&self, id: &str) -> Option<&RegistryEntry> {
        self.agents.iter().find(|e| e.id == id)
    }
}

/// A registry entry for an agent: id, name, description, skill ids and
/// `capabilities.asap_version` from its manifest, plus the given endpoints.
///
/// ```
/// use asap_proto::discovery::generate_registry_entry;
/// # let m: asap_proto::model::Manifest = serde_json::from_str(r#"{"id":"urn:asap:agent:a","name":"A","version":"1.0","description":"d","capabilities":{"skills":[{"id":"echo","description":"e"}]},"endpoints":{"asap":"http://x/asap"}}"#).unwrap();
/// let e = generate_registry_entry(&m, [("http", "https://a.example/asap")]);
/// assert_eq!(e.skills, ["echo"]);
/// assert_eq!(e.endpoints.get("http"), Some("https://a.example/asap"));
/// ```
pub fn generate_registry_entry<K, V>(
    manifest: &Manifest,
    endpoints: impl IntoIterator<Item = (K, V)>,
) -> RegistryEntry
where
    K: Into<String>,
    V: Into<String>,
{
    RegistryEntry {
        id: manifest.id.clone(),
        name: manifest.name.clone(),
        description: manifest.description.clone(),
        endpoints: endpoints.into_iter().collect(),
        skills: manifest
            .capabilities
            .skills
            .iter()
            .map(|s| s.id.clone())
            .collect(),
        asap_version: manifest.capabilities.asap_version.clone(),
    }
}

/// Settings of a [`RegistryCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegistryCacheConfig {
    /// How long a fetched registry is used. Default 900 s.
    pub ttl: Duration,
    /// Registries remembered at once. Default 16.
    pub capacity: usize,
}

impl Default for RegistryCacheConfig {
    fn default() -> Self {
        Self {
            ttl: DEFAULT_REGISTRY_TTL,
            capacity: 16,
        }
    }
}

/// Fetched registries keyed by URL, fresh for `ttl` (default 15 min) from
/// the moment the response was handled (`now < stored + ttl`). A stale entry
/// is revalidated with `If-None-Match` when the server gave an ETag.
///
/// Call protocol: [`HttpCache`]'s (`lookup` → perform `Transmit` →
/// `handle_response`). A registry read from a local file
/// needs no cache: [`LiteRegistry::from_slice`].
///
/// ```
/// use std::time::{Duration, Instant};
/// use asap_proto::discovery::{Lookup, RegistryCache, RegistryCacheConfig, DEFAULT_REGISTRY_URL};
/// let mut cache = RegistryCache::new(RegistryCacheConfig::default());
/// let now = Instant::now();
/// let Lookup::Transmit(req) = cache.lookup(DEFAULT_REGISTRY_URL, now).unwrap() else { unreachable!() };
/// let resp = http::Response::builder().status(200)
///     .body(br#"{"version":"1.0","updated_at":"2026-02-07T00:00:00Z"}"#.to_vec()).unwrap();
/// cache.handle_response(DEFAULT_REGISTRY_URL, &resp, now).unwrap();
/// assert!(matches!(cache.lookup(DEFAULT_REGISTRY_URL, now + Duration::from_secs(899)).unwrap(), Lookup::Fresh(_)));
/// assert!(matches!(cache.lookup(DEFAULT_REGISTRY_URL, now + Duration::from_secs(900)).unwrap(), Lookup::Transmit(_)));
/// ```
pub type RegistryCache = HttpCache<LiteRegistry>;

fn check_registry_url(url: &str) -> Result<(), DiscoveryError> {
    let invalid = |reason: &str| DiscoveryError::InvalidUrl {
        url: url.to_owned(),
        reason: reason.to_owned(),
    };
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
    match uri.scheme_str() {
        Some(s) if s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https") => {}
        _ => return Err(invalid("the scheme must be http or https")),
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(invalid("a host is required"));
    }
    Ok(())
}

impl CacheDocument for LiteRegistry {
    type Config = RegistryCacheConfig;
    const REVALIDATE: bool = true;

    fn capacity(config: &RegistryCacheConfig) -> usize {
        config.capacity
    }

    fn request_url(url: &str) -> Result<String, DiscoveryError> {
        check_registry_url(url)?;
        Ok(url.to_owned())
    }

    /// The configured TTL: the reference ignores the registry's `Cache-Control`.
    fn freshness(config: &RegistryCacheConfig, _: &http::Response<Vec<u8>>, _: &Self) -> Duration {
        config.ttl
    }

    fn decode(response: &http::Response<Vec<u8>>) -> Result<Self, DiscoveryError> {
        Self::from_slice(response.body()).map_err(DiscoveryError::InvalidRegistry)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_keep_document_order_and_the_last_value_of_a_kind() {
        let mut e = RegistryEndpoints::default();
        assert!(e.is_empty());
        assert_eq!(e.get("http"), None);
        e.insert("http", "https://a.example/asap");
        e.insert("ws", "wss://a.example/asap/ws");
        e.insert("http", "https://b.example/asap");
        assert_eq!(e.get("http"), Some("https://b.example/asap"));
        assert_eq!(e.get("ws"), Some("wss://a.example/asap/ws"));
        assert_eq!(e.get("manifest"), None);
        assert_eq!(e.len(), 2);
        assert_eq!(
            e.iter().collect::<Vec<_>>(),
            [
                ("http", "https://b.example/asap"),
                ("ws", "wss://a.example/asap/ws")
            ]
        );
        let collected: RegistryEndpoints = [("http", "h"), ("http", "h2")].into_iter().collect();
        assert_eq!(collected.iter().collect::<Vec<_>>(), [("http", "h2")]);
        // Not an object: the error says what was expected.
        let err = serde_json::from_str::<RegistryEndpoints>("[1]").unwrap_err();
        assert!(
            err.to_string()
                .contains("an object of endpoint kind to URL strings"),
            "{err}"
        );
    }
    use crate::discovery::Lookup;
    use std::sync::Arc;
    use std::time::Instant;
    fn base() -> Instant {
        crate::test_clock::base()
    }

    const REG: &str = r#"{"version":"1.0","updated_at":"2026-02-07T00:00:00Z","agents":[{"id":"urn:asap:agent:a","name":"A","description":"d","endpoints":{"http":"h","ws":"w","http":"h2"},"skills":["x","y"],"asap_version":"0.1"},{"id":"urn:asap:agent:b","name":"B","description":"d","endpoints":{},"asap_version":"0.1"}]}"#;

    #[test]
    fn parse_queries_and_errors() {
        let r = LiteRegistry::from_slice(REG.as_bytes()).unwrap();
        assert_eq!(
            r.agents[0].endpoints.iter().collect::<Vec<_>>(),
            [("http", "h2"), ("ws", "w")]
        );
        assert_eq!(r.find_by_skill("y").len(), 1);
        assert!(r.find_by_skill("X").is_empty());
        assert_eq!(r.find_by_id("urn:asap:agent:b").unwrap().name, "B");
        assert!(r.find_by_id("urn:asap:agent:zz").is_none());
        assert!(r.agents[1].skills.is_empty() && r.agents[1].endpoints.is_empty());
        for (bad, path) in [
            (r#"{"version":"1","updated_at":"2026-01-01","x":1}"#, "x"),
            (r#"{"version":"1"}"#, "updated_at"),
            (r#"{"version":"1","updated_at":"not a date"}"#, "updated_at"),
            (
                r#"{"version":"1","updated_at":"2026-01-01","agents":[{"id":"urn:asap:agent:a","name":"A","description":"d","endpoints":{"http":1},"asap_version":"0.1"}]}"#,
                "agents[0].endpoints.http",
            ),
            (
                r#"{"version":"1","updated_at":"2026-01-01","agents":[{"id":"urn:asap:agent:a","name":"A","description":"d","endpoints":{},"asap_version":"0.1","extra":true}]}"#,
                "agents[0].extra",
            ),
        ] {
            let e = LiteRegistry::from_slice(bad.as_bytes()).unwrap_err();
            assert_eq!(e.path, path, "{bad}: {e}");
        }
    }

    #[test]
    fn cache_ttl_etag_and_errors() {
        let t0 = base();
        let url = "https://registry.example.com/registry.json";
        let mut c = RegistryCache::new(RegistryCacheConfig {
            ttl: Duration::from_secs(900),
            capacity: 1,
        });
        let resp = http::Response::builder()
            .status(200)
            .header("etag", "\"r1\"")
            .body(REG.as_bytes().to_vec())
            .unwrap();
        let first = c.handle_response(url, &resp, t0).unwrap().fresh().unwrap();
        let Lookup::Fresh(again) = c.lookup(url, t0 + Duration::from_secs(899)).unwrap() else {
            panic!()
        };
        assert!(Arc::ptr_eq(&first, &again));
        let Lookup::Transmit(req) = c.lookup(url, t0 + Duration::from_secs(900)).unwrap() else {
            panic!()
        };
        assert_eq!(req.headers()["if-none-match"], "\"r1\"");
        let nm = http::Response::builder()
            .status(304)
            .body(Vec::new())
            .unwrap();
        let t1 = t0 + Duration::from_secs(900);
        assert!(Arc::ptr_eq(
            &c.handle_response(url, &nm, t1).unwrap().fresh().unwrap(),
            &first
        ));
        assert!(c
            .lookup(url, t1 + Duration::from_secs(899))
            .unwrap()
            .fresh()
            .is_some());
        let e500 = http::Response::builder()
            .status(500)
            .body(Vec::new())
            .unwrap();
        assert!(c.handle_response(url, &e500, t1).is_err());
        assert!(c.is_empty());
        // A 304 with nothing stored: the whole registry again, unconditionally.
        let req = c.handle_response(url, &nm, t1).unwrap().transmit().unwrap();
        assert_eq!(req.uri(), url);
        assert!(req.headers().get("if-none-match").is_none());
        assert_eq!(
            c.handle_response(url, &nm, t1).unwrap_err(),
            DiscoveryError::NotModifiedWithoutCache
        );
        let bad = http::Response::builder()
            .status(200)
            .body(b"[]".to_vec())
            .unwrap();
        assert!(matches!(
            c.handle_response(url, &bad, t1),
            Err(DiscoveryError::InvalidRegistry(_))
        ));
        assert!(c.lookup("file:registry.json", t1).is_err());
        assert!(c.lookup("not a url", t1).is_err());
        c.handle_response(url, &resp, t1).unwrap();
        c.handle_response("https://other.example/r.json", &resp, t1)
            .unwrap();
        assert_eq!(c.len(), 1);
        c.invalidate("https://other.example/r.json");
        assert!(c.is_empty());
    }
}
