//! Moving-window HTTP rate limiting, as the reference's `limits` package does it.

use std::collections::VecDeque;
use std::fmt;
use std::str::FromStr;
use std::time::{Duration, Instant};

use crate::discovery::lru::LruMap;

/// The reference's default limit string (`ASAP_RATE_LIMIT`).
pub const DEFAULT_RATE_LIMIT: &str = "10/second;100/minute";
/// Default bound on the number of keys (client addresses) tracked at once.
pub const DEFAULT_MAX_KEYS: usize = 10_000;
/// Largest `N` accepted in one limit item. A moving window remembers one
/// instant per allowed request, so memory per key is `Σ N × 16` bytes.
pub const MAX_LIMIT_AMOUNT: u64 = 100_000;

/// The time unit of a limit item (`limits` granularities; a month is 30 days,
/// a year 360, exactly as in `limits`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Granularity {
    /// 1 s.
    Second,
    /// 60 s.
    Minute,
    /// 3 600 s.
    Hour,
    /// 86 400 s.
    Day,
    /// 30 days.
    Month,
    /// 12 × 30 days.
    Year,
}

impl Granularity {
    const ALL: [Granularity; 6] = [
        Self::Second,
        Self::Minute,
        Self::Hour,
        Self::Day,
        Self::Month,
        Self::Year,
    ];

    /// Length in seconds.
    #[must_use]
    pub const fn seconds(self) -> u64 {
        match self {
            Self::Second => 1,
            Self::Minute => 60,
            Self::Hour => 3600,
            Self::Day => 86_400,
            Self::Month => 86_400 * 30,
            Self::Year => 86_400 * 30 * 12,
        }
    }

    /// The singular name (`second`, `minute`, ...).
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::Second => "second",
            Self::Minute => "minute",
            Self::Hour => "hour",
            Self::Day => "day",
            Self::Month => "month",
            Self::Year => "year",
        }
    }

    /// `second`/`seconds`/`Second`... (case-insensitive, optional plural `s`).
    fn from_word(w: &str) -> Option<Self> {
        let lower = w.to_ascii_lowercase();
        let singular = lower.strip_suffix('s').unwrap_or(&lower);
        Self::ALL
            .into_iter()
            .find(|g| g.name() == lower || g.name() == singular)
    }
}

/// One limit: at most `amount` requests in any window of `multiples` × `granularity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RateLimitItem {
    /// Requests allowed per window.
    pub amount: u64,
    /// Number of granularity units in the window (≥ 1).
    pub multiples: u64,
    /// The unit.
    pub granularity: Granularity,
}

impl RateLimitItem {
    /// The window length (saturating).
    #[must_use]
    pub fn window(&self) -> Duration {
        Duration::from_secs(self.granularity.seconds().saturating_mul(self.multiples))
    }
}

/// `limits`' rendering, used in 429 bodies: `"10 per 1 second"`.
impl fmt::Display for RateLimitItem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} per {} {}",
            self.amount,
            self.multiples,
            self.granularity.name()
        )
    }
}

/// A configured limit string is not valid (local configuration error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("couldn't parse rate limit string '{input}': {reason}")]
#[non_exhaustive]
pub struct RateLimitParseError {
    /// The string given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

/// A set of limits that must all pass, parsed from the `limits` notation:
/// items `N/unit`, `N/M units`, `N per unit`, `N per M units` (units
/// `second minute hour day month year`, optional plural, case-insensitive),
/// separated by `;`, `,` or `|`. The word `none` means no limit.
///
/// ```
/// use asap_proto::reliability::RateLimitSpec;
/// let spec: RateLimitSpec = "10/second; 100 per 2 Minutes".parse().unwrap();
/// let texts: Vec<String> = spec.items().iter().map(ToString::to_string).collect();
/// assert_eq!(texts, ["10 per 1 second", "100 per 2 minute"]);
/// assert!(RateLimitSpec::parse("none").unwrap().is_unlimited());
/// assert!(RateLimitSpec::parse("10/fortnight").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct RateLimitSpec {
    items: Vec<RateLimitItem>,
}

