//! Replay protection: the envelope timestamp window and the opt-in nonce store.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use serde_json::{json, Value};

use crate::jsonrpc::{asap_codes, AsapError};
use crate::model::{Envelope, UnixTime};

/// Reference default: envelopes older than this are rejected (inclusive boundary passes).
pub const MAX_ENVELOPE_AGE: Duration = Duration::from_secs(300);
/// Reference default: envelopes this far in the future are rejected.
pub const MAX_FUTURE_TOLERANCE: Duration = Duration::from_secs(30);
/// Reference default nonce lifetime (twice the age window).
pub const NONCE_TTL: Duration = Duration::from_secs(600);

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

/// Seen-nonce memory with a TTL and a hard capacity (oldest evicted first).
///
/// Memory stays bounded under a flood of fresh nonces: at capacity, the oldest
/// nonce is forgotten early. Size `capacity` above the expected nonce rate × TTL.
#[derive(Debug, Clone)]
pub struct NonceStore {
    ttl: Duration,
    capacity: usize,
    seen: HashMap<String, UnixTime>,
    order: VecDeque<(UnixTime, String)>,
}

impl NonceStore {
    /// A store remembering nonces for `ttl`, at most `capacity` at once.
    #[must_use]
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self {
            ttl,
            capacity: capacity.max(1),
            seen: HashMap::new(),
            order: VecDeque::new(),
        }
    }

    /// Number of nonces remembered.
    #[must_use]
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    /// Whether no nonce is remembered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    fn expire(&mut self, now: UnixTime) {
        while let Some((at, _)) = self.order.front() {
            if now.micros_since(*at) < i64::try_from(self.ttl.as_micros()).unwrap_or(i64::MAX) {
                break;
            }
            if let Some((at, nonce)) = self.order.pop_front() {
                if self.seen.get(&nonce) == Some(&at) {
                    self.seen.remove(&nonce);
                }
            }
        }
    }

    /// Atomic check-and-mark of `env.extensions.nonce` (absent → accepted),
    /// with the reference's `InvalidNonceError` messages.
    pub fn check(&mut self, env: &Envelope, now: UnixTime) -> Result<(), AsapError> {
        let Some(value) = env.extensions.as_ref().and_then(|e| e.get("nonce")) else {
            return Ok(());
        };
        let nonce = match value {
            Value::String(s) if !s.is_empty() => s,
            Value::String(_) => {
                return Err(nonce_error(
                    "Nonce must be a non-empty string, got empty string",
                    "",
                    &env.id,
                ))
            }
            other => {
                let shown = python_str(other);
                return Err(nonce_error(
                    &format!(
                        "Nonce must be a non-empty string, got {}",
                        crate::jsonrpc::python_type_name(other)
                    ),
                    &shown,
                    &env.id,
                ));
            }
        };
        self.expire(now);
        if self.seen.contains_key(nonce) {
            return Err(nonce_error(
                &format!("Duplicate nonce detected: {nonce}"),
                nonce,
                &env.id,
            ));
        }
        while self.seen.len() >= self.capacity {
            match self.order.pop_front() {
                Some((at, old)) => {
                    if self.seen.get(&old) == Some(&at) {
                        self.seen.remove(&old);
                    }
                }
                None => break,
            }
        }
        self.seen.insert(nonce.clone(), now);
        self.order.push_back((now, nonce.clone()));
        Ok(())
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

fn nonce_error(message: &str, nonce: &str, envelope_id: &str) -> AsapError {
    AsapError::new(
        asap_codes::INVALID_NONCE,
        message,
        json!({"nonce": nonce, "envelope_id": envelope_id}),
    )
}

#[cfg(test)]
mod tests {
    use std::collections::VecDeque;

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

    #[test]
    fn envelopes_without_a_nonce_pass_and_are_not_remembered() {
        let mut s = NonceStore::new(NONCE_TTL, 4);
        assert!(s.is_empty());
        assert_eq!(s.check(&sent(NOW), NOW), Ok(()));
        let mut other = sent(NOW);
        other.extensions = Some(json!({"trace": "x"}).as_object().unwrap().clone());
        assert_eq!(s.check(&other, NOW), Ok(()));
        assert_eq!((s.len(), s.is_empty()), (0, true));
    }

    #[test]
    fn a_nonce_is_remembered_and_its_replay_refused() {
        let mut s = NonceStore::new(NONCE_TTL, 4);
        assert_eq!(s.check(&with_nonce(json!("abc")), NOW), Ok(()));
        assert_eq!((s.len(), s.is_empty()), (1, false));
        let err = s.check(&with_nonce(json!("abc")), NOW).unwrap_err();
        assert_eq!(err.code, asap_codes::INVALID_NONCE);
        assert_eq!(err.message, "Duplicate nonce detected: abc");
        assert_eq!(
            err.details,
            json!({"nonce": "abc", "envelope_id": "01KDXZ0000ENVREQ0000000001"})
        );
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn a_nonce_expires_at_exactly_the_ttl() {
        let ttl = Duration::from_secs(10);
        let mut s = NonceStore::new(ttl, 4);
        let n = with_nonce(json!("abc"));
        assert_eq!(s.check(&n, NOW), Ok(()));
        // 1 µs before the TTL: still remembered (and the refusal does not re-mark it).
        assert!(s.check(&n, NOW.saturating_add(ttl - US)).is_err());
        assert_eq!(s.check(&n, NOW.saturating_add(ttl)), Ok(()));
        assert_eq!(s.len(), 1);
        // The fresh mark runs from its own time.
        assert!(s.check(&n, NOW.saturating_add(ttl + ttl - US)).is_err());
    }

    #[test]
    fn expired_nonces_leave_the_count() {
        let ttl = Duration::from_secs(10);
        let mut s = NonceStore::new(ttl, 8);
        assert!(s.check(&with_nonce(json!("a")), NOW).is_ok());
        assert!(s
            .check(&with_nonce(json!("b")), NOW.saturating_add(US))
            .is_ok());
        assert_eq!(s.len(), 2);
        assert!(s
            .check(&with_nonce(json!("c")), NOW.saturating_add(ttl))
            .is_ok());
        assert_eq!(s.len(), 2, "a expired, b and c live");
    }

    #[test]
    fn at_capacity_the_oldest_is_forgotten_first() {
        let mut s = NonceStore::new(NONCE_TTL, 2);
        for n in ["a", "b", "c"] {
            assert!(s.check(&with_nonce(json!(n)), NOW).is_ok());
        }
        assert_eq!(s.len(), 2);
        assert!(s.check(&with_nonce(json!("b")), NOW).is_err());
        assert!(s.check(&with_nonce(json!("c")), NOW).is_err());
        assert!(
            s.check(&with_nonce(json!("a")), NOW).is_ok(),
            "a was evicted"
        );
        assert_eq!(s.len(), 2);
    }

    #[test]
    fn capacity_zero_acts_as_one() {
        let mut s = NonceStore::new(NONCE_TTL, 0);
        assert!(s.check(&with_nonce(json!("a")), NOW).is_ok());
        assert!(s.check(&with_nonce(json!("a")), NOW).is_err());
        assert!(s.check(&with_nonce(json!("b")), NOW).is_ok());
        assert_eq!(s.len(), 1);
    }

    #[test]
    fn malformed_nonces_are_refused_with_the_reference_text() {
        let mut s = NonceStore::new(NONCE_TTL, 4);
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
            let err = s.check(&with_nonce(value), NOW).unwrap_err();
            assert_eq!(err.code, asap_codes::INVALID_NONCE);
            assert_eq!(err.message, message);
            assert_eq!(
                err.details,
                json!({"nonce": shown, "envelope_id": "01KDXZ0000ENVREQ0000000001"})
            );
        }
        assert!(s.is_empty(), "refused nonces are not remembered");
    }

    /// The reference model: nonces live from their mark until exactly `ttl`
    /// later; a full store forgets its oldest mark first.
    struct Model {
        ttl: i64,
        capacity: usize,
        live: VecDeque<(u8, i64)>,
    }

    impl Model {
        fn check(&mut self, nonce: u8, now: i64) -> bool {
            self.live.retain(|&(_, at)| now - at < self.ttl);
            if self.live.iter().any(|&(n, _)| n == nonce) {
                return false;
            }
            if self.live.len() == self.capacity {
                self.live.pop_front();
            }
            self.live.push_back((nonce, now));
            true
        }
    }

    const TTL_US: i64 = 1_000;

    fn step() -> impl Strategy<Value = i64> {
        // Steps that land on, just before and just after the TTL are common.
        prop_oneof![
            2 => Just(0),
            1 => Just(1),
            1 => Just(TTL_US - 1),
            1 => Just(TTL_US),
            1 => Just(TTL_US + 1),
            4 => 0..TTL_US / 2,
        ]
    }

    proptest! {
        #[test]
        fn nonce_store_agrees_with_the_model(
            capacity in 1usize..6,
            ops in proptest::collection::vec((0u8..8, step()), 1..200),
        ) {
            // Time only moves forward here; a clock stepping back only keeps
            // marks longer, which the model does not describe.
            let ttl = Duration::from_micros(TTL_US as u64);
            let mut store = NonceStore::new(ttl, capacity);
            let mut model = Model { ttl: TTL_US, capacity, live: VecDeque::new() };
            let mut now = 0i64;
            for (nonce, dt) in ops {
                now += dt;
                let env = with_nonce(json!(format!("n{nonce}")));
                let accepted = store.check(&env, UnixTime::from_micros(now)).is_ok();
                prop_assert_eq!(accepted, model.check(nonce, now), "nonce n{} at {}", nonce, now);
                prop_assert_eq!(store.len(), model.live.len());
                prop_assert_eq!(store.is_empty(), model.live.is_empty());
            }
        }
    }
}
