//! Authentication and authorization (spec §11): JWS/JWT validation on ring,
//! the key and token machines, scopes, identity binding.
//!
//! | machine / function | what it decides |
//! |---|---|
//! | [`Authenticator`] | one request: `Authorization` header + `now` → [`Identity`], [`AuthRejection`], or a fetch to perform |
//! | [`TokenValidator`] | one compact JWS + key set + `now` → [`Claims`], [`TokenRejection`], "need the key set", "need kid X" |
//! | [`JwksCache`] | the issuer's key set: 24 h, refresh on unknown `kid` only (≥ 30 s apart), one fetch in flight, stale-if-error |
//! | [`OidcDiscovery`] | the provider configuration: 1 h, `issuer` compared with the configured one |
//! | [`BearerSource`] | a client's `Authorization` value: fixed token, client credentials, or OIDC-discovered client credentials |
//! | [`ClientCredentials`] | an access token: `client_secret_basic`, refreshed 30 s before expiry, single flight |
//! | [`AuthorizationCode`] | authorization URL (PKCE S256 + `state`), redirect check, code exchange, refresh request |
//! | [`IntrospectionCache`] | RFC 7662 for opaque tokens: LRU 1000, TTLs of the spec, single flight per token |
//! | [`required_scope`] | which [`Scope`] a route needs |
//! | [`SubjectMap`], [`Identity::check_sender`] | which agent a token proves; the envelope `sender` must be it |
//!
//! Every machine takes `now` from its caller ([`Now`](crate::server::Now):
//! an `Instant` for cache timers, a [`UnixTime`](crate::model::UnixTime) for
//! `exp`/`nbf`/`iat`), emits `http::Request<Vec<u8>>` values and takes
//! `http::Response<Vec<u8>>` back. None needs a timer: freshness is checked
//! at each call.
//!
//! # Driving an [`Authenticator`]
//!
//! One instance serves the whole server (an adapter keeps it in a mutex held
//! for each call only). Per request, loop until an answer:
//!
//! ```
//! use std::time::Instant;
//! use asap_proto::auth::{AuthStep, Authenticator, AuthenticatorConfig, JwksCacheConfig, KeySource, Scope};
//! use asap_proto::model::UnixTime;
//! use asap_proto::server::Now;
//! use base64::Engine as _;
//! use ring::signature::{Ed25519KeyPair, KeyPair};
//! let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
//!
//! // The IdP: one Ed25519 key, its JWKS, and a token it issued.
//! let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
//! let key = Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap();
//! let jwks = format!(r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"k1","x":"{}"}}]}}"#, b64(key.public_key().as_ref()));
//! let input = format!("{}.{}", b64(br#"{"alg":"EdDSA","kid":"k1"}"#),
//!     b64(br#"{"sub":"client-app","scope":"asap:execute","exp":1800000600,"https://github.com/adriannoes/asap-protocol/agent_id":"urn:asap:agent:client"}"#));
//! let token = format!("{input}.{}", b64(key.sign(input.as_bytes()).as_ref()));
//!
//! // The server side.
//! let mut auth = Authenticator::new(AuthenticatorConfig {
//!     keys: KeySource::Jwks(JwksCacheConfig::new("https://idp.example.com/.well-known/jwks.json")),
//!     ..Default::default()
//! }).unwrap();
//! let header = format!("Bearer {token}");
//! let now = Now { monotonic: Instant::now(), wall: UnixTime::from_secs(1_800_000_000) };
//! let identity = loop {
//!     match auth.authenticate(Some(header.as_bytes()), Some(Scope::Execute), now) {
//!         AuthStep::Authenticated(identity) => break identity,
//!         AuthStep::Rejected(r) => panic!("answer {} {:?}", r.status(), r.www_authenticate()),
//!         AuthStep::NeedKeys(fetch) => {
//!             // The adapter performs fetch.request (GET jwks_uri) ...
//!             let response = http::Response::new(jwks.clone().into_bytes());
//!             // ... reports it (or handle_jwks_failure), wakes waiters, and tries again.
//!             let _ = auth.handle_jwks_response(fetch.id, &response, now.monotonic);
//!         }
//!         AuthStep::NeedIntrospection(fetch) => {
//!             let _ = fetch; // POST it, then handle_introspection_response
//!             unreachable!("no introspection configured");
//!         }
//!         // Another request's fetch is out: wait for its report (or the fetch timeout), then retry.
//!         AuthStep::Wait(_) => unreachable!("single request"),
//!     }
//! };
//! assert_eq!(identity.subject, "client-app");
//! // Once the envelope is decoded: the sender must be the agent the token proves.
//! assert!(identity.check_sender("urn:asap:agent:client").is_ok());
//! assert!(identity.check_sender("urn:asap:agent:mallory").is_err());
//! ```
//!
//! # Decisions
//!
//! * **Algorithms**: RS256/384/512, PS256/384/512, ES256/384, EdDSA (Ed25519)
//!   with JWKS keys; HS256 only with a configured [`SharedSecret`] and never
//!   with a key from a key set (`oct` JWKS keys are skipped), so HS/RS
//!   confusion cannot happen. `alg: none` (any case) is rejected. The key's
//!   `kty`/`crv` and declared `alg` must fit the token's algorithm.
//! * **`crit`**: no JWS extension is implemented, so any `crit` is rejected.
//!   Other unknown header members are ignored (RFC 7515; the reference
//!   rejects them); none of them (`jku`, `jwk`, `x5u`, `x5c`) selects keys.
//! * **Duplicate members** in the header or the claims are rejected (parsers
//!   that keep the first and the last would disagree).
//! * **`kid`-less tokens** are verified only when exactly one key of the set
//!   fits the algorithm; several → [`TokenRejection::KidRequired`] (a forged
//!   token must not cost one verification per key); none → treated as a
//!   key miss (a refresh under the 30 s rule may bring one).
//! * **Claims**: `exp` required unless [`ClaimsPolicy::require_exp`] is off
//!   (the reference accepts tokens without it); `nbf` and `iat` (not in the
//!   future) checked; `iss`/`aud` when configured; `sub` non-empty; default
//!   leeway 60 s. A non-numeric `exp` is invalid (the reference reads it as 0).
//! * **Size caps** (checked on encoded lengths before decoding): header 512 B,
//!   payload 128 000 B, signature 1 024 B, as the reference.
//! * **Refreshes**: the key set is refetched for an unknown `kid` at most once
//!   per 30 s and never for a bad signature (the reference refetches on every
//!   failure); after a failed fetch, 5 s back-off; a fetch not reported in
//!   15 s is taken as lost. The last good set serves while the IdP is down;
//!   with no set at all, 503.
//! * **Authorization header**: the scheme is matched case-insensitively
//!   (RFC 7235; the reference's middleware wants exactly `Bearer `).
//! * **Scopes** are matched exactly; `asap:admin` does not imply the others.
//! * **Identity**: the agent-id claim (or the subject map) is the *caller's*
//!   agent; [`Identity::check_sender`] rejects an envelope from anyone else.
//!   (The reference compares the claim with the receiving server's own
//!   manifest id and never looks at the envelope.) A malformed subject map
//!   is a typed [`SubjectMapError`], not silently empty.

