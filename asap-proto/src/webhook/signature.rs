//! Webhook signatures: the reference's `X-ASAP-Signature` and Standard Webhooks
//! (`webhook-id`, `webhook-timestamp`, `webhook-signature`), for senders and receivers.

use core::fmt;
use std::time::Duration;

use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, STANDARD};
use base64::engine::DecodePaddingMode;
use base64::Engine as _;
use ring::hmac;

use crate::error::Fault;
use crate::model::UnixTime;

/// The reference's signature header: `sha256=<hex HMAC-SHA256 of the body>`.
pub const ASAP_SIGNATURE_HEADER: &str = "x-asap-signature";
/// Standard Webhooks: the event id, stable across retries (receivers dedup on it).
pub const WEBHOOK_ID_HEADER: &str = "webhook-id";
/// Standard Webhooks: the attempt's Unix time in seconds.
pub const WEBHOOK_TIMESTAMP_HEADER: &str = "webhook-timestamp";
/// Standard Webhooks: space-separated `v1,<base64 HMAC-SHA256>` signatures.
pub const WEBHOOK_SIGNATURE_HEADER: &str = "webhook-signature";
/// How far a `webhook-timestamp` may be from the receiver's clock (Standard Webhooks: 5 minutes).
pub const DEFAULT_TOLERANCE: Duration = Duration::from_secs(5 * 60);
/// The prefix of Standard Webhooks secrets.
pub const WHSEC_PREFIX: &str = "whsec_";

const ASAP_PREFIX: &str = "sha256=";

/// Secrets are often copied without their `=` padding; Standard Webhooks
/// libraries accept both.
const LENIENT_BASE64: GeneralPurpose = GeneralPurpose::new(
    &base64::alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// An HMAC-SHA256 key for webhook signatures. Its `Debug` output never shows the key.
///
/// ```
/// use asap_proto::webhook::WebhookSecret;
/// // The reference signs with the raw bytes of its secret (vectors/webhook/delivery.json):
/// let asap = WebhookSecret::from_bytes(b"test-secret");
/// let body = br#"{"attempt":1,"data":{"note":"h\u00e9llo","status":"completed"},"event":"task.completed","task_id":"task_01KDXZ00000000000000000000"}"#;
/// let header = asap.asap_signature(body);
/// assert_eq!(header, "sha256=79b01e2cf041dcb32a49df2f4b7bb9b695b2a2a9ed0098128a9ff63cc3085843");
/// asap.verify_asap_signature(body, &header).unwrap();
/// // Standard Webhooks secrets are `whsec_` + base64 of the key:
/// let std = WebhookSecret::from_whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
/// assert_eq!(
///     std.standard_signature("msg_p5jXN8AQM9LWM0D4loKWxJek", 1_614_265_330, br#"{"test": 2432232314}"#),
///     "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
/// );
/// assert_eq!(format!("{std:?}"), "WebhookSecret(..)");
/// ```
#[derive(Clone)]
pub struct WebhookSecret {
    key: hmac::Key,
}

impl fmt::Debug for WebhookSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("WebhookSecret(..)")
    }
}

/// A configured secret is unusable (local configuration error).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SecretError {
    /// The secret decodes to no bytes.
    #[error("webhook secret is empty; configure at least 16 random bytes")]
    Empty,
    /// The part after `whsec_` is not base64.
    #[error("webhook secret is not '{WHSEC_PREFIX}' followed by base64: {reason}")]
    NotBase64 {
        /// What the decoder said.
        reason: String,
    },
}

