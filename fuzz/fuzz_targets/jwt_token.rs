//! Bytes → the JWT decoder and validator. Nothing panics, and what is
//! accepted satisfies the policy. The first byte picks the mode:
//!
//! * `0..=127`: the rest is a token (and an `Authorization` header) fed to
//!   the validator (Ed25519 key set and an HS256 secret) and the authenticator;
//! * `128..=191`: the rest, split at the first `0xFF`, is a JOSE header and a
//!   claims document, signed here with the HS256 secret so the input reaches
//!   the claim checks and the identity binding past the signature;
//! * `192..=255`: the rest is a JWKS, a subject map, an introspection answer,
//!   a token endpoint answer and an OIDC document.

#![no_main]

use std::time::{Duration, Instant};

use asap_proto::auth::{
    AuthStep, Authenticator, AuthenticatorConfig, ClaimsPolicy, ClientCredentials,
    ClientCredentialsConfig, JwkSet, KeySource, OidcDiscovery, OidcDiscoveryConfig, OidcLookup,
    SharedSecret, SubjectMap, TokenInfo, TokenLookup, TokenValidator, ValidatorConfig, Verdict,
};
use asap_proto::model::UnixTime;
use asap_proto::server::Now;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use libfuzzer_sys::fuzz_target;

const SECRET: &[u8] = b"fuzz-secret-that-is-at-least-32-bytes!";
const WALL: i64 = 1_800_000_000;
const JWKS: &str = r#"{"keys":[{"kty":"OKP","crv":"Ed25519","kid":"ed-1","x":"11qYAYKxCrfVS_7TyWQHOg7hcvPapiMlrwIaaPcHURo"},
  {"kty":"EC","crv":"P-256","kid":"ec-1","x":"f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU","y":"x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0"}]}"#;

fn validator_config() -> ValidatorConfig {
    ValidatorConfig {
        shared_secret: Some(SharedSecret::new(SECRET).unwrap()),
        claims: ClaimsPolicy {
            issuer: None,
            audience: None,
            leeway: Duration::from_secs(60),
            require_exp: false,
        },
        ..Default::default()
    }
}

fn check_token(token: &str) {
    let keys = JwkSet::from_slice(JWKS.as_bytes()).unwrap();
    let v = TokenValidator::new(validator_config());
    let now = UnixTime::from_secs(WALL);
    match v.validate(token, Some(&keys), now) {
        Verdict::Valid(c) => {
            assert!(!c.subject.is_empty());
            if let Some(exp) = c.expires_at {
                assert!(now < exp.saturating_add(Duration::from_secs(60)));
            }
            if let Some(nbf) = c.not_before {
                assert!(now.saturating_add(Duration::from_secs(60)) >= nbf);
            }
        }
        Verdict::Rejected(r) => {
            let _ = r.to_string();
        }
        Verdict::NeedKeySet => panic!("a key set was given"),
        Verdict::NeedKey { .. } => {}
    }
    let _ = v.validate(token, None, now);
    let _ = v.key_algorithm(token);

    let mut auth = Authenticator::new(AuthenticatorConfig {
        keys: KeySource::Static(keys),
        validator: validator_config(),
        ..Default::default()
    })
    .unwrap();
    let t = Now {
        monotonic: Instant::now(),
        wall: now,
    };
    for header in [format!("Bearer {token}"), token.to_owned()] {
        match auth.authenticate(Some(header.as_bytes()), None, t) {
            AuthStep::Authenticated(id) => {
                assert!(!id.subject.is_empty());
                let _ = id.check_sender("urn:asap:agent:x");
            }
            AuthStep::Rejected(r) => {
                assert!(matches!(r.status().as_u16(), 401 | 403 | 503));
                let _ = (r.www_authenticate(), r.body());
            }
            other => panic!("static keys never fetch: {other:?}"),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode {
        0..=127 => check_token(&String::from_utf8_lossy(rest)),
        128..=191 => {
            let (header, claims) = match rest.iter().position(|b| *b == 0xFF) {
                Some(i) => (&rest[..i], &rest[i + 1..]),
                None => (&br#"{"alg":"HS256"}"#[..], rest),
            };
            let input = format!(
                "{}.{}",
                URL_SAFE_NO_PAD.encode(header),
                URL_SAFE_NO_PAD.encode(claims)
            );
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET);
            let sig = ring::hmac::sign(&key, input.as_bytes());
            check_token(&format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig)));
        }
        _ => {
            if let Ok(set) = JwkSet::from_slice(rest) {
                for k in set.keys() {
                    for alg in asap_proto::auth::Algorithm::ASYMMETRIC {
                        let _ = k.verify(alg, rest, rest);
                    }
                }
            }
            let text = String::from_utf8_lossy(rest);
            let _ = SubjectMap::parse(&text);
            let _ = TokenInfo::from_slice(rest);
            let t0 = Instant::now();
            let now = Now {
                monotonic: t0,
                wall: UnixTime::from_secs(WALL),
            };
            let resp = http::Response::new(rest.to_vec());
            let mut cc = ClientCredentials::new(ClientCredentialsConfig {
                token_url: "https://idp.example.com/token".into(),
                client_id: "c".into(),
                ..Default::default()
            })
            .unwrap();
            if let TokenLookup::Fetch(f) = cc.token(now) {
                if let Ok(tok) = cc.handle_response(f.id, &resp, now) {
                    assert!(!tok.access_token.is_empty());
                }
            }
            let mut d = OidcDiscovery::new(OidcDiscoveryConfig {
                issuer: "https://idp.example.com".into(),
                ..Default::default()
            })
            .unwrap();
            if let OidcLookup::Fetch(f) = d.config(t0) {
                if let Ok(c) = d.handle_response(f.id, &resp, t0) {
                    assert_eq!(c.issuer.trim_end_matches('/'), "https://idp.example.com");
                }
            }
        }
    }
});
