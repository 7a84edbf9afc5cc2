//! The contract suite every [`SnapshotStore`], [`MeteringStore`] and
//! [`ReplayStore`] backend must pass.
//!
//! Compiled with the `contract-tests` cargo feature. A backend's test calls
//! [`snapshot_store`] / [`metering_store`] with a factory returning a fresh,
//! empty store; each case runs on its own store and a failure names the case.
//!
//! ```ignore
//! use asap_proto::store::{contract, MemoryMeteringStore, MemorySnapshotStore};
//! contract::snapshot_store(MemorySnapshotStore::new);
//! contract::metering_store(MemoryMeteringStore::new);
//! contract::replay_store(asap_proto::store::MemoryReplayStore::new);
//! ```
//!
//! Decisions the suite pins down (all following the reference, spec §17):
//! saving an existing `(task_id, version)` replaces it; "latest" is the highest
//! version; unknown tasks are empty, not errors; versions below 1 and metrics
//! above [`MAX_METRIC_VALUE`] are rejected with [`StoreError::InvalidInput`];
//! aggregates honour their period (the reference's ignores it).

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use serde_json::{json, Value};

use super::{
    AggregatePeriod, ClaimOutcome, DedupClaim, DedupRecord, MeteringStore, NonceRecord,
    ReplayClaim, ReplayStore, SnapshotStore, StoreError, UsageAggregate, UsageEvent, UsageMetrics,
    MAX_METRIC_VALUE,
};
use crate::model::{JsonObject, StateSnapshot, Timestamp, UnixTime};

