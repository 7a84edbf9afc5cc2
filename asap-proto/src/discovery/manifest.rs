//! The manifest as a cached document: freshness from `Cache-Control:
//! max-age` and the manifest's own `ttl_seconds`, revalidated with its ETag.

use std::time::Duration;

use super::cache::{base_key, max_age, CacheDocument, HttpCache};
use super::validation::validate_manifest_bytes;
use super::DiscoveryError;
use crate::client::{BaseUrl, HttpPolicy};
use crate::model::{Manifest, DEFAULT_MANIFEST_TTL_SECONDS};

/// Settings of a [`ManifestCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ManifestCacheConfig {
    /// Agents remembered at once (least recently used forgotten first). Default 1000.
    pub capacity: usize,
    /// Freshness when the response has no usable `max-age`. Default 300 s.
    pub default_ttl: Duration,
    /// Also bound freshness by the manifest's own `ttl_seconds`. Default `true`
    /// (the reference client ignores `ttl_seconds`).
    pub honour_manifest_ttl: bool,
}

impl Default for ManifestCacheConfig {
    fn default() -> Self {
        Self {
            capacity: 1000,
            default_ttl: Duration::from_secs(DEFAULT_MANIFEST_TTL_SECONDS),
            honour_manifest_ttl: true,
        }
    }
}

/// Discovered manifests keyed by agent base URL.
///
/// Freshness of a stored manifest, from the moment its 200 or 304 was handled:
/// `min(max-age or default_ttl, manifest.ttl_seconds)` — the *smaller* of what
/// the HTTP layer and the agent itself allow, so neither a long CDN
/// `max-age` nor a long `ttl_seconds` can keep a manifest past what the other
/// says. A manifest is served while `now < fresh_until`; at exactly
/// `fresh_until` it is stale. A stale entry is kept for revalidation: the
/// lookup's request carries `If-None-Match: <etag>`, and a 304 makes the
/// stored manifest fresh again (freshness recomputed from the 304's headers)
/// without a body.
///
/// Call protocol: [`HttpCache`]'s, keyed by base URL (`http://a` and
/// `http://a/` are one agent).
///
/// ```
/// use std::time::{Duration, Instant};
/// use asap_proto::discovery::{Lookup, ManifestCache, ManifestCacheConfig};
/// let body = br#"{"id":"urn:asap:agent:echo-server","name":"Echo","version":"1.0.0","description":"d","capabilities":{},"endpoints":{"asap":"http://127.0.0.1:8000/asap"}}"#;
/// let mut cache = ManifestCache::new(ManifestCacheConfig::default());
/// let now = Instant::now(); // the adapter's clock
/// let base = "http://127.0.0.1:8000";
/// let Lookup::Transmit(req) = cache.lookup(base, now).unwrap() else { unreachable!() };
/// assert_eq!(req.uri(), "http://127.0.0.1:8000/.well-known/asap/manifest.json");
/// let resp = http::Response::builder().status(200)
///     .header("etag", "\"abc\"").header("cache-control", "public, max-age=300")
///     .body(body.to_vec()).unwrap();
/// let m = cache.handle_response(base, &resp, now).unwrap().fresh().unwrap();
/// assert!(matches!(cache.lookup(base, now).unwrap(), Lookup::Fresh(_)));
/// // 300 s later: revalidate with the ETag; a 304 refreshes without a body.
/// let later = now + Duration::from_secs(300);
/// let Lookup::Transmit(req) = cache.lookup(base, later).unwrap() else { unreachable!() };
/// assert_eq!(req.headers()["if-none-match"], "\"abc\"");
/// let not_modified = http::Response::builder().status(304).body(Vec::new()).unwrap();
/// assert_eq!(cache.handle_response(base, &not_modified, later).unwrap().fresh(), Some(m));
/// ```
pub type ManifestCache = HttpCache<Manifest>;

impl CacheDocument for Manifest {
    type Config = ManifestCacheConfig;
    const REVALIDATE: bool = true;

    fn capacity(config: &ManifestCacheConfig) -> usize {
        config.capacity
    }

    fn key(base_url: &str) -> String {
        base_key(base_url)
    }

    fn request_url(key: &str) -> Result<String, DiscoveryError> {
        // Only builds the URL: the http:// policy is the client's, checked before.
        Ok(BaseUrl::parse(key, HttpPolicy::AllowInsecure)?.manifest_url())
    }

    fn freshness(
        config: &ManifestCacheConfig,
        response: &http::Response<Vec<u8>>,
        manifest: &Manifest,
    ) -> Duration {
        let ttl = max_age(response).unwrap_or(config.default_ttl);
        if config.honour_manifest_ttl {
            ttl.min(Duration::from_secs(manifest.ttl_seconds))
        } else {
            ttl
        }
    }

