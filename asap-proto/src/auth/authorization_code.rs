//! The OAuth2 `authorization_code` grant with PKCE S256 (RFC 7636) and
//! `state`: the authorization URL, the redirect check, the code exchange and
//! the refresh request. (The reference plans this class but has none.)

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;

use super::client_credentials::{
    parse_token_answer, Token, TokenEndpointError, TOKEN_CONTENT_TYPE,
};
use super::fetch::{basic_authorization, check_url, form_encode, form_post, form_unescape};
use super::AuthConfigError;
use crate::model::UnixTime;

/// Authorization-code client settings.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct AuthorizationCodeConfig {
    /// The IdP's authorization endpoint. Required.
    pub authorization_endpoint: String,
    /// The token endpoint. Required.
    pub token_endpoint: String,
    /// Client id. Required.
    pub client_id: String,
    /// Client secret (`client_secret_basic`); `None` for a public client,
    /// which sends `client_id` in the body instead. Redacted in `Debug`.
    pub client_secret: Option<String>,
    /// Where the IdP sends the browser back. Required.
    pub redirect_uri: String,
    /// Scopes to ask for.
    pub scopes: Vec<String>,
}

impl fmt::Debug for AuthorizationCodeConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AuthorizationCodeConfig")
            .field("authorization_endpoint", &self.authorization_endpoint)
            .field("token_endpoint", &self.token_endpoint)
            .field("client_id", &self.client_id)
            .field(
                "client_secret",
                &self.client_secret.as_ref().map(|_| "<redacted>"),
            )
            .field("redirect_uri", &self.redirect_uri)
            .field("scopes", &self.scopes)
            .finish()
    }
}

/// One authorization in progress: the URL to send the user to, and what the
/// redirect and the exchange need. Keep it until the redirect comes back.
#[derive(Clone, PartialEq, Eq)]
pub struct PendingAuthorization {
    /// The authorization URL.
    pub url: String,
    /// `state` (base64url of 32 caller-supplied random bytes).
    pub state: String,
    /// The PKCE `code_verifier` (base64url of 32 random bytes; redacted in `Debug`).
    pub code_verifier: String,
}

impl fmt::Debug for PendingAuthorization {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PendingAuthorization")
            .field("url", &self.url)
            .field("state", &self.state)
            .field("code_verifier", &"<redacted>")
            .finish()
    }
}

/// Why a redirect is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RedirectError {
    /// The URL is not the configured `redirect_uri` (scheme, host, port, path).
    #[error("redirect does not go to the configured redirect_uri")]
    WrongRedirectUri,
    /// The query is not valid form encoding, or repeats a parameter (RFC 6749 §3.1).
    #[error("redirect query is malformed or repeats {0:?}")]
    Malformed(String),
    /// The IdP (or the user) refused: `error` in the redirect.
    #[error("authorization refused: {error}{}", description.as_deref().map(|d| format!(" ({d})")).unwrap_or_default())]
    Denied {
        /// `error`.
        error: String,
        /// `error_description`.
        description: Option<String>,
    },
    /// `state` is absent or differs: the redirect is not the answer to this
    /// authorization (CSRF or a mixed-up session).
    #[error("redirect state does not match the pending authorization")]
    StateMismatch,
    /// No `code`.
    #[error("redirect carries no authorization code")]
    MissingCode,
}

/// A token endpoint answer to the exchange or a refresh.
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct TokenSet {
    /// The access token.
    pub token: Token,
    /// `refresh_token`, when issued.
    pub refresh_token: Option<String>,
    /// `scope`, when the IdP reports what it granted.
    pub scope: Option<String>,
    /// `id_token` (OIDC), when issued; not validated here.
    pub id_token: Option<String>,
}

impl fmt::Debug for TokenSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSet")
            .field("token", &self.token)
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "<redacted>"),
            )
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// The authorization-code client. Pure functions of the configuration; the
/// caller keeps each [`PendingAuthorization`].
///
/// Call order: [`authorize(random)`](Self::authorize) → send the user to
/// `pending.url` → [`handle_redirect(&pending, url)`](Self::handle_redirect)
/// gives the code → perform [`exchange_request`](Self::exchange_request) →
/// [`handle_token_response`](Self::handle_token_response); later
/// [`refresh_request`](Self::refresh_request) → `handle_token_response`.
///
/// ```
/// use asap_proto::auth::{AuthorizationCode, AuthorizationCodeConfig};
/// let flow = AuthorizationCode::new(AuthorizationCodeConfig {
///     authorization_endpoint: "https://idp.example.com/authorize".into(),
///     token_endpoint: "https://idp.example.com/oauth/token".into(),
///     client_id: "cli".into(),
///     redirect_uri: "http://127.0.0.1:8765/callback".into(),
///     scopes: vec!["asap:execute".into()],
///     ..Default::default()
/// }).unwrap();
/// let pending = flow.authorize(&[7; 64]); // random bytes from the caller's RNG
/// assert!(pending.url.contains("code_challenge_method=S256"));
/// let back = format!("http://127.0.0.1:8765/callback?code=abc&state={}", pending.state);
/// let code = flow.handle_redirect(&pending, &back).unwrap();
/// let req = flow.exchange_request(&pending, &code);
/// assert!(String::from_utf8_lossy(req.body()).contains("code_verifier="));
/// ```
#[derive(Debug, Clone)]
pub struct AuthorizationCode {
    config: AuthorizationCodeConfig,
}

