//! [`Stores`]: the stores an agent records its task state in, whatever their
//! backend (memory here; SQLite in `asap-blocking`; PostgreSQL in
//! `asap-tokio`), and the [`GroupCommit`] a backend with transactions offers.

use super::{
    ClaimOutcome, DedupRecord, MeteringStore, NonceRecord, ReplayClaim, ReplayStore, SnapshotStore,
    StorageConfig, StoreError, UsageEvent,
};
use crate::model::{StateSnapshot, UnixTime};
use crate::server::state::TaskRecords;
use crate::server::Records;

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

    /// The in-memory stores of `config` (the memory backend: bounded, lost at exit).
    #[must_use]
    pub fn memory(config: StorageConfig) -> Self {
        Self::new(
            Box::new(super::MemorySnapshotStore::new()),
            Box::new(super::MemoryMeteringStore::new()),
            config,
        )
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

    /// Input for [`Step::Claim`](crate::server::Step::Claim): the claim
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

    /// Persists one [`Step::Persist`](crate::server::Step::Persist): the
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

impl std::fmt::Debug for Stores {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Stores")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}
