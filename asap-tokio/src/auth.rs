//! Identity on tokio: performs the fetches the core's auth machines ask for
//! (key sets, discovery, introspection, token requests) and builds a
//! [`ServerAuth`] from [`AuthSettings`], fetching the keys at startup so a
//! misconfigured IdP is a startup error.
//!
//! ```no_run
//! use asap_tokio::auth::AuthSettings;
//! # async fn run(manifest: asap_proto::model::Manifest) -> Result<(), String> {
//! let settings = AuthSettings { oidc_issuer: Some("https://idp.example.com".into()), ..Default::default() };
//! let auth = settings.server_auth().await?; // discovery + JWKS fetched now
//! let agent = asap_tokio::Agent::builder(manifest).auth(auth).build();
//! # let _ = agent; Ok(()) }
//! ```

use std::sync::Mutex;
use std::time::{Duration, Instant};

use asap_proto::auth::{
    Authenticator, AuthenticatorConfig, BearerLookup, BearerSource, ClaimsPolicy, IdentityConfig,
    IntrospectionConfig, JwkSet, JwksCacheConfig, KeySource, OidcDiscovery, OidcDiscoveryConfig,
    OidcLookup, Scope, SubjectMap, ValidatorConfig, DEFAULT_AGENT_CLAIM,
};
use asap_proto::server::ServerAuth;

use crate::server::now;

/// Largest answer read from an IdP (key sets are capped lower by the core).
const MAX_IDP_BODY: usize = 1 << 20;
/// Timeout of one IdP request (the reference's 10 s).
pub const IDP_TIMEOUT: Duration = Duration::from_secs(10);

/// Performs one request an auth machine emitted; the error text names the
/// URL and the cause.
pub async fn perform(
    http: &reqwest::Client,
    req: http::Request<Vec<u8>>,
) -> Result<http::Response<Vec<u8>>, String> {
    let (parts, body) = req.into_parts();
    let url = parts.uri.to_string();
    let fail = |e: reqwest::Error| format!("{url}: {}", chain(&e));
    let mut resp = http
        .request(parts.method, &url)
        .headers(parts.headers)
        .body(body)
        .timeout(IDP_TIMEOUT)
        .send()
        .await
        .map_err(fail)?;
    let mut out = http::Response::builder().status(resp.status());
    if let Some(h) = out.headers_mut() {
        *h = std::mem::take(resp.headers_mut());
    }
    let mut bytes = Vec::new();
    while let Some(chunk) = resp.chunk().await.map_err(fail)? {
        if bytes.len() + chunk.len() > MAX_IDP_BODY {
            return Err(format!("{url}: answer over {MAX_IDP_BODY} bytes"));
        }
        bytes.extend_from_slice(&chunk);
    }
    out.body(bytes).map_err(|e| format!("{url}: {e}"))
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let t = s.to_string();
        if !text.contains(&t) {
            text = format!("{text}: {t}");
        }
        source = s.source();
    }
    text
}

/// A client for IdP requests (no redirects: a token endpoint that redirects is misconfigured).
pub fn idp_client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .connect_timeout(IDP_TIMEOUT)
        .build()
        .unwrap_or_default()
}

/// The `Authorization` value from `source` (`None`: no source configured),
/// performing token requests as needed.
pub(crate) async fn authorization(
    source: &Mutex<Option<BearerSource>>,
    http: &reqwest::Client,
) -> Result<Option<http::HeaderValue>, String> {
    // Bounded: each fetch is reported before asking again, and the machines rate-limit.
    for _ in 0..50 {
        let step = match crate::server::lock(source).as_mut() {
            None => return Ok(None),
            Some(s) => s.authorization(now()),
        };
        match step {
            BearerLookup::Ready(v) => {
                return http::HeaderValue::from_str(&v)
                    .map(Some)
                    .map_err(|_| "the access token is not a valid header value".into())
            }
            BearerLookup::Fetch(f) => {
                let result = perform(http, f.request).await;
                let mut guard = crate::server::lock(source);
                let Some(s) = guard.as_mut() else {
                    return Ok(None);
                };
                match result {
                    Ok(r) => s.handle_response(f.id, &r, now())?,
                    Err(e) => {
                        s.handle_failure(f.id, &e, now());
                        return Err(e);
                    }
                }
            }
            BearerLookup::Wait => tokio::time::sleep(Duration::from_millis(20)).await,
            BearerLookup::Unavailable(why) => return Err(why),
        }
    }
    Err("no access token after repeated attempts".into())
}

/// Server-side identity settings (`asap serve --oidc-issuer` etc.).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AuthSettings {
    /// OIDC issuer: discovery names the JWKS (and `iss` is required to equal it).
    pub oidc_issuer: Option<String>,
    /// The JWKS URL (without discovery).
    pub jwks_uri: Option<String>,
    /// A local JWKS file's contents (trusted keys, never fetched).
    pub jwks_file: Option<String>,
    /// A value `aud` must contain.
    pub audience: Option<String>,
    /// The scope sending needs (default `asap:execute`).
    pub required_scope: Option<String>,
    /// `ASAP_AUTH_SUBJECT_MAP` JSON.
    pub subject_map: Option<String>,
    /// `ASAP_AUTH_CUSTOM_CLAIM`: the claim naming the caller's agent.
    pub identity_claim: Option<String>,
    /// RFC 7662 introspection for opaque tokens: URL, client id, secret.
    pub introspection: Option<(String, String, String)>,
    /// Accept tokens without `exp` (the reference does; default refuse).
    pub allow_missing_exp: bool,
    /// Least time between key-set refetches for an unknown `kid` (default 30 s).
    pub kid_miss_interval: Option<Duration>,
}

