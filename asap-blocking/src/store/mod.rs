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
use asap_proto::server::state::TaskRecords;
use asap_proto::server::Records;
use asap_proto::store::{
    ClaimOutcome, DedupRecord, MemoryMeteringStore, MemorySnapshotStore, MeteringStore,
    NonceRecord, ReplayClaim, ReplayStore, SnapshotStore, StorageBackend, StorageConfig,
    StorageConfigError, StoreError, UsageEvent, STORAGE_BACKEND_ENV, STORAGE_PATH_ENV,
    STORAGE_URL_ENV,
};

pub use sqlite::{
    SharedConnection, SqliteMeteringStore, SqliteOptions, SqliteReplayStore, SqliteSnapshotStore,
    SqliteWebhookStore, Synchronous, REPLAY_DEDUP_DDL, REPLAY_DEDUP_INDEX_DDL, REPLAY_NONCES_DDL,
    REPLAY_NONCES_INDEX_DDL, SNAPSHOTS_DDL, USAGE_EVENTS_DDL, USAGE_EVENTS_INDEX_DDL,
    WEBHOOK_OUTBOX_DDL,
};

/// The configured snapshot, metering and replay stores, ready to use.
pub struct Stores {
    /// Versioned task state.
    pub snapshots: Box<dyn SnapshotStore + Send>,
    /// Usage events.
    pub metering: Box<dyn MeteringStore + Send>,
    /// Replay state that survives a restart (`None` on the memory backend:
    /// accepted nonces then live in the server's memory only).
    pub replay: Option<Box<dyn ReplayStore + Send>>,
    /// The configuration they were opened with.
    pub config: StorageConfig,
    /// The backend's one-transaction commit of a group (SQLite's shared
    /// connection, a PostgreSQL pool), for [`Stores::record_group`].
    group: Option<Box<dyn GroupCommit>>,
    /// Nonces live when the stores were opened, for the server to remember.
    restored_nonces: Vec<NonceRecord>,
    /// Dedup answers live when the stores were opened, and when that was.
    restored_dedup: (Vec<DedupRecord>, UnixTime),
}

impl Stores {
    /// Stores built from any two backends (no shared transaction between them,
    /// no replay state: see [`Stores::with_replay`]).
    pub fn new(
        snapshots: Box<dyn SnapshotStore + Send>,
        metering: Box<dyn MeteringStore + Send>,
        config: StorageConfig,
    ) -> Self {
        Self {
            snapshots,
            metering,
            replay: None,
            config,
            group: None,
            restored_nonces: Vec::new(),
            restored_dedup: (Vec::new(), UnixTime::EPOCH),
        }
    }

    /// Adds durable replay state: purges what expired at `now` and keeps the
    /// live nonces for the server ([`Stores::take_restored_nonces`]).
    pub fn with_replay(
        mut self,
        mut replay: Box<dyn ReplayStore + Send>,
        now: UnixTime,
    ) -> Result<Self, StoreError> {
        replay.purge_expired(now)?;
        self.restored_nonces = replay.load_nonces(now)?;
        self.restored_dedup = (replay.load_dedup(now)?, now);
        self.replay = Some(replay);
        Ok(self)
    }

    /// Commits groups through `group` (one transaction for a group's
    /// snapshots, events, nonces and dedup answers) instead of store by store.
    #[must_use]
    pub fn with_group_commit(mut self, group: Box<dyn GroupCommit>) -> Self {
        self.group = Some(group);
        self
    }

    /// Input for [`Step::Claim`](asap_proto::server::Step::Claim): the claim
    /// decided by the replay store. Without one (memory), state is not shared
    /// with anyone: the server's own window has decided already, so it is won.
    pub fn claim(&mut self, claim: &ReplayClaim) -> Result<ClaimOutcome, StoreError> {
        match self.replay.as_mut() {
            Some(replay) => replay.claim(claim),
            None => Ok(ClaimOutcome::Won),
        }
    }

    /// The nonces that were live when the stores were opened (once; then empty).
    /// Each adapter's agent builder hands them to the core, which refuses
    /// their replays after a restart.
    pub fn take_restored_nonces(&mut self) -> Vec<NonceRecord> {
        std::mem::take(&mut self.restored_nonces)
    }

