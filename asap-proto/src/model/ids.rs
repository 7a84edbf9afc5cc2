//! Identifiers: ULIDs (built from caller-supplied time and randomness) and agent URNs.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::timestamp::UnixTime;

const CROCKFORD: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// A ULID: 48-bit Unix-millisecond time followed by 80 random bits, written as
/// 26 upper-case Crockford base32 characters (what the reference generates).
///
/// The core has no clock and no RNG: the caller supplies both.
///
/// ```
/// use asap_proto::model::{Ulid, UnixTime};
/// let id = Ulid::new(UnixTime::from_millis(1_767_225_600_000), 42);
/// let text = id.to_string();
/// assert_eq!(text.len(), 26);
/// assert_eq!(text.parse::<Ulid>().unwrap(), id);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Ulid(u128);

/// Why a string is not a ULID.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UlidError {
    /// Not exactly 26 characters.
    #[error("a ULID has 26 characters, got {0}")]
    Length(usize),
    /// A character outside Crockford base32.
    #[error("invalid ULID character {0:?}")]
    Character(char),
    /// The value does not fit in 128 bits (first character above `7`).
    #[error("ULID overflows 128 bits")]
    Overflow,
}

impl Ulid {
    /// Builds a ULID from a wall-clock time (millisecond part used) and 80 random bits
    /// (higher bits of `random` are ignored).
    #[must_use]
    pub fn new(time: UnixTime, random: u128) -> Self {
        let ms = (time.as_millis().max(0) as u128) & ((1u128 << 48) - 1);
        Self((ms << 80) | (random & ((1u128 << 80) - 1)))
    }
    /// The raw 128-bit value.
    #[must_use]
    pub const fn to_u128(self) -> u128 {
        self.0
    }
    /// From the raw 128-bit value.
    #[must_use]
    pub const fn from_u128(v: u128) -> Self {
        Self(v)
    }
    /// The embedded Unix-millisecond time.
    #[must_use]
    pub const fn millis(self) -> u64 {
        (self.0 >> 80) as u64
    }
    /// The 80 random bits.
    #[must_use]
    pub const fn random(self) -> u128 {
        self.0 & ((1u128 << 80) - 1)
    }
    /// Writes the 26 characters into a stack buffer.
    #[must_use]
    pub fn encode(self) -> [u8; 26] {
        let mut out = [0u8; 26];
        for (i, slot) in out.iter_mut().enumerate() {
            let shift = 5 * (25 - i);
            *slot = CROCKFORD[((self.0 >> shift) & 0x1f) as usize];
        }
        out
    }

    /// `prefix` followed by the 26 characters, in one allocation and without
    /// `fmt` (ids such as `task_…` are made on every request).
    ///
    /// ```
    /// use asap_proto::model::{Ulid, UnixTime};
    /// let id = Ulid::new(UnixTime::from_millis(1_767_225_600_000), 42);
    /// assert_eq!(id.prefixed("task_"), format!("task_{id}"));
    /// ```
    #[must_use]
    pub fn prefixed(self, prefix: &str) -> String {
        let mut out = String::with_capacity(prefix.len() + 26);
        out.push_str(prefix);
        // Crockford base32 is ASCII, so the check cannot fail.
        out.push_str(std::str::from_utf8(&self.encode()).unwrap_or_default());
        out
    }
}

impl fmt::Display for Ulid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.encode();
        // Crockford alphabet is ASCII.
        f.write_str(std::str::from_utf8(&b).map_err(|_| fmt::Error)?)
    }
}

/// Appends `bytes` as lower-case hex (trace ids, signatures), without `fmt`.
pub(crate) fn push_lower_hex(out: &mut String, bytes: &[u8]) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    for b in bytes {
        out.push(char::from(HEX[usize::from(b >> 4)]));
        out.push(char::from(HEX[usize::from(b & 0x0f)]));
    }
}

fn crockford_value(c: u8) -> Option<u8> {
    let c = c.to_ascii_uppercase();
    match c {
        b'O' => Some(0),
        b'I' | b'L' => Some(1),
        _ => CROCKFORD.iter().position(|&x| x == c).map(|p| p as u8),
    }
}

impl FromStr for Ulid {
    type Err = UlidError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        if b.len() != 26 {
            return Err(UlidError::Length(s.chars().count()));
        }
        let mut v: u128 = 0;
        for (i, &c) in b.iter().enumerate() {
            let d = crockford_value(c)
                .ok_or_else(|| UlidError::Character(s[i..].chars().next().unwrap_or('?')))?;
            if i == 0 && d > 7 {
                return Err(UlidError::Overflow);
            }
            v = (v << 5) | u128::from(d);
        }
        Ok(Self(v))
    }
}

