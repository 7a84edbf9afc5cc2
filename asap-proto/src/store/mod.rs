//! Persistent task state and usage metering: the storage contracts (spec §17).
//!
//! Two traits describe what an agent persists:
//!
//! * [`SnapshotStore`]: versioned [`StateSnapshot`](crate::model::StateSnapshot)s
//!   per task (save, get a version, get the latest, list versions, delete).
//! * [`MeteringStore`]: [`UsageEvent`]s per agent (record, query a time range,
//!   aggregate over an hour, day, week, month, or everything).
//! * [`WebhookStore`]: the webhook outbox's pending deliveries and dead letters.
//! * [`ReplayStore`]: the replay state that must survive a restart: accepted
//!   nonces ([`NonceRecord`]) and the dedup window's answers ([`DedupRecord`]).
//!
//! This module holds the contracts, the models, the in-memory implementations
//! ([`MemorySnapshotStore`], [`MemoryMeteringStore`], [`MemoryReplayStore`]) and the pure parsing of
//! the storage configuration ([`StorageConfig`]). Like the rest of the core it
//! does no I/O and reads no clock: every time value comes in the data or as an
//! argument. `asap-blocking` implements both traits on SQLite with the
//! reference's schema; `asap-tokio` runs those stores off the async runtime.
//!
//! ```
//! use asap_proto::model::{StateSnapshot, Timestamp, JsonObject};
//! use asap_proto::store::{MemorySnapshotStore, SnapshotStore};
//!
//! let mut store = MemorySnapshotStore::new();
//! let snapshot = |version| StateSnapshot {
//!     id: format!("snap_{version}"),
//!     task_id: "task_1".into(),
//!     version,
//!     data: JsonObject::new(),
//!     checkpoint: false,
//!     created_at: "2026-01-01T00:00:00Z".parse::<Timestamp>().unwrap(),
//! };
//! store.save(&snapshot(2))?;
//! store.save(&snapshot(1))?;
//! assert_eq!(store.list_versions("task_1")?, vec![1, 2]);
//! assert_eq!(store.get_latest("task_1")?.map(|s| s.version), Some(2));
//! assert!(store.delete("task_1", 2)?);
//! assert_eq!(store.get_latest("task_1")?.map(|s| s.version), Some(1));
//! # Ok::<(), asap_proto::store::StoreError>(())
//! ```
//!
//! Every backend must pass the same contract suite, `store::contract`
//! (compiled with the `contract-tests` cargo feature).

mod config;
#[cfg(any(test, feature = "contract-tests"))]
pub mod contract;
#[cfg(any(test, feature = "contract-tests"))]
pub mod contract_webhook;
mod error;
mod metering;
mod replay;
mod snapshot;
mod stores;
mod webhook;

pub use config::{
    is_postgres_url, redact_url, StorageBackend, StorageConfig, StorageConfigError,
    DEFAULT_STORAGE_PATH, STORAGE_BACKEND_ENV, STORAGE_PATH_ENV, STORAGE_URL_ENV,
};
pub use error::StoreError;
pub use metering::{
    AggregatePeriod, MemoryMeteringStore, MeteringStore, ParsePeriodError, UsageAggregate,
    UsageEvent, UsageMetrics, DEFAULT_MEMORY_RETAINED_EVENTS, MAX_METRIC_VALUE,
};
pub use replay::{
    check_dedup_record, check_nonce_record, check_replay_claim, ClaimOutcome, DedupClaim,
    DedupRecord, MemoryReplayStore, NonceRecord, ReplayClaim, ReplayStore,
};
pub use snapshot::{
    check_snapshot, MemorySnapshotStore, SnapshotStore, DEFAULT_MEMORY_RETAINED_TASKS,
};
pub use stores::{GroupCommit, Stores};
pub use webhook::{check_outbox_record, MemoryWebhookStore, WebhookChange, WebhookStore};