/// A named contract case over a snapshot store.
pub type SnapshotCase = (&'static str, fn(&mut dyn SnapshotStore));
/// A named contract case over a metering store.
pub type MeteringCase = (&'static str, fn(&mut dyn MeteringStore));

/// Every snapshot-store case, in the order [`snapshot_store`] runs them.
pub const SNAPSHOT_CASES: &[SnapshotCase] = &[
    ("empty store", empty_snapshot_store),
    ("save then get round-trips every field", snapshot_round_trip),
    ("unknown task", unknown_task),
    ("duplicate version replaces", duplicate_version_replaces),
    (
        "versions ordered numerically, latest = highest",
        version_ordering,
    ),
    ("delete one version", delete_one_version),
    ("delete all versions of one task", delete_all_versions),
    ("task ids are exact keys", task_ids_are_exact),
    ("version below 1 rejected", invalid_version_rejected),
    ("large data", large_data),
    ("unicode everywhere", unicode_snapshot),
    ("json values survive", json_values_survive),
    ("many tasks", many_tasks),
];

/// Every metering-store case, in the order [`metering_store`] runs them.
pub const METERING_CASES: &[MeteringCase] = &[
    ("empty store", empty_metering_store),
    ("reference scenario (vectors/storage)", reference_scenario),
    ("query bounds are inclusive", query_bounds_inclusive),
    ("query sorted by time, ties in record order", query_ordering),
    ("timestamps stored as UTC instants", timestamps_are_instants),
    ("agents are isolated", agents_isolated),
    ("aggregate honours each period", aggregate_periods),
    ("same event twice counts twice", duplicate_events_count),
    ("metric limits", metric_limits),
    ("unicode ids", unicode_events),
    ("many events", many_events),
];

/// A named contract case over a replay store.
pub type ReplayCase = (&'static str, fn(&mut dyn ReplayStore));

/// Every replay-store case, in the order [`replay_store`] runs them.
pub const REPLAY_CASES: &[ReplayCase] = &[
    ("empty store", empty_replay_store),
    (
        "a nonce is live through its expiry millisecond",
        nonce_liveness,
    ),
    (
        "recording a nonce again keeps the later expiry",
        nonce_keeps_later_expiry,
    ),
    (
        "nonce keys are exact and scoped per sender",
        nonce_keys_exact,
    ),
    ("loads are ordered by expiry, then key", replay_load_order),
    (
        "dedup records round-trip bytes and are replaced",
        dedup_round_trip,
    ),
    (
        "purge removes expired records of both kinds",
        purge_both_kinds,
    ),
    ("empty keys rejected", replay_empty_keys_rejected),
    ("unicode keys", replay_unicode_keys),
    ("many nonces", many_nonces),
    (
        "a claim decides nonce, answer, lease in order",
        claim_decisions,
    ),
    (
        "a dead claimant's lease passes to the next",
        claim_lease_takeover,
    ),
    ("claims expire and are purged", claim_expiry),
    ("an expired answer releases a claim", claim_release),
];

/// Runs every case of [`REPLAY_CASES`], each on a fresh store from `make`.
pub fn replay_store<R: ReplayStore, F: FnMut() -> R>(mut make: F) {
    for (name, case) in REPLAY_CASES {
        let mut store = make();
        run_case("ReplayStore", name, || case(&mut store));
    }
}

/// Runs every case of [`SNAPSHOT_CASES`], each on a fresh store from `make`.
pub fn snapshot_store<S: SnapshotStore, F: FnMut() -> S>(mut make: F) {
    for (name, case) in SNAPSHOT_CASES {
        let mut store = make();
        run_case("SnapshotStore", name, || case(&mut store));
    }
}

/// Runs every case of [`METERING_CASES`], each on a fresh store from `make`.
pub fn metering_store<M: MeteringStore, F: FnMut() -> M>(mut make: F) {
    for (name, case) in METERING_CASES {
        let mut store = make();
        run_case("MeteringStore", name, || case(&mut store));
    }
}

fn run_case(suite: &str, name: &str, f: impl FnOnce()) {
    if let Err(payload) = catch_unwind(AssertUnwindSafe(f)) {
        let msg = payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
            .unwrap_or_default();
        // Re-raise with the case named, keeping the original message.
        resume_unwind(Box::new(format!(
            "{suite} contract case `{name}` failed: {msg}"
        )));
    }
}

fn ts(s: &str) -> Timestamp {
    s.parse()
        .unwrap_or_else(|e| panic!("bad test timestamp {s}: {e}"))
}

fn at(s: &str) -> UnixTime {
    ts(s).unix()
}

fn obj(v: Value) -> JsonObject {
    match v {
        Value::Object(m) => m,
        other => panic!("test data must be an object, got {other}"),
    }
}

/// A snapshot with the given key fields and `{"step": version}` data.
fn snap(task_id: &str, version: i64) -> StateSnapshot {
    StateSnapshot {
        id: format!("snap_{version}"),
        task_id: task_id.to_owned(),
        version,
        data: obj(json!({ "step": version })),
        checkpoint: version % 2 == 0,
        created_at: ts("2026-01-01T00:00:01Z"),
    }
}

fn ok<T>(r: Result<T, StoreError>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what}: unexpected error {e}"))
}

fn versions(s: &dyn SnapshotStore, task: &str) -> Vec<i64> {
    ok(s.list_versions(task), "list_versions")
}

fn empty_snapshot_store(s: &mut dyn SnapshotStore) {
    assert_eq!(ok(s.get("task_1", 1), "get"), None);
    assert_eq!(ok(s.get_latest("task_1"), "get_latest"), None);
    assert_eq!(versions(s, "task_1"), Vec::<i64>::new());
    assert!(!ok(s.delete("task_1", 1), "delete"));
    assert!(!ok(s.delete_all("task_1"), "delete_all"));
    assert_eq!(ok(s.get_latest(""), "get_latest('')"), None);
}

fn snapshot_round_trip(s: &mut dyn SnapshotStore) {
    let cases = [
        StateSnapshot {
            id: "snap_1".into(),
            task_id: "task_1".into(),
            version: 1,
            data: obj(json!({"step": 1, "ü": "x"})),
            checkpoint: false,
            created_at: ts("2026-01-01T00:00:01Z"),
        },
        StateSnapshot {
            id: "snap_2".into(),
            task_id: "task_1".into(),
            version: 2,
            data: JsonObject::new(),
            checkpoint: true,
            // Microseconds and a non-UTC offset are kept as written.
            created_at: ts("2026-01-01T02:00:02.000123+02:00"),
        },
        StateSnapshot {
            id: String::new(),
            task_id: "task_1".into(),
            version: 3,
            data: obj(json!({"nested": {"list": [1, 2.5, null, true, "s"]}})),
            checkpoint: false,
            // A naive timestamp stays naive.
            created_at: ts("2026-01-01T00:00:03"),
        },
    ];
    for c in &cases {
        ok(s.save(c), "save");
    }
    for c in &cases {
        assert_eq!(ok(s.get("task_1", c.version), "get").as_ref(), Some(c));
    }
    assert_eq!(
        ok(s.get_latest("task_1"), "get_latest").as_ref(),
        cases.last()
    );
    assert_eq!(ok(s.get("task_1", 9), "get missing version"), None);
}

fn unknown_task(s: &mut dyn SnapshotStore) {
    ok(s.save(&snap("known", 1)), "save");
    assert_eq!(ok(s.get("unknown", 1), "get"), None);
    assert_eq!(ok(s.get_latest("unknown"), "get_latest"), None);
    assert_eq!(versions(s, "unknown"), Vec::<i64>::new());
    assert!(!ok(s.delete("unknown", 1), "delete"));
    assert!(!ok(s.delete_all("unknown"), "delete_all"));
    assert_eq!(versions(s, "known"), vec![1], "other task untouched");
}

fn duplicate_version_replaces(s: &mut dyn SnapshotStore) {
    ok(s.save(&snap("t", 1)), "save");
    ok(s.save(&snap("t", 2)), "save");
    let mut replacement = snap("t", 1);
    replacement.id = "snap_1_bis".into();
    replacement.data = obj(json!({"replaced": true}));
    replacement.checkpoint = true;
    replacement.created_at = ts("2026-02-01T00:00:00Z");
    ok(s.save(&replacement), "save same version again");
    assert_eq!(versions(s, "t"), vec![1, 2], "no duplicate version");
    assert_eq!(ok(s.get("t", 1), "get"), Some(replacement));
    assert_eq!(ok(s.get_latest("t"), "get_latest"), Some(snap("t", 2)));
    // Idempotent: saving the identical snapshot again changes nothing.
    ok(s.save(&snap("t", 2)), "save identical");
    assert_eq!(versions(s, "t"), vec![1, 2]);
}

fn version_ordering(s: &mut dyn SnapshotStore) {
    // Out of order, with numbers whose text order differs from numeric order.
    let order = [5, 1, 10, 3, 9, 2, 1 << 40, i64::MAX];
    for (i, v) in order.iter().enumerate() {
        let mut sn = snap("t", *v);
        // Created later = lower version: "latest" must still be the highest version.
        sn.created_at = Timestamp::from_unix(UnixTime::from_secs(2_000_000_000 - i as i64));
        ok(s.save(&sn), "save");
    }
    assert_eq!(versions(s, "t"), vec![1, 2, 3, 5, 9, 10, 1 << 40, i64::MAX]);
    let latest = ok(s.get_latest("t"), "get_latest").map(|s| s.version);
    assert_eq!(latest, Some(i64::MAX));
    assert_eq!(
        ok(s.get("t", 1 << 40), "get").map(|s| s.version),
        Some(1 << 40)
    );
}

fn delete_one_version(s: &mut dyn SnapshotStore) {
    for v in 1..=3 {
        ok(s.save(&snap("task_1", v)), "save");
    }
    // The vector's sequence (vectors/storage/sqlite_and_metering.json).
    assert!(ok(s.delete("task_1", 3), "delete v3"));
    assert_eq!(versions(s, "task_1"), vec![1, 2]);
    assert!(!ok(s.delete("task_1", 3), "delete v3 again"));
    assert_eq!(
        ok(s.get_latest("task_1"), "latest").map(|s| s.version),
        Some(2)
    );
    assert_eq!(ok(s.get("task_1", 3), "get deleted"), None);
    assert!(ok(s.delete("task_1", 1), "delete v1"));
    assert_eq!(
        ok(s.get_latest("task_1"), "latest").map(|s| s.version),
        Some(2)
    );
    assert!(ok(s.delete("task_1", 2), "delete last version"));
    assert_eq!(versions(s, "task_1"), Vec::<i64>::new());
    assert_eq!(ok(s.get_latest("task_1"), "latest of emptied task"), None);
    assert!(!ok(s.delete_all("task_1"), "delete_all of emptied task"));
}

fn delete_all_versions(s: &mut dyn SnapshotStore) {
    for v in 1..=3 {
        ok(s.save(&snap("task_1", v)), "save");
        ok(s.save(&snap("task_2", v)), "save");
    }
    assert!(ok(s.delete_all("task_1"), "delete_all"));
    assert_eq!(versions(s, "task_1"), Vec::<i64>::new());
    assert_eq!(ok(s.get_latest("task_1"), "latest"), None);
    assert!(!ok(s.delete_all("task_1"), "delete_all again"));
    assert_eq!(versions(s, "task_2"), vec![1, 2, 3], "other task untouched");
    // The task can be used again afterwards.
    ok(s.save(&snap("task_1", 7)), "save after delete_all");
    assert_eq!(versions(s, "task_1"), vec![7]);
}

fn task_ids_are_exact(s: &mut dyn SnapshotStore) {
    // Prefixes, SQL wildcards, case and whitespace must not match each other.
    let ids = ["t", "t1", "T", "t ", "%", "_", "t%", "t_1", ""];
    for (i, id) in ids.iter().enumerate() {
        ok(s.save(&snap(id, i as i64 + 1)), "save");
    }
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(versions(s, id), vec![i as i64 + 1], "task id {id:?}");
    }
    assert!(ok(s.delete_all("%"), "delete_all %"));
    assert_eq!(versions(s, "t"), vec![1], "'%' is not a wildcard");
    assert!(!ok(s.delete("t_1", 1), "delete wrong version"));
    assert_eq!(versions(s, "t1"), vec![2], "'_' is not a wildcard");
}

fn invalid_version_rejected(s: &mut dyn SnapshotStore) {
    for v in [0, -1, i64::MIN] {
        match s.save(&snap("t", v)) {
            Err(StoreError::InvalidInput { what, .. }) => assert_eq!(what, "snapshot version"),
            other => panic!("save of version {v} should be InvalidInput, got {other:?}"),
        }
    }
    assert_eq!(versions(s, "t"), Vec::<i64>::new(), "nothing written");
}

fn large_data(s: &mut dyn SnapshotStore) {
    let big = "x".repeat(4 << 20);
    let mut data = JsonObject::new();
    data.insert("blob".into(), Value::String(big));
    for i in 0..10_000 {
        data.insert(format!("k{i:05}"), json!(i));
    }
    let mut sn = snap("big", 1);
    sn.data = data;
    ok(s.save(&sn), "save 4 MiB");
    let back = ok(s.get_latest("big"), "get_latest").expect("stored");
    assert!(back == sn, "large snapshot differs after round trip");
    let keys: Vec<&String> = back.data.keys().take(3).collect();
    assert_eq!(keys, ["blob", "k00000", "k00001"], "key order kept");
}

fn unicode_snapshot(s: &mut dyn SnapshotStore) {
    let sn = StateSnapshot {
        id: "snap_ünï_😀".into(),
        task_id: "tâche_日本語_😀".into(),
        version: 1,
        data: obj(json!({
            "ü": "x",
            "日本語": "テキスト",
            "emoji 😀": "astral 𝄞 plane",
            "rtl": "שלום",
            "controls": "tab\tnewline\nnul\u{0}quote\"backslash\\",
            "bom": "\u{feff}",
            "zero-width": "a\u{200d}b",
        })),
        checkpoint: true,
        created_at: ts("2026-01-01T00:00:00Z"),
    };
    ok(s.save(&sn), "save");
    assert_eq!(ok(s.get("tâche_日本語_😀", 1), "get"), Some(sn.clone()));
    assert_eq!(versions(s, "tâche_日本語_😀"), vec![1]);
    // Normalisation forms are distinct ids (é precomposed vs e + combining accent).
    assert_eq!(
        versions(s, "tâche_日本語_😀".replace('â', "a\u{302}").as_str()),
        Vec::<i64>::new()
    );
    assert!(ok(s.delete_all("tâche_日本語_😀"), "delete_all"));
}

fn json_values_survive(s: &mut dyn SnapshotStore) {
    let sn = StateSnapshot {
        data: obj(json!({
            "z_first": 1,
            "a_second": 2,
            "int_max": i64::MAX,
            "int_min": i64::MIN,
            "u64_max": u64::MAX,
            "float": 0.1,
            "tiny": 1e-300,
            "huge": 1.5e300,
            "neg": -2.5,
            "bools": [true, false],
            "null": null,
            "empty_obj": {},
            "empty_arr": [],
            "deep": {"a": {"b": {"c": {"d": [[[]]]}}}},
        })),
        ..snap("json", 1)
    };
    ok(s.save(&sn), "save");
    let back = ok(s.get("json", 1), "get").expect("stored");
    assert_eq!(back, sn);
    let keys: Vec<&String> = back.data.keys().take(2).collect();
    assert_eq!(keys, ["z_first", "a_second"], "member order kept");
}

fn many_tasks(s: &mut dyn SnapshotStore) {
    for t in 0..100 {
        for v in [3, 1, 2] {
            ok(s.save(&snap(&format!("task_{t}"), v)), "save");
        }
    }
    for t in 0..100 {
        let id = format!("task_{t}");
        assert_eq!(versions(s, &id), vec![1, 2, 3]);
        assert_eq!(ok(s.get_latest(&id), "latest"), Some(snap(&id, 3)));
    }
}

// ---- metering ----

const AGENT: &str = "urn:asap:agent:echo-server";

fn metrics(tokens_in: u64, tokens_out: u64, duration_ms: u64, api_calls: u64) -> UsageMetrics {
    UsageMetrics {
        tokens_in,
        tokens_out,
        duration_ms,
        api_calls,
    }
}

fn event(agent: &str, task: &str, when: &str, m: UsageMetrics) -> UsageEvent {
    UsageEvent {
        task_id: task.to_owned(),
        agent_id: agent.to_owned(),
        consumer_id: "urn:asap:agent:client".to_owned(),
        metrics: m,
        timestamp: ts(when),
    }
}

fn record(s: &mut dyn MeteringStore, e: &UsageEvent) {
    ok(s.record(e), "record");
}

fn query(s: &dyn MeteringStore, agent: &str, start: &str, end: &str) -> Vec<UsageEvent> {
    ok(s.query(agent, at(start), at(end)), "query")
}

fn agg(s: &dyn MeteringStore, agent: &str, p: AggregatePeriod, when: &str) -> UsageAggregate {
    ok(s.aggregate(agent, p, at(when)), "aggregate")
}

fn totals(a: &UsageAggregate) -> (u64, u64, u64, u64) {
    (
        a.total_tokens,
        a.total_duration,
        a.total_tasks,
        a.total_api_calls,
    )
}

fn empty_metering_store(s: &mut dyn MeteringStore) {
    assert_eq!(
        query(s, AGENT, "2000-01-01T00:00:00Z", "2100-01-01T00:00:00Z"),
        vec![]
    );
    for p in AggregatePeriod::ALL {
        assert_eq!(
            agg(s, AGENT, p, "2026-01-01T00:00:00Z"),
            UsageAggregate::zero(AGENT, p)
        );
    }
}

fn reference_scenario(s: &mut dyn MeteringStore) {
    let m = metrics(10, 5, 120, 2);
    let e0 = event(AGENT, "task_1", "2026-01-01T00:00:00Z", m);
    let e1 = event(AGENT, "task_1", "2026-01-01T01:00:00Z", m);
    record(s, &e0);
    record(s, &e1);
    assert_eq!(
        query(s, AGENT, "2026-01-01T00:00:00Z", "2026-01-01T00:30:00Z"),
        vec![e0.clone()]
    );
    let day = agg(s, AGENT, AggregatePeriod::Day, "2026-01-01T00:30:00Z");
    let expected = UsageAggregate {
        agent_id: AGENT.into(),
        period: "day".into(),
        total_tokens: 30,
        total_duration: 240,
        total_tasks: 2,
        total_api_calls: 4,
    };
    assert_eq!(day, expected);
    let hour = agg(s, AGENT, AggregatePeriod::Hour, "2026-01-01T00:30:00Z");
    assert_eq!(totals(&hour), (15, 120, 1, 2));
    assert_eq!(hour.period, "hour");
}

fn query_bounds_inclusive(s: &mut dyn MeteringStore) {
    let times = [
        "2026-01-01T00:00:00Z",
        "2026-01-01T00:00:00.000001Z",
        "2026-01-01T00:00:01Z",
        "2026-01-01T00:00:01.5Z",
        "2026-01-01T00:00:02Z",
    ];
    for t in times {
        record(s, &event(AGENT, t, t, metrics(1, 0, 0, 0)));
    }
    let tasks = |v: Vec<UsageEvent>| v.into_iter().map(|e| e.task_id).collect::<Vec<_>>();
    assert_eq!(
        tasks(query(
            s,
            AGENT,
            "2026-01-01T00:00:00.000001Z",
            "2026-01-01T00:00:01.5Z"
        )),
        times[1..4]
    );
    assert_eq!(
        tasks(query(
            s,
            AGENT,
            "2026-01-01T00:00:01Z",
            "2026-01-01T00:00:01Z"
        )),
        [times[2]]
    );
    assert_eq!(
        tasks(query(
            s,
            AGENT,
            "2026-01-01T00:00:01.000001Z",
            "2026-01-01T00:00:01.4Z"
        )),
        Vec::<String>::new()
    );
    assert_eq!(
        tasks(query(
            s,
            AGENT,
            "2026-01-01T00:00:02Z",
            "2026-01-01T00:00:00Z"
        )),
        Vec::<String>::new(),
        "start after end"
    );
}

fn query_ordering(s: &mut dyn MeteringStore) {
    let order = [
        ("c", "2026-01-01T00:00:03Z"),
        ("a", "2026-01-01T00:00:01Z"),
        ("tie-1", "2026-01-01T00:00:02Z"),
        ("b", "2025-12-31T23:59:59.999999Z"),
        ("tie-2", "2026-01-01T00:00:02Z"),
        ("tie-3", "2026-01-01T00:00:02Z"),
    ];
    for (task, t) in order {
        record(s, &event(AGENT, task, t, metrics(0, 0, 0, 0)));
    }
    let got: Vec<String> = query(s, AGENT, "2025-01-01T00:00:00Z", "2027-01-01T00:00:00Z")
        .into_iter()
        .map(|e| e.task_id)
        .collect();
    assert_eq!(got, ["b", "a", "tie-1", "tie-2", "tie-3", "c"]);
}

fn timestamps_are_instants(s: &mut dyn MeteringStore) {
    // 01:00+02:00 is 23:00Z of the previous day.
    let e = event(AGENT, "t", "2026-01-01T01:00:00+02:00", metrics(1, 1, 1, 1));
    record(s, &e);
    let got = query(s, AGENT, "2025-12-31T23:00:00Z", "2025-12-31T23:00:00Z");
    let mut expected = e.clone();
    expected.timestamp = ts("2025-12-31T23:00:00Z");
    assert_eq!(got, vec![expected], "same instant, UTC offset");
    assert_eq!(
        totals(&agg(s, AGENT, AggregatePeriod::Day, "2025-12-31T12:00:00Z")),
        (2, 1, 1, 1),
        "counted on the UTC day"
    );
    assert_eq!(
        agg(s, AGENT, AggregatePeriod::Day, "2026-01-01T12:00:00Z").total_tasks,
        0
    );
    // A naive timestamp is taken as UTC.
    record(
        s,
        &event(AGENT, "naive", "2026-03-01T10:00:00", metrics(0, 0, 0, 0)),
    );
    let got = query(s, AGENT, "2026-03-01T10:00:00Z", "2026-03-01T10:00:00Z");
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].timestamp, ts("2026-03-01T10:00:00Z"));
}

