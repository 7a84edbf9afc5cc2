//! JWS compact serialization: size caps, strict base64url, the JOSE header
//! (duplicate members rejected), and the algorithms this crate verifies.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::{Map, Value};

/// A JWS signature algorithm this crate verifies (RFC 7518 names).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Algorithm {
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256,
    /// RSASSA-PKCS1-v1_5 with SHA-384.
    Rs384,
    /// RSASSA-PKCS1-v1_5 with SHA-512.
    Rs512,
    /// RSASSA-PSS with SHA-256.
    Ps256,
    /// RSASSA-PSS with SHA-384.
    Ps384,
    /// RSASSA-PSS with SHA-512.
    Ps512,
    /// ECDSA P-256 with SHA-256.
    Es256,
    /// ECDSA P-384 with SHA-384.
    Es384,
    /// Ed25519 (RFC 8037 `EdDSA`).
    EdDsa,
    /// HMAC SHA-256: only with a configured shared secret, never a JWKS key.
    Hs256,
}

impl Algorithm {
    /// Every asymmetric algorithm: the default allow-list for JWKS keys.
    pub const ASYMMETRIC: [Algorithm; 9] = [
        Self::Rs256,
        Self::Rs384,
        Self::Rs512,
        Self::Ps256,
        Self::Ps384,
        Self::Ps512,
        Self::Es256,
        Self::Es384,
        Self::EdDsa,
    ];

    /// The `alg` header value.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Rs256 => "RS256",
            Self::Rs384 => "RS384",
            Self::Rs512 => "RS512",
            Self::Ps256 => "PS256",
            Self::Ps384 => "PS384",
            Self::Ps512 => "PS512",
            Self::Es256 => "ES256",
            Self::Es384 => "ES384",
            Self::EdDsa => "EdDSA",
            Self::Hs256 => "HS256",
        }
    }

    /// Parses an `alg` value (case-sensitive, as RFC 7515 requires).
    #[must_use]
    pub fn from_name(name: &str) -> Option<Self> {
        Some(match name {
            "RS256" => Self::Rs256,
            "RS384" => Self::Rs384,
            "RS512" => Self::Rs512,
            "PS256" => Self::Ps256,
            "PS384" => Self::Ps384,
            "PS512" => Self::Ps512,
            "ES256" => Self::Es256,
            "ES384" => Self::Es384,
            "EdDSA" => Self::EdDsa,
            "HS256" => Self::Hs256,
            _ => return None,
        })
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Size caps on the decoded parts of a compact JWS, checked on the encoded
/// lengths before anything is decoded or verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JwsLimits {
    /// Decoded JOSE header bytes. Default 512 (the reference's cap).
    pub max_header: usize,
    /// Decoded payload bytes. Default 128 000 (the reference's cap).
    pub max_payload: usize,
    /// Decoded signature bytes. Default 1 024 (an RSA-8192 signature).
    pub max_signature: usize,
}

impl Default for JwsLimits {
    fn default() -> Self {
        Self {
            max_header: 512,
            max_payload: 128_000,
            max_signature: 1024,
        }
    }
}

impl JwsLimits {
    /// The longest compact token these limits admit, in bytes.
    #[must_use]
    pub fn max_token_len(&self) -> usize {
        encoded_len(self.max_header)
            .saturating_add(encoded_len(self.max_payload))
            .saturating_add(encoded_len(self.max_signature))
            .saturating_add(2)
    }
}

/// Unpadded base64 length of `n` bytes.
fn encoded_len(n: usize) -> usize {
    n.saturating_mul(4).saturating_add(2) / 3
}

/// Which part of a compact JWS a problem is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum JwsPart {
    /// The protected header.
    Header,
    /// The payload (claims).
    Payload,
    /// The signature.
    Signature,
}

impl fmt::Display for JwsPart {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Header => "header",
            Self::Payload => "payload",
            Self::Signature => "signature",
        })
    }
}