impl WebhookSecret {
    /// A key from raw bytes (the reference's `secret=b"..."`).
    #[must_use]
    pub fn from_bytes(secret: &[u8]) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, secret),
        }
    }

    /// A Standard Webhooks secret: `whsec_<base64>` (the prefix is optional, as
    /// in the Standard Webhooks libraries); the key is the decoded bytes.
    pub fn from_whsec(secret: &str) -> Result<Self, SecretError> {
        let b64 = secret.strip_prefix(WHSEC_PREFIX).unwrap_or(secret);
        let bytes = LENIENT_BASE64
            .decode(b64.trim())
            .map_err(|e| SecretError::NotBase64 {
                reason: e.to_string(),
            })?;
        if bytes.is_empty() {
            return Err(SecretError::Empty);
        }
        Ok(Self::from_bytes(&bytes))
    }

    /// `sha256=<lower-case hex HMAC-SHA256(key, body)>`, the reference's `X-ASAP-Signature`.
    #[must_use]
    pub fn asap_signature(&self, body: &[u8]) -> String {
        let tag = hmac::sign(&self.key, body);
        let mut out = String::with_capacity(ASAP_PREFIX.len() + 64);
        out.push_str(ASAP_PREFIX);
        crate::model::push_lower_hex(&mut out, tag.as_ref());
        out
    }

    fn standard_tag(&self, id: &str, timestamp: i64, body: &[u8]) -> hmac::Tag {
        let mut ctx = hmac::Context::with_key(&self.key);
        ctx.update(id.as_bytes());
        ctx.update(b".");
        ctx.update(timestamp.to_string().as_bytes());
        ctx.update(b".");
        ctx.update(body);
        ctx.sign()
    }

    /// `v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>`, one Standard Webhooks signature.
    #[must_use]
    pub fn standard_signature(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let tag = self.standard_tag(id, timestamp, body);
        let mut out = String::with_capacity(3 + 44);
        out.push_str("v1,");
        STANDARD.encode_string(tag.as_ref(), &mut out);
        out
    }

    /// Checks an `X-ASAP-Signature` value in constant time (hex in either case).
    pub fn verify_asap_signature(&self, body: &[u8], header: &str) -> Result<(), SignatureError> {
        let malformed = |reason: &str| SignatureError::MalformedHeader {
            name: ASAP_SIGNATURE_HEADER,
            reason: reason.to_owned(),
        };
        let hex = header
            .trim()
            .strip_prefix(ASAP_PREFIX)
            .ok_or_else(|| malformed("expected 'sha256=<hex>'"))?;
        let tag = decode_hex_32(hex).ok_or_else(|| malformed("expected 64 hex digits"))?;
        hmac::verify(&self.key, body, &tag).map_err(|_| SignatureError::NoMatchingSignature)
    }
}

fn decode_hex_32(hex: &str) -> Option<[u8; 32]> {
    let bytes = hex.as_bytes();
    if bytes.len() != 64 {
        return None;
    }
    let nibble = |c: u8| match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in bytes.chunks_exact(2).enumerate() {
        out[i] = (nibble(pair[0])? << 4) | nibble(pair[1])?;
    }
    Some(out)
}

/// The keys a sender signs with: the current one first, then any previous
/// ones still accepted by receivers during a rotation.
///
/// `X-ASAP-Signature` carries the current key's signature (the reference has
/// a single header value); `webhook-signature` carries one `v1,` entry per key,
/// space-separated, so a receiver holding either key accepts the delivery.
#[derive(Debug, Clone)]
pub struct SigningKeys {
    keys: Vec<WebhookSecret>,
}

impl SigningKeys {
    /// One key.
    #[must_use]
    pub fn new(current: WebhookSecret) -> Self {
        Self {
            keys: vec![current],
        }
    }

    /// Adds a previous key that is still being rotated out.
    #[must_use]
    pub fn with_previous(mut self, previous: WebhookSecret) -> Self {
        self.keys.push(previous);
        self
    }

    /// The current key.
    #[must_use]
    pub fn current(&self) -> &WebhookSecret {
        &self.keys[0]
    }

    /// Every key, current first.
    #[must_use]
    pub fn keys(&self) -> &[WebhookSecret] {
        &self.keys
    }

    /// The `webhook-signature` value: every key's `v1,` signature, space-separated.
    #[must_use]
    pub fn standard_signatures(&self, id: &str, timestamp: i64, body: &[u8]) -> String {
        let mut out = String::with_capacity(self.keys.len() * 48);
        for (i, key) in self.keys.iter().enumerate() {
            if i > 0 {
                out.push(' ');
            }
            out.push_str(&key.standard_signature(id, timestamp, body));
        }
        out
    }
}

