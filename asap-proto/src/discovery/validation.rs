//! Manifest validation: schema, `asap_version` compatibility, required skills.

use std::cmp::Ordering;
use std::fmt;

use serde_json::Value;

use crate::error::Fault;
use crate::error::{DecodeError, DecodeErrorKind};
use crate::model::{Manifest, ASAP_PROTOCOL_VERSION};

/// Members a manifest must have (reported together, as pydantic does).
const MANIFEST_REQUIRED: [&str; 6] = [
    "id",
    "name",
    "version",
    "description",
    "capabilities",
    "endpoints",
];

/// A discovered manifest is unusable. Messages match the reference's
/// `ManifestValidationError`; [`field`](Self::field) is its `field`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ManifestValidationError {
    /// The document is not a valid manifest (peer's fault).
    #[error("{}", schema_message(errors))]
    Schema {
        /// Every problem found (all missing members at once, else the first error).
        errors: Vec<DecodeError>,
    },
    /// The agent speaks an older protocol than required (peer incompatible).
    #[error("Agent ASAP version '{agent}' is older than required '{required}'.")]
    IncompatibleVersion {
        /// `capabilities.asap_version`.
        agent: String,
        /// The minimum asked for.
        required: String,
    },
    /// A version is not PEP 440 (`bad` is the unparsable one: the agent's, or
    /// the caller's minimum — then it is a local error).
    #[error("Invalid ASAP version in manifest: '{agent}'. Invalid version: '{bad}'")]
    InvalidVersion {
        /// `capabilities.asap_version`.
        agent: String,
        /// The string that did not parse.
        bad: String,
    },
    /// The agent does not offer a required skill (peer incompatible).
    #[error(
        "Agent does not support required skill '{skill}'. Available skills: {}.",
        skills_repr(available)
    )]
    MissingSkill {
        /// The skill asked for.
        skill: String,
        /// The skills the manifest lists.
        available: Vec<String>,
    },
}

fn schema_message(errors: &[DecodeError]) -> String {
    let n = errors.len();
    let mut s = format!(
        "Invalid manifest schema: {n} validation error{} for Manifest",
        if n == 1 { "" } else { "s" }
    );
    for e in errors {
        let loc = if e.path.is_empty() {
            "Manifest"
        } else {
            &e.path
        };
        s.push_str(&format!(
            "\n{loc}\n  {} [type={}]",
            e.message,
            e.kind.pydantic_type()
        ));
    }
    s
}

/// Python's `repr()` of a string (what the reference prints inside lists).
fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::new();
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

fn skills_repr(available: &[String]) -> String {
    if available.is_empty() {
        return "none".to_owned();
    }
    let items: Vec<String> = available.iter().map(|s| py_repr(s)).collect();
    format!("[{}]", items.join(", "))
}

impl ManifestValidationError {
    /// The reference's `field`: `schema`, `capabilities.asap_version` or `capabilities.skills`.
    #[must_use]
    pub fn field(&self) -> &'static str {
        match self {
            Self::Schema { .. } => "schema",
            Self::IncompatibleVersion { .. } | Self::InvalidVersion { .. } => {
                "capabilities.asap_version"
            }
            Self::MissingSkill { .. } => "capabilities.skills",
        }
    }

    /// Whose fault: the peer's, except an unparsable minimum version given by the caller.
    #[must_use]
    pub fn fault(&self) -> Fault {
        match self {
            Self::InvalidVersion { agent, bad } if agent != bad => Fault::Local,
            _ => Fault::Peer,
        }
    }
}

/// Decodes and validates manifest JSON bytes.
///
/// ```
/// use asap_proto::discovery::validate_manifest_bytes;
/// let err = validate_manifest_bytes(br#"{"id":"urn:asap:agent:x"}"#).unwrap_err();
/// assert!(err.to_string().starts_with("Invalid manifest schema: 5 validation errors for Manifest"));
/// assert_eq!(err.field(), "schema");
/// ```
pub fn validate_manifest_bytes(bytes: &[u8]) -> Result<Manifest, ManifestValidationError> {
    let value: Value =
        serde_json::from_slice(bytes).map_err(|e| ManifestValidationError::Schema {
            errors: vec![DecodeError::new(
                "",
                DecodeErrorKind::Syntax,
                format!("Invalid JSON: {e}"),
            )],
        })?;
    validate_manifest_value(value)
}

