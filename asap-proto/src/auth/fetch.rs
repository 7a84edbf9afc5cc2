//! Outgoing fetches of the auth machines, and the single-flight refresh
//! bookkeeping the document caches (JWKS, OIDC configuration, access token) share.

use std::sync::Arc;
use std::time::{Duration, Instant};

/// Names one fetch a machine handed out; its result is reported under this id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FetchId(pub(crate) u64);

impl FetchId {
    /// The number (unique per machine, increasing).
    #[must_use]
    pub fn get(self) -> u64 {
        self.0
    }
}

/// A request to perform: send it, then report the response (or the transport
/// failure) to the machine that issued it, naming [`id`](Self::id).
#[derive(Debug)]
#[must_use]
pub struct Fetch {
    /// The id to report the result under.
    pub id: FetchId,
    /// The request.
    pub request: http::Request<Vec<u8>>,
}

/// What a single-flight slot decides when its value is missing or stale.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Begin {
    /// Start a fetch with this id.
    Start(FetchId),
    /// One is in flight; wait for it.
    Joined(FetchId),
    /// No fetch now (a recent one failed, or the rate limit holds).
    Refused,
}

#[derive(Debug, Clone)]
struct Stored<T> {
    value: Arc<T>,
    fresh_until: Instant,
}

/// One cached document with single-flight refresh, failure back-off and
/// stale-if-error: the last good value is kept until a good one replaces it.
#[derive(Debug, Clone)]
pub(crate) struct RefreshSlot<T> {
    stored: Option<Stored<T>>,
    in_flight: Option<(FetchId, Instant)>,
    last_start: Option<Instant>,
    last_failure: Option<Instant>,
    next_id: u64,
    started: u64,
    /// A fetch not reported within this is taken as lost (its task died).
    fetch_timeout: Duration,
    /// After a failure, no new fetch before this has passed.
    failure_backoff: Duration,
}

impl<T> RefreshSlot<T> {
    pub(crate) fn new(fetch_timeout: Duration, failure_backoff: Duration) -> Self {
        Self {
            stored: None,
            in_flight: None,
            last_start: None,
            last_failure: None,
            next_id: 0,
            started: 0,
            fetch_timeout,
            failure_backoff,
        }
    }

    /// The stored value, fresh or stale.
    pub(crate) fn value(&self) -> Option<&Arc<T>> {
        self.stored.as_ref().map(|s| &s.value)
    }

    pub(crate) fn is_fresh(&self, now: Instant) -> bool {
        self.stored.as_ref().is_some_and(|s| now < s.fresh_until)
    }

    /// Fetches started so far.
    pub(crate) fn fetches_started(&self) -> u64 {
        self.started
    }

    /// The fetch in flight, forgetting one that outlived `fetch_timeout`.
    pub(crate) fn in_flight(&mut self, now: Instant) -> Option<FetchId> {
        if let Some((id, started)) = self.in_flight {
            if now.saturating_duration_since(started) >= self.fetch_timeout {
                self.in_flight = None;
                self.last_failure = Some(now);
                return None;
            }
            return Some(id);
        }
        None
    }

    /// Joins the fetch in flight, or starts one unless the last failure is
    /// recent or `min_interval` since the last start has not passed.
    pub(crate) fn begin(&mut self, now: Instant, min_interval: Duration) -> Begin {
        if let Some(id) = self.in_flight(now) {
            return Begin::Joined(id);
        }
        if self
            .last_failure
            .is_some_and(|f| now.saturating_duration_since(f) < self.failure_backoff)
        {
            return Begin::Refused;
        }
        if self
            .last_start
            .is_some_and(|s| now.saturating_duration_since(s) < min_interval)
        {
            return Begin::Refused;
        }
        let id = FetchId(self.next_id);
        self.next_id += 1;
        self.started += 1;
        self.in_flight = Some((id, now));
        self.last_start = Some(now);
        Begin::Start(id)
    }

    /// Whether `id` is the fetch in flight (a late or unknown id is not).
    pub(crate) fn is_current(&self, id: FetchId) -> bool {
        self.in_flight.is_some_and(|(i, _)| i == id)
    }

    /// The fetch `id` brought `value`, fresh for `ttl`.
    pub(crate) fn succeed(&mut self, id: FetchId, value: T, ttl: Duration, now: Instant) -> Arc<T> {
        if self.is_current(id) {
            self.in_flight = None;
        }
        self.last_failure = None;
        let value = Arc::new(value);
        self.stored = Some(Stored {
            value: Arc::clone(&value),
            fresh_until: now.checked_add(ttl).unwrap_or(now),
        });
        value
    }

