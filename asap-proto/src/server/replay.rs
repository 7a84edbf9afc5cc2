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
        if -age_us > max_future_us {
            let off = -age_us as f64 / 1e6;
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
