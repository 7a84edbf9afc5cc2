//! [`Authenticator`]: one `Authorization` header value and `now` in; an
//! [`Identity`], an [`AuthRejection`], or a fetch to perform out. One instance
//! serves a whole server; any number of requests may be pending while one
//! JWKS fetch is in flight.

use std::sync::Arc;
use std::time::Instant;

use super::fetch::{Fetch, FetchId};
use super::identity::{bind, Identity, IdentityConfig, TokenKind};
use super::introspection::{
    IntrospectionCache, IntrospectionConfig, IntrospectionError, IntrospectionLookup,
};
use super::jwk::JwkSet;
use super::jwks_cache::{JwksCache, JwksCacheConfig, JwksFetchError, KeyMiss, KeySetLookup};
use super::jws::{Algorithm, JwsError};
use super::rejection::AuthRejection;
use super::scope::Scope;
use super::validator::{TokenRejection, TokenValidator, ValidatorConfig, Verdict};
use super::AuthConfigError;
use crate::model::UnixTime;
use crate::server::Now;

/// Where JWT verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum KeySource {
    /// No key set: only HS256 with the shared secret (if configured) verifies JWTs.
    #[default]
    None,
    /// The issuer's JWKS, cached by a [`JwksCache`].
    Jwks(JwksCacheConfig),
    /// A fixed key set (never fetched).
    Static(JwkSet),
}

/// Everything an [`Authenticator`] checks.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AuthenticatorConfig {
    /// JWT verification keys.
    pub keys: KeySource,
    /// Algorithms, HS256 secret, claims policy, size caps.
    pub validator: ValidatorConfig,
    /// RFC 7662 introspection for tokens that are not JWTs. Default none.
    pub introspection: Option<IntrospectionConfig>,
    /// Agent identity binding.
    pub identity: IdentityConfig,
}

/// What [`Authenticator::authenticate`] answers.
#[derive(Debug)]
#[must_use]
#[allow(clippy::large_enum_variant)] // a request handed straight to the adapter; boxing only adds an allocation
pub enum AuthStep {
    /// The request is authenticated and authorized for the scope asked.
    Authenticated(Identity),
    /// Refused: answer with [`AuthRejection::to_response`].
    Rejected(AuthRejection),
    /// Fetch the JWKS, report it with [`Authenticator::handle_jwks_response`]
    /// (or `handle_jwks_failure`), then call `authenticate` again.
    NeedKeys(Fetch),
    /// Introspect the token, report it with
    /// [`Authenticator::handle_introspection_response`] (or
    /// `handle_introspection_failure`), then call `authenticate` again.
    NeedIntrospection(Fetch),
    /// Another request's fetch `id` is in flight: wait until it is reported
    /// (or for the fetch timeout), then call `authenticate` again.
    Wait(FetchId),
}

/// The server-side authentication machine.
///
/// Call protocol, per request: [`authenticate`](Self::authenticate) until it
/// answers `Authenticated` or `Rejected`. `NeedKeys`/`NeedIntrospection`:
/// this caller performs the fetch and reports it; `Wait`: another caller's
/// fetch is out, wait for any report (the adapter wakes waiters after each
/// `handle_*`), then try again. Every loop ends: a fetch already tried is
/// rate limited, so the retry answers without a new fetch. After
/// authentication, [`Identity::check_sender`] once the envelope is decoded.
///
/// Everything is `&mut self`: an adapter shares one instance behind a mutex
/// held only for each call (signature verification happens inside the call;
/// adapters that want verification outside the lock can drive
/// [`TokenValidator`] and [`JwksCache`] themselves, both public).
#[derive(Debug)]
pub struct Authenticator {
    validator: TokenValidator,
    keys: Keys,
    introspection: Option<IntrospectionCache>,
    identity: IdentityConfig,
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per authenticator
enum Keys {
    None,
    Jwks(JwksCache),
    Static(Arc<JwkSet>),
}

impl Authenticator {
    /// Builds the machine; refuses a configuration that can accept no token
    /// or has an invalid URL.
    pub fn new(config: AuthenticatorConfig) -> Result<Self, AuthConfigError> {
        let keys = match config.keys {
            KeySource::None => Keys::None,
            KeySource::Jwks(c) => Keys::Jwks(JwksCache::new(c)?),
            KeySource::Static(s) => Keys::Static(Arc::new(s)),
        };
        let introspection = config
            .introspection
            .map(IntrospectionCache::new)
            .transpose()?;
        let validator = TokenValidator::new(config.validator);
        if matches!(keys, Keys::None) && !validator.accepts_hmac() && introspection.is_none() {
            return Err(AuthConfigError::NoTokenSource);
        }
        Ok(Self {
            validator,
            keys,
            introspection,
            identity: config.identity,
        })
    }