impl AuthSettings {
    /// Whether any token source is configured (else the server is open).
    #[must_use]
    pub fn enabled(&self) -> bool {
        self.oidc_issuer.is_some()
            || self.jwks_uri.is_some()
            || self.jwks_file.is_some()
            || self.introspection.is_some()
    }

    /// The core configuration, and the discovery it needs first (issuer only).
    fn config(&self, jwks_uri: Option<String>) -> Result<AuthenticatorConfig, String> {
        let keys = match (&self.jwks_file, jwks_uri.or_else(|| self.jwks_uri.clone())) {
            (Some(text), _) => KeySource::Static(
                JwkSet::from_slice(text.as_bytes())
                    .map_err(|e| format!("the JWKS file is not a usable key set: {e}"))?,
            ),
            (None, Some(uri)) => {
                let mut c = JwksCacheConfig::new(uri);
                if let Some(i) = self.kid_miss_interval {
                    c.kid_miss_interval = i;
                }
                KeySource::Jwks(c)
            }
            (None, None) => KeySource::None,
        };
        let subject_map = match self.subject_map.as_deref().map(str::trim) {
            None | Some("") => SubjectMap::default(),
            Some(text) => SubjectMap::parse(text)
                .map_err(|e| format!("ASAP_AUTH_SUBJECT_MAP / --subject-map: {e}"))?,
        };
        let introspection =
            self.introspection
                .clone()
                .map(|(url, id, secret)| IntrospectionConfig {
                    url,
                    client_id: id,
                    client_secret: secret,
                    ..Default::default()
                });
        Ok(AuthenticatorConfig {
            keys,
            validator: ValidatorConfig {
                claims: ClaimsPolicy {
                    issuer: self.oidc_issuer.clone(),
                    audience: self.audience.clone(),
                    require_exp: !self.allow_missing_exp,
                    ..Default::default()
                },
                ..Default::default()
            },
            introspection,
            identity: IdentityConfig {
                agent_claim: self
                    .identity_claim
                    .clone()
                    .unwrap_or_else(|| DEFAULT_AGENT_CLAIM.to_owned()),
                subject_map,
                ..Default::default()
            },
        })
    }

    /// Builds the server's auth: OIDC discovery (issuer), then the key set,
    /// both fetched now; an error names the URL and what is wrong.
    pub async fn server_auth(&self) -> Result<ServerAuth, String> {
        let http = idp_client();
        let jwks_uri = match &self.oidc_issuer {
            Some(issuer) => Some(discover(&http, issuer).await?),
            None => None,
        };
        let config = self.config(jwks_uri)?;
        let uri = match &config.keys {
            KeySource::Jwks(c) => Some(c.jwks_uri.clone()),
            _ => None,
        };
        let authenticator = Authenticator::new(config).map_err(|e| e.to_string())?;
        let scope = match self.required_scope.as_deref() {
            None => Some(Scope::Execute),
            Some("") => None,
            Some(s) => Some(Scope::from_name(s).ok_or_else(|| {
                format!("--required-scope {s:?}: expected asap:read, asap:execute or asap:admin")
            })?),
        };
        let mut auth = ServerAuth::new(authenticator).execute_scope(scope);
        if let Some(fetch) = auth.startup_fetch(Instant::now()) {
            let uri = uri.unwrap_or_default();
            let result = perform(&http, fetch.request).await;
            auth.handle_startup_keys(
                fetch.id,
                result.as_ref().map_err(Clone::clone),
                Instant::now(),
            )
            .map_err(|e| format!("JWKS {uri}: {e}"))?;
        }
        Ok(auth)
    }
}

/// OIDC discovery for `issuer`: its `jwks_uri`.
async fn discover(http: &reqwest::Client, issuer: &str) -> Result<String, String> {
    let mut d = OidcDiscovery::new(OidcDiscoveryConfig {
        issuer: issuer.to_owned(),
        ..Default::default()
    })
    .map_err(|e| format!("--oidc-issuer {issuer}: {e}"))?;
    let t = Instant::now();
    let OidcLookup::Fetch(f) = d.config(t) else {
        return Err(format!("OIDC discovery for {issuer} did not start"));
    };
    let url = f.request.uri().to_string();
    let response = perform(http, f.request).await?;
    d.handle_response(f.id, &response, t)
        .map(|c| c.jwks_uri.clone())
        .map_err(|e| format!("OIDC discovery {url}: {e}"))
}

/// Performs a [`Step::Fetch`](asap_proto::server::Step::Fetch) for the server's driver loop.
pub(crate) async fn fetch_for_server(
    http: &reqwest::Client,
    req: http::Request<Vec<u8>>,
) -> Result<http::Response<Vec<u8>>, String> {
    let result = perform(http, req).await;
    if let Err(e) = &result {
        tracing::warn!(error = %e, "asap.auth.fetch_failed");
    }
    result
}
