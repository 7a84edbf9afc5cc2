//! The reference's auth vectors (`vectors/auth/*`, the token/OIDC/introspection
//! schemas) through `asap_proto::auth`. Vectors are found by
//! `asap_tests::vectors` (`$ASAP_VECTORS_DIR`, else the repository's `tests/vectors`).
#![allow(clippy::disallowed_methods)] // test harness: reads vector files and one base `Instant`

use std::time::Instant;

use asap_proto::auth::{
    bearer_token, AuthRejection, AuthStep, Authenticator, AuthenticatorConfig, Binding,
    ClaimsPolicy, ClientCredentials, ClientCredentialsConfig, IntrospectionCache,
    IntrospectionConfig, IntrospectionLookup, JwksCacheConfig, KeySource, OidcDiscovery,
    OidcDiscoveryConfig, OidcLookup, Scope, SharedSecret, TokenLookup, TokenRejection,
    ValidatorConfig,
};
use asap_proto::model::UnixTime;
use asap_proto::server::Now;
use serde_json::Value;

fn vector(rel: &str) -> Value {
    asap_tests::vectors::load(rel)
}

fn now() -> Now {
    Now {
        monotonic: Instant::now(),
        wall: UnixTime::from_secs(1_790_000_000),
    }
}

fn header_of(case: &Value) -> Option<String> {
    case["request_headers"]["authorization"]
        .as_str()
        .map(str::to_owned)
}

