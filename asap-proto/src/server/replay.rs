//! Replay protection: the envelope timestamp window and the opt-in nonce store.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::time::Duration;

use serde_json::{json, Value};

use crate::jsonrpc::{asap_codes, AsapError};
use crate::model::{Envelope, UnixTime};
use crate::store::NonceRecord;

/// Reference default: envelopes older than this are rejected (inclusive boundary passes).
pub const MAX_ENVELOPE_AGE: Duration = Duration::from_secs(300);
/// Reference default: envelopes this far in the future are rejected.
pub const MAX_FUTURE_TOLERANCE: Duration = Duration::from_secs(30);

/// The timestamp window of spec 10.1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplayWindow {
    /// Oldest accepted age.
    pub max_age: Duration,
    /// Furthest accepted future offset.
    pub max_future: Duration,
}

impl Default for ReplayWindow {
    fn default() -> Self {
        Self {
            max_age: MAX_ENVELOPE_AGE,
            max_future: MAX_FUTURE_TOLERANCE,
        }
    }
}

impl ReplayWindow {
    /// Checks `env.timestamp` against `now`; the error is the reference's
    /// `InvalidTimestampError` (`asap:protocol/invalid_timestamp`).
    pub fn check(&self, env: &Envelope, now: UnixTime) -> Result<(), AsapError> {
        let ts = env.timestamp.unix();
        let age_us = now.micros_since(ts);
        let max_age_us = i64::try_from(self.max_age.as_micros()).unwrap_or(i64::MAX);
        let max_future_us = i64::try_from(self.max_future.as_micros()).unwrap_or(i64::MAX);
        if age_us > max_age_us {
            let age = age_us as f64 / 1e6;
            return Err(AsapError::new(
                asap_codes::INVALID_TIMESTAMP,
                format!(
                    "Envelope timestamp is too old: {age:.1} seconds (max: {} seconds)",
                    self.max_age.as_secs()
                ),
                json!({
                    "timestamp": utc_isoformat(env),
                    "age_seconds": age,
                    "envelope_id": env.id,
                    "max_age_seconds": self.max_age.as_secs(),
                }),
            ));
        }
        // Saturating: an age of i64::MIN (a caller's clock before 1970 against a
        // far-future stamp) must not wrap into "not in the future".
        if age_us.saturating_neg() > max_future_us {
            let off = age_us.saturating_neg() as f64 / 1e6;
            return Err(AsapError::new(
                asap_codes::INVALID_TIMESTAMP,
                format!(
                    "Envelope timestamp is too far in the future: {off:.1} seconds (max tolerance: {} seconds)",
                    self.max_future.as_secs()
                ),
                json!({
                    "timestamp": utc_isoformat(env),
                    "future_offset_seconds": off,
                    "envelope_id": env.id,
                    "max_future_tolerance_seconds": self.max_future.as_secs(),
                }),
            ));
        }
        Ok(())
    }

    /// The error for an envelope without a timestamp when timestamps are required
    /// (closes the reference's replay bypass, spec 10.1 QUIRK).
    #[must_use]
    pub fn missing_timestamp(envelope_id: &str) -> AsapError {
        AsapError::new(
            asap_codes::INVALID_TIMESTAMP,
            "Envelope timestamp is required for replay protection",
            json!({"timestamp": null, "envelope_id": envelope_id}),
        )
    }
}

/// The reference's `details.timestamp`: the instant converted to UTC, in
/// Python `isoformat()` form (`+00:00`), whatever offset (or none) it was sent with.
fn utc_isoformat(env: &Envelope) -> String {
    crate::model::Timestamp::from_unix(env.timestamp.unix()).to_python_isoformat()
}

/// How the server treats `extensions.nonce`.
///
/// ```
/// use asap_proto::server::NonceMode;
/// assert_eq!("when-present".parse::<NonceMode>(), Ok(NonceMode::WhenPresent));
/// assert_eq!(NonceMode::default(), NonceMode::Off);
/// assert!("sometimes".parse::<NonceMode>().unwrap_err().contains("off, when-present, required"));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum NonceMode {
    /// Nonces are not looked at (the reference's default).
    #[default]
    Off,
    /// A nonce that is present is checked; an envelope without one passes
    /// (the reference's `require_nonce=True`, spec 10.2).
    WhenPresent,
    /// Every envelope must carry a nonce; a missing one is -32602.
    Required,
}

impl NonceMode {
    /// The accepted names, as written on the command line.
    pub const NAMES: [&'static str; 3] = ["off", "when-present", "required"];

    /// The mode's name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Off => "off",
            Self::WhenPresent => "when-present",
            Self::Required => "required",
        }
    }
}

impl std::fmt::Display for NonceMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for NonceMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "off" => Ok(Self::Off),
            "when-present" => Ok(Self::WhenPresent),
            "required" => Ok(Self::Required),
            other => Err(format!(
                "unknown nonce mode {other:?}; use one of {}",
                Self::NAMES.join(", ")
            )),
        }
    }
}

