//! Wall-clock time values: [`UnixTime`] for "now" supplied by adapters, and
//! [`Timestamp`], the RFC 3339 `datetime` of the wire format.

use std::fmt::{self, Write as _};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};

const MICROS_PER_SEC: i64 = 1_000_000;
const SECS_PER_DAY: i64 = 86_400;
/// Python's `datetime` range: year 1 through 9999.
const MIN_YEAR: i64 = 1;
const MAX_YEAR: i64 = 9999;

/// A wall-clock instant in microseconds since the Unix epoch (UTC).
///
/// The core never reads a clock: adapters convert `SystemTime::now()` with
/// [`UnixTime::from_system_time`] and pass the value in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct UnixTime(i64);

impl UnixTime {
    /// The Unix epoch.
    pub const EPOCH: UnixTime = UnixTime(0);

    /// From microseconds since the epoch.
    #[must_use]
    pub const fn from_micros(micros: i64) -> Self {
        Self(micros)
    }
    /// From milliseconds since the epoch.
    #[must_use]
    pub const fn from_millis(millis: i64) -> Self {
        Self(millis.saturating_mul(1000))
    }
    /// From whole seconds since the epoch.
    #[must_use]
    pub const fn from_secs(secs: i64) -> Self {
        Self(secs.saturating_mul(MICROS_PER_SEC))
    }
    /// Converts a `SystemTime` the caller obtained (times before 1970 clamp to the epoch).
    #[must_use]
    pub fn from_system_time(t: SystemTime) -> Self {
        match t.duration_since(UNIX_EPOCH) {
            Ok(d) => Self(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
            Err(_) => Self::EPOCH,
        }
    }
    /// Microseconds since the epoch.
    #[must_use]
    pub const fn as_micros(self) -> i64 {
        self.0
    }
    /// Milliseconds since the epoch (floor).
    #[must_use]
    pub const fn as_millis(self) -> i64 {
        self.0.div_euclid(1000)
    }
    /// Whole seconds since the epoch (floor).
    #[must_use]
    pub const fn as_secs(self) -> i64 {
        self.0.div_euclid(MICROS_PER_SEC)
    }
    /// Seconds since the epoch as a float (for `exp`-style comparisons and messages).
    #[must_use]
    pub fn as_secs_f64(self) -> f64 {
        self.0 as f64 / MICROS_PER_SEC as f64
    }
    /// `self + d`, saturating.
    #[must_use]
    pub fn saturating_add(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        )
    }
    /// `self - d`, saturating.
    #[must_use]
    pub fn saturating_sub(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_sub(i64::try_from(d.as_micros()).unwrap_or(i64::MAX)),
        )
    }
    /// Signed difference `self - earlier` in microseconds (saturating).
    #[must_use]
    pub const fn micros_since(self, earlier: UnixTime) -> i64 {
        self.0.saturating_sub(earlier.0)
    }
}

/// The zone information a [`Timestamp`] was written with; kept so re-encoding is faithful.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TzOffset {
    /// UTC, written with a `Z` suffix.
    Utc,
    /// A fixed non-zero offset east of UTC, in seconds (written `+hh:mm`).
    Fixed(i32),
    /// No zone ("naive"); interpreted as UTC for comparisons, written without suffix.
    Naive,
}

/// An ASAP `datetime`: microsecond precision, with the zone it was written in.
///
/// Parses every syntax the reference accepts (RFC 3339 with `Z` or offset,
/// naive, space separator, date only, minutes only, nanoseconds truncated,
/// Unix epoch seconds as number or numeric string) and writes RFC 3339 the
/// way the reference does (`Z` for UTC, fractional seconds only when non-zero).
///
/// ```
/// use asap_proto::model::Timestamp;
/// let t: Timestamp = "2026-01-01 00:00:00.5+00:00".parse().unwrap();
/// assert_eq!(t.to_string(), "2026-01-01T00:00:00.500000Z");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Timestamp {
    /// The instant, microseconds since the epoch (naive values taken as UTC).
    utc_micros: i64,
    offset: TzOffset,
}

/// Why a timestamp did not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("input should be a valid datetime or date, {0}")]
pub struct TimestampError(pub String);

impl Timestamp {
    /// A UTC timestamp at the given instant.
    #[must_use]
    pub const fn from_unix(t: UnixTime) -> Self {
        Self {
            utc_micros: t.as_micros(),
            offset: TzOffset::Utc,
        }
    }

    /// The instant (naive values are taken as UTC, as the reference's replay check does).
    #[must_use]
    pub const fn unix(self) -> UnixTime {
        UnixTime::from_micros(self.utc_micros)
    }

    /// The zone the value was written with.
    #[must_use]
    pub const fn offset(self) -> TzOffset {
        self.offset
    }