/// A delivery's signature did not verify. The sender's fault (or a secret
/// that differs between the two sides), except where [`fault`](Self::fault) says otherwise.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SignatureError {
    /// A required header is absent.
    #[error(
        "webhook request has no '{name}' header; the sender does not sign with Standard Webhooks"
    )]
    MissingHeader {
        /// The header.
        name: &'static str,
    },
    /// A header is present but unreadable.
    #[error("webhook header '{name}' is malformed: {reason}")]
    MalformedHeader {
        /// The header.
        name: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// `webhook-timestamp` is older than the tolerance (a replay, or the sender's clock is behind).
    #[error("webhook-timestamp {timestamp} is {age_secs} s older than now, over the {tolerance_secs} s tolerance (replayed delivery, or the sender's clock is behind)")]
    TimestampTooOld {
        /// The header's value.
        timestamp: i64,
        /// How old it is.
        age_secs: u64,
        /// The tolerance.
        tolerance_secs: u64,
    },
    /// `webhook-timestamp` is further in the future than the tolerance.
    #[error("webhook-timestamp {timestamp} is {ahead_secs} s in the future, over the {tolerance_secs} s tolerance (the sender's or this receiver's clock is wrong)")]
    TimestampTooNew {
        /// The header's value.
        timestamp: i64,
        /// How far ahead it is.
        ahead_secs: u64,
        /// The tolerance.
        tolerance_secs: u64,
    },
    /// No signature matches any configured secret.
    #[error("no webhook signature matches a configured secret: the body was altered, or the sender signs with another secret")]
    NoMatchingSignature,
}

impl SignatureError {
    /// Whose fault the failure is: the receiver's clock may be the wrong one
    /// for a future timestamp; everything else is the sender's.
    #[must_use]
    pub fn fault(&self) -> Fault {
        match self {
            Self::TimestampTooNew { .. } => Fault::Local,
            _ => Fault::Peer,
        }
    }
}

/// A receiver's Standard Webhooks verifier: constant-time HMAC checks
/// (`ring::hmac::verify`) against every configured secret, and a timestamp
/// window around the `now` the caller passes (no clock is read).
///
/// ```
/// use asap_proto::model::UnixTime;
/// use asap_proto::webhook::{SignatureError, StandardVerifier, WebhookSecret};
/// let secret = WebhookSecret::from_whsec("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
/// let verifier = StandardVerifier::new(vec![secret]);
/// let body = br#"{"test": 2432232314}"#;
/// let sig = "v1,bm9wZQ== v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";
/// let now = UnixTime::from_secs(1_614_265_330 + 60);
/// verifier.verify("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", sig, body, now).unwrap();
/// let later = UnixTime::from_secs(1_614_265_330 + 301);
/// assert!(matches!(
///     verifier.verify("msg_p5jXN8AQM9LWM0D4loKWxJek", "1614265330", sig, body, later),
///     Err(SignatureError::TimestampTooOld { .. })
/// ));
/// ```
#[derive(Debug, Clone)]
pub struct StandardVerifier {
    secrets: Vec<WebhookSecret>,
    tolerance: Duration,
}

impl StandardVerifier {
    /// A verifier accepting a signature by any of `secrets`, with the default 5-minute tolerance.
    #[must_use]
    pub fn new(secrets: Vec<WebhookSecret>) -> Self {
        Self {
            secrets,
            tolerance: DEFAULT_TOLERANCE,
        }
    }

    /// Changes the timestamp tolerance.
    #[must_use]
    pub fn with_tolerance(mut self, tolerance: Duration) -> Self {
        self.tolerance = tolerance;
        self
    }

    /// The timestamp tolerance.
    #[must_use]
    pub fn tolerance(&self) -> Duration {
        self.tolerance
    }