/// Validates a parsed manifest document (the reference's `validate_manifest_schema`).
pub fn validate_manifest_value(value: Value) -> Result<Manifest, ManifestValidationError> {
    let Value::Object(obj) = value else {
        return Err(ManifestValidationError::Schema {
            errors: vec![DecodeError::new(
                "",
                DecodeErrorKind::WrongType,
                "Input should be a valid dictionary or instance of Manifest",
            )],
        });
    };
    let missing: Vec<DecodeError> = MANIFEST_REQUIRED
        .iter()
        .filter(|k| !obj.contains_key(**k))
        .map(|k| DecodeError::new(*k, DecodeErrorKind::Missing, "Field required"))
        .collect();
    if !missing.is_empty() {
        return Err(ManifestValidationError::Schema { errors: missing });
    }
    crate::error::from_value(Value::Object(obj))
        .map_err(|e| ManifestValidationError::Schema { errors: vec![e] })
}

/// Checks `capabilities.asap_version` ≥ `min` (default the protocol constant
/// `"0.1"`) in PEP 440 order, as the reference's `check_version_compatibility`.
///
/// ```
/// use asap_proto::discovery::check_version_compatibility;
/// # let m: asap_proto::model::Manifest = serde_json::from_str(r#"{"id":"urn:asap:agent:a","name":"a","version":"1.0","description":"d","capabilities":{},"endpoints":{"asap":"http://x/asap"}}"#).unwrap();
/// assert!(check_version_compatibility(&m, Some("0.0.9")).is_ok());
/// assert_eq!(
///     check_version_compatibility(&m, Some("1.0")).unwrap_err().to_string(),
///     "Agent ASAP version '0.1' is older than required '1.0'."
/// );
/// ```
pub fn check_version_compatibility(
    manifest: &Manifest,
    min: Option<&str>,
) -> Result<(), ManifestValidationError> {
    let required = min.unwrap_or(ASAP_PROTOCOL_VERSION);
    let raw = &manifest.capabilities.asap_version;
    let invalid = |bad: &str| ManifestValidationError::InvalidVersion {
        agent: raw.clone(),
        bad: bad.to_owned(),
    };
    let agent = Pep440Version::parse(raw).ok_or_else(|| invalid(raw))?;
    let min_v = Pep440Version::parse(required).ok_or_else(|| invalid(required))?;
    if agent < min_v {
        return Err(ManifestValidationError::IncompatibleVersion {
            agent: raw.clone(),
            required: required.to_owned(),
        });
    }
    Ok(())
}

/// Requires that the manifest lists skill `skill_id` (the reference's `require_skill`).
pub fn require_skill(manifest: &Manifest, skill_id: &str) -> Result<(), ManifestValidationError> {
    if manifest.has_skill(skill_id) {
        return Ok(());
    }
    Err(ManifestValidationError::MissingSkill {
        skill: skill_id.to_owned(),
        available: manifest
            .capabilities
            .skills
            .iter()
            .map(|s| s.id.clone())
            .collect(),
    })
}

