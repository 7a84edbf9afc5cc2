//! [`BearerSource`]: the client side's `Authorization: Bearer` value — a
//! fixed token, OAuth2 client credentials, or client credentials at the
//! token endpoint an OIDC issuer's discovery document names.
//!
//! ```
//! use asap_proto::auth::{BearerLookup, BearerSource};
//! use asap_proto::model::UnixTime;
//! use asap_proto::server::Now;
//! let now = Now { monotonic: std::time::Instant::now(), wall: UnixTime::from_secs(1_800_000_000) };
//! let mut source = BearerSource::oidc("https://idp.example.com", "my-client", "s3cret", vec!["asap:execute".into()]).unwrap();
//! let value = loop {
//!     match source.authorization(now) {
//!         BearerLookup::Ready(v) => break v,
//!         BearerLookup::Fetch(f) => {
//!             // The adapter performs f.request; here, the IdP's answers:
//!             let body: &[u8] = if f.request.uri().path().ends_with("openid-configuration") {
//!                 br#"{"issuer":"https://idp.example.com","token_endpoint":"https://idp.example.com/token","jwks_uri":"https://idp.example.com/jwks"}"#
//!             } else {
//!                 br#"{"access_token":"at-1","token_type":"Bearer","expires_in":600}"#
//!             };
//!             source.handle_response(f.id, &http::Response::new(body.to_vec()), now).unwrap();
//!         }
//!         BearerLookup::Wait => unreachable!("one caller"),
//!         BearerLookup::Unavailable(why) => panic!("{why}"),
//!     }
//! };
//! assert_eq!(value, "Bearer at-1");
//! ```

use super::client_credentials::{ClientCredentials, ClientCredentialsConfig, TokenLookup};
use super::fetch::{Fetch, FetchId};
use super::oidc::{OidcDiscovery, OidcDiscoveryConfig, OidcLookup};
use super::AuthConfigError;
use crate::server::Now;

/// What [`BearerSource::authorization`] answers.
#[derive(Debug)]
#[must_use]
#[allow(clippy::large_enum_variant)] // handed straight to the adapter
pub enum BearerLookup {
    /// The `Authorization` header value (`Bearer <token>`).
    Ready(String),
    /// Perform this request, then [`BearerSource::handle_response`] (or `handle_failure`).
    Fetch(Fetch),
    /// Another caller's fetch is in flight: wait a moment, then ask again.
    Wait,
    /// No token can be had now (the last attempt failed moments ago): why.
    Unavailable(String),
}

#[derive(Debug)]
#[allow(clippy::large_enum_variant)] // one per client
enum Kind {
    Static(String),
    Credentials(ClientCredentials),
    Oidc {
        discovery: OidcDiscovery,
        template: ClientCredentialsConfig,
        credentials: Option<ClientCredentials>,
    },
}

/// Where a client's bearer token comes from (sans I/O; one per client).
#[derive(Debug)]
pub struct BearerSource {
    kind: Kind,
    last_error: Option<String>,
}

impl BearerSource {
    /// A fixed token (`asap send --token`).
    #[must_use]
    pub fn token(token: impl Into<String>) -> Self {
        Self {
            kind: Kind::Static(format!("Bearer {}", token.into())),
            last_error: None,
        }
    }

    /// OAuth2 client credentials at `config.token_url` (`client_secret_basic`).
    pub fn client_credentials(config: ClientCredentialsConfig) -> Result<Self, AuthConfigError> {
        Ok(Self {
            kind: Kind::Credentials(ClientCredentials::new(config)?),
            last_error: None,
        })
    }

    /// OAuth2 client credentials at `token_url` (`client_secret_basic`) with
    /// the default refresh margin: what a client's `with_oauth2` takes.
    pub fn oauth2(
        token_url: &str,
        client_id: &str,
        client_secret: &str,
        scopes: &[&str],
    ) -> Result<Self, AuthConfigError> {
        Self::client_credentials(ClientCredentialsConfig {
            token_url: token_url.to_owned(),
            client_id: client_id.to_owned(),
            client_secret: client_secret.to_owned(),
            scopes: scopes.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        })
    }