impl Serialize for Ulid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Ulid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Longest agent URN the protocol accepts.
pub const MAX_URN_LENGTH: usize = 256;

/// An agent URN: `urn:asap:agent:{name}` or `urn:asap:agent:{name}:{sub}`, where
/// name and sub are non-empty runs of `[a-z0-9-]`, at most 256 characters.
///
/// Unlike the reference (Python `re.match` with `$`), a trailing newline is rejected.
///
/// ```
/// use asap_proto::model::AgentUrn;
/// assert!(AgentUrn::new("urn:asap:agent:echo-server").is_ok());
/// assert!(AgentUrn::new("urn:asap:agent:Echo").is_err());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AgentUrn(String);

/// Why a string is not an agent URN (messages match the reference's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UrnError {
    /// Longer than [`MAX_URN_LENGTH`].
    #[error("Agent URN must be at most 256 characters, got {0}")]
    TooLong(usize),
    /// Does not follow the URN pattern.
    #[error("Agent ID must follow URN format 'urn:asap:agent:{{name}}', got: {0}")]
    Format(String),
}

fn is_urn_segment(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
}

impl AgentUrn {
    /// Validates and wraps `s`.
    pub fn new(s: impl Into<String>) -> Result<Self, UrnError> {
        let s = s.into();
        Self::check(&s)?;
        Ok(Self(s))
    }

    /// Checks `s` against the URN rule without allocating.
    pub fn check(s: &str) -> Result<(), UrnError> {
        let n = s.chars().count();
        if n > MAX_URN_LENGTH {
            return Err(UrnError::TooLong(n));
        }
        let ok = s
            .strip_prefix("urn:asap:agent:")
            .is_some_and(|rest| match rest.split_once(':') {
                Some((a, b)) => is_urn_segment(a) && is_urn_segment(b),
                None => is_urn_segment(rest),
            });
        if ok {
            Ok(())
        } else {
            Err(UrnError::Format(s.to_owned()))
        }
    }

    /// The URN text.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The agent name (the segment after `urn:asap:agent:`, including any `:sub`).
    #[must_use]
    pub fn name(&self) -> &str {
        &self.0["urn:asap:agent:".len()..]
    }
}

impl fmt::Display for AgentUrn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl AsRef<str> for AgentUrn {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl FromStr for AgentUrn {
    type Err = UrnError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<String> for AgentUrn {
    type Error = UrnError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl TryFrom<&str> for AgentUrn {
    type Error = UrnError;
    fn try_from(s: &str) -> Result<Self, Self::Error> {
        Self::new(s)
    }
}

impl PartialEq<str> for AgentUrn {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for AgentUrn {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl Serialize for AgentUrn {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for AgentUrn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::new(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urn_rules() {
        for ok in [
            "urn:asap:agent:a",
            "urn:asap:agent:a-1:b-2",
            "urn:asap:agent:0",
        ] {
            assert!(AgentUrn::new(ok).is_ok(), "{ok}");
        }
        for bad in [
            "urn:asap:agent:",
            "urn:asap:agent:A",
            "urn:asap:agent:a\n",
            "urn:asap:agent:a:b:c",
            "urn:asap:agent:a_b",
            "urn:asap:agent:a.b",
            "urn:asap:agent:a:",
            "agent-client",
        ] {
            assert!(AgentUrn::new(bad).is_err(), "{bad:?}");
        }
        let long = format!("urn:asap:agent:{}", "a".repeat(242));
        assert_eq!(long.len(), 257);
        assert_eq!(AgentUrn::new(long).unwrap_err(), UrnError::TooLong(257));
    }

    #[test]
    fn ulid_known_value() {
        let id: Ulid = "01KDXZ0000ENVREQ0000000001".parse().unwrap();
        assert_eq!(id.to_string(), "01KDXZ0000ENVREQ0000000001");
        assert_eq!(
            Ulid::from_u128(u128::MAX).to_string(),
            "7ZZZZZZZZZZZZZZZZZZZZZZZZZ"
        );
        assert_eq!(
            "8ZZZZZZZZZZZZZZZZZZZZZZZZZ".parse::<Ulid>(),
            Err(UlidError::Overflow)
        );
    }
}