impl Default for RateLimitSpec {
    /// The reference default, `10/second;100/minute`.
    fn default() -> Self {
        Self {
            items: vec![
                RateLimitItem {
                    amount: 10,
                    multiples: 1,
                    granularity: Granularity::Second,
                },
                RateLimitItem {
                    amount: 100,
                    multiples: 1,
                    granularity: Granularity::Minute,
                },
            ],
        }
    }
}

fn is_py_space(c: char) -> bool {
    c.is_whitespace() || matches!(c, '\x1c'..='\x1f')
}

impl RateLimitSpec {
    /// No limits at all.
    #[must_use]
    pub fn unlimited() -> Self {
        Self { items: Vec::new() }
    }

    /// Builds a spec from items.
    #[must_use]
    pub fn from_items(items: Vec<RateLimitItem>) -> Self {
        Self { items }
    }

    /// Parses the `limits` notation (see the type docs).
    pub fn parse(input: &str) -> Result<Self, RateLimitParseError> {
        let err = |reason: String| RateLimitParseError {
            input: input.to_owned(),
            reason,
        };
        if input.trim_matches(is_py_space).eq_ignore_ascii_case("none") {
            return Ok(Self::unlimited());
        }
        let parts: Vec<&str> = input.split([',', ';', '|']).collect();
        let last = parts.len() - 1;
        let mut items = Vec::with_capacity(parts.len());
        for (i, part) in parts.into_iter().enumerate() {
            // `limits`' pattern allows one ':' right before a separator.
            let part = if i < last {
                part.strip_suffix(':').unwrap_or(part)
            } else {
                part
            };
            items.push(parse_item(part).map_err(|r| err(format!("item {}: {r}", i + 1)))?);
        }
        Ok(Self { items })
    }

    /// The items, in configuration order (the order they are checked in).
    #[must_use]
    pub fn items(&self) -> &[RateLimitItem] {
        &self.items
    }

    /// Whether there is no limit at all (`none`).
    #[must_use]
    pub fn is_unlimited(&self) -> bool {
        self.items.is_empty()
    }
}

fn parse_item(s: &str) -> Result<RateLimitItem, String> {
    let s = s.trim_matches(is_py_space);
    let digits_end = |t: &str| t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let n = digits_end(s);
    if n == 0 {
        return Err("expected a number of requests".into());
    }
    let amount: u64 = s[..n]
        .parse()
        .ok()
        .filter(|a| *a <= MAX_LIMIT_AMOUNT)
        .ok_or_else(|| format!("at most {MAX_LIMIT_AMOUNT} requests per window are supported"))?;
    let rest = s[n..].trim_start_matches(is_py_space);
    let rest = if let Some(r) = rest.strip_prefix('/') {
        r
    } else if rest.len() >= 3 && rest.is_char_boundary(3) && rest[..3].eq_ignore_ascii_case("per") {
        &rest[3..]
    } else {
        return Err("expected '/' or 'per' after the number".into());
    };
    let rest = rest.trim_start_matches(is_py_space);
    let m = digits_end(rest);
    // `limits` reads a missing or zero multiple as 1.
    let multiples = if m == 0 {
        1
    } else {
        rest[..m].parse::<u64>().unwrap_or(u64::MAX).max(1)
    };
    let rest = rest[m..].trim_start_matches(is_py_space);
    let w = rest
        .find(|c: char| !c.is_ascii_alphabetic())
        .unwrap_or(rest.len());
    if w == 0 {
        return Err("expected a time unit".into());
    }
    if !rest[w..].chars().all(is_py_space) {
        return Err(format!(
            "unexpected text {:?}",
            rest[w..].trim_matches(is_py_space)
        ));
    }
    let granularity = Granularity::from_word(&rest[..w])
        .ok_or_else(|| format!("no granularity matched for {}", &rest[..w]))?;
    Ok(RateLimitItem {
        amount,
        multiples,
        granularity,
    })
}