/// Longest accepted nonce, in bytes. Bounds what the store keeps per entry on
/// disk; a UUID is 36 bytes, 32 random bytes in base64 are 44.
pub const MAX_NONCE_LEN: usize = 256;

/// Why a nonce check refused an envelope.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum NonceError {
    /// The sender's fault: the nonce is missing (when required), not a
    /// non-empty string, too long, or already used inside the replay window.
    /// Answered -32602 with this `asap:protocol/invalid_nonce` error in `data`.
    #[error("{}", .0.message)]
    Invalid(AsapError),
    /// The store holds `capacity` nonces whose envelopes are all still inside
    /// the replay window: nothing may be forgotten, so new envelopes are
    /// refused until the earliest one expires (a flood, or a capacity sized
    /// below the traffic). Answered 503 with `Retry-After`.
    #[error("nonce store full: {capacity} nonces are inside the replay window; retry in {retry_after_secs} s (or raise the capacity)")]
    Full {
        /// The configured capacity.
        capacity: usize,
        /// Whole seconds until the earliest nonce expires (at least 1).
        retry_after_secs: u64,
    },
}

/// A nonce's identity in memory: 16 bytes of SHA-256 over sender and nonce, so
/// every entry costs the same whatever the nonce's length (a collision would
/// only refuse an envelope, never admit a replay, and needs ~2^64 work).
type NonceKey = [u8; 16];

fn nonce_key(sender: &str, nonce: &str) -> NonceKey {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    // Length-prefixed, so ("ab", "c") and ("a", "bc") differ.
    ctx.update(&(sender.len() as u64).to_be_bytes());
    ctx.update(sender.as_bytes());
    ctx.update(nonce.as_bytes());
    let digest = ctx.finish();
    let mut key = [0u8; 16];
    key.copy_from_slice(&digest.as_ref()[..16]);
    key
}

/// Keys are already uniform (a digest): hash them by their first 8 bytes.
#[derive(Debug, Clone, Copy, Default)]
struct DigestHasher(u64);

impl std::hash::Hasher for DigestHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for (i, b) in bytes.iter().take(8).enumerate() {
            self.0 ^= u64::from(*b) << (8 * i);
        }
    }
}

type DigestBuild = std::hash::BuildHasherDefault<DigestHasher>;

/// Seen nonces, each kept exactly as long as its envelope could pass the
/// replay window, with a hard capacity that fails closed.
///
/// * Keyed by `(sender, extensions.nonce)`.
/// * An entry expires when its envelope's timestamp leaves the window:
///   it is live while `now <= timestamp + max_age` (an envelope older than
///   that is refused by [`ReplayWindow::check`] anyway), so a replay is
///   refused for as long as it could otherwise be accepted, whatever the volume.
/// * Never flushed by volume: when `capacity` live entries exist, a new nonce
///   is refused ([`NonceError::Full`]) instead of an old one being forgotten.
/// * Memory: about 75 bytes per entry, whatever the nonce's length.
///
/// ```
/// use asap_proto::model::{AgentUrn, Envelope, Payload, TaskRequest, Timestamp, UnixTime};
/// use asap_proto::server::{NonceError, NonceMode, NonceStore, ReplayWindow};
///
/// let now = UnixTime::from_secs(1_767_225_600);
/// let mut env = Envelope::new("e1".into(), Timestamp::from_unix(now),
///     AgentUrn::new("urn:asap:agent:a").unwrap(), AgentUrn::new("urn:asap:agent:b").unwrap(),
///     Payload::TaskRequest(TaskRequest::new("c", "echo", Default::default())));
/// env.extensions = Some(serde_json::json!({"nonce": "n-1"}).as_object().unwrap().clone());
/// let mut store = NonceStore::new(ReplayWindow::default(), 1);
/// let record = store.check(&env, NonceMode::Required, now).unwrap().expect("a nonce to persist");
/// assert_eq!(record.expires_at_unix_ms, now.as_millis() + 300_000);
/// assert!(matches!(store.check(&env, NonceMode::Required, now), Err(NonceError::Invalid(_))));
/// ```
#[derive(Debug, Clone)]
pub struct NonceStore {
    window: ReplayWindow,
    capacity: usize,
    /// Live entries: key → expiry (unix µs, inclusive).
    live: HashMap<NonceKey, i64, DigestBuild>,
    /// The same entries by expiry, earliest first.
    expiry: BinaryHeap<Reverse<(i64, NonceKey)>>,
}

impl NonceStore {
    /// A store for envelopes checked against `window`, holding at most
    /// `capacity` nonces (0 counts as 1).
    #[must_use]
    pub fn new(window: ReplayWindow, capacity: usize) -> Self {
        Self {
            window,
            capacity: capacity.max(1),
            live: HashMap::default(),
            expiry: BinaryHeap::new(),
        }
    }

