//! The manifest cache: `Cache-Control: max-age`, `ETag` revalidation, the
//! manifest's `ttl_seconds`, bounded size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::lru::LruMap;
use super::validation::validate_manifest_bytes;
use super::DiscoveryError;
use crate::client::{get_request, BaseUrl, HttpPolicy};
use crate::model::{Manifest, DEFAULT_MANIFEST_TTL_SECONDS};

/// Longest freshness taken from `Cache-Control: max-age` (one day, as the reference).
pub const MAX_AGE_CAP: Duration = Duration::from_secs(86_400);

/// The answer of a cache lookup.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // handed straight to the caller; boxing would only add an allocation
pub enum Lookup<T> {
    /// A fresh value; no request needed.
    Fresh(Arc<T>),
    /// Perform this request and give the response to the cache's `handle_response`.
    Fetch(http::Request<Vec<u8>>),
}

impl<T> Lookup<T> {
    /// The fresh value, if any.
    #[must_use]
    pub fn fresh(self) -> Option<Arc<T>> {
        match self {
            Self::Fresh(v) => Some(v),
            Self::Fetch(_) => None,
        }
    }
}

/// The cache key of a base URL: trimmed, without trailing `/`.
pub(crate) fn base_key(base_url: &str) -> String {
    base_url.trim().trim_end_matches('/').to_owned()
}

pub(crate) fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body).chars().take(200).collect()
}

/// Refuses compressed bodies (this core does not decompress).
pub(crate) fn check_encoding(resp: &http::Response<Vec<u8>>) -> Result<(), DiscoveryError> {
    match resp
        .headers()
        .get(http::header::CONTENT_ENCODING)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).trim().to_owned())
    {
        Some(enc) if !enc.eq_ignore_ascii_case("identity") => {
            Err(DiscoveryError::UnsupportedContentEncoding(enc))
        }
        _ => Ok(()),
    }
}

fn is_py_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c | 0x1c..=0x1f)
}

/// The reference's reading of `Cache-Control`: the first match of
/// `max-age\s*=\s*(\d+)` (case-insensitive, anywhere in the value); values
/// ≤ 0 are ignored (`None`); values above [`MAX_AGE_CAP`] are capped.
///
/// ```
/// use std::time::Duration;
/// use asap_proto::discovery::parse_max_age;
/// assert_eq!(parse_max_age("public, max-age=300"), Some(Duration::from_secs(300)));
/// assert_eq!(parse_max_age("Max-Age = 99999999999999999999"), Some(Duration::from_secs(86_400)));
/// assert_eq!(parse_max_age("max-age=0"), None);
/// assert_eq!(parse_max_age("no-store"), None);
/// ```
#[must_use]
pub fn parse_max_age(cache_control: &str) -> Option<Duration> {
    let b = cache_control.as_bytes();
    let needle = b"max-age";
    let mut start = 0;
    while start + needle.len() <= b.len() {
        let pos = b[start..]
            .windows(needle.len())
            .position(|w| w.eq_ignore_ascii_case(needle))?;
        let mut i = start + pos + needle.len();
        while i < b.len() && is_py_space(b[i]) {
            i += 1;
        }
        if i < b.len() && b[i] == b'=' {
            i += 1;
            while i < b.len() && is_py_space(b[i]) {
                i += 1;
            }
            let digits = b[i..].iter().take_while(|c| c.is_ascii_digit()).count();
            if digits > 0 {
                let secs = b[i..i + digits].iter().fold(0u64, |acc, d| {
                    acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
                });
                return (secs > 0).then(|| Duration::from_secs(secs).min(MAX_AGE_CAP));
            }
        }
        start += pos + 1;
    }
    None
}

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

