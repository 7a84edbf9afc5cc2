//! SQLite store throughput: snapshot save and get-latest, metering aggregate
//! over 100k events. Criterion prints `thrpt` in elements/s = operations/s.
//!
//! `cargo bench -p asap-blocking --bench sqlite_store -- --warm-up-time 1 --measurement-time 3`

use std::hint::black_box;
use std::time::Duration;

use asap_blocking::store::{SqliteMeteringStore, SqliteOptions, SqliteSnapshotStore, Synchronous};
use asap_proto::model::{JsonObject, StateSnapshot, Timestamp, UnixTime};
use asap_proto::store::{AggregatePeriod, MeteringStore, SnapshotStore, UsageEvent, UsageMetrics};
use criterion::{BatchSize, Criterion, Throughput};
use serde_json::json;

const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

/// A snapshot with ~1 KiB of state, typical of a task checkpoint.
fn snapshot(task: &str, version: i64) -> StateSnapshot {
    let mut data = JsonObject::new();
    data.insert("step".into(), json!(version));
    data.insert("status".into(), json!("working"));
    data.insert("notes".into(), json!("n".repeat(900)));
    data.insert("items".into(), json!([1, 2, 3, {"k": "v", "ü": 1.5}]));
    StateSnapshot {
        id: format!("snap_{version}"),
        task_id: task.to_owned(),
        version,
        data,
        checkpoint: version % 10 == 0,
        created_at: Timestamp::from_unix(UnixTime::from_secs(T0 + version)),
    }
}

fn opts(synchronous: Synchronous) -> SqliteOptions {
    SqliteOptions {
        synchronous,
        ..SqliteOptions::default()
    }
}

fn bench_snapshots(c: &mut Criterion) {
    let dir = tempfile::tempdir().unwrap();
    let mut g = c.benchmark_group("snapshot");
    g.throughput(Throughput::Elements(1));
    for (name, sync) in [("full", Synchronous::Full), ("normal", Synchronous::Normal)] {
        let mut store =
            SqliteSnapshotStore::open_with(dir.path().join(format!("save-{name}.db")), &opts(sync))
                .unwrap();
        let mut v = 0;
        g.bench_function(format!("save_1KiB_sync_{name}"), |b| {
            b.iter(|| {
                v += 1;
                store.save(black_box(&snapshot("bench", v))).unwrap();
            });
        });
    }
    {
        let mut store =
            SqliteSnapshotStore::open_with(dir.path().join("batch.db"), &opts(Synchronous::Full))
                .unwrap();
        let mut v = 0;
        g.throughput(Throughput::Elements(100));
        g.bench_function("save_batch100_1KiB_sync_full", |b| {
            b.iter_batched(
                || {
                    (0..100)
                        .map(|_| {
                            v += 1;
                            snapshot("batch", v)
                        })
                        .collect::<Vec<_>>()
                },
                |batch| store.save_batch(&batch).unwrap(),
                BatchSize::SmallInput,
            );
        });
    }

    // 1000 tasks x 10 versions; read the latest of each in turn.
    let path = dir.path().join("read.db");
    let mut store = SqliteSnapshotStore::open(&path).unwrap();
    for t in 0..1000 {
        let task = format!("task_{t}");
        let batch: Vec<_> = (1..=10).map(|v| snapshot(&task, v)).collect();
        store.save_batch(&batch).unwrap();
    }
    let tasks: Vec<String> = (0..1000).map(|t| format!("task_{t}")).collect();
    g.throughput(Throughput::Elements(1));
    let mut i = 0;
    g.bench_function("get_latest_1KiB_of_10k_rows", |b| {
        b.iter(|| {
            i = (i + 1) % tasks.len();
            let s = store.get_latest(black_box(&tasks[i])).unwrap();
            black_box(s.expect("stored"))
        });
    });
    g.bench_function("list_versions_10", |b| {
        b.iter(|| {
            i = (i + 1) % tasks.len();
            black_box(store.list_versions(black_box(&tasks[i])).unwrap())
        });
    });
    g.finish();
}

fn bench_metering(c: &mut Criterion) {
    const EVENTS: i64 = 100_000;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("metering.db");
    let mut store = SqliteMeteringStore::open(&path).unwrap();
    // 100k events of one agent, one a minute (~69 days), plus 20k of another agent.
    let event = |agent: &str, minute: i64| UsageEvent {
        task_id: format!("task_{minute}"),
        agent_id: agent.to_owned(),
        consumer_id: "urn:asap:agent:client".to_owned(),
        metrics: UsageMetrics {
            tokens_in: 100,
            tokens_out: 50,
            duration_ms: 1200,
            api_calls: 2,
        },
        timestamp: Timestamp::from_unix(UnixTime::from_secs(T0 + minute * 60)),
    };
    let agent = "urn:asap:agent:busy";
    for chunk in (0..EVENTS).collect::<Vec<_>>().chunks(10_000) {
        let batch: Vec<_> = chunk.iter().map(|&m| event(agent, m)).collect();
        store.record_batch(&batch).unwrap();
    }
    let other: Vec<_> = (0..20_000)
        .map(|m| event("urn:asap:agent:other", m))
        .collect();
    store.record_batch(&other).unwrap();
    let at = UnixTime::from_secs(T0 + 35 * 86_400); // 2026-02-05, inside month 2
    let mut g = c.benchmark_group("metering");
    g.sample_size(20);
    for (period, expected) in [
        (AggregatePeriod::Total, EVENTS as u64),
        (AggregatePeriod::Month, 28 * 1440),
        (AggregatePeriod::Day, 1440),
    ] {
        g.throughput(Throughput::Elements(expected));
        g.bench_function(format!("aggregate_{period}_of_100k"), |b| {
            b.iter(|| {
                let a = store.aggregate(agent, black_box(period), at).unwrap();
                assert_eq!(a.total_tasks, expected);
                black_box(a)
            });
        });
    }
    g.throughput(Throughput::Elements(61));
    g.bench_function("query_1h_of_100k", |b| {
        b.iter(|| {
            let q = store
                .query(agent, at, at.saturating_add(Duration::from_secs(3600)))
                .unwrap();
            assert_eq!(q.len(), 61);
            black_box(q)
        });
    });
    g.throughput(Throughput::Elements(1));
    let mut m = EVENTS;
    g.bench_function("record_sync_full", |b| {
        b.iter(|| {
            m += 1;
            store.record(black_box(&event(agent, m))).unwrap();
        });
    });
    g.finish();
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    bench_snapshots(&mut c);
    bench_metering(&mut c);
    c.final_summary();
}
