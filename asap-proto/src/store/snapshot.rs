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

    /// As [`save`](Self::save), taking the snapshot: a store that keeps values
    /// (the in-memory one) moves it instead of copying.
    fn save_owned(&mut self, snapshot: StateSnapshot) -> Result<(), StoreError> {
        self.save(&snapshot)
    }

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
    fn save_owned(&mut self, snapshot: StateSnapshot) -> Result<(), StoreError> {
        (**self).save_owned(snapshot)
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

/// Tasks an in-memory snapshot store keeps by default: a long-running agent
/// on memory state holds the most recently written 10 000 tasks (every version
/// of each) and forgets older ones, instead of growing without bound.
pub const DEFAULT_MEMORY_RETAINED_TASKS: usize = 10_000;

/// An in-memory [`SnapshotStore`]: nothing survives the process. For tests,
/// development, and the reference's default `ASAP_STORAGE_BACKEND=memory`.
///
/// Bounded: it keeps the [`retained_tasks`](Self::with_retained_tasks) most
/// recently written tasks (default [`DEFAULT_MEMORY_RETAINED_TASKS`]); saving
/// a snapshot of a new task beyond that forgets the least recently written one.
#[derive(Debug, Clone)]
pub struct MemorySnapshotStore {
    tasks: BTreeMap<String, (u64, BTreeMap<i64, StateSnapshot>)>,
    /// Write order: sequence number of a task's last write -> task id.
    order: BTreeMap<u64, String>,
    seq: u64,
    retained_tasks: usize,
}

impl Default for MemorySnapshotStore {
    fn default() -> Self {
        Self::with_retained_tasks(DEFAULT_MEMORY_RETAINED_TASKS)
    }
}

impl MemorySnapshotStore {
    /// An empty store keeping [`DEFAULT_MEMORY_RETAINED_TASKS`] tasks.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty store keeping at most `tasks` tasks (at least 1).
    #[must_use]
    pub fn with_retained_tasks(tasks: usize) -> Self {
        Self {
            tasks: BTreeMap::new(),
            order: BTreeMap::new(),
            seq: 0,
            retained_tasks: tasks.max(1),
        }
    }

    /// Number of snapshots held, over all tasks.
    #[must_use]
    pub fn len(&self) -> usize {
        self.tasks.values().map(|(_, v)| v.len()).sum()
    }

    /// Number of tasks held.
    #[must_use]
    pub fn task_count(&self) -> usize {
        self.tasks.len()
    }

    /// Whether the store holds no snapshot.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.tasks.is_empty()
    }

    fn versions(&self, task_id: &str) -> Option<&BTreeMap<i64, StateSnapshot>> {
        self.tasks.get(task_id).map(|(_, v)| v)
    }

    fn forget(&mut self, task_id: &str) -> bool {
        match self.tasks.remove(task_id) {
            Some((seq, _)) => {
                self.order.remove(&seq);
                true
            }
            None => false,
        }
    }
}

impl SnapshotStore for MemorySnapshotStore {
    fn save(&mut self, snapshot: &StateSnapshot) -> Result<(), StoreError> {
        self.save_owned(snapshot.clone())
    }

    fn save_owned(&mut self, snapshot: StateSnapshot) -> Result<(), StoreError> {
        check_snapshot(&snapshot)?;
        self.seq += 1;
        let seq = self.seq;
        let task_id = snapshot.task_id.clone();
        let entry = self
            .tasks
            .entry(task_id.clone())
            .or_insert_with(|| (seq, BTreeMap::new()));
        let previous = std::mem::replace(&mut entry.0, seq);
        entry.1.insert(snapshot.version, snapshot);
        self.order.remove(&previous);
        self.order.insert(seq, task_id);
        while self.tasks.len() > self.retained_tasks {
            let Some((_, oldest)) = self.order.pop_first() else {
                break;
            };
            self.tasks.remove(&oldest);
        }
        Ok(())
    }

    fn get(&self, task_id: &str, version: i64) -> Result<Option<StateSnapshot>, StoreError> {
        Ok(self
            .versions(task_id)
            .and_then(|versions| versions.get(&version))
            .cloned())
    }

    fn get_latest(&self, task_id: &str) -> Result<Option<StateSnapshot>, StoreError> {
        Ok(self
            .versions(task_id)
            .and_then(|versions| versions.last_key_value())
            .map(|(_, s)| s.clone()))
    }

    fn list_versions(&self, task_id: &str) -> Result<Vec<i64>, StoreError> {
        Ok(self
            .versions(task_id)
            .map(|versions| versions.keys().copied().collect())
            .unwrap_or_default())
    }

    fn delete(&mut self, task_id: &str, version: i64) -> Result<bool, StoreError> {
        let Some((_, versions)) = self.tasks.get_mut(task_id) else {
            return Ok(false);
        };
        let removed = versions.remove(&version).is_some();
        if versions.is_empty() {
            self.forget(task_id);
        }
        Ok(removed)
    }

    fn delete_all(&mut self, task_id: &str) -> Result<bool, StoreError> {
        Ok(self.forget(task_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{JsonObject, Timestamp, UnixTime};
    use proptest::prelude::*;

    fn snap(task: &str, version: i64) -> StateSnapshot {
        StateSnapshot {
            id: format!("snap_{task}_{version}"),
            task_id: task.into(),
            version,
            data: JsonObject::new(),
            checkpoint: false,
            created_at: Timestamp::from_unix(UnixTime::from_secs(0)),
        }
    }

    #[test]
    fn the_least_recently_written_task_is_forgotten_first() {
        let mut s = MemorySnapshotStore::with_retained_tasks(2);
        s.save(&snap("a", 1)).unwrap();
        s.save(&snap("b", 1)).unwrap();
        s.save(&snap("a", 2)).unwrap(); // a is now the most recent
        s.save(&snap("c", 1)).unwrap(); // b goes
        assert_eq!(s.list_versions("b").unwrap(), Vec::<i64>::new());
        assert_eq!(s.list_versions("a").unwrap(), [1, 2]);
        assert_eq!(s.list_versions("c").unwrap(), [1]);
        assert!(s.delete_all("a").unwrap());
        s.save(&snap("d", 1)).unwrap();
        assert_eq!((s.task_count(), s.len()), (2, 2));
    }

    proptest! {
        #[test]
        fn memory_stays_bounded_and_the_newest_task_is_always_kept(
            ops in prop::collection::vec((0u8..30, 1i64..4, any::<bool>()), 1..200),
            cap in 1usize..8,
        ) {
            let mut s = MemorySnapshotStore::with_retained_tasks(cap);
            for (task, version, delete) in ops {
                let id = format!("t{task}");
                if delete {
                    s.delete(&id, version).unwrap();
                } else {
                    s.save(&snap(&id, version)).unwrap();
                    prop_assert!(s.get(&id, version).unwrap().is_some());
                }
                prop_assert!(s.task_count() <= cap);
                prop_assert_eq!(s.order.len(), s.tasks.len());
            }
        }
    }
}
