//! Entities: the agent manifest and the task/conversation/message/artifact/snapshot records.

use serde::{Deserialize, Deserializer, Serialize};

use super::ids::AgentUrn;
use super::lax;
use super::payload::MessageRole;
use super::timestamp::Timestamp;
use super::JsonObject;
use crate::task::TaskStatus;

/// Default manifest freshness the reference serves (`ttl_seconds`).
pub const DEFAULT_MANIFEST_TTL_SECONDS: u64 = 300;
/// Deepest sub-task nesting (`Task.depth`).
pub const MAX_TASK_DEPTH: i64 = 10;
/// Authentication schemes a manifest may list (compared lower-cased).
pub const SUPPORTED_AUTH_SCHEMES: [&str; 2] = ["basic", "bearer"];

/// An agent's self-description, served at `/.well-known/asap/manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Agent URN.
    pub id: AgentUrn,
    /// Display name.
    pub name: String,
    /// Agent version (PEP 440, as the reference validates it).
    #[serde(deserialize_with = "pep440")]
    pub version: String,
    /// What the agent does.
    pub description: String,
    /// What the agent offers.
    pub capabilities: Capability,
    /// Where to reach it.
    pub endpoints: Endpoint,
    /// How to authenticate.
    #[serde(default)]
    pub auth: Option<AuthScheme>,
    /// Signature (never produced or verified in 1.1).
    #[serde(default)]
    pub signature: Option<String>,
    /// How long clients may cache the manifest, seconds (≥ 1).
    #[serde(default = "default_ttl", deserialize_with = "positive_u64")]
    pub ttl_seconds: u64,
}

fn default_ttl() -> u64 {
    DEFAULT_MANIFEST_TTL_SECONDS
}

fn positive_u64<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    let n = lax::lax_int(d)?;
    if n < 1 {
        return Err(serde::de::Error::custom(format!(
            "Input should be greater than or equal to 1, got {n}"
        )));
    }
    Ok(n as u64)
}

fn pep440<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let s = String::deserialize(d)?;
    if is_pep440_version(&s) {
        Ok(s)
    } else {
        Err(serde::de::Error::custom(format!(
            "Invalid semantic version '{s}': Invalid version: '{s}'"
        )))
    }
}

impl Manifest {
    /// A manifest with default capabilities and no auth.
    #[must_use]
    pub fn new(
        id: AgentUrn,
        name: impl Into<String>,
        version: impl Into<String>,
        description: impl Into<String>,
        asap_endpoint: impl Into<String>,
    ) -> Self {
        Self {
            id,
            name: name.into(),
            version: version.into(),
            description: description.into(),
            capabilities: Capability::default(),
            endpoints: Endpoint {
                asap: asap_endpoint.into(),
                events: None,
            },
            auth: None,
            signature: None,
            ttl_seconds: DEFAULT_MANIFEST_TTL_SECONDS,
        }
    }

    /// Whether the manifest offers skill `id`.
    #[must_use]
    pub fn has_skill(&self, id: &str) -> bool {
        self.capabilities.skills.iter().any(|s| s.id == id)
    }
}

/// What an agent offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Capability {
    /// Protocol version (default `"0.1"`, the reference's constant).
    pub asap_version: String,
    /// Skills.
    pub skills: Vec<Skill>,
    /// Whether task state persists.
    #[serde(deserialize_with = "lax::lax_bool")]
    pub state_persistence: bool,
    /// Whether streaming is offered.
    #[serde(deserialize_with = "lax::lax_bool")]
    pub streaming: bool,
    /// MCP tool names.
    pub mcp_tools: Vec<String>,
}

impl Default for Capability {
    fn default() -> Self {
        Self {
            asap_version: super::envelope::ASAP_PROTOCOL_VERSION.to_owned(),
            skills: Vec::new(),
            state_persistence: false,
            streaming: false,
            mcp_tools: Vec::new(),
        }
    }
}

/// A skill an agent offers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Skill {
    /// Skill id (what `TaskRequest.skill_id` names).
    pub id: String,
    /// What it does.
    pub description: String,
    /// JSON Schema of the input.
    #[serde(default)]
    pub input_schema: Option<JsonObject>,
    /// JSON Schema of the output.
    #[serde(default)]
    pub output_schema: Option<JsonObject>,
}