    /// Builds a UTC timestamp from calendar fields; `None` if out of range.
    #[must_use]
    pub fn from_utc_parts(
        year: i64,
        month: u32,
        day: u32,
        h: u32,
        m: u32,
        s: u32,
        micros: u32,
    ) -> Option<Self> {
        if !(MIN_YEAR..=MAX_YEAR).contains(&year) || !(1..=12).contains(&month) || day == 0 {
            return None;
        }
        if day > days_in_month(year, month) || h > 23 || m > 59 || s > 59 || micros >= 1_000_000 {
            return None;
        }
        let days = days_from_civil(year, month, day);
        let secs = days * SECS_PER_DAY + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(s);
        Some(Self {
            utc_micros: secs * MICROS_PER_SEC + i64::from(micros),
            offset: TzOffset::Utc,
        })
    }

    /// The Python `isoformat()` rendering (`+00:00` instead of `Z`), as used in
    /// the reference's error `details.timestamp`.
    #[must_use]
    pub fn to_python_isoformat(self) -> String {
        let mut s = String::with_capacity(32);
        self.write_local(&mut s);
        match self.offset {
            TzOffset::Utc => s.push_str("+00:00"),
            TzOffset::Fixed(off) => write_offset(&mut s, off),
            TzOffset::Naive => {}
        }
        s
    }

    fn local_micros(self) -> i64 {
        match self.offset {
            TzOffset::Fixed(off) => self.utc_micros + i64::from(off) * MICROS_PER_SEC,
            _ => self.utc_micros,
        }
    }

    fn write_local(self, out: &mut String) {
        let local = self.local_micros();
        let secs = local.div_euclid(MICROS_PER_SEC);
        let micros = local.rem_euclid(MICROS_PER_SEC);
        let days = secs.div_euclid(SECS_PER_DAY);
        let sod = secs.rem_euclid(SECS_PER_DAY);
        let (y, mo, d) = civil_from_days(days);
        // Digits by hand: `write!` costs more than the rest of an echo reply's
        // envelope (timestamps are written several times per request).
        match u32::try_from(y) {
            Ok(y) if y <= 9999 => push_digits(out, y, 4),
            _ => {
                let _ = write!(out, "{y:04}");
            }
        }
        let sod = u32::try_from(sod).unwrap_or(0);
        for (sep, v) in [
            ('-', mo),
            ('-', d),
            ('T', sod / 3600),
            (':', (sod / 60) % 60),
            (':', sod % 60),
        ] {
            out.push(sep);
            push_digits(out, v, 2);
        }
        if micros != 0 {
            out.push('.');
            push_digits(out, u32::try_from(micros).unwrap_or(0), 6);
        }
    }

    /// Parses a JSON number as Unix epoch seconds (or milliseconds above 2e10, as pydantic does).
    pub fn from_epoch_f64(x: f64) -> Result<Self, TimestampError> {
        if !x.is_finite() {
            return Err(TimestampError("invalid epoch value".into()));
        }
        let secs = if x.abs() > 2e10 { x / 1000.0 } else { x };
        let micros = (secs * 1e6).round();
        if micros.abs() > 2.5e17 {
            return Err(TimestampError(
                "epoch value is outside the supported range".into(),
            ));
        }
        let t = Self {
            utc_micros: micros as i64,
            offset: TzOffset::Utc,
        };
        let (y, _, _) = civil_from_days(t.utc_micros.div_euclid(MICROS_PER_SEC * SECS_PER_DAY));
        if !(MIN_YEAR..=MAX_YEAR).contains(&y) {
            return Err(TimestampError(
                "epoch value is outside the supported range".into(),
            ));
        }
        Ok(t)
    }

    fn from_epoch_i64(n: i64) -> Result<Self, TimestampError> {
        let micros = if n.unsigned_abs() > 20_000_000_000 {
            n.checked_mul(1000)
        } else {
            n.checked_mul(MICROS_PER_SEC)
        };
        let micros = micros
            .ok_or_else(|| TimestampError("epoch value is outside the supported range".into()))?;
        let (y, _, _) = civil_from_days(micros.div_euclid(MICROS_PER_SEC * SECS_PER_DAY));
        if !(MIN_YEAR..=MAX_YEAR).contains(&y) {
            return Err(TimestampError(
                "epoch value is outside the supported range".into(),
            ));
        }
        Ok(Self {
            utc_micros: micros,
            offset: TzOffset::Utc,
        })
    }
}

