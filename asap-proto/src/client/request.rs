//! Building `asap.send` requests exactly as the reference client does.

use http::header::{HeaderName, HeaderValue, ACCEPT, ACCEPT_ENCODING, CONTENT_TYPE, USER_AGENT};
use serde_json::{Map, Value};

use super::ClientError;
use crate::canonical_json::{self, JsonStyle};
use crate::jsonrpc::{RequestId, JSONRPC_VERSION, METHOD_SEND};
use crate::model::{Envelope, Ulid};

/// `X-Idempotency-Key`, sent with the same ULID as `params.idempotency_key`.
pub const IDEMPOTENCY_KEY_HEADER: &str = "x-idempotency-key";
/// Path of the JSON-RPC endpoint below the base URL.
pub const ASAP_PATH: &str = "/asap";
/// Path of the WebSocket endpoint (spec 13.1).
pub const WEBSOCKET_PATH: &str = "/asap/ws";
/// Path of the manifest below the base URL.
pub const MANIFEST_PATH: &str = "/.well-known/asap/manifest.json";
/// Path of the health document below the base URL.
pub const HEALTH_PATH: &str = "/.well-known/asap/health";
/// `User-Agent` sent by default.
pub const DEFAULT_USER_AGENT: &str = concat!("asap-rs/", env!("CARGO_PKG_VERSION"));
/// `Accept-Encoding` of `asap.send` by default: this core does not decompress.
pub const DEFAULT_ACCEPT_ENCODING: &str = "identity";

/// Whether plain `http://` is acceptable for a base URL (spec 14).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HttpPolicy {
    /// `https` everywhere, `http` only for loopback hosts (`localhost`,
    /// `127.0.0.0/8`, `::1`) — the reference's `require_https=True`.
    #[default]
    LoopbackOnly,
    /// `http` allowed for any host (the caller opted in).
    AllowInsecure,
}

/// A validated agent base URL (`https://agent.example.com`, `http://127.0.0.1:8000/prefix`),
/// stored without trailing `/` so the well-known paths can be appended.
///
/// ```
/// use asap_proto::client::{BaseUrl, HttpPolicy};
/// let b = BaseUrl::parse("http://localhost:8000/", HttpPolicy::LoopbackOnly).unwrap();
/// assert_eq!(b.asap_url(), "http://localhost:8000/asap");
/// assert!(BaseUrl::parse("http://example.com", HttpPolicy::LoopbackOnly).is_err());
/// assert!(BaseUrl::parse("http://example.com", HttpPolicy::AllowInsecure).is_ok());
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct BaseUrl {
    text: String,
    https: bool,
    host: String,
    websocket: bool,
}

