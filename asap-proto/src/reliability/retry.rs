//! Which attempt outcomes are retried, and after how long.

use std::time::Duration;

use super::backoff::Backoff;

/// What one attempt of a request came to, as far as retrying is concerned.
///
/// Adapters and [`crate::client`] classify their results into this; the
/// policy never looks at bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AttemptOutcome {
    /// The peer answered with something final (a result or a JSON-RPC error).
    Success,
    /// HTTP status ≥ 500 (retried).
    ServerError {
        /// The HTTP status.
        status: u16,
    },
    /// HTTP 429 (retried; `Retry-After` honoured when present and positive).
    RateLimited {
        /// The server's `Retry-After`, already turned into a delay.
        retry_after: Option<Duration>,
    },
    /// The connection could not be established (retried).
    ConnectFailed,
    /// The attempt timed out (retried).
    TimedOut,
    /// Another transport failure, e.g. the connection dropped mid-response
    /// (not retried: the request may have been processed).
    TransportFailed,
    /// A final failure that retrying cannot fix: 4xx other than 429, a
    /// malformed answer (not retried).
    Rejected,
}

impl AttemptOutcome {
    /// Whether the reference retries this outcome (spec 14).
    #[must_use]
    pub fn is_retryable(self) -> bool {
        matches!(
            self,
            Self::ServerError { .. }
                | Self::RateLimited { .. }
                | Self::ConnectFailed
                | Self::TimedOut
        )
    }
}

/// What to do after an attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryDecision {
    /// The attempt succeeded; nothing to retry.
    Done,
    /// Send the same request again (same envelope id, JSON-RPC id and
    /// idempotency key) after `delay`.
    RetryAfter(Duration),
    /// Stop and report the attempt's failure.
    GiveUp(GiveUpReason),
}

/// Why a [`RetryPolicy`] stopped retrying.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum GiveUpReason {
    /// The outcome is not retryable.
    NotRetryable,
    /// `max_attempts` attempts were made.
    AttemptsExhausted,
    /// The server asked to wait longer than [`RetryPolicy::max_retry_after`].
    RetryAfterTooLong,
}

/// The reference client's retry rules (spec 14): `max_attempts` total
/// attempts (default 3); 5xx, 429, connect failures and timeouts are retried
/// after [`Backoff`]; a 429's `Retry-After` replaces the computed delay.
///
/// The caller resends the *same* request bytes every time: same envelope id,
/// same JSON-RPC id, same idempotency key (see [`crate::client::SendCall`],
/// which drives this policy).
///
/// ```
/// use std::time::Duration;
/// use asap_proto::reliability::{AttemptOutcome, RetryDecision, RetryPolicy};
/// let p = RetryPolicy::default();
/// let s500 = AttemptOutcome::ServerError { status: 500 };
/// assert_eq!(p.decide(0, s500, 0.0), RetryDecision::RetryAfter(Duration::from_secs(1)));
/// assert_eq!(p.decide(1, s500, 0.0), RetryDecision::RetryAfter(Duration::from_secs(2)));
/// assert!(matches!(p.decide(2, s500, 0.0), RetryDecision::GiveUp(_)));
/// let r = AttemptOutcome::RateLimited { retry_after: Some(Duration::from_secs(7)) };
/// assert_eq!(p.decide(0, r, 0.5), RetryDecision::RetryAfter(Duration::from_secs(7)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    /// Total attempts, including the first (the reference's `max_retries`). Default 3.
    /// `0` behaves as `1`.
    pub max_attempts: u32,
    /// Delay schedule between attempts.
    pub backoff: Backoff,
    /// Longest `Retry-After` honoured; a longer one ends the retries
    /// ([`GiveUpReason::RetryAfterTooLong`]) instead of blocking the caller
    /// for hours. Default 300 s. (The reference has no cap.)
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 3,
            backoff: Backoff::default(),
            max_retry_after: Duration::from_secs(300),
        }
    }
}

impl RetryPolicy {
    /// No retries: one attempt.
    #[must_use]
    pub fn no_retries() -> Self {
        Self {
            max_attempts: 1,
            ..Self::default()
        }
    }

