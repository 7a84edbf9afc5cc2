//! [`TokenValidator`]: a compact JWS in, valid [`Claims`], a typed
//! [`TokenRejection`], or "need the key set" / "need a key with kid X" out.
//! Pure: the key set and `now` are arguments.

use std::fmt;

use ring::hmac;

use super::claims::{Claims, ClaimsPolicy};
use super::jwk::JwkSet;
use super::jws::{Algorithm, CompactJws, JwsError, JwsLimits};
use crate::model::UnixTime;

/// Shortest HS256 secret accepted: the hash output size (RFC 7518 §3.2).
pub const MIN_SECRET_LEN: usize = 32;

/// An HS256 shared secret (redacted in `Debug`).
#[derive(Clone, PartialEq, Eq)]
pub struct SharedSecret(Vec<u8>);

impl SharedSecret {
    /// Wraps `bytes`; shorter than [`MIN_SECRET_LEN`] is a configuration error.
    pub fn new(bytes: impl Into<Vec<u8>>) -> Result<Self, SecretTooShort> {
        let bytes = bytes.into();
        if bytes.len() < MIN_SECRET_LEN {
            return Err(SecretTooShort(bytes.len()));
        }
        Ok(Self(bytes))
    }
}

impl fmt::Debug for SharedSecret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SharedSecret({} bytes)", self.0.len())
    }
}

/// An HS256 secret shorter than [`MIN_SECRET_LEN`] bytes (local configuration).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("HS256 shared secret is {0} bytes; at least {MIN_SECRET_LEN} are required")]
pub struct SecretTooShort(pub usize);

/// What the validator accepts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ValidatorConfig {
    /// Asymmetric algorithms accepted with JWKS keys. Default: all of
    /// [`Algorithm::ASYMMETRIC`]. `Hs256` here has no effect: HS256 is
    /// accepted exactly when [`shared_secret`](Self::shared_secret) is set.
    pub algorithms: Vec<Algorithm>,
    /// The HS256 secret. Default none (HS256 tokens are rejected).
    pub shared_secret: Option<SharedSecret>,
    /// Claim checks.
    pub claims: ClaimsPolicy,
    /// Size caps.
    pub limits: JwsLimits,
}

impl Default for ValidatorConfig {
    fn default() -> Self {
        Self {
            algorithms: Algorithm::ASYMMETRIC.to_vec(),
            shared_secret: None,
            claims: ClaimsPolicy::default(),
            limits: JwsLimits::default(),
        }
    }
}