    /// Verifies one delivery from its three header values and exact body bytes.
    pub fn verify(
        &self,
        id: &str,
        timestamp: &str,
        signatures: &str,
        body: &[u8],
        now: UnixTime,
    ) -> Result<(), SignatureError> {
        let ts: i64 = timestamp
            .trim()
            .parse()
            .map_err(|_| SignatureError::MalformedHeader {
                name: WEBHOOK_TIMESTAMP_HEADER,
                reason: format!("{timestamp:?} is not integer Unix seconds"),
            })?;
        let tolerance_secs = self.tolerance.as_secs();
        let diff = now.as_secs().saturating_sub(ts);
        if diff > 0 && diff.unsigned_abs() > tolerance_secs {
            return Err(SignatureError::TimestampTooOld {
                timestamp: ts,
                age_secs: diff.unsigned_abs(),
                tolerance_secs,
            });
        }
        if diff < 0 && diff.unsigned_abs() > tolerance_secs {
            return Err(SignatureError::TimestampTooNew {
                timestamp: ts,
                ahead_secs: diff.unsigned_abs(),
                tolerance_secs,
            });
        }
        // The signed content is rebuilt once; each candidate is compared in constant time.
        let mut content = Vec::with_capacity(id.len() + 24 + body.len());
        content.extend_from_slice(id.as_bytes());
        content.push(b'.');
        content.extend_from_slice(ts.to_string().as_bytes());
        content.push(b'.');
        content.extend_from_slice(body);
        for entry in signatures.split(' ').filter(|e| !e.is_empty()) {
            // Other versions (e.g. `v1a,` asymmetric) are skipped, as the spec says.
            let Some(b64) = entry.strip_prefix("v1,") else {
                continue;
            };
            let Ok(tag) = STANDARD.decode(b64) else {
                continue;
            };
            if self
                .secrets
                .iter()
                .any(|s| hmac::verify(&s.key, &content, &tag).is_ok())
            {
                return Ok(());
            }
        }
        Err(SignatureError::NoMatchingSignature)
    }