impl BaseUrl {
    /// Validates `url`: scheme `http`/`https` (or `ws`/`wss`: the agent is
    /// then reached over WebSocket, spec 13.1), a host, no query or fragment,
    /// and the [`HttpPolicy`] rule for `http`/`ws`.
    ///
    /// ```
    /// use asap_proto::client::{BaseUrl, HttpPolicy};
    /// let b = BaseUrl::parse("ws://127.0.0.1:8000/prefix/asap/ws", HttpPolicy::LoopbackOnly).unwrap();
    /// assert!(b.is_websocket());
    /// assert_eq!(b.as_str(), "http://127.0.0.1:8000/prefix");
    /// assert_eq!(b.websocket_url(), "ws://127.0.0.1:8000/prefix/asap/ws");
    /// ```
    pub fn parse(url: &str, policy: HttpPolicy) -> Result<Self, ClientError> {
        let invalid = |reason: &str| ClientError::InvalidBaseUrl {
            url: url.to_owned(),
            reason: reason.to_owned(),
        };
        let trimmed = url.trim().trim_end_matches('/');
        let (websocket, text) = match trimmed.split_once("://") {
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("ws") => (
                true,
                format!("http://{}", rest.trim_end_matches(WEBSOCKET_PATH)),
            ),
            Some((scheme, rest)) if scheme.eq_ignore_ascii_case("wss") => (
                true,
                format!("https://{}", rest.trim_end_matches(WEBSOCKET_PATH)),
            ),
            _ => (false, trimmed.to_owned()),
        };
        let text = text.trim_end_matches('/');
        let uri: http::Uri = text
            .parse()
            .map_err(|e: http::uri::InvalidUri| invalid(&e.to_string()))?;
        let https = match uri.scheme_str() {
            Some(s) if s.eq_ignore_ascii_case("https") => true,
            Some(s) if s.eq_ignore_ascii_case("http") => false,
            Some(_) => return Err(invalid("the scheme must be http, https, ws or wss")),
            None => return Err(invalid("a scheme (https://) is required")),
        };
        let host = uri
            .host()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid("a host is required"))?
            .to_ascii_lowercase();
        if uri.query().is_some() {
            return Err(invalid("a base URL cannot have a query"));
        }
        let base = Self {
            text: text.to_owned(),
            https,
            host,
            websocket,
        };
        if !https && policy == HttpPolicy::LoopbackOnly && !base.is_loopback() {
            return Err(ClientError::InsecureUrl {
                url: url.to_owned(),
            });
        }
        Ok(base)
    }

    /// The URL without trailing `/`.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether the scheme is `https`.
    #[must_use]
    pub fn is_https(&self) -> bool {
        self.https
    }

    /// The host, lower-cased (IPv6 in brackets).
    #[must_use]
    pub fn host(&self) -> &str {
        &self.host
    }

    /// Whether the host is a loopback name or address.
    #[must_use]
    pub fn is_loopback(&self) -> bool {
        let h = self.host.trim_start_matches('[').trim_end_matches(']');
        h == "localhost"
            || h.parse::<core::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    }

    /// Whether the URL was given as `ws://`/`wss://` (talk to it over WebSocket).
    #[must_use]
    pub fn is_websocket(&self) -> bool {
        self.websocket
    }

    /// `ws(s)://{host/prefix}/asap/ws`, the WebSocket endpoint (spec 13.1).
    #[must_use]
    pub fn websocket_url(&self) -> String {
        let rest = self.text.split_once("://").map_or("", |(_, r)| r);
        let scheme = if self.https { "wss" } else { "ws" };
        format!("{scheme}://{rest}{WEBSOCKET_PATH}")
    }

    /// `{base}/asap`.
    #[must_use]
    pub fn asap_url(&self) -> String {
        format!("{}{ASAP_PATH}", self.text)
    }

    /// `{base}/.well-known/asap/manifest.json`.
    #[must_use]
    pub fn manifest_url(&self) -> String {
        format!("{}{MANIFEST_PATH}", self.text)
    }

    /// `{base}/.well-known/asap/health`.
    #[must_use]
    pub fn health_url(&self) -> String {
        format!("{}{HEALTH_PATH}", self.text)
    }
}

impl std::fmt::Display for BaseUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// Client settings that shape requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Rule for `http://` base URLs. Default: loopback only.
    pub http_policy: HttpPolicy,
    /// `Accept-Encoding` sent with `asap.send`. Default `identity`: this core
    /// does not decompress (the reference server never compresses responses;
    /// the reference client sends `br, gzip, identity`).
    pub accept_encoding: String,
    /// `User-Agent`, or `None` to leave it to the HTTP library. Default [`DEFAULT_USER_AGENT`].
    pub user_agent: Option<String>,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            http_policy: HttpPolicy::LoopbackOnly,
            accept_encoding: DEFAULT_ACCEPT_ENCODING.to_owned(),
            user_agent: Some(DEFAULT_USER_AGENT.to_owned()),
        }
    }
}

/// One `asap.send` request, serialised once and resent byte-for-byte on
/// every retry (same envelope id, JSON-RPC id and idempotency key).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PreparedSend {
    request_id: RequestId,
    idempotency_key: String,
    envelope_id: String,
    url: String,
    body: Vec<u8>,
    headers: http::HeaderMap,
}

impl PreparedSend {
    /// The JSON-RPC id (`req-<n>`).
    #[must_use]
    pub fn request_id(&self) -> &RequestId {
        &self.request_id
    }
    /// The idempotency key (header and `params.idempotency_key`).
    #[must_use]
    pub fn idempotency_key(&self) -> &str {
        &self.idempotency_key
    }
    /// The id of the envelope being sent.
    #[must_use]
    pub fn envelope_id(&self) -> &str {
        &self.envelope_id
    }
    /// The endpoint URL (`{base}/asap`).
    #[must_use]
    pub fn url(&self) -> &str {
        &self.url
    }
    /// The request body (Python `json.dumps` style, as the reference client writes it).
    #[must_use]
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The HTTP request to perform. The adapter adds transport headers
    /// (`Host`, `Content-Length`) and, if configured, `Authorization`.
    #[must_use]
    pub fn http_request(&self) -> http::Request<Vec<u8>> {
        let mut req = http::Request::new(self.body.clone());
        *req.method_mut() = http::Method::POST;
        // The URL was validated by `BaseUrl`; a failure here would leave the default `/`.
        if let Ok(uri) = self.url.parse() {
            *req.uri_mut() = uri;
        }
        *req.headers_mut() = self.headers.clone();
        req
    }
}

