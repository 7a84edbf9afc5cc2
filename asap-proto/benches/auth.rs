//! JWT verifications per second through `TokenValidator::validate` (parse,
//! key choice, ring verify, claims) against bare ring
//! `UnparsedPublicKey::verify` on the same token, for RS256, ES256, EdDSA.
//!
//! `cargo bench -p asap-proto --bench auth -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;

use asap_proto::auth::{JwkSet, TokenValidator, ValidatorConfig, Verdict};
use asap_proto::model::UnixTime;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use criterion::{Criterion, Throughput};
use ring::signature::{self, KeyPair, UnparsedPublicKey};

#[path = "../tests/auth_support/mod.rs"]
#[allow(missing_docs)]
mod auth_support;

fn bench(c: &mut Criterion) {
    let keys = auth_support::TestKeys::new();
    let set = JwkSet::from_slice(&keys.jwks_json()).expect("test JWKS parses");
    let validator = TokenValidator::new(ValidatorConfig::default());
    let now = UnixTime::from_secs(1_800_000_000);
    let claims = serde_json::json!({"sub":"client-app","scope":"asap:execute asap:read","exp":1_800_003_600,
        "iss":"https://idp.example.com","https://github.com/adriannoes/asap-protocol/agent_id":"urn:asap:agent:client"});
    let mut g = c.benchmark_group("auth");
    g.throughput(Throughput::Elements(1));
    let cases: [(&str, &'static dyn signature::VerificationAlgorithm, Vec<u8>); 3] = [
        (
            "RS256",
            &signature::RSA_PKCS1_2048_8192_SHA256,
            keys.rsa.public_key().as_ref().to_vec(),
        ),
        (
            "ES256",
            &signature::ECDSA_P256_SHA256_FIXED,
            keys.p256.public_key().as_ref().to_vec(),
        ),
        (
            "EdDSA",
            &signature::ED25519,
            keys.ed.public_key().as_ref().to_vec(),
        ),
    ];
    for (alg, ring_alg, public) in cases {
        let token = keys.sign(alg, Some(auth_support::kid_for(alg)), &claims);
        assert!(matches!(
            validator.validate(&token, Some(&set), now),
            Verdict::Valid(_)
        ));
        let (input, sig) = token.rsplit_once('.').expect("three parts");
        let sig = URL_SAFE_NO_PAD.decode(sig).expect("signature decodes");
        g.bench_function(format!("validator/{alg}"), |b| {
            b.iter(|| black_box(validator.validate(black_box(&token), Some(&set), now)))
        });
        g.bench_function(format!("ring/{alg}"), |b| {
            b.iter(|| {
                UnparsedPublicKey::new(ring_alg, black_box(&public))
                    .verify(black_box(input.as_bytes()), black_box(&sig))
                    .expect("verifies")
            })
        });
    }
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench(&mut c);
    c.final_summary();
}
