//! Storage backend selection (spec §17.2), parsed from values the caller read.

use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// Environment variable naming the backend: `memory`, `sqlite` or `postgres`.
pub const STORAGE_BACKEND_ENV: &str = "ASAP_STORAGE_BACKEND";
/// Environment variable holding the SQLite file path.
pub const STORAGE_PATH_ENV: &str = "ASAP_STORAGE_PATH";
/// Environment variable holding the PostgreSQL URL (`postgres://user@host:5432/db`).
pub const STORAGE_URL_ENV: &str = "ASAP_STORAGE_URL";
/// The SQLite file used when `ASAP_STORAGE_PATH` is unset.
pub const DEFAULT_STORAGE_PATH: &str = "asap_state.db";

/// Which store implementation holds the agent's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StorageBackend {
    /// In memory; lost when the process exits (the reference's default).
    Memory,
    /// A SQLite file shared by the snapshot and metering stores.
    Sqlite,
    /// A PostgreSQL database several replicas share (`asap-tokio`'s
    /// `postgres` feature); [`StorageConfig::url`] names it.
    Postgres,
}

impl StorageBackend {
    /// The accepted names, as written in `ASAP_STORAGE_BACKEND`.
    pub const NAMES: [&'static str; 3] = ["memory", "sqlite", "postgres"];

    /// The backend's name.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            StorageBackend::Memory => "memory",
            StorageBackend::Sqlite => "sqlite",
            StorageBackend::Postgres => "postgres",
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
            "postgres" | "postgresql" => Ok(StorageBackend::Postgres),
            other => Err(StorageConfigError::UnknownBackend(other.to_owned())),
        }
    }
}

/// A storage configuration that cannot be used; raised at startup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StorageConfigError {
    /// `ASAP_STORAGE_BACKEND` names no backend (the value is trimmed and
    /// lower-cased; the message is the reference's with `postgres` added).
    #[error("Unknown ASAP_STORAGE_BACKEND={}. Use 'memory', 'sqlite' or 'postgres'.", py_repr(.0))]
    UnknownBackend(String),
    /// `ASAP_STORAGE_PATH` is set but blank.
    #[error(
        "ASAP_STORAGE_PATH is empty; set it to a file path such as 'asap_state.db' or unset it for that default"
    )]
    EmptyPath,
    /// A variable's value is not valid Unicode.
    #[error("{0} is not valid Unicode")]
    NotUnicode(&'static str),
    /// Two settings ask for different storage (see [`StorageConfig::resolve`]);
    /// neither is silently ignored.
    #[error("{first} contradicts {second}: {why}; remove one of them")]
    Contradiction {
        /// The first setting, as given (`--db state.db`).
        first: String,
        /// The second setting, as given (`ASAP_STORAGE_BACKEND=memory`).
        second: String,
        /// How they disagree.
        why: &'static str,
    },
    /// `--db` was given an empty path.
    #[error("--db is empty; give it a file path such as 'asap_state.db'")]
    EmptyDb,
    /// PostgreSQL was chosen without a URL naming the database.
    #[error("ASAP_STORAGE_BACKEND=postgres needs the database URL: set ASAP_STORAGE_URL=postgres://USER@HOST:5432/DB (or give --db postgres://…)")]
    MissingUrl,
    /// The storage URL is not a PostgreSQL URL.
    #[error("{source_name}={url} is not a PostgreSQL URL: write postgres://USER[:PASSWORD]@HOST[:PORT]/DB")]
    InvalidUrl {
        /// Where it came from (`ASAP_STORAGE_URL`, `--db`).
        source_name: &'static str,
        /// The URL given, password hidden.
        url: String,
    },
}

/// Whether `s` is written as a PostgreSQL URL.
#[must_use]
pub fn is_postgres_url(s: &str) -> bool {
    let s = s.trim_start();
    s.starts_with("postgres://") || s.starts_with("postgresql://")
}

