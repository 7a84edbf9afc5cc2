//! The ASAP scopes and which route needs which (a pure function).

use std::fmt;

use http::Method;

/// An ASAP OAuth2 scope (spec §11.2 constants).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Scope {
    /// `asap:read`: query agent info (read-only routes under `/asap`, e.g. metrics).
    Read,
    /// `asap:execute`: send task requests (`POST /asap`, the `/asap/ws` binding).
    Execute,
    /// `asap:admin`: manage the agent (no built-in route; for operator routes an adapter adds).
    Admin,
}

impl Scope {
    /// The scope string.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Read => "asap:read",
            Self::Execute => "asap:execute",
            Self::Admin => "asap:admin",
        }
    }

    /// Parses a scope string.
    #[must_use]
    pub fn from_name(s: &str) -> Option<Self> {
        match s {
            "asap:read" => Some(Self::Read),
            "asap:execute" => Some(Self::Execute),
            "asap:admin" => Some(Self::Admin),
            _ => None,
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The path prefix the reference's OAuth2 middleware protects.
pub const PROTECTED_PREFIX: &str = "/asap";

/// The scope a request needs, `None` for public routes.
///
/// Under `/asap` (a path segment prefix: `/asap`, `/asap/...`; unlike the
/// reference's string prefix, `/asapX` is not included): `POST` and the
/// WebSocket upgrade `GET /asap/ws` need `asap:execute`, other methods
/// `asap:read`. `/.well-known/*`, `/health`, `/ready` and everything else are
/// public. Scopes are matched exactly: `asap:admin` does not imply the others
/// (as in the reference, which checks list membership).
///
/// ```
/// use asap_proto::auth::{required_scope, Scope};
/// use http::Method;
/// assert_eq!(required_scope(&Method::POST, "/asap"), Some(Scope::Execute));
/// assert_eq!(required_scope(&Method::GET, "/asap/metrics"), Some(Scope::Read));
/// assert_eq!(required_scope(&Method::GET, "/.well-known/asap/manifest.json"), None);
/// ```
#[must_use]
pub fn required_scope(method: &Method, path: &str) -> Option<Scope> {
    let rest = path.strip_prefix(PROTECTED_PREFIX)?;
    if !(rest.is_empty() || rest.starts_with('/')) {
        return None;
    }
    if *method == Method::POST || rest == "/ws" {
        Some(Scope::Execute)
    } else {
        Some(Scope::Read)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let cases = [
            (Method::POST, "/asap", Some(Scope::Execute)),
            (Method::GET, "/asap/ws", Some(Scope::Execute)),
            (Method::GET, "/asap/metrics", Some(Scope::Read)),
            (Method::GET, "/asap", Some(Scope::Read)),
            (Method::GET, "/asapX", None),
            (Method::GET, "/health", None),
            (Method::GET, "/ready", None),
            (Method::GET, "/.well-known/asap/health", None),
        ];
        for (m, p, want) in cases {
            assert_eq!(required_scope(&m, p), want, "{m} {p}");
        }
        for s in [Scope::Read, Scope::Execute, Scope::Admin] {
            assert_eq!(Scope::from_name(s.as_str()), Some(s));
        }
    }

    #[test]
    fn names_and_display_are_the_wire_spellings() {
        for (s, name) in [
            (Scope::Read, "asap:read"),
            (Scope::Execute, "asap:execute"),
            (Scope::Admin, "asap:admin"),
        ] {
            assert_eq!(s.as_str(), name);
            assert_eq!(s.to_string(), name);
            assert_eq!(Scope::from_name(name), Some(s));
        }
        assert_eq!(Scope::from_name("asap:write"), None);
        assert_eq!(Scope::from_name("ASAP:READ"), None);
        assert_eq!(
            required_scope(&Method::POST, "/asap/ws"),
            Some(Scope::Execute)
        );
        assert_eq!(
            required_scope(&Method::DELETE, "/asap/tasks"),
            Some(Scope::Read)
        );
    }
}
