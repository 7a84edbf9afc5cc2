//! One HTTP cache for every discovery document: freshness, `ETag`
//! revalidation with `If-None-Match`, the 304 / 2xx / error classification,
//! bounded LRU size. [`ManifestCache`](super::ManifestCache),
//! [`HealthCache`](super::HealthCache) and [`RegistryCache`](super::RegistryCache)
//! are this cache over their [`CacheDocument`].

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::lru::LruMap;
use super::DiscoveryError;
use crate::client::get_request;

/// Longest freshness taken from `Cache-Control: max-age` (one day, as the reference).
pub const MAX_AGE_CAP: Duration = Duration::from_secs(86_400);

/// What a cache answers: a fresh value, or a request to perform first.
#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // handed straight to the caller; boxing would only add an allocation
pub enum Lookup<T> {
    /// A fresh value; no request needed.
    Fresh(Arc<T>),
    /// Perform this request and give the response to the cache's `handle_response`.
    Transmit(http::Request<Vec<u8>>),
}

impl<T> Lookup<T> {
    /// The fresh value, if any.
    #[must_use]
    pub fn fresh(self) -> Option<Arc<T>> {
        match self {
            Self::Fresh(v) => Some(v),
            Self::Transmit(_) => None,
        }
    }

    /// The request to perform, if any.
    #[must_use]
    pub fn transmit(self) -> Option<http::Request<Vec<u8>>> {
        match self {
            Self::Fresh(_) => None,
            Self::Transmit(r) => Some(r),
        }
    }
}

/// A document an [`HttpCache`] fetches with `GET` and stores: where it lives,
/// how its answer decodes, how long it stays fresh.
pub trait CacheDocument: Sized {
    /// Settings of a cache of this document.
    type Config: Copy + std::fmt::Debug + PartialEq;
    /// Whether a stale entry with an ETag is revalidated with `If-None-Match`
    /// (a 304 is only accepted from documents that revalidate).
    const REVALIDATE: bool;
    /// Entries a cache keeps at once (least recently used forgotten first).
    fn capacity(config: &Self::Config) -> usize;
    /// The cache key of the URL a caller names.
    fn key(url: &str) -> String {
        url.to_owned()
    }
    /// The URL to `GET` for a key.
    fn request_url(key: &str) -> Result<String, DiscoveryError>;
    /// How long `value` stays fresh after the 200 or 304 `response` that stored it.
    fn freshness(
        config: &Self::Config,
        response: &http::Response<Vec<u8>>,
        value: &Self,
    ) -> Duration;
    /// Whether a status outside 2xx is still an answer to decode (health: 503).
    fn is_answer(_status: http::StatusCode) -> bool {
        false
    }
    /// Decodes an answer: a 2xx with an identity body, or a status
    /// [`is_answer`](Self::is_answer) accepts (body encoding unchecked).
    fn decode(response: &http::Response<Vec<u8>>) -> Result<Self, DiscoveryError>;
}

#[derive(Debug, Clone)]
struct Entry<T> {
    value: Arc<T>,
    etag: Option<String>,
    fresh_until: Instant,
}

#[derive(Debug, Clone)]
enum Slot<T> {
    Stored(Entry<T>),
    /// A 304 came for an entry that was gone (evicted or invalidated while the
    /// revalidation was in flight) and an unconditional GET was handed out;
    /// a 304 to that one is the server's fault.
    Refetching,
}

/// Documents of one kind keyed by URL, fresh while `now < fresh_until`
/// (set from [`CacheDocument::freshness`] when a 200 or 304 is handled).
///
/// Call protocol: [`lookup`](Self::lookup) → `Fresh(value)`, or
/// `Transmit(req)`: perform `req` and hand the response to
/// [`handle_response`](Self::handle_response), which answers with a
/// `Lookup` again — `Fresh` with the stored value, or (a 304 for an entry
/// evicted meanwhile) `Transmit` with an unconditional GET to perform the
/// same way. On a transport failure, [`invalidate`](Self::invalidate).
/// Status ≥ 400, an invalid document, or a 304 to an unconditional refetch
/// evict the entry and return the error. Concurrent lookups of one URL each
/// get a `Transmit`; coalescing them is the adapter's choice. Entries expire
/// lazily at `lookup`; the cache needs no timer.
#[derive(Debug, Clone)]
pub struct HttpCache<T: CacheDocument> {
    config: T::Config,
    entries: LruMap<Slot<T>>,
}

