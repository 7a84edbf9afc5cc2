//! Files written by the Python reference's SQLite stores are read by ours and
//! the other way round. Needs the interop venv (installed by the shared helper);
//! skipped with a notice when it cannot be had, and failed instead with
//! `ASAP_REQUIRE_INTEROP=1` (CI).

use std::path::Path;
use std::process::Command;

use asap_blocking::store::{SqliteMeteringStore, SqliteSnapshotStore};
use asap_proto::model::{JsonObject, StateSnapshot, Timestamp, UnixTime};
use asap_proto::store::{AggregatePeriod, MeteringStore, SnapshotStore, UsageEvent, UsageMetrics};
use serde_json::{json, Value};

fn run(python: &Path, mode: &str, db: &Path) -> Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/interop/ref_store.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(mode)
        .arg(db)
        .output()
        .expect("run the reference");
    assert!(
        out.status.success(),
        "reference {mode} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("reference prints JSON")
}

fn at(s: &str) -> UnixTime {
    s.parse::<Timestamp>().unwrap().unix()
}

#[test]
fn reference_and_asap_rs_read_each_others_files() {
    let Some(python) = asap_tests::interop::python_or_skip("SQLite interop with the reference")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();

    // Python writes, Rust reads.
    let py_db = dir.path().join("python.db");
    let written = run(&python, "write", &py_db);
    let store = SqliteSnapshotStore::open(&py_db).unwrap();
    let mut expected: Vec<StateSnapshot> =
        serde_json::from_value(written["snapshots"].clone()).unwrap();
    expected.sort_by_key(|s| s.version);
    assert_eq!(store.list_versions("py_task_ü").unwrap(), vec![1, 2, 10]);
    for s in &expected {
        assert_eq!(store.get("py_task_ü", s.version).unwrap().as_ref(), Some(s));
    }
    assert_eq!(
        store.get_latest("py_task_ü").unwrap().as_ref(),
        expected.last()
    );
    let meter = SqliteMeteringStore::open(&py_db).unwrap();
    let events: Vec<UsageEvent> = serde_json::from_value(written["events"].clone()).unwrap();
    let got = meter
        .query(
            "urn:asap:agent:py",
            at("2026-01-01T00:00:00Z"),
            at("2026-01-01T01:00:00Z"),
        )
        .unwrap();
    assert_eq!(got, events[..3]);
    let hour = meter
        .aggregate(
            "urn:asap:agent:py",
            AggregatePeriod::Hour,
            at("2026-01-01T01:10:00Z"),
        )
        .unwrap();
    // Events 2 (01:00) and 3 (01:30).
    assert_eq!(
        (
            hour.total_tokens,
            hour.total_duration,
            hour.total_tasks,
            hour.total_api_calls
        ),
        (2 + 3 + 2, 500, 2, 2)
    );

    // Rust writes, Python reads.
    let rs_db = dir.path().join("rust.db");
    let mut store = SqliteSnapshotStore::open(&rs_db).unwrap();
    let mut snaps = Vec::new();
    for (version, data) in [
        (
            1,
            json!({"ü": "x", "emoji": "😀 𝄞", "float": 0.1, "big": 1u64 << 62}),
        ),
        (
            3,
            json!({"nested": {"list": [1, 2.5, null, true]}, "neg": -1e300}),
        ),
    ] {
        let Value::Object(data) = data else {
            unreachable!()
        };
        let s = StateSnapshot {
            id: format!("snap_{version}"),
            task_id: "rust_task".into(),
            version,
            data: JsonObject::from_iter(data),
            checkpoint: version == 3,
            created_at: format!("2026-01-01T00:00:0{version}.000250Z")
                .parse()
                .unwrap(),
        };
        store.save(&s).unwrap();
        snaps.push(s);
    }
    let mut meter = SqliteMeteringStore::open(&rs_db).unwrap();
    let mut events = Vec::new();
    for i in 0..3u64 {
        let e = UsageEvent {
            task_id: format!("task_{i}"),
            agent_id: "urn:asap:agent:rust".into(),
            consumer_id: "urn:asap:agent:client".into(),
            metrics: UsageMetrics {
                tokens_in: i,
                tokens_out: 2,
                duration_ms: 10,
                api_calls: 1,
            },
            timestamp: format!("2026-01-01T0{i}:00:00Z").parse().unwrap(),
        };
        meter.record(&e).unwrap();
        events.push(e);
    }
    drop((store, meter));
    let read = run(&python, "read", &rs_db);
    assert_eq!(read["latest"], serde_json::to_value(&snaps[1]).unwrap());
    assert_eq!(read["v1"], serde_json::to_value(&snaps[0]).unwrap());
    assert_eq!(read["versions"], json!([1, 3]));
    assert_eq!(read["query"], serde_json::to_value(&events).unwrap());
    assert_eq!(
        read["aggregate"],
        json!({"agent_id": "urn:asap:agent:rust", "period": "total", "total_tokens": 9,
               "total_duration": 30, "total_tasks": 3, "total_api_calls": 3})
    );
}