/// `url` with any password replaced by `***`, for messages and logs.
#[must_use]
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://").map(|i| i + 3) else {
        return url.to_owned();
    };
    let rest = &url[scheme_end..];
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let authority = &rest[..authority_end];
    match (authority.rfind('@'), authority.find(':')) {
        (Some(at), Some(colon)) if colon < at => format!(
            "{}{}:***{}",
            &url[..scheme_end],
            &authority[..colon],
            &rest[at..]
        ),
        _ => url.to_owned(),
    }
}

/// Where the agent keeps its state: the parsed `ASAP_STORAGE_BACKEND` / `ASAP_STORAGE_PATH`.
///
/// ```
/// use asap_proto::store::{StorageBackend, StorageConfig};
/// let c = StorageConfig::from_values(Some(" SQLite "), None).unwrap();
/// assert_eq!(c.backend, StorageBackend::Sqlite);
/// assert_eq!(c.path.to_str(), Some("asap_state.db"));
/// let err = StorageConfig::from_values(Some("redis"), None).unwrap_err();
/// assert_eq!(err.to_string(), "Unknown ASAP_STORAGE_BACKEND='redis'. Use 'memory', 'sqlite' or 'postgres'.");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StorageConfig {
    /// The chosen backend.
    pub backend: StorageBackend,
    /// The SQLite file (meaningful for [`StorageBackend::Sqlite`]; parsed either way).
    pub path: PathBuf,
    /// The PostgreSQL URL ([`StorageBackend::Postgres`] only).
    pub url: Option<String>,
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
        if backend == StorageBackend::Postgres {
            return Err(StorageConfigError::MissingUrl);
        }
        Ok(Self {
            backend,
            path,
            url: None,
        })
    }

    /// SQLite at `path` (no URL).
    #[must_use]
    pub fn sqlite(path: impl Into<PathBuf>) -> Self {
        Self {
            backend: StorageBackend::Sqlite,
            path: path.into(),
            url: None,
        }
    }

    /// In memory.
    #[must_use]
    pub fn memory() -> Self {
        Self {
            backend: StorageBackend::Memory,
            path: PathBuf::from(DEFAULT_STORAGE_PATH),
            url: None,
        }
    }

    /// PostgreSQL at `url` (checked to be written as a PostgreSQL URL).
    pub fn postgres(url: &str) -> Result<Self, StorageConfigError> {
        if !is_postgres_url(url) {
            return Err(StorageConfigError::InvalidUrl {
                source_name: STORAGE_URL_ENV,
                url: redact_url(url),
            });
        }
        Ok(Self {
            backend: StorageBackend::Postgres,
            path: PathBuf::from(DEFAULT_STORAGE_PATH),
            url: Some(url.trim().to_owned()),
        })
    }

    /// [`resolve`](Self::resolve) with `ASAP_STORAGE_URL` too: a PostgreSQL
    /// URL (from `--db postgres://…` or the variable, which must agree) means
    /// PostgreSQL, and contradicts `ASAP_STORAGE_BACKEND` set to anything
    /// else or an `ASAP_STORAGE_PATH`; `ASAP_STORAGE_BACKEND=postgres` needs a URL.
    ///
    /// ```
    /// use asap_proto::store::{StorageBackend, StorageConfig};
    /// let c = StorageConfig::resolve_with_url(StorageBackend::Sqlite, Some("postgres://asap@db:5432/asap"), None, None, None).unwrap();
    /// assert_eq!((c.backend, c.url.as_deref()), (StorageBackend::Postgres, Some("postgres://asap@db:5432/asap")));
    /// let err = StorageConfig::resolve_with_url(StorageBackend::Sqlite, None, Some("sqlite"), None, Some("postgres://u:pw@db/x")).unwrap_err();
    /// assert_eq!(err.to_string(), "ASAP_STORAGE_URL=postgres://u:***@db/x contradicts ASAP_STORAGE_BACKEND=sqlite: the URL names a PostgreSQL database; remove one of them");
    /// ```
    pub fn resolve_with_url(
        default_backend: StorageBackend,
        db: Option<&str>,
        backend: Option<&str>,
        path: Option<&str>,
        url: Option<&str>,
    ) -> Result<Self, StorageConfigError> {
        let db_url = db.filter(|d| is_postgres_url(d));
        let url = url.map(str::trim);
        if url.is_none() && db_url.is_none() {
            if backend.is_some_and(|b| b.parse() == Ok(StorageBackend::Postgres)) {
                if let Some(db) = db {
                    return Err(StorageConfigError::Contradiction {
                        first: format!("--db {db}"),
                        second: format!("{STORAGE_BACKEND_ENV}={}", backend.unwrap_or("").trim()),
                        why: "the flag names a SQLite file, the variable PostgreSQL",
                    });
                }
                return Err(StorageConfigError::MissingUrl);
            }
            return Self::resolve(default_backend, db.map(Path::new), backend, path);
        }
        let (name, chosen) = match (db_url, url) {
            (Some(d), Some(u)) if d.trim() != u => {
                return Err(StorageConfigError::Contradiction {
                    first: format!("--db {}", redact_url(d)),
                    second: format!("{STORAGE_URL_ENV}={}", redact_url(u)),
                    why: "they name different PostgreSQL databases",
                })
            }
            (Some(d), _) => ("--db", d.trim()),
            (None, Some(u)) => (STORAGE_URL_ENV, u),
            (None, None) => unreachable!("one is set"),
        };
        let first = || format!("{name}={}", redact_url(chosen)).replacen("--db=", "--db ", 1);
        if let Some(db) = db.filter(|d| !is_postgres_url(d)) {
            return Err(StorageConfigError::Contradiction {
                first: format!("--db {db}"),
                second: first(),
                why: "the flag names a SQLite file, the variable a PostgreSQL database",
            });
        }
        if !is_postgres_url(chosen) {
            return Err(StorageConfigError::InvalidUrl {
                source_name: name,
                url: redact_url(chosen),
            });
        }
        if let Some(b) = backend {
            if b.parse::<StorageBackend>()? != StorageBackend::Postgres {
                return Err(StorageConfigError::Contradiction {
                    first: first(),
                    second: format!("{STORAGE_BACKEND_ENV}={}", b.trim()),
                    why: "the URL names a PostgreSQL database",
                });
            }
        }
        if let Some(p) = path {
            return Err(StorageConfigError::Contradiction {
                first: first(),
                second: format!("{STORAGE_PATH_ENV}={}", p.trim()),
                why: "PostgreSQL keeps no file, so the path would be ignored",
            });
        }
        Self::postgres(chosen)
    }
}

