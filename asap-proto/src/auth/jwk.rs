//! JSON Web Keys (RFC 7517) for signature verification: RSA, EC P-256/P-384,
//! OKP Ed25519. Which key fits which algorithm, and the ring call that verifies.

use ring::signature::{self, RsaPublicKeyComponents, UnparsedPublicKey};
use serde_json::{Map, Value};

use super::jws::{decode_b64, Algorithm, JwsPart};

/// Most keys a JWKS may hold; a larger document is refused as a whole.
pub const MAX_JWKS_KEYS: usize = 64;

/// Largest JWKS body accepted, in bytes.
pub const MAX_JWKS_BODY: usize = 256 * 1024;

/// An elliptic curve of an `EC` key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EcCurve {
    /// `P-256` (ES256).
    P256,
    /// `P-384` (ES384).
    P384,
}

impl EcCurve {
    fn coordinate_len(self) -> usize {
        match self {
            Self::P256 => 32,
            Self::P384 => 48,
        }
    }
}

/// The public key material of a [`Jwk`].
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum PublicKey {
    /// `kty: RSA`: modulus and exponent, big-endian without leading zeros.
    Rsa {
        /// `n`.
        n: Vec<u8>,
        /// `e`.
        e: Vec<u8>,
    },
    /// `kty: EC`: the uncompressed point `0x04 || x || y`.
    Ec {
        /// The curve.
        curve: EcCurve,
        /// The SEC1 uncompressed point.
        point: Vec<u8>,
    },
    /// `kty: OKP`, `crv: Ed25519`: the 32-byte public key.
    Ed25519(Vec<u8>),
}

/// One verification key from a JWKS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Jwk {
    /// `kid`, when present.
    pub kid: Option<String>,
    /// `alg`, when the key declares one (tokens must then use exactly it).
    pub alg: Option<Algorithm>,
    /// The key material.
    pub key: PublicKey,
}

impl Jwk {
    /// Whether a token signed with `alg` may be verified with this key: the
    /// key type and curve fit the algorithm, and a declared `alg` equals it.
    /// HS256 never fits: JWKS keys are asymmetric only.
    #[must_use]
    pub fn accepts(&self, alg: Algorithm) -> bool {
        if self.alg.is_some_and(|a| a != alg) {
            return false;
        }
        matches!(
            (&self.key, alg),
            (
                PublicKey::Rsa { .. },
                Algorithm::Rs256
                    | Algorithm::Rs384
                    | Algorithm::Rs512
                    | Algorithm::Ps256
                    | Algorithm::Ps384
                    | Algorithm::Ps512
            ) | (
                PublicKey::Ec {
                    curve: EcCurve::P256,
                    ..
                },
                Algorithm::Es256
            ) | (
                PublicKey::Ec {
                    curve: EcCurve::P384,
                    ..
                },
                Algorithm::Es384
            ) | (PublicKey::Ed25519(_), Algorithm::EdDsa)
        )
    }