    /// The receiver-dedup answers that were live when the stores were opened
    /// and the time they were loaded (once; then empty), for the core's window.
    pub fn take_restored_dedup(&mut self) -> (Vec<DedupRecord>, UnixTime) {
        std::mem::replace(&mut self.restored_dedup, (Vec::new(), UnixTime::EPOCH))
    }

    /// Persists one [`Step::Persist`](asap_proto::server::Step::Persist): the
    /// task records and the accepted nonce (one commit on SQLite). Without
    /// replay state the nonce is not kept (it lives in the server's memory).
    pub fn record(&mut self, records: Records) -> Result<(), StoreError> {
        let Records {
            task,
            nonce,
            dedup,
            now,
        } = records;
        if self.group.is_some() {
            let (snapshots, events) = match task {
                Some(t) => (vec![t.snapshot], vec![t.usage]),
                None => (Vec::new(), Vec::new()),
            };
            return self.record_group(&snapshots, &events, nonce.as_slice(), dedup.as_slice(), now);
        }
        if let Some(task) = task {
            self.record_task(task)?;
        }
        let Some(replay) = self.replay.as_mut() else {
            return Ok(());
        };
        if nonce.is_none() && dedup.is_none() {
            return Ok(());
        }
        if let Some(n) = nonce {
            replay.record_nonce(&n)?;
        }
        if let Some(d) = dedup {
            replay.record_dedup(&d)?;
        }
        replay.purge_expired(now).map(|_| ())
    }

    /// As [`Stores::record_tasks`], with the nonces accepted by the same
    /// requests (one transaction on SQLite; nonces expired at `now` are purged in it).
    pub fn record_group(
        &mut self,
        snapshots: &[StateSnapshot],
        events: &[UsageEvent],
        nonces: &[NonceRecord],
        dedup: &[DedupRecord],
        now: UnixTime,
    ) -> Result<(), StoreError> {
        if let Some(group) = self.group.as_mut() {
            return group.record_group(snapshots, events, nonces, dedup, now);
        }
        self.record_tasks(snapshots, events)?;
        match self.replay.as_mut() {
            Some(replay) if !nonces.is_empty() || !dedup.is_empty() => {
                replay.record_nonces(nonces)?;
                dedup.iter().try_for_each(|d| replay.record_dedup(d))?;
                replay.purge_expired(now).map(|_| ())
            }
            _ => Ok(()),
        }
    }

    /// Persists the records of one skill run (one commit on SQLite; moved, not
    /// copied, into in-memory stores).
    pub fn record_task(&mut self, records: TaskRecords) -> Result<(), StoreError> {
        if self.group.is_some() {
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
        match self.group.as_mut() {
            Some(group) => group.record_group(snapshots, events, &[], &[], UnixTime::EPOCH),
            None => self
                .snapshots
                .save_batch(snapshots)
                .and_then(|()| self.metering.record_batch(events)),
        }
    }
}

/// A backend that commits the records of several requests in one
/// transaction: SQLite's shared connection, a PostgreSQL pool.
pub trait GroupCommit: Send {
    /// Commits snapshots, usage events, accepted nonces and dedup answers
    /// together (all or none); replay records expired at `now` may be purged
    /// in the same commit.
    fn record_group(
        &mut self,
        snapshots: &[StateSnapshot],
        events: &[UsageEvent],
        nonces: &[NonceRecord],
        dedup: &[DedupRecord],
        now: UnixTime,
    ) -> Result<(), StoreError>;
}

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
        StorageBackend::Memory => Ok(Stores::new(
            Box::new(MemorySnapshotStore::new()),
            Box::new(MemoryMeteringStore::new()),
            config.clone(),
        )),
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
            let stores = Stores {
                snapshots: Box::new(opened.snapshots),
                metering: Box::new(opened.metering),
                replay: None,
                config: config.clone(),
                group: Some(Box::new(opened.conn)),
                restored_nonces: Vec::new(),
                restored_dedup: (Vec::new(), UnixTime::EPOCH),
            };
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