    /// Client credentials at the token endpoint `issuer`'s OIDC discovery names.
    pub fn oidc(
        issuer: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        scopes: Vec<String>,
    ) -> Result<Self, AuthConfigError> {
        let discovery = OidcDiscovery::new(OidcDiscoveryConfig {
            issuer: issuer.into(),
            ..Default::default()
        })?;
        let template = ClientCredentialsConfig {
            client_id: client_id.into(),
            client_secret: client_secret.into(),
            scopes,
            ..Default::default()
        };
        if template.client_id.is_empty() {
            return Err(AuthConfigError::Missing("client_id"));
        }
        Ok(Self {
            kind: Kind::Oidc {
                discovery,
                template,
                credentials: None,
            },
            last_error: None,
        })
    }

    /// The header value to send now, or what to do first.
    pub fn authorization(&mut self, now: Now) -> BearerLookup {
        let unavailable = |e: &Option<String>| {
            BearerLookup::Unavailable(
                e.clone()
                    .unwrap_or_else(|| "the token endpoint failed moments ago".into()),
            )
        };
        let credentials = match &mut self.kind {
            Kind::Static(v) => return BearerLookup::Ready(v.clone()),
            Kind::Credentials(c) => c,
            Kind::Oidc {
                discovery,
                template,
                credentials,
            } => {
                if credentials.is_none() {
                    match discovery.config(now.monotonic) {
                        OidcLookup::Ready(doc) => {
                            let config = ClientCredentialsConfig {
                                token_url: doc.token_endpoint.clone(),
                                ..template.clone()
                            };
                            match ClientCredentials::new(config) {
                                Ok(c) => *credentials = Some(c),
                                Err(e) => {
                                    return BearerLookup::Unavailable(format!(
                                        "the discovered token endpoint is unusable: {e}"
                                    ))
                                }
                            }
                        }
                        OidcLookup::Fetch(f) => return BearerLookup::Fetch(f),
                        OidcLookup::Wait(_) => return BearerLookup::Wait,
                        OidcLookup::Unavailable => return unavailable(&self.last_error),
                    }
                }
                match credentials.as_mut() {
                    Some(c) => c,
                    None => return unavailable(&self.last_error),
                }
            }
        };
        match credentials.token(now) {
            TokenLookup::Ready(t) => BearerLookup::Ready(t.authorization()),
            TokenLookup::Fetch(f) => BearerLookup::Fetch(f),
            TokenLookup::Wait(_) => BearerLookup::Wait,
            TokenLookup::Unavailable => unavailable(&self.last_error),
        }
    }

    fn discovering(&self) -> bool {
        matches!(
            &self.kind,
            Kind::Oidc {
                credentials: None,
                ..
            }
        )
    }

    /// The answer to fetch `id`; an error says what the IdP got wrong.
    pub fn handle_response(
        &mut self,
        id: FetchId,
        response: &http::Response<Vec<u8>>,
        now: Now,
    ) -> Result<(), String> {
        let discovering = self.discovering();
        let result = match &mut self.kind {
            Kind::Static(_) => Ok(()),
            Kind::Oidc { discovery, .. } if discovering => discovery
                .handle_response(id, response, now.monotonic)
                .map(drop)
                .map_err(|e| e.to_string()),
            Kind::Credentials(c)
            | Kind::Oidc {
                credentials: Some(c),
                ..
            } => c
                .handle_response(id, response, now)
                .map(drop)
                .map_err(|e| e.to_string()),
            Kind::Oidc { .. } => Ok(()),
        };
        self.last_error = result.clone().err();
        result
    }