fn agents_isolated(s: &mut dyn MeteringStore) {
    record(
        s,
        &event("a", "t", "2026-01-01T00:00:00Z", metrics(1, 0, 0, 0)),
    );
    record(
        s,
        &event("a2", "t", "2026-01-01T00:00:00Z", metrics(2, 0, 0, 0)),
    );
    record(
        s,
        &event("%", "t", "2026-01-01T00:00:00Z", metrics(4, 0, 0, 0)),
    );
    for (agent, tokens) in [("a", 1), ("a2", 2), ("%", 4), ("A", 0), ("", 0)] {
        let a = agg(s, agent, AggregatePeriod::Total, "2026-01-01T00:00:00Z");
        assert_eq!(a.total_tokens, tokens, "agent {agent:?}");
        assert_eq!(a.agent_id, agent);
        let n = query(s, agent, "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z").len();
        assert_eq!(n, usize::from(tokens > 0), "agent {agent:?}");
    }
}

fn aggregate_periods(s: &mut dyn MeteringStore) {
    // Wednesday 2026-01-07; the ISO week runs Monday 5th to Sunday 11th.
    let events = [
        ("2025-12-31T23:59:59.999999Z", 1), // previous month, year, and week
        ("2026-01-04T23:59:59Z", 2),        // Sunday: previous ISO week
        ("2026-01-05T00:00:00Z", 4),        // Monday 00:00: week start (inclusive)
        ("2026-01-07T00:00:00Z", 8),        // day start (inclusive)
        ("2026-01-07T15:00:00Z", 16),       // hour start (inclusive)
        ("2026-01-07T15:59:59.999999Z", 32),
        ("2026-01-07T16:00:00Z", 64),  // next hour (exclusive end)
        ("2026-01-08T00:00:00Z", 128), // next day
        ("2026-01-12T00:00:00Z", 256), // next week
        ("2026-01-31T23:59:59Z", 512),
        ("2026-02-01T00:00:00Z", 1024), // next month
    ];
    for (t, tokens) in events {
        record(s, &event(AGENT, t, t, metrics(tokens, 0, 1, 0)));
    }
    let when = "2026-01-07T15:30:00Z";
    let tokens = |p| agg(s, AGENT, p, when).total_tokens;
    assert_eq!(tokens(AggregatePeriod::Hour), 16 + 32);
    assert_eq!(tokens(AggregatePeriod::Day), 8 + 16 + 32 + 64);
    assert_eq!(tokens(AggregatePeriod::Week), 4 + 8 + 16 + 32 + 64 + 128);
    assert_eq!(
        tokens(AggregatePeriod::Month),
        2 + 4 + 8 + 16 + 32 + 64 + 128 + 256 + 512
    );
    assert_eq!(tokens(AggregatePeriod::Total), 2047);
    let hour = agg(s, AGENT, AggregatePeriod::Hour, when);
    assert_eq!(totals(&hour), (48, 2, 2, 0));
    assert_eq!(hour.period, "hour");
    assert_eq!(agg(s, AGENT, AggregatePeriod::Week, when).period, "week");
    assert_eq!(agg(s, AGENT, AggregatePeriod::Month, when).period, "month");
    assert_eq!(agg(s, AGENT, AggregatePeriod::Total, when).period, "total");
    // `at` anywhere in the bucket gives the same answer; Total ignores it.
    assert_eq!(
        agg(s, AGENT, AggregatePeriod::Day, "2026-01-07T00:00:00Z"),
        agg(
            s,
            AGENT,
            AggregatePeriod::Day,
            "2026-01-07T23:59:59.999999Z"
        )
    );
    assert_eq!(
        agg(s, AGENT, AggregatePeriod::Total, "1970-01-01T00:00:00Z").total_tokens,
        2047
    );
    assert_eq!(
        agg(s, AGENT, AggregatePeriod::Month, "2025-12-15T00:00:00Z").total_tokens,
        1
    );
}