/// A PEP 440 version with Python `packaging`'s ordering
/// (`1.0.dev0 < 1.0a1 < 1.0rc1 < 1.0 == 1.0.0 < 1.0.post1 < 1.0+local`).
///
/// ```
/// use asap_proto::discovery::Pep440Version;
/// let v = |s| Pep440Version::parse(s).unwrap();
/// assert!(v("0.1") < v("1.0"));
/// assert!(v("1.0.dev0") < v("1.0a1") && v("1.0a1") < v("1.0rc1") && v("1.0rc1") < v("1.0"));
/// assert_eq!(v("1.0"), v("1.0.0"));
/// assert!(v("1.0") < v("1.0.post1") && v("1.0") < v("1.0+abc"));
/// assert!(Pep440Version::parse("latest").is_none());
/// ```
#[derive(Debug, Clone)]
pub struct Pep440Version {
    text: String,
    key: CmpKey,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum PreKey {
    NegInf,
    Some(u8, u64),
    Inf,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum DevKey {
    Some(u64),
    Inf,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum LocalSeg {
    Str(String),
    Num(u64),
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct CmpKey {
    epoch: u64,
    release: Vec<u64>,
    pre: PreKey,
    post: Option<u64>,
    dev: DevKey,
    local: Option<Vec<LocalSeg>>,
}

struct Cursor<'a> {
    s: &'a [u8],
    i: usize,
}

impl Cursor<'_> {
    fn num(&mut self) -> Option<u64> {
        let start = self.i;
        while self.i < self.s.len() && self.s[self.i].is_ascii_digit() {
            self.i += 1;
        }
        (self.i > start).then(|| {
            self.s[start..self.i].iter().fold(0u64, |acc, d| {
                acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
            })
        })
    }
    fn sep(&mut self) {
        if self.i < self.s.len() && matches!(self.s[self.i], b'-' | b'_' | b'.') {
            self.i += 1;
        }
    }
    /// Longest of `words` at the cursor; returns its index.
    fn word(&mut self, words: &[&str]) -> Option<usize> {
        let rest = &self.s[self.i..];
        let best = words
            .iter()
            .enumerate()
            .filter(|(_, w)| rest.starts_with(w.as_bytes()))
            .max_by_key(|(_, w)| w.len())?;
        self.i += best.1.len();
        Some(best.0)
    }
    /// `[sep] word [sep] [N]` with an implicit 0; restores the cursor on failure.
    fn tagged(&mut self, words: &[&str]) -> Option<(usize, u64)> {
        let save = self.i;
        self.sep();
        let Some(w) = self.word(words) else {
            self.i = save;
            return None;
        };
        let after = self.i;
        self.sep();
        let n = self.num().unwrap_or_else(|| {
            self.i = after;
            0
        });
        Some((w, n))
    }
}

impl Pep440Version {
    /// Parses `s` (surrounding whitespace and a leading `v` allowed, case-insensitive).
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        let lower = s.trim().to_ascii_lowercase();
        let mut c = Cursor {
            s: lower.as_bytes(),
            i: 0,
        };
        if c.s.first() == Some(&b'v') {
            c.i = 1;
        }
        let save = c.i;
        let epoch = match c.num() {
            Some(e) if c.s.get(c.i) == Some(&b'!') => {
                c.i += 1;
                e
            }
            _ => {
                c.i = save;
                0
            }
        };
        let mut release = vec![c.num()?];
        while c.s.get(c.i) == Some(&b'.') && c.s.get(c.i + 1).is_some_and(u8::is_ascii_digit) {
            c.i += 1;
            release.push(c.num()?);
        }
        // alpha|a → 0, beta|b → 1, c|rc|pre|preview → 2.
        const PRE: [&str; 8] = ["alpha", "a", "beta", "b", "preview", "pre", "c", "rc"];
        let pre = c.tagged(&PRE).map(|(w, n)| {
            let rank = match PRE[w] {
                "alpha" | "a" => 0,
                "beta" | "b" => 1,
                _ => 2,
            };
            (rank, n)
        });
        let save = c.i;
        let post = if c.s.get(c.i) == Some(&b'-') && {
            c.i += 1;
            c.s.get(c.i).is_some_and(u8::is_ascii_digit)
        } {
            c.num()
        } else {
            c.i = save;
            c.tagged(&["post", "rev", "r"]).map(|(_, n)| n)
        };
        let dev = c.tagged(&["dev"]).map(|(_, n)| n);
        let local = if c.s.get(c.i) == Some(&b'+') {
            c.i += 1;
            let mut segs = Vec::new();
            loop {
                let start = c.i;
                while c.i < c.s.len() && c.s[c.i].is_ascii_alphanumeric() {
                    c.i += 1;
                }
                if c.i == start {
                    return None;
                }
                let seg = std::str::from_utf8(&c.s[start..c.i]).ok()?;
                segs.push(if seg.bytes().all(|b| b.is_ascii_digit()) {
                    LocalSeg::Num(seg.parse().unwrap_or(u64::MAX))
                } else {
                    LocalSeg::Str(seg.to_owned())
                });
                if c.i < c.s.len() && matches!(c.s[c.i], b'-' | b'_' | b'.') {
                    c.i += 1;
                    continue;
                }
                break;
            }
            Some(segs)
        } else {
            None
        };
        if c.i != c.s.len() {
            return None;
        }
        while release.len() > 1 && release.last() == Some(&0) {
            release.pop();
        }
        if release == [0] {
            release.clear();
        }
        let pre = match (pre, post, dev) {
            (None, None, Some(_)) => PreKey::NegInf,
            (None, _, _) => PreKey::Inf,
            (Some((r, n)), _, _) => PreKey::Some(r, n),
        };
        Some(Self {
            text: s.to_owned(),
            key: CmpKey {
                epoch,
                release,
                pre,
                post,
                dev: dev.map_or(DevKey::Inf, DevKey::Some),
                local,
            },
        })
    }

    /// The text parsed.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl PartialEq for Pep440Version {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}
impl Eq for Pep440Version {}
impl PartialOrd for Pep440Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Pep440Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.key.cmp(&other.key)
    }
}
impl fmt::Display for Pep440Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::is_pep440_version;

    fn v(s: &str) -> Pep440Version {
        Pep440Version::parse(s).unwrap_or_else(|| panic!("{s}"))
    }

    #[test]
    fn pep440_order_matches_packaging() {
        // Sorted as Python's packaging sorts them.
        let sorted = [
            "0.0.9",
            "0.1",
            "0.1.1",
            "1.0.dev0",
            "1.0a0",
            "1.0a1.dev1",
            "1.0a1",
            "1.0b2",
            "1.0rc1",
            "1.0",
            "1.0+abc",
            "1.0+abc.5",
            "1.0+5",
            "1.0.post0.dev1",
            "1.0.post1",
            "1.1",
            "2026.01",
            "1!0.1",
        ];
        for w in sorted.windows(2) {
            assert!(v(w[0]) < v(w[1]), "{} < {}", w[0], w[1]);
        }
        assert_eq!(v("1.0"), v("1.0.0"));
        assert_eq!(v("v1.0"), v("1.0"));
        assert_eq!(v("1.0-1"), v("1.0.post1"));
        assert_eq!(v("1.0alpha1"), v("1.0a1"));
        assert_eq!(v("1.0.preview2"), v("1.0rc2"));
        assert_eq!(v("1.0-dev"), v("1.0.dev0"));
        assert_eq!(v(" 1.0 ").as_str(), " 1.0 ");
        assert_eq!(v("0"), v("0.0"));
    }

    #[test]
    fn validity_agrees_with_the_model() {
        for s in [
            "1.0",
            "1",
            "2026.01",
            "v1.0.0",
            "1.0.0-dev",
            "1.0.0-alpha.1",
            "1.0.0-rc.1+build.5",
            "1!2.0.post3.dev4",
            "1.0.0-SNAPSHOT",
            "1.0.0-beta.x.7",
            "1.0.0-0.3.7",
            "latest",
            "",
            "1.",
            "1.0+",
            "1.0-",
            "1.0.r",
            "1.0c",
            "1.0pre",
            "V2",
            "1.0+a-b_c.d",
        ] {
            assert_eq!(
                Pep440Version::parse(s).is_some(),
                is_pep440_version(s),
                "{s:?}"
            );
        }
    }

    #[test]
    fn messages() {
        assert_eq!(py_repr("echo"), "'echo'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("a'\"b"), "'a\\'\"b'");
        let e = ManifestValidationError::MissingSkill {
            skill: "x".into(),
            available: vec![],
        };
        assert_eq!(
            e.to_string(),
            "Agent does not support required skill 'x'. Available skills: none."
        );
        let e = ManifestValidationError::InvalidVersion {
            agent: "0.1".into(),
            bad: "nope".into(),
        };
        assert_eq!(e.fault(), Fault::Local);
        assert_eq!(e.field(), "capabilities.asap_version");
        let e = validate_manifest_bytes(b"[]").unwrap_err();
        assert_eq!(
            e.to_string().lines().next().unwrap(),
            "Invalid manifest schema: 1 validation error for Manifest"
        );
        assert!(validate_manifest_bytes(b"{").is_err());
    }
}
