//! Identity binding: which agent URN a token proves (a custom claim, or the
//! `ASAP_AUTH_SUBJECT_MAP` allow-list), and the envelope `sender` check.

use std::collections::BTreeMap;

use serde_json::Value;

use super::rejection::AuthRejection;
use crate::model::{AgentUrn, UnixTime, UrnError};

/// The reference's default agent-id claim name (spec §11.2 step 6).
pub const DEFAULT_AGENT_CLAIM: &str = "https://github.com/adriannoes/asap-protocol/agent_id";

/// `ASAP_AUTH_SUBJECT_MAP`: `{"<agent urn>": "<sub>" | ["<sub>", ...]}`,
/// read as "these subjects act as this agent".
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SubjectMap {
    by_subject: BTreeMap<String, AgentUrn>,
}

/// Why a subject map is refused (local configuration; the reference silently
/// ignores a bad map, we name the problem).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SubjectMapError {
    /// Not JSON.
    #[error("ASAP_AUTH_SUBJECT_MAP is not JSON: {0}")]
    Json(String),
    /// JSON, but not an object.
    #[error("ASAP_AUTH_SUBJECT_MAP must be a JSON object {{\"<agent urn>\": \"<sub>\" | [\"<sub>\", ...]}}")]
    NotAnObject,
    /// A key is not an agent URN.
    #[error("ASAP_AUTH_SUBJECT_MAP key {key:?} is not an agent URN: {error}")]
    InvalidAgent {
        /// The key.
        key: String,
        /// Why.
        error: UrnError,
    },
    /// A value is not a non-empty string or an array of them.
    #[error("ASAP_AUTH_SUBJECT_MAP value for {0:?} must be a non-empty string or an array of non-empty strings")]
    InvalidSubjects(String),
    /// One subject is listed for two agents (which would it prove?).
    #[error("ASAP_AUTH_SUBJECT_MAP lists subject {subject:?} for both {first} and {second}")]
    DuplicateSubject {
        /// The subject.
        subject: String,
        /// The first agent.
        first: String,
        /// The second agent.
        second: String,
    },
}

impl SubjectMap {
    /// Parses the map's JSON text.
    ///
    /// ```
    /// use asap_proto::auth::SubjectMap;
    /// let m = SubjectMap::parse(r#"{"urn:asap:agent:client":["client-app","ci-bot"]}"#).unwrap();
    /// assert_eq!(m.agent_for("ci-bot").map(|a| a.as_str()), Some("urn:asap:agent:client"));
    /// assert!(SubjectMap::parse("[1]").is_err());
    /// ```
    pub fn parse(text: &str) -> Result<Self, SubjectMapError> {
        let v: Value =
            serde_json::from_str(text).map_err(|e| SubjectMapError::Json(e.to_string()))?;
        let Value::Object(obj) = v else {
            return Err(SubjectMapError::NotAnObject);
        };
        let mut map = Self::default();
        for (key, subs) in obj {
            let agent =
                AgentUrn::new(key.clone()).map_err(|error| SubjectMapError::InvalidAgent {
                    key: key.clone(),
                    error,
                })?;
            let list: Vec<String> = match subs {
                Value::String(s) if !s.is_empty() => vec![s],
                Value::Array(items) if !items.is_empty() => items
                    .into_iter()
                    .map(|i| match i {
                        Value::String(s) if !s.is_empty() => Some(s),
                        _ => None,
                    })
                    .collect::<Option<_>>()
                    .ok_or_else(|| SubjectMapError::InvalidSubjects(key.clone()))?,
                _ => return Err(SubjectMapError::InvalidSubjects(key)),
            };
            for sub in list {
                if let Some(first) = map.by_subject.get(&sub) {
                    if *first != agent {
                        return Err(SubjectMapError::DuplicateSubject {
                            subject: sub,
                            first: first.as_str().to_owned(),
                            second: agent.as_str().to_owned(),
                        });
                    }
                }
                map.by_subject.insert(sub, agent.clone());
            }
        }
        Ok(map)
    }

    /// The agent a subject acts as.
    #[must_use]
    pub fn agent_for(&self, subject: &str) -> Option<&AgentUrn> {
        self.by_subject.get(subject)
    }

    /// Whether the map is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.by_subject.is_empty()
    }
}

