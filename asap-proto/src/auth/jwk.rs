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

    use crate::auth::auth_support::{b64, kid_for, TestKeys};

    fn parse(v: &Value) -> Result<Jwk, KeyProblem> {
        Jwk::from_object(v.as_object().unwrap())
    }

    /// An RSA JWK with this modulus and exponent.
    fn rsa(n: &[u8], e: &[u8]) -> Value {
        serde_json::json!({"kty":"RSA","n":b64(n),"e":b64(e)})
    }

    #[test]
    fn each_algorithm_verifies_with_its_own_key_only() {
        let keys = TestKeys::new();
        let set = JwkSet::from_slice(&keys.jwks_json()).unwrap();
        assert_eq!(set.skipped(), &[]);
        assert_eq!(set.keys().len(), 4);
        let msg = b"header.payload";
        for alg in Algorithm::ASYMMETRIC {
            let sig = keys.signature(alg.as_str(), None, msg);
            for key in set.keys() {
                let own = key.kid.as_deref() == Some(kid_for(alg.as_str()));
                assert_eq!(key.accepts(alg), own, "{alg} {:?}", key.kid);
                assert_eq!(key.verify(alg, msg, &sig), own, "{alg} {:?}", key.kid);
                assert!(!key.verify(alg, b"header.payloaD", &sig), "{alg}");
                assert!(!key.accepts(Algorithm::Hs256));
                assert!(!key.verify(Algorithm::Hs256, msg, &sig));
            }
        }
        // A declared `alg` pins the key to exactly that algorithm.
        let mut rsa = keys.jwks_value()["keys"][0].clone();
        rsa["alg"] = "PS256".into();
        let pinned = parse(&rsa).unwrap();
        assert_eq!(pinned.alg, Some(Algorithm::Ps256));
        assert!(pinned.accepts(Algorithm::Ps256));
        assert!(!pinned.accepts(Algorithm::Rs256));
        let ps = keys.signature("PS256", None, msg);
        assert!(pinned.verify(Algorithm::Ps256, msg, &ps));
        let rs = keys.signature("RS256", None, msg);
        assert!(!pinned.verify(Algorithm::Rs256, msg, &rs));
    }

    #[test]
    fn ec_and_okp_keys_are_exact_points() {
        let keys = TestKeys::new();
        let doc = keys.jwks_value();
        for (i, curve, len) in [(1, EcCurve::P256, 32), (2, EcCurve::P384, 48)] {
            let v = &doc["keys"][i];
            let k = parse(v).unwrap();
            let PublicKey::Ec { curve: c, point } = &k.key else {
                panic!("{k:?}")
            };
            assert_eq!(*c, curve);
            assert_eq!(point.len(), 1 + 2 * len);
            assert_eq!(point[0], 0x04);
            assert_eq!(b64(&point[1..=len]), v["x"].as_str().unwrap());
            assert_eq!(b64(&point[1 + len..]), v["y"].as_str().unwrap());
            for coordinate in ["x", "y"] {
                for wrong in [len - 1, len + 1] {
                    let mut bad = v.clone();
                    bad[coordinate] = b64(vec![1u8; wrong]).into();
                    assert_eq!(
                        parse(&bad),
                        Err(KeyProblem::Member(if coordinate == "x" {
                            "x"
                        } else {
                            "y"
                        }))
                    );
                }
            }
        }
        let mut ec = doc["keys"][1].clone();
        ec["crv"] = "P-521".into();
        assert_eq!(
            parse(&ec),
            Err(KeyProblem::UnsupportedCurve("P-521".into()))
        );
        ec.as_object_mut().unwrap().remove("crv");
        assert_eq!(parse(&ec), Err(KeyProblem::UnsupportedCurve(String::new())));

        let ed = &doc["keys"][3];
        assert!(matches!(parse(ed).unwrap().key, PublicKey::Ed25519(x) if x.len() == 32));
        for wrong in [31, 33] {
            let mut bad = ed.clone();
            bad["x"] = b64(vec![1u8; wrong]).into();
            assert_eq!(parse(&bad), Err(KeyProblem::Member("x")));
        }
        let mut bad = ed.clone();
        bad.as_object_mut().unwrap().remove("crv");
        assert_eq!(
            parse(&bad),
            Err(KeyProblem::UnsupportedCurve(String::new()))
        );
    }

    #[test]
    fn rsa_modulus_bits_are_exact_and_leading_zeros_stripped() {
        let modulus = |top: u8, bytes: usize| {
            let mut n = vec![0xff; bytes];
            n[0] = top;
            n
        };
        // 2047 and 8193 bits are refused, 2048 and 8192 accepted.
        assert_eq!(
            parse(&rsa(&modulus(0x7f, 256), b"\x01\x00\x01")),
            Err(KeyProblem::RsaSize(2047))
        );
        assert_eq!(
            parse(&rsa(&modulus(0x01, 1025), b"\x01\x00\x01")),
            Err(KeyProblem::RsaSize(8193))
        );
        for n in [modulus(0x80, 256), modulus(0xff, 1024)] {
            let k = parse(&rsa(&n, b"\x01\x00\x01")).unwrap();
            assert_eq!(
                k.key,
                PublicKey::Rsa {
                    n,
                    e: vec![1, 0, 1]
                }
            );
        }
        // Leading zero bytes of `n` and `e` do not count and are not kept.
        let mut padded = vec![0, 0];
        padded.extend(modulus(0x80, 256));
        let k = parse(&rsa(&padded, b"\x00\x01\x00\x01")).unwrap();
        assert_eq!(
            k.key,
            PublicKey::Rsa {
                n: modulus(0x80, 256),
                e: vec![1, 0, 1]
            }
        );
        // An exponent that is all zeros is no exponent.
        assert_eq!(
            parse(&rsa(&modulus(0x80, 256), b"\x00")),
            Err(KeyProblem::RsaSize(2048))
        );
        let mut no_n = rsa(&modulus(0x80, 256), b"\x01");
        no_n.as_object_mut().unwrap().remove("n");
        assert_eq!(parse(&no_n), Err(KeyProblem::Member("n")));
        let mut bad_e = rsa(&modulus(0x80, 256), b"\x01");
        bad_e["e"] = "AQAB=".into();
        assert_eq!(parse(&bad_e), Err(KeyProblem::Member("e")));
    }

    #[test]
    fn members_use_key_ops_and_alg_are_checked_exactly() {
        let keys = TestKeys::new();
        let base = keys.jwks_value()["keys"][3].clone(); // Ed25519, kid "ed-1"
        let with = |name: &str, value: Value| {
            let mut v = base.clone();
            v[name] = value;
            parse(&v)
        };
        assert_eq!(parse(&base).unwrap().kid.as_deref(), Some("ed-1"));
        assert_eq!(with("kid", 5.into()), Err(KeyProblem::Member("kid")));
        assert!(with("use", "sig".into()).is_ok());
        assert_eq!(with("use", "enc".into()), Err(KeyProblem::NotForSignatures));
        assert_eq!(with("use", 1.into()), Err(KeyProblem::NotForSignatures));
        assert!(with("key_ops", serde_json::json!(["sign", "verify"])).is_ok());
        assert_eq!(
            with("key_ops", serde_json::json!(["sign"])),
            Err(KeyProblem::NotForSignatures)
        );
        assert_eq!(
            with("key_ops", "verify".into()),
            Err(KeyProblem::NotForSignatures)
        );
        assert_eq!(
            with("alg", "EdDSA".into()).unwrap().alg,
            Some(Algorithm::EdDsa)
        );
        assert_eq!(parse(&base).unwrap().alg, None);
        for alg in ["HS256", "none", "eddsa"] {
            assert_eq!(
                with("alg", alg.into()),
                Err(KeyProblem::UnsupportedAlgorithm(alg.into()))
            );
        }
        assert_eq!(with("alg", 1.into()), Err(KeyProblem::Member("alg")));
        assert_eq!(
            with("kty", "DSA".into()),
            Err(KeyProblem::UnsupportedKeyType("DSA".into()))
        );
        let mut no_kty = base.clone();
        no_kty.as_object_mut().unwrap().remove("kty");
        assert_eq!(
            parse(&no_kty),
            Err(KeyProblem::UnsupportedKeyType(String::new()))
        );
        assert_eq!(with("kty", "oct".into()), Err(KeyProblem::SymmetricKey));
    }

    #[test]
    fn document_limits_are_exact_and_skipped_keys_named() {
        assert_eq!((MAX_JWKS_BODY, MAX_JWKS_KEYS), (262_144, 64));
        // Exactly MAX_JWKS_KEYS keys and exactly MAX_JWKS_BODY bytes are accepted.
        let keys = vec![r#"{"kty":"oct","kid":"s"}"#; MAX_JWKS_KEYS];
        let mut body = format!(r#"{{"keys":[{},5]}}"#, keys[1..].join(",")).into_bytes();
        body.resize(MAX_JWKS_BODY, b' ');
        let set = JwkSet::from_slice(&body).unwrap();
        assert_eq!(set.keys(), &[]);
        assert_eq!(set.skipped().len(), MAX_JWKS_KEYS);
        assert_eq!(
            set.skipped()[0],
            (Some("s".to_owned()), KeyProblem::SymmetricKey)
        );
        // A key that is not an object is skipped without a kid.
        assert_eq!(
            set.skipped()[MAX_JWKS_KEYS - 1],
            (None, KeyProblem::Member("kty"))
        );
        assert!(!set.has_kid("s"));
        assert!(matches!(
            JwkSet::from_slice(br#"{"keys":{}}"#),
            Err(JwksError::Shape(m)) if m == "no \"keys\" array"
        ));

        let k = TestKeys::new();
        let set = JwkSet::from_slice(&k.jwks_json()).unwrap();
        assert!(set.has_kid("rsa-1"));
        assert!(!set.has_kid("rsa-2"));
        let own = JwkSet::new(set.keys().to_vec());
        assert_eq!(own.keys(), set.keys());
        assert_eq!(own.skipped(), &[]);
        assert!(own.has_kid("ed-1"));
    }
}
