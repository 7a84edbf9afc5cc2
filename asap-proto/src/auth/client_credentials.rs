//! [`ClientCredentials`]: the OAuth2 `client_credentials` grant with
//! `client_secret_basic` (spec §11.4), and the access-token cache: refreshed
//! 30 s before expiry, one request in flight.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;

use super::fetch::{
    basic_authorization, check_url, form_encode, form_post, Begin, Fetch, FetchId, RefreshSlot,
};
use super::AuthConfigError;
use crate::model::UnixTime;
use crate::server::Now;

/// Content type Authlib sends on token requests.
pub(crate) const TOKEN_CONTENT_TYPE: &str = "application/x-www-form-urlencoded;charset=UTF-8";

/// Client-credentials settings (defaults per spec §11.4).
#[derive(Clone, PartialEq, Eq)]
pub struct ClientCredentialsConfig {
    /// The token endpoint. Required.
    pub token_url: String,
    /// Client id.
    pub client_id: String,
    /// Client secret (redacted in `Debug`).
    pub client_secret: String,
    /// Scopes to ask for (omitted from the request when empty).
    pub scopes: Vec<String>,
    /// Refresh this long before `expires_at`. Default 30 s.
    pub refresh_early: Duration,
    /// Lifetime assumed when the answer has neither `expires_at` nor `expires_in`. Default 3600 s.
    pub default_lifetime: Duration,
    /// After a failed request, no new one for this long. Default 5 s.
    pub failure_backoff: Duration,
    /// A request not reported within this counts as failed. Default 15 s.
    pub fetch_timeout: Duration,
}

impl fmt::Debug for ClientCredentialsConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentialsConfig")
            .field("token_url", &self.token_url)
            .field("client_id", &self.client_id)
            .field("client_secret", &"<redacted>")
            .field("scopes", &self.scopes)
            .finish_non_exhaustive()
    }
}

impl Default for ClientCredentialsConfig {
    fn default() -> Self {
        Self {
            token_url: String::new(),
            client_id: String::new(),
            client_secret: String::new(),
            scopes: Vec::new(),
            refresh_early: Duration::from_secs(30),
            default_lifetime: Duration::from_secs(3600),
            failure_backoff: Duration::from_secs(5),
            fetch_timeout: Duration::from_secs(15),
        }
    }
}

/// An access token (the reference's `Token` model).
#[derive(Clone, PartialEq, Eq, serde::Serialize)]
pub struct Token {
    /// The token.
    pub access_token: String,
    /// Expiry, unix seconds.
    pub expires_at: i64,
    /// Usually `Bearer`.
    pub token_type: String,
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("access_token", &"<redacted>")
            .field("expires_at", &self.expires_at)
            .field("token_type", &self.token_type)
            .finish()
    }
}

impl Token {
    /// The `Authorization` header value: `Bearer <token>`.
    #[must_use]
    pub fn authorization(&self) -> String {
        format!("Bearer {}", self.access_token)
    }
}

/// Why a token endpoint answer gave no token (the endpoint's fault, or a
/// refusal of our credentials: `invalid_client` is local configuration).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TokenEndpointError {
    /// An OAuth2 error answer (RFC 6749 §5.2).
    #[error("token endpoint refused (HTTP {status}): {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Refused {
        /// HTTP status.
        status: u16,
        /// `error` (e.g. `invalid_client`).
        error: String,
        /// `error_description`.
        description: Option<String>,
    },
    /// A non-2xx answer without an OAuth2 error body.
    #[error("token endpoint answered HTTP {0}")]
    Status(u16),
    /// A 2xx answer without a usable `access_token`.
    #[error("token endpoint sent an invalid answer: {0}")]
    Document(String),
}

/// A token endpoint answer (RFC 6749 §5.1) as both grants read it.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct TokenAnswer {
    pub(crate) token: Token,
    pub(crate) refresh_token: Option<String>,
    pub(crate) scope: Option<String>,
    pub(crate) id_token: Option<String>,
}