impl Skill {
    /// A skill without schemas.
    #[must_use]
    pub fn new(id: impl Into<String>, description: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            description: description.into(),
            input_schema: None,
            output_schema: None,
        }
    }

    /// With a JSON Schema of the input (`input_schema`).
    #[must_use]
    pub fn with_input_schema(mut self, schema: JsonObject) -> Self {
        self.input_schema = Some(schema);
        self
    }

    /// With a JSON Schema of the output (`output_schema`).
    #[must_use]
    pub fn with_output_schema(mut self, schema: JsonObject) -> Self {
        self.output_schema = Some(schema);
        self
    }
}

/// Where to reach an agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Endpoint {
    /// URL of the JSON-RPC endpoint.
    pub asap: String,
    /// URL of the WebSocket endpoint.
    #[serde(default)]
    pub events: Option<String>,
}

/// How to authenticate to an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, try_from = "AuthSchemeWire")]
pub struct AuthScheme {
    /// Schemes (`bearer`, `basic`; compared case-insensitively).
    pub schemes: Vec<String>,
    /// OAuth2 details (free-form).
    pub oauth2: Option<JsonObject>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthSchemeWire {
    schemes: Vec<String>,
    #[serde(default)]
    oauth2: Option<JsonObject>,
}

impl TryFrom<AuthSchemeWire> for AuthScheme {
    type Error = String;
    fn try_from(w: AuthSchemeWire) -> Result<Self, String> {
        for s in &w.schemes {
            if !SUPPORTED_AUTH_SCHEMES.contains(&s.to_ascii_lowercase().as_str()) {
                return Err(crate::error::blame(
                    "schemes",
                    false,
                    format_args!(
                        "Unsupported authentication scheme '{s}'. Supported schemes: basic, bearer"
                    ),
                ));
            }
        }
        Ok(Self {
            schemes: w.schemes,
            oauth2: w.oauth2,
        })
    }
}

/// An agent record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Agent {
    /// Agent URN.
    pub id: AgentUrn,
    /// Where its manifest is.
    pub manifest_uri: String,
    /// Capability names (at least one).
    #[serde(deserialize_with = "non_empty_vec")]
    pub capabilities: Vec<String>,
}

fn non_empty_vec<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    let v = Vec::<String>::deserialize(d)?;
    if v.is_empty() {
        return Err(serde::de::Error::custom(
            "List should have at least 1 item after validation, not 0",
        ));
    }
    Ok(v)
}

/// A conversation between agents.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conversation {
    /// Conversation id.
    pub id: String,
    /// Participants (at least one; not URN-checked).
    #[serde(deserialize_with = "non_empty_vec")]
    pub participants: Vec<String>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Metadata.
    #[serde(default)]
    pub metadata: Option<JsonObject>,
}

/// A task record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    /// Task id.
    pub id: String,
    /// Conversation id.
    pub conversation_id: String,
    /// Parent task id.
    #[serde(default)]
    pub parent_task_id: Option<String>,
    /// Status.
    pub status: TaskStatus,
    /// Sub-task depth, 0..=10.
    #[serde(default, deserialize_with = "task_depth")]
    pub depth: i64,
    /// Progress.
    #[serde(default)]
    pub progress: Option<JsonObject>,
    /// Creation time.
    pub created_at: Timestamp,
    /// Last update time.
    pub updated_at: Timestamp,
}

fn task_depth<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = lax::lax_int(d)?;
    if n < 0 {
        return Err(serde::de::Error::custom(
            "Input should be greater than or equal to 0",
        ));
    }
    if n > MAX_TASK_DEPTH {
        return Err(serde::de::Error::custom(
            "Input should be less than or equal to 10",
        ));
    }
    Ok(n)
}

impl Task {
    /// Moves the task to `to` if the transition table allows it, stamping `updated_at`.
    pub fn transition(
        &mut self,
        to: TaskStatus,
        now: Timestamp,
    ) -> Result<(), crate::task::InvalidTransition> {
        self.status
            .check_transition(to)
            .map_err(|e| e.for_task(&self.id))?;
        self.status = to;
        self.updated_at = now;
        Ok(())
    }
}

/// A message record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Message {
    /// Message id.
    pub id: String,
    /// Task id.
    pub task_id: String,
    /// Author (free string).
    pub sender: String,
    /// Author role.
    pub role: MessageRole,
    /// Part ids.
    pub parts: Vec<String>,
    /// When it was sent.
    pub timestamp: Timestamp,
}

/// An artifact record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Artifact {
    /// Artifact id.
    pub id: String,
    /// Task id.
    pub task_id: String,
    /// Name.
    pub name: String,
    /// Part ids.
    pub parts: Vec<String>,
    /// Creation time.
    pub created_at: Timestamp,
}

