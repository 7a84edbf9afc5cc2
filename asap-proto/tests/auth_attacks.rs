//! Attack suite for `asap_proto::auth`: each hostile token or flood gets the
//! exact typed rejection, and JWKS fetches stay bounded.
#![allow(clippy::disallowed_methods)] // one base `Instant` for the test; the code under test never reads a clock

mod auth_support;

use std::time::{Duration, Instant};

use asap_proto::auth::{
    Algorithm, AuthRejection, AuthStep, Authenticator, AuthenticatorConfig, ClaimsPolicy, Identity,
    JwksCacheConfig, JwsError, JwsLimits, JwsPart, KeySource, Scope, SharedSecret, TokenRejection,
    ValidatorConfig,
};
use asap_proto::model::UnixTime;
use asap_proto::server::Now;
use auth_support::{b64, hmac, kid_for, TestKeys};
use serde_json::{json, Value};

const WALL: i64 = 1_800_000_000;

struct Rig {
    keys: TestKeys,
    auth: Authenticator,
    t0: Instant,
    jwks: Vec<u8>,
}

impl Rig {
    fn new(tweak: impl FnOnce(&mut AuthenticatorConfig)) -> Self {
        let keys = TestKeys::new();
        let jwks = keys.jwks_json();
        let mut config = AuthenticatorConfig {
            keys: KeySource::Jwks(JwksCacheConfig::new("https://idp.example.com/jwks")),
            ..Default::default()
        };
        tweak(&mut config);
        Self {
            keys,
            auth: Authenticator::new(config).unwrap(),
            t0: Instant::now(),
            jwks,
        }
    }

    fn now(&self, secs: u64) -> Now {
        Now {
            monotonic: self.t0 + Duration::from_secs(secs),
            wall: UnixTime::from_secs(WALL + secs as i64),
        }
    }