/// Why a token is refused (the token's or its issuer's fault; answered 401).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenRejection {
    /// Not a well-formed compact JWS.
    #[error("malformed token: {0}")]
    Malformed(JwsError),
    /// `alg: none` (unsigned tokens are never accepted).
    #[error("unsigned token (alg \"none\") refused")]
    AlgorithmNone,
    /// An algorithm that is unknown, or not in the allow-list.
    #[error("token algorithm {0:?} is not accepted")]
    AlgorithmNotAllowed(String),
    /// HS256 without a configured shared secret (JWKS keys never verify HS256).
    #[error(
        "HS256 token refused: no shared secret is configured, and key-set keys never verify HMAC"
    )]
    HmacNotConfigured,
    /// The header lists critical extensions; this validator implements none.
    #[error("token marks header parameters {0:?} critical; no JWS extension is supported")]
    CriticalHeader(Vec<String>),
    /// The key named by `kid` does not fit the algorithm (kty/crv/alg).
    #[error("key {kid:?} cannot verify {alg} (key type, curve or declared alg differ)")]
    KeyAlgorithmMismatch {
        /// The `kid` (`None` for a kid-less token).
        kid: Option<String>,
        /// The token's algorithm.
        alg: Algorithm,
    },
    /// No key with this `kid`, even after the allowed refresh.
    #[error("no key with kid {0:?} in the issuer's key set")]
    UnknownKid(String),
    /// A token without `kid` and no single key that fits its algorithm.
    #[error("token has no kid and the key set has {candidates} keys for {alg}; a kid is required")]
    KidRequired {
        /// The token's algorithm.
        alg: Algorithm,
        /// Keys that would fit (0 or more than 1).
        candidates: usize,
    },
    /// The signature does not verify.
    #[error("token signature does not verify")]
    BadSignature,
    /// `exp` passed (leeway included).
    #[error("token expired at {} (unix seconds)", exp.as_secs())]
    Expired {
        /// `exp`.
        exp: UnixTime,
    },
    /// No `exp` and the policy requires one.
    #[error("token has no exp claim")]
    MissingExpiry,
    /// `nbf` is still ahead (leeway included).
    #[error("token not valid before {} (unix seconds)", nbf.as_secs())]
    NotYetValid {
        /// `nbf`.
        nbf: UnixTime,
    },
    /// `iat` lies ahead (leeway included).
    #[error("token issued in the future ({} unix seconds)", iat.as_secs())]
    IssuedInFuture {
        /// `iat`.
        iat: UnixTime,
    },
    /// `iss` differs from the configured issuer.
    #[error("token issuer {found:?} is not the configured issuer")]
    WrongIssuer {
        /// The token's `iss`.
        found: Option<String>,
    },
    /// `aud` lacks the configured audience.
    #[error("token audience {found:?} does not include the configured audience")]
    WrongAudience {
        /// The token's `aud`.
        found: Vec<String>,
    },
    /// `sub` is absent or empty.
    #[error("token has no subject (sub)")]
    MissingSubject,
    /// A registered claim has the wrong JSON type.
    #[error("token claim {0:?} has the wrong type")]
    InvalidClaim(&'static str),
    /// The agent-id claim is not an agent URN.
    #[error("token agent claim is not an agent URN: {0}")]
    InvalidAgentClaim(String),
    /// Introspection says the token is not active.
    #[error("token is not active (introspection)")]
    Inactive,
}

/// What [`TokenValidator::validate`] concludes.
#[derive(Debug, Clone, PartialEq)]
#[must_use]
pub enum Verdict {
    /// Signature and claims check out.
    Valid(Claims),
    /// Refused.
    Rejected(TokenRejection),
    /// No key set was given and the token needs one: fetch the JWKS, call again.
    NeedKeySet,
    /// The key set has no key for this token: `kid` not present (or, for a
    /// kid-less token, no key fits its algorithm). A refresh may bring it.
    NeedKey {
        /// The token's `kid` (`None` for a kid-less token).
        kid: Option<String>,
    },
}

/// Verifies compact JWS tokens with ring and checks their claims.
///
/// Key choice: a token with `kid` is verified with the keys of that `kid`
/// that fit its algorithm; a kid-less token only when exactly one key of
/// the set fits (several → [`TokenRejection::KidRequired`], to bound the
/// work a forged token can cause). HS256 uses the shared secret only.
///
/// ```
/// use asap_proto::auth::{TokenValidator, ValidatorConfig, Verdict, JwkSet};
/// use asap_proto::model::UnixTime;
/// let v = TokenValidator::new(ValidatorConfig::default());
/// let token = "eyJhbGciOiJFUzI1NiIsImtpZCI6ImsxIn0.e30.AAAA";
/// assert_eq!(v.validate(token, None, UnixTime::EPOCH), Verdict::NeedKeySet);
/// let empty = JwkSet::default();
/// assert_eq!(v.validate(token, Some(&empty), UnixTime::EPOCH), Verdict::NeedKey { kid: Some("k1".into()) });
/// ```
pub struct TokenValidator {
    config: ValidatorConfig,
    hmac: Option<hmac::Key>,
}

impl fmt::Debug for TokenValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenValidator")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Clone for TokenValidator {
    fn clone(&self) -> Self {
        Self::new(self.config.clone())
    }
}