    /// Fetch `id` failed in transport (`why`: the adapter's error text).
    pub fn handle_failure(&mut self, id: FetchId, why: &str, now: Now) {
        let discovering = self.discovering();
        match &mut self.kind {
            Kind::Static(_) => {}
            Kind::Oidc { discovery, .. } if discovering => {
                discovery.handle_failure(id, now.monotonic);
            }
            Kind::Credentials(c)
            | Kind::Oidc {
                credentials: Some(c),
                ..
            } => c.handle_failure(id, now),
            Kind::Oidc { .. } => {}
        }
        self.last_error = Some(format!("token request failed: {why}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::UnixTime;
    use std::time::{Duration, Instant};

    fn now(t0: Instant, s: u64) -> Now {
        Now {
            monotonic: t0 + Duration::from_secs(s),
            wall: UnixTime::from_secs(1_800_000_000 + s as i64),
        }
    }

    #[test]
    fn client_credentials_are_fetched_once_and_refreshed_before_expiry() {
        let t0 = crate::test_clock::base();
        let mut s = BearerSource::client_credentials(ClientCredentialsConfig {
            token_url: "https://idp.example.com/token".into(),
            client_id: "c".into(),
            client_secret: "s".into(),
            ..Default::default()
        })
        .unwrap();
        let BearerLookup::Fetch(f) = s.authorization(now(t0, 0)) else {
            panic!()
        };
        assert!(matches!(s.authorization(now(t0, 0)), BearerLookup::Wait));
        let body = br#"{"access_token":"a1","expires_in":60}"#.to_vec();
        s.handle_response(f.id, &http::Response::new(body), now(t0, 0))
            .unwrap();
        assert!(matches!(s.authorization(now(t0, 10)), BearerLookup::Ready(v) if v == "Bearer a1"));
        // 30 s before expiry: a refresh is asked for.
        assert!(matches!(
            s.authorization(now(t0, 31)),
            BearerLookup::Fetch(_)
        ));
    }

    #[test]
    fn a_failed_token_request_is_named_and_backed_off() {
        let t0 = crate::test_clock::base();
        let mut s = BearerSource::oidc("https://idp.example.com", "c", "s", vec![]).unwrap();
        let BearerLookup::Fetch(f) = s.authorization(now(t0, 0)) else {
            panic!()
        };
        s.handle_failure(f.id, "connection refused", now(t0, 0));
        let BearerLookup::Unavailable(why) = s.authorization(now(t0, 1)) else {
            panic!()
        };
        assert!(why.contains("connection refused"), "{why}");
        assert!(BearerSource::oidc("https://idp.example.com", "", "s", vec![]).is_err());
        let mut s = BearerSource::token("t");
        assert!(matches!(s.authorization(now(t0, 0)), BearerLookup::Ready(v) if v == "Bearer t"));
    }

    #[test]
    fn oauth2_and_oidc_requests_carry_the_configured_client() {
        use crate::auth::fetch::basic_authorization;
        let t0 = crate::test_clock::base();
        let mut s = BearerSource::oauth2("https://idp.example.com/token", "c", "s", &["asap:read"])
            .unwrap();
        let BearerLookup::Fetch(f) = s.authorization(now(t0, 0)) else {
            panic!()
        };
        assert_eq!(f.request.uri(), "https://idp.example.com/token");
        assert_eq!(
            f.request.headers()["authorization"],
            basic_authorization("c", "s").as_str()
        );
        assert_eq!(
            f.request.body(),
            b"grant_type=client_credentials&scope=asap%3Aread"
        );

        let mut s =
            BearerSource::oidc("https://idp.example.com", "c2", "s2", vec!["x".into()]).unwrap();
        let BearerLookup::Fetch(f) = s.authorization(now(t0, 0)) else {
            panic!()
        };
        let doc = br#"{"issuer":"https://idp.example.com","token_endpoint":"https://idp.example.com/t2","jwks_uri":"https://idp.example.com/jwks"}"#;
        s.handle_response(f.id, &http::Response::new(doc.to_vec()), now(t0, 0))
            .unwrap();
        let BearerLookup::Fetch(f) = s.authorization(now(t0, 0)) else {
            panic!()
        };
        assert_eq!(f.request.uri(), "https://idp.example.com/t2");
        assert_eq!(
            f.request.headers()["authorization"],
            basic_authorization("c2", "s2").as_str()
        );
        assert_eq!(f.request.body(), b"grant_type=client_credentials&scope=x");
        // A failed token request (after discovery) is the token fetch's, not discovery's.
        s.handle_failure(f.id, "reset", now(t0, 0));
        let BearerLookup::Unavailable(why) = s.authorization(now(t0, 1)) else {
            panic!()
        };
        assert_eq!(why, "token request failed: reset");
    }
}
