//! [`OidcDiscovery`]: `GET {issuer}/.well-known/openid-configuration`,
//! cached 1 h, single flight, last good configuration kept while the IdP is
//! down; the document's `issuer` must be the configured one (OIDC Discovery
//! §4.3; the reference does not compare).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use super::fetch::{check_url, Begin, Fetch, FetchId, RefreshSlot};
use super::AuthConfigError;
use crate::client::get_request;

/// Discovery settings (defaults per spec §11.5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OidcDiscoveryConfig {
    /// The issuer URL. Required.
    pub issuer: String,
    /// How long a configuration is fresh. Default 1 h.
    pub ttl: Duration,
    /// After a failed fetch, no new one for this long. Default 5 s.
    pub failure_backoff: Duration,
    /// A fetch not reported within this counts as failed. Default 15 s.
    pub fetch_timeout: Duration,
}

impl Default for OidcDiscoveryConfig {
    fn default() -> Self {
        Self {
            issuer: String::new(),
            ttl: Duration::from_secs(3600),
            failure_backoff: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(15),
        }
    }
}

/// The provider metadata ASAP uses (the reference's `OIDCConfig`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct OidcConfig {
    /// `issuer`.
    pub issuer: String,
    /// `token_endpoint`.
    pub token_endpoint: String,
    /// `jwks_uri`.
    pub jwks_uri: String,
    /// `scopes_supported` (strings only; absent or not an array → empty).
    pub scopes_supported: Vec<String>,
    /// `authorization_endpoint`, when present (for the authorization-code flow).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub authorization_endpoint: Option<String>,
    /// `introspection_endpoint`, when present.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub introspection_endpoint: Option<String>,
}

/// Why a discovery answer was refused (the IdP's fault).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OidcError {
    /// A status outside 2xx.
    #[error("OIDC discovery answered HTTP {0}")]
    Status(u16),
    /// Not a JSON object.
    #[error("OIDC discovery document is not a JSON object: {0}")]
    Document(String),
    /// A required member is missing or not a non-empty string (the reference's message).
    #[error("Discovery response missing required '{0}'")]
    Missing(&'static str),
    /// `issuer` is not the configured issuer (a mix-up or a hostile document).
    #[error("OIDC discovery document names issuer {found:?}, expected {expected:?}")]
    IssuerMismatch {
        /// The configured issuer.
        expected: String,
        /// The document's.
        found: String,
    },
}

/// What [`OidcDiscovery::config`] answers.
#[derive(Debug)]
#[must_use]
#[allow(clippy::large_enum_variant)] // a request handed straight to the adapter; boxing only adds an allocation
pub enum OidcLookup {
    /// The configuration (fresh, or stale while a refresh cannot be had).
    Ready(Arc<OidcConfig>),
    /// Perform this fetch, then report it.
    Fetch(Fetch),
    /// A fetch is in flight and nothing is cached: wait, then ask again.
    Wait(FetchId),
    /// Nothing cached and the last fetch failed moments ago.
    Unavailable,
}

fn trim_slash(s: &str) -> &str {
    s.strip_suffix('/').unwrap_or(s)
}

/// The OIDC discovery cache machine. Call protocol as [`JwksCache`](super::JwksCache).
///
/// ```
/// use asap_proto::auth::{OidcDiscovery, OidcDiscoveryConfig, OidcLookup};
/// let t0 = std::time::Instant::now(); // adapters pass the real clock; tests a fixed base
/// let mut d = OidcDiscovery::new(OidcDiscoveryConfig { issuer: "https://idp.example.com/".into(), ..Default::default() }).unwrap();
/// let OidcLookup::Fetch(f) = d.config(t0) else { panic!() };
/// assert_eq!(f.request.uri(), "https://idp.example.com/.well-known/openid-configuration");
/// let doc = br#"{"issuer":"https://idp.example.com","token_endpoint":"https://idp.example.com/t","jwks_uri":"https://idp.example.com/k"}"#;
/// d.handle_response(f.id, &http::Response::new(doc.to_vec()), t0).unwrap();
/// assert!(matches!(d.config(t0), OidcLookup::Ready(_)));
/// ```
#[derive(Debug, Clone)]
pub struct OidcDiscovery {
    config: OidcDiscoveryConfig,
    url: String,
    slot: RefreshSlot<OidcConfig>,
}

impl OidcDiscovery {
    /// A cache for one issuer.
    pub fn new(config: OidcDiscoveryConfig) -> Result<Self, AuthConfigError> {
        let url = format!(
            "{}/.well-known/openid-configuration",
            trim_slash(&config.issuer)
        );
        check_url(&url).map_err(|reason| AuthConfigError::InvalidUrl {
            name: "issuer",
            reason,
        })?;
        Ok(Self {
            slot: RefreshSlot::new(config.fetch_timeout, config.failure_backoff),
            url,
            config,
        })
    }

    /// Fetches started so far.
    #[must_use]
    pub fn fetches_started(&self) -> u64 {
        self.slot.fetches_started()
    }

