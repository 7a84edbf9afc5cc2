//! The SQLite files are interchangeable with the Python reference's
//! (`vectors/storage/sqlite_and_metering.json`, spec §17.3).
//!
//! Vectors are found by `asap_tests::vectors` (`$ASAP_VECTORS_DIR`, else the
//! repository's `tests/vectors`).

use std::path::{Path, PathBuf};

use asap_blocking::store::{
    SqliteMeteringStore, SqliteSnapshotStore, SNAPSHOTS_DDL, USAGE_EVENTS_DDL,
    USAGE_EVENTS_INDEX_DDL,
};
use asap_proto::model::{StateSnapshot, Timestamp, UnixTime};
use asap_proto::store::{
    AggregatePeriod, MeteringStore, SnapshotStore, UsageAggregate, UsageEvent, UsageMetrics,
};
use rusqlite::Connection;
use serde_json::Value;

fn load(rel: &str) -> Value {
    asap_tests::vectors::load(rel)
}

fn vector() -> Value {
    load("storage/sqlite_and_metering.json")
}

fn at(s: &str) -> UnixTime {
    s.parse::<Timestamp>().unwrap().unix()
}

/// A database as the reference leaves it: its DDL, its raw rows.
fn reference_file(dir: &Path, v: &Value) -> PathBuf {
    let path = dir.join("reference.db");
    let conn = Connection::open(&path).unwrap();
    conn.execute_batch(SNAPSHOTS_DDL).unwrap();
    conn.execute_batch(USAGE_EVENTS_DDL).unwrap();
    conn.execute_batch(USAGE_EVENTS_INDEX_DDL).unwrap();
    for row in v["snapshots_rows"].as_array().unwrap() {
        let r = row.as_array().unwrap();
        conn.execute(
            "INSERT INTO snapshots VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![
                r[0].as_str(),
                r[1].as_str(),
                r[2].as_i64(),
                r[3].as_str(),
                r[4].as_i64(),
                r[5].as_str()
            ],
        )
        .unwrap();
    }
    for row in v["usage_events_rows"].as_array().unwrap() {
        let r: Vec<&str> = row
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect();
        conn.execute(
            "INSERT INTO usage_events VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
            rusqlite::params![r[0], r[1], r[2], r[3], r[4], r[5]],
        )
        .unwrap();
    }
    path
}

fn snapshot(v: &Value) -> Option<StateSnapshot> {
    (!v.is_null()).then(|| serde_json::from_value(v.clone()).unwrap())
}

#[test]
fn schema_is_the_references() {
    let v = vector();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ours.db");
    drop(SqliteSnapshotStore::open(&path).unwrap());
    drop(SqliteMeteringStore::open(&path).unwrap());
    let conn = Connection::open(&path).unwrap();
    let mut stmt = conn
        .prepare("SELECT sql FROM sqlite_master WHERE sql IS NOT NULL ORDER BY sql")
        .unwrap();
    let ours: Vec<String> = stmt
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let theirs: Vec<String> = v["sqlite_schema"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ours, theirs);
}

#[test]
fn reads_a_reference_file() {
    let v = vector();
    let ops = &v["snapshot_ops_in_order"];
    let dir = tempfile::tempdir().unwrap();
    let path = reference_file(dir.path(), &v);
    let mut store = SqliteSnapshotStore::open(&path).unwrap();
    assert_eq!(
        store.get_latest("task_1").unwrap(),
        snapshot(&ops["get(task_1)"])
    );
    assert_eq!(
        store.get("task_1", 2).unwrap(),
        snapshot(&ops["get(task_1, 2)"])
    );
    assert_eq!(
        store.get("task_1", 9).unwrap(),
        snapshot(&ops["get(task_1, 9)"])
    );
    let versions = |v: &Value| -> Vec<i64> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_i64().unwrap())
            .collect()
    };
    assert_eq!(
        store.list_versions("task_1").unwrap(),
        versions(&ops["list_versions(task_1)"])
    );
    assert_eq!(
        Value::Bool(store.delete("task_1", 3).unwrap()),
        ops["delete(task_1, 3)"]
    );
    assert_eq!(
        store.list_versions("task_1").unwrap(),
        versions(&ops["list_versions after delete v3"])
    );
    assert_eq!(
        Value::Bool(store.delete("task_1", 3).unwrap()),
        ops["delete(task_1, 3) again"]
    );
    assert_eq!(
        Value::Bool(store.delete_all("task_1").unwrap()),
        ops["delete(task_1)"]
    );
    assert_eq!(
        Value::Bool(store.delete_all("unknown").unwrap()),
        ops["delete(unknown)"]
    );
    assert_eq!(
        store.list_versions("unknown").unwrap(),
        versions(&ops["list_versions(unknown)"])
    );

    let meter = SqliteMeteringStore::open(&path).unwrap();
    let expected: Vec<UsageEvent> =
        serde_json::from_value(v["metering_query(first 30 min)"].clone()).unwrap();
    assert_eq!(
        meter
            .query(
                "urn:asap:agent:echo-server",
                at("2026-01-01T00:00:00Z"),
                at("2026-01-01T00:30:00Z")
            )
            .unwrap(),
        expected
    );
    // The reference ignores the period; both its events fall on that day, so
    // the fixed aggregate agrees with the vector.
    let expected: UsageAggregate =
        serde_json::from_value(v["metering_aggregate(day)"].clone()).unwrap();
    assert_eq!(
        meter
            .aggregate(
                "urn:asap:agent:echo-server",
                AggregatePeriod::Day,
                at("2026-01-01T00:30:00Z")
            )
            .unwrap(),
        expected
    );
    let hour: UsageAggregate =
        serde_json::from_value(v["in_memory_metering_aggregate(hour)"].clone()).unwrap();
    assert_eq!(
        meter
            .aggregate(
                "urn:asap:agent:echo-server",
                AggregatePeriod::Hour,
                at("2026-01-01T00:30:00Z")
            )
            .unwrap(),
        hour
    );
}