/// How tokens are bound to agent identities.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityConfig {
    /// The claim carrying the agent URN. Default [`DEFAULT_AGENT_CLAIM`].
    pub agent_claim: String,
    /// Subjects allowed to act as agents, for tokens without the claim. Default empty.
    pub subject_map: SubjectMap,
    /// Whether a token that proves no agent is rejected (403). Default
    /// `false`: it is accepted unbound, as the reference does, and
    /// [`Identity::check_sender`] lets any sender through for it.
    pub require_agent: bool,
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self {
            agent_claim: DEFAULT_AGENT_CLAIM.to_owned(),
            subject_map: SubjectMap::default(),
            require_agent: false,
        }
    }
}

/// How the agent of an [`Identity`] was established.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Binding {
    /// The agent-id claim of a verified JWT.
    Claim,
    /// The subject map.
    SubjectMap,
    /// No agent proven.
    Unbound,
}

/// Where the token was checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TokenKind {
    /// A JWT verified locally.
    Jwt,
    /// An opaque token the introspection endpoint vouched for.
    Introspected,
    /// A user-supplied validator vouched for it (spec 11.1 bearer mode).
    Custom,
}

/// Who an authenticated request comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Identity {
    /// `sub`.
    pub subject: String,
    /// Granted scopes.
    pub scopes: Vec<String>,
    /// The agent the token proves, if any.
    pub agent: Option<AgentUrn>,
    /// How [`agent`](Self::agent) was established.
    pub binding: Binding,
    /// Token expiry, when known.
    pub expires_at: Option<UnixTime>,
    /// JWT or introspected.
    pub kind: TokenKind,
}

impl Identity {
    /// An identity a user-supplied validator established
    /// ([`ServerAuth::custom`](crate::server::ServerAuth::custom)): bound to
    /// `agent` when given (the envelope `sender` must then be it).
    #[must_use]
    pub fn new(subject: impl Into<String>, scopes: Vec<String>, agent: Option<AgentUrn>) -> Self {
        let binding = if agent.is_some() {
            Binding::Claim
        } else {
            Binding::Unbound
        };
        Self {
            subject: subject.into(),
            scopes,
            agent,
            binding,
            expires_at: None,
            kind: TokenKind::Custom,
        }
    }

    /// The same identity, expiring at `at` (a WebSocket connection ends then).
    #[must_use]
    pub fn expiring(mut self, at: UnixTime) -> Self {
        self.expires_at = Some(at);
        self
    }
}

impl Identity {
    /// Whether `scope` was granted (exact match).
    #[must_use]
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }

    /// Checks an envelope `sender` against the proven agent: a mismatch is
    /// [`AuthRejection::SenderMismatch`] (403). An unbound identity passes
    /// (configure [`IdentityConfig::require_agent`] to refuse those earlier).
    ///
    /// Unlike the reference's OAuth2 path, which never looks at the envelope.
    pub fn check_sender(&self, sender: &str) -> Result<(), AuthRejection> {
        match &self.agent {
            Some(a) if a.as_str() != sender => Err(AuthRejection::SenderMismatch {
                proven: a.clone(),
                sender: sender.to_owned(),
            }),
            _ => Ok(()),
        }
    }
}