    /// The JWKS cache, when keys come from one.
    #[must_use]
    pub fn jwks(&self) -> Option<&JwksCache> {
        match &self.keys {
            Keys::Jwks(c) => Some(c),
            _ => None,
        }
    }

    /// The JWKS cache, to prime it at startup (a first `lookup` asks for the fetch).
    pub fn jwks_mut(&mut self) -> Option<&mut JwksCache> {
        match &mut self.keys {
            Keys::Jwks(c) => Some(c),
            _ => None,
        }
    }

    /// The introspection cache, when configured.
    #[must_use]
    pub fn introspection(&self) -> Option<&IntrospectionCache> {
        self.introspection.as_ref()
    }

    /// Authenticates a request from its `Authorization` header value and,
    /// when `required` is set, checks the token grants that scope.
    pub fn authenticate(
        &mut self,
        authorization: Option<&[u8]>,
        required: Option<Scope>,
        now: Now,
    ) -> AuthStep {
        let Some(token) = authorization.and_then(bearer_token) else {
            return AuthStep::Rejected(AuthRejection::MissingToken);
        };
        let is_jws = token.bytes().filter(|b| *b == b'.').count() == 2;
        if is_jws && (!matches!(self.keys, Keys::None) || self.validator.accepts_hmac()) {
            return self.authenticate_jwt(token, required, now);
        }
        if self.introspection.is_some() {
            return self.authenticate_opaque(token, required, now);
        }
        // A JWT-only server got something that is not a compact JWS.
        let parts = token.bytes().filter(|b| *b == b'.').count() + 1;
        AuthStep::Rejected(AuthRejection::InvalidToken(TokenRejection::Malformed(
            JwsError::Segments(parts),
        )))
    }

    fn authenticate_jwt(&mut self, token: &str, required: Option<Scope>, now: Now) -> AuthStep {
        // Look keys up only for tokens that need them (HS256 does not), so a
        // fetch is never handed to a caller that would not perform it.
        let alg = self.validator.key_algorithm(token);
        let keys: Option<Arc<JwkSet>> = match (alg, &mut self.keys) {
            (None, _) | (Some(_), Keys::None) => None,
            (Some(_), Keys::Static(s)) => Some(Arc::clone(s)),
            (Some(_), Keys::Jwks(cache)) => match cache.lookup(now.monotonic) {
                KeySetLookup::Ready(k) => Some(k),
                KeySetLookup::Fetch(f) => return AuthStep::NeedKeys(f),
                KeySetLookup::Wait(id) => return AuthStep::Wait(id),
                KeySetLookup::Unavailable => {
                    return AuthStep::Rejected(AuthRejection::KeysUnavailable)
                }
            },
        };
        let rejected = |r| AuthStep::Rejected(AuthRejection::InvalidToken(r));
        match self.validator.validate(token, keys.as_deref(), now.wall) {
            // Only an HS256 secret is configured and this token is asymmetric.
            Verdict::NeedKeySet => rejected(TokenRejection::AlgorithmNotAllowed(
                alg.map_or("", |a| a.as_str()).to_owned(),
            )),
            Verdict::NeedKey { kid } => {
                if let Keys::Jwks(cache) = &mut self.keys {
                    match cache.key_miss(now.monotonic) {
                        KeyMiss::Fetch(f) => return AuthStep::NeedKeys(f),
                        KeyMiss::Wait(id) => return AuthStep::Wait(id),
                        KeyMiss::Refused => {}
                    }
                }
                rejected(match kid {
                    Some(k) => TokenRejection::UnknownKid(k),
                    None => TokenRejection::KidRequired {
                        alg: alg.unwrap_or(Algorithm::Rs256),
                        candidates: 0,
                    },
                })
            }
            Verdict::Valid(c) => self.finish_jwt(c, required),
            Verdict::Rejected(r) => rejected(r),
        }
    }