    /// Decides what follows attempt number `attempt` (0-based) that ended in
    /// `outcome`; `jitter` is the caller's random fraction in `[0, 1]`.
    #[must_use]
    pub fn decide(&self, attempt: u32, outcome: AttemptOutcome, jitter: f64) -> RetryDecision {
        if outcome == AttemptOutcome::Success {
            return RetryDecision::Done;
        }
        if !outcome.is_retryable() {
            return RetryDecision::GiveUp(GiveUpReason::NotRetryable);
        }
        if attempt.saturating_add(1) >= self.max_attempts.max(1) {
            return RetryDecision::GiveUp(GiveUpReason::AttemptsExhausted);
        }
        match outcome {
            AttemptOutcome::RateLimited {
                retry_after: Some(d),
            } if !d.is_zero() => {
                if d > self.max_retry_after {
                    RetryDecision::GiveUp(GiveUpReason::RetryAfterTooLong)
                } else {
                    RetryDecision::RetryAfter(d)
                }
            }
            _ => RetryDecision::RetryAfter(self.backoff.delay(attempt, jitter)),
        }
    }
}

/// Turns a `Retry-After` header value into a delay, as the reference does:
/// non-negative decimal seconds (`7`, `7.5`), or an HTTP-date. Zero, negative,
/// past or unparsable values give `None` (the caller then uses its backoff).
///
/// An HTTP-date is measured against `response_date` (the response's own
/// `Date` header) instead of the local wall clock, so clock skew between the
/// peers does not matter; without a `Date` header a date form gives `None`.
/// (The reference compares with its local clock.)
///
/// ```
/// use std::time::Duration;
/// use asap_proto::reliability::retry_after_delay;
/// assert_eq!(retry_after_delay("7", None), Some(Duration::from_secs(7)));
/// assert_eq!(retry_after_delay("0", None), None);
/// assert_eq!(
///     retry_after_delay("Wed, 21 Oct 2015 07:28:30 GMT", Some("Wed, 21 Oct 2015 07:28:00 GMT")),
///     Some(Duration::from_secs(30))
/// );
/// ```
#[must_use]
pub fn retry_after_delay(value: &str, response_date: Option<&str>) -> Option<Duration> {
    let v = value.trim();
    let numeric = !v.is_empty()
        && v.bytes().filter(|b| *b == b'.').count() <= 1
        && v.bytes().all(|b| b.is_ascii_digit() || b == b'.')
        && v != ".";
    if numeric {
        let secs: f64 = v.parse().ok()?;
        if secs > 0.0 {
            return Duration::try_from_secs_f64(secs).ok();
        }
        return None;
    }
    let at = parse_http_date(v)?;
    let base = parse_http_date(response_date?.trim())?;
    let diff = at.checked_sub(base)?;
    (diff > 0).then(|| Duration::from_secs(diff.unsigned_abs()))
}

const MONTHS: [&str; 12] = [
    "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
];