    fn decode(response: &http::Response<Vec<u8>>) -> Result<Self, DiscoveryError> {
        validate_manifest_bytes(response.body()).map_err(DiscoveryError::InvalidManifest)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::discovery::{Lookup, MAX_AGE_CAP};
    use proptest::prelude::*;
    use std::sync::Arc;
    use std::time::Instant;
    fn base() -> Instant {
        crate::test_clock::base()
    }

    fn manifest_body(ttl: u64) -> Vec<u8> {
        format!(r#"{{"id":"urn:asap:agent:echo-server","name":"Echo","version":"1.0.0","description":"d","capabilities":{{}},"endpoints":{{"asap":"http://a/asap"}},"ttl_seconds":{ttl}}}"#).into_bytes()
    }

    fn ok(ttl: u64, cache_control: Option<&str>, etag: Option<&str>) -> http::Response<Vec<u8>> {
        let mut b = http::Response::builder().status(200);
        if let Some(cc) = cache_control {
            b = b.header("cache-control", cc);
        }
        if let Some(e) = etag {
            b = b.header("etag", e);
        }
        b.body(manifest_body(ttl)).unwrap()
    }

    fn status(s: u16, cache_control: Option<&str>) -> http::Response<Vec<u8>> {
        let mut b = http::Response::builder().status(s);
        if let Some(cc) = cache_control {
            b = b.header("cache-control", cc);
        }
        b.body(Vec::new()).unwrap()
    }

    fn is_fresh(c: &mut ManifestCache, url: &str, now: Instant) -> bool {
        matches!(c.lookup(url, now).unwrap(), Lookup::Fresh(_))
    }

    #[test]
    fn freshness_boundary_is_min_of_max_age_and_ttl() {
        let t0 = base();
        let url = "http://agent";
        // max-age 300, ttl 60 → 60 s.
        let mut c = ManifestCache::new(ManifestCacheConfig::default());
        c.handle_response(url, &ok(60, Some("public, max-age=300"), None), t0)
            .unwrap();
        assert!(is_fresh(
            &mut c,
            url,
            t0 + Duration::from_secs(60) - Duration::from_nanos(1)
        ));
        assert!(!is_fresh(&mut c, url, t0 + Duration::from_secs(60)));
        // max-age 10, ttl 300 → 10 s.
        c.handle_response(url, &ok(300, Some("max-age=10"), None), t0)
            .unwrap();
        assert_eq!(c.fresh_until(url), Some(t0 + Duration::from_secs(10)));
        // No header → default 300 s (bounded by ttl 500 → 300).
        c.handle_response(url, &ok(500, None, None), t0).unwrap();
        assert_eq!(c.fresh_until(url), Some(t0 + Duration::from_secs(300)));
        // Reference behaviour when the manifest TTL is not honoured.
        let mut r = ManifestCache::new(ManifestCacheConfig {
            honour_manifest_ttl: false,
            ..Default::default()
        });
        r.handle_response(url, &ok(1, Some("max-age=999999"), None), t0)
            .unwrap();
        assert_eq!(r.fresh_until(url), Some(t0 + MAX_AGE_CAP));
    }

    #[test]
    fn not_modified_path() {
        let t0 = base();
        let url = "http://agent/";
        let mut c = ManifestCache::new(ManifestCacheConfig::default());
        // First fetch has no If-None-Match.
        let Lookup::Transmit(req) = c.lookup(url, t0).unwrap() else {
            panic!()
        };
        assert!(req.headers().get("if-none-match").is_none());
        assert_eq!(req.headers()["accept"], "application/json");
        let m = c
            .handle_response(url, &ok(300, Some("max-age=30"), Some("\"v1\"")), t0)
            .unwrap()
            .fresh()
            .unwrap();
        let t1 = t0 + Duration::from_secs(30);
        let Lookup::Transmit(req) = c.lookup("http://agent", t1).unwrap() else {
            panic!()
        };
        assert_eq!(req.headers()["if-none-match"], "\"v1\"");
        // The stale entry is still there for the 304.
        assert_eq!(c.peek(url), Some(m.clone()));
        let back = c
            .handle_response(url, &status(304, Some("max-age=100")), t1)
            .unwrap()
            .fresh()
            .unwrap();
        assert!(Arc::ptr_eq(&back, &m));
        assert_eq!(c.fresh_until(url), Some(t1 + Duration::from_secs(100)));
        // A 304 with nothing stored (evicted meanwhile) asks for the whole manifest again...
        c.invalidate(url);
        let Lookup::Transmit(req) = c.handle_response(url, &status(304, None), t1).unwrap() else {
            panic!("a 304 after eviction is a new fetch")
        };
        assert!(req.headers().get("if-none-match").is_none());
        assert_eq!(req.uri(), "http://agent/.well-known/asap/manifest.json");
        assert!(c.peek(url).is_none());
        // ...and a 304 to that unconditional GET is the server's fault, not a loop.
        let e = c.handle_response(url, &status(304, None), t1).unwrap_err();
        assert_eq!(e, DiscoveryError::NotModifiedWithoutCache);
        assert_eq!(e.fault(), crate::error::Fault::Peer);
        assert!(c.is_empty());
        let Lookup::Transmit(req) = c.lookup(url, t1).unwrap() else {
            panic!()
        };
        assert!(req.headers().get("if-none-match").is_none());
        // The refetch's 200 stores the manifest as any first fetch does.
        c.invalidate(url);
        let _ = c.handle_response(url, &status(304, None), t1).unwrap();
        let again = c
            .handle_response(url, &ok(300, None, Some("\"v2\"")), t1)
            .unwrap();
        assert!(again.fresh().is_some());
        assert!(is_fresh(&mut c, url, t1));
    }

    #[test]
    fn errors_evict_and_capacity_bounds() {
        let t0 = base();
        let mut c = ManifestCache::new(ManifestCacheConfig {
            capacity: 2,
            ..Default::default()
        });
        c.handle_response("http://a", &ok(300, None, None), t0)
            .unwrap();
        assert!(matches!(
            c.handle_response("http://a", &status(404, None), t0),
            Err(DiscoveryError::HttpStatus { status: 404, .. })
        ));
        assert!(c.is_empty());
        let bad = http::Response::builder()
            .status(200)
            .body(b"{}".to_vec())
            .unwrap();
        assert!(matches!(
            c.handle_response("http://a", &bad, t0),
            Err(DiscoveryError::InvalidManifest(_))
        ));
        assert!(matches!(
            c.handle_response("http://a", &status(302, None), t0),
            Err(DiscoveryError::UnexpectedStatus { status: 302 })
        ));
        for u in ["http://a", "http://b", "http://c"] {
            c.handle_response(u, &ok(300, None, None), t0).unwrap();
        }
        assert_eq!(c.len(), 2);
        assert!(c.peek("http://a").is_none());
        assert!(matches!(
            c.lookup("::", t0),
            Err(DiscoveryError::InvalidUrl { .. })
        ));
        c.clear();
        assert!(c.is_empty());
        assert_eq!(c.config().capacity, 2);
    }

    #[derive(Debug, Clone)]
    enum Op {
        Advance(u64),
        Lookup(usize),
        Ok(usize, u64, Option<u64>),
        NotModified(usize, Option<u64>),
        Fail(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            3 => (0u64..400).prop_map(Op::Advance),
            4 => (0usize..4).prop_map(Op::Lookup),
            2 => (0usize..4, 1u64..400, proptest::option::of(0u64..400)).prop_map(|(u, t, m)| Op::Ok(u, t, m)),
            2 => (0usize..4, proptest::option::of(0u64..400)).prop_map(|(u, m)| Op::NotModified(u, m)),
            1 => (0usize..4).prop_map(Op::Fail),
        ]
    }

    proptest! {
        /// A cache never serves an entry past its freshness: every `Fresh`
        /// answer comes before `stored_at + min(max-age|300, ttl_seconds)` of
        /// the last 200/304 for that URL.
        #[test]
        fn never_serves_past_freshness(ops in proptest::collection::vec(op(), 0..120)) {
            let urls = ["http://a", "http://b", "http://c", "http://d"];
            let t0 = base();
            let mut now = t0;
            let mut c = ManifestCache::new(ManifestCacheConfig { capacity: 3, ..Default::default() });
            // Model: url -> (deadline, ttl_seconds of stored manifest)
            let mut model: std::collections::HashMap<usize, (Instant, u64)> = Default::default();
            for op in ops {
                match op {
                    Op::Advance(s) => now += Duration::from_secs(s),
                    Op::Lookup(u) => {
                        if let Lookup::Fresh(_) = c.lookup(urls[u], now).unwrap() {
                            let (deadline, _) = model.get(&u).copied().expect("fresh entry without a store");
                            prop_assert!(now < deadline);
                        }
                    }
                    Op::Ok(u, ttl, max_age) => {
                        let cc = max_age.map(|m| format!("max-age={m}"));
                        c.handle_response(urls[u], &ok(ttl, cc.as_deref(), Some("\"e\"")), now).unwrap();
                        let hdr = max_age.filter(|m| *m > 0).unwrap_or(300);
                        model.insert(u, (now + Duration::from_secs(hdr.min(ttl)), ttl));
                    }
                    Op::NotModified(u, max_age) => {
                        let cc = max_age.map(|m| format!("max-age={m}"));
                        match c.handle_response(urls[u], &status(304, cc.as_deref()), now) {
                            Ok(Lookup::Fresh(m)) => {
                                let hdr = max_age.filter(|m| *m > 0).unwrap_or(300);
                                model.insert(u, (now + Duration::from_secs(hdr.min(m.ttl_seconds)), m.ttl_seconds));
                            }
                            Ok(Lookup::Transmit(req)) => {
                                // Nothing was stored: a new, unconditional fetch.
                                prop_assert!(req.headers().get("if-none-match").is_none());
                                model.remove(&u);
                            }
                            Err(_) => { model.remove(&u); }
                        }
                    }
                    Op::Fail(u) => {
                        let _ = c.handle_response(urls[u], &status(500, None), now);
                        model.remove(&u);
                    }
                }
                prop_assert!(c.len() <= 3);
            }
        }
    }
}