    /// Verifies `signature` over `message` with ring; `false` when the key
    /// does not [`accept`](Self::accepts) `alg` or the signature is wrong.
    #[must_use]
    pub fn verify(&self, alg: Algorithm, message: &[u8], signature: &[u8]) -> bool {
        if !self.accepts(alg) {
            return false;
        }
        match &self.key {
            PublicKey::Rsa { n, e } => {
                let params: &signature::RsaParameters = match alg {
                    Algorithm::Rs256 => &signature::RSA_PKCS1_2048_8192_SHA256,
                    Algorithm::Rs384 => &signature::RSA_PKCS1_2048_8192_SHA384,
                    Algorithm::Rs512 => &signature::RSA_PKCS1_2048_8192_SHA512,
                    Algorithm::Ps256 => &signature::RSA_PSS_2048_8192_SHA256,
                    Algorithm::Ps384 => &signature::RSA_PSS_2048_8192_SHA384,
                    Algorithm::Ps512 => &signature::RSA_PSS_2048_8192_SHA512,
                    _ => return false,
                };
                RsaPublicKeyComponents { n, e }
                    .verify(params, message, signature)
                    .is_ok()
            }
            PublicKey::Ec { curve, point } => {
                let alg: &'static dyn signature::VerificationAlgorithm = match curve {
                    EcCurve::P256 => &signature::ECDSA_P256_SHA256_FIXED,
                    EcCurve::P384 => &signature::ECDSA_P384_SHA384_FIXED,
                };
                UnparsedPublicKey::new(alg, point)
                    .verify(message, signature)
                    .is_ok()
            }
            PublicKey::Ed25519(x) => UnparsedPublicKey::new(&signature::ED25519, x)
                .verify(message, signature)
                .is_ok(),
        }
    }

    /// Parses one JWK object; `Err` says why the key cannot verify signatures.
    pub fn from_object(obj: &Map<String, Value>) -> Result<Self, KeyProblem> {
        let kid = match obj.get("kid") {
            None => None,
            Some(Value::String(s)) => Some(s.clone()),
            Some(_) => return Err(KeyProblem::Member("kid")),
        };
        match obj.get("use") {
            None => {}
            Some(Value::String(u)) if u == "sig" => {}
            Some(_) => return Err(KeyProblem::NotForSignatures),
        }
        if let Some(ops) = obj.get("key_ops") {
            let verifies = ops
                .as_array()
                .is_some_and(|a| a.iter().any(|o| o.as_str() == Some("verify")));
            if !verifies {
                return Err(KeyProblem::NotForSignatures);
            }
        }
        let alg = match obj.get("alg") {
            None => None,
            Some(Value::String(a)) => match Algorithm::from_name(a) {
                Some(Algorithm::Hs256) | None => {
                    return Err(KeyProblem::UnsupportedAlgorithm(a.clone()))
                }
                Some(a) => Some(a),
            },
            Some(_) => return Err(KeyProblem::Member("alg")),
        };
        let kty = obj.get("kty").and_then(Value::as_str).unwrap_or("");
        let key = match kty {
            "RSA" => {
                let n = strip_zeros(member(obj, "n")?);
                let e = strip_zeros(member(obj, "e")?);
                let bits = (n.len() * 8)
                    .saturating_sub(n.first().map_or(0, |b| b.leading_zeros() as usize));
                if !(2048..=8192).contains(&bits) || e.is_empty() {
                    return Err(KeyProblem::RsaSize(bits));
                }
                PublicKey::Rsa { n, e }
            }
            "EC" => {
                let curve = match obj.get("crv").and_then(Value::as_str) {
                    Some("P-256") => EcCurve::P256,
                    Some("P-384") => EcCurve::P384,
                    other => {
                        return Err(KeyProblem::UnsupportedCurve(other.unwrap_or("").to_owned()))
                    }
                };
                let x = member(obj, "x")?;
                let y = member(obj, "y")?;
                let len = curve.coordinate_len();
                if x.len() != len {
                    return Err(KeyProblem::Member("x"));
                }
                if y.len() != len {
                    return Err(KeyProblem::Member("y"));
                }
                let mut point = Vec::with_capacity(1 + 2 * len);
                point.push(0x04);
                point.extend_from_slice(&x);
                point.extend_from_slice(&y);
                PublicKey::Ec { curve, point }
            }
            "OKP" => {
                match obj.get("crv").and_then(Value::as_str) {
                    Some("Ed25519") => {}
                    other => {
                        return Err(KeyProblem::UnsupportedCurve(other.unwrap_or("").to_owned()))
                    }
                }
                let x = member(obj, "x")?;
                if x.len() != 32 {
                    return Err(KeyProblem::Member("x"));
                }
                PublicKey::Ed25519(x)
            }
            // Symmetric keys are never taken from a key set: that is how HS/RS
            // confusion starts. HS256 uses the configured shared secret only.
            "oct" => return Err(KeyProblem::SymmetricKey),
            other => return Err(KeyProblem::UnsupportedKeyType(other.to_owned())),
        };
        Ok(Self { kid, alg, key })
    }
}

fn member(obj: &Map<String, Value>, name: &'static str) -> Result<Vec<u8>, KeyProblem> {
    let s = obj
        .get(name)
        .and_then(Value::as_str)
        .ok_or(KeyProblem::Member(name))?;
    decode_b64(s.as_bytes(), JwsPart::Header).map_err(|_| KeyProblem::Member(name))
}

fn strip_zeros(mut v: Vec<u8>) -> Vec<u8> {
    let zeros = v.iter().take_while(|b| **b == 0).count();
    v.drain(..zeros);
    v
}

/// Why one key of a JWKS was left out (the IdP's doing; the rest still serve).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum KeyProblem {
    /// A member is missing, of the wrong type, or badly encoded.
    #[error("member {0:?} is missing or invalid")]
    Member(&'static str),
    /// `use` is not `sig`, or `key_ops` lacks `verify`.
    #[error("the key is not for verifying signatures")]
    NotForSignatures,
    /// `alg` names an algorithm this crate does not verify with JWKS keys.
    #[error("the key's alg {0:?} is not a supported asymmetric signature algorithm")]
    UnsupportedAlgorithm(String),
    /// `kty` is not RSA, EC or OKP.
    #[error("key type {0:?} is not supported")]
    UnsupportedKeyType(String),
    /// `crv` is not P-256, P-384 (EC) or Ed25519 (OKP).
    #[error("curve {0:?} is not supported")]
    UnsupportedCurve(String),
    /// The RSA modulus is outside 2048–8192 bits.
    #[error("RSA modulus of {0} bits is outside 2048-8192")]
    RsaSize(usize),
    /// `kty: oct`: symmetric keys are never taken from a key set.
    #[error("symmetric (oct) keys are not accepted from a key set")]
    SymmetricKey,
}