impl TokenValidator {
    /// A validator with this configuration.
    #[must_use]
    pub fn new(config: ValidatorConfig) -> Self {
        let hmac = config
            .shared_secret
            .as_ref()
            .map(|s| hmac::Key::new(hmac::HMAC_SHA256, &s.0));
        Self { config, hmac }
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &ValidatorConfig {
        &self.config
    }

    /// Whether HS256 tokens are verified (a shared secret is configured).
    #[must_use]
    pub fn accepts_hmac(&self) -> bool {
        self.hmac.is_some()
    }

    /// The token's algorithm when it parses and needs a key set (not HS256);
    /// `None` otherwise (then [`validate`](Self::validate) needs no keys).
    #[must_use]
    pub fn key_algorithm(&self, token: &str) -> Option<Algorithm> {
        let jws = CompactJws::parse(token.as_bytes(), &self.config.limits).ok()?;
        if jws.header.crit.is_some() {
            return None;
        }
        Algorithm::from_name(&jws.header.alg)
            .filter(|a| *a != Algorithm::Hs256 && self.config.algorithms.contains(a))
    }

    /// Validates `token` with `keys` (the current JWKS; `None` when none is
    /// loaded) at wall time `now`.
    pub fn validate(&self, token: &str, keys: Option<&JwkSet>, now: UnixTime) -> Verdict {
        match self.verify(token, keys) {
            Ok(jws_payload) => match jws_payload {
                Checked::Verified(jws) => match jws.payload() {
                    Ok(raw) => match Claims::check(raw, &self.config.claims, now) {
                        Ok(c) => Verdict::Valid(c),
                        Err(r) => Verdict::Rejected(r),
                    },
                    Err(e) => Verdict::Rejected(TokenRejection::Malformed(e)),
                },
                Checked::NeedKeySet => Verdict::NeedKeySet,
                Checked::NeedKey(kid) => Verdict::NeedKey { kid },
            },
            Err(r) => Verdict::Rejected(r),
        }
    }

    fn verify<'t>(
        &self,
        token: &'t str,
        keys: Option<&JwkSet>,
    ) -> Result<Checked<'t>, TokenRejection> {
        let jws = CompactJws::parse(token.as_bytes(), &self.config.limits)
            .map_err(TokenRejection::Malformed)?;
        if jws.header.alg.eq_ignore_ascii_case("none") {
            return Err(TokenRejection::AlgorithmNone);
        }
        let alg = Algorithm::from_name(&jws.header.alg)
            .ok_or_else(|| TokenRejection::AlgorithmNotAllowed(jws.header.alg.clone()))?;
        if let Some(crit) = &jws.header.crit {
            return Err(TokenRejection::CriticalHeader(crit.clone()));
        }
        if alg == Algorithm::Hs256 {
            let key = self
                .hmac
                .as_ref()
                .ok_or(TokenRejection::HmacNotConfigured)?;
            return match hmac::verify(key, jws.signing_input, &jws.signature) {
                Ok(()) => Ok(Checked::Verified(jws)),
                Err(_) => Err(TokenRejection::BadSignature),
            };
        }
        if !self.config.algorithms.contains(&alg) {
            return Err(TokenRejection::AlgorithmNotAllowed(jws.header.alg.clone()));
        }
        let Some(keys) = keys else {
            return Ok(Checked::NeedKeySet);
        };
        let kid = jws.header.kid.as_deref();
        let mut named = 0usize;
        let mut fitting = 0usize;
        for k in keys.keys() {
            if kid.is_some() && k.kid.as_deref() != kid {
                continue;
            }
            named += 1;
            if !k.accepts(alg) {
                continue;
            }
            fitting += 1;
            if kid.is_none() {
                continue; // counted first; verified below only if it is the only one
            }
            if k.verify(alg, jws.signing_input, &jws.signature) {
                return Ok(Checked::Verified(jws));
            }
        }
        match kid {
            Some(kid) if named == 0 => Ok(Checked::NeedKey(Some(kid.to_owned()))),
            Some(kid) if fitting == 0 => Err(TokenRejection::KeyAlgorithmMismatch {
                kid: Some(kid.to_owned()),
                alg,
            }),
            Some(_) => Err(TokenRejection::BadSignature),
            None if fitting == 0 => Ok(Checked::NeedKey(None)),
            None if fitting > 1 => Err(TokenRejection::KidRequired {
                alg,
                candidates: fitting,
            }),
            None => {
                let k = keys.keys().iter().find(|k| k.accepts(alg));
                if k.is_some_and(|k| k.verify(alg, jws.signing_input, &jws.signature)) {
                    Ok(Checked::Verified(jws))
                } else {
                    Err(TokenRejection::BadSignature)
                }
            }
        }
    }
}