/// Builds requests for one agent: the per-client `req-<n>` counter and the
/// headers the reference client sends.
///
/// ```
/// use asap_proto::client::{ClientConfig, ClientCore};
/// use asap_proto::model::{AgentUrn, Envelope, Payload, TaskRequest, Timestamp, Ulid, UnixTime};
/// let mut core = ClientCore::new("http://127.0.0.1:8000", ClientConfig::default()).unwrap();
/// let env = Envelope::new(
///     "01KDXZ0000ENVREQ0000000001".into(),
///     Timestamp::from_unix(UnixTime::from_secs(1_767_225_600)),
///     AgentUrn::new("urn:asap:agent:client").unwrap(),
///     AgentUrn::new("urn:asap:agent:echo-server").unwrap(),
///     Payload::TaskRequest(TaskRequest::new("c", "echo", Default::default())),
/// );
/// let key = Ulid::new(UnixTime::from_secs(1_767_225_600), 7); // caller's time + randomness
/// let prepared = core.prepare_send(&env, key);
/// let req = prepared.http_request();
/// assert_eq!(req.uri(), "http://127.0.0.1:8000/asap");
/// assert_eq!(req.headers()["x-idempotency-key"], key.to_string().as_str());
/// assert!(req.body().starts_with(br#"{"jsonrpc": "2.0", "method": "asap.send""#));
/// assert_eq!(prepared.request_id().clone(), "req-1".into());
/// ```
#[derive(Debug, Clone)]
pub struct ClientCore {
    base: BaseUrl,
    config: ClientConfig,
    sent: u64,
}

impl ClientCore {
    /// A core for the agent at `base_url`.
    pub fn new(base_url: &str, config: ClientConfig) -> Result<Self, ClientError> {
        let base = BaseUrl::parse(base_url, config.http_policy)?;
        Ok(Self {
            base,
            config,
            sent: 0,
        })
    }

    /// The agent's base URL.
    #[must_use]
    pub fn base_url(&self) -> &BaseUrl {
        &self.base
    }

    /// The configuration.
    #[must_use]
    pub fn config(&self) -> &ClientConfig {
        &self.config
    }

    /// Serialises an `asap.send` for `envelope` with the next `req-<n>` id and
    /// the caller's fresh `idempotency_key` (a ULID from the caller's clock and
    /// randomness, as the reference generates one per `send()`).
    pub fn prepare_send(&mut self, envelope: &Envelope, idempotency_key: Ulid) -> PreparedSend {
        self.sent = self.sent.saturating_add(1);
        let request_id = RequestId::Str(format!("req-{}", self.sent));
        let key = idempotency_key.to_string();
        let mut params = Map::new();
        params.insert(
            "envelope".into(),
            serde_json::to_value(envelope).unwrap_or(Value::Null),
        );
        params.insert("idempotency_key".into(), Value::String(key.clone()));
        let mut top = Map::new();
        top.insert("jsonrpc".into(), JSONRPC_VERSION.into());
        top.insert("method".into(), METHOD_SEND.into());
        top.insert("params".into(), Value::Object(params));
        top.insert(
            "id".into(),
            serde_json::to_value(&request_id).unwrap_or(Value::Null),
        );
        let body =
            canonical_json::to_string(&Value::Object(top), JsonStyle::default()).into_bytes();

        let mut headers = http::HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        if let Ok(v) = HeaderValue::from_str(&key) {
            headers.insert(HeaderName::from_static(IDEMPOTENCY_KEY_HEADER), v);
        }
        if let Ok(v) = HeaderValue::from_str(&self.config.accept_encoding) {
            headers.insert(ACCEPT_ENCODING, v);
        }
        headers.insert(ACCEPT, HeaderValue::from_static("*/*"));
        if let Some(ua) = self
            .config
            .user_agent
            .as_deref()
            .and_then(|u| HeaderValue::from_str(u).ok())
        {
            headers.insert(USER_AGENT, ua);
        }
        PreparedSend {
            request_id,
            idempotency_key: key,
            envelope_id: envelope.id.clone(),
            url: self.base.asap_url(),
            body,
            headers,
        }
    }
}