/// Parses a token endpoint answer: `access_token` required, `token_type`
/// default `Bearer`, expiry `expires_at`, else now + `expires_in`, else now + `default_lifetime`.
pub(crate) fn parse_token_answer(
    response: &http::Response<Vec<u8>>,
    now: UnixTime,
    default_lifetime: Duration,
) -> Result<TokenAnswer, TokenEndpointError> {
    let status = response.status().as_u16();
    let doc: Option<serde_json::Map<String, Value>> =
        serde_json::from_slice::<Value>(response.body())
            .ok()
            .and_then(|v| match v {
                Value::Object(o) => Some(o),
                _ => None,
            });
    if !response.status().is_success() {
        if let Some(error) = doc
            .as_ref()
            .and_then(|o| o.get("error"))
            .and_then(Value::as_str)
        {
            return Err(TokenEndpointError::Refused {
                status,
                error: error.to_owned(),
                description: doc
                    .as_ref()
                    .and_then(|o| o.get("error_description"))
                    .and_then(Value::as_str)
                    .map(str::to_owned),
            });
        }
        return Err(TokenEndpointError::Status(status));
    }
    let o = doc.ok_or_else(|| TokenEndpointError::Document("not a JSON object".into()))?;
    let string = |k: &str| o.get(k).and_then(Value::as_str).map(str::to_owned);
    let access_token = string("access_token")
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenEndpointError::Document("no access_token".into()))?;
    let secs = |k: &str| {
        o.get(k)
            .and_then(|v| v.as_i64().or_else(|| v.as_f64().map(|f| f as i64)))
    };
    let expires_at = secs("expires_at")
        .or_else(|| secs("expires_in").map(|d| now.as_secs().saturating_add(d)))
        .unwrap_or_else(|| {
            now.as_secs()
                .saturating_add(i64::try_from(default_lifetime.as_secs()).unwrap_or(i64::MAX))
        });
    Ok(TokenAnswer {
        token: Token {
            access_token,
            expires_at,
            token_type: string("token_type").unwrap_or_else(|| "Bearer".into()),
        },
        refresh_token: string("refresh_token"),
        scope: string("scope"),
        id_token: string("id_token"),
    })
}

/// What [`ClientCredentials::token`] answers.
#[derive(Debug)]
#[must_use]
#[allow(clippy::large_enum_variant)] // a request handed straight to the adapter; boxing only adds an allocation
pub enum TokenLookup {
    /// Use this token.
    Ready(Arc<Token>),
    /// Request a token: perform this, then report it.
    Fetch(Fetch),
    /// A request is in flight and no valid token is held: wait, then ask again.
    Wait(FetchId),
    /// No valid token, and the last request failed moments ago.
    Unavailable,
}

/// The client-credentials token machine (the reference's
/// `OAuth2ClientCredentials.get_valid_token`).
///
/// Call protocol: [`token(now)`](Self::token) before each request that needs
/// one; `Fetch` → perform, then [`handle_response`](Self::handle_response) or
/// [`handle_failure`](Self::handle_failure); `Wait` → ask again after that
/// report. While a refresh is in flight, callers keep getting the current
/// token if it has not expired yet.
///
/// ```
/// use asap_proto::auth::{ClientCredentials, ClientCredentialsConfig, TokenLookup};
/// use asap_proto::model::UnixTime;
/// use asap_proto::server::Now;
/// let now = Now { monotonic: std::time::Instant::now(), wall: UnixTime::from_secs(1_800_000_000) };
/// let mut cc = ClientCredentials::new(ClientCredentialsConfig {
///     token_url: "https://idp.example.com/oauth/token".into(),
///     client_id: "my-client".into(),
///     client_secret: "my-secret".into(),
///     ..Default::default()
/// }).unwrap();
/// let TokenLookup::Fetch(f) = cc.token(now) else { panic!() };
/// let answer = http::Response::new(br#"{"access_token":"at-1","expires_in":3600}"#.to_vec());
/// let token = cc.handle_response(f.id, &answer, now).unwrap();
/// assert_eq!(token.authorization(), "Bearer at-1");
/// assert!(matches!(cc.token(now), TokenLookup::Ready(_)));
/// ```
#[derive(Debug, Clone)]
pub struct ClientCredentials {
    config: ClientCredentialsConfig,
    slot: RefreshSlot<Token>,
}

