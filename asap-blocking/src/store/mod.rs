//! Persistent stores: SQLite implementations of `asap_proto::store`'s traits,
//! and opening the configured backend from `ASAP_STORAGE_BACKEND` /
//! `ASAP_STORAGE_PATH` (spec §17.2).
//!
//! ```
//! use asap_blocking::store::{open_stores, Stores};
//! use asap_proto::store::{StorageBackend, StorageConfig};
//! let config = StorageConfig::from_values(Some("memory"), None)?;
//! let Stores { snapshots, metering, .. } = open_stores(&config)?;
//! assert_eq!(snapshots.list_versions("task_1")?, Vec::<i64>::new());
//! # let _ = metering;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod sqlite;

use std::ffi::OsString;
use std::path::PathBuf;

use asap_proto::model::{StateSnapshot, UnixTime};
use asap_proto::store::{
    DedupRecord, NonceRecord, StorageBackend, StorageConfig, StorageConfigError, StoreError,
    UsageEvent, STORAGE_BACKEND_ENV, STORAGE_PATH_ENV, STORAGE_URL_ENV,
};

/// The stores and their group commit live in the core (no I/O); re-exported
/// here, where the SQLite ones are opened.
pub use asap_proto::store::{GroupCommit, Stores};

pub use sqlite::{
    SharedConnection, SqliteMeteringStore, SqliteOptions, SqliteReplayStore, SqliteSnapshotStore,
    SqliteWebhookStore, Synchronous, REPLAY_DEDUP_DDL, REPLAY_DEDUP_INDEX_DDL, REPLAY_NONCES_DDL,
    REPLAY_NONCES_INDEX_DDL, SNAPSHOTS_DDL, USAGE_EVENTS_DDL, USAGE_EVENTS_INDEX_DDL,
    WEBHOOK_OUTBOX_DDL,
};

impl GroupCommit for SharedConnection {
    fn record_group(
        &mut self,
        snapshots: &[StateSnapshot],
        events: &[UsageEvent],
        nonces: &[NonceRecord],
        dedup: &[DedupRecord],
        now: UnixTime,
    ) -> Result<(), StoreError> {
        sqlite::record_tasks(self, snapshots, events, nonces, dedup, now)
    }
}

/// Why the configured stores could not be opened at startup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenStoresError {
    /// The environment names an unusable configuration.
    #[error(transparent)]
    Config(#[from] StorageConfigError),
    /// The directory the SQLite file should be created in does not exist.
    #[error("cannot create the SQLite state database {}: directory {} does not exist; create it, or choose another path", path.display(), dir.display())]
    MissingDirectory {
        /// The database file asked for.
        path: PathBuf,
        /// Its missing directory.
        dir: PathBuf,
    },
    /// This crate cannot open the backend; `how` names what can.
    #[error("the {backend} backend is not available here: use {how}")]
    NeedsAdapter {
        /// The backend asked for.
        backend: StorageBackend,
        /// What opens it.
        how: &'static str,
    },
    /// The SQLite file could not be opened or initialised.
    #[error("cannot open the SQLite state database {}: {source}", path.display())]
    Open {
        /// The file from `ASAP_STORAGE_PATH`.
        path: PathBuf,
        /// What went wrong.
        source: StoreError,
    },
}

/// Reads `ASAP_STORAGE_BACKEND` and `ASAP_STORAGE_PATH` from the process
/// environment; an unset backend means `default_backend` (the reference
/// defaults to memory, `asap serve` to SQLite).
pub fn storage_config_from_env(
    default_backend: StorageBackend,
) -> Result<StorageConfig, StorageConfigError> {
    storage_config_from_lookup(default_backend, |name| std::env::var_os(name))
}

/// As [`storage_config_from_env`] with variables read through `lookup` (for tests and embedding).
pub fn storage_config_from_lookup(
    default_backend: StorageBackend,
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Result<StorageConfig, StorageConfigError> {
    let read = |name: &'static str| -> Result<Option<String>, StorageConfigError> {
        lookup(name)
            .map(|v| {
                v.into_string()
                    .map_err(|_| StorageConfigError::NotUnicode(name))
            })
            .transpose()
    };
    let backend = read(STORAGE_BACKEND_ENV)?;
    let path = read(STORAGE_PATH_ENV)?;
    let url = read(STORAGE_URL_ENV)?;
    StorageConfig::resolve_with_url(
        default_backend,
        None,
        backend.as_deref(),
        path.as_deref(),
        url.as_deref(),
    )
}

/// The storage of a process that also takes a `--db` flag, from the flag and
/// the process environment, by [`StorageConfig::resolve`]'s one precedence
/// (contradictions are errors naming both settings).
pub fn storage_config_with_db(
    default_backend: StorageBackend,
    db: Option<&std::path::Path>,
) -> Result<StorageConfig, StorageConfigError> {
    storage_config_with_db_from_lookup(default_backend, db, |name| std::env::var_os(name))
}