/// A `GET` for a well-known document, with `Accept: application/json` and
/// `If-None-Match` when an ETag is known.
pub(crate) fn get_request(url: &str, etag: Option<&str>) -> Result<http::Request<Vec<u8>>, String> {
    let mut builder = http::Request::get(url).header(ACCEPT, "application/json");
    if let Some(tag) = etag {
        builder = builder.header(http::header::IF_NONE_MATCH, tag);
    }
    builder.body(Vec::new()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_url_rules() {
        for ok in [
            "https://agent.example.com",
            "https://agent.example.com/",
            "http://localhost:8000",
            "http://127.0.0.1",
            "http://127.8.9.1:1/x/",
            "http://[::1]:8000",
            "HTTPS://Agent.Example.com/prefix",
        ] {
            let b = BaseUrl::parse(ok, HttpPolicy::LoopbackOnly).unwrap();
            assert!(!b.as_str().ends_with('/'), "{ok}");
        }
        for bad in [
            "",
            "agent.example.com",
            "ftp://agent.example.com",
            "https://",
            "https://a.example/?q=1",
            "http://10.0.0.1",
            "http://example.com",
            "ws://example.com",
            "gopher://localhost",
        ] {
            assert!(
                BaseUrl::parse(bad, HttpPolicy::LoopbackOnly).is_err(),
                "{bad:?}"
            );
        }
        let err = BaseUrl::parse("http://example.com", HttpPolicy::LoopbackOnly).unwrap_err();
        assert!(matches!(err, ClientError::InsecureUrl { .. }));
        let b = BaseUrl::parse("http://[::1]:8000/p/", HttpPolicy::LoopbackOnly).unwrap();
        assert_eq!(
            b.manifest_url(),
            "http://[::1]:8000/p/.well-known/asap/manifest.json"
        );
        assert_eq!(
            b.health_url(),
            "http://[::1]:8000/p/.well-known/asap/health"
        );
        assert_eq!(b.to_string(), "http://[::1]:8000/p");
        assert!(!b.is_https());
        assert_eq!(b.host(), "[::1]");
    }

    #[test]
    fn websocket_urls_and_accessors_are_exact() {
        let ws = BaseUrl::parse(
            "ws://127.0.0.1:8000/prefix/asap/ws",
            HttpPolicy::LoopbackOnly,
        )
        .unwrap();
        assert!(ws.is_websocket());
        assert!(!ws.is_https());
        assert_eq!(ws.as_str(), "http://127.0.0.1:8000/prefix");
        assert_eq!(ws.websocket_url(), "ws://127.0.0.1:8000/prefix/asap/ws");
        assert_eq!(ws.asap_url(), "http://127.0.0.1:8000/prefix/asap");
        let wss =
            BaseUrl::parse("WSS://Agent.Example.com/asap/ws/", HttpPolicy::LoopbackOnly).unwrap();
        assert!(wss.is_websocket());
        assert!(wss.is_https());
        assert_eq!(wss.as_str(), "https://Agent.Example.com");
        assert_eq!(wss.host(), "agent.example.com");
        assert_eq!(wss.websocket_url(), "wss://Agent.Example.com/asap/ws");
        let https =
            BaseUrl::parse(" https://agent.example.com/p/ ", HttpPolicy::LoopbackOnly).unwrap();
        assert!(!https.is_websocket());
        assert!(https.is_https());
        assert!(!https.is_loopback());
        assert_eq!(https.as_str(), "https://agent.example.com/p");
        assert_eq!(https.asap_url(), "https://agent.example.com/p/asap");
        assert_eq!(https.websocket_url(), "wss://agent.example.com/p/asap/ws");
        let http = BaseUrl::parse("http://localhost:8000/", HttpPolicy::LoopbackOnly).unwrap();
        assert!(!http.is_websocket());
        assert!(http.is_loopback());
        assert_eq!(http.websocket_url(), "ws://localhost:8000/asap/ws");
        // Opted in, any http host is fine.
        let insecure = BaseUrl::parse("http://example.com", HttpPolicy::AllowInsecure).unwrap();
        assert!(!insecure.is_loopback());
        assert_eq!(insecure.as_str(), "http://example.com");
    }

    #[test]
    fn prepared_sends_carry_the_reference_headers_and_body() {
        let env = Envelope::new(
            "01KDXZ0000ENVREQ0000000001".into(),
            crate::model::Timestamp::from_unix(crate::model::UnixTime::from_secs(1_767_225_600)),
            crate::model::AgentUrn::new("urn:asap:agent:client").unwrap(),
            crate::model::AgentUrn::new("urn:asap:agent:echo-server").unwrap(),
            crate::model::Payload::TaskRequest(crate::model::TaskRequest::new(
                "c",
                "echo",
                Default::default(),
            )),
        );
        let config = ClientConfig {
            http_policy: HttpPolicy::AllowInsecure,
            accept_encoding: "gzip".into(),
            user_agent: Some("ua/1".into()),
        };
        let mut core = ClientCore::new("http://example.com:8000/p/", config.clone()).unwrap();
        assert_eq!(core.config(), &config);
        assert_eq!(core.base_url().as_str(), "http://example.com:8000/p");
        let key = Ulid::new(crate::model::UnixTime::from_secs(1_767_225_600), 7);
        let p = core.prepare_send(&env, key);
        let key_text = key.to_string();
        assert_eq!(p.request_id(), &RequestId::Str("req-1".into()));
        assert_eq!(p.idempotency_key(), key_text);
        assert_eq!(p.envelope_id(), "01KDXZ0000ENVREQ0000000001");
        assert_eq!(p.url(), "http://example.com:8000/p/asap");
        let body = std::str::from_utf8(p.body()).unwrap();
        assert!(
            body.starts_with(r#"{"jsonrpc": "2.0", "method": "asap.send", "params": {"envelope": {"id": "01KDXZ0000ENVREQ0000000001""#),
            "{body}"
        );
        assert!(
            body.ends_with(&format!(
                r#""idempotency_key": "{key_text}"}}, "id": "req-1"}}"#
            )),
            "{body}"
        );
        let req = p.http_request();
        assert_eq!(req.method(), http::Method::POST);
        assert_eq!(req.uri(), "http://example.com:8000/p/asap");
        assert_eq!(req.body().as_slice(), p.body());
        let h = req.headers();
        assert_eq!(h[CONTENT_TYPE], "application/json");
        assert_eq!(h[IDEMPOTENCY_KEY_HEADER], key_text.as_str());
        assert_eq!(h[ACCEPT_ENCODING], "gzip");
        assert_eq!(h[ACCEPT], "*/*");
        assert_eq!(h[USER_AGENT], "ua/1");
        assert_eq!(h.len(), 5);
        // The counter moves on; without a User-Agent none is sent.
        let mut plain = ClientCore::new(
            "https://a.example",
            ClientConfig {
                user_agent: None,
                ..ClientConfig::default()
            },
        )
        .unwrap();
        plain.prepare_send(&env, key);
        let second = plain.prepare_send(&env, key);
        assert_eq!(second.request_id(), &RequestId::Str("req-2".into()));
        let h = second.http_request().headers().clone();
        assert!(h.get(USER_AGENT).is_none());
        assert_eq!(h[ACCEPT_ENCODING], DEFAULT_ACCEPT_ENCODING);
    }

    #[test]
    fn well_known_gets_ask_for_json_with_the_etag() {
        let r = get_request("https://a.example/.well-known/asap/health", Some("\"v1\"")).unwrap();
        assert_eq!(r.method(), http::Method::GET);
        assert_eq!(r.uri(), "https://a.example/.well-known/asap/health");
        assert_eq!(r.headers()[ACCEPT], "application/json");
        assert_eq!(r.headers()[http::header::IF_NONE_MATCH], "\"v1\"");
        assert!(r.body().is_empty());
        let r = get_request("https://a.example/x", None).unwrap();
        assert!(r.headers().get(http::header::IF_NONE_MATCH).is_none());
        assert_eq!(r.headers().len(), 1);
        assert!(get_request("not a url", None).is_err());
    }
}