    /// The configuration, or what to do first.
    pub fn config(&mut self, now: Instant) -> OidcLookup {
        if self.slot.is_fresh(now) {
            if let Some(v) = self.slot.value() {
                return OidcLookup::Ready(Arc::clone(v));
            }
        }
        let stale = self.slot.value().cloned();
        match (self.slot.begin(now, Duration::ZERO), stale) {
            (Begin::Start(id), _) => OidcLookup::Fetch(Fetch {
                id,
                request: get_request(&self.url, None)
                    .unwrap_or_else(|_| http::Request::new(Vec::new())),
            }),
            (_, Some(v)) => OidcLookup::Ready(v),
            (Begin::Joined(id), None) => OidcLookup::Wait(id),
            (Begin::Refused, None) => OidcLookup::Unavailable,
        }
    }

    /// The answer to fetch `id`.
    pub fn handle_response(
        &mut self,
        id: FetchId,
        response: &http::Response<Vec<u8>>,
        now: Instant,
    ) -> Result<Arc<OidcConfig>, OidcError> {
        match self.parse(response) {
            Ok(c) => Ok(self.slot.succeed(id, c, self.config.ttl, now)),
            Err(e) => {
                self.slot.fail(id, now);
                Err(e)
            }
        }
    }

    /// Fetch `id` failed in transport.
    pub fn handle_failure(&mut self, id: FetchId, now: Instant) {
        self.slot.fail(id, now);
    }

    fn parse(&self, response: &http::Response<Vec<u8>>) -> Result<OidcConfig, OidcError> {
        if !response.status().is_success() {
            return Err(OidcError::Status(response.status().as_u16()));
        }
        let v: Value = serde_json::from_slice(response.body())
            .map_err(|e| OidcError::Document(e.to_string()))?;
        let Value::Object(o) = v else {
            return Err(OidcError::Document("not an object".into()));
        };
        let required = |k: &'static str| {
            o.get(k)
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .ok_or(OidcError::Missing(k))
        };
        let issuer = required("issuer")?;
        if trim_slash(&issuer) != trim_slash(&self.config.issuer) {
            return Err(OidcError::IssuerMismatch {
                expected: self.config.issuer.clone(),
                found: issuer,
            });
        }
        let optional = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned);
        Ok(OidcConfig {
            token_endpoint: required("token_endpoint")?,
            jwks_uri: required("jwks_uri")?,
            issuer,
            scopes_supported: o
                .get("scopes_supported")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
            authorization_endpoint: optional("authorization_endpoint"),
            introspection_endpoint: optional("introspection_endpoint"),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(b: &str) -> http::Response<Vec<u8>> {
        http::Response::new(b.as_bytes().to_vec())
    }

    #[test]
    fn checks_issuer_and_required_members() {
        let t0 = crate::test_clock::base();
        let mut d = OidcDiscovery::new(OidcDiscoveryConfig {
            issuer: "https://idp.example.com".into(),
            ..Default::default()
        })
        .unwrap();
        let OidcLookup::Fetch(f) = d.config(t0) else {
            panic!()
        };
        assert_eq!(f.request.headers()["accept"], "application/json");
        let evil = r#"{"issuer":"https://evil.example","token_endpoint":"t","jwks_uri":"j"}"#;
        assert_eq!(
            d.handle_response(f.id, &ok(evil), t0).unwrap_err(),
            OidcError::IssuerMismatch {
                expected: "https://idp.example.com".into(),
                found: "https://evil.example".into()
            }
        );
        let t1 = t0 + Duration::from_secs(5);
        let OidcLookup::Fetch(f) = d.config(t1) else {
            panic!()
        };
        assert_eq!(
            d.handle_response(
                f.id,
                &ok(r#"{"issuer":"https://idp.example.com","jwks_uri":"j"}"#),
                t1
            )
            .unwrap_err(),
            OidcError::Missing("token_endpoint")
        );
        let t2 = t1 + Duration::from_secs(5);
        let OidcLookup::Fetch(f) = d.config(t2) else {
            panic!()
        };
        let good = r#"{"issuer":"https://idp.example.com/","token_endpoint":"https://idp.example.com/oauth/token",
            "jwks_uri":"https://idp.example.com/.well-known/jwks.json","scopes_supported":["openid",3,"asap:execute"]}"#;
        let c = d.handle_response(f.id, &ok(good), t2).unwrap();
        assert_eq!(c.scopes_supported, ["openid", "asap:execute"]);
        assert!(matches!(
            d.config(t2 + Duration::from_secs(3599)),
            OidcLookup::Ready(_)
        ));
        let OidcLookup::Fetch(f) = d.config(t2 + Duration::from_secs(3600)) else {
            panic!()
        };
        d.handle_failure(f.id, t2 + Duration::from_secs(3601));
        // The last good configuration keeps serving.
        assert!(matches!(
            d.config(t2 + Duration::from_secs(3602)),
            OidcLookup::Ready(_)
        ));
        // Four fetches: the evil issuer, the missing member, the good one, the failed refresh.
        assert_eq!(d.fetches_started(), 4);
    }
}