/// The middleware vectors with the reference-compatible switches: HS256 with
/// the vector's secret, `exp` optional, scope `asap:execute` required.
#[test]
fn oauth2_middleware_cases() {
    let doc = vector("auth/oauth2_middleware.json");
    let secret = doc["hs256_secret"].as_str().unwrap().as_bytes().to_vec();
    let mut auth = Authenticator::new(AuthenticatorConfig {
        validator: ValidatorConfig {
            shared_secret: Some(SharedSecret::new(secret).unwrap()),
            claims: ClaimsPolicy {
                require_exp: false,
                ..Default::default()
            },
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let cases = doc["cases"].as_object().unwrap();
    // Deliberate differences from the reference, each named.
    let ours = |name: &str| -> Option<u16> {
        match name {
            // RFC 7235: the scheme is case-insensitive.
            "lowercase_bearer_rejected" => Some(200),
            // nbf is checked.
            "nbf_in_future_not_checked" => Some(401),
            // HS256 uses the configured secret whatever the kid says.
            "unknown_kid" => Some(200),
            // The agent claim is the caller's identity, checked against the envelope sender.
            "identity_mismatch" => Some(200),
            _ => None,
        }
    };
    let mut checked = 0;
    for (name, case) in cases {
        let Some(status) = case["response"]["status"].as_u64() else {
            continue;
        };
        if name == "jwks_unavailable" || !case["request_headers"].is_object() {
            continue;
        }
        let header = header_of(case);
        let step = auth.authenticate(
            header.as_deref().map(str::as_bytes),
            Some(Scope::Execute),
            now(),
        );
        let want = ours(name).unwrap_or(status as u16);
        match step {
            AuthStep::Authenticated(_) => assert_eq!(want, 200, "{name}"),
            AuthStep::Rejected(r) => {
                assert_eq!(r.status().as_u16(), want, "{name}: {r:?}");
                if let Some(body) = case["response"]["body_text"].as_str() {
                    assert_eq!(String::from_utf8(r.body()).unwrap(), body, "{name}");
                }
            }
            other => panic!("{name}: {other:?}"),
        }
        checked += 1;
    }
    assert!(checked >= 14, "{checked}");
    // identity_mismatch: authenticated, and the claim binds the agent.
    let h = header_of(&cases["identity_mismatch"]).unwrap();
    let AuthStep::Authenticated(id) = auth.authenticate(Some(h.as_bytes()), None, now()) else {
        panic!()
    };
    assert_eq!(
        (id.agent.as_ref().unwrap().as_str(), id.binding),
        ("urn:asap:agent:other", Binding::Claim)
    );
    assert!(matches!(
        id.check_sender("urn:asap:agent:client"),
        Err(AuthRejection::SenderMismatch { .. })
    ));
    // Strict defaults reject the exp-less token.
    let mut strict = Authenticator::new(AuthenticatorConfig {
        validator: ValidatorConfig {
            shared_secret: Some(
                SharedSecret::new(doc["hs256_secret"].as_str().unwrap().as_bytes()).unwrap(),
            ),
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let h = header_of(&cases["no_exp_accepted"]).unwrap();
    assert!(matches!(
        strict.authenticate(Some(h.as_bytes()), None, now()),
        AuthStep::Rejected(AuthRejection::InvalidToken(TokenRejection::MissingExpiry))
    ));
    // The vector's JWKS holds only an oct key: never a verification key.
    let mut jwks_only = Authenticator::new(AuthenticatorConfig {
        keys: KeySource::Jwks(JwksCacheConfig::new("https://idp.example.com/jwks")),
        ..Default::default()
    })
    .unwrap();
    let h = header_of(&cases["valid"]).unwrap();
    assert!(matches!(
        jwks_only.authenticate(Some(h.as_bytes()), None, now()),
        AuthStep::Rejected(AuthRejection::InvalidToken(
            TokenRejection::HmacNotConfigured
        ))
    ));
    // jwks_unavailable: an RS256 token and a JWKS endpoint that fails → 503 with the reference body.
    let rs = "eyJhbGciOiJSUzI1NiIsImtpZCI6ImsxIn0.e30.AAAA";
    let t = now();
    let AuthStep::NeedKeys(f) =
        jwks_only.authenticate(Some(format!("Bearer {rs}").as_bytes()), None, t)
    else {
        panic!()
    };
    jwks_only.handle_jwks_failure(f.id, t.monotonic);
    let AuthStep::Rejected(r) =
        jwks_only.authenticate(Some(format!("Bearer {rs}").as_bytes()), None, t)
    else {
        panic!()
    };
    let want = &cases["jwks_unavailable"]["response"];
    assert_eq!(r.status().as_u16() as u64, want["status"].as_u64().unwrap());
    assert_eq!(
        String::from_utf8(r.body()).unwrap(),
        want["body_text"].as_str().unwrap()
    );
}

/// §11.1 header parsing: scheme case-insensitive, other schemes are "missing".
#[test]
fn bearer_token_validator_header_parsing() {
    let doc = vector("auth/bearer_token_validator.json");
    for (name, case) in doc.as_object().unwrap() {
        let Some(case) = case.as_object() else {
            continue;
        };
        let header = case["request_headers"]["authorization"].as_str();
        let token = header.and_then(|h| bearer_token(h.as_bytes()));
        let missing =
            case["response"]["body_json"]["error"]["data"]["error"] == "Authentication required";
        assert_eq!(token.is_none(), missing, "{name}");
    }
    assert_eq!(bearer_token(b"Bearer   abc "), Some("abc"));
    assert_eq!(bearer_token(b"BEARER abc"), Some("abc"));
    assert_eq!(bearer_token(b"Bearer"), None);
    assert_eq!(bearer_token(b"Bearer a b"), None);
}

fn headers_of(req: &Value) -> Vec<(String, String)> {
    req["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| {
            (
                h[0].as_str().unwrap().to_ascii_lowercase(),
                h[1].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn assert_request(ours: &http::Request<Vec<u8>>, theirs: &Value, names: &[&str]) {
    assert_eq!(ours.method().as_str(), theirs["method"].as_str().unwrap());
    assert_eq!(ours.uri().to_string(), theirs["url"].as_str().unwrap());
    assert_eq!(
        ours.body(),
        theirs["body_text"].as_str().unwrap().as_bytes()
    );
    let h = headers_of(theirs);
    for n in names {
        let want = h.iter().find(|(k, _)| k == n).map(|(_, v)| v.as_str());
        assert_eq!(
            ours.headers().get(*n).map(|v| v.to_str().unwrap()),
            want,
            "{n}"
        );
    }
}

#[test]
fn client_requests_and_answers() {
    let doc = vector("auth/oauth2_client_requests.json");
    let reqs = doc["requests"].as_array().unwrap();
    let t = now();
    // Client credentials.
    let mut cc = ClientCredentials::new(ClientCredentialsConfig {
        token_url: "https://idp.example.com/oauth/token".into(),
        client_id: "my-client".into(),
        client_secret: "my-secret".into(),
        scopes: vec!["asap:execute".into(), "asap:read".into()],
        ..Default::default()
    })
    .unwrap();
    let TokenLookup::Fetch(f) = cc.token(t) else {
        panic!()
    };
    assert_request(
        &f.request,
        &reqs[0],
        &["accept", "content-type", "authorization"],
    );
    let token = &doc["token"];
    let answer = serde_json::json!({"access_token": token["access_token"], "token_type": "Bearer",
        "expires_at": token["expires_at"]});
    let got = cc
        .handle_response(
            f.id,
            &http::Response::new(answer.to_string().into_bytes()),
            t,
        )
        .unwrap();
    assert_eq!(serde_json::to_value(&*got).unwrap(), *token);
    assert!(
        matches!(cc.token(t), TokenLookup::Ready(_)),
        "second call served from cache"
    );
    // OIDC discovery.
    let mut d = OidcDiscovery::new(OidcDiscoveryConfig {
        issuer: "https://idp.example.com".into(),
        ..Default::default()
    })
    .unwrap();
    let OidcLookup::Fetch(f) = d.config(t.monotonic) else {
        panic!()
    };
    assert_request(&f.request, &reqs[1], &["accept"]);
    let cfg = d
        .handle_response(
            f.id,
            &http::Response::new(doc["oidc_config"].to_string().into_bytes()),
            t.monotonic,
        )
        .unwrap();
    assert_eq!(serde_json::to_value(&*cfg).unwrap(), doc["oidc_config"]);
    // Introspection.
    let mut ic = IntrospectionCache::new(IntrospectionConfig {
        url: "https://idp.example.com/oauth/introspect".into(),
        client_id: "rs-client".into(),
        client_secret: "rs-secret".into(),
        ..Default::default()
    })
    .unwrap();
    let IntrospectionLookup::Fetch(f) = ic.lookup("opaque-token-1", t.monotonic) else {
        panic!()
    };
    assert_request(
        &f.request,
        &reqs[2],
        &["accept", "content-type", "authorization"],
    );
    let info = ic
        .handle_response(
            f.id,
            &http::Response::new(doc["introspection_token_info"].to_string().into_bytes()),
            t,
        )
        .unwrap();
    assert_eq!(
        serde_json::to_value(&*info).unwrap(),
        doc["introspection_token_info"]
    );
    assert!(matches!(
        ic.lookup("opaque-token-1", t.monotonic),
        IntrospectionLookup::Known(_)
    ));
}

/// Our models serialize to the members the reference's schemas define.
#[test]
fn models_follow_the_schemas() {
    let doc = vector("auth/oauth2_client_requests.json");
    for (schema, value) in [
        ("schemas_current/oauth2_token.json", &doc["token"]),
        ("schemas_current/oidc_config.json", &doc["oidc_config"]),
        (
            "schemas_current/introspection_token_info.json",
            &doc["introspection_token_info"],
        ),
    ] {
        let s = vector(schema);
        let props = s["properties"].as_object().unwrap();
        for k in value.as_object().unwrap().keys() {
            assert!(props.contains_key(k), "{schema}: {k}");
        }
        for r in s["required"].as_array().unwrap() {
            assert!(value.get(r.as_str().unwrap()).is_some(), "{schema}: {r}");
        }
    }
}

/// Opaque tokens through the authenticator: introspected, cached, bound by the subject map.
#[test]
fn opaque_token_introspection_flow() {
    let mut auth = Authenticator::new(AuthenticatorConfig {
        introspection: Some(IntrospectionConfig {
            url: "https://idp.example.com/oauth/introspect".into(),
            client_id: "rs-client".into(),
            client_secret: "rs-secret".into(),
            ..Default::default()
        }),
        identity: asap_proto::auth::IdentityConfig {
            subject_map: asap_proto::auth::SubjectMap::parse(
                r#"{"urn:asap:agent:client":"client-app"}"#,
            )
            .unwrap(),
            ..Default::default()
        },
        ..Default::default()
    })
    .unwrap();
    let t = now();
    let h = Some(&b"Bearer opaque-token-1"[..]);
    let AuthStep::NeedIntrospection(f) = auth.authenticate(h, Some(Scope::Execute), t) else {
        panic!()
    };
    assert!(
        matches!(auth.authenticate(h, Some(Scope::Execute), t), AuthStep::Wait(id) if id == f.id)
    );
    let body = br#"{"active":true,"sub":"client-app","scope":["asap:read","asap:execute"],"exp":4102444800}"#;
    auth.handle_introspection_response(f.id, &http::Response::new(body.to_vec()), t)
        .unwrap();
    let AuthStep::Authenticated(id) = auth.authenticate(h, Some(Scope::Execute), t) else {
        panic!()
    };
    assert_eq!(
        (id.agent.unwrap().as_str(), id.binding),
        ("urn:asap:agent:client", Binding::SubjectMap)
    );
    // Inactive tokens are invalid.
    let h2 = Some(&b"Bearer revoked"[..]);
    let AuthStep::NeedIntrospection(f) = auth.authenticate(h2, None, t) else {
        panic!()
    };
    auth.handle_introspection_response(
        f.id,
        &http::Response::new(br#"{"active":false}"#.to_vec()),
        t,
    )
    .unwrap();
    assert!(matches!(
        auth.authenticate(h2, None, t),
        AuthStep::Rejected(AuthRejection::InvalidToken(TokenRejection::Inactive))
    ));
    assert_eq!(auth.introspection().unwrap().fetches_started(), 2);
}
