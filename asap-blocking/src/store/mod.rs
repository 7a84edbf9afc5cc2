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

use asap_proto::model::StateSnapshot;
use asap_proto::server::state::TaskRecords;
use asap_proto::store::{
    MemoryMeteringStore, MemorySnapshotStore, MeteringStore, SnapshotStore, StorageBackend,
    StorageConfig, StorageConfigError, StoreError, UsageEvent, STORAGE_BACKEND_ENV,
    STORAGE_PATH_ENV,
};

pub use sqlite::{
    SharedConnection, SqliteMeteringStore, SqliteOptions, SqliteSnapshotStore, Synchronous,
    SNAPSHOTS_DDL, USAGE_EVENTS_DDL, USAGE_EVENTS_INDEX_DDL,
};

/// The configured snapshot and metering stores, ready to use.
pub struct Stores {
    /// Versioned task state.
    pub snapshots: Box<dyn SnapshotStore + Send>,
    /// Usage events.
    pub metering: Box<dyn MeteringStore + Send>,
    /// The configuration they were opened with.
    pub config: StorageConfig,
    /// The one connection both SQLite stores share (for [`Stores::record_tasks`]).
    shared: Option<sqlite::SharedConnection>,
}

impl Stores {
    /// Stores built from any two backends (no shared transaction between them).
    pub fn new(
        snapshots: Box<dyn SnapshotStore + Send>,
        metering: Box<dyn MeteringStore + Send>,
        config: StorageConfig,
    ) -> Self {
        Self {
            snapshots,
            metering,
            config,
            shared: None,
        }
    }

    /// Persists the records of one skill run (one commit on SQLite; moved, not
    /// copied, into in-memory stores).
    pub fn record_task(&mut self, records: TaskRecords) -> Result<(), StoreError> {
        if self.shared.is_some() {
            return self.record_tasks(
                std::slice::from_ref(&records.snapshot),
                std::slice::from_ref(&records.usage),
            );
        }
        self.snapshots
            .save_owned(records.snapshot)
            .and_then(|()| self.metering.record(&records.usage))
    }

    /// Persists the snapshots and usage events of finished tasks: for SQLite in
    /// one transaction (one commit, so an agent can group-commit concurrent
    /// tasks at one sync per group), otherwise as two batches.
    pub fn record_tasks(
        &mut self,
        snapshots: &[StateSnapshot],
        events: &[UsageEvent],
    ) -> Result<(), StoreError> {
        match &self.shared {
            Some(conn) => sqlite::record_tasks(conn, snapshots, events),
            None => self
                .snapshots
                .save_batch(snapshots)
                .and_then(|()| self.metering.record_batch(events)),
        }
    }
}

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("config", &self.config)
            .finish_non_exhaustive()
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
    StorageConfig::from_values_or(default_backend, backend.as_deref(), path.as_deref())
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
        StorageBackend::Memory => Ok(Stores::new(
            Box::new(MemorySnapshotStore::new()),
            Box::new(MemoryMeteringStore::new()),
            config.clone(),
        )),
        StorageBackend::Sqlite => {
            if let Some(dir) = config.path.parent().filter(|d| !d.as_os_str().is_empty()) {
                if !dir.is_dir() {
                    return Err(OpenStoresError::MissingDirectory {
                        path: config.path.clone(),
                        dir: dir.to_owned(),
                    });
                }
            }
            let (snapshots, metering, conn) =
                sqlite::open_shared(&config.path, options).map_err(|source| {
                    OpenStoresError::Open {
                        path: config.path.clone(),
                        source,
                    }
                })?;
            Ok(Stores {
                snapshots: Box::new(snapshots),
                metering: Box::new(metering),
                config: config.clone(),
                shared: Some(conn),
            })
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
            "Unknown ASAP_STORAGE_BACKEND='redis'. Use 'memory' or 'sqlite'."
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
