//! The store contract suite against the SQLite backends (file and in-memory).

use asap_blocking::store::{SqliteMeteringStore, SqliteSnapshotStore};
use asap_proto::store::contract;

#[test]
fn sqlite_snapshot_store_file_passes_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    contract::snapshot_store(|| {
        n += 1;
        SqliteSnapshotStore::open(dir.path().join(format!("snap{n}.db"))).unwrap()
    });
}

#[test]
fn sqlite_snapshot_store_in_memory_passes_the_contract() {
    contract::snapshot_store(|| SqliteSnapshotStore::open_in_memory().unwrap());
}

#[test]
fn sqlite_metering_store_file_passes_the_contract() {
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    contract::metering_store(|| {
        n += 1;
        SqliteMeteringStore::open(dir.path().join(format!("meter{n}.db"))).unwrap()
    });
}

#[test]
fn sqlite_metering_store_in_memory_passes_the_contract() {
    contract::metering_store(|| SqliteMeteringStore::open_in_memory().unwrap());
}

#[test]
fn both_stores_share_one_file_and_survive_reopening() {
    use asap_proto::model::{JsonObject, StateSnapshot, Timestamp};
    use asap_proto::store::{
        AggregatePeriod, MeteringStore, SnapshotStore, UsageEvent, UsageMetrics,
    };
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("shared.db");
    let t: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
    {
        let mut snaps = SqliteSnapshotStore::open(&path).unwrap();
        let mut meter = SqliteMeteringStore::open(&path).unwrap();
        snaps
            .save(&StateSnapshot {
                id: "s".into(),
                task_id: "t".into(),
                version: 1,
                data: JsonObject::new(),
                checkpoint: true,
                created_at: t,
            })
            .unwrap();
        meter
            .record(&UsageEvent {
                task_id: "t".into(),
                agent_id: "a".into(),
                consumer_id: "c".into(),
                metrics: UsageMetrics {
                    tokens_in: 1,
                    ..UsageMetrics::default()
                },
                timestamp: t,
            })
            .unwrap();
    }
    let snaps = SqliteSnapshotStore::open(&path).unwrap();
    let meter = SqliteMeteringStore::open(&path).unwrap();
    assert_eq!(snaps.list_versions("t").unwrap(), vec![1]);
    let agg = meter
        .aggregate("a", AggregatePeriod::Total, t.unix())
        .unwrap();
    assert_eq!(agg.total_tokens, 1);
}

#[test]
fn batches_are_all_or_nothing() {
    use asap_proto::model::{JsonObject, StateSnapshot};
    use asap_proto::store::{SnapshotStore, StoreError};
    let mut store = SqliteSnapshotStore::open_in_memory().unwrap();
    let snap = |v| StateSnapshot {
        id: format!("s{v}"),
        task_id: "t".into(),
        version: v,
        data: JsonObject::new(),
        checkpoint: false,
        created_at: "2026-01-01T00:00:00Z".parse().unwrap(),
    };
    store.save_batch(&[snap(1), snap(2), snap(3)]).unwrap();
    assert_eq!(store.list_versions("t").unwrap(), vec![1, 2, 3]);
    let err = store.save_batch(&[snap(4), snap(0)]).unwrap_err();
    assert!(matches!(err, StoreError::InvalidInput { .. }), "{err}");
    assert_eq!(store.list_versions("t").unwrap(), vec![1, 2, 3]);
}

#[test]
fn sqlite_replay_store_file_passes_the_contract() {
    use asap_blocking::store::SqliteReplayStore;
    let dir = tempfile::tempdir().unwrap();
    let mut n = 0;
    contract::replay_store(|| {
        n += 1;
        SqliteReplayStore::open(dir.path().join(format!("replay{n}.db"))).unwrap()
    });
}

#[test]
fn sqlite_replay_store_in_memory_passes_the_contract() {
    contract::replay_store(|| asap_blocking::store::SqliteReplayStore::open_in_memory().unwrap());
}

/// What `asap serve` relies on: nonces committed with task records are in the
/// file after a restart, expired ones are purged, and the stores hand the
/// live ones to the server.
#[test]
fn accepted_nonces_survive_reopening_the_stores() {
    use asap_blocking::store::open_stores;
    use asap_proto::model::UnixTime;
    use asap_proto::server::Records;
    use asap_proto::store::{NonceRecord, StorageConfig};
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let config = StorageConfig::from_values(Some("sqlite"), Some(path.to_str().unwrap())).unwrap();
    let now = UnixTime::from_system_time(std::time::SystemTime::now());
    let nonce = |n: &str, expires: i64| NonceRecord {
        sender: "urn:asap:agent:a".into(),
        nonce: n.into(),
        expires_at_unix_ms: expires,
    };
    let live = nonce("live", now.as_millis() + 300_000);
    {
        let mut stores = open_stores(&config).unwrap();
        assert_eq!(stores.take_restored_nonces(), vec![]);
        for record in [nonce("gone", now.as_millis() - 1), live.clone()] {
            stores
                .record(Records {
                    task: None,
                    nonce: Some(record),
                    dedup: None,
                    now: UnixTime::EPOCH,
                })
                .unwrap();
        }
        // A later commit purges what expired at its `now`.
        stores
            .record_group(
                &[],
                &[],
                &[nonce("other", now.as_millis() + 60_000)],
                &[],
                now,
            )
            .unwrap();
    }
    let mut stores = open_stores(&config).unwrap();
    assert_eq!(
        stores.take_restored_nonces(),
        vec![nonce("other", now.as_millis() + 60_000), live]
    );
    assert_eq!(stores.take_restored_nonces(), vec![], "handed over once");
    let conn = rusqlite::Connection::open(&path).unwrap();
    let rows: i64 = conn
        .query_row("SELECT count(*) FROM replay_nonces", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 2, "the expired nonce was purged");
}
