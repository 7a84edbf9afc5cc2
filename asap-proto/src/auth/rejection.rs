//! [`AuthRejection`]: why a request is refused, and its HTTP answer
//! (401 + RFC 6750 `WWW-Authenticate`, 403, 503) with a FastAPI-style body.

use http::{header, HeaderValue, StatusCode};

use super::scope::Scope;
use super::validator::TokenRejection;
use crate::model::AgentUrn;

/// Why a request is not authenticated or not authorized.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthRejection {
    /// No `Authorization: Bearer <token>` (missing, empty, or another scheme).
    #[error("no bearer token in the Authorization header")]
    MissingToken,
    /// The token is refused.
    #[error("invalid bearer token: {0}")]
    InvalidToken(TokenRejection),
    /// The token lacks the scope the route needs.
    #[error("token lacks scope {required}")]
    InsufficientScope {
        /// The scope needed.
        required: Scope,
    },
    /// The token proves no agent and the configuration requires one.
    #[error("token is not bound to an agent identity")]
    IdentityUnbound,
    /// The envelope `sender` is not the agent the token proves.
    #[error("envelope sender {sender:?} is not the authenticated agent {proven}")]
    SenderMismatch {
        /// The agent the token proves.
        proven: AgentUrn,
        /// The envelope's sender.
        sender: String,
    },
    /// The issuer's keys cannot be had (IdP unreachable, nothing cached).
    #[error("the token issuer's key set is unavailable")]
    KeysUnavailable,
    /// The introspection endpoint cannot be reached.
    #[error("the token introspection endpoint is unavailable")]
    IntrospectionUnavailable,
}

impl AuthRejection {
    /// The HTTP status: 401, 403 or 503.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MissingToken | Self::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            Self::InsufficientScope { .. }
            | Self::IdentityUnbound
            | Self::SenderMismatch { .. } => StatusCode::FORBIDDEN,
            Self::KeysUnavailable | Self::IntrospectionUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
        }
    }

    /// The RFC 6750 challenge: `Bearer` for a missing token, `Bearer
    /// error="invalid_token"`, `Bearer error="insufficient_scope",
    /// scope="..."`; none for the other refusals.
    #[must_use]
    pub fn www_authenticate(&self) -> Option<HeaderValue> {
        Some(match self {
            Self::MissingToken => HeaderValue::from_static("Bearer"),
            Self::InvalidToken(_) => HeaderValue::from_static(r#"Bearer error="invalid_token""#),
            Self::InsufficientScope { required } => HeaderValue::from_static(match required {
                Scope::Read => r#"Bearer error="insufficient_scope", scope="asap:read""#,
                Scope::Execute => r#"Bearer error="insufficient_scope", scope="asap:execute""#,
                Scope::Admin => r#"Bearer error="insufficient_scope", scope="asap:admin""#,
            }),
            _ => return None,
        })
    }

    /// The `detail` text of the body (the reference's wording where it has one;
    /// no token internals are disclosed).
    #[must_use]
    pub fn detail(&self) -> &'static str {
        match self {
            Self::MissingToken => "Authentication required",
            Self::InvalidToken(_) => "Invalid authentication token",
            Self::InsufficientScope { .. } => "Insufficient scope",
            Self::IdentityUnbound => "Token is not bound to an agent identity",
            Self::SenderMismatch { .. } => "Sender does not match authenticated identity",
            Self::KeysUnavailable | Self::IntrospectionUnavailable => {
                "Authentication service unavailable"
            }
        }
    }

    /// The JSON body `{"detail":"..."}`.
    #[must_use]
    pub fn body(&self) -> Vec<u8> {
        serde_json::to_vec(&serde_json::json!({ "detail": self.detail() })).unwrap_or_default()
    }

    /// The whole HTTP answer: status, `WWW-Authenticate` when due,
    /// `Content-Type: application/json`, body.
    #[must_use]
    pub fn to_response(&self) -> http::Response<Vec<u8>> {
        let mut r = http::Response::new(self.body());
        *r.status_mut() = self.status();
        let h = r.headers_mut();
        if let Some(v) = self.www_authenticate() {
            h.insert(header::WWW_AUTHENTICATE, v);
        }
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        r
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        let r = AuthRejection::InvalidToken(TokenRejection::BadSignature).to_response();
        assert_eq!(r.status(), 401);
        assert_eq!(
            r.headers()["www-authenticate"],
            r#"Bearer error="invalid_token""#
        );
        assert_eq!(r.body(), br#"{"detail":"Invalid authentication token"}"#);
        let r = AuthRejection::MissingToken.to_response();
        assert_eq!(r.headers()["www-authenticate"], "Bearer");
        assert_eq!(r.body(), br#"{"detail":"Authentication required"}"#);
        let r = AuthRejection::InsufficientScope {
            required: Scope::Execute,
        }
        .to_response();
        assert_eq!(r.status(), 403);
        assert_eq!(
            r.headers()["www-authenticate"],
            r#"Bearer error="insufficient_scope", scope="asap:execute""#
        );
        let r = AuthRejection::KeysUnavailable.to_response();
        assert_eq!(r.status(), 503);
        assert!(r.headers().get("www-authenticate").is_none());
        assert_eq!(
            r.body(),
            br#"{"detail":"Authentication service unavailable"}"#
        );
    }
}
