//! `Stores::record_tasks`: snapshots and usage events of finished tasks commit together.

use asap_blocking::store::open_stores;
use asap_proto::model::{JsonObject, StateSnapshot, Timestamp, UnixTime};
use asap_proto::store::{StorageBackend, StorageConfig, UsageEvent, UsageMetrics};

fn snapshot(task: &str, version: i64) -> StateSnapshot {
    StateSnapshot {
        id: format!("snap_{task}_{version}"),
        task_id: task.into(),
        version,
        data: JsonObject::new(),
        checkpoint: true,
        created_at: Timestamp::from_unix(UnixTime::from_secs(1_767_225_600)),
    }
}

fn event(task: &str) -> UsageEvent {
    UsageEvent {
        task_id: task.into(),
        agent_id: "urn:asap:agent:a".into(),
        consumer_id: "urn:asap:agent:b".into(),
        metrics: UsageMetrics {
            duration_ms: 5,
            ..UsageMetrics::default()
        },
        timestamp: Timestamp::from_unix(UnixTime::from_secs(1_767_225_600)),
    }
}

#[test]
fn all_or_nothing_on_every_backend() {
    let dir = tempfile::tempdir().unwrap();
    for backend in [StorageBackend::Sqlite, StorageBackend::Memory] {
        let config = StorageConfig {
            backend,
            path: dir.path().join("state.db"),
            url: None,
        };
        let mut stores = open_stores(&config).unwrap();
        let (from, to) = (UnixTime::EPOCH, UnixTime::from_secs(2_000_000_000));
        stores
            .record_tasks(
                &[snapshot("t1", 1), snapshot("t2", 1)],
                &[event("t1"), event("t2")],
            )
            .unwrap();
        assert_eq!(stores.snapshots.list_versions("t2").unwrap(), vec![1]);
        let before = stores
            .metering
            .query("urn:asap:agent:a", from, to)
            .unwrap()
            .len();
        // An invalid snapshot in the group: nothing of the group is written.
        assert!(stores
            .record_tasks(&[snapshot("t3", 1), snapshot("t4", 0)], &[event("t3")])
            .is_err());
        assert!(
            stores.snapshots.list_versions("t3").unwrap().is_empty(),
            "{backend:?}"
        );
        assert_eq!(
            stores
                .metering
                .query("urn:asap:agent:a", from, to)
                .unwrap()
                .len(),
            before,
            "{backend:?}"
        );
    }
}

/// Checkpoints run on their own thread, and the WAL still restarts under a
/// steady stream of one-task commits: the file stays far below what the
/// commits wrote in all (~25 KiB each).
#[test]
fn the_wal_restarts_under_continuous_commits() {
    let dir = tempfile::tempdir().unwrap();
    let config = StorageConfig {
        backend: StorageBackend::Sqlite,
        path: dir.path().join("state.db"),
        url: None,
    };
    let mut stores = open_stores(&config).unwrap();
    let mut data = JsonObject::new();
    data.insert("input".into(), "x".repeat(2_000).into());
    for i in 0..4_000 {
        let mut s = snapshot(&format!("task_{i:05}"), 1);
        s.data = data.clone();
        stores
            .record_tasks(&[s], &[event(&format!("task_{i:05}"))])
            .unwrap();
        if i % 100 == 99 {
            // Room for the checkpoint thread on a busy machine.
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
    }
    let wal = std::fs::metadata(dir.path().join("state.db-wal")).map_or(0, |m| m.len());
    assert!(wal < 48 * 1024 * 1024, "WAL grew to {wal} bytes");
    assert_eq!(
        asap_proto::store::SnapshotStore::list_versions(stores.snapshots.as_ref(), "task_03999")
            .unwrap(),
        [1]
    );
}