#[test]
fn writes_the_references_rows() {
    let v = vector();
    let ops = &v["snapshot_ops_in_order"];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ours.db");
    let mut store = SqliteSnapshotStore::open(&path).unwrap();
    // Rebuild the three snapshots from the decoded vector rows and save them.
    for version in 1..=3 {
        let mut s = snapshot(&ops["get(task_1)"]).unwrap();
        s.id = format!("snap_{version}");
        s.version = version;
        s.data["step"] = version.into();
        s.checkpoint = version == 2;
        s.created_at = format!("2026-01-01T00:00:0{version}Z").parse().unwrap();
        store.save(&s).unwrap();
    }
    let mut meter = SqliteMeteringStore::open(&path).unwrap();
    for row in v["usage_events_rows"].as_array().unwrap() {
        let r = row.as_array().unwrap();
        meter
            .record(&UsageEvent {
                task_id: r[1].as_str().unwrap().into(),
                agent_id: r[2].as_str().unwrap().into(),
                consumer_id: r[3].as_str().unwrap().into(),
                metrics: serde_json::from_str::<UsageMetrics>(r[4].as_str().unwrap()).unwrap(),
                timestamp: r[5].as_str().unwrap().parse().unwrap(),
            })
            .unwrap();
    }
    drop((store, meter));

    let conn = Connection::open(&path).unwrap();
    let rows = |sql: &str| -> Vec<Value> {
        let mut stmt = conn.prepare(sql).unwrap();
        let n = stmt.column_count();
        stmt.query_map([], |r| {
            Ok(Value::Array(
                (0..n)
                    .map(|i| match r.get_ref(i).unwrap() {
                        rusqlite::types::ValueRef::Integer(x) => Value::from(x),
                        rusqlite::types::ValueRef::Text(t) => {
                            Value::from(std::str::from_utf8(t).unwrap())
                        }
                        other => panic!("unexpected column type {other:?}"),
                    })
                    .collect(),
            ))
        })
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap()
    };
    assert_eq!(
        Value::Array(rows("SELECT * FROM snapshots ORDER BY task_id, version")),
        v["snapshots_rows"],
        "snapshot rows byte-identical to the reference's"
    );
    let ours = rows("SELECT * FROM usage_events ORDER BY timestamp");
    let theirs = v["usage_events_rows"].as_array().unwrap();
    assert_eq!(ours.len(), theirs.len());
    for (o, t) in ours.iter().zip(theirs) {
        // The id is random (`_dynamic` in the vector): same shape, not same value.
        let id = o[0].as_str().unwrap();
        assert!(id.starts_with("evt_") && id.len() == 36, "{id}");
        assert_eq!(o.as_array().unwrap()[1..], t.as_array().unwrap()[1..]);
    }
}

/// Member names and order of our models equal the reference's JSON schemas.
#[test]
fn models_follow_the_reference_schemas() {
    fn props(schema: &Value) -> Vec<String> {
        schema["properties"]
            .as_object()
            .unwrap()
            .keys()
            .cloned()
            .collect()
    }
    fn keys(v: &Value) -> Vec<String> {
        v.as_object().unwrap().keys().cloned().collect()
    }
    let event_schema = load("schemas_current/usage_event.json");
    let agg_schema = load("schemas_current/usage_aggregate.json");
    let event = UsageEvent {
        task_id: "t".into(),
        agent_id: "a".into(),
        consumer_id: "c".into(),
        metrics: UsageMetrics::default(),
        timestamp: "2026-01-01T00:00:00Z".parse().unwrap(),
    };
    let json = serde_json::to_value(&event).unwrap();
    assert_eq!(keys(&json), props(&event_schema));
    assert_eq!(
        keys(&json["metrics"]),
        props(&event_schema["$defs"]["UsageMetrics"])
    );
    let agg = serde_json::to_value(UsageAggregate::zero("a", AggregatePeriod::Day)).unwrap();
    assert_eq!(keys(&agg), props(&agg_schema));
}