impl StorageConfig {
    /// The one precedence of a process that also takes a `--db PATH` flag
    /// (`asap serve`): `--db PATH` means SQLite at `PATH`, exactly as
    /// `ASAP_STORAGE_BACKEND=sqlite ASAP_STORAGE_PATH=PATH` does; settings left
    /// unset take the defaults (`default_backend`, `asap_state.db`). Settings
    /// that are given must agree: `--db` with `ASAP_STORAGE_BACKEND=memory`, `--db`
    /// with a different `ASAP_STORAGE_PATH`, or `ASAP_STORAGE_BACKEND=memory`
    /// with `ASAP_STORAGE_PATH` are errors naming both, never one silently ignored.
    ///
    /// ```
    /// use std::path::Path;
    /// use asap_proto::store::{StorageBackend, StorageConfig};
    /// let c = StorageConfig::resolve(StorageBackend::Sqlite, Some(Path::new("x.db")), Some("sqlite"), None).unwrap();
    /// assert_eq!((c.backend, c.path.to_str()), (StorageBackend::Sqlite, Some("x.db")));
    /// let err = StorageConfig::resolve(StorageBackend::Sqlite, Some(Path::new("x.db")), Some("memory"), None).unwrap_err();
    /// assert!(err.to_string().starts_with("--db x.db contradicts ASAP_STORAGE_BACKEND=memory"));
    /// ```
    pub fn resolve(
        default_backend: StorageBackend,
        db: Option<&Path>,
        backend: Option<&str>,
        path: Option<&str>,
    ) -> Result<Self, StorageConfigError> {
        let env = Self::from_values_or(default_backend, backend, path)?;
        let backend_text = || format!("{STORAGE_BACKEND_ENV}={}", backend.unwrap_or("").trim());
        let path_text = || format!("{STORAGE_PATH_ENV}={}", path.unwrap_or("").trim());
        let Some(db) = db else {
            if backend.is_some() && env.backend == StorageBackend::Memory && path.is_some() {
                return Err(StorageConfigError::Contradiction {
                    first: backend_text(),
                    second: path_text(),
                    why: "memory keeps no file, so the path would be ignored",
                });
            }
            return Ok(env);
        };
        if db.as_os_str().is_empty() {
            return Err(StorageConfigError::EmptyDb);
        }
        let db_text = format!("--db {}", db.display());
        if backend.is_some() && env.backend != StorageBackend::Sqlite {
            return Err(StorageConfigError::Contradiction {
                first: db_text,
                second: backend_text(),
                why: "the flag keeps state in that SQLite file, the variable in memory",
            });
        }
        if path.is_some() && env.path != db {
            return Err(StorageConfigError::Contradiction {
                first: db_text,
                second: path_text(),
                why: "they name different SQLite files",
            });
        }
        Ok(Self::sqlite(db))
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
    fn one_precedence_and_contradictions_name_both_sources() {
        use StorageBackend::{Memory, Sqlite};
        let db = Some(Path::new("x.db"));
        let ok = |db, b, p| StorageConfig::resolve(Sqlite, db, b, p).unwrap();
        let err = |db, b, p| {
            StorageConfig::resolve(Sqlite, db, b, p)
                .unwrap_err()
                .to_string()
        };
        // Unset: the defaults; each source alone is used; agreeing sources combine.
        assert_eq!(ok(None, None, None).path, PathBuf::from("asap_state.db"));
        assert_eq!(ok(None, None, None).backend, Sqlite);
        assert_eq!(ok(None, Some("memory"), None).backend, Memory);
        assert_eq!(ok(None, None, Some("y.db")).path, PathBuf::from("y.db"));
        for (b, p) in [
            (None, None),
            (Some(" SQLite "), None),
            (None, Some(" x.db ")),
            (Some("sqlite"), Some("x.db")),
        ] {
            assert_eq!(ok(db, b, p), StorageConfig::sqlite("x.db"), "{b:?} {p:?}");
        }
        // The memory default of a library caller is overridden by --db, which says SQLite.
        assert_eq!(
            StorageConfig::resolve(Memory, db, None, None)
                .unwrap()
                .backend,
            Sqlite
        );
        assert_eq!(
            err(db, Some("Memory"), None),
            "--db x.db contradicts ASAP_STORAGE_BACKEND=Memory: the flag keeps state in that SQLite file, the variable in memory; remove one of them"
        );
        assert_eq!(
            err(db, None, Some("y.db")),
            "--db x.db contradicts ASAP_STORAGE_PATH=y.db: they name different SQLite files; remove one of them"
        );
        assert_eq!(
            err(None, Some("memory"), Some("y.db")),
            "ASAP_STORAGE_BACKEND=memory contradicts ASAP_STORAGE_PATH=y.db: memory keeps no file, so the path would be ignored; remove one of them"
        );
        // Each source's own errors come first, as before.
        assert_eq!(
            err(db, Some("redis"), None),
            "Unknown ASAP_STORAGE_BACKEND='redis'. Use 'memory', 'sqlite' or 'postgres'."
        );
        assert_eq!(
            err(Some(Path::new("")), None, None),
            "--db is empty; give it a file path such as 'asap_state.db'"
        );
    }

    #[test]
    fn postgres_is_chosen_by_url_and_contradictions_are_named() {
        use StorageBackend::{Postgres, Sqlite};
        let url = "postgres://asap:secret@127.0.0.1:5432/asap";
        let ok = |db, b, p, u| StorageConfig::resolve_with_url(Sqlite, db, b, p, u).unwrap();
        let err = |db, b, p, u| {
            StorageConfig::resolve_with_url(Sqlite, db, b, p, u)
                .unwrap_err()
                .to_string()
        };
        for (db, b, u) in [
            (Some(url), None, None),
            (None, None, Some(url)),
            (None, Some("postgres"), Some(url)),
            (Some(url), Some("PostgreSQL"), Some(url)),
        ] {
            let c = ok(db, b, None, u);
            assert_eq!(
                (c.backend, c.url.as_deref()),
                (Postgres, Some(url)),
                "{db:?} {b:?} {u:?}"
            );
        }
        assert_eq!(
            ok(Some("x.db"), None, None, None),
            StorageConfig::sqlite("x.db")
        );
        assert_eq!(
            err(None, Some("postgres"), None, None),
            "ASAP_STORAGE_BACKEND=postgres needs the database URL: set ASAP_STORAGE_URL=postgres://USER@HOST:5432/DB (or give --db postgres://…)"
        );
        assert_eq!(
            err(None, None, None, Some("mysql://x@y/z")),
            "ASAP_STORAGE_URL=mysql://x@y/z is not a PostgreSQL URL: write postgres://USER[:PASSWORD]@HOST[:PORT]/DB"
        );
        assert_eq!(
            err(Some(url), None, None, Some("postgres://other/db")),
            "--db postgres://asap:***@127.0.0.1:5432/asap contradicts ASAP_STORAGE_URL=postgres://other/db: they name different PostgreSQL databases; remove one of them"
        );
        assert_eq!(
            err(Some(url), Some("memory"), None, None),
            "--db postgres://asap:***@127.0.0.1:5432/asap contradicts ASAP_STORAGE_BACKEND=memory: the URL names a PostgreSQL database; remove one of them"
        );
        assert_eq!(
            err(None, None, Some("x.db"), Some(url)),
            "ASAP_STORAGE_URL=postgres://asap:***@127.0.0.1:5432/asap contradicts ASAP_STORAGE_PATH=x.db: PostgreSQL keeps no file, so the path would be ignored; remove one of them"
        );
        assert_eq!(
            err(Some("x.db"), Some("postgres"), None, None),
            "--db x.db contradicts ASAP_STORAGE_BACKEND=postgres: the flag names a SQLite file, the variable PostgreSQL; remove one of them"
        );
        assert!(!err(Some("x.db"), None, None, Some(url)).contains("secret"));
        assert_eq!(redact_url("postgres://u@h/d"), "postgres://u@h/d");
        assert_eq!(
            redact_url("postgres://u:p@h/d?x=a:b@c"),
            "postgres://u:***@h/d?x=a:b@c"
        );
    }

    #[test]
    fn errors_name_the_valid_values() {
        // The exact text of vectors/storage/sqlite_and_metering.json.
        assert_eq!(
            StorageConfig::from_values(Some("redis"), None)
                .unwrap_err()
                .to_string(),
            "Unknown ASAP_STORAGE_BACKEND='redis'. Use 'memory', 'sqlite' or 'postgres'."
        );
        // Trimmed and lower-cased before the message, as Python does.
        assert_eq!(
            StorageConfig::from_values(Some(" Redis "), None).unwrap_err(),
            StorageConfigError::UnknownBackend("redis".into())
        );
        assert_eq!(
            StorageConfig::from_values(Some(" Postgres "), None).unwrap_err(),
            StorageConfigError::MissingUrl
        );
        assert_eq!(
            StorageConfig::from_values(Some(""), None)
                .unwrap_err()
                .to_string(),
            "Unknown ASAP_STORAGE_BACKEND=''. Use 'memory', 'sqlite' or 'postgres'."
        );
        assert_eq!(
            StorageConfigError::UnknownBackend("it's".into()).to_string(),
            "Unknown ASAP_STORAGE_BACKEND=\"it's\". Use 'memory', 'sqlite' or 'postgres'."
        );
        assert_eq!(
            StorageConfig::from_values(Some("sqlite"), Some("  ")).unwrap_err(),
            StorageConfigError::EmptyPath
        );
    }
}