impl ClientCredentials {
    /// A machine holding no token yet.
    pub fn new(config: ClientCredentialsConfig) -> Result<Self, AuthConfigError> {
        check_url(&config.token_url).map_err(|reason| AuthConfigError::InvalidUrl {
            name: "token_url",
            reason,
        })?;
        if config.client_id.is_empty() {
            return Err(AuthConfigError::Missing("client_id"));
        }
        Ok(Self {
            slot: RefreshSlot::new(config.fetch_timeout, config.failure_backoff),
            config,
        })
    }

    /// Token requests started so far.
    #[must_use]
    pub fn fetches_started(&self) -> u64 {
        self.slot.fetches_started()
    }

    /// The token request, exactly as the reference (Authlib) sends it.
    #[must_use]
    pub fn request(&self) -> http::Request<Vec<u8>> {
        let scope = self.config.scopes.join(" ");
        let mut pairs = vec![("grant_type", "client_credentials")];
        if !scope.is_empty() {
            pairs.push(("scope", scope.as_str()));
        }
        let auth = basic_authorization(&self.config.client_id, &self.config.client_secret);
        form_post(
            &self.config.token_url,
            TOKEN_CONTENT_TYPE,
            Some(&auth),
            form_encode(&pairs),
        )
        .unwrap_or_else(|_| http::Request::new(Vec::new())) // URL checked at `new`
    }

    /// A valid token, or what to do first.
    pub fn token(&mut self, now: Now) -> TokenLookup {
        if self.slot.is_fresh(now.monotonic) {
            if let Some(t) = self.slot.value() {
                return TokenLookup::Ready(Arc::clone(t));
            }
        }
        let still_valid = self
            .slot
            .value()
            .filter(|t| now.wall.as_secs() < t.expires_at)
            .cloned();
        match (self.slot.begin(now.monotonic, Duration::ZERO), still_valid) {
            (Begin::Start(id), _) => TokenLookup::Fetch(Fetch {
                id,
                request: self.request(),
            }),
            (_, Some(t)) => TokenLookup::Ready(t),
            (Begin::Joined(id), None) => TokenLookup::Wait(id),
            (Begin::Refused, None) => TokenLookup::Unavailable,
        }
    }

    /// The token endpoint's answer to request `id`.
    pub fn handle_response(
        &mut self,
        id: FetchId,
        response: &http::Response<Vec<u8>>,
        now: Now,
    ) -> Result<Arc<Token>, TokenEndpointError> {
        match parse_token_answer(response, now.wall, self.config.default_lifetime) {
            Ok(a) => {
                let left = a.token.expires_at.saturating_sub(now.wall.as_secs());
                let early = i64::try_from(self.config.refresh_early.as_secs()).unwrap_or(i64::MAX);
                let fresh_for =
                    Duration::from_secs(u64::try_from(left.saturating_sub(early)).unwrap_or(0));
                Ok(self.slot.succeed(id, a.token, fresh_for, now.monotonic))
            }
            Err(e) => {
                self.slot.fail(id, now.monotonic);
                Err(e)
            }
        }
    }