impl FromStr for RateLimitSpec {
    type Err = RateLimitParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for RateLimitSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.items.is_empty() {
            return f.write_str("none");
        }
        for (i, item) in self.items.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{item}")?;
        }
        Ok(())
    }
}

/// The answer to one [`SlidingWindowLimiter::check`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RateDecision {
    /// Go ahead; the request was counted against every limit.
    Allowed,
    /// Refuse with HTTP 429 (not counted).
    Limited {
        /// Seconds until the violated window frees a slot (≥ 1): the
        /// `Retry-After` header and `error.data.retry_after`.
        retry_after_secs: u64,
        /// The violated item as `limits` renders it (`"10 per 1 second"`):
        /// `error.data.limit`.
        limit_text: String,
    },
}

impl RateDecision {
    /// Whether the request may proceed.
    #[must_use]
    pub fn is_allowed(&self) -> bool {
        matches!(self, Self::Allowed)
    }
}

/// Per-key moving-window limiter with the reference's semantics (`limits`
/// `MovingWindowRateLimiter` over memory storage, two-phase as `ASAPRateLimiter`):
///
/// * a request is allowed when, for every item, fewer than `amount` allowed
///   requests of the same key lie in the last `window` (a request made at `t`
///   stops counting at exactly `t + window`);
/// * items are tested in order; the first one that fails is reported, and a
///   refused request is counted against no item;
/// * `retry_after_secs = max(1, floor(oldest_counted + window − now))`.
///
/// Memory is bounded: at most `max_keys` keys (the least recently seen key is
/// forgotten first) and at most `amount` instants per item per key.
///
/// Driver (the HTTP server, before decoding the body):
///
/// ```
/// use std::time::{Duration, Instant};
/// use asap_proto::reliability::{RateDecision, RateLimitSpec, SlidingWindowLimiter};
/// let mut limiter = SlidingWindowLimiter::new("2/minute".parse().unwrap());
/// let t0 = Instant::now(); // adapters pass the real clock
/// assert!(limiter.check("127.0.0.1", t0).is_allowed());
/// assert!(limiter.check("127.0.0.1", t0).is_allowed());
/// let d = limiter.check("127.0.0.1", t0 + Duration::from_millis(500));
/// assert_eq!(d, RateDecision::Limited { retry_after_secs: 59, limit_text: "2 per 1 minute".into() });
/// // → 429, header `Retry-After: 59`,
/// //   body `asap_proto::jsonrpc::ErrorResponse::rate_limited_body(59, "2 per 1 minute")`.
/// assert!(limiter.check("127.0.0.1", t0 + Duration::from_secs(60)).is_allowed());
/// ```
#[derive(Debug, Clone)]
pub struct SlidingWindowLimiter {
    spec: RateLimitSpec,
    keys: LruMap<Vec<VecDeque<Instant>>>,
}

impl SlidingWindowLimiter {
    /// A limiter tracking at most [`DEFAULT_MAX_KEYS`] keys.
    #[must_use]
    pub fn new(spec: RateLimitSpec) -> Self {
        Self::with_max_keys(spec, DEFAULT_MAX_KEYS)
    }

    /// A limiter tracking at most `max_keys` keys (at least 1).
    #[must_use]
    pub fn with_max_keys(spec: RateLimitSpec, max_keys: usize) -> Self {
        Self {
            spec,
            keys: LruMap::new(max_keys),
        }
    }

    /// The limits enforced.
    #[must_use]
    pub fn spec(&self) -> &RateLimitSpec {
        &self.spec
    }

    /// Keys currently tracked.
    #[must_use]
    pub fn tracked_keys(&self) -> usize {
        self.keys.len()
    }