/// Why a JWKS document was refused as a whole (the IdP's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwksError {
    /// The body is larger than [`MAX_JWKS_BODY`].
    #[error("JWKS body of {0} bytes is larger than the {MAX_JWKS_BODY}-byte limit")]
    TooLarge(usize),
    /// The body is not a JSON object with a `keys` array.
    #[error("JWKS is not a JSON object with a \"keys\" array: {0}")]
    Shape(String),
    /// More keys than [`MAX_JWKS_KEYS`].
    #[error("JWKS holds {0} keys, more than the {MAX_JWKS_KEYS} accepted")]
    TooManyKeys(usize),
}

/// A verification key set: the usable keys, and why the others were left out.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct JwkSet {
    keys: Vec<Jwk>,
    skipped: Vec<(Option<String>, KeyProblem)>,
}

impl JwkSet {
    /// A set of these keys.
    #[must_use]
    pub fn new(keys: Vec<Jwk>) -> Self {
        Self {
            keys,
            skipped: Vec::new(),
        }
    }

    /// Parses a JWKS document (`{"keys":[...]}`); unusable keys are skipped
    /// and listed in [`skipped`](Self::skipped).
    pub fn from_slice(body: &[u8]) -> Result<Self, JwksError> {
        if body.len() > MAX_JWKS_BODY {
            return Err(JwksError::TooLarge(body.len()));
        }
        let doc: Value =
            serde_json::from_slice(body).map_err(|e| JwksError::Shape(e.to_string()))?;
        let keys = doc
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| JwksError::Shape("no \"keys\" array".into()))?;
        if keys.len() > MAX_JWKS_KEYS {
            return Err(JwksError::TooManyKeys(keys.len()));
        }
        let mut set = Self::default();
        for k in keys {
            let Some(obj) = k.as_object() else {
                set.skipped.push((None, KeyProblem::Member("kty")));
                continue;
            };
            match Jwk::from_object(obj) {
                Ok(jwk) => set.keys.push(jwk),
                Err(p) => set
                    .skipped
                    .push((obj.get("kid").and_then(Value::as_str).map(str::to_owned), p)),
            }
        }
        Ok(set)
    }

    /// The usable keys.
    #[must_use]
    pub fn keys(&self) -> &[Jwk] {
        &self.keys
    }

    /// Keys left out, with their `kid` and the reason.
    #[must_use]
    pub fn skipped(&self) -> &[(Option<String>, KeyProblem)] {
        &self.skipped
    }

    /// Whether any usable key has this `kid`.
    #[must_use]
    pub fn has_kid(&self, kid: &str) -> bool {
        self.keys.iter().any(|k| k.kid.as_deref() == Some(kid))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn skips_unusable_keys_and_keeps_the_rest() {
        let body = br#"{"keys":[
            {"kty":"oct","kid":"s","k":"c2VjcmV0"},
            {"kty":"EC","kid":"e","crv":"P-256","x":"AAAA","y":"AAAA"},
            {"kty":"OKP","kid":"ed","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"OKP","kid":"x","crv":"X25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
            {"kty":"OKP","kid":"enc","use":"enc","crv":"Ed25519","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"}
        ]}"#;
        let set = JwkSet::from_slice(body).unwrap();
        assert_eq!(set.keys().len(), 1);
        assert!(set.has_kid("ed"));
        let reasons: Vec<_> = set.skipped().iter().map(|(_, p)| p.clone()).collect();
        assert_eq!(
            reasons,
            vec![
                KeyProblem::SymmetricKey,
                KeyProblem::Member("x"),
                KeyProblem::UnsupportedCurve("X25519".into()),
                KeyProblem::NotForSignatures,
            ]
        );
        let ed = &set.keys()[0];
        assert!(ed.accepts(Algorithm::EdDsa));
        assert!(!ed.accepts(Algorithm::Es256));
        assert!(!ed.accepts(Algorithm::Hs256));
    }

    #[test]
    fn rsa_modulus_bounds() {
        for (n, bits) in [("AA", 0), ("AQAB", 17)] {
            let body = format!(r#"{{"keys":[{{"kty":"RSA","n":"{n}","e":"AQAB"}}]}}"#);
            let set = JwkSet::from_slice(body.as_bytes()).unwrap();
            assert_eq!(set.skipped()[0].1, KeyProblem::RsaSize(bits));
        }
    }

    #[test]
    fn document_errors() {
        assert!(matches!(
            JwkSet::from_slice(b"[]"),
            Err(JwksError::Shape(_))
        ));
        assert!(matches!(
            JwkSet::from_slice(b"nope"),
            Err(JwksError::Shape(_))
        ));
        let many = format!(
            r#"{{"keys":[{}]}}"#,
            vec![r#"{"kty":"oct"}"#; MAX_JWKS_KEYS + 1].join(",")
        );
        assert_eq!(
            JwkSet::from_slice(many.as_bytes()),
            Err(JwksError::TooManyKeys(MAX_JWKS_KEYS + 1))
        );
        let huge = vec![b' '; MAX_JWKS_BODY + 1];
        assert_eq!(
            JwkSet::from_slice(&huge),
            Err(JwksError::TooLarge(MAX_JWKS_BODY + 1))
        );
    }
}