/// Parses an HTTP-date (IMF-fixdate `Sun, 06 Nov 1994 08:49:37 GMT`, RFC 850
/// `Sunday, 06-Nov-94 08:49:37 GMT`, asctime `Sun Nov  6 08:49:37 1994`, and
/// RFC 2822 numeric zones such as `+0200`) into Unix seconds.
#[must_use]
pub fn parse_http_date(s: &str) -> Option<i64> {
    // Drop an optional leading weekday ("Sun," / "Sunday,").
    let s = match s.split_once(',') {
        Some((_, rest)) => rest,
        None => s,
    };
    // RFC 850 joins the date with dashes (`06-Nov-94`), but the sign of a
    // numeric zone (`-0500`) is not a separator.
    let mut tokens: Vec<&str> = Vec::new();
    for word in s.split_ascii_whitespace() {
        if word.starts_with(['+', '-']) {
            tokens.push(word);
        } else {
            tokens.extend(word.split('-').filter(|t| !t.is_empty()));
        }
    }
    let month_of = |t: &str| -> Option<i64> {
        let t = t.to_ascii_lowercase();
        MONTHS
            .iter()
            .position(|m| t.starts_with(m))
            .map(|i| i as i64 + 1)
    };
    let (day, month, year, time, zone) = match tokens.as_slice() {
        // IMF-fixdate / RFC 850 / RFC 2822: DD Mon YYYY HH:MM:SS ZONE
        [d, m, y, t, z] if d.bytes().all(|b| b.is_ascii_digit()) => (*d, month_of(m)?, *y, *t, *z),
        [d, m, y, t] if d.bytes().all(|b| b.is_ascii_digit()) => (*d, month_of(m)?, *y, *t, "GMT"),
        // asctime: Wkd Mon D HH:MM:SS YYYY
        [_, m, d, t, y] => (*d, month_of(m)?, *y, *t, "GMT"),
        _ => return None,
    };
    let day: i64 = day.parse().ok()?;
    let mut year: i64 = year.parse().ok()?;
    if year < 100 {
        // RFC 850 / RFC 2822 two-digit years, as Python's email.utils does.
        year += if year > 68 { 1900 } else { 2000 };
    }
    let mut hms = time.split(':');
    let h: i64 = hms.next()?.parse().ok()?;
    let mi: i64 = hms.next()?.parse().ok()?;
    let se: i64 = match hms.next() {
        Some(x) => x.parse().ok()?,
        None => 0,
    };
    if hms.next().is_some()
        || !(1..=31).contains(&day)
        || !(0..=23).contains(&h)
        || !(0..=59).contains(&mi)
        || !(0..=60).contains(&se)
        || !(1..=9999).contains(&year)
    {
        return None;
    }
    let offset = match zone.to_ascii_uppercase().as_str() {
        "GMT" | "UT" | "UTC" | "Z" => 0,
        z if (z.starts_with('+') || z.starts_with('-'))
            && z.len() == 5
            && z[1..].bytes().all(|b| b.is_ascii_digit()) =>
        {
            let hh: i64 = z[1..3].parse().ok()?;
            let mm: i64 = z[3..5].parse().ok()?;
            let o = hh * 3600 + mm * 60;
            if z.starts_with('-') {
                -o
            } else {
                o
            }
        }
        _ => return None,
    };
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + mi * 60 + se - offset)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn schedule(policy: &RetryPolicy, outcome: AttemptOutcome) -> Vec<f64> {
        let mut sleeps = Vec::new();
        let mut attempt = 0;
        while let RetryDecision::RetryAfter(d) = policy.decide(attempt, outcome, 0.0) {
            sleeps.push(d.as_secs_f64());
            attempt += 1;
        }
        sleeps
    }

    #[test]
    fn vector_schedules() {
        let p = RetryPolicy::default();
        assert_eq!(
            schedule(&p, AttemptOutcome::ServerError { status: 502 }),
            [1.0, 2.0]
        );
        let seven = AttemptOutcome::RateLimited {
            retry_after: Some(Duration::from_secs(7)),
        };
        assert_eq!(schedule(&p, seven), [7.0, 7.0]);
        let p5 = RetryPolicy {
            max_attempts: 5,
            ..p
        };
        assert_eq!(
            schedule(&p5, AttemptOutcome::RateLimited { retry_after: None }),
            [1.0, 2.0, 4.0, 8.0]
        );
        assert!(schedule(&p5, AttemptOutcome::Rejected).is_empty());
        assert!(schedule(&p5, AttemptOutcome::TransportFailed).is_empty());
        assert_eq!(schedule(&p, AttemptOutcome::TimedOut), [1.0, 2.0]);
        assert_eq!(schedule(&p, AttemptOutcome::ConnectFailed), [1.0, 2.0]);
        assert_eq!(
            p.decide(0, AttemptOutcome::Success, 0.0),
            RetryDecision::Done
        );
        assert_eq!(
            RetryPolicy::no_retries().decide(0, AttemptOutcome::TimedOut, 0.0),
            RetryDecision::GiveUp(GiveUpReason::AttemptsExhausted)
        );
    }

    #[test]
    fn retry_after_too_long_gives_up() {
        let p = RetryPolicy::default();
        let r = AttemptOutcome::RateLimited {
            retry_after: Some(Duration::from_secs(301)),
        };
        assert_eq!(
            p.decide(0, r, 0.0),
            RetryDecision::GiveUp(GiveUpReason::RetryAfterTooLong)
        );
        // Zero falls back to the computed backoff.
        let z = AttemptOutcome::RateLimited {
            retry_after: Some(Duration::ZERO),
        };
        assert_eq!(
            p.decide(1, z, 0.0),
            RetryDecision::RetryAfter(Duration::from_secs(2))
        );
    }

    #[test]
    fn retry_after_values() {
        assert_eq!(retry_after_delay(" 7 ", None), Some(Duration::from_secs(7)));
        assert_eq!(
            retry_after_delay("7.5", None),
            Some(Duration::from_millis(7500))
        );
        assert_eq!(
            retry_after_delay(".5", None),
            Some(Duration::from_millis(500))
        );
        for bad in ["", ".", "-1", "1.2.3", "soon", "0", "0.0", "1e3"] {
            assert_eq!(retry_after_delay(bad, None), None, "{bad:?}");
        }
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(parse_http_date(date), Some(784_111_777));
        assert_eq!(
            parse_http_date("Sunday, 06-Nov-94 08:49:37 GMT"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Sun Nov  6 08:49:37 1994"),
            Some(784_111_777)
        );
        assert_eq!(
            parse_http_date("Sun, 06 Nov 1994 10:49:37 +0200"),
            Some(784_111_777)
        );
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 25:49:37 GMT"), None);
        assert_eq!(parse_http_date("yesterday"), None);
        // Past dates and missing Date headers fall back.
        assert_eq!(
            retry_after_delay(date, Some("Sun, 06 Nov 1994 08:50:00 GMT")),
            None
        );
        assert_eq!(retry_after_delay(date, None), None);
        assert_eq!(
            retry_after_delay(date, Some("Sun, 06 Nov 1994 08:49:00 GMT")),
            Some(Duration::from_secs(37))
        );
    }

    /// Unix seconds of a UTC date and time, from the crate's own calendar code.
    fn unix(y: i64, m: u32, d: u32, h: i64, mi: i64, s: i64) -> i64 {
        crate::model::timestamp_calendar::days_from_civil(y, m, d) * 86_400 + h * 3600 + mi * 60 + s
    }

    #[test]
    fn a_retry_after_of_exactly_the_cap_is_honoured() {
        let p = RetryPolicy::default();
        let at_cap = AttemptOutcome::RateLimited {
            retry_after: Some(Duration::from_secs(300)),
        };
        assert_eq!(
            p.decide(0, at_cap, 0.0),
            RetryDecision::RetryAfter(Duration::from_secs(300))
        );
        // A date equal to the response's own Date is no wait at all: fall back.
        let date = "Sun, 06 Nov 1994 08:49:37 GMT";
        assert_eq!(retry_after_delay(date, Some(date)), None);
        assert_eq!(
            retry_after_delay(date, Some("Sun, 06 Nov 1994 08:49:36 GMT")),
            Some(Duration::from_secs(1))
        );
    }

    #[test]
    fn http_date_fields_are_range_checked_one_by_one() {
        let ok = |s: &str| parse_http_date(s);
        assert_eq!(ok("Sun, 06 Nov 1994 08:49:37 GMT"), Some(784_111_777));
        // Without a zone (GMT), and without seconds.
        assert_eq!(ok("06 Nov 1994 08:49:37"), Some(784_111_777));
        assert_eq!(ok("Sun, 06 Nov 1994 08:49"), Some(784_111_740));
        // Each field at its bounds, the others valid.
        assert_eq!(
            ok("01 Jan 1994 00:00:00 GMT"),
            Some(unix(1994, 1, 1, 0, 0, 0))
        );
        assert_eq!(
            ok("31 Dec 1994 23:59:60 GMT"),
            Some(unix(1994, 12, 31, 23, 59, 60))
        );
        assert_eq!(
            ok("31 Dec 9999 23:59:59 GMT"),
            Some(unix(9999, 12, 31, 23, 59, 59))
        );
        for bad in [
            "Sun, 00 Nov 1994 08:49:37 GMT",
            "Sun, 32 Nov 1994 08:49:37 GMT",
            "Sun, 06 Nov 1994 24:49:37 GMT",
            "Sun, 06 Nov 1994 08:60:37 GMT",
            "Sun, 06 Nov 1994 08:49:61 GMT",
            "Sun, 06 Nov 10000 08:49:37 GMT",
            "Sun, 06 Nov 1994 08:49:37:00 GMT",
            "Sun, 06 Nov 1994 08 GMT",
            "Sun, 06 Nov 1994 08:49:37 EST",
            "Sun, 06 Nov 1994 08:49:37 +02",
            "Sun, 06 Nov 1994 08:49:37 +020000",
            "Sun, 06 Nov 1994 08:49:37 01234",
            "Sun, 06 Nov 1994 08:49:37 +02x0",
            "+6 Nov 1994 08:49:37",
            "+6 Nov 1994 08:49:37 GMT",
            "Sun, 06 Xyz 1994 08:49:37 GMT",
        ] {
            assert_eq!(ok(bad), None, "{bad}");
        }
        // Two-digit years: 69..=99 are 19xx, 0..=68 are 20xx; 100 is itself.
        assert_eq!(ok("Thursday, 01-Jan-70 00:00:00 GMT"), Some(0));
        assert_eq!(
            ok("Wednesday, 01-Jan-69 00:00:00 GMT"),
            Some(unix(1969, 1, 1, 0, 0, 0))
        );
        assert_eq!(
            ok("Sunday, 01-Jan-68 00:00:00 GMT"),
            Some(unix(2068, 1, 1, 0, 0, 0))
        );
        assert_eq!(
            ok("Saturday, 01-Jan-00 00:00:00 GMT"),
            Some(unix(2000, 1, 1, 0, 0, 0))
        );
        assert_eq!(
            ok("01 Jan 0099 00:00:00 GMT"),
            Some(unix(1999, 1, 1, 0, 0, 0))
        );
        assert_eq!(
            ok("01 Jan 0100 00:00:00 GMT"),
            Some(unix(100, 1, 1, 0, 0, 0))
        );
        // Numeric zones with minutes, both signs; the named zones.
        let utc = 784_111_777;
        assert_eq!(ok("Sun, 06 Nov 1994 14:19:37 +0530"), Some(utc));
        assert_eq!(ok("Sun, 06 Nov 1994 08:49:37 +0000"), Some(utc));
        for zone in ["UT", "UTC", "Z", "gmt"] {
            assert_eq!(
                ok(&format!("Sun, 06 Nov 1994 08:49:37 {zone}")),
                Some(utc),
                "{zone}"
            );
        }
        // Every month by its abbreviation.
        for (i, mon) in MONTHS.iter().enumerate() {
            let m = u32::try_from(i + 1).unwrap();
            assert_eq!(
                ok(&format!("15 {mon} 2024 12:00:00 GMT")),
                Some(unix(2024, m, 15, 12, 0, 0)),
                "{mon}"
            );
        }
        assert_eq!(
            ok("Fri Feb 29 12:00:00 2008"),
            Some(unix(2008, 2, 29, 12, 0, 0))
        );
    }

    #[test]
    fn numeric_zones_west_of_greenwich_are_parsed() {
        // `-` also joins RFC 850 dates (`06-Nov-94`), but not a zone's sign.
        let utc = Some(784_111_777);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 03:49:37 -0500"), utc);
        assert_eq!(parse_http_date("Sun, 06 Nov 1994 07:04:37 -0145"), utc);
        assert_eq!(parse_http_date("Sunday, 06-Nov-94 03:49:37 -0500"), utc);
        assert_eq!(
            retry_after_delay(
                "Sun, 06 Nov 1994 03:50:07 -0500",
                Some("Sun, 06 Nov 1994 08:49:37 GMT")
            ),
            Some(Duration::from_secs(30))
        );
    }

    proptest! {
        /// Every date of years 100..=9999 in all three forms, against the
        /// calendar code of `model::Timestamp`.
        #[test]
        fn http_dates_match_the_calendar(
            y in 100i64..=9999,
            m in 1u32..=12,
            d in 1u32..=28,
            secs in 0i64..86_400,
        ) {
            let (h, mi, s) = (secs / 3600, secs / 60 % 60, secs % 60);
            let want = unix(y, m, d, h, mi, s);
            let mon = MONTHS[(m - 1) as usize];
            let imf = format!("Mon, {d:02} {mon} {y:04} {h:02}:{mi:02}:{s:02} GMT");
            let asctime = format!("Mon {mon} {d:2} {h:02}:{mi:02}:{s:02} {y}");
            prop_assert_eq!(parse_http_date(&imf), Some(want), "{}", imf);
            prop_assert_eq!(parse_http_date(&asctime), Some(want), "{}", asctime);
        }

        #[test]
        fn http_date_never_panics(s in ".{0,64}") {
            let _ = parse_http_date(&s);
            let _ = retry_after_delay(&s, Some(&s));
        }

        #[test]
        fn never_more_than_max_attempts(max in 0u32..10, status in 500u16..600) {
            let p = RetryPolicy { max_attempts: max, ..RetryPolicy::default() };
            let mut attempts = 1u32;
            while let RetryDecision::RetryAfter(_) = p.decide(attempts - 1, AttemptOutcome::ServerError { status }, 0.3) {
                attempts += 1;
                prop_assert!(attempts <= max.max(1));
            }
            prop_assert_eq!(attempts, max.max(1));
        }
    }
}
