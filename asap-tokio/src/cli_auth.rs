//! The identity flags of `asap serve` and `asap send` (spec §11, §20).

use asap_tokio::auth::AuthSettings;

/// `asap serve`: who may call (OAuth2/OIDC bearer tokens).
#[derive(clap::Args, Debug, Default)]
pub struct ServeAuthArgs {
    /// OIDC issuer: its discovery document names the JWKS, fetched at
    /// startup; tokens must carry `iss` equal to it.
    #[arg(
        long,
        env = "ASAP_AUTH_OIDC_ISSUER",
        value_name = "URL",
        conflicts_with = "jwks_uri"
    )]
    oidc_issuer: Option<String>,
    /// The issuer's JWKS URL (no discovery; fetched at startup).
    #[arg(long, env = "ASAP_AUTH_JWKS_URI", value_name = "URL")]
    jwks_uri: Option<String>,
    /// A local JWKS file to trust (never fetched; as the reference's `--jwks-file` interop server).
    #[arg(long, env = "ASAP_AUTH_JWKS_FILE", value_name = "FILE", conflicts_with_all = ["oidc_issuer", "jwks_uri"])]
    jwks_file: Option<std::path::PathBuf>,
    /// A value the token's `aud` must contain.
    #[arg(long, env = "ASAP_AUTH_AUDIENCE")]
    audience: Option<String>,
    /// The scope `POST /asap` and `/asap/ws` need (default asap:execute; "" for any valid token).
    #[arg(long, env = "ASAP_AUTH_REQUIRED_SCOPE", value_name = "SCOPE")]
    required_scope: Option<String>,
    /// Which agent each token subject is: a JSON object `{"<agent urn>": "<sub>" | ["<sub>", ...]}`
    /// or a file holding one. The envelope sender must then be that agent.
    #[arg(long, env = "ASAP_AUTH_SUBJECT_MAP", value_name = "FILE|JSON")]
    subject_map: Option<String>,
    /// The claim naming the caller's agent (the envelope sender must equal it).
    #[arg(long, env = "ASAP_AUTH_CUSTOM_CLAIM", value_name = "NAME")]
    identity_claim: Option<String>,
    /// RFC 7662 introspection endpoint for opaque tokens (with --introspection-client-id/-secret).
    #[arg(
        long,
        env = "ASAP_AUTH_INTROSPECTION_URL",
        value_name = "URL",
        requires = "introspection_client_id"
    )]
    introspection_url: Option<String>,
    /// Client id the server introspects with.
    #[arg(long, env = "ASAP_AUTH_INTROSPECTION_CLIENT_ID")]
    introspection_client_id: Option<String>,
    /// Client secret the server introspects with.
    #[arg(
        long,
        env = "ASAP_AUTH_INTROSPECTION_CLIENT_SECRET",
        default_value = ""
    )]
    introspection_client_secret: String,
    /// Accept tokens without `exp` (the reference does; refused by default).
    #[arg(long)]
    allow_missing_exp: bool,
}

impl ServeAuthArgs {
    /// The settings, with a subject-map file read; errors name the flag.
    pub fn settings(&self) -> Result<AuthSettings, String> {
        let jwks_file = match &self.jwks_file {
            Some(p) => Some(
                std::fs::read_to_string(p)
                    .map_err(|e| format!("--jwks-file {}: {e}", p.display()))?,
            ),
            None => None,
        };
        let subject_map = match self.subject_map.as_deref().map(str::trim) {
            Some(text) if !text.is_empty() && !text.starts_with('{') => Some(
                std::fs::read_to_string(text).map_err(|e| format!("--subject-map {text}: {e}"))?,
            ),
            other => other.map(str::to_owned),
        };
        Ok(AuthSettings {
            oidc_issuer: self.oidc_issuer.clone(),
            jwks_uri: self.jwks_uri.clone(),
            jwks_file,
            audience: self.audience.clone(),
            required_scope: self.required_scope.clone(),
            subject_map,
            identity_claim: self.identity_claim.clone(),
            introspection: self.introspection_url.clone().map(|url| {
                (
                    url,
                    self.introspection_client_id.clone().unwrap_or_default(),
                    self.introspection_client_secret.clone(),
                )
            }),
            allow_missing_exp: self.allow_missing_exp,
            kid_miss_interval: None,
        })
    }
}

/// `asap send`: the bearer token to send.
#[derive(clap::Args, Debug, Default)]
pub struct SendAuthArgs {
    /// A bearer token to send as `Authorization: Bearer T`.
    #[arg(long, env = "ASAP_TOKEN", conflicts_with = "client_id")]
    pub token: Option<String>,
    /// OAuth2 client id (client credentials; with --client-secret and --token-url or --oidc-issuer).
    #[arg(long, env = "ASAP_CLIENT_ID")]
    pub client_id: Option<String>,
    /// OAuth2 client secret.
    #[arg(long, env = "ASAP_CLIENT_SECRET", default_value = "")]
    pub client_secret: String,
    /// OAuth2 token endpoint.
    #[arg(long, value_name = "URL", conflicts_with = "oidc_issuer")]
    pub token_url: Option<String>,
    /// OIDC issuer whose discovery names the token endpoint.
    #[arg(long, value_name = "URL")]
    pub oidc_issuer: Option<String>,
    /// Scopes to ask for (repeatable).
    #[arg(long = "scope", default_value = "asap:execute")]
    pub scopes: Vec<String>,
}

impl SendAuthArgs {
    /// Applies the flags to `client`.
    pub fn apply(
        &self,
        client: asap_tokio::client::Client,
    ) -> Result<asap_tokio::client::Client, String> {
        let scopes: Vec<&str> = self.scopes.iter().map(String::as_str).collect();
        match (&self.token, &self.client_id) {
            (Some(t), _) => Ok(client.with_token(t.clone())),
            (None, Some(id)) => match (&self.token_url, &self.oidc_issuer) {
                (Some(url), _) => client
                    .with_oauth2(url, id, &self.client_secret, &scopes)
                    .map_err(|e| e.to_string()),
                (None, Some(issuer)) => client
                    .with_oidc(issuer, id, &self.client_secret, &scopes)
                    .map_err(|e| e.to_string()),
                (None, None) => Err("--client-id needs --token-url or --oidc-issuer".into()),
            },
            (None, None) => Ok(client),
        }
    }
}