pub mod authenticator;
pub mod authorization_code;
pub mod bearer;
pub mod claims;
pub mod client_credentials;
pub mod fetch;
pub mod identity;
pub mod introspection;
pub mod jwk;
pub mod jwks_cache;
pub mod jws;
pub mod oidc;
pub mod rejection;
pub mod scope;
pub mod validator;

pub use authenticator::{bearer_token, AuthStep, Authenticator, AuthenticatorConfig, KeySource};
pub use authorization_code::{
    AuthorizationCode, AuthorizationCodeConfig, PendingAuthorization, RedirectError, TokenSet,
};
pub use bearer::{BearerLookup, BearerSource};
pub use claims::{Claims, ClaimsPolicy, DEFAULT_LEEWAY};
pub use client_credentials::{
    ClientCredentials, ClientCredentialsConfig, Token, TokenEndpointError, TokenLookup,
};
pub use fetch::{Fetch, FetchId};
pub use identity::{
    Binding, Identity, IdentityConfig, SubjectMap, SubjectMapError, TokenKind, DEFAULT_AGENT_CLAIM,
};
pub use introspection::{
    IntrospectionCache, IntrospectionConfig, IntrospectionError, IntrospectionLookup, TokenInfo,
};
pub use jwk::{
    EcCurve, Jwk, JwkSet, JwksError, KeyProblem, PublicKey, MAX_JWKS_BODY, MAX_JWKS_KEYS,
};
pub use jwks_cache::{JwksCache, JwksCacheConfig, JwksFetchError, KeyMiss, KeySetLookup};
pub use jws::{Algorithm, CompactJws, JoseHeader, JwsError, JwsLimits, JwsPart};
pub use oidc::{OidcConfig, OidcDiscovery, OidcDiscoveryConfig, OidcError, OidcLookup};
pub use rejection::AuthRejection;
pub use scope::{required_scope, Scope, PROTECTED_PREFIX};
pub use validator::{
    SecretTooShort, SharedSecret, TokenRejection, TokenValidator, ValidatorConfig, Verdict,
    MIN_SECRET_LEN,
};

/// A configuration the auth machines refuse (local misconfiguration).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthConfigError {
    /// A URL is not absolute `http(s)`.
    #[error("{name} is not a usable URL: {reason}")]
    InvalidUrl {
        /// Which setting.
        name: &'static str,
        /// Why.
        reason: String,
    },
    /// No key set, no HS256 secret and no introspection: no token could pass.
    #[error("authenticator has no token source: configure a JWKS, static keys, an HS256 secret or introspection")]
    NoTokenSource,
    /// A required setting is empty.
    #[error("{0} must not be empty")]
    Missing(&'static str),
}

#[cfg(test)]
#[path = "../../tests/auth_support/mod.rs"]
pub(crate) mod auth_support;
