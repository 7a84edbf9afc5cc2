//! Authentication and authorization (spec §11).

pub mod authenticator;
pub mod authorization_code;
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