impl Timestamp {
    /// The RFC 3339 text `Display` writes, built without `fmt` (every
    /// envelope and task record serializes timestamps).
    fn text(&self) -> String {
        let mut s = String::with_capacity(32);
        self.write_local(&mut s);
        match self.offset {
            TzOffset::Utc => s.push('Z'),
            TzOffset::Fixed(off) => write_offset(&mut s, off),
            TzOffset::Naive => {}
        }
        s
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// Appends `v` zero-padded to `width` digits (`v` has at most `width` digits).
fn push_digits(out: &mut String, v: u32, width: u32) {
    let mut div = 10u32.pow(width - 1);
    while div > 0 {
        out.push(char::from(b'0' + u8::try_from(v / div % 10).unwrap_or(0)));
        div /= 10;
    }
}

fn write_offset(out: &mut String, off: i32) {
    let sign = if off < 0 { '-' } else { '+' };
    let a = off.unsigned_abs();
    let _ = write!(out, "{sign}{:02}:{:02}", a / 3600, (a / 60) % 60);
    if a % 60 != 0 {
        let _ = write!(out, ":{:02}", a % 60);
    }
}

impl std::str::FromStr for Timestamp {
    type Err = TimestampError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_str(s)
    }
}

struct Cursor<'a> {
    b: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn digits(&mut self, n: usize, what: &str) -> Result<u32, TimestampError> {
        let mut v = 0u32;
        for _ in 0..n {
            match self.b.get(self.i) {
                Some(c @ b'0'..=b'9') => {
                    v = v * 10 + u32::from(c - b'0');
                    self.i += 1;
                }
                Some(_) => return Err(TimestampError(format!("invalid character in {what}"))),
                None => return Err(TimestampError("input is too short".into())),
            }
        }
        Ok(v)
    }
    fn expect(&mut self, c: u8, what: &str) -> Result<(), TimestampError> {
        match self.b.get(self.i) {
            Some(&x) if x == c => {
                self.i += 1;
                Ok(())
            }
            Some(_) => Err(TimestampError(format!("invalid {what} separator"))),
            None => Err(TimestampError("input is too short".into())),
        }
    }
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }
}

fn looks_numeric(s: &str) -> bool {
    let t = s.strip_prefix('-').unwrap_or(s);
    !t.is_empty()
        && t.bytes().all(|c| c.is_ascii_digit() || c == b'.')
        && t.bytes().filter(|&c| c == b'.').count() <= 1
        && t.bytes().next().is_some_and(|c| c.is_ascii_digit())
}