/// As [`storage_config_with_db`] with variables read through `lookup`.
pub fn storage_config_with_db_from_lookup(
    default_backend: StorageBackend,
    db: Option<&std::path::Path>,
    lookup: impl Fn(&str) -> Option<OsString>,
) -> Result<StorageConfig, StorageConfigError> {
    let read = |name: &'static str| -> Result<Option<String>, StorageConfigError> {
        lookup(name)
            .map(|v| {
                v.into_string()
                    .map_err(|_| StorageConfigError::NotUnicode(name))
            })
            .transpose()
    };
    let backend = read(STORAGE_BACKEND_ENV)?;
    let path = read(STORAGE_PATH_ENV)?;
    let url = read(STORAGE_URL_ENV)?;
    let db = db
        .map(|d| d.to_str().ok_or(StorageConfigError::NotUnicode("--db")))
        .transpose()?;
    StorageConfig::resolve_with_url(
        default_backend,
        db,
        backend.as_deref(),
        path.as_deref(),
        url.as_deref(),
    )
}

/// Opens the stores `config` names: two in-memory stores, or SQLite stores
/// sharing the file `config.path` (created if missing, with the reference's schema).
pub fn open_stores(config: &StorageConfig) -> Result<Stores, OpenStoresError> {
    open_stores_with(config, &SqliteOptions::default())
}

/// As [`open_stores`] with explicit SQLite options.
pub fn open_stores_with(
    config: &StorageConfig,
    options: &SqliteOptions,
) -> Result<Stores, OpenStoresError> {
    match config.backend {
        StorageBackend::Memory => Ok(Stores::memory(config.clone())),
        StorageBackend::Postgres => Err(OpenStoresError::NeedsAdapter {
            backend: StorageBackend::Postgres,
            how: "asap-tokio with its `postgres` feature (asap_tokio::postgres::open_stores; `asap serve --db postgres://…`)",
        }),
        StorageBackend::Sqlite => {
            if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                if !dir.is_dir() {
                    return Err(OpenStoresError::MissingDirectory {
                        path: config.path.clone(),
                        dir: dir.to_owned(),
                    });
                }
            }
            let failed = |source| OpenStoresError::Open {
                path: config.path.clone(),
                source,
            };
            let opened = sqlite::open_shared(&config.path, options).map_err(failed)?;
            let stores = Stores::new(
                Box::new(opened.snapshots),
                Box::new(opened.metering),
                config.clone(),
            )
            .with_group_commit(Box::new(opened.conn));
            // Replay state is judged against the wall clock, like the window itself.
            let now = UnixTime::from_system_time(std::time::SystemTime::now());
            stores
                .with_replay(Box::new(opened.replay), now)
                .map_err(failed)
        }
    }
}

/// Reads the environment ([`storage_config_from_env`]) and opens the stores it names.
pub fn open_stores_from_env(default_backend: StorageBackend) -> Result<Stores, OpenStoresError> {
    open_stores(&storage_config_from_env(default_backend)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lookup<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<OsString> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    #[test]
    fn env_selects_the_backend() {
        let c = storage_config_from_lookup(StorageBackend::Sqlite, lookup(&[])).unwrap();
        assert_eq!(c.backend, StorageBackend::Sqlite);
        assert_eq!(c.path, PathBuf::from("asap_state.db"));
        let c = storage_config_from_lookup(
            StorageBackend::Sqlite,
            lookup(&[("ASAP_STORAGE_BACKEND", "Memory")]),
        )
        .unwrap();
        assert_eq!(c.backend, StorageBackend::Memory);
        let err = storage_config_from_lookup(
            StorageBackend::Memory,
            lookup(&[("ASAP_STORAGE_BACKEND", "redis")]),
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Unknown ASAP_STORAGE_BACKEND='redis'. Use 'memory', 'sqlite' or 'postgres'."
        );
    }

    #[cfg(unix)]
    #[test]
    fn non_unicode_values_are_named() {
        use std::os::unix::ffi::OsStringExt;
        let err = storage_config_from_lookup(StorageBackend::Memory, |name| {
            (name == "ASAP_STORAGE_PATH").then(|| OsString::from_vec(vec![0xff]))
        })
        .unwrap_err();
        assert_eq!(err, StorageConfigError::NotUnicode("ASAP_STORAGE_PATH"));
    }

    #[test]
    fn an_unopenable_file_names_the_path() {
        let config =
            StorageConfig::from_values(Some("sqlite"), Some("/nonexistent-asap-dir/sub/state.db"))
                .unwrap();
        let err = open_stores(&config).unwrap_err();
        assert!(
            err.to_string()
                .contains("/nonexistent-asap-dir/sub/state.db"),
            "{err}"
        );
    }
}