#[derive(Debug, Clone)]
struct Entry {
    manifest: Arc<Manifest>,
    etag: Option<String>,
    fresh_until: Instant,
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
/// Call protocol: [`lookup`](Self::lookup) → on `Fetch(req)` perform `req`,
/// then [`handle_response`](Self::handle_response) with the same base URL;
/// on a transport failure, [`invalidate`](Self::invalidate). Concurrent
/// lookups of one URL each get a `Fetch`; coalescing them is the adapter's
/// choice.
///
/// ```
/// use std::time::{Duration, Instant};
/// use asap_proto::discovery::{Lookup, ManifestCache, ManifestCacheConfig};
/// let body = br#"{"id":"urn:asap:agent:echo-server","name":"Echo","version":"1.0.0","description":"d","capabilities":{},"endpoints":{"asap":"http://127.0.0.1:8000/asap"}}"#;
/// let mut cache = ManifestCache::new(ManifestCacheConfig::default());
/// let now = Instant::now(); // the adapter's clock
/// let base = "http://127.0.0.1:8000";
/// let Lookup::Fetch(req) = cache.lookup(base, now).unwrap() else { unreachable!() };
/// assert_eq!(req.uri(), "http://127.0.0.1:8000/.well-known/asap/manifest.json");
/// let resp = http::Response::builder().status(200)
///     .header("etag", "\"abc\"").header("cache-control", "public, max-age=300")
///     .body(body.to_vec()).unwrap();
/// let m = cache.handle_response(base, &resp, now).unwrap();
/// assert!(matches!(cache.lookup(base, now).unwrap(), Lookup::Fresh(_)));
/// // 300 s later: revalidate with the ETag; a 304 refreshes without a body.
/// let later = now + Duration::from_secs(300);
/// let Lookup::Fetch(req) = cache.lookup(base, later).unwrap() else { unreachable!() };
/// assert_eq!(req.headers()["if-none-match"], "\"abc\"");
/// let not_modified = http::Response::builder().status(304).body(Vec::new()).unwrap();
/// assert_eq!(cache.handle_response(base, &not_modified, later).unwrap(), m);
/// ```
#[derive(Debug, Clone)]
pub struct ManifestCache {
    config: ManifestCacheConfig,
    entries: LruMap<Entry>,
}

impl ManifestCache {
    /// An empty cache.
    #[must_use]
    pub fn new(config: ManifestCacheConfig) -> Self {
        Self {
            config,
            entries: LruMap::new(config.capacity),
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &ManifestCacheConfig {
        &self.config
    }

    /// A fresh manifest for `base_url`, or the request to make
    /// (`GET {base}/.well-known/asap/manifest.json`, with `If-None-Match`
    /// when a stale entry has an ETag).
    pub fn lookup(
        &mut self,
        base_url: &str,
        now: Instant,
    ) -> Result<Lookup<Manifest>, DiscoveryError> {
        let key = base_key(base_url);
        let etag = match self.entries.get_mut(&key) {
            Some(e) if now < e.fresh_until => return Ok(Lookup::Fresh(Arc::clone(&e.manifest))),
            Some(e) => e.etag.clone(),
            None => None,
        };
        let base = BaseUrl::parse(&key, HttpPolicy::AllowInsecure)?;
        get_request(&base.manifest_url(), etag.as_deref())
            .map(Lookup::Fetch)
            .map_err(|reason| DiscoveryError::InvalidUrl {
                url: base_url.to_owned(),
                reason,
            })
    }

    /// The stored manifest for `base_url`, fresh or not, without changing recency.
    #[must_use]
    pub fn peek(&self, base_url: &str) -> Option<Arc<Manifest>> {
        self.entries
            .peek(&base_key(base_url))
            .map(|e| Arc::clone(&e.manifest))
    }

    /// When the stored manifest for `base_url` stops being fresh.
    #[must_use]
    pub fn fresh_until(&self, base_url: &str) -> Option<Instant> {
        self.entries
            .peek(&base_key(base_url))
            .map(|e| e.fresh_until)
    }

    fn ttl(&self, response: &http::Response<Vec<u8>>, manifest: &Manifest) -> Duration {
        let header = response
            .headers()
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .find_map(parse_max_age);
        let ttl = header.unwrap_or(self.config.default_ttl);
        if self.config.honour_manifest_ttl {
            ttl.min(Duration::from_secs(manifest.ttl_seconds))
        } else {
            ttl
        }
    }

    /// Takes the response to a [`lookup`](Self::lookup) request: 2xx stores
    /// the validated manifest and its ETag; 304 refreshes the stored one;
    /// status ≥ 400, an invalid manifest or a 304 with nothing stored evict
    /// the entry and return the error.
    pub fn handle_response(
        &mut self,
        base_url: &str,
        response: &http::Response<Vec<u8>>,
        now: Instant,
    ) -> Result<Arc<Manifest>, DiscoveryError> {
        let key = base_key(base_url);
        let result = self.apply(&key, response, now);
        if result.is_err() {
            self.entries.remove(&key);
        }
        result
    }

    fn apply(
        &mut self,
        key: &str,
        response: &http::Response<Vec<u8>>,
        now: Instant,
    ) -> Result<Arc<Manifest>, DiscoveryError> {
        let status = response.status().as_u16();
        let etag = response
            .headers()
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        match status {
            304 => {
                let (manifest, old_etag) = match self.entries.peek(key) {
                    Some(e) => (Arc::clone(&e.manifest), e.etag.clone()),
                    None => return Err(DiscoveryError::NotModifiedWithoutCache),
                };
                let fresh_until = now
                    .checked_add(self.ttl(response, &manifest))
                    .unwrap_or(now);
                self.entries.insert(
                    key.to_owned(),
                    Entry {
                        manifest: Arc::clone(&manifest),
                        etag: etag.or(old_etag),
                        fresh_until,
                    },
                );
                Ok(manifest)
            }
            200..=299 => {
                check_encoding(response)?;
                let manifest = Arc::new(
                    validate_manifest_bytes(response.body())
                        .map_err(DiscoveryError::InvalidManifest)?,
                );
                let fresh_until = now
                    .checked_add(self.ttl(response, &manifest))
                    .unwrap_or(now);
                self.entries.insert(
                    key.to_owned(),
                    Entry {
                        manifest: Arc::clone(&manifest),
                        etag,
                        fresh_until,
                    },
                );
                Ok(manifest)
            }
            400.. => Err(DiscoveryError::HttpStatus {
                status,
                snippet: snippet(response.body()),
            }),
            _ => Err(DiscoveryError::UnexpectedStatus { status }),
        }
    }

    /// Forgets `base_url` (after a transport failure, as the reference does).
    pub fn invalidate(&mut self, base_url: &str) {
        self.entries.remove(&base_key(base_url));
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.entries.clear();
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
    use proptest::prelude::*;
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
    fn max_age_parsing_is_regex_equivalent() {
        let cases: [(&str, Option<u64>); 10] = [
            ("public, max-age=300", Some(300)),
            ("MAX-AGE = 5", Some(5)),
            ("max-age=abc, max-age=7", Some(7)),
            ("s-maxage=9", None),
            ("max-age=-1", None),
            ("max-age=0", None),
            ("max-age=86401", Some(86_400)),
            ("x-max-age=3", Some(3)),
            ("max-age", None),
            ("max-age=\t12junk", Some(12)),
        ];
        for (cc, want) in cases {
            assert_eq!(parse_max_age(cc), want.map(Duration::from_secs), "{cc}");
        }
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
        let Lookup::Fetch(req) = c.lookup(url, t0).unwrap() else {
            panic!()
        };
        assert!(req.headers().get("if-none-match").is_none());
        assert_eq!(req.headers()["accept"], "application/json");
        let m = c
            .handle_response(url, &ok(300, Some("max-age=30"), Some("\"v1\"")), t0)
            .unwrap();
        let t1 = t0 + Duration::from_secs(30);
        let Lookup::Fetch(req) = c.lookup("http://agent", t1).unwrap() else {
            panic!()
        };
        assert_eq!(req.headers()["if-none-match"], "\"v1\"");
        // The stale entry is still there for the 304.
        assert_eq!(c.peek(url), Some(m.clone()));
        let back = c
            .handle_response(url, &status(304, Some("max-age=100")), t1)
            .unwrap();
        assert!(Arc::ptr_eq(&back, &m));
        assert_eq!(c.fresh_until(url), Some(t1 + Duration::from_secs(100)));
        // A 304 with nothing stored is an error the caller resolves by fetching again.
        c.invalidate(url);
        assert_eq!(
            c.handle_response(url, &status(304, None), t1),
            Err(DiscoveryError::NotModifiedWithoutCache)
        );
        let Lookup::Fetch(req) = c.lookup(url, t1).unwrap() else {
            panic!()
        };
        assert!(req.headers().get("if-none-match").is_none());
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
                            Ok(m) => {
                                let hdr = max_age.filter(|m| *m > 0).unwrap_or(300);
                                model.insert(u, (now + Duration::from_secs(hdr.min(m.ttl_seconds)), m.ttl_seconds));
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