/// The agent a token's claims (or subject) prove under `config`.
pub(crate) fn bind(
    config: &IdentityConfig,
    subject: &str,
    claim: Option<&Value>,
) -> Result<(Option<AgentUrn>, Binding), String> {
    if let Some(v) = claim {
        let Value::String(s) = v else {
            return Err(format!("claim {:?} is not a string", config.agent_claim));
        };
        return AgentUrn::new(s.trim())
            .map(|a| (Some(a), Binding::Claim))
            .map_err(|e| e.to_string());
    }
    Ok(match config.subject_map.agent_for(subject) {
        Some(a) => (Some(a.clone()), Binding::SubjectMap),
        None => (None, Binding::Unbound),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subject_map_errors_are_typed() {
        assert!(matches!(
            SubjectMap::parse("{"),
            Err(SubjectMapError::Json(_))
        ));
        assert_eq!(
            SubjectMap::parse(r#""x""#),
            Err(SubjectMapError::NotAnObject)
        );
        assert!(matches!(
            SubjectMap::parse(r#"{"agent":"x"}"#),
            Err(SubjectMapError::InvalidAgent { .. })
        ));
        assert_eq!(
            SubjectMap::parse(r#"{"urn:asap:agent:a":[1]}"#),
            Err(SubjectMapError::InvalidSubjects("urn:asap:agent:a".into()))
        );
        assert_eq!(
            SubjectMap::parse(r#"{"urn:asap:agent:a":""}"#),
            Err(SubjectMapError::InvalidSubjects("urn:asap:agent:a".into()))
        );
        assert_eq!(
            SubjectMap::parse(r#"{"urn:asap:agent:a":"s","urn:asap:agent:b":["s"]}"#),
            Err(SubjectMapError::DuplicateSubject {
                subject: "s".into(),
                first: "urn:asap:agent:a".into(),
                second: "urn:asap:agent:b".into()
            })
        );
        assert!(SubjectMap::parse("{}").unwrap().is_empty());
    }

    #[test]
    fn binding_and_sender_check() {
        let config = IdentityConfig {
            subject_map: SubjectMap::parse(r#"{"urn:asap:agent:client":"client-app"}"#).unwrap(),
            ..Default::default()
        };
        let claim = Value::String(" urn:asap:agent:echo ".into());
        let (a, b) = bind(&config, "client-app", Some(&claim)).unwrap();
        assert_eq!(
            (a.unwrap().as_str(), b),
            ("urn:asap:agent:echo", Binding::Claim)
        );
        let (a, b) = bind(&config, "client-app", None).unwrap();
        assert_eq!(
            (a.clone().unwrap().as_str(), b),
            ("urn:asap:agent:client", Binding::SubjectMap)
        );
        assert_eq!(
            bind(&config, "nobody", None).unwrap(),
            (None, Binding::Unbound)
        );
        assert!(bind(&config, "x", Some(&Value::from(3))).is_err());
        assert!(bind(&config, "x", Some(&Value::from("Not A Urn"))).is_err());
        let id = Identity {
            subject: "client-app".into(),
            scopes: vec![],
            agent: a,
            binding: b,
            expires_at: None,
            kind: TokenKind::Jwt,
        };
        assert!(id.check_sender("urn:asap:agent:client").is_ok());
        assert_eq!(
            id.check_sender("urn:asap:agent:mallory"),
            Err(AuthRejection::SenderMismatch {
                proven: AgentUrn::new("urn:asap:agent:client").unwrap(),
                sender: "urn:asap:agent:mallory".into()
            })
        );
    }

    #[test]
    fn subject_lists_must_be_non_empty_and_scopes_match_exactly() {
        for text in [
            r#"{"urn:asap:agent:a":[]}"#,
            r#"{"urn:asap:agent:a":[""]}"#,
            r#"{"urn:asap:agent:a":["s",""]}"#,
            r#"{"urn:asap:agent:a":7}"#,
        ] {
            assert_eq!(
                SubjectMap::parse(text),
                Err(SubjectMapError::InvalidSubjects("urn:asap:agent:a".into())),
                "{text}"
            );
        }
        // The same subject twice for the same agent is no conflict.
        let m = SubjectMap::parse(r#"{"urn:asap:agent:a":["s","s","t"]}"#).unwrap();
        assert!(!m.is_empty());
        assert_eq!(
            m.agent_for("s").map(AgentUrn::as_str),
            Some("urn:asap:agent:a")
        );
        assert_eq!(
            m.agent_for("t").map(AgentUrn::as_str),
            Some("urn:asap:agent:a")
        );
        assert_eq!(m.agent_for("u"), None);

        let id = Identity::new(
            "client-app",
            vec!["asap:read".into(), "asap:execute".into()],
            None,
        );
        assert!(id.has_scope("asap:execute"));
        assert!(id.has_scope("asap:read"));
        assert!(!id.has_scope("asap:admin"));
        assert!(!id.has_scope("asap:exec"));
        assert_eq!((id.binding, id.kind), (Binding::Unbound, TokenKind::Custom));
        // An unbound identity lets any sender through.
        assert_eq!(id.check_sender("urn:asap:agent:anyone"), Ok(()));
        let at = UnixTime::from_secs(1_800_000_000);
        let bound = Identity::new(
            "s",
            vec![],
            Some(AgentUrn::new("urn:asap:agent:a").unwrap()),
        )
        .expiring(at);
        assert_eq!(
            (bound.binding, bound.expires_at),
            (Binding::Claim, Some(at))
        );
        assert_eq!(bound.subject, "s");
    }
}