/// Why bytes are not a well-formed compact JWS (the token sender's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JwsError {
    /// The whole token is longer than the limits admit.
    #[error("token is {len} bytes, more than the {max} the size limits admit")]
    TokenTooLong {
        /// Length seen.
        len: usize,
        /// Longest admitted.
        max: usize,
    },
    /// Not three dot-separated parts (a JWE has five; JSON serialization is not accepted).
    #[error("token is not a compact JWS (expected 3 dot-separated parts, got {0})")]
    Segments(usize),
    /// One part is longer than its cap.
    #[error("token {part} exceeds its {max}-byte limit")]
    TooLarge {
        /// The part.
        part: JwsPart,
        /// Its decoded cap.
        max: usize,
    },
    /// One part is not unpadded, canonical base64url.
    #[error("token {0} is not valid unpadded base64url")]
    Base64(JwsPart),
    /// The header or payload is not the JSON object it must be.
    #[error("token {part} is not a JSON object: {message}")]
    Json {
        /// The part.
        part: JwsPart,
        /// The parser's explanation.
        message: String,
    },
    /// A header or claim member appears twice (parsers would disagree on its value).
    #[error("token {part} has the member {name:?} twice")]
    DuplicateMember {
        /// The part.
        part: JwsPart,
        /// The repeated member name.
        name: String,
    },
    /// A header member has the wrong JSON type.
    #[error("token header member {0:?} has the wrong type")]
    HeaderType(&'static str),
    /// The header has no `alg`.
    #[error("token header has no \"alg\"")]
    MissingAlgorithm,
}

/// The protected header members this crate reads.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct JoseHeader {
    /// `alg`, as written.
    pub alg: String,
    /// `kid`, when present.
    pub kid: Option<String>,
    /// `typ`, when present (not checked: the reference sends `JWT`, IdPs `at+jwt`).
    pub typ: Option<String>,
    /// `crit`, when present (any value makes the validator reject the token:
    /// it implements no JWS extension).
    pub crit: Option<Vec<String>>,
}

/// A compact JWS split and its header decoded; payload still encoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactJws<'a> {
    /// The decoded header.
    pub header: JoseHeader,
    /// `BASE64URL(header) || '.' || BASE64URL(payload)`: the bytes the signature covers.
    pub signing_input: &'a [u8],
    /// The encoded payload.
    pub payload_b64: &'a [u8],
    /// The decoded signature.
    pub signature: Vec<u8>,
}

impl<'a> CompactJws<'a> {
    /// Splits `token`, checks the caps, decodes the header and signature.
    pub fn parse(token: &'a [u8], limits: &JwsLimits) -> Result<Self, JwsError> {
        let max = limits.max_token_len();
        if token.len() > max {
            return Err(JwsError::TokenTooLong {
                len: token.len(),
                max,
            });
        }
        let mut dots = token
            .iter()
            .enumerate()
            .filter(|(_, b)| **b == b'.')
            .map(|(i, _)| i);
        let (Some(d1), Some(d2), None) = (dots.next(), dots.next(), dots.next()) else {
            let n = token.iter().filter(|b| **b == b'.').count() + 1;
            return Err(JwsError::Segments(n));
        };
        let header_b64 = &token[..d1];
        let payload_b64 = &token[d1 + 1..d2];
        let signature_b64 = &token[d2 + 1..];
        check_len(header_b64, JwsPart::Header, limits.max_header)?;
        check_len(payload_b64, JwsPart::Payload, limits.max_payload)?;
        check_len(signature_b64, JwsPart::Signature, limits.max_signature)?;
        let header_bytes = decode_b64(header_b64, JwsPart::Header)?;
        let header = decode_header(&header_bytes)?;
        let signature = decode_b64(signature_b64, JwsPart::Signature)?;
        Ok(Self {
            header,
            signing_input: &token[..d2],
            payload_b64,
            signature,
        })
    }

    /// Decodes the payload into a JSON object (duplicate members rejected).
    pub fn payload(&self) -> Result<Map<String, Value>, JwsError> {
        let bytes = decode_b64(self.payload_b64, JwsPart::Payload)?;
        decode_object(&bytes, JwsPart::Payload)
    }
}