    /// Checks one request from `key` at `now`, counting it when allowed.
    pub fn check(&mut self, key: &str, now: Instant) -> RateDecision {
        let items = self.spec.items();
        if items.is_empty() {
            return RateDecision::Allowed;
        }
        if self.keys.peek(key).is_none() {
            self.keys
                .insert(key.to_owned(), vec![VecDeque::new(); items.len()]);
        }
        let Some(windows) = self.keys.get_mut(key) else {
            return RateDecision::Allowed;
        };
        // Phase 1: test every item without counting.
        for (item, hits) in items.iter().zip(windows.iter_mut()) {
            let window = item.window();
            while hits
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= window)
            {
                hits.pop_front();
            }
            if hits.len() as u64 >= item.amount {
                let reset = match hits.front() {
                    Some(oldest) => (*oldest + window).saturating_duration_since(now),
                    None => window,
                };
                return RateDecision::Limited {
                    retry_after_secs: reset.as_secs().max(1),
                    limit_text: item.to_string(),
                };
            }
        }
        // Phase 2: all passed — count the request everywhere.
        for (item, hits) in items.iter().zip(windows.iter_mut()) {
            hits.push_back(now);
            while hits.len() as u64 > item.amount {
                hits.pop_front();
            }
        }
        RateDecision::Allowed
    }

    /// Forgets every key whose windows are all empty at `now` (optional
    /// housekeeping; memory is bounded without it).
    pub fn prune(&mut self, now: Instant) {
        let items = self.spec.items().to_vec();
        self.keys.retain(|_, windows| {
            windows.iter().zip(&items).any(|(hits, item)| {
                hits.back()
                    .is_some_and(|t| now.saturating_duration_since(*t) < item.window())
            })
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An arbitrary base instant; tests then only add explicit durations to it.
    fn base() -> Instant {
        crate::test_clock::base()
    }

    fn spec(s: &str) -> RateLimitSpec {
        s.parse().unwrap()
    }

    #[test]
    fn parses_limits_notation() {
        let cases = [
            (
                "10/second;100/minute",
                vec!["10 per 1 second", "100 per 1 minute"],
            ),
            ("2/minute", vec!["2 per 1 minute"]),
            (
                "5 per hour, 7/2 days | 1 PER 3 Seconds",
                vec!["5 per 1 hour", "7 per 2 day", "1 per 3 second"],
            ),
            ("  3 / 0 month  ", vec!["3 per 1 month"]),
            ("4persecond", vec!["4 per 1 second"]),
            ("1/second:;2/year", vec!["1 per 1 second", "2 per 1 year"]),
            ("0/day", vec!["0 per 1 day"]),
        ];
        for (s, want) in cases {
            let got: Vec<String> = spec(s).items().iter().map(ToString::to_string).collect();
            assert_eq!(got, want, "{s}");
        }
        assert!(spec(" NONE ").is_unlimited());
        assert_eq!(spec("none").to_string(), "none");
        assert_eq!(RateLimitSpec::default(), spec(DEFAULT_RATE_LIMIT));
        for bad in [
            "",
            "10",
            "/second",
            "10/",
            "10/second;",
            "ten/second",
            "10/fortnight",
            "10/second extra",
            "10 / per second",
            "10/second:",
            "-1/second",
            "100001/second",
            "10/second: ;1/day",
            "10 perr second",
        ] {
            assert!(RateLimitSpec::parse(bad).is_err(), "{bad:?}");
        }
        let e = RateLimitParseError {
            input: "x".into(),
            reason: "r".into(),
        };
        assert_eq!(e.to_string(), "couldn't parse rate limit string 'x': r");
    }

    #[test]
    fn window_boundaries() {
        let t0 = base();
        let mut l = SlidingWindowLimiter::new(spec("2/second"));
        assert!(l.check("a", t0).is_allowed());
        assert!(l.check("a", t0 + Duration::from_millis(400)).is_allowed());
        // One nanosecond before the first request leaves the window: refused.
        let almost = t0 + Duration::from_secs(1) - Duration::from_nanos(1);
        assert_eq!(
            l.check("a", almost),
            RateDecision::Limited {
                retry_after_secs: 1,
                limit_text: "2 per 1 second".into()
            }
        );
        // Exactly one window later the first request no longer counts.
        assert!(l.check("a", t0 + Duration::from_secs(1)).is_allowed());
        assert!(!l.check("a", t0 + Duration::from_secs(1)).is_allowed());
        // Other keys are independent.
        assert!(l.check("b", t0).is_allowed());
    }

    #[test]
    fn first_violated_item_is_reported_and_refusals_do_not_count() {
        let t0 = base();
        let mut l = SlidingWindowLimiter::new(RateLimitSpec::default());
        for i in 0..10 {
            assert!(l.check("ip", t0 + Duration::from_millis(i)).is_allowed());
        }
        assert_eq!(
            l.check("ip", t0 + Duration::from_millis(10)),
            RateDecision::Limited {
                retry_after_secs: 1,
                limit_text: "10 per 1 second".into()
            }
        );
        // 100/minute: 10 per second for 10 seconds, then the minute limit bites.
        let mut allowed = 10;
        for s in 1..20u64 {
            for i in 0..15u64 {
                if l.check("ip", t0 + Duration::from_secs(s) + Duration::from_millis(i))
                    .is_allowed()
                {
                    allowed += 1;
                }
            }
        }
        assert_eq!(allowed, 100);
        let d = l.check("ip", t0 + Duration::from_secs(20));
        assert_eq!(
            d,
            RateDecision::Limited {
                retry_after_secs: 40,
                limit_text: "100 per 1 minute".into()
            }
        );
    }

    #[test]
    fn zero_amount_always_limits_and_none_never() {
        let t0 = base();
        let mut l = SlidingWindowLimiter::new(spec("0/minute"));
        assert_eq!(
            l.check("k", t0),
            RateDecision::Limited {
                retry_after_secs: 60,
                limit_text: "0 per 1 minute".into()
            }
        );
        let mut n = SlidingWindowLimiter::new(RateLimitSpec::unlimited());
        for _ in 0..1000 {
            assert!(n.check("k", t0).is_allowed());
        }
        assert_eq!(n.tracked_keys(), 0);
    }

    #[test]
    fn keys_are_bounded_and_pruned() {
        let t0 = base();
        let mut l = SlidingWindowLimiter::with_max_keys(spec("1/second"), 3);
        for k in 0..10 {
            assert!(l.check(&format!("k{k}"), t0).is_allowed());
            assert!(l.tracked_keys() <= 3);
        }
        // The oldest keys were forgotten (they get a fresh window).
        assert!(l.check("k0", t0).is_allowed());
        assert!(!l.check("k9", t0).is_allowed());
        l.prune(t0 + Duration::from_secs(1));
        assert_eq!(l.tracked_keys(), 0);
        assert_eq!(l.spec().items().len(), 1);
    }

    #[test]
    fn clock_stepping_back_is_harmless() {
        let t0 = base() + Duration::from_secs(10);
        let mut l = SlidingWindowLimiter::new(spec("1/second"));
        assert!(l.check("k", t0).is_allowed());
        let d = l.check("k", t0 - Duration::from_secs(5));
        assert!(
            matches!(d, RateDecision::Limited { retry_after_secs, .. } if retry_after_secs >= 1)
        );
    }

    #[test]
    fn every_unit_has_its_exact_length_and_name() {
        let want = [
            (Granularity::Second, 1, "second"),
            (Granularity::Minute, 60, "minute"),
            (Granularity::Hour, 3_600, "hour"),
            (Granularity::Day, 86_400, "day"),
            (Granularity::Month, 2_592_000, "month"),
            (Granularity::Year, 31_104_000, "year"),
        ];
        for (g, secs, name) in want {
            assert_eq!((g.seconds(), g.name()), (secs, name), "{g:?}");
            let item = RateLimitItem {
                amount: 1,
                multiples: 2,
                granularity: g,
            };
            assert_eq!(item.window(), Duration::from_secs(2 * secs), "{g:?}");
            // Parsed by its name, its plural and in capitals.
            for word in [name.to_owned(), format!("{name}s"), name.to_uppercase()] {
                assert_eq!(
                    spec(&format!("1/{word}")).items()[0].granularity,
                    g,
                    "{word}"
                );
            }
        }
    }

    #[test]
    fn per_must_be_spelled_and_specs_render_with_separators() {
        // Three letters after the number that are not `per` are refused.
        for bad in ["10 xyz second", "10 pe second", "10 p"] {
            let e = RateLimitSpec::parse(bad).unwrap_err();
            assert_eq!(
                e.reason, "item 1: expected '/' or 'per' after the number",
                "{bad}"
            );
        }
        assert_eq!(
            spec("10/second;100/2 minutes|1 per day").to_string(),
            "10 per 1 second; 100 per 2 minute; 1 per 1 day"
        );
        assert_eq!(spec("7/hour").to_string(), "7 per 1 hour");
        assert!(!spec("7/hour").is_unlimited());
        assert!(RateLimitSpec::unlimited().is_unlimited());
    }

    #[test]
    fn tracked_keys_counts_and_prune_keeps_keys_inside_their_window() {
        let t0 = base();
        let mut l = SlidingWindowLimiter::new(spec("1/second;5/minute"));
        assert_eq!(l.tracked_keys(), 0);
        assert!(l.check("a", t0).is_allowed());
        assert!(l.check("b", t0 + Duration::from_secs(30)).is_allowed());
        assert!(l.check("c", t0 + Duration::from_secs(59)).is_allowed());
        assert_eq!(l.tracked_keys(), 3);
        // At t0 + 60 s: a's last request is exactly a minute old (gone), b's and
        // c's are still inside the minute window (and outside the second one).
        l.prune(t0 + Duration::from_secs(60));
        assert_eq!(l.tracked_keys(), 2);
        // b's request of t0 + 30 s still counts against 5/minute.
        for i in 1..5 {
            assert!(l.check("b", t0 + Duration::from_secs(60 + i)).is_allowed());
        }
        assert_eq!(
            l.check("b", t0 + Duration::from_secs(80)),
            RateDecision::Limited {
                retry_after_secs: 10,
                limit_text: "5 per 1 minute".into()
            }
        );
        // c's last request (t0 + 59 s) is a minute old, b's (t0 + 64 s) is not.
        l.prune(t0 + Duration::from_secs(119));
        assert_eq!(l.tracked_keys(), 1);
        l.prune(t0 + Duration::from_secs(200));
        assert_eq!(l.tracked_keys(), 0);
    }

    proptest! {
        #[test]
        fn never_more_than_n_in_any_window(
            amount in 1u64..6,
            window_ms in 1u64..3,
            gaps in proptest::collection::vec(0u64..700, 1..120),
        ) {
            let item = RateLimitItem { amount, multiples: window_ms, granularity: Granularity::Second };
            let window = item.window();
            let mut l = SlidingWindowLimiter::new(RateLimitSpec::from_items(vec![item]));
            let t0 = base();
            let mut now = t0;
            let mut allowed: Vec<Instant> = Vec::new();
            for g in gaps {
                now += Duration::from_millis(g);
                match l.check("k", now) {
                    RateDecision::Allowed => allowed.push(now),
                    RateDecision::Limited { retry_after_secs, .. } => {
                        prop_assert!(retry_after_secs >= 1);
                        // Limited only when the window really is full.
                        let in_window = allowed.iter().filter(|t| now.duration_since(**t) < window).count();
                        prop_assert_eq!(in_window as u64, amount);
                    }
                }
                // No window [t, t + window) holds more than `amount` allowed requests.
                for (i, start) in allowed.iter().enumerate() {
                    let n = allowed[i..].iter().filter(|t| t.duration_since(*start) < window).count();
                    prop_assert!(n as u64 <= amount);
                }
            }
        }

        #[test]
        fn parse_never_panics(s in ".{0,40}") {
            let _ = RateLimitSpec::parse(&s);
        }
    }
}