impl AuthorizationCode {
    /// Checks the URLs and the client id.
    pub fn new(config: AuthorizationCodeConfig) -> Result<Self, AuthConfigError> {
        for (name, url) in [
            ("authorization_endpoint", &config.authorization_endpoint),
            ("token_endpoint", &config.token_endpoint),
            ("redirect_uri", &config.redirect_uri),
        ] {
            check_url(url).map_err(|reason| AuthConfigError::InvalidUrl { name, reason })?;
        }
        if config.client_id.is_empty() {
            return Err(AuthConfigError::Missing("client_id"));
        }
        Ok(Self { config })
    }

    /// Starts an authorization: `random` (from the caller's CSPRNG) gives
    /// `state` (first 32 bytes) and the PKCE verifier (last 32).
    #[must_use]
    pub fn authorize(&self, random: &[u8; 64]) -> PendingAuthorization {
        let state = URL_SAFE_NO_PAD.encode(&random[..32]);
        let code_verifier = URL_SAFE_NO_PAD.encode(&random[32..]);
        let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            code_verifier.as_bytes(),
        ));
        let scope = self.config.scopes.join(" ");
        let mut pairs = vec![
            ("response_type", "code"),
            ("client_id", self.config.client_id.as_str()),
            ("redirect_uri", self.config.redirect_uri.as_str()),
        ];
        if !scope.is_empty() {
            pairs.push(("scope", scope.as_str()));
        }
        pairs.extend([
            ("state", state.as_str()),
            ("code_challenge", challenge.as_str()),
            ("code_challenge_method", "S256"),
        ]);
        let endpoint = &self.config.authorization_endpoint;
        let sep = if endpoint.contains('?') { '&' } else { '?' };
        PendingAuthorization {
            url: format!("{endpoint}{sep}{}", form_encode(&pairs)),
            state,
            code_verifier,
        }
    }

    /// Checks the URL the browser came back to and returns the authorization code.
    pub fn handle_redirect(
        &self,
        pending: &PendingAuthorization,
        redirect_url: &str,
    ) -> Result<String, RedirectError> {
        let without_fragment = redirect_url.split('#').next().unwrap_or("");
        let (base, query) = without_fragment
            .split_once('?')
            .unwrap_or((without_fragment, ""));
        let configured = self.config.redirect_uri.split('?').next().unwrap_or("");
        if base != configured {
            return Err(RedirectError::WrongRedirectUri);
        }
        let mut params: Vec<(String, String)> = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let k = form_unescape(k).ok_or_else(|| RedirectError::Malformed(k.to_owned()))?;
            let v = form_unescape(v).ok_or_else(|| RedirectError::Malformed(k.clone()))?;
            if params.iter().any(|(n, _)| *n == k) {
                return Err(RedirectError::Malformed(k));
            }
            params.push((k, v));
        }
        let get = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
        };
        let state_ok =
            get("state").is_some_and(|s| constant_time_eq(s.as_bytes(), pending.state.as_bytes()));
        if !state_ok {
            return Err(RedirectError::StateMismatch);
        }
        if let Some(error) = get("error") {
            return Err(RedirectError::Denied {
                error,
                description: get("error_description"),
            });
        }
        get("code")
            .filter(|c| !c.is_empty())
            .ok_or(RedirectError::MissingCode)
    }

    fn token_request<'a>(&'a self, mut pairs: Vec<(&'a str, &'a str)>) -> http::Request<Vec<u8>> {
        let auth = match &self.config.client_secret {
            Some(secret) => Some(basic_authorization(&self.config.client_id, secret)),
            None => {
                pairs.push(("client_id", self.config.client_id.as_str()));
                None
            }
        };
        form_post(
            &self.config.token_endpoint,
            TOKEN_CONTENT_TYPE,
            auth.as_deref(),
            form_encode(&pairs),
        )
        .unwrap_or_else(|_| http::Request::new(Vec::new())) // URL checked at `new`
    }

    /// The code exchange: `grant_type=authorization_code`, the code, the
    /// redirect URI and the PKCE verifier.
    #[must_use]
    pub fn exchange_request(
        &self,
        pending: &PendingAuthorization,
        code: &str,
    ) -> http::Request<Vec<u8>> {
        self.token_request(vec![
            ("grant_type", "authorization_code"),
            ("code", code),
            ("redirect_uri", self.config.redirect_uri.as_str()),
            ("code_verifier", pending.code_verifier.as_str()),
        ])
    }

    /// A refresh: `grant_type=refresh_token`.
    #[must_use]
    pub fn refresh_request(&self, refresh_token: &str) -> http::Request<Vec<u8>> {
        self.token_request(vec![
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
        ])
    }

    /// Reads the token endpoint's answer to the exchange or a refresh
    /// (expiry: `expires_at`, else `now + expires_in`, else `now + 3600 s`).
    pub fn handle_token_response(
        &self,
        response: &http::Response<Vec<u8>>,
        now: UnixTime,
    ) -> Result<TokenSet, TokenEndpointError> {
        let a = parse_token_answer(response, now, std::time::Duration::from_secs(3600))?;
        Ok(TokenSet {
            token: a.token,
            refresh_token: a.refresh_token,
            scope: a.scope,
            id_token: a.id_token,
        })
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_state_comparison_is_exact() {
        assert!(constant_time_eq(b"st-1", b"st-1"));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"st-1", b"st-2"), "one byte differs");
        // Differences that cancel out under xor: every byte must match.
        assert!(!constant_time_eq(b"ab", b"ba"));
        assert!(!constant_time_eq(b"st-1", b"st-"), "a prefix");
        assert!(!constant_time_eq(b"", b"x"));
    }

    fn flow(secret: Option<&str>) -> AuthorizationCode {
        AuthorizationCode::new(AuthorizationCodeConfig {
            authorization_endpoint: "https://idp.example.com/authorize".into(),
            token_endpoint: "https://idp.example.com/oauth/token".into(),
            client_id: "my-client".into(),
            client_secret: secret.map(str::to_owned),
            redirect_uri: "http://127.0.0.1:8765/cb".into(),
            scopes: vec!["asap:execute".into(), "asap:read".into()],
        })
        .unwrap()
    }

    #[test]
    fn pkce_s256_rfc7636_appendix_b() {
        // RFC 7636 Appendix B: this verifier has this challenge.
        let verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
        let challenge = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            verifier.as_bytes(),
        ));
        assert_eq!(challenge, "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM");
        let f = flow(None);
        let p = f.authorize(&[1; 64]);
        assert_eq!(p.state.len(), 43);
        assert!(p.url.starts_with(
            "https://idp.example.com/authorize?response_type=code&client_id=my-client&redirect_uri=http%3A%2F%2F127.0.0.1%3A8765%2Fcb&scope=asap%3Aexecute+asap%3Aread&state="
        ));
        let c = URL_SAFE_NO_PAD.encode(ring::digest::digest(
            &ring::digest::SHA256,
            p.code_verifier.as_bytes(),
        ));
        assert!(p
            .url
            .ends_with(&format!("&code_challenge={c}&code_challenge_method=S256")));
    }

    #[test]
    fn redirect_checks() {
        let f = flow(None);
        let p = f.authorize(&[2; 64]);
        let s = &p.state;
        assert_eq!(
            f.handle_redirect(
                &p,
                &format!("http://127.0.0.1:8765/cb?code=c%2B1&state={s}")
            )
            .unwrap(),
            "c+1"
        );
        assert_eq!(
            f.handle_redirect(&p, &format!("http://evil/cb?code=c&state={s}")),
            Err(RedirectError::WrongRedirectUri)
        );
        assert_eq!(
            f.handle_redirect(&p, "http://127.0.0.1:8765/cb?code=c&state=other"),
            Err(RedirectError::StateMismatch)
        );
        assert_eq!(
            f.handle_redirect(&p, "http://127.0.0.1:8765/cb?code=c"),
            Err(RedirectError::StateMismatch)
        );
        assert_eq!(
            f.handle_redirect(
                &p,
                &format!("http://127.0.0.1:8765/cb?state={s}&state={s}&code=c")
            ),
            Err(RedirectError::Malformed("state".into()))
        );
        assert_eq!(
            f.handle_redirect(
                &p,
                &format!("http://127.0.0.1:8765/cb?error=access_denied&state={s}")
            ),
            Err(RedirectError::Denied {
                error: "access_denied".into(),
                description: None
            })
        );
        assert_eq!(
            f.handle_redirect(&p, &format!("http://127.0.0.1:8765/cb?state={s}")),
            Err(RedirectError::MissingCode)
        );
    }

    #[test]
    fn exchange_and_refresh_requests() {
        let p = flow(None).authorize(&[3; 64]);
        let r = flow(None).exchange_request(&p, "the-code");
        assert!(r.headers().get("authorization").is_none());
        assert_eq!(
            String::from_utf8(r.body().clone()).unwrap(),
            format!(
                "grant_type=authorization_code&code=the-code&redirect_uri=http%3A%2F%2F127.0.0.1%3A8765%2Fcb&code_verifier={}&client_id=my-client",
                p.code_verifier
            )
        );
        let r = flow(Some("my-secret")).refresh_request("rt-1");
        assert_eq!(
            r.headers()["authorization"],
            "Basic bXktY2xpZW50Om15LXNlY3JldA=="
        );
        assert_eq!(r.body(), b"grant_type=refresh_token&refresh_token=rt-1");
        let answer = http::Response::new(
            br#"{"access_token":"at","expires_in":60,"refresh_token":"rt-2","scope":"asap:read"}"#
                .to_vec(),
        );
        let t = flow(None)
            .handle_token_response(&answer, UnixTime::from_secs(100))
            .unwrap();
        assert_eq!(
            (t.token.expires_at, t.refresh_token.as_deref()),
            (160, Some("rt-2"))
        );
    }
}