/// A versioned snapshot of a task's state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StateSnapshot {
    /// Snapshot id.
    pub id: String,
    /// Task id.
    pub task_id: String,
    /// Version, ≥ 1.
    #[serde(deserialize_with = "snapshot_version")]
    pub version: i64,
    /// State data.
    pub data: JsonObject,
    /// Whether this is a checkpoint.
    #[serde(default, deserialize_with = "lax::lax_bool")]
    pub checkpoint: bool,
    /// Creation time.
    pub created_at: Timestamp,
}

fn snapshot_version<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
    let n = lax::lax_int(d)?;
    if n < 1 {
        return Err(serde::de::Error::custom(format!(
            "Input should be greater than or equal to 1, got {n}"
        )));
    }
    Ok(n)
}

/// Whether `s` is a valid PEP 440 version (what Python's `packaging.Version` accepts).
///
/// ```
/// use asap_proto::model::is_pep440_version;
/// assert!(is_pep440_version("1.0.0-rc.1+build.5"));
/// assert!(!is_pep440_version("1.0.0-SNAPSHOT"));
/// ```
#[must_use]
pub fn is_pep440_version(s: &str) -> bool {
    let lower = s.trim().to_ascii_lowercase();
    let b = lower.as_bytes();
    let mut i = 0;
    let num = |i: &mut usize| -> bool {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        *i > start
    };
    let sep = |i: &mut usize| {
        if *i < b.len() && matches!(b[*i], b'-' | b'_' | b'.') {
            *i += 1;
        }
    };
    let word = |i: &mut usize, words: &[&str]| -> bool {
        // Longest match first so "preview" wins over "pre".
        let mut best = 0;
        for w in words {
            if lower[*i..].starts_with(w) && w.len() > best {
                best = w.len();
            }
        }
        *i += best;
        best > 0
    };
    if i < b.len() && b[i] == b'v' {
        i += 1;
    }
    // Optional epoch "N!".
    let save = i;
    if num(&mut i) && i < b.len() && b[i] == b'!' {
        i += 1;
    } else {
        i = save;
    }
    if !num(&mut i) {
        return false;
    }
    while i + 1 < b.len() && b[i] == b'.' && b[i + 1].is_ascii_digit() {
        i += 1;
        num(&mut i);
    }
    // Pre-release.
    let save = i;
    sep(&mut i);
    if word(
        &mut i,
        &["alpha", "beta", "preview", "pre", "rc", "a", "b", "c"],
    ) {
        let s2 = i;
        sep(&mut i);
        if !num(&mut i) {
            i = s2;
        }
    } else {
        i = save;
    }
    // Post-release: "-N" or [sep]post|rev|r[sep]N.
    let save = i;
    if i < b.len() && b[i] == b'-' && {
        i += 1;
        num(&mut i)
    } {
    } else {
        i = save;
        sep(&mut i);
        if word(&mut i, &["post", "rev", "r"]) {
            let s2 = i;
            sep(&mut i);
            if !num(&mut i) {
                i = s2;
            }
        } else {
            i = save;
        }
    }
    // Dev release.
    let save = i;
    sep(&mut i);
    if word(&mut i, &["dev"]) {
        let s2 = i;
        sep(&mut i);
        if !num(&mut i) {
            i = s2;
        }
    } else {
        i = save;
    }
    // Local version.
    if i < b.len() && b[i] == b'+' {
        i += 1;
        loop {
            let start = i;
            while i < b.len() && b[i].is_ascii_alphanumeric() {
                i += 1;
            }
            if i == start {
                return false;
            }
            if i < b.len() && matches!(b[i], b'-' | b'_' | b'.') {
                i += 1;
                continue;
            }
            break;
        }
    }
    i == b.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pep440_cases_from_the_spec() {
        for ok in [
            "1.0",
            "1",
            "2026.01",
            "v1.0.0",
            "1.0.0-dev",
            "1.0.0-alpha.1",
            "1.0.0-rc.1+build.5",
            "1.0.0",
            "0.1.0",
            "1!2.0.post3.dev4",
        ] {
            assert!(is_pep440_version(ok), "{ok}");
        }
        for bad in [
            "1.0.0-SNAPSHOT",
            "1.0.0-beta.x.7",
            "1.0.0-0.3.7",
            "latest",
            "not-a-version",
            "",
            "1.",
            "1.0+",
        ] {
            assert!(!is_pep440_version(bad), "{bad}");
        }
    }
}