    /// Number of nonces remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.live.len()
    }

    /// Whether no nonce is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.live.is_empty()
    }

    /// The most nonces held at once.
    #[must_use]
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Forgets entries whose envelopes have left the window at `now`.
    fn expire(&mut self, now: UnixTime) {
        let now = now.as_micros();
        while let Some(Reverse((at, key))) = self.expiry.peek().copied() {
            if at >= now {
                break;
            }
            self.expiry.pop();
            if self.live.get(&key) == Some(&at) {
                self.live.remove(&key);
            }
        }
    }

    fn insert(&mut self, key: NonceKey, expires_us: i64) {
        let at = self.live.entry(key).or_insert(expires_us);
        *at = (*at).max(expires_us);
        let at = *at;
        self.expiry.push(Reverse((at, key)));
    }

    /// Atomic check-and-mark of `env.extensions.nonce` under `mode`, at `now`
    /// (the wall clock the window was checked with). `Ok(Some(record))`: a new
    /// nonce, marked; persist the record before answering so a restart keeps
    /// refusing it. `Ok(None)`: nothing to check (mode off, or no nonce when
    /// it is not required). Errors carry the reference's `InvalidNonceError` texts.
    pub fn check(
        &mut self,
        env: &Envelope,
        mode: NonceMode,
        now: UnixTime,
    ) -> Result<Option<NonceRecord>, NonceError> {
        if mode == NonceMode::Off {
            return Ok(None);
        }
        let Some(value) = env.extensions.as_ref().and_then(|e| e.get("nonce")) else {
            if mode == NonceMode::Required {
                return Err(NonceError::Invalid(AsapError::new(
                    asap_codes::INVALID_NONCE,
                    "Nonce is required: put a unique non-empty string in extensions.nonce",
                    json!({"nonce": null, "envelope_id": env.id}),
                )));
            }
            return Ok(None);
        };
        let nonce = match value {
            Value::String(s) if !s.is_empty() => s,
            Value::String(_) => {
                return Err(NonceError::Invalid(nonce_error(
                    "Nonce must be a non-empty string, got empty string",
                    "",
                    &env.id,
                )))
            }
            other => {
                let shown = python_str(other);
                return Err(NonceError::Invalid(nonce_error(
                    &format!(
                        "Nonce must be a non-empty string, got {}",
                        crate::jsonrpc::python_type_name(other)
                    ),
                    &shown,
                    &env.id,
                )));
            }
        };
        if nonce.len() > MAX_NONCE_LEN {
            let shown: String = nonce.chars().take(32).collect();
            return Err(NonceError::Invalid(nonce_error(
                &format!(
                    "Nonce is too long: {} bytes (max: {MAX_NONCE_LEN} bytes)",
                    nonce.len()
                ),
                &shown,
                &env.id,
            )));
        }
        self.expire(now);
        let sender = env.sender.as_str();
        let key = nonce_key(sender, nonce);
        if self.live.contains_key(&key) {
            return Err(NonceError::Invalid(duplicate_nonce(nonce, &env.id)));
        }
        if self.live.len() >= self.capacity {
            let earliest = self
                .expiry
                .peek()
                .map_or(now.as_micros(), |Reverse((at, _))| *at);
            // The entry leaves once `now` is past its expiry: 1 µs later.
            let wait_us = earliest.saturating_sub(now.as_micros()).saturating_add(1);
            let retry_after_secs = u64::try_from(wait_us.max(1))
                .unwrap_or(1)
                .div_ceil(1_000_000);
            return Err(NonceError::Full {
                capacity: self.capacity,
                retry_after_secs,
            });
        }
        let expires_us = self.expires_at(env).as_micros();
        self.insert(key, expires_us);
        Ok(Some(NonceRecord {
            sender: sender.to_owned(),
            nonce: nonce.clone(),
            // Rounded up: a restored entry never expires early.
            expires_at_unix_ms: expires_us.div_euclid(1000)
                + i64::from(expires_us.rem_euclid(1000) != 0),
        }))
    }

    /// The last instant `env` passes the window: its timestamp plus the maximum age.
    #[must_use]
    pub fn expires_at(&self, env: &Envelope) -> UnixTime {
        env.timestamp.unix().saturating_add(self.window.max_age)
    }

    /// Remembers nonces accepted before a restart (from a
    /// [`ReplayStore`](crate::store::ReplayStore)). All are kept, even past
    /// the capacity (then new nonces are refused until enough expire): a
    /// restart must not forget one. Expired records leave at the next check.
    pub fn restore<'a>(&mut self, records: impl IntoIterator<Item = &'a NonceRecord>) {
        for r in records {
            let key = nonce_key(&r.sender, &r.nonce);
            // The record's last millisecond, to its last microsecond.
            let expires_us = r
                .expires_at_unix_ms
                .saturating_mul(1000)
                .saturating_add(999);
            self.insert(key, expires_us);
        }
    }
}