fn duplicate_events_count(s: &mut dyn MeteringStore) {
    let e = event(AGENT, "t", "2026-01-01T00:00:00Z", metrics(10, 5, 120, 2));
    record(s, &e);
    record(s, &e);
    assert_eq!(
        query(s, AGENT, "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
        vec![e.clone(), e]
    );
    assert_eq!(
        totals(&agg(
            s,
            AGENT,
            AggregatePeriod::Total,
            "2026-01-01T00:00:00Z"
        )),
        (30, 240, 2, 4)
    );
}

fn metric_limits(s: &mut dyn MeteringStore) {
    let max = MAX_METRIC_VALUE;
    let e = event(
        AGENT,
        "t",
        "2026-01-01T00:00:00Z",
        metrics(max, 0, max, max),
    );
    record(s, &e);
    assert_eq!(
        query(s, AGENT, "2026-01-01T00:00:00Z", "2026-01-01T00:00:00Z"),
        vec![e]
    );
    assert_eq!(
        totals(&agg(
            s,
            AGENT,
            AggregatePeriod::Total,
            "2026-01-01T00:00:00Z"
        )),
        (max, max, 1, max)
    );
    let too_big = event(
        AGENT,
        "t",
        "2026-01-01T00:00:00Z",
        metrics(0, max + 1, 0, 0),
    );
    match s.record(&too_big) {
        Err(StoreError::InvalidInput { what, reason }) => {
            assert_eq!(what, "usage metrics");
            assert!(reason.contains("tokens_out"), "{reason}");
        }
        other => panic!("metric above the maximum should be InvalidInput, got {other:?}"),
    }
    assert_eq!(
        agg(s, AGENT, AggregatePeriod::Total, "2026-01-01T00:00:00Z").total_tasks,
        1,
        "nothing written"
    );
}

fn unicode_events(s: &mut dyn MeteringStore) {
    let mut e = event(
        "agent_日本_😀",
        "tâche_😀",
        "2026-01-01T00:00:00Z",
        metrics(1, 2, 3, 4),
    );
    e.consumer_id = "consommateur\u{0}\"'\\".into();
    record(s, &e);
    assert_eq!(
        query(
            s,
            "agent_日本_😀",
            "2026-01-01T00:00:00Z",
            "2026-01-01T00:00:00Z"
        ),
        vec![e]
    );
    assert_eq!(
        agg(
            s,
            "agent_日本_😀",
            AggregatePeriod::Day,
            "2026-01-01T00:00:00Z"
        )
        .total_tokens,
        3
    );
}

fn many_events(s: &mut dyn MeteringStore) {
    // 1000 events one minute apart from 2026-01-01T00:00Z.
    let base = at("2026-01-01T00:00:00Z");
    for i in 0..1000u64 {
        let t = Timestamp::from_unix(base.saturating_add(std::time::Duration::from_secs(i * 60)));
        let e = UsageEvent {
            timestamp: t,
            ..event(
                AGENT,
                &format!("task_{i}"),
                "2026-01-01T00:00:00Z",
                metrics(i, 1, 2, 3),
            )
        };
        record(s, &e);
    }
    // Day 1 holds minutes 0..1440 → all 1000 events.
    let day = agg(s, AGENT, AggregatePeriod::Day, "2026-01-01T12:00:00Z");
    assert_eq!(totals(&day), (999 * 1000 / 2 + 1000, 2000, 1000, 3000));
    let hour = agg(s, AGENT, AggregatePeriod::Hour, "2026-01-01T01:30:00Z");
    // Minutes 60..120.
    let expected_tokens: u64 = (60..120).map(|i| i + 1).sum();
    assert_eq!(totals(&hour), (expected_tokens, 120, 60, 180));
    let q = query(s, AGENT, "2026-01-01T01:00:00Z", "2026-01-01T02:00:00Z");
    assert_eq!(q.len(), 61);
    assert!(q
        .windows(2)
        .all(|w| w[0].timestamp.unix() <= w[1].timestamp.unix()));
}

// ---- replay ----

fn ms(t: i64) -> UnixTime {
    UnixTime::from_millis(t)
}

fn nonce(sender: &str, n: &str, expires: i64) -> NonceRecord {
    NonceRecord {
        sender: sender.to_owned(),
        nonce: n.to_owned(),
        expires_at_unix_ms: expires,
    }
}

fn dedup(sender: &str, id: &str, response: &[u8], expires: i64) -> DedupRecord {
    DedupRecord {
        sender: sender.to_owned(),
        envelope_id: id.to_owned(),
        response: response.to_vec(),
        expires_at_unix_ms: expires,
    }
}

fn nonces_at(s: &dyn ReplayStore, t: i64) -> Vec<NonceRecord> {
    ok(s.load_nonces(ms(t)), "load_nonces")
}

fn empty_replay_store(s: &mut dyn ReplayStore) {
    assert_eq!(nonces_at(s, 0), vec![]);
    assert_eq!(ok(s.load_dedup(ms(0)), "load_dedup"), vec![]);
    assert_eq!(ok(s.purge_expired(ms(i64::MAX / 1000)), "purge"), 0);
}

fn nonce_liveness(s: &mut dyn ReplayStore) {
    let r = nonce("urn:asap:agent:a", "n1", 1_000);
    ok(s.record_nonce(&r), "record_nonce");
    assert_eq!(nonces_at(s, 0), vec![r.clone()]);
    assert_eq!(nonces_at(s, 1_000), vec![r.clone()], "live at its expiry");
    // 999 µs past the expiry millisecond is still that millisecond.
    let late = UnixTime::from_micros(1_000_999);
    assert_eq!(ok(s.load_nonces(late), "load_nonces"), vec![r.clone()]);
    assert_eq!(nonces_at(s, 1_001), vec![], "expired one ms later");
    assert_eq!(ok(s.purge_expired(ms(1_000)), "purge at expiry"), 0);
    assert_eq!(
        nonces_at(s, 1_000),
        vec![r],
        "a purge at its expiry keeps it"
    );
    assert_eq!(ok(s.purge_expired(ms(1_001)), "purge after expiry"), 1);
    assert_eq!(nonces_at(s, 0), vec![], "purged for good");
}

fn nonce_keeps_later_expiry(s: &mut dyn ReplayStore) {
    ok(s.record_nonce(&nonce("a", "n", 2_000)), "record");
    ok(
        s.record_nonce(&nonce("a", "n", 1_000)),
        "record earlier expiry",
    );
    assert_eq!(nonces_at(s, 0), vec![nonce("a", "n", 2_000)]);
    ok(
        s.record_nonce(&nonce("a", "n", 3_000)),
        "record later expiry",
    );
    assert_eq!(nonces_at(s, 0), vec![nonce("a", "n", 3_000)]);
    assert_eq!(ok(s.purge_expired(ms(2_500)), "purge"), 0);
}

fn nonce_keys_exact(s: &mut dyn ReplayStore) {
    let keys = [
        ("a", "n"),
        ("b", "n"),
        ("a", "N"),
        ("a", "n%"),
        ("a", "n_"),
        ("a ", "n"),
        ("%", "%"),
        ("a", "n "),
    ];
    for (i, (sender, n)) in keys.iter().enumerate() {
        ok(
            s.record_nonce(&nonce(sender, n, 1_000 + i as i64)),
            "record",
        );
    }
    let got = nonces_at(s, 0);
    assert_eq!(got.len(), keys.len(), "{got:?}");
    for (i, (sender, n)) in keys.iter().enumerate() {
        assert!(
            got.contains(&nonce(sender, n, 1_000 + i as i64)),
            "{sender:?} {n:?}"
        );
    }
}

fn replay_load_order(s: &mut dyn ReplayStore) {
    for (sender, n, at) in [("b", "2", 5), ("a", "9", 7), ("a", "1", 5), ("c", "0", 1)] {
        ok(s.record_nonce(&nonce(sender, n, at)), "record");
        ok(s.record_dedup(&dedup(sender, n, b"r", at)), "record_dedup");
    }
    let got: Vec<(String, String, i64)> = nonces_at(s, 0)
        .into_iter()
        .map(|r| (r.sender, r.nonce, r.expires_at_unix_ms))
        .collect();
    let want = [("c", "0", 1), ("a", "1", 5), ("b", "2", 5), ("a", "9", 7)]
        .map(|(a, b, c)| (a.to_owned(), b.to_owned(), c));
    assert_eq!(got, want);
    let got: Vec<(String, String)> = ok(s.load_dedup(ms(2)), "load_dedup")
        .into_iter()
        .map(|r| (r.sender, r.envelope_id))
        .collect();
    assert_eq!(
        got,
        want[1..]
            .iter()
            .map(|(a, b, _)| (a.clone(), b.clone()))
            .collect::<Vec<_>>()
    );
}

fn dedup_round_trip(s: &mut dyn ReplayStore) {
    let bytes = [0u8, 0xff, b'{', 0x80, b'\n', 0];
    let r = dedup("urn:asap:agent:a", "01KDXZ0000ENVREQ0000000001", &bytes, 10);
    ok(s.record_dedup(&r), "record_dedup");
    assert_eq!(ok(s.load_dedup(ms(10)), "load_dedup"), vec![r.clone()]);
    let big = dedup("urn:asap:agent:a", "big", &vec![7u8; 1 << 20], 10);
    ok(s.record_dedup(&big), "record 1 MiB response");
    let replacement = dedup(
        "urn:asap:agent:a",
        "01KDXZ0000ENVREQ0000000001",
        b"second",
        5,
    );
    ok(s.record_dedup(&replacement), "record again");
    assert_eq!(
        ok(s.load_dedup(ms(0)), "load_dedup"),
        vec![replacement, big]
    );
    assert_eq!(ok(s.load_dedup(ms(11)), "load_dedup"), vec![]);
    assert_eq!(nonces_at(s, 0), vec![], "dedup records are not nonces");
}

fn claim_of(nonce_key: Option<&str>, envelope: Option<&str>, lease: i64, now: i64) -> ReplayClaim {
    ReplayClaim {
        nonce: nonce_key.map(|n| nonce("urn:asap:agent:a", n, now + 1_000)),
        dedup: envelope.map(|id| DedupClaim {
            sender: "urn:asap:agent:a".into(),
            envelope_id: id.into(),
            lease_until_unix_ms: lease,
            expires_at_unix_ms: now + 1_000,
        }),
        now: ms(now),
    }
}

fn claim(s: &mut dyn ReplayStore, c: &ReplayClaim) -> ClaimOutcome {
    ok(s.claim(c), "claim")
}

fn claim_decisions(s: &mut dyn ReplayStore) {
    assert_eq!(
        claim(s, &claim_of(None, None, 0, 0)),
        ClaimOutcome::Won,
        "an empty claim"
    );
    assert_eq!(
        claim(s, &claim_of(Some("n1"), Some("e1"), 100, 0)),
        ClaimOutcome::Won
    );
    // The same nonce again is a replay, whatever the envelope.
    assert_eq!(
        claim(s, &claim_of(Some("n1"), Some("e2"), 100, 10)),
        ClaimOutcome::NonceReplayed
    );
    assert_eq!(
        nonces_at(s, 10),
        vec![nonce("urn:asap:agent:a", "n1", 1_000)],
        "a claimed nonce is recorded like an accepted one"
    );
    // A refused claim wrote nothing: e2 is still free.
    assert_eq!(
        claim(s, &claim_of(None, Some("e2"), 100, 10)),
        ClaimOutcome::Won
    );
    // e1 is being run (lease to 100): a copy with a fresh nonce waits.
    assert_eq!(
        claim(s, &claim_of(Some("n2"), Some("e1"), 200, 20)),
        ClaimOutcome::Running
    );
    assert_eq!(
        ok(s.load_dedup(ms(20)), "load_dedup"),
        vec![],
        "a claim is not an answer"
    );
    // Answered: every later copy gets the answer, byte for byte.
    ok(
        s.record_dedup(&dedup("urn:asap:agent:a", "e1", b"{\"r\":1}", 1_000)),
        "record_dedup",
    );
    assert_eq!(
        claim(s, &claim_of(Some("n3"), Some("e1"), 300, 30)),
        ClaimOutcome::Answered(b"{\"r\":1}".to_vec())
    );
    ok(
        s.record_dedup(&dedup("urn:asap:agent:a", "e2", b"", 1_000)),
        "record_dedup",
    );
    assert_eq!(
        claim(s, &claim_of(None, Some("e2"), 300, 30)),
        ClaimOutcome::Answered(Vec::new()),
        "processed without a kept answer"
    );
    // Another sender's envelope of the same id is another key.
    let mut other = claim_of(None, Some("e1"), 300, 30);
    other.dedup.as_mut().unwrap().sender = "urn:asap:agent:b".into();
    assert_eq!(claim(s, &other), ClaimOutcome::Won);
    let mut empty = claim_of(None, Some(""), 300, 30);
    assert!(matches!(
        s.claim(&empty),
        Err(StoreError::InvalidInput { .. })
    ));
    empty.dedup = None;
    empty.nonce = Some(nonce("", "n", 1));
    assert!(matches!(
        s.claim(&empty),
        Err(StoreError::InvalidInput { .. })
    ));
}

fn claim_lease_takeover(s: &mut dyn ReplayStore) {
    assert_eq!(
        claim(s, &claim_of(None, Some("e"), 100, 0)),
        ClaimOutcome::Won
    );
    assert_eq!(
        claim(s, &claim_of(None, Some("e"), 300, 100)),
        ClaimOutcome::Running,
        "the lease is live through its last millisecond"
    );
    assert_eq!(
        claim(s, &claim_of(None, Some("e"), 300, 101)),
        ClaimOutcome::Won,
        "past the lease the claimant is taken as dead"
    );
    assert_eq!(
        claim(s, &claim_of(None, Some("e"), 500, 200)),
        ClaimOutcome::Running,
        "the new claimant holds the new lease"
    );
}

fn claim_release(s: &mut dyn ReplayStore) {
    assert_eq!(
        claim(s, &claim_of(None, Some("e"), 1_000, 0)),
        ClaimOutcome::Won
    );
    // The run failed: an answer record already expired releases the claim.
    ok(
        s.record_dedup(&dedup("urn:asap:agent:a", "e", b"", 9)),
        "release",
    );
    assert_eq!(
        claim(s, &claim_of(None, Some("e"), 1_000, 10)),
        ClaimOutcome::Won,
        "a released claim is free at once, before its lease ends"
    );
    assert_eq!(
        claim(s, &claim_of(None, Some("e"), 1_000, 20)),
        ClaimOutcome::Running
    );
}

fn claim_expiry(s: &mut dyn ReplayStore) {
    // Lease far beyond the expiry: the expiry still frees the key.
    assert_eq!(
        claim(s, &claim_of(Some("n"), Some("e"), 1_000_000, 0)),
        ClaimOutcome::Won
    );
    assert_eq!(
        claim(s, &claim_of(Some("n"), Some("e"), 0, 1_001)),
        ClaimOutcome::Won
    );
    assert!(ok(s.purge_expired(ms(5_000)), "purge") >= 2);
    assert_eq!(nonces_at(s, 0), vec![]);
    assert_eq!(
        claim(s, &claim_of(None, Some("e"), 6_000, 5_000)),
        ClaimOutcome::Won
    );
}

fn purge_both_kinds(s: &mut dyn ReplayStore) {
    ok(s.record_nonce(&nonce("a", "old", 10)), "record");
    ok(s.record_nonce(&nonce("a", "new", 20)), "record");
    ok(s.record_dedup(&dedup("a", "old", b"x", 10)), "record_dedup");
    ok(s.record_dedup(&dedup("a", "new", b"y", 20)), "record_dedup");
    assert_eq!(ok(s.purge_expired(ms(15)), "purge"), 2);
    assert_eq!(nonces_at(s, 0), vec![nonce("a", "new", 20)]);
    assert_eq!(
        ok(s.load_dedup(ms(0)), "load_dedup"),
        vec![dedup("a", "new", b"y", 20)]
    );
    assert_eq!(ok(s.purge_expired(ms(15)), "purge again"), 0);
    // Far-past and far-future expiries.
    ok(s.record_nonce(&nonce("a", "min", i64::MIN)), "record");
    ok(s.record_nonce(&nonce("a", "max", i64::MAX)), "record");
    assert_eq!(ok(s.purge_expired(ms(0)), "purge"), 1);
    assert_eq!(nonces_at(s, 100), vec![nonce("a", "max", i64::MAX)]);
}

fn replay_empty_keys_rejected(s: &mut dyn ReplayStore) {
    for r in [nonce("", "n", 1), nonce("a", "", 1)] {
        match s.record_nonce(&r) {
            Err(StoreError::InvalidInput { what, .. }) => assert_eq!(what, "nonce record"),
            other => panic!("{r:?} should be InvalidInput, got {other:?}"),
        }
    }
    match s.record_nonces(&[nonce("a", "fine", 1), nonce("a", "", 1)]) {
        Err(StoreError::InvalidInput { .. }) => {}
        other => panic!("a batch with an empty nonce should be InvalidInput, got {other:?}"),
    }
    for r in [dedup("", "e", b"", 1), dedup("a", "", b"", 1)] {
        match s.record_dedup(&r) {
            Err(StoreError::InvalidInput { what, .. }) => assert_eq!(what, "dedup record"),
            other => panic!("{r:?} should be InvalidInput, got {other:?}"),
        }
    }
    assert_eq!(nonces_at(s, 0), vec![], "nothing written");
    assert_eq!(ok(s.load_dedup(ms(0)), "load_dedup"), vec![]);
}

fn replay_unicode_keys(s: &mut dyn ReplayStore) {
    let r = nonce("urn:asap:agent:日本", "nonce_😀\u{0}\"'\\", 1);
    ok(s.record_nonce(&r), "record");
    let spaced = nonce("urn:asap:agent:日本", "nonce_😀\u{0}\"'\\ ", 1);
    ok(s.record_nonce(&spaced), "record");
    assert_eq!(nonces_at(s, 0), vec![r, spaced]);
}

fn many_nonces(s: &mut dyn ReplayStore) {
    let batch: Vec<NonceRecord> = (0..1000)
        .map(|i| nonce("urn:asap:agent:a", &format!("n{i:04}"), i))
        .collect();
    ok(s.record_nonces(&batch), "record_nonces");
    assert_eq!(nonces_at(s, 0), batch);
    assert_eq!(ok(s.purge_expired(ms(500)), "purge"), 500);
    assert_eq!(nonces_at(s, 0), batch[500..]);
}

#[cfg(test)]
mod tests {
    use super::super::{MemoryMeteringStore, MemoryReplayStore, MemorySnapshotStore};

    #[test]
    fn memory_snapshot_store_passes_the_contract() {
        super::snapshot_store(MemorySnapshotStore::new);
    }

    #[test]
    fn memory_metering_store_passes_the_contract() {
        super::metering_store(MemoryMeteringStore::new);
    }

    #[test]
    fn memory_replay_store_passes_the_contract() {
        super::replay_store(MemoryReplayStore::new);
    }

    #[test]
    #[should_panic(expected = "contract case `empty store` failed")]
    fn a_failing_case_is_named() {
        struct Broken;
        impl super::SnapshotStore for Broken {
            fn save(&mut self, _: &super::StateSnapshot) -> Result<(), super::StoreError> {
                Ok(())
            }
            fn get(
                &self,
                _: &str,
                _: i64,
            ) -> Result<Option<super::StateSnapshot>, super::StoreError> {
                Ok(None)
            }
            fn get_latest(
                &self,
                _: &str,
            ) -> Result<Option<super::StateSnapshot>, super::StoreError> {
                Ok(None)
            }
            fn list_versions(&self, _: &str) -> Result<Vec<i64>, super::StoreError> {
                Ok(vec![1])
            }
            fn delete(&mut self, _: &str, _: i64) -> Result<bool, super::StoreError> {
                Ok(false)
            }
            fn delete_all(&mut self, _: &str) -> Result<bool, super::StoreError> {
                Ok(false)
            }
        }
        super::snapshot_store(|| Broken);
    }
}