    /// Verifies a delivery from its headers (`webhook-id`, `webhook-timestamp`, `webhook-signature`).
    pub fn verify_headers(
        &self,
        headers: &http::HeaderMap,
        body: &[u8],
        now: UnixTime,
    ) -> Result<(), SignatureError> {
        let get = |name: &'static str| -> Result<&str, SignatureError> {
            let v = headers
                .get(name)
                .ok_or(SignatureError::MissingHeader { name })?;
            v.to_str().map_err(|_| SignatureError::MalformedHeader {
                name,
                reason: "not visible ASCII".into(),
            })
        };
        let id = get(WEBHOOK_ID_HEADER)?;
        let ts = get(WEBHOOK_TIMESTAMP_HEADER)?;
        let sig = get(WEBHOOK_SIGNATURE_HEADER)?;
        self.verify(id, ts, sig, body, now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STD_SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    const STD_ID: &str = "msg_p5jXN8AQM9LWM0D4loKWxJek";
    const STD_TS: i64 = 1_614_265_330;
    const STD_BODY: &[u8] = br#"{"test": 2432232314}"#;
    const STD_SIG: &str = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=";

    /// `shared/vectors/webhook/delivery.json`: body and signature copied byte for byte.
    const ASAP_BODY: &str = r#"{"attempt":1,"data":{"note":"h\u00e9llo","status":"completed"},"event":"task.completed","task_id":"task_01KDXZ00000000000000000000"}"#;
    const ASAP_SIG: &str =
        "sha256=79b01e2cf041dcb32a49df2f4b7bb9b695b2a2a9ed0098128a9ff63cc3085843";

    #[test]
    fn reference_signature_is_reproduced_and_verified() {
        let s = WebhookSecret::from_bytes(b"test-secret");
        assert_eq!(ASAP_BODY.len(), 132);
        assert_eq!(s.asap_signature(ASAP_BODY.as_bytes()), ASAP_SIG);
        s.verify_asap_signature(ASAP_BODY.as_bytes(), ASAP_SIG)
            .unwrap();
        s.verify_asap_signature(
            ASAP_BODY.as_bytes(),
            &ASAP_SIG.to_uppercase().replace("SHA256", "sha256"),
        )
        .unwrap();
        let mut tampered = ASAP_BODY.as_bytes().to_vec();
        tampered[2] ^= 1;
        assert_eq!(
            s.verify_asap_signature(&tampered, ASAP_SIG),
            Err(SignatureError::NoMatchingSignature)
        );
        for bad in [
            "",
            "sha256=",
            "md5=79b0",
            &ASAP_SIG[..70],
            &format!("{ASAP_SIG}00"),
            "sha256=zz",
        ] {
            assert!(
                matches!(
                    s.verify_asap_signature(ASAP_BODY.as_bytes(), bad),
                    Err(SignatureError::MalformedHeader { .. })
                ),
                "{bad:?}"
            );
        }
        let other = WebhookSecret::from_bytes(b"other");
        assert_eq!(
            other.verify_asap_signature(ASAP_BODY.as_bytes(), ASAP_SIG),
            Err(SignatureError::NoMatchingSignature)
        );
    }

    #[test]
    fn standard_webhooks_vector() {
        let s = WebhookSecret::from_whsec(STD_SECRET).unwrap();
        assert_eq!(s.standard_signature(STD_ID, STD_TS, STD_BODY), STD_SIG);
        // The prefix is optional; padding is optional.
        let bare = WebhookSecret::from_whsec(&STD_SECRET[WHSEC_PREFIX.len()..]).unwrap();
        assert_eq!(bare.standard_signature(STD_ID, STD_TS, STD_BODY), STD_SIG);
        assert_eq!(
            WebhookSecret::from_whsec("whsec_").unwrap_err(),
            SecretError::Empty
        );
        assert!(matches!(
            WebhookSecret::from_whsec("whsec_!!"),
            Err(SecretError::NotBase64 { .. })
        ));
        let unpadded = WebhookSecret::from_whsec("whsec_dGVzdA").unwrap(); // "test"
        assert_eq!(
            unpadded.asap_signature(b"x"),
            WebhookSecret::from_bytes(b"test").asap_signature(b"x")
        );
    }

    #[test]
    fn rotation_signs_with_every_key_and_verifies_with_either() {
        let new = WebhookSecret::from_bytes(b"new-key");
        let old = WebhookSecret::from_whsec(STD_SECRET).unwrap();
        let keys = SigningKeys::new(new.clone()).with_previous(old.clone());
        let header = keys.standard_signatures(STD_ID, STD_TS, STD_BODY);
        let parts: Vec<&str> = header.split(' ').collect();
        assert_eq!(parts.len(), 2);
        assert_eq!(parts[1], STD_SIG);
        assert_eq!(parts[0], new.standard_signature(STD_ID, STD_TS, STD_BODY));
        let now = UnixTime::from_secs(STD_TS);
        for receiver in [new, old] {
            StandardVerifier::new(vec![receiver])
                .verify(STD_ID, &STD_TS.to_string(), &header, STD_BODY, now)
                .unwrap();
        }
        let stranger = StandardVerifier::new(vec![WebhookSecret::from_bytes(b"x")]);
        assert_eq!(
            stranger.verify(STD_ID, "1614265330", &header, STD_BODY, now),
            Err(SignatureError::NoMatchingSignature)
        );
    }

    #[test]
    fn tolerance_window_both_ways() {
        let v = StandardVerifier::new(vec![WebhookSecret::from_whsec(STD_SECRET).unwrap()]);
        assert_eq!(v.tolerance(), Duration::from_secs(300));
        let ok = |now: i64| {
            v.verify(
                STD_ID,
                "1614265330",
                STD_SIG,
                STD_BODY,
                UnixTime::from_secs(now),
            )
        };
        ok(STD_TS - 300).unwrap();
        ok(STD_TS + 300).unwrap();
        assert_eq!(
            ok(STD_TS + 301),
            Err(SignatureError::TimestampTooOld {
                timestamp: STD_TS,
                age_secs: 301,
                tolerance_secs: 300
            })
        );
        let too_new = ok(STD_TS - 301).unwrap_err();
        assert_eq!(too_new.fault(), Fault::Local);
        assert!(matches!(
            too_new,
            SignatureError::TimestampTooNew {
                ahead_secs: 301,
                ..
            }
        ));
        let strict = v.clone().with_tolerance(Duration::ZERO);
        assert!(strict
            .verify(
                STD_ID,
                "1614265330",
                STD_SIG,
                STD_BODY,
                UnixTime::from_secs(STD_TS)
            )
            .is_ok());
        assert!(matches!(
            v.verify(
                STD_ID,
                "soon",
                STD_SIG,
                STD_BODY,
                UnixTime::from_secs(STD_TS)
            ),
            Err(SignatureError::MalformedHeader {
                name: WEBHOOK_TIMESTAMP_HEADER,
                ..
            })
        ));
        // A timestamp that differs from the signed one fails the HMAC.
        assert_eq!(
            v.verify(
                STD_ID,
                "1614265331",
                STD_SIG,
                STD_BODY,
                UnixTime::from_secs(STD_TS)
            ),
            Err(SignatureError::NoMatchingSignature)
        );
        // Unknown versions and junk entries are skipped.
        assert_eq!(
            v.verify(
                STD_ID,
                "1614265330",
                "v2,abc v1a,xyz v1,@@@",
                STD_BODY,
                UnixTime::from_secs(STD_TS)
            ),
            Err(SignatureError::NoMatchingSignature)
        );
        // Extreme values saturate.
        assert!(v
            .verify(
                STD_ID,
                &i64::MIN.to_string(),
                STD_SIG,
                STD_BODY,
                UnixTime::from_micros(i64::MAX)
            )
            .is_err());
    }

    #[test]
    fn verify_from_headers() {
        let v = StandardVerifier::new(vec![WebhookSecret::from_whsec(STD_SECRET).unwrap()]);
        let mut h = http::HeaderMap::new();
        h.insert(WEBHOOK_ID_HEADER, STD_ID.parse().unwrap());
        h.insert(WEBHOOK_TIMESTAMP_HEADER, "1614265330".parse().unwrap());
        let now = UnixTime::from_secs(STD_TS);
        assert_eq!(
            v.verify_headers(&h, STD_BODY, now),
            Err(SignatureError::MissingHeader {
                name: WEBHOOK_SIGNATURE_HEADER
            })
        );
        h.insert(WEBHOOK_SIGNATURE_HEADER, STD_SIG.parse().unwrap());
        v.verify_headers(&h, STD_BODY, now).unwrap();
    }

    #[test]
    fn rotation_keys_current_first_and_faults() {
        let new = WebhookSecret::from_bytes(b"new-key");
        let old = WebhookSecret::from_bytes(b"old-key");
        let one = SigningKeys::new(new.clone());
        assert_eq!(one.keys().len(), 1);
        assert_eq!(
            one.standard_signatures(STD_ID, STD_TS, STD_BODY),
            new.standard_signature(STD_ID, STD_TS, STD_BODY)
        );
        let keys = one.with_previous(old.clone());
        assert_eq!(keys.keys().len(), 2);
        assert_eq!(
            keys.current().asap_signature(b"x"),
            new.asap_signature(b"x")
        );
        assert_eq!(
            keys.keys()[1].asap_signature(b"x"),
            old.asap_signature(b"x")
        );
        assert_ne!(new.asap_signature(b"x"), old.asap_signature(b"x"));
        // Only a future timestamp may be the receiver's clock's fault.
        let too_old = SignatureError::TimestampTooOld {
            timestamp: 0,
            age_secs: 301,
            tolerance_secs: 300,
        };
        assert_eq!(too_old.fault(), Fault::Peer);
        assert_eq!(SignatureError::NoMatchingSignature.fault(), Fault::Peer);
        assert_eq!(
            SignatureError::MissingHeader {
                name: WEBHOOK_ID_HEADER
            }
            .fault(),
            Fault::Peer
        );
    }

    #[test]
    fn hex_digits_of_every_kind_decode_exactly() {
        let s = WebhookSecret::from_bytes(b"test-secret");
        let hex = &ASAP_SIG[ASAP_PREFIX.len()..];
        let tag = decode_hex_32(hex).unwrap();
        assert_eq!(tag[0], 0x79);
        assert_eq!(tag[1], 0xb0);
        assert_eq!(tag[31], 0x43);
        // Mixed case, and surrounding whitespace, verify the same tag.
        let mixed: String = hex
            .chars()
            .enumerate()
            .map(|(i, c)| {
                if i % 2 == 0 {
                    c.to_ascii_uppercase()
                } else {
                    c
                }
            })
            .collect();
        assert_eq!(decode_hex_32(&mixed), Some(tag));
        s.verify_asap_signature(ASAP_BODY.as_bytes(), &format!("  sha256={mixed} "))
            .unwrap();
        assert_eq!(
            decode_hex_32(&format!("0123456789abcdefABCDEF{}", "0".repeat(42)))
                .map(|t| t[..11].to_vec()),
            Some(vec![
                0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef, 0xab, 0xcd, 0xef
            ])
        );
        for bad in ["g", "G", ":", "/", "@", "`"] {
            let h = format!("{bad}{}", &hex[1..]);
            assert_eq!(decode_hex_32(&h), None, "{h}");
        }
        assert_eq!(decode_hex_32(&hex[..62]), None);
        assert_eq!(
            s.verify_asap_signature(ASAP_BODY.as_bytes(), "sha256=zz"),
            Err(SignatureError::MalformedHeader {
                name: ASAP_SIGNATURE_HEADER,
                reason: "expected 64 hex digits".into()
            })
        );
        assert_eq!(
            s.verify_asap_signature(ASAP_BODY.as_bytes(), "md5=00"),
            Err(SignatureError::MalformedHeader {
                name: ASAP_SIGNATURE_HEADER,
                reason: "expected 'sha256=<hex>'".into()
            })
        );
    }

    #[test]
    fn short_ids_long_bodies_and_unreadable_headers() {
        let secret = WebhookSecret::from_bytes(b"k");
        let body = vec![b'x'; 300];
        let sig = secret.standard_signature("m", STD_TS, &body);
        let v = StandardVerifier::new(vec![WebhookSecret::from_bytes(b"other"), secret]);
        let now = UnixTime::from_secs(STD_TS);
        v.verify("m", &STD_TS.to_string(), &sig, &body, now)
            .unwrap();
        // Entries are separated by one or more spaces.
        v.verify(
            "m",
            " 1614265330 ",
            &format!("  v1,AAAA  {sig}  "),
            &body,
            now,
        )
        .unwrap();
        let mut h = http::HeaderMap::new();
        h.insert(WEBHOOK_ID_HEADER, "m".parse().unwrap());
        assert_eq!(
            v.verify_headers(&h, &body, now),
            Err(SignatureError::MissingHeader {
                name: WEBHOOK_TIMESTAMP_HEADER
            })
        );
        h.insert(
            WEBHOOK_TIMESTAMP_HEADER,
            http::HeaderValue::from_bytes(b"16142\xff").unwrap(),
        );
        h.insert(WEBHOOK_SIGNATURE_HEADER, sig.parse().unwrap());
        assert_eq!(
            v.verify_headers(&h, &body, now),
            Err(SignatureError::MalformedHeader {
                name: WEBHOOK_TIMESTAMP_HEADER,
                reason: "not visible ASCII".into()
            })
        );
        h.insert(WEBHOOK_TIMESTAMP_HEADER, "1614265330".parse().unwrap());
        v.verify_headers(&h, &body, now).unwrap();
        h.remove(WEBHOOK_ID_HEADER);
        assert_eq!(
            v.verify_headers(&h, &body, now),
            Err(SignatureError::MissingHeader {
                name: WEBHOOK_ID_HEADER
            })
        );
    }

    #[test]
    fn the_window_reports_exact_ages_both_ways() {
        let v = StandardVerifier::new(vec![WebhookSecret::from_whsec(STD_SECRET).unwrap()])
            .with_tolerance(Duration::from_secs(10));
        assert_eq!(v.tolerance(), Duration::from_secs(10));
        let at = |now: i64| {
            v.verify(
                STD_ID,
                "1614265330",
                STD_SIG,
                STD_BODY,
                UnixTime::from_secs(now),
            )
        };
        at(STD_TS + 10).unwrap();
        at(STD_TS - 10).unwrap();
        at(STD_TS + 1).unwrap();
        at(STD_TS - 1).unwrap();
        assert_eq!(
            at(STD_TS + 11),
            Err(SignatureError::TimestampTooOld {
                timestamp: STD_TS,
                age_secs: 11,
                tolerance_secs: 10
            })
        );
        assert_eq!(
            at(STD_TS - 11),
            Err(SignatureError::TimestampTooNew {
                timestamp: STD_TS,
                ahead_secs: 11,
                tolerance_secs: 10
            })
        );
    }
}
