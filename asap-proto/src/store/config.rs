//! Storage backend selection (spec §17.2), parsed from values the caller read.

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

/// Environment variable naming the backend: `memory` or `sqlite`.
pub const STORAGE_BACKEND_ENV: &str = "ASAP_STORAGE_BACKEND";
/// Environment variable holding the SQLite file path.
pub const STORAGE_PATH_ENV: &str = "ASAP_STORAGE_PATH";
/// The SQLite file used when `ASAP_STORAGE_PATH` is unset.
pub const DEFAULT_STORAGE_PATH: &str = "asap_state.db";

/// Which store implementation holds the agent's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageBackend {
    /// In memory; lost when the process exits (the reference's default).
    Memory,
    /// A SQLite file shared by the snapshot and metering stores.
    Sqlite,
}

impl StorageBackend {
    /// The accepted names, as written in `ASAP_STORAGE_BACKEND`.
    pub const NAMES: [&'static str; 2] = ["memory", "sqlite"];

    /// The backend's name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            StorageBackend::Memory => "memory",
            StorageBackend::Sqlite => "sqlite",
        }
    }
}

impl fmt::Display for StorageBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for StorageBackend {
    type Err = StorageConfigError;
    /// Parses a backend name as the reference does: trimmed, case-insensitive.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_lowercase().as_str() {
            "memory" => Ok(StorageBackend::Memory),
            "sqlite" => Ok(StorageBackend::Sqlite),
            other => Err(StorageConfigError::UnknownBackend(other.to_owned())),
        }
    }
}

/// A storage configuration that cannot be used; raised at startup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageConfigError {
    /// `ASAP_STORAGE_BACKEND` is neither `memory` nor `sqlite` (the value is
    /// trimmed and lower-cased; the message is the reference's, byte for byte).
    #[error("Unknown ASAP_STORAGE_BACKEND={}. Use 'memory' or 'sqlite'.", py_repr(.0))]
    UnknownBackend(String),
    /// `ASAP_STORAGE_PATH` is set but blank.
    #[error(
        "ASAP_STORAGE_PATH is empty; set it to a file path such as 'asap_state.db' or unset it for that default"
    )]
    EmptyPath,
    /// A variable's value is not valid Unicode.
    #[error("{0} is not valid Unicode")]
    NotUnicode(&'static str),
}

/// Where the agent keeps its state: the parsed `ASAP_STORAGE_BACKEND` / `ASAP_STORAGE_PATH`.
///
/// ```
/// use asap_proto::store::{StorageBackend, StorageConfig};
/// let c = StorageConfig::from_values(Some(" SQLite "), None).unwrap();
/// assert_eq!(c.backend, StorageBackend::Sqlite);
/// assert_eq!(c.path.to_str(), Some("asap_state.db"));
/// let err = StorageConfig::from_values(Some("redis"), None).unwrap_err();
/// assert_eq!(err.to_string(), "Unknown ASAP_STORAGE_BACKEND='redis'. Use 'memory' or 'sqlite'.");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// The chosen backend.
    pub backend: StorageBackend,
    /// The SQLite file (meaningful for [`StorageBackend::Sqlite`]; parsed either way).
    pub path: PathBuf,
}

impl StorageConfig {
    /// Parses the two variables' values (`None` = unset) with the reference's
    /// defaults: backend `memory`, path `asap_state.db`.
    pub fn from_values(
        backend: Option<&str>,
        path: Option<&str>,
    ) -> Result<Self, StorageConfigError> {
        Self::from_values_or(StorageBackend::Memory, backend, path)
    }

    /// As [`from_values`](Self::from_values) with another default backend
    /// (the `asap serve` CLI defaults to SQLite so state survives restarts).
    pub fn from_values_or(
        default_backend: StorageBackend,
        backend: Option<&str>,
        path: Option<&str>,
    ) -> Result<Self, StorageConfigError> {
        let backend = match backend {
            None => default_backend,
            Some(b) => b.parse()?,
        };
        let path = match path.map(str::trim) {
            None => PathBuf::from(DEFAULT_STORAGE_PATH),
            Some("") => return Err(StorageConfigError::EmptyPath),
            Some(p) => PathBuf::from(p),
        };
        Ok(Self { backend, path })
    }
}

/// Python's `repr()` of a string, so the error text matches the reference's.
fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
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
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_reference() {
        let c = StorageConfig::from_values(None, None).unwrap();
        assert_eq!(c.backend, StorageBackend::Memory);
        assert_eq!(c.path, PathBuf::from("asap_state.db"));
        let c =
            StorageConfig::from_values_or(StorageBackend::Sqlite, None, Some(" /x/y.db ")).unwrap();
        assert_eq!(c.backend, StorageBackend::Sqlite);
        assert_eq!(c.path, PathBuf::from("/x/y.db"));
        let c = StorageConfig::from_values(Some("MEMORY"), None).unwrap();
        assert_eq!(c.backend, StorageBackend::Memory);
    }

    #[test]
    fn errors_name_the_valid_values() {
        // The exact text of vectors/storage/sqlite_and_metering.json.
        assert_eq!(
            StorageConfig::from_values(Some("redis"), None)
                .unwrap_err()
                .to_string(),
            "Unknown ASAP_STORAGE_BACKEND='redis'. Use 'memory' or 'sqlite'."
        );
        // Trimmed and lower-cased before the message, as Python does.
        assert_eq!(
            StorageConfig::from_values(Some(" Postgres "), None).unwrap_err(),
            StorageConfigError::UnknownBackend("postgres".into())
        );
        assert_eq!(
            StorageConfig::from_values(Some(""), None)
                .unwrap_err()
                .to_string(),
            "Unknown ASAP_STORAGE_BACKEND=''. Use 'memory' or 'sqlite'."
        );
        assert_eq!(
            StorageConfigError::UnknownBackend("it's".into()).to_string(),
            "Unknown ASAP_STORAGE_BACKEND=\"it's\". Use 'memory' or 'sqlite'."
        );
        assert_eq!(
            StorageConfig::from_values(Some("sqlite"), Some("  ")).unwrap_err(),
            StorageConfigError::EmptyPath
        );
    }
}