    /// The fetch `id` failed; the last good value stays.
    pub(crate) fn fail(&mut self, id: FetchId, now: Instant) {
        if self.is_current(id) {
            self.in_flight = None;
            self.last_failure = Some(now);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_flight_backoff_and_timeout() {
        let t0 = crate::test_clock::base();
        let s = Duration::from_secs;
        let mut slot: RefreshSlot<u32> = RefreshSlot::new(s(15), s(5));
        let Begin::Start(a) = slot.begin(t0, s(30)) else {
            panic!()
        };
        assert_eq!(slot.begin(t0, s(30)), Begin::Joined(a));
        slot.fail(a, t0 + s(1));
        assert_eq!(slot.begin(t0 + s(2), Duration::ZERO), Begin::Refused);
        let Begin::Start(b) = slot.begin(t0 + s(6), Duration::ZERO) else {
            panic!()
        };
        assert_ne!(a, b);
        // Unique and increasing per machine: the first fetch is 0, the next 1.
        assert_eq!((a.get(), b.get()), (0, 1));
        // Lost fetch: after the timeout it is forgotten, and counts as a failure.
        assert_eq!(slot.in_flight(t0 + s(21)), None);
        assert_eq!(slot.begin(t0 + s(22), Duration::ZERO), Begin::Refused);
        let Begin::Start(c) = slot.begin(t0 + s(27), Duration::ZERO) else {
            panic!()
        };
        // A late answer to `b` still stores a good value but leaves `c` in flight.
        slot.succeed(b, 7, s(60), t0 + s(28));
        assert_eq!(slot.value().map(|v| **v), Some(7));
        assert!(slot.is_current(c));
        assert!(!slot.is_current(b));
        assert_eq!(slot.begin(t0 + s(28), Duration::ZERO), Begin::Joined(c));
        // A late failure of `b` neither ends `c` nor starts a back-off.
        slot.fail(b, t0 + s(28));
        assert_eq!(slot.begin(t0 + s(28), Duration::ZERO), Begin::Joined(c));
        slot.succeed(c, 8, s(60), t0 + s(29));
        assert!(slot.is_fresh(t0 + s(88)));
        assert!(!slot.is_fresh(t0 + s(89)));
        assert_eq!(slot.fetches_started(), 3);
    }
}

/// `application/x-www-form-urlencoded` as Python's `urlencode` writes it
/// (unreserved `A-Za-z0-9_.-~` kept, space as `+`, the rest `%XX`).
pub(crate) fn form_encode(pairs: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        form_escape(k, &mut out);
        out.push('=');
        form_escape(v, &mut out);
    }
    out
}

pub(crate) fn form_escape(s: &str, out: &mut String) {
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'_' | b'.' | b'-' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            _ => {
                const HEX: &[u8; 16] = b"0123456789ABCDEF";
                out.push('%');
                out.push(HEX[usize::from(b >> 4)] as char);
                out.push(HEX[usize::from(b & 15)] as char);
            }
        }
    }
}

/// Decodes one `application/x-www-form-urlencoded` component (`None` on a bad escape or non-UTF-8).
pub(crate) fn form_unescape(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = bytes.get(i + 1..i + 3)?;
                let hex = std::str::from_utf8(hex).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// `Basic base64(form(id):form(secret))`, RFC 6749 §2.3.1 `client_secret_basic`.
pub(crate) fn basic_authorization(client_id: &str, client_secret: &str) -> String {
    use base64::Engine as _;
    let mut text = String::new();
    form_escape(client_id, &mut text);
    text.push(':');
    form_escape(client_secret, &mut text);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(text)
    )
}

/// A form `POST` with client authentication, as the reference's clients send it.
pub(crate) fn form_post(
    url: &str,
    content_type: &'static str,
    authorization: Option<&str>,
    body: String,
) -> Result<http::Request<Vec<u8>>, String> {
    let mut b = http::Request::post(url)
        .header(http::header::ACCEPT, "application/json")
        .header(http::header::CONTENT_TYPE, content_type);
    if let Some(a) = authorization {
        b = b.header(http::header::AUTHORIZATION, a);
    }
    b.body(body.into_bytes()).map_err(|e| e.to_string())
}

/// Whether `url` is an absolute `http(s)` URL a request can be built for.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let uri: http::Uri = url
        .parse()
        .map_err(|e: http::uri::InvalidUri| e.to_string())?;
    match (uri.scheme_str(), uri.host()) {
        (Some("https" | "http"), Some(h)) if !h.is_empty() => Ok(()),
        _ => Err("not an absolute http(s) URL".into()),
    }
}

#[cfg(test)]
mod form_tests {
    use super::*;

    #[test]
    fn only_absolute_http_urls_with_a_host_are_fetched() {
        assert_eq!(check_url("https://idp.example.com/jwks"), Ok(()));
        assert_eq!(check_url("http://127.0.0.1:8080/token"), Ok(()));
        // `http://:8080` parses, with an empty host.
        for bad in [
            "http://:8080/jwks",
            "ftp://idp.example.com/jwks",
            "/jwks",
            "idp.example.com",
        ] {
            assert!(check_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn form_encoding_matches_python() {
        assert_eq!(
            form_encode(&[
                ("grant_type", "client_credentials"),
                ("scope", "asap:execute asap:read")
            ]),
            "grant_type=client_credentials&scope=asap%3Aexecute+asap%3Aread"
        );
        assert_eq!(
            form_unescape("asap%3Aexecute+x~").as_deref(),
            Some("asap:execute x~")
        );
        assert_eq!(form_unescape("%zz"), None);
        assert_eq!(
            basic_authorization("my-client", "my-secret"),
            "Basic bXktY2xpZW50Om15LXNlY3JldA=="
        );
    }
}