fn check_len(encoded: &[u8], part: JwsPart, max: usize) -> Result<(), JwsError> {
    if encoded.len() > encoded_len(max) {
        Err(JwsError::TooLarge { part, max })
    } else {
        Ok(())
    }
}

/// Strict base64url: no padding, no stray bits, no whitespace.
pub(crate) fn decode_b64(encoded: &[u8], part: JwsPart) -> Result<Vec<u8>, JwsError> {
    URL_SAFE_NO_PAD
        .decode(encoded)
        .map_err(|_| JwsError::Base64(part))
}

/// A JSON object whose members are unique; the first repeated name is the error.
struct UniqueObject(Map<String, Value>);

impl<'de> serde::Deserialize<'de> for UniqueObject {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = UniqueObject;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<UniqueObject, A::Error> {
                let mut out = Map::new();
                while let Some(key) = map.next_key::<String>()? {
                    if out.contains_key(&key) {
                        return Err(de::Error::custom(DuplicateMarker(key)));
                    }
                    let value: Value = map.next_value()?;
                    out.insert(key, value);
                }
                Ok(UniqueObject(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// Carries a duplicate name through serde's string-only error channel.
struct DuplicateMarker(String);

const DUPLICATE_PREFIX: &str = "\u{0}duplicate:";

impl fmt::Display for DuplicateMarker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{DUPLICATE_PREFIX}{}", self.0)
    }
}

fn decode_object(bytes: &[u8], part: JwsPart) -> Result<Map<String, Value>, JwsError> {
    match serde_json::from_slice::<UniqueObject>(bytes) {
        Ok(o) => Ok(o.0),
        Err(e) => {
            let message = e.to_string();
            if let Some(rest) = message.strip_prefix(DUPLICATE_PREFIX) {
                // serde_json appends " at line L column C"; the name is before it.
                let name = rest.rsplit_once(" at line ").map_or(rest, |(n, _)| n);
                return Err(JwsError::DuplicateMember {
                    part,
                    name: name.to_owned(),
                });
            }
            Err(JwsError::Json { part, message })
        }
    }
}

fn decode_header(bytes: &[u8]) -> Result<JoseHeader, JwsError> {
    // Walk the members ourselves: a typed struct would silently take the last duplicate.
    struct V;
    impl<'de> Visitor<'de> for V {
        type Value = Result<JoseHeader, JwsError>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut seen: Vec<String> = Vec::new();
            let mut alg = None;
            let mut kid = None;
            let mut typ = None;
            let mut crit = None;
            let mut wrong_type = None;
            while let Some(key) = map.next_key::<String>()? {
                if seen.contains(&key) {
                    return Err(de::Error::custom(DuplicateMarker(key)));
                }
                match key.as_str() {
                    "alg" => take_string(&mut map, &mut alg, "alg", &mut wrong_type)?,
                    "kid" => take_string(&mut map, &mut kid, "kid", &mut wrong_type)?,
                    "typ" => take_string(&mut map, &mut typ, "typ", &mut wrong_type)?,
                    "crit" => match map.next_value::<Value>()? {
                        Value::Array(items) => {
                            let names: Option<Vec<String>> = items
                                .into_iter()
                                .map(|v| match v {
                                    Value::String(s) => Some(s),
                                    _ => None,
                                })
                                .collect();
                            match names {
                                Some(n) => crit = Some(n),
                                None => wrong_type = wrong_type.or(Some("crit")),
                            }
                        }
                        _ => wrong_type = wrong_type.or(Some("crit")),
                    },
                    // Unknown members are ignored (RFC 7515 §4); none selects keys.
                    _ => {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
                seen.push(key);
            }
            if let Some(name) = wrong_type {
                return Ok(Err(JwsError::HeaderType(name)));
            }
            let Some(alg) = alg else {
                return Ok(Err(JwsError::MissingAlgorithm));
            };
            Ok(Ok(JoseHeader {
                alg,
                kid,
                typ,
                crit,
            }))
        }
    }
    fn take_string<'de, A: MapAccess<'de>>(
        map: &mut A,
        slot: &mut Option<String>,
        name: &'static str,
        wrong_type: &mut Option<&'static str>,
    ) -> Result<(), A::Error> {
        match map.next_value::<Value>()? {
            Value::String(s) => *slot = Some(s),
            _ => *wrong_type = wrong_type.or(Some(name)),
        }
        Ok(())
    }
    struct Header(Result<JoseHeader, JwsError>);
    impl<'de> serde::Deserialize<'de> for Header {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            d.deserialize_map(V).map(Header)
        }
    }
    match serde_json::from_slice::<Header>(bytes) {
        Ok(h) => h.0,
        Err(e) => {
            let message = e.to_string();
            if let Some(rest) = message.strip_prefix(DUPLICATE_PREFIX) {
                let name = rest.rsplit_once(" at line ").map_or(rest, |(n, _)| n);
                return Err(JwsError::DuplicateMember {
                    part: JwsPart::Header,
                    name: name.to_owned(),
                });
            }
            Err(JwsError::Json {
                part: JwsPart::Header,
                message,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        URL_SAFE_NO_PAD.encode(s)
    }

    fn token(header: &str, payload: &str) -> String {
        format!("{}.{}.{}", b64(header), b64(payload), b64("sig"))
    }

    #[test]
    fn parses_header_members() {
        let t = token(r#"{"alg":"RS256","kid":"k1","typ":"JWT","x":[1]}"#, "{}");
        let jws = CompactJws::parse(t.as_bytes(), &JwsLimits::default()).unwrap();
        assert_eq!(jws.header.alg, "RS256");
        assert_eq!(jws.header.kid.as_deref(), Some("k1"));
        assert_eq!(jws.signature, b"sig");
        assert!(jws.payload().unwrap().is_empty());
    }

    #[test]
    fn duplicate_header_members_are_rejected_even_escaped() {
        for h in [
            r#"{"alg":"RS256","alg":"HS256"}"#,
            r#"{"alg":"RS256","a\u006cg":"HS256"}"#,
            r#"{"alg":"RS256","x":1,"x":2}"#,
        ] {
            let t = token(h, "{}");
            let err = CompactJws::parse(t.as_bytes(), &JwsLimits::default()).unwrap_err();
            assert!(
                matches!(
                    err,
                    JwsError::DuplicateMember {
                        part: JwsPart::Header,
                        ..
                    }
                ),
                "{h}: {err:?}"
            );
        }
    }

    #[test]
    fn duplicate_claims_are_rejected() {
        let t = token(r#"{"alg":"RS256"}"#, r#"{"sub":"a","sub":"b"}"#);
        let jws = CompactJws::parse(t.as_bytes(), &JwsLimits::default()).unwrap();
        assert_eq!(
            jws.payload().unwrap_err(),
            JwsError::DuplicateMember {
                part: JwsPart::Payload,
                name: "sub".into()
            }
        );
    }

    #[test]
    fn shape_errors() {
        let l = JwsLimits::default();
        assert_eq!(
            CompactJws::parse(b"a.b", &l).unwrap_err(),
            JwsError::Segments(2)
        );
        assert_eq!(
            CompactJws::parse(b"a.b.c.d.e", &l).unwrap_err(),
            JwsError::Segments(5)
        );
        let padded = format!("{}=.e30.c2ln", b64(r#"{"alg":"RS256"}"#));
        assert_eq!(
            CompactJws::parse(padded.as_bytes(), &l).unwrap_err(),
            JwsError::Base64(JwsPart::Header)
        );
        let t = token(r#"["alg"]"#, "{}");
        assert!(matches!(
            CompactJws::parse(t.as_bytes(), &l).unwrap_err(),
            JwsError::Json {
                part: JwsPart::Header,
                ..
            }
        ));
        let t = token(r#"{"alg":5}"#, "{}");
        assert_eq!(
            CompactJws::parse(t.as_bytes(), &l).unwrap_err(),
            JwsError::HeaderType("alg")
        );
        let t = token(r#"{"kid":"x"}"#, "{}");
        assert_eq!(
            CompactJws::parse(t.as_bytes(), &l).unwrap_err(),
            JwsError::MissingAlgorithm
        );
    }

    #[test]
    fn caps_apply_before_decoding() {
        let l = JwsLimits::default();
        let big = "A".repeat(1 << 20);
        let t = format!("e30.{big}.c2ln");
        assert!(matches!(
            CompactJws::parse(t.as_bytes(), &l).unwrap_err(),
            JwsError::TokenTooLong { .. }
        ));
        let t = format!("{}.e30.c2ln", "A".repeat(700));
        assert_eq!(
            CompactJws::parse(t.as_bytes(), &l).unwrap_err(),
            JwsError::TooLarge {
                part: JwsPart::Header,
                max: 512
            }
        );
    }

    #[test]
    fn every_algorithm_name_round_trips_and_names_are_case_sensitive() {
        let names = [
            (Algorithm::Rs256, "RS256"),
            (Algorithm::Rs384, "RS384"),
            (Algorithm::Rs512, "RS512"),
            (Algorithm::Ps256, "PS256"),
            (Algorithm::Ps384, "PS384"),
            (Algorithm::Ps512, "PS512"),
            (Algorithm::Es256, "ES256"),
            (Algorithm::Es384, "ES384"),
            (Algorithm::EdDsa, "EdDSA"),
            (Algorithm::Hs256, "HS256"),
        ];
        for (alg, name) in names {
            assert_eq!(alg.as_str(), name);
            assert_eq!(alg.to_string(), name);
            assert_eq!(Algorithm::from_name(name), Some(alg), "{name}");
            assert_eq!(Algorithm::from_name(&name.to_lowercase()), None, "{name}");
        }
        assert_eq!(Algorithm::from_name("none"), None);
        assert_eq!(Algorithm::from_name(""), None);
        assert!(!Algorithm::ASYMMETRIC.contains(&Algorithm::Hs256));
    }

    /// A header of exactly `n` bytes with `alg` RS256.
    fn header_of_len(n: usize) -> String {
        let pad = n - r#"{"alg":"RS256","x":""}"#.len();
        let h = format!(r#"{{"alg":"RS256","x":"{}"}}"#, "a".repeat(pad));
        assert_eq!(h.len(), n);
        h
    }

    #[test]
    fn size_caps_are_exact_for_each_part_and_the_whole_token() {
        assert_eq!(
            JwsLimits::default(),
            JwsLimits {
                max_header: 512,
                max_payload: 128_000,
                max_signature: 1024
            }
        );
        // Unpadded base64 lengths: 683 + 170 667 + 1 366, plus the two dots.
        assert_eq!(JwsLimits::default().max_token_len(), 172_718);
        let l = JwsLimits {
            max_header: 30,
            max_payload: 6,
            max_signature: 4,
        };
        // 40 + 8 + 6 encoded bytes and two dots.
        assert_eq!(l.max_token_len(), 56);

        // Every part at its cap: the longest token the limits admit is accepted.
        let header = b64(&header_of_len(30));
        let payload = b64(r#"{"":0}"#);
        let full = format!("{header}.{payload}.{}", b64("sig!"));
        assert_eq!((header.len(), payload.len(), full.len()), (40, 8, 56));
        let jws = CompactJws::parse(full.as_bytes(), &l).unwrap();
        assert_eq!(jws.header.alg, "RS256");
        assert_eq!(jws.signature, b"sig!");
        assert_eq!(jws.signing_input, format!("{header}.{payload}").as_bytes());
        assert_eq!(jws.payload_b64, payload.as_bytes());
        assert_eq!(jws.payload().unwrap()[""], 0);

        // One byte more is refused as a whole before any part is looked at.
        let long = format!("{full}A");
        assert_eq!(
            CompactJws::parse(long.as_bytes(), &l).unwrap_err(),
            JwsError::TokenTooLong { len: 57, max: 56 }
        );

        // Each part one encoded byte over its own cap (the token as a whole fits).
        let small = b64(r#"{"alg":"RS256"}"#);
        let over = [
            (
                format!("{}A.e30.c2ln", b64(&header_of_len(30))),
                JwsPart::Header,
                30,
            ),
            (
                format!("{small}.{}.c2ln", "A".repeat(9)),
                JwsPart::Payload,
                6,
            ),
            (
                format!("{small}.e30.{}", "A".repeat(7)),
                JwsPart::Signature,
                4,
            ),
        ];
        for (t, part, max) in over {
            assert!(t.len() <= 56, "{t}");
            assert_eq!(
                CompactJws::parse(t.as_bytes(), &l).unwrap_err(),
                JwsError::TooLarge { part, max },
                "{t}"
            );
        }
        // At the cap each part passes the size check (payload and signature
        // then decode: 8 and 6 encoded bytes).
        let at = format!("{small}.{}.{}", "A".repeat(8), "A".repeat(6));
        let jws = CompactJws::parse(at.as_bytes(), &l).unwrap();
        assert_eq!(jws.signature, [0; 4]);
    }

    #[test]
    fn typ_and_crit_are_read_and_wrong_types_named() {
        let l = JwsLimits::default();
        let t = token(r#"{"alg":"RS256","typ":"at+jwt","crit":["b64"]}"#, "{}");
        let h = CompactJws::parse(t.as_bytes(), &l).unwrap().header;
        assert_eq!(
            h,
            JoseHeader {
                alg: "RS256".into(),
                kid: None,
                typ: Some("at+jwt".into()),
                crit: Some(vec!["b64".into()]),
            }
        );
        for (header, member) in [
            (r#"{"alg":"RS256","crit":[1]}"#, "crit"),
            (r#"{"alg":"RS256","crit":["b64",null]}"#, "crit"),
            (r#"{"alg":"RS256","crit":"b64"}"#, "crit"),
            (r#"{"alg":"RS256","kid":7}"#, "kid"),
            (r#"{"alg":"RS256","typ":null}"#, "typ"),
            // The first wrong member is the one named.
            (r#"{"kid":1,"typ":2,"alg":3}"#, "kid"),
        ] {
            let t = token(header, "{}");
            assert_eq!(
                CompactJws::parse(t.as_bytes(), &l).unwrap_err(),
                JwsError::HeaderType(member),
                "{header}"
            );
        }
    }

    #[test]
    fn non_objects_and_duplicates_are_named_exactly() {
        let l = JwsLimits::default();
        let t = token(r#"{"alg":"RS256","a\u006cg":"HS256"}"#, "{}");
        assert_eq!(
            CompactJws::parse(t.as_bytes(), &l).unwrap_err(),
            JwsError::DuplicateMember {
                part: JwsPart::Header,
                name: "alg".into()
            }
        );
        let t = token("[1]", "{}");
        let JwsError::Json { part, message } = CompactJws::parse(t.as_bytes(), &l).unwrap_err()
        else {
            panic!()
        };
        assert_eq!(part, JwsPart::Header);
        assert!(message.contains("expected a JSON object"), "{message}");
        let t = token(r#"{"alg":"RS256"}"#, "[1]");
        let JwsError::Json { part, message } = CompactJws::parse(t.as_bytes(), &l)
            .unwrap()
            .payload()
            .unwrap_err()
        else {
            panic!()
        };
        assert_eq!(part, JwsPart::Payload);
        assert!(message.contains("expected a JSON object"), "{message}");
        // The payload's base64 is checked when it is decoded.
        let t = format!("{}.e30=.c2ln", b64(r#"{"alg":"RS256"}"#));
        assert_eq!(
            CompactJws::parse(t.as_bytes(), &l)
                .unwrap()
                .payload()
                .unwrap_err(),
            JwsError::Base64(JwsPart::Payload)
        );
    }

    #[test]
    fn error_messages_name_the_part() {
        assert_eq!(
            JwsError::TooLarge {
                part: JwsPart::Payload,
                max: 6
            }
            .to_string(),
            "token payload exceeds its 6-byte limit"
        );
        assert_eq!(
            JwsError::Base64(JwsPart::Header).to_string(),
            "token header is not valid unpadded base64url"
        );
        assert_eq!(
            JwsError::Base64(JwsPart::Signature).to_string(),
            "token signature is not valid unpadded base64url"
        );
    }
}