impl<T: CacheDocument> HttpCache<T> {
    /// An empty cache.
    #[must_use]
    pub fn new(config: T::Config) -> Self {
        Self {
            entries: LruMap::new(T::capacity(&config)),
            config,
        }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &T::Config {
        &self.config
    }

    /// A fresh value for `url`, or the `GET` to perform (with `If-None-Match`
    /// when a stale entry has an ETag and the document revalidates).
    pub fn lookup(&mut self, url: &str, now: Instant) -> Result<Lookup<T>, DiscoveryError> {
        let key = T::key(url);
        let etag = match self.entries.get_mut(&key) {
            Some(Slot::Stored(e)) if now < e.fresh_until => {
                return Ok(Lookup::Fresh(Arc::clone(&e.value)))
            }
            Some(Slot::Stored(e)) if T::REVALIDATE => e.etag.clone(),
            _ => None,
        };
        request::<T>(url, &key, etag.as_deref()).map(Lookup::Transmit)
    }

    /// Takes the response to a request this cache handed out; freshness from
    /// [`CacheDocument::freshness`].
    pub fn handle_response(
        &mut self,
        url: &str,
        response: &http::Response<Vec<u8>>,
        now: Instant,
    ) -> Result<Lookup<T>, DiscoveryError> {
        self.store(url, response, None, now)
    }

    /// As [`handle_response`](Self::handle_response), but the value stays
    /// fresh for `ttl` (e.g. a health verdict for its agent manifest's `ttl_seconds`).
    pub fn handle_response_with_ttl(
        &mut self,
        url: &str,
        response: &http::Response<Vec<u8>>,
        ttl: Duration,
        now: Instant,
    ) -> Result<Lookup<T>, DiscoveryError> {
        self.store(url, response, Some(ttl), now)
    }

    fn store(
        &mut self,
        url: &str,
        response: &http::Response<Vec<u8>>,
        ttl: Option<Duration>,
        now: Instant,
    ) -> Result<Lookup<T>, DiscoveryError> {
        let key = T::key(url);
        let result = self.apply(url, &key, response, ttl, now);
        if result.is_err() {
            self.entries.remove(&key);
        }
        result
    }

    fn apply(
        &mut self,
        url: &str,
        key: &str,
        response: &http::Response<Vec<u8>>,
        ttl: Option<Duration>,
        now: Instant,
    ) -> Result<Lookup<T>, DiscoveryError> {
        let mut etag = response
            .headers()
            .get(http::header::ETAG)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let value = if T::REVALIDATE && response.status() == http::StatusCode::NOT_MODIFIED {
            match self.entries.peek(key) {
                Some(Slot::Stored(e)) => {
                    etag = etag.or_else(|| e.etag.clone());
                    Arc::clone(&e.value)
                }
                Some(Slot::Refetching) => return Err(DiscoveryError::NotModifiedWithoutCache),
                None => {
                    self.entries.insert(key.to_owned(), Slot::Refetching);
                    return request::<T>(url, key, None).map(Lookup::Transmit);
                }
            }
        } else {
            Arc::new(decode_answer::<T>(response)?)
        };
        let fresh_for = ttl.unwrap_or_else(|| T::freshness(&self.config, response, &value));
        self.entries.insert(
            key.to_owned(),
            Slot::Stored(Entry {
                value: Arc::clone(&value),
                etag,
                fresh_until: now.checked_add(fresh_for).unwrap_or(now),
            }),
        );
        Ok(Lookup::Fresh(value))
    }

    fn entry(&self, url: &str) -> Option<&Entry<T>> {
        match self.entries.peek(&T::key(url)) {
            Some(Slot::Stored(e)) => Some(e),
            _ => None,
        }
    }

    /// The stored value for `url`, fresh or not, without changing recency.
    #[must_use]
    pub fn peek(&self, url: &str) -> Option<Arc<T>> {
        self.entry(url).map(|e| Arc::clone(&e.value))
    }

    /// When the stored value for `url` stops being fresh.
    #[must_use]
    pub fn fresh_until(&self, url: &str) -> Option<Instant> {
        self.entry(url).map(|e| e.fresh_until)
    }

    /// Forgets `url` (after a transport failure, as the reference does).
    pub fn invalidate(&mut self, url: &str) {
        self.entries.remove(&T::key(url));
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// URLs remembered (including unconditional refetches in flight).
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

/// The `GET` for `key` (`url` is what the caller named, for the error).
fn request<T: CacheDocument>(
    url: &str,
    key: &str,
    etag: Option<&str>,
) -> Result<http::Request<Vec<u8>>, DiscoveryError> {
    get_request(&T::request_url(key)?, etag).map_err(|reason| DiscoveryError::InvalidUrl {
        url: url.to_owned(),
        reason,
    })
}

/// Classifies a response other than an accepted 304: 2xx (identity body) and
/// the document's extra answers decode; ≥ 400 and the rest are errors.
pub(crate) fn decode_answer<T: CacheDocument>(
    response: &http::Response<Vec<u8>>,
) -> Result<T, DiscoveryError> {
    let status = response.status();
    if status.is_success() {
        check_encoding(response)?;
        T::decode(response)
    } else if T::is_answer(status) {
        T::decode(response)
    } else if status.as_u16() >= 400 {
        Err(DiscoveryError::HttpStatus {
            status: status.as_u16(),
            snippet: snippet(response.body()),
        })
    } else {
        Err(DiscoveryError::UnexpectedStatus {
            status: status.as_u16(),
        })
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

/// The first usable `Cache-Control: max-age` of a response.
pub(crate) fn max_age(response: &http::Response<Vec<u8>>) -> Option<Duration> {
    response
        .headers()
        .get_all(http::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(parse_max_age)
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn base() -> Instant {
        crate::test_clock::base()
    }

    /// A document whose body is its value, fresh for `max-age` or 10 s.
    #[derive(Debug, Clone, PartialEq)]
    struct Text(String);

    impl CacheDocument for Text {
        type Config = usize;
        const REVALIDATE: bool = true;
        fn capacity(config: &usize) -> usize {
            *config
        }
        fn request_url(key: &str) -> Result<String, DiscoveryError> {
            Ok(format!("http://docs.example/{key}"))
        }
        fn freshness(_: &usize, response: &http::Response<Vec<u8>>, _: &Self) -> Duration {
            max_age(response).unwrap_or(Duration::from_secs(10))
        }
        fn decode(response: &http::Response<Vec<u8>>) -> Result<Self, DiscoveryError> {
            Ok(Self(String::from_utf8_lossy(response.body()).into_owned()))
        }
    }

    fn resp(status: u16, etag: Option<&str>, body: &str) -> http::Response<Vec<u8>> {
        let mut b = http::Response::builder().status(status);
        if let Some(e) = etag {
            b = b.header("etag", e);
        }
        b.body(body.as_bytes().to_vec()).unwrap()
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
    fn classification_and_revalidation() {
        let t0 = base();
        let mut c = HttpCache::<Text>::new(2);
        let Lookup::Transmit(req) = c.lookup("a", t0).unwrap() else {
            panic!()
        };
        assert_eq!(req.uri(), "http://docs.example/a");
        let v = c
            .handle_response("a", &resp(200, Some("\"1\""), "one"), t0)
            .unwrap();
        assert_eq!(v.fresh().unwrap().0, "one");
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(c.fresh_until("a"), Some(t1));
        let req = c.lookup("a", t1).unwrap().transmit().unwrap();
        assert_eq!(req.headers()["if-none-match"], "\"1\"");
        // 304 keeps the value and the old ETag; max-age from the 304 applies.
        let nm = http::Response::builder()
            .status(304)
            .header("cache-control", "max-age=99")
            .body(Vec::new())
            .unwrap();
        assert_eq!(
            c.handle_response("a", &nm, t1).unwrap().fresh().unwrap().0,
            "one"
        );
        assert_eq!(c.fresh_until("a"), Some(t1 + Duration::from_secs(99)));
        // Errors evict and say what happened.
        assert!(matches!(
            c.handle_response("a", &resp(503, None, "busy"), t1),
            Err(DiscoveryError::HttpStatus { status: 503, ref snippet }) if snippet == "busy"
        ));
        assert!(c.peek("a").is_none());
        assert_eq!(
            c.handle_response("b", &resp(301, None, ""), t1)
                .unwrap_err(),
            DiscoveryError::UnexpectedStatus { status: 301 }
        );
        let gz = http::Response::builder()
            .status(200)
            .header("content-encoding", "gzip")
            .body(Vec::new())
            .unwrap();
        assert!(matches!(
            c.handle_response("b", &gz, t1),
            Err(DiscoveryError::UnsupportedContentEncoding(_))
        ));
        // With a caller's TTL the document's own freshness is not consulted.
        c.handle_response_with_ttl("c", &resp(200, None, "c"), Duration::from_secs(3), t1)
            .unwrap();
        assert_eq!(c.fresh_until("c"), Some(t1 + Duration::from_secs(3)));
        c.clear();
        assert!(c.is_empty());
        assert_eq!(*c.config(), 2);
    }

    #[test]
    fn not_modified_after_eviction_fetches_again() {
        let t0 = base();
        let mut c = HttpCache::<Text>::new(1);
        c.handle_response("a", &resp(200, Some("\"1\""), "one"), t0)
            .unwrap();
        let stale = t0 + Duration::from_secs(10);
        let conditional = c.lookup("a", stale).unwrap().transmit().unwrap();
        assert!(conditional.headers().contains_key("if-none-match"));
        // Another document takes the only slot while the revalidation is in flight.
        c.handle_response("b", &resp(200, None, "two"), stale)
            .unwrap();
        assert!(c.peek("a").is_none());
        let Lookup::Transmit(again) = c.handle_response("a", &resp(304, None, ""), stale).unwrap()
        else {
            panic!("a 304 for an evicted entry is a new fetch")
        };
        assert_eq!(again.uri(), "http://docs.example/a");
        assert!(!again.headers().contains_key("if-none-match"));
        let v = c
            .handle_response("a", &resp(200, Some("\"2\""), "uno"), stale)
            .unwrap();
        assert_eq!(v.fresh().unwrap().0, "uno");
        assert_eq!(c.len(), 1);
    }

    proptest! {
        /// Whatever the server answers (including 304 to everything): every
        /// lookup ends in a value or an error after at most two requests,
        /// the second one unconditional, and the cache stays within capacity.
        #[test]
        fn every_lookup_ends_within_two_requests(
            answers in proptest::collection::vec((0u8..4, 0usize..3, 0u64..30), 1..80),
        ) {
            let keys = ["a", "b", "c"];
            let mut c = HttpCache::<Text>::new(2);
            let mut now = base();
            for (answer, k, step) in answers {
                now += Duration::from_secs(step);
                let mut looked = c.lookup(keys[k], now).unwrap();
                let mut requests = 0;
                while let Lookup::Transmit(req) = looked {
                    requests += 1;
                    prop_assert!(requests <= 2, "a third request for one lookup");
                    if requests == 2 {
                        prop_assert!(!req.headers().contains_key("if-none-match"));
                    }
                    let r = match answer {
                        0 => resp(200, Some("\"e\""), "v"),
                        1 => resp(500, None, ""),
                        // Evict someone else first, so a 304 may find nothing.
                        2 => {
                            c.invalidate(keys[(k + 1) % 3]);
                            resp(304, None, "")
                        }
                        _ => resp(304, None, ""),
                    };
                    match c.handle_response(keys[k], &r, now) {
                        Ok(l) => looked = l,
                        Err(_) => break,
                    }
                }
                prop_assert!(c.len() <= 2);
            }
        }
    }
}