enum Checked<'t> {
    Verified(CompactJws<'t>),
    NeedKeySet,
    NeedKey(Option<String>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::auth_support::{kid_for, TestKeys, HS_SECRET};
    use serde_json::json;

    const NOW: i64 = 1_800_000_000;

    fn now() -> UnixTime {
        UnixTime::from_secs(NOW)
    }

    fn claims() -> serde_json::Value {
        json!({"sub":"client-app","scope":"asap:execute","exp":NOW + 300})
    }

    fn with_secret() -> TokenValidator {
        TokenValidator::new(ValidatorConfig {
            shared_secret: Some(SharedSecret::new(HS_SECRET).unwrap()),
            ..Default::default()
        })
    }

    #[test]
    fn every_algorithm_verifies_with_its_key() {
        let keys = TestKeys::new();
        let set = JwkSet::from_slice(&keys.jwks_json()).unwrap();
        assert_eq!(set.keys().len(), 4);
        let v = with_secret();
        for alg in [
            "RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA",
            "HS256",
        ] {
            let t = keys.sign(alg, Some(kid_for(alg)), &claims());
            match v.validate(&t, Some(&set), now()) {
                Verdict::Valid(c) => {
                    assert_eq!(c.subject, "client-app", "{alg}");
                    assert_eq!(c.scopes, ["asap:execute"]);
                }
                other => panic!("{alg}: {other:?}"),
            }
            // One flipped signature byte fails.
            let mut bytes = t.into_bytes();
            let i = bytes.len() - 3;
            bytes[i] = if bytes[i] == b'A' { b'B' } else { b'A' };
            let t = String::from_utf8(bytes).unwrap();
            assert_eq!(
                v.validate(&t, Some(&set), now()),
                Verdict::Rejected(TokenRejection::BadSignature),
                "{alg}"
            );
        }
    }

    #[test]
    fn key_choice() {
        let keys = TestKeys::new();
        let set = JwkSet::from_slice(&keys.jwks_json()).unwrap();
        let v = TokenValidator::new(ValidatorConfig::default());
        let c = claims();
        // Unknown kid → need a key.
        let t = keys.sign("RS256", Some("rsa-2"), &c);
        assert_eq!(
            v.validate(&t, Some(&set), now()),
            Verdict::NeedKey {
                kid: Some("rsa-2".into())
            }
        );
        // Kid of an RSA key with ES256 → mismatch, not a refresh.
        let t = keys.sign("ES256", Some("rsa-1"), &c);
        assert_eq!(
            v.validate(&t, Some(&set), now()),
            Verdict::Rejected(TokenRejection::KeyAlgorithmMismatch {
                kid: Some("rsa-1".into()),
                alg: Algorithm::Es256
            })
        );
        // Kid-less with exactly one fitting key (one EdDSA key) verifies.
        let t = keys.sign("EdDSA", None, &c);
        assert!(matches!(
            v.validate(&t, Some(&set), now()),
            Verdict::Valid(_)
        ));
        // Kid-less RS256 with two RSA keys → kid required.
        let mut two = keys.jwks_value();
        two["keys"].as_array_mut().unwrap().push(keys.rsa_b_jwk());
        let two = JwkSet::from_slice(two.to_string().as_bytes()).unwrap();
        let t = keys.sign("RS256", None, &c);
        assert_eq!(
            v.validate(&t, Some(&two), now()),
            Verdict::Rejected(TokenRejection::KidRequired {
                alg: Algorithm::Rs256,
                candidates: 2
            })
        );
        // Kid-less with no fitting key → need a key.
        let ed_only = JwkSet::new(
            set.keys()
                .iter()
                .filter(|k| k.kid.as_deref() == Some("ed-1"))
                .cloned()
                .collect(),
        );
        assert_eq!(
            v.validate(&t, Some(&ed_only), now()),
            Verdict::NeedKey { kid: None }
        );
        // A key's declared alg binds it.
        let mut pinned = keys.jwks_value();
        pinned["keys"][0]["alg"] = json!("PS256");
        let pinned = JwkSet::from_slice(pinned.to_string().as_bytes()).unwrap();
        let t = keys.sign("RS256", Some("rsa-1"), &c);
        assert_eq!(
            v.validate(&t, Some(&pinned), now()),
            Verdict::Rejected(TokenRejection::KeyAlgorithmMismatch {
                kid: Some("rsa-1".into()),
                alg: Algorithm::Rs256
            })
        );
        // The allow-list is honoured.
        let es_only = TokenValidator::new(ValidatorConfig {
            algorithms: vec![Algorithm::Es256],
            ..Default::default()
        });
        assert_eq!(
            es_only.validate(&t, Some(&set), now()),
            Verdict::Rejected(TokenRejection::AlgorithmNotAllowed("RS256".into()))
        );
    }

    #[test]
    fn crit_is_rejected() {
        let keys = TestKeys::new();
        let set = JwkSet::from_slice(&keys.jwks_json()).unwrap();
        let v = TokenValidator::new(ValidatorConfig::default());
        let t = keys.sign_raw(
            "EdDSA",
            None,
            r#"{"alg":"EdDSA","kid":"ed-1","crit":["exp"],"exp":1}"#,
            &claims().to_string(),
        );
        assert_eq!(
            v.validate(&t, Some(&set), now()),
            Verdict::Rejected(TokenRejection::CriticalHeader(vec!["exp".into()]))
        );
    }

    #[test]
    fn hmac_switch_config_and_key_algorithm() {
        let keys = TestKeys::new();
        let c = claims();
        let plain = TokenValidator::new(ValidatorConfig::default());
        let hs = with_secret();
        assert!(!plain.accepts_hmac());
        assert!(hs.accepts_hmac());
        assert!(hs.config().shared_secret.is_some());
        assert!(plain.config().shared_secret.is_none());
        assert!(hs.clone().accepts_hmac());
        let es_only = TokenValidator::new(ValidatorConfig {
            algorithms: vec![Algorithm::Es256],
            ..Default::default()
        });
        assert_eq!(es_only.config().algorithms, [Algorithm::Es256]);

        let rs = keys.sign("RS256", Some("rsa-1"), &c);
        let es = keys.sign("ES256", Some(kid_for("ES256")), &c);
        let hmac_token = keys.sign("HS256", Some(kid_for("HS256")), &c);
        assert_eq!(plain.key_algorithm(&rs), Some(Algorithm::Rs256));
        assert_eq!(es_only.key_algorithm(&es), Some(Algorithm::Es256));
        // Not in the allow-list, HS256 (never a key-set key) and malformed: no key set needed.
        assert_eq!(es_only.key_algorithm(&rs), None);
        assert_eq!(hs.key_algorithm(&hmac_token), None);
        let hs_listed = TokenValidator::new(ValidatorConfig {
            algorithms: vec![Algorithm::Hs256, Algorithm::Rs256],
            ..Default::default()
        });
        assert_eq!(hs_listed.key_algorithm(&hmac_token), None);
        assert_eq!(hs_listed.key_algorithm(&rs), Some(Algorithm::Rs256));
        assert_eq!(plain.key_algorithm("not.a.token"), None);
        let crit = keys.sign_raw(
            "RS256",
            Some("rsa-1"),
            r#"{"alg":"RS256","kid":"rsa-1","crit":["exp"]}"#,
            &c.to_string(),
        );
        assert_eq!(plain.key_algorithm(&crit), None);
    }
}