    /// Drives one request to its end, answering every JWKS fetch with `self.jwks`.
    fn run(&mut self, token: &str, at: u64) -> Result<Identity, AuthRejection> {
        let header = format!("Bearer {token}");
        for _ in 0..4 {
            match self
                .auth
                .authenticate(Some(header.as_bytes()), None, self.now(at))
            {
                AuthStep::Authenticated(id) => return Ok(id),
                AuthStep::Rejected(r) => return Err(r),
                AuthStep::NeedKeys(f) => {
                    let resp = http::Response::new(self.jwks.clone());
                    self.auth
                        .handle_jwks_response(f.id, &resp, self.now(at).monotonic)
                        .unwrap();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        panic!("authenticate did not converge")
    }

    fn fetches(&self) -> u64 {
        self.auth.jwks().unwrap().fetches_started()
    }
}

fn claims() -> Value {
    json!({"sub":"client-app","scope":"asap:execute","exp": WALL + 3600,
           "https://github.com/adriannoes/asap-protocol/agent_id":"urn:asap:agent:alice"})
}

fn invalid(r: TokenRejection) -> Result<Identity, AuthRejection> {
    Err(AuthRejection::InvalidToken(r))
}

#[test]
fn hostile_tokens_get_exact_rejections() {
    let mut rig = Rig::new(|_| {});
    let k = TestKeys::new(); // another signer: tokens from a key the IdP never published
    let rsa_jwk = rig.keys.jwks_value()["keys"][0].clone();
    let c = claims();
    let tamper = |t: &str| {
        let parts: Vec<&str> = t.split('.').collect();
        let mut evil = c.clone();
        evil["sub"] = json!("admin");
        format!("{}.{}.{}", parts[0], b64(evil.to_string()), parts[2])
    };
    let signed = |alg: &str, cl: &Value| rig.keys.sign(alg, Some(kid_for(alg)), cl);
    let with = |f: &dyn Fn(&mut Value)| {
        let mut v = c.clone();
        f(&mut v);
        v
    };
    let expired = with(&|v| v["exp"] = json!(WALL - 61));
    let future_nbf = with(&|v| v["nbf"] = json!(WALL + 120));
    let no_exp = with(&|v| {
        v.as_object_mut().unwrap().remove("exp");
    });
    let hs_confusion = {
        // HS256 "signed" with the published RSA key's bytes as the secret.
        let input = format!(
            "{}.{}",
            b64(r#"{"alg":"HS256","kid":"rsa-1"}"#),
            b64(c.to_string())
        );
        let sig = hmac(rsa_jwk.to_string().as_bytes(), input.as_bytes());
        format!("{input}.{}", b64(sig))
    };
    let none = format!(
        "{}.{}.",
        b64(r#"{"alg":"none","typ":"JWT"}"#),
        b64(c.to_string())
    );
    let none_caps = format!("{}.{}.", b64(r#"{"alg":"NONE"}"#), b64(c.to_string()));
    let big = format!(
        "{}.{}.{}",
        b64(r#"{"alg":"RS256","kid":"rsa-1"}"#),
        "A".repeat(1 << 20),
        "AAAA"
    );
    let big_payload = format!(
        "{}.{}.{}",
        b64(r#"{"alg":"RS256","kid":"rsa-1"}"#),
        "A".repeat(170_700),
        "AAAA"
    );
    let dup = rig.keys.sign_raw(
        "ES256",
        None,
        r#"{"alg":"ES256","kid":"ec-256","alg":"HS256"}"#,
        &c.to_string(),
    );
    let crit = rig.keys.sign_raw(
        "ES256",
        None,
        r#"{"alg":"ES256","kid":"ec-256","crit":["b64"],"b64":false}"#,
        &c.to_string(),
    );
    let injected_jwk = k.sign_raw(
        "EdDSA",
        None,
        &json!({"alg":"EdDSA","kid":"attacker","jwk":k.jwks_value()["keys"][3]}).to_string(),
        &c.to_string(),
    );
    let foreign_key = k.sign("EdDSA", Some("ed-1"), &c);
    let es_with_rsa_kid = rig.keys.sign("ES256", Some("rsa-1"), &c);
    let p384_as_p256 = rig.keys.sign_raw(
        "ES384",
        None,
        r#"{"alg":"ES384","kid":"ec-256"}"#,
        &c.to_string(),
    );
    let rs256 = signed("RS256", &c);

    let cases: Vec<(&str, String, Result<Identity, AuthRejection>)> = vec![
        ("alg none", none, invalid(TokenRejection::AlgorithmNone)),
        (
            "alg NONE",
            none_caps,
            invalid(TokenRejection::AlgorithmNone),
        ),
        (
            "HS/RS confusion",
            hs_confusion,
            invalid(TokenRejection::HmacNotConfigured),
        ),
        (
            "ES256 with an RSA kid",
            es_with_rsa_kid,
            invalid(TokenRejection::KeyAlgorithmMismatch {
                kid: Some("rsa-1".into()),
                alg: Algorithm::Es256,
            }),
        ),
        (
            "ES384 with a P-256 kid",
            p384_as_p256,
            invalid(TokenRejection::KeyAlgorithmMismatch {
                kid: Some("ec-256".into()),
                alg: Algorithm::Es384,
            }),
        ),
        (
            "expired",
            signed("ES256", &expired),
            invalid(TokenRejection::Expired {
                exp: UnixTime::from_secs(WALL - 61),
            }),
        ),
        (
            "nbf in the future",
            signed("EdDSA", &future_nbf),
            invalid(TokenRejection::NotYetValid {
                nbf: UnixTime::from_secs(WALL + 120),
            }),
        ),
        (
            "missing exp",
            signed("PS256", &no_exp),
            invalid(TokenRejection::MissingExpiry),
        ),
        (
            "tampered claims",
            tamper(&rs256),
            invalid(TokenRejection::BadSignature),
        ),
        (
            "signed by an unpublished key",
            foreign_key,
            invalid(TokenRejection::BadSignature),
        ),
        (
            "embedded jwk header is ignored",
            injected_jwk,
            invalid(TokenRejection::UnknownKid("attacker".into())),
        ),
        (
            "1 MiB token",
            big.clone(),
            invalid(TokenRejection::Malformed(JwsError::TokenTooLong {
                len: big.len(),
                max: JwsLimits::default().max_token_len(),
            })),
        ),
        (
            "payload over the cap",
            big_payload,
            invalid(TokenRejection::Malformed(JwsError::TooLarge {
                part: JwsPart::Payload,
                max: 128_000,
            })),
        ),
        (
            "malformed base64",
            "e30=.e30.AAAA".into(),
            invalid(TokenRejection::Malformed(JwsError::Base64(JwsPart::Header))),
        ),
        (
            "header not JSON",
            format!("{}.e30.AAAA", b64("{alg")),
            invalid(TokenRejection::Malformed(JwsError::Json {
                part: JwsPart::Header,
                message: String::new(),
            })),
        ),
        (
            "duplicate header member",
            dup,
            invalid(TokenRejection::Malformed(JwsError::DuplicateMember {
                part: JwsPart::Header,
                name: "alg".into(),
            })),
        ),
        (
            "unknown crit",
            crit,
            invalid(TokenRejection::CriticalHeader(vec!["b64".into()])),
        ),
        (
            "JWE-shaped",
            "a.b.c.d.e".into(),
            invalid(TokenRejection::Malformed(JwsError::Segments(5))),
        ),
        (
            "unknown alg",
            format!("{}.e30.AAAA", b64(r#"{"alg":"HS384"}"#)),
            invalid(TokenRejection::AlgorithmNotAllowed("HS384".into())),
        ),
    ];
    for (name, token, want) in cases {
        let got = rig.run(&token, 0);
        match (&got, &want) {
            // serde_json's wording is not part of the contract; the variant and part are.
            (
                Err(AuthRejection::InvalidToken(TokenRejection::Malformed(JwsError::Json {
                    part: JwsPart::Header,
                    ..
                }))),
                Err(AuthRejection::InvalidToken(TokenRejection::Malformed(JwsError::Json {
                    part: JwsPart::Header,
                    ..
                }))),
            ) => {}
            _ => assert_eq!(got, want, "{name}"),
        }
        if let Err(r) = &got {
            assert_eq!(r.status(), 401, "{name}");
            assert_eq!(
                r.www_authenticate().unwrap(),
                r#"Bearer error="invalid_token""#,
                "{name}"
            );
        }
    }
    // Only the initial fetch: the kid miss ("attacker") came within 30 s of
    // it, and bad signatures and key mismatches never refetch.
    assert_eq!(rig.fetches(), 1);
    // And the genuine token still passes.
    let id = rig.run(&rs256, 1).unwrap();
    assert_eq!(id.agent.unwrap().as_str(), "urn:asap:agent:alice");
}

#[test]
fn hmac_with_a_secret_never_uses_jwks_keys() {
    let mut rig = Rig::new(|c| {
        c.validator.shared_secret = Some(SharedSecret::new(auth_support::HS_SECRET).unwrap());
    });
    let rsa_jwk = rig.keys.jwks_value()["keys"][0].clone();
    let input = format!(
        "{}.{}",
        b64(r#"{"alg":"HS256","kid":"rsa-1"}"#),
        b64(claims().to_string())
    );
    let sig = hmac(rsa_jwk["n"].as_str().unwrap().as_bytes(), input.as_bytes());
    assert_eq!(
        rig.run(&format!("{input}.{}", b64(sig)), 0),
        invalid(TokenRejection::BadSignature)
    );
    assert!(rig
        .run(&rig.keys.sign("HS256", Some("k1"), &claims()), 0)
        .is_ok());
    assert_eq!(rig.fetches(), 0, "HS256 needs no key set");
}

#[test]
fn issuer_and_audience() {
    let mut rig = Rig::new(|c| {
        c.validator.claims = ClaimsPolicy {
            issuer: Some("https://idp.example.com".into()),
            audience: Some("urn:asap:agent:echo".into()),
            ..Default::default()
        };
    });
    let mut c = claims();
    c["iss"] = json!("https://idp.example.com");
    c["aud"] = json!("urn:asap:agent:echo");
    assert!(rig
        .run(&rig.keys.sign("ES384", Some("ec-384"), &c), 0)
        .is_ok());
    let mut wrong_iss = c.clone();
    wrong_iss["iss"] = json!("https://evil.example.com");
    assert_eq!(
        rig.run(&rig.keys.sign("ES384", Some("ec-384"), &wrong_iss), 0),
        invalid(TokenRejection::WrongIssuer {
            found: Some("https://evil.example.com".into())
        })
    );
    let mut wrong_aud = c.clone();
    wrong_aud["aud"] = json!(["urn:asap:agent:other"]);
    assert_eq!(
        rig.run(&rig.keys.sign("ES384", Some("ec-384"), &wrong_aud), 0),
        invalid(TokenRejection::WrongAudience {
            found: vec!["urn:asap:agent:other".into()]
        })
    );
}

#[test]
fn unknown_kid_flood_is_one_fetch_per_30_s() {
    let mut rig = Rig::new(|_| {});
    let mut rejected = 0;
    // 2 000 forged kids over 10 simulated minutes.
    for i in 0..2000u64 {
        let at = i * 600 / 2000;
        let t = rig
            .keys
            .sign("EdDSA", Some(&format!("forged-{i}")), &claims());
        match rig.run(&t, at) {
            Err(AuthRejection::InvalidToken(TokenRejection::UnknownKid(_))) => rejected += 1,
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(rejected, 2000);
    // Initial fetch + at most one kid-miss refresh per 30 s window.
    assert!(
        rig.fetches() <= 1 + 600 / 30 + 1,
        "{} fetches",
        rig.fetches()
    );
}

#[test]
fn many_requests_wait_on_one_fetch() {
    let mut rig = Rig::new(|_| {});
    let token = format!("Bearer {}", rig.keys.sign("EdDSA", Some("ed-1"), &claims()));
    let now = rig.now(0);
    let AuthStep::NeedKeys(fetch) = rig.auth.authenticate(Some(token.as_bytes()), None, now) else {
        panic!()
    };
    for _ in 0..50 {
        match rig
            .auth
            .authenticate(Some(token.as_bytes()), Some(Scope::Execute), now)
        {
            AuthStep::Wait(id) => assert_eq!(id, fetch.id),
            other => panic!("{other:?}"),
        }
    }
    rig.auth
        .handle_jwks_response(
            fetch.id,
            &http::Response::new(rig.jwks.clone()),
            now.monotonic,
        )
        .unwrap();
    for _ in 0..50 {
        assert!(matches!(
            rig.auth
                .authenticate(Some(token.as_bytes()), Some(Scope::Execute), now),
            AuthStep::Authenticated(_)
        ));
    }
    assert!(matches!(
        rig.auth
            .authenticate(Some(token.as_bytes()), Some(Scope::Admin), now),
        AuthStep::Rejected(AuthRejection::InsufficientScope {
            required: Scope::Admin
        })
    ));
    assert_eq!(rig.fetches(), 1);
}

#[test]
fn idp_down_is_503_and_the_last_good_set_keeps_serving() {
    let mut rig = Rig::new(|_| {});
    let header = format!(
        "Bearer {}",
        rig.keys.sign("ES256", Some("ec-256"), &claims())
    );
    let h = Some(header.as_bytes());
    let AuthStep::NeedKeys(f) = rig.auth.authenticate(h, None, rig.now(0)) else {
        panic!()
    };
    rig.auth.handle_jwks_failure(f.id, rig.now(0).monotonic);
    let AuthStep::Rejected(r) = rig.auth.authenticate(h, None, rig.now(1)) else {
        panic!()
    };
    assert_eq!(
        (r.clone(), r.status()),
        (
            AuthRejection::KeysUnavailable,
            http::StatusCode::SERVICE_UNAVAILABLE
        )
    );
    // Back-off over: fetch again, succeed.
    let AuthStep::NeedKeys(f) = rig.auth.authenticate(h, None, rig.now(6)) else {
        panic!()
    };
    rig.auth
        .handle_jwks_response(
            f.id,
            &http::Response::new(rig.jwks.clone()),
            rig.now(6).monotonic,
        )
        .unwrap();
    assert!(matches!(
        rig.auth.authenticate(h, None, rig.now(6)),
        AuthStep::Authenticated(_)
    ));
    // A day later the set is stale; the refresh fails; the old set still serves.
    let day = 86_400 + 6;
    let AuthStep::NeedKeys(f) = rig.auth.authenticate(h, None, rig.now(day)) else {
        panic!()
    };
    let down = http::Response::builder()
        .status(502)
        .body(Vec::new())
        .unwrap();
    assert!(rig
        .auth
        .handle_jwks_response(f.id, &down, rig.now(day).monotonic)
        .is_err());
    let mut late = claims();
    late["exp"] = json!(WALL + day as i64 + 3600);
    let header = format!("Bearer {}", rig.keys.sign("ES256", Some("ec-256"), &late));
    assert!(matches!(
        rig.auth
            .authenticate(Some(header.as_bytes()), None, rig.now(day + 1)),
        AuthStep::Authenticated(_)
    ));
}

#[test]
fn token_for_another_agent_is_a_sender_mismatch() {
    let mut rig = Rig::new(|_| {});
    let id = rig
        .run(&rig.keys.sign("EdDSA", Some("ed-1"), &claims()), 0)
        .unwrap();
    assert!(id.check_sender("urn:asap:agent:alice").is_ok());
    let r = id.check_sender("urn:asap:agent:bob").unwrap_err();
    assert!(
        matches!(&r, AuthRejection::SenderMismatch { proven, sender } if proven.as_str() == "urn:asap:agent:alice" && sender == "urn:asap:agent:bob")
    );
    assert_eq!(r.status(), 403);
    // An agent claim that is no URN is an invalid token.
    let mut c = claims();
    c["https://github.com/adriannoes/asap-protocol/agent_id"] = json!("Alice");
    assert!(matches!(
        rig.run(&rig.keys.sign("EdDSA", Some("ed-1"), &c), 0),
        Err(AuthRejection::InvalidToken(
            TokenRejection::InvalidAgentClaim(_)
        ))
    ));
}

#[test]
fn kid_less_tokens() {
    let mut rig = Rig::new(|_| {});
    // One Ed25519 key in the set: a kid-less EdDSA token verifies with it.
    assert!(rig.run(&rig.keys.sign("EdDSA", None, &claims()), 0).is_ok());
    // Two RSA keys: a kid-less RS256 token is refused rather than tried against both.
    let mut two = rig.keys.jwks_value();
    two["keys"]
        .as_array_mut()
        .unwrap()
        .push(rig.keys.rsa_b_jwk());
    rig.jwks = serde_json::to_vec(&two).unwrap();
    let mut rig2 = Rig {
        auth: Authenticator::new(AuthenticatorConfig {
            keys: KeySource::Jwks(JwksCacheConfig::new("https://idp.example.com/jwks")),
            ..Default::default()
        })
        .unwrap(),
        ..rig
    };
    assert_eq!(
        rig2.run(&rig2.keys.sign("RS256", None, &claims()), 0),
        invalid(TokenRejection::KidRequired {
            alg: Algorithm::Rs256,
            candidates: 2
        })
    );
    let _ = ValidatorConfig::default();
}

#[test]
fn key_rotation_is_picked_up_by_a_kid_miss_refresh() {
    let mut rig = Rig::new(|_| {});
    assert!(rig
        .run(&rig.keys.sign("RS256", Some("rsa-1"), &claims()), 0)
        .is_ok());
    let mut rotated = rig.keys.jwks_value();
    rotated["keys"]
        .as_array_mut()
        .unwrap()
        .push(rig.keys.rsa_b_jwk());
    rig.jwks = serde_json::to_vec(&rotated).unwrap();
    let new_key = rig.keys.sign("RS256", Some("rsa-2"), &claims());
    // Within 30 s of the last fetch the new kid is unknown...
    assert_eq!(
        rig.run(&new_key, 10),
        invalid(TokenRejection::UnknownKid("rsa-2".into()))
    );
    // ...after that, one refresh brings it.
    assert!(rig.run(&new_key, 30).is_ok());
    assert_eq!(rig.fetches(), 2);
}