    fn finish_jwt(&self, claims: super::claims::Claims, required: Option<Scope>) -> AuthStep {
        let claim = claims.get(&self.identity.agent_claim);
        let (agent, binding) = match bind(&self.identity, &claims.subject, claim) {
            Ok(b) => b,
            Err(e) => {
                return AuthStep::Rejected(AuthRejection::InvalidToken(
                    TokenRejection::InvalidAgentClaim(e),
                ))
            }
        };
        self.finish(
            Identity {
                subject: claims.subject,
                scopes: claims.scopes,
                agent,
                binding,
                expires_at: claims.expires_at,
                kind: TokenKind::Jwt,
            },
            required,
        )
    }

    fn finish(&self, identity: Identity, required: Option<Scope>) -> AuthStep {
        if let Some(scope) = required {
            if !identity.has_scope(scope.as_str()) {
                return AuthStep::Rejected(AuthRejection::InsufficientScope { required: scope });
            }
        }
        if self.identity.require_agent && identity.agent.is_none() {
            return AuthStep::Rejected(AuthRejection::IdentityUnbound);
        }
        AuthStep::Authenticated(identity)
    }

    fn authenticate_opaque(&mut self, token: &str, required: Option<Scope>, now: Now) -> AuthStep {
        let Some(cache) = self.introspection.as_mut() else {
            return AuthStep::Rejected(AuthRejection::IntrospectionUnavailable);
        };
        let info = match cache.lookup(token, now.monotonic) {
            IntrospectionLookup::Known(info) => info,
            IntrospectionLookup::Fetch(f) => return AuthStep::NeedIntrospection(f),
            IntrospectionLookup::Wait(id) => return AuthStep::Wait(id),
            IntrospectionLookup::Unavailable => {
                return AuthStep::Rejected(AuthRejection::IntrospectionUnavailable)
            }
        };
        if !info.active {
            return AuthStep::Rejected(AuthRejection::InvalidToken(TokenRejection::Inactive));
        }
        let expires_at = info.exp.map(UnixTime::from_secs);
        if let Some(exp) = expires_at {
            if now.wall >= exp.saturating_add(self.validator.config().claims.leeway) {
                return AuthStep::Rejected(AuthRejection::InvalidToken(TokenRejection::Expired {
                    exp,
                }));
            }
        }
        // RFC 7662 makes `sub` optional; a client-credentials token's subject
        // is its client (oidc-provider, Keycloak and Auth0 omit `sub` there).
        let subject = info.sub.clone().filter(|s| !s.is_empty());
        let Some(subject) = subject.or_else(|| info.client_id.clone().filter(|s| !s.is_empty()))
        else {
            return AuthStep::Rejected(AuthRejection::InvalidToken(TokenRejection::MissingSubject));
        };
        let (agent, binding) = match bind(&self.identity, &subject, None) {
            Ok(b) => b,
            Err(e) => {
                return AuthStep::Rejected(AuthRejection::InvalidToken(
                    TokenRejection::InvalidAgentClaim(e),
                ))
            }
        };
        self.finish(
            Identity {
                subject,
                scopes: info.scope.clone(),
                agent,
                binding,
                expires_at,
                kind: TokenKind::Introspected,
            },
            required,
        )
    }