    /// Request `id` failed in transport.
    pub fn handle_failure(&mut self, id: FetchId, now: Now) {
        self.slot.fail(id, now.monotonic);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn machine() -> ClientCredentials {
        ClientCredentials::new(ClientCredentialsConfig {
            token_url: "https://idp.example.com/oauth/token".into(),
            client_id: "my-client".into(),
            client_secret: "my-secret".into(),
            scopes: vec!["asap:execute".into(), "asap:read".into()],
            ..Default::default()
        })
        .unwrap()
    }

    /// `now` `d` seconds after one base, on both clocks.
    fn clock() -> impl Fn(u64) -> Now {
        let t0 = crate::test_clock::base();
        let w0 = UnixTime::from_secs(1_800_000_000);
        move |d| Now {
            monotonic: t0 + Duration::from_secs(d),
            wall: w0.saturating_add(Duration::from_secs(d)),
        }
    }

    #[test]
    fn request_matches_the_reference_vector() {
        let r = machine().request();
        assert_eq!(r.method(), http::Method::POST);
        assert_eq!(r.uri(), "https://idp.example.com/oauth/token");
        assert_eq!(r.headers()["accept"], "application/json");
        assert_eq!(
            r.headers()["content-type"],
            "application/x-www-form-urlencoded;charset=UTF-8"
        );
        assert_eq!(
            r.headers()["authorization"],
            "Basic bXktY2xpZW50Om15LXNlY3JldA=="
        );
        assert_eq!(
            r.body(),
            b"grant_type=client_credentials&scope=asap%3Aexecute+asap%3Aread"
        );
    }

    #[test]
    fn refreshes_30s_early_single_flight() {
        let at = clock();
        let mut cc = machine();
        let TokenLookup::Fetch(f) = cc.token(at(0)) else {
            panic!()
        };
        assert!(matches!(cc.token(at(0)), TokenLookup::Wait(_)));
        let body = br#"{"access_token":"at-123","token_type":"Bearer","expires_in":100}"#.to_vec();
        let t = cc
            .handle_response(f.id, &http::Response::new(body), at(0))
            .unwrap();
        assert_eq!(t.expires_at, 1_800_000_100);
        assert!(matches!(cc.token(at(69)), TokenLookup::Ready(_)));
        // 30 s before expiry: one caller refreshes, the others keep the still-valid token.
        let TokenLookup::Fetch(f) = cc.token(at(70)) else {
            panic!()
        };
        assert!(matches!(cc.token(at(71)), TokenLookup::Ready(_)));
        cc.handle_failure(f.id, at(72));
        assert!(matches!(cc.token(at(73)), TokenLookup::Ready(_)));
        // Expired and the endpoint just failed: unavailable until the back-off passes.
        let TokenLookup::Fetch(f) = cc.token(at(100)) else {
            panic!()
        };
        let refused = http::Response::builder()
            .status(401)
            .body(br#"{"error":"invalid_client"}"#.to_vec())
            .unwrap();
        assert_eq!(
            cc.handle_response(f.id, &refused, at(100)).unwrap_err(),
            TokenEndpointError::Refused {
                status: 401,
                error: "invalid_client".into(),
                description: None
            }
        );
        assert!(matches!(cc.token(at(101)), TokenLookup::Unavailable));
        assert_eq!(cc.fetches_started(), 3);
    }

    #[test]
    fn a_token_stops_serving_at_its_expiry_second_while_a_refresh_is_out() {
        let s = Duration::from_secs;
        let at = clock();
        // Refreshing 10 s early keeps the refresh within its 15 s fetch timeout.
        let mut cc = ClientCredentials::new(ClientCredentialsConfig {
            refresh_early: s(10),
            ..machine().config
        })
        .unwrap();
        let TokenLookup::Fetch(f) = cc.token(at(0)) else {
            panic!()
        };
        let body = br#"{"access_token":"at-1","expires_in":100}"#.to_vec();
        cc.handle_response(f.id, &http::Response::new(body), at(0))
            .unwrap();
        let TokenLookup::Fetch(_) = cc.token(at(90)) else {
            panic!("the early refresh starts")
        };
        assert!(matches!(cc.token(at(99)), TokenLookup::Ready(_)));
        assert!(matches!(cc.token(at(100)), TokenLookup::Wait(_)));
    }

    #[test]
    fn expiry_sources() {
        let now = UnixTime::from_secs(1000);
        let d = Duration::from_secs(3600);
        let ok = |b: &str| parse_token_answer(&http::Response::new(b.as_bytes().to_vec()), now, d);
        assert_eq!(
            ok(r#"{"access_token":"a","expires_at":5}"#)
                .unwrap()
                .token
                .expires_at,
            5
        );
        assert_eq!(
            ok(r#"{"access_token":"a"}"#).unwrap().token.expires_at,
            4600
        );
        assert!(matches!(
            ok(r#"{"token_type":"Bearer"}"#),
            Err(TokenEndpointError::Document(_))
        ));
    }
}