fn parse_str(s: &str) -> Result<Timestamp, TimestampError> {
    if looks_numeric(s) {
        if let Ok(n) = s.parse::<i64>() {
            return Timestamp::from_epoch_i64(n);
        }
        if let Ok(x) = s.parse::<f64>() {
            return Timestamp::from_epoch_f64(x);
        }
    }
    let mut c = Cursor {
        b: s.as_bytes(),
        i: 0,
    };
    let year = i64::from(c.digits(4, "year")?);
    c.expect(b'-', "date")?;
    let month = c.digits(2, "month")?;
    c.expect(b'-', "date")?;
    let day = c.digits(2, "day")?;
    if year < MIN_YEAR {
        return Err(TimestampError(
            "year value is outside expected range".into(),
        ));
    }
    if !(1..=12).contains(&month) {
        return Err(TimestampError(
            "month value is outside expected range of 1-12".into(),
        ));
    }
    if day == 0 || day > days_in_month(year, month) {
        return Err(TimestampError("day value is outside expected range".into()));
    }
    let days = days_from_civil(year, month, day);
    let Some(sep) = c.peek() else {
        // Date only: midnight, naive.
        return Ok(Timestamp {
            utc_micros: days * SECS_PER_DAY * MICROS_PER_SEC,
            offset: TzOffset::Naive,
        });
    };
    if !matches!(sep, b'T' | b't' | b' ' | b'_') {
        return Err(TimestampError(
            "invalid datetime separator, expected `T`, `t`, `_` or space".into(),
        ));
    }
    c.i += 1;
    let h = c.digits(2, "hour")?;
    c.expect(b':', "time")?;
    let m = c.digits(2, "minute")?;
    let mut sec = 0;
    let mut micros = 0u32;
    if c.peek() == Some(b':') {
        c.i += 1;
        sec = c.digits(2, "second")?;
        if matches!(c.peek(), Some(b'.') | Some(b',')) {
            c.i += 1;
            let start = c.i;
            let mut scale = 100_000u32;
            while let Some(d @ b'0'..=b'9') = c.peek() {
                micros += u32::from(d - b'0') * scale;
                scale /= 10;
                c.i += 1;
            }
            if c.i == start {
                return Err(TimestampError("second fraction value is missing".into()));
            }
            if c.i - start > 12 {
                return Err(TimestampError(
                    "second fraction value is more than 12 digits long".into(),
                ));
            }
        }
    }
    if h > 23 {
        return Err(TimestampError(
            "hour value is outside expected range of 0-23".into(),
        ));
    }
    if m > 59 {
        return Err(TimestampError(
            "minute value is outside expected range of 0-59".into(),
        ));
    }
    if sec > 59 {
        return Err(TimestampError(
            "second value is outside expected range of 0-59".into(),
        ));
    }
    let offset = match c.peek() {
        None => TzOffset::Naive,
        Some(b'Z' | b'z') => {
            c.i += 1;
            TzOffset::Utc
        }
        Some(sign @ (b'+' | b'-')) => {
            c.i += 1;
            let oh = c.digits(2, "timezone")?;
            let mut om = 0;
            if c.peek() == Some(b':') {
                c.i += 1;
                om = c.digits(2, "timezone")?;
            } else if c.peek().is_some_and(|d| d.is_ascii_digit()) {
                om = c.digits(2, "timezone")?;
            }
            if oh > 23 || om > 59 {
                return Err(TimestampError(
                    "timezone offset must be less than 24 hours".into(),
                ));
            }
            let total = (oh * 3600 + om * 60) as i32;
            let total = if sign == b'-' { -total } else { total };
            if total == 0 {
                TzOffset::Utc
            } else {
                TzOffset::Fixed(total)
            }
        }
        Some(_) => return Err(TimestampError("invalid timezone sign".into())),
    };
    if c.i != c.b.len() {
        return Err(TimestampError(
            "unexpected extra characters at the end of the input".into(),
        ));
    }
    let local = (days * SECS_PER_DAY + i64::from(h) * 3600 + i64::from(m) * 60 + i64::from(sec))
        * MICROS_PER_SEC
        + i64::from(micros);
    let utc_micros = match offset {
        TzOffset::Fixed(off) => local - i64::from(off) * MICROS_PER_SEC,
        _ => local,
    };
    Ok(Timestamp { utc_micros, offset })
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: u32) -> u32 {
    match m {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        _ if is_leap(y) => 29,
        _ => 28,
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let m = i64::from(m);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The proleptic Gregorian date of a day count since 1970-01-01.
pub(crate) fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text())
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Timestamp;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an RFC 3339 datetime string, a date, or Unix epoch seconds")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Timestamp, E> {
                parse_str(v).map_err(E::custom)
            }
            fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Timestamp, E> {
                Timestamp::from_epoch_i64(v).map_err(E::custom)
            }
            fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Timestamp, E> {
                let v = i64::try_from(v)
                    .map_err(|_| E::custom("epoch value is outside the supported range"))?;
                Timestamp::from_epoch_i64(v).map_err(E::custom)
            }
            fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Timestamp, E> {
                Timestamp::from_epoch_f64(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        for days in [-719_162i64, -1, 0, 1, 20_454, 2_932_896] {
            let (y, m, d) = civil_from_days(days);
            assert_eq!(days_from_civil(y, m, d), days);
        }
    }

    #[test]
    fn formats_like_the_reference() {
        let t: Timestamp = "2026-01-01T00:00:00.123456789Z".parse().unwrap();
        assert_eq!(t.to_string(), "2026-01-01T00:00:00.123456Z");
        let t: Timestamp = "2026-01-01T00:00:00+02:00".parse().unwrap();
        assert_eq!(t.to_string(), "2026-01-01T00:00:00+02:00");
        assert_eq!(t.unix().as_secs(), 1_767_225_600 - 7200);
        assert_eq!(t.to_python_isoformat(), "2026-01-01T00:00:00+02:00");
        let t: Timestamp = "2026-01-01".parse().unwrap();
        assert_eq!(t.to_string(), "2026-01-01T00:00:00");
        assert!("2026-02-30".parse::<Timestamp>().is_err());
        assert!("2026-01-01T24:00:00Z".parse::<Timestamp>().is_err());
    }
}

#[cfg(test)]
mod digits {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The hand-written digits match `write!`'s padding for every instant
        /// from year 0 to 9999 and beyond (where `write!` is used).
        #[test]
        fn written_like_format(micros in -70_000_000_000_000_000i64..260_000_000_000_000_000i64) {
            let t = Timestamp::from_unix(UnixTime::from_micros(micros));
            let local = t.local_micros();
            let (secs, us) = (local.div_euclid(MICROS_PER_SEC), local.rem_euclid(MICROS_PER_SEC));
            let (y, mo, d) = civil_from_days(secs.div_euclid(SECS_PER_DAY));
            let sod = secs.rem_euclid(SECS_PER_DAY);
            let mut want = format!("{y:04}-{mo:02}-{d:02}T{:02}:{:02}:{:02}", sod / 3600, (sod / 60) % 60, sod % 60);
            if us != 0 {
                want.push_str(&format!(".{us:06}"));
            }
            want.push('Z');
            prop_assert_eq!(t.to_string(), want);
        }
    }
}