    /// The response to a `NeedKeys` fetch.
    pub fn handle_jwks_response(
        &mut self,
        id: FetchId,
        response: &http::Response<Vec<u8>>,
        now: Instant,
    ) -> Result<(), JwksFetchError> {
        match &mut self.keys {
            Keys::Jwks(cache) => cache.handle_response(id, response, now).map(drop),
            _ => Ok(()),
        }
    }

    /// A `NeedKeys` fetch failed in transport.
    pub fn handle_jwks_failure(&mut self, id: FetchId, now: Instant) {
        if let Keys::Jwks(cache) = &mut self.keys {
            cache.handle_failure(id, now);
        }
    }

    /// The response to a `NeedIntrospection` fetch.
    pub fn handle_introspection_response(
        &mut self,
        id: FetchId,
        response: &http::Response<Vec<u8>>,
        now: Now,
    ) -> Result<(), IntrospectionError> {
        match &mut self.introspection {
            Some(c) => c.handle_response(id, response, now).map(drop),
            None => Err(IntrospectionError::NotInFlight(id)),
        }
    }

    /// A `NeedIntrospection` fetch failed in transport.
    pub fn handle_introspection_failure(&mut self, id: FetchId, now: Instant) {
        if let Some(c) = &mut self.introspection {
            c.handle_failure(id, now);
        }
    }
}

/// The credentials of `Bearer <token>`: scheme matched case-insensitively
/// (RFC 7235; the reference's middleware wants exact `Bearer `), one or more
/// spaces, a token without inner whitespace.
#[must_use]
pub fn bearer_token(header: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(header).ok()?.trim();
    let (scheme, rest) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let token = rest.trim_start_matches(' ');
    if token.is_empty()
        || token
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
    {
        return None;
    }
    Some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn opaque_and_keys() -> Authenticator {
        Authenticator::new(AuthenticatorConfig {
            keys: KeySource::Static(JwkSet::default()),
            introspection: Some(IntrospectionConfig {
                url: "https://idp.example.com/introspect".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap()
    }

    fn now(s: u64) -> Now {
        Now {
            monotonic: crate::test_clock::base() + Duration::from_secs(s),
            wall: UnixTime::from_secs(1_800_000_000 + s as i64),
        }
    }

    #[test]
    fn opaque_tokens_go_to_introspection_even_with_keys() {
        let mut a = opaque_and_keys();
        assert!(a.jwks().is_none());
        assert!(a.jwks_mut().is_none());
        assert!(a.introspection().is_some());
        let AuthStep::NeedIntrospection(f) = a.authenticate(Some(b"Bearer opaque-1"), None, now(0))
        else {
            panic!()
        };
        // An empty `sub` and an empty `client_id` are no subject.
        let body = br#"{"active":true,"sub":"","client_id":""}"#.to_vec();
        a.handle_introspection_response(f.id, &http::Response::new(body), now(0))
            .unwrap();
        assert!(matches!(
            a.authenticate(Some(b"Bearer opaque-1"), None, now(0)),
            AuthStep::Rejected(AuthRejection::InvalidToken(TokenRejection::MissingSubject))
        ));
        // A transport failure is reported to the cache: no waiting on a lost fetch.
        let AuthStep::NeedIntrospection(f) = a.authenticate(Some(b"Bearer opaque-2"), None, now(0))
        else {
            panic!()
        };
        a.handle_introspection_failure(f.id, now(0).monotonic);
        assert!(matches!(
            a.authenticate(Some(b"Bearer opaque-2"), None, now(1)),
            AuthStep::Rejected(AuthRejection::IntrospectionUnavailable)
        ));
    }

    #[test]
    fn the_jwks_cache_is_reachable_mutably() {
        let mut a = Authenticator::new(AuthenticatorConfig {
            keys: KeySource::Jwks(JwksCacheConfig {
                jwks_uri: "https://idp.example.com/jwks".into(),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap();
        assert!(a.jwks().is_some());
        assert!(a.jwks_mut().is_some());
        assert!(a.introspection().is_none());
    }
}
