//! [`SnapshotStore`]: versioned task state (spec §17.1), and its in-memory implementation.

use std::collections::BTreeMap;

use super::StoreError;
use crate::model::StateSnapshot;

/// Versioned [`StateSnapshot`]s per task, as the reference's `SnapshotStore` (spec §17.1).
///
/// Semantics every backend follows (checked by `store::contract`):
///
/// * Versions are caller-assigned integers ≥ 1; there is no auto-increment.
/// * [`save`](Self::save) upserts by `(task_id, version)`: saving a version that
///   already exists **replaces** it, as the reference does (`INSERT OR REPLACE`
///   in SQLite, a dict assignment in memory). It is not an error.
/// * "Latest" means the **highest version**, not the most recent `created_at`.
/// * Unknown tasks are not errors: `get*` return `None`, `list_versions`
///   returns an empty list, `delete*` return `false`.
///
/// Reads take `&self`, writes `&mut self`; share a store between threads with
/// a lock of your choice (or one store per thread on the same SQLite file).
pub trait SnapshotStore {
    /// Saves `snapshot`, replacing any snapshot with the same task id and version.
    ///
    /// Fails with [`StoreError::InvalidInput`] if the version is below 1 (nothing is written).
    fn save(&mut self, snapshot: &StateSnapshot) -> Result<(), StoreError>;

    /// The snapshot of `task_id` at exactly `version`, if stored.
    fn get(&self, task_id: &str, version: i64) -> Result<Option<StateSnapshot>, StoreError>;

    /// The snapshot of `task_id` with the highest version, if any.
    fn get_latest(&self, task_id: &str) -> Result<Option<StateSnapshot>, StoreError>;

    /// The stored versions of `task_id`, ascending; empty for an unknown task.
    fn list_versions(&self, task_id: &str) -> Result<Vec<i64>, StoreError>;

    /// Deletes one version; `true` iff it existed.
    fn delete(&mut self, task_id: &str, version: i64) -> Result<bool, StoreError>;

    /// Deletes every version of `task_id`; `true` iff at least one existed.
    fn delete_all(&mut self, task_id: &str) -> Result<bool, StoreError>;

    /// Saves every snapshot; nothing is written if one is invalid. Backends that
    /// can commit them together do so (SQLite: one transaction, one sync), which is
    /// what lets an agent group-commit concurrent tasks.
    fn save_batch(&mut self, snapshots: &[StateSnapshot]) -> Result<(), StoreError> {
        snapshots.iter().try_for_each(check_snapshot)?;
        snapshots.iter().try_for_each(|s| self.save(s))
    }
}

impl<S: SnapshotStore + ?Sized> SnapshotStore for Box<S> {
    fn save(&mut self, snapshot: &StateSnapshot) -> Result<(), StoreError> {
        (**self).save(snapshot)
    }
    fn get(&self, task_id: &str, version: i64) -> Result<Option<StateSnapshot>, StoreError> {
        (**self).get(task_id, version)
    }
    fn get_latest(&self, task_id: &str) -> Result<Option<StateSnapshot>, StoreError> {
        (**self).get_latest(task_id)
    }
    fn list_versions(&self, task_id: &str) -> Result<Vec<i64>, StoreError> {
        (**self).list_versions(task_id)
    }
    fn delete(&mut self, task_id: &str, version: i64) -> Result<bool, StoreError> {
        (**self).delete(task_id, version)
    }
    fn delete_all(&mut self, task_id: &str) -> Result<bool, StoreError> {
        (**self).delete_all(task_id)
    }
    fn save_batch(&mut self, snapshots: &[StateSnapshot]) -> Result<(), StoreError> {
        (**self).save_batch(snapshots)
    }
}

/// Checks what every backend requires of a snapshot before writing it (version ≥ 1,
/// as the wire model demands); backends call this so they reject the same inputs.
pub fn check_snapshot(snapshot: &StateSnapshot) -> Result<(), StoreError> {
    if snapshot.version < 1 {
        return Err(StoreError::InvalidInput {
            what: "snapshot version",
            reason: format!(
                "must be at least 1, got {} (task {:?})",
                snapshot.version, snapshot.task_id
            ),
        });
    }
    Ok(())
}

/// An in-memory [`SnapshotStore`]: nothing survives the process. For tests,
/// development, and the reference's default `ASAP_STORAGE_BACKEND=memory`.
#[derive(Debug, Clone, Default)]
pub struct MemorySnapshotStore {
    tasks: BTreeMap<String, BTreeMap<i64, StateSnapshot>>,
}

impl MemorySnapshotStore {
    /// An empty store.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of snapshots held, over all tasks.
    #[must_use]
    pub fn len(&self) -> usize {
        self.tasks.values().map(BTreeMap::len).sum()
    }

    /// Whether the store holds no snapshot.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }
}

impl SnapshotStore for MemorySnapshotStore {
    fn save(&mut self, snapshot: &StateSnapshot) -> Result<(), StoreError> {
        check_snapshot(snapshot)?;
        self.tasks
            .entry(snapshot.task_id.clone())
            .or_default()
            .insert(snapshot.version, snapshot.clone());
        Ok(())
    }

    fn get(&self, task_id: &str, version: i64) -> Result<Option<StateSnapshot>, StoreError> {
        Ok(self
            .tasks
            .get(task_id)
            .and_then(|versions| versions.get(&version))
            .cloned())
    }

    fn get_latest(&self, task_id: &str) -> Result<Option<StateSnapshot>, StoreError> {
        Ok(self
            .tasks
            .get(task_id)
            .and_then(|versions| versions.last_key_value())
            .map(|(_, s)| s.clone()))
    }

    fn list_versions(&self, task_id: &str) -> Result<Vec<i64>, StoreError> {
        Ok(self
            .tasks
            .get(task_id)
            .map(|versions| versions.keys().copied().collect())
            .unwrap_or_default())
    }

    fn delete(&mut self, task_id: &str, version: i64) -> Result<bool, StoreError> {
        let Some(versions) = self.tasks.get_mut(task_id) else {
            return Ok(false);
        };
        let removed = versions.remove(&version).is_some();
        if versions.is_empty() {
            self.tasks.remove(task_id);
        }
        Ok(removed)
    }

    fn delete_all(&mut self, task_id: &str) -> Result<bool, StoreError> {
        Ok(self.tasks.remove(task_id).is_some())
    }
}
