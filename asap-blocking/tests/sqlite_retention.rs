//! `SqliteOptions::retention`: task snapshots older than the retention are
//! deleted in the background; newer ones stay (issue 14: storage growth has
//! a bound a user can set; `asap serve --retention-days`).

use std::time::{Duration, Instant, SystemTime};

use asap_blocking::store::{open_stores_with, SqliteOptions};
use asap_proto::model::{JsonObject, StateSnapshot, Timestamp, UnixTime};
use asap_proto::store::StorageConfig;

fn snapshot(task: &str, created_at: UnixTime) -> StateSnapshot {
    StateSnapshot {
        id: format!("snap_{task}"),
        task_id: task.to_owned(),
        version: 1,
        data: JsonObject::new(),
        checkpoint: false,
        created_at: Timestamp::from_unix(created_at),
    }
}

#[test]
fn snapshots_past_the_retention_are_deleted_and_newer_ones_stay() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let config = StorageConfig::from_values(Some("sqlite"), Some(path.to_str().unwrap())).unwrap();
    let options = SqliteOptions {
        retention: Some(Duration::from_secs(3600)),
        ..SqliteOptions::default()
    };
    let mut stores = open_stores_with(&config, &options).unwrap();
    let now = UnixTime::from_system_time(SystemTime::now());
    stores
        .snapshots
        .save(&snapshot(
            "old",
            now.saturating_sub(Duration::from_secs(7200)),
        ))
        .unwrap();
    stores.snapshots.save(&snapshot("new", now)).unwrap();
    // The checkpoint thread purges about once a second; allow it ten.
    let deadline = Instant::now() + Duration::from_secs(10);
    while stores.snapshots.get("old", 1).unwrap().is_some() {
        assert!(Instant::now() < deadline, "the old snapshot was not purged");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(stores.snapshots.get("new", 1).unwrap().is_some());
}
