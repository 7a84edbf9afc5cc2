//! Several writer and reader threads, each with its own connection, on one
//! SQLite file: no error, no torn read, no lost write.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;

use asap_blocking::store::{SqliteMeteringStore, SqliteOptions, SqliteSnapshotStore, Synchronous};
use asap_proto::model::{JsonObject, StateSnapshot, Timestamp, UnixTime};
use asap_proto::store::{AggregatePeriod, MeteringStore, SnapshotStore, UsageEvent, UsageMetrics};
use serde_json::json;

const WRITERS: usize = 4;
const READERS: usize = 4;
const VERSIONS: i64 = 60;

fn snapshot(task: &str, version: i64, writer: usize) -> StateSnapshot {
    let mut data = JsonObject::new();
    data.insert("writer".into(), json!(writer));
    data.insert("version".into(), json!(version));
    data.insert(
        "payload".into(),
        json!("p".repeat(usize::try_from(version).unwrap_or(0) * 97)),
    );
    StateSnapshot {
        id: format!("{task}-{version}"),
        task_id: task.to_owned(),
        version,
        data,
        checkpoint: false,
        created_at: Timestamp::from_unix(UnixTime::from_secs(1_767_225_600 + version)),
    }
}

fn options() -> SqliteOptions {
    SqliteOptions {
        synchronous: Synchronous::Normal,
        ..SqliteOptions::default()
    }
}

#[test]
fn writers_and_readers_share_one_file() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("concurrent.db");
    // Create the schema once so every thread starts on a ready file.
    drop(SqliteSnapshotStore::open(&db).unwrap());
    drop(SqliteMeteringStore::open(&db).unwrap());

    let done = Arc::new(AtomicBool::new(false));
    let start = Arc::new(Barrier::new(WRITERS + READERS));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let (db, start) = (db.clone(), Arc::clone(&start));
        writers.push(thread::spawn(move || {
            let mut snaps = SqliteSnapshotStore::open_with(&db, &options()).unwrap();
            let mut meter = SqliteMeteringStore::open_with(&db, &options()).unwrap();
            start.wait();
            let own = format!("own-{w}");
            for v in 1..=VERSIONS {
                snaps.save(&snapshot(&own, v, w)).unwrap();
                // Every writer also writes its own slice of versions of one shared task.
                let shared = v * WRITERS as i64 + w as i64 + 1;
                if v % 3 == 0 {
                    snaps.save_batch(&[snapshot("shared", shared, w)]).unwrap();
                } else {
                    snaps.save(&snapshot("shared", shared, w)).unwrap();
                }
                meter
                    .record(&UsageEvent {
                        task_id: own.clone(),
                        agent_id: "urn:asap:agent:busy".into(),
                        consumer_id: format!("writer-{w}"),
                        metrics: UsageMetrics {
                            tokens_in: 1,
                            tokens_out: 1,
                            duration_ms: 1,
                            api_calls: 1,
                        },
                        timestamp: Timestamp::from_unix(UnixTime::from_secs(1_767_225_600 + v)),
                    })
                    .unwrap();
            }
        }));
    }
    let mut readers = Vec::new();
    for r in 0..READERS {
        let (db, start, done) = (db.clone(), Arc::clone(&start), Arc::clone(&done));
        readers.push(thread::spawn(move || {
            let snaps = SqliteSnapshotStore::open_with(&db, &options()).unwrap();
            let meter = SqliteMeteringStore::open_with(&db, &options()).unwrap();
            start.wait();
            let mut last_seen: BTreeMap<String, i64> = BTreeMap::new();
            let mut reads = 0u64;
            loop {
                // Read once more after the writers finished, then stop.
                let finished = done.load(Ordering::Acquire);
                for w in 0..WRITERS {
                    let task = format!("own-{}", (w + r) % WRITERS);
                    if let Some(s) = snaps.get_latest(&task).unwrap() {
                        // A whole row, never a mix of two writes.
                        assert_eq!(s, snapshot(&task, s.version, (w + r) % WRITERS));
                        // Committed writes never disappear: the latest version only grows.
                        let seen = last_seen.entry(task.clone()).or_default();
                        assert!(s.version >= *seen, "{task}: v{} after v{seen}", s.version);
                        *seen = s.version;
                    }
                    reads += 1;
                }
                let versions = snaps.list_versions("shared").unwrap();
                assert!(versions.windows(2).all(|p| p[0] < p[1]), "sorted, unique");
                let agg = meter
                    .aggregate(
                        "urn:asap:agent:busy",
                        AggregatePeriod::Total,
                        UnixTime::EPOCH,
                    )
                    .unwrap();
                assert_eq!(
                    agg.total_tokens,
                    2 * agg.total_tasks,
                    "sums from one snapshot of the table"
                );
                if finished {
                    return reads;
                }
            }
        }));
    }
    for w in writers {
        w.join().expect("writer panicked");
    }
    done.store(true, Ordering::Release);
    for r in readers {
        assert!(r.join().expect("reader panicked") > 0);
    }

    // No lost write.
    let snaps = SqliteSnapshotStore::open(&db).unwrap();
    for w in 0..WRITERS {
        let task = format!("own-{w}");
        assert_eq!(
            snaps.list_versions(&task).unwrap(),
            (1..=VERSIONS).collect::<Vec<_>>()
        );
        for v in 1..=VERSIONS {
            assert_eq!(snaps.get(&task, v).unwrap(), Some(snapshot(&task, v, w)));
        }
    }
    let mut shared: Vec<i64> = (1..=VERSIONS)
        .flat_map(|v| (0..WRITERS).map(move |w| v * WRITERS as i64 + w as i64 + 1))
        .collect();
    shared.sort_unstable();
    assert_eq!(snaps.list_versions("shared").unwrap(), shared);
    let meter = SqliteMeteringStore::open(&db).unwrap();
    let agg = meter
        .aggregate(
            "urn:asap:agent:busy",
            AggregatePeriod::Total,
            UnixTime::EPOCH,
        )
        .unwrap();
    assert_eq!(agg.total_tasks, (WRITERS as u64) * VERSIONS as u64);
    drop((snaps, meter));
    let conn = rusqlite::Connection::open(&db).unwrap();
    let check: String = conn
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .unwrap();
    assert_eq!(check, "ok");
}