fn python_str(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        other => other.to_string(),
    }
}

/// The reference's error for a nonce used before (here, or by another replica).
pub(super) fn duplicate_nonce(nonce: &str, envelope_id: &str) -> AsapError {
    nonce_error(
        &format!("Duplicate nonce detected: {nonce}"),
        nonce,
        envelope_id,
    )
}

fn nonce_error(message: &str, nonce: &str, envelope_id: &str) -> AsapError {
    AsapError::new(
        asap_codes::INVALID_NONCE,
        message,
        json!({"nonce": nonce, "envelope_id": envelope_id}),
    )
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;

    #[test]
    fn an_age_saturated_to_the_minimum_is_still_in_the_future() {
        // A far-future stamp seen from a clock before 1970: the age saturates at i64::MIN.
        let mut env = crate::model::Envelope::new(
            "e".into(),
            crate::model::Timestamp::from_unix(UnixTime::from_micros(i64::MAX)),
            crate::model::AgentUrn::new("urn:asap:agent:a").unwrap(),
            crate::model::AgentUrn::new("urn:asap:agent:b").unwrap(),
            crate::model::Payload::TaskRequest(crate::model::TaskRequest::new(
                "c",
                "s",
                crate::model::JsonObject::new(),
            )),
        );
        env.extensions = None;
        let now = UnixTime::from_micros(-1_000);
        assert!(ReplayWindow::default().check(&env, now).is_err());
    }
    use crate::model::{AgentUrn, Payload, TaskRequest, Timestamp};

    /// 2026-01-01T00:00:00Z: wall-clock "now" is just a number handed in.
    const NOW: UnixTime = UnixTime::from_secs(1_767_225_600);
    const US: Duration = Duration::from_micros(1);

    fn env_at(ts: Timestamp) -> Envelope {
        Envelope::new(
            "01KDXZ0000ENVREQ0000000001".into(),
            ts,
            AgentUrn::new("urn:asap:agent:a").unwrap(),
            AgentUrn::new("urn:asap:agent:b").unwrap(),
            Payload::TaskRequest(TaskRequest::new("c", "echo", serde_json::Map::new())),
        )
    }

    fn sent(t: UnixTime) -> Envelope {
        env_at(Timestamp::from_unix(t))
    }

    fn with_nonce(nonce: Value) -> Envelope {
        let mut e = sent(NOW);
        e.extensions = Some(json!({ "nonce": nonce }).as_object().unwrap().clone());
        e
    }

    fn iso(t: UnixTime) -> String {
        Timestamp::from_unix(t).to_python_isoformat()
    }

    // ---- timestamp window ----

    #[test]
    fn exactly_max_age_old_passes_one_microsecond_more_fails() {
        let w = ReplayWindow::default();
        let oldest = NOW.saturating_sub(MAX_ENVELOPE_AGE);
        assert_eq!(w.check(&sent(oldest), NOW), Ok(()));
        let too_old = oldest.saturating_sub(US);
        let err = w.check(&sent(too_old), NOW).unwrap_err();
        assert_eq!(err.code, asap_codes::INVALID_TIMESTAMP);
        assert_eq!(
            err.message,
            "Envelope timestamp is too old: 300.0 seconds (max: 300 seconds)"
        );
        assert_eq!(
            err.details,
            json!({
                "timestamp": iso(too_old),
                "age_seconds": 300.000_001,
                "envelope_id": "01KDXZ0000ENVREQ0000000001",
                "max_age_seconds": 300,
            })
        );
    }

    #[test]
    fn exactly_max_future_ahead_passes_one_microsecond_more_fails() {
        let w = ReplayWindow::default();
        let furthest = NOW.saturating_add(MAX_FUTURE_TOLERANCE);
        assert_eq!(w.check(&sent(furthest), NOW), Ok(()));
        let too_far = furthest.saturating_add(US);
        let err = w.check(&sent(too_far), NOW).unwrap_err();
        assert_eq!(err.code, asap_codes::INVALID_TIMESTAMP);
        assert_eq!(
            err.message,
            "Envelope timestamp is too far in the future: 30.0 seconds (max tolerance: 30 seconds)"
        );
        assert_eq!(
            err.details,
            json!({
                "timestamp": iso(too_far),
                "future_offset_seconds": 30.000_001,
                "envelope_id": "01KDXZ0000ENVREQ0000000001",
                "max_future_tolerance_seconds": 30,
            })
        );
    }

    #[test]
    fn inside_the_window_passes_on_both_sides_of_now() {
        // Ages between the two tolerances tell the two bounds apart (a check that
        // compared the age itself against max_future would refuse these).
        let w = ReplayWindow::default();
        for t in [
            NOW,
            NOW.saturating_sub(Duration::from_secs(31)),
            NOW.saturating_sub(Duration::from_secs(299)),
            NOW.saturating_add(Duration::from_secs(29)),
        ] {
            assert_eq!(w.check(&sent(t), NOW), Ok(()), "{t:?}");
        }
    }

    #[test]
    fn error_details_carry_seconds_with_their_fraction() {
        // 750.5 s and 42.25 s: `*` or `%` in place of `/`, or a lost sign, all
        // change the number a client is told.
        let w = ReplayWindow {
            max_age: Duration::from_secs(10),
            max_future: Duration::from_secs(2),
        };
        let old = NOW.saturating_sub(Duration::from_micros(750_500_000));
        let err = w.check(&sent(old), NOW).unwrap_err();
        assert_eq!(err.details["age_seconds"], json!(750.5));
        assert_eq!(err.details["max_age_seconds"], json!(10));
        assert_eq!(
            err.message,
            "Envelope timestamp is too old: 750.5 seconds (max: 10 seconds)"
        );

        let ahead = NOW.saturating_add(Duration::from_micros(42_250_000));
        let err = w.check(&sent(ahead), NOW).unwrap_err();
        assert_eq!(err.details["future_offset_seconds"], json!(42.25));
        assert_eq!(err.details["max_future_tolerance_seconds"], json!(2));
        assert_eq!(
            err.message,
            "Envelope timestamp is too far in the future: 42.2 seconds (max tolerance: 2 seconds)"
        );
    }

    #[test]
    fn the_configured_bounds_are_the_ones_applied() {
        let w = ReplayWindow {
            max_age: Duration::from_secs(10),
            max_future: Duration::from_secs(2),
        };
        let d = |s| Duration::from_secs(s);
        assert!(w.check(&sent(NOW.saturating_sub(d(10))), NOW).is_ok());
        assert!(w.check(&sent(NOW.saturating_sub(d(11))), NOW).is_err());
        assert!(w.check(&sent(NOW.saturating_add(d(2))), NOW).is_ok());
        assert!(w.check(&sent(NOW.saturating_add(d(3))), NOW).is_err());
    }

    #[test]
    fn details_timestamp_is_the_instant_in_utc() {
        // Sent at 01:00+01:00 and 301 s late: reported as the same instant in UTC.
        let ts: Timestamp = "2026-01-01T01:00:00+01:00".parse().unwrap();
        let now = ts.unix().saturating_add(Duration::from_secs(301));
        let err = ReplayWindow::default().check(&env_at(ts), now).unwrap_err();
        assert_eq!(err.details["timestamp"], json!("2026-01-01T00:00:00+00:00"));
    }

    #[test]
    fn missing_timestamp_error() {
        let err = ReplayWindow::missing_timestamp("E1");
        assert_eq!(err.code, asap_codes::INVALID_TIMESTAMP);
        assert_eq!(
            err.message,
            "Envelope timestamp is required for replay protection"
        );
        assert_eq!(err.details, json!({"timestamp": null, "envelope_id": "E1"}));
    }

    // ---- nonce store ----

    const W: ReplayWindow = ReplayWindow {
        max_age: Duration::from_secs(10),
        max_future: Duration::from_secs(2),
    };

    fn nonce_env(sender: &str, nonce: Value, ts: UnixTime) -> Envelope {
        let mut e = sent(ts);
        e.sender = AgentUrn::new(sender).unwrap();
        e.extensions = Some(json!({ "nonce": nonce }).as_object().unwrap().clone());
        e
    }

    fn invalid(r: Result<Option<NonceRecord>, NonceError>) -> AsapError {
        match r {
            Err(NonceError::Invalid(e)) => e,
            other => panic!("expected an invalid nonce, got {other:?}"),
        }
    }

    const WP: NonceMode = NonceMode::WhenPresent;

    #[test]
    fn modes_decide_what_a_missing_nonce_means() {
        let mut s = NonceStore::new(W, 4);
        assert_eq!(s.check(&sent(NOW), NonceMode::Off, NOW), Ok(None));
        assert_eq!(s.check(&sent(NOW), WP, NOW), Ok(None));
        let mut other = sent(NOW);
        other.extensions = Some(json!({"trace": "x"}).as_object().unwrap().clone());
        assert_eq!(s.check(&other, WP, NOW), Ok(None));
        let err = invalid(s.check(&other, NonceMode::Required, NOW));
        assert_eq!(err.code, asap_codes::INVALID_NONCE);
        assert_eq!(
            err.message,
            "Nonce is required: put a unique non-empty string in extensions.nonce"
        );
        assert_eq!(
            err.details,
            json!({"nonce": null, "envelope_id": "01KDXZ0000ENVREQ0000000001"})
        );
        // Off looks at nothing: a nonce twice passes twice, and is not remembered.
        let n = with_nonce(json!("abc"));
        assert_eq!(s.check(&n, NonceMode::Off, NOW), Ok(None));
        assert_eq!(s.check(&n, NonceMode::Off, NOW), Ok(None));
        assert_eq!((s.len(), s.is_empty()), (0, true));
    }

    #[test]
    fn mode_names_round_trip() {
        for m in [NonceMode::Off, NonceMode::WhenPresent, NonceMode::Required] {
            assert_eq!(m.as_str().parse::<NonceMode>(), Ok(m));
            assert_eq!(m.to_string(), m.as_str());
        }
        assert_eq!(" Required ".parse::<NonceMode>(), Ok(NonceMode::Required));
        assert_eq!(
            "yes".parse::<NonceMode>().unwrap_err(),
            "unknown nonce mode \"yes\"; use one of off, when-present, required"
        );
    }

    #[test]
    fn a_nonce_is_remembered_and_its_replay_refused() {
        let mut s = NonceStore::new(ReplayWindow::default(), 4);
        let record = s.check(&with_nonce(json!("abc")), WP, NOW).unwrap();
        assert_eq!(
            record,
            Some(NonceRecord {
                sender: "urn:asap:agent:a".into(),
                nonce: "abc".into(),
                expires_at_unix_ms: NOW.as_millis() + 300_000,
            })
        );
        assert_eq!((s.len(), s.is_empty(), s.capacity()), (1, false, 4));
        let err = invalid(s.check(&with_nonce(json!("abc")), NonceMode::Required, NOW));
        assert_eq!(err.code, asap_codes::INVALID_NONCE);
        assert_eq!(err.message, "Duplicate nonce detected: abc");
        assert_eq!(
            err.details,
            json!({"nonce": "abc", "envelope_id": "01KDXZ0000ENVREQ0000000001"})
        );
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_nonce_lives_exactly_as_long_as_its_envelope_passes_the_window() {
        for ts in [
            NOW,
            NOW.saturating_sub(Duration::from_secs(9)),
            NOW.saturating_add(Duration::from_secs(2)),
        ] {
            let mut s = NonceStore::new(W, 4);
            let n = nonce_env("urn:asap:agent:a", json!("abc"), ts);
            assert!(s.check(&n, WP, NOW).unwrap().is_some());
            let last = ts.saturating_add(W.max_age);
            assert_eq!(s.expires_at(&n), last);
            // The last instant the window accepts the envelope: still refused.
            assert!(W.check(&n, last).is_ok());
            assert!(s.check(&n, WP, last).is_err(), "{ts:?}");
            // One microsecond later the window refuses it, and the store forgets it.
            let after = last.saturating_add(US);
            assert!(W.check(&n, after).is_err());
            assert!(s.check(&n, WP, after).unwrap().is_some());
            assert_eq!(s.len(), 1, "the fresh mark replaced the expired one");
        }
    }

    #[test]
    fn nonces_are_scoped_per_sender() {
        let mut s = NonceStore::new(W, 4);
        let a = nonce_env("urn:asap:agent:a", json!("n"), NOW);
        let b = nonce_env("urn:asap:agent:b", json!("n"), NOW);
        assert!(s.check(&a, WP, NOW).unwrap().is_some());
        assert!(s.check(&b, WP, NOW).unwrap().is_some());
        assert!(s.check(&a, WP, NOW).is_err());
        assert!(s.check(&b, WP, NOW).is_err());
        // Length-prefixed keys: sender "a" + nonce "bn" is not sender "ab" + nonce "n".
        let ab = nonce_env("urn:asap:agent:ab", json!("n"), NOW);
        let a_bn = nonce_env("urn:asap:agent:a", json!("bn"), NOW);
        assert!(s.check(&ab, WP, NOW).unwrap().is_some());
        assert!(s.check(&a_bn, WP, NOW).unwrap().is_some());
    }

    #[test]
    fn a_full_store_refuses_new_nonces_and_forgets_none() {
        let mut s = NonceStore::new(W, 2);
        let a = nonce_env("urn:asap:agent:a", json!("a"), NOW);
        let b = nonce_env("urn:asap:agent:a", json!("b"), NOW.saturating_add(US));
        let c = nonce_env(
            "urn:asap:agent:a",
            json!("c"),
            NOW.saturating_add(Duration::from_secs(1)),
        );
        assert!(s.check(&a, WP, NOW).unwrap().is_some());
        assert!(s.check(&b, WP, NOW).unwrap().is_some());
        // a leaves at NOW + 10 s + 1 µs: 10.000001 s from now, so retry in 11 s.
        assert_eq!(
            s.check(&c, WP, NOW),
            Err(NonceError::Full {
                capacity: 2,
                retry_after_secs: 11
            })
        );
        assert_eq!(
            NonceError::Full {
                capacity: 2,
                retry_after_secs: 11
            }
            .to_string(),
            "nonce store full: 2 nonces are inside the replay window; retry in 11 s (or raise the capacity)"
        );
        assert!(s.check(&a, WP, NOW).is_err(), "a is not forgotten");
        assert!(s.check(&b, WP, NOW).is_err(), "b is not forgotten");
        let late = NOW.saturating_add(W.max_age);
        assert!(matches!(
            s.check(&c, WP, late),
            Err(NonceError::Full {
                retry_after_secs: 1,
                ..
            })
        ));
        assert!(
            s.check(&a, WP, late).is_err(),
            "a still live at its last instant"
        );
        // a expired: c fits; b (1 µs younger) is still refused.
        let after = late.saturating_add(US);
        assert!(s.check(&c, WP, after).unwrap().is_some());
        assert!(s.check(&b, WP, after).is_err());
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn capacity_zero_acts_as_one() {
        let mut s = NonceStore::new(W, 0);
        assert!(s.check(&with_nonce(json!("a")), WP, NOW).is_ok());
        assert!(matches!(
            s.check(&with_nonce(json!("a")), WP, NOW),
            Err(NonceError::Invalid(_))
        ));
        assert!(matches!(
            s.check(&with_nonce(json!("b")), WP, NOW),
            Err(NonceError::Full { capacity: 1, .. })
        ));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn malformed_nonces_are_refused_with_the_reference_text() {
        let mut s = NonceStore::new(W, 4);
        for (value, message, shown) in [
            (
                json!(""),
                "Nonce must be a non-empty string, got empty string",
                "",
            ),
            (
                json!(null),
                "Nonce must be a non-empty string, got NoneType",
                "None",
            ),
            (
                json!(true),
                "Nonce must be a non-empty string, got bool",
                "True",
            ),
            (
                json!(false),
                "Nonce must be a non-empty string, got bool",
                "False",
            ),
            (json!(5), "Nonce must be a non-empty string, got int", "5"),
            (
                json!([1]),
                "Nonce must be a non-empty string, got list",
                "[1]",
            ),
        ] {
            for mode in [WP, NonceMode::Required] {
                let err = invalid(s.check(&with_nonce(value.clone()), mode, NOW));
                assert_eq!(err.code, asap_codes::INVALID_NONCE);
                assert_eq!(err.message, message);
                assert_eq!(
                    err.details,
                    json!({"nonce": shown, "envelope_id": "01KDXZ0000ENVREQ0000000001"})
                );
            }
        }
        assert!(s.is_empty(), "refused nonces are not remembered");
    }

    #[test]
    fn nonces_longer_than_the_maximum_are_refused() {
        let mut s = NonceStore::new(W, 4);
        let longest = "x".repeat(MAX_NONCE_LEN);
        assert!(s
            .check(&with_nonce(json!(longest)), WP, NOW)
            .unwrap()
            .is_some());
        let err = invalid(s.check(&with_nonce(json!(format!("{longest}y"))), WP, NOW));
        assert_eq!(err.message, "Nonce is too long: 257 bytes (max: 256 bytes)");
        assert_eq!(err.details["nonce"], json!("x".repeat(32)));
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn records_round_up_to_the_millisecond_and_restore_refuses_them() {
        let ts = NOW.saturating_add(Duration::from_micros(1_500));
        let mut s = NonceStore::new(W, 4);
        let a = nonce_env("urn:asap:agent:a", json!("a"), ts);
        let record = s.check(&a, WP, NOW).unwrap().unwrap();
        assert_eq!(record.expires_at_unix_ms, NOW.as_millis() + 10_002);
        // A restarted server refuses the replay until the record expires, and no earlier.
        let mut restarted = NonceStore::new(W, 4);
        restarted.restore([&record]);
        assert_eq!(restarted.len(), 1);
        let last = ts.saturating_add(W.max_age);
        assert!(restarted.check(&a, WP, last).is_err());
        let past = UnixTime::from_millis(record.expires_at_unix_ms + 1);
        assert!(restarted.check(&a, WP, past).unwrap().is_some());
    }

    #[test]
    fn restore_keeps_every_record_even_past_the_capacity() {
        let records: Vec<NonceRecord> = (0..3)
            .map(|i| NonceRecord {
                sender: "urn:asap:agent:a".into(),
                nonce: format!("n{i}"),
                expires_at_unix_ms: NOW.as_millis() + 1_000 * (i + 1),
            })
            .collect();
        let mut s = NonceStore::new(W, 2);
        s.restore(&records);
        assert_eq!(s.len(), 3);
        for i in 0..3 {
            let e = nonce_env("urn:asap:agent:a", json!(format!("n{i}")), NOW);
            assert!(matches!(s.check(&e, WP, NOW), Err(NonceError::Invalid(_))));
        }
        let fresh = nonce_env("urn:asap:agent:a", json!("fresh"), NOW);
        assert!(matches!(
            s.check(&fresh, WP, NOW),
            Err(NonceError::Full { .. })
        ));
        // Two expire (n0 at +1 s, n1 at +2 s): room again.
        let later = NOW.saturating_add(Duration::from_millis(2_001));
        assert!(s.check(&fresh, WP, later).unwrap().is_some());
        assert_eq!(s.len(), 2);
        // Restoring a record already held keeps the later expiry.
        s.restore(&[NonceRecord {
            expires_at_unix_ms: NOW.as_millis(),
            ..records[2].clone()
        }]);
        assert_eq!(s.len(), 2);
        let e = nonce_env("urn:asap:agent:a", json!("n2"), NOW);
        assert!(s
            .check(&e, WP, NOW.saturating_add(Duration::from_millis(2_500)))
            .is_err());
    }

    /// The model: an accepted nonce is live until its envelope's timestamp
    /// plus the maximum age; a full store refuses, never forgets.
    #[derive(Default)]
    struct Model {
        live: std::collections::HashMap<(u8, u8), i64>,
    }

    #[derive(Debug, PartialEq)]
    enum Verdict {
        Accepted,
        Duplicate,
        Full,
    }

    impl Model {
        fn check(&mut self, key: (u8, u8), ts: i64, now: i64, capacity: usize) -> Verdict {
            self.live.retain(|_, at| *at >= now);
            if self.live.contains_key(&key) {
                return Verdict::Duplicate;
            }
            if self.live.len() >= capacity {
                return Verdict::Full;
            }
            self.live.insert(key, ts + MAX_AGE_US);
            Verdict::Accepted
        }
    }

    const MAX_AGE_US: i64 = 1_000;

    fn step() -> impl Strategy<Value = i64> {
        // Steps that land on, just before and just after an expiry are common.
        prop_oneof![
            2 => Just(0),
            1 => Just(1),
            1 => Just(MAX_AGE_US - 1),
            1 => Just(MAX_AGE_US),
            1 => Just(MAX_AGE_US + 1),
            4 => 0..MAX_AGE_US / 2,
        ]
    }

    fn verdict(r: &Result<Option<NonceRecord>, NonceError>) -> Verdict {
        match r {
            Ok(Some(_)) => Verdict::Accepted,
            Err(NonceError::Invalid(_)) => Verdict::Duplicate,
            Err(NonceError::Full { .. }) => Verdict::Full,
            Ok(None) => panic!("a nonce was present"),
        }
    }

    fn window() -> ReplayWindow {
        ReplayWindow {
            max_age: Duration::from_micros(MAX_AGE_US as u64),
            max_future: Duration::from_micros(200),
        }
    }

    proptest! {
        #[test]
        fn nonce_store_agrees_with_the_model(
            capacity in 1usize..6,
            ops in proptest::collection::vec((0u8..2, 0u8..6, -MAX_AGE_US..200, step()), 1..200),
        ) {
            // Time only moves forward here; a clock stepping back only keeps
            // marks longer, which the model does not describe.
            let mut store = NonceStore::new(window(), capacity);
            let mut model = Model::default();
            let mut now = 0i64;
            for (sender, nonce, offset, dt) in ops {
                now += dt;
                let ts = now + offset;
                let env = nonce_env(&format!("urn:asap:agent:s{sender}"), json!(format!("n{nonce}")), UnixTime::from_micros(ts));
                let got = verdict(&store.check(&env, WP, UnixTime::from_micros(now)));
                prop_assert_eq!(got, model.check((sender, nonce), ts, now, capacity), "s{} n{} ts {} at {}", sender, nonce, ts, now);
                prop_assert_eq!(store.len(), model.live.len());
                prop_assert!(store.len() <= capacity);
            }
        }

        /// The property the store exists for: once accepted, an envelope's
        /// nonce is refused for as long as the envelope passes the window,
        /// however many other nonces arrive (they are refused instead).
        #[test]
        fn a_seen_nonce_is_refused_while_its_envelope_passes_the_window(
            capacity in 1usize..40,
            flood in 0usize..200,
            offset in -MAX_AGE_US..200,
            replay_at in 0..=MAX_AGE_US,
            steps in proptest::collection::vec(0i64..20, 200),
        ) {
            let mut store = NonceStore::new(window(), capacity);
            let original = nonce_env("urn:asap:agent:a", json!("original"), UnixTime::from_micros(offset));
            let first = store.check(&original, WP, UnixTime::EPOCH);
            prop_assert!(matches!(first, Ok(Some(_))));
            let last = offset + MAX_AGE_US;
            let mut now = 0i64;
            for (i, dt) in steps.iter().take(flood).enumerate() {
                now = (now + dt).min(last);
                let fresh = nonce_env("urn:asap:agent:a", json!(format!("fresh{i}")), UnixTime::from_micros(now));
                let _ = store.check(&fresh, WP, UnixTime::from_micros(now));
                prop_assert!(store.len() <= capacity);
            }
            let at = now.max(replay_at.min(last));
            if window().check(&original, UnixTime::from_micros(at)).is_ok() {
                prop_assert!(
                    matches!(store.check(&original, WP, UnixTime::from_micros(at)), Err(NonceError::Invalid(_))),
                    "replay accepted at {} (envelope at {}, after {} fresh nonces)", at, offset, flood
                );
            }
        }
    }
}
