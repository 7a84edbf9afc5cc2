//! Measures what recording one skill run costs the state writer: snapshot +
//! usage event, group-committed in batches, on a SQLite file.
//!
//! Run: `cargo run --release --example record_cost -- [batch] [tasks] [dedup]`
//! (`dedup`: each task also keeps its answer in the receiver-dedup window, as
//! `asap serve` does; the window's age is 5 s of a clock that advances 1 ms per
//! task, so the commits also purge what aged out.)

use std::time::Instant;

use asap_blocking::store::{open_stores_with, SqliteOptions, Synchronous};
use asap_proto::model::{
    AgentUrn, Envelope, Payload, StateSnapshot, TaskRequest, Timestamp, UnixTime,
};
use asap_proto::server::state::task_records;
use asap_proto::server::{Invocation, Route, SkillResult};
use asap_proto::store::{DedupRecord, StorageBackend, StorageConfig, UsageEvent};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let batch = args.first().copied().unwrap_or(32);
    let tasks = args.get(1).copied().unwrap_or(20_000);
    let with_dedup = std::env::args().any(|a| a == "dedup");
    let dir = std::env::temp_dir().join(format!("asap-record-cost-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = StorageConfig {
        backend: StorageBackend::Sqlite,
        path: dir.join("state.db"),
        url: None,
    };
    for sync in [Synchronous::Normal, Synchronous::Full] {
        let mut stores = open_stores_with(
            &config,
            &SqliteOptions {
                synchronous: sync,
                ..Default::default()
            },
        )
        .unwrap();
        let now = UnixTime::from_secs(1_767_225_600);
        let mut input = serde_json::Map::new();
        input.insert("message".into(), "hello".into());
        let request = TaskRequest::new("conv", "echo", input);
        let env = Envelope::new(
            "01KDXZ0000ENVREQ0000000001".into(),
            Timestamp::from_unix(now),
            AgentUrn::new("urn:asap:agent:bench").unwrap(),
            AgentUrn::new("urn:asap:agent:echo").unwrap(),
            Payload::TaskRequest(request.clone()),
        );
        let payload = env.payload().unwrap();
        let inv = Invocation {
            request_id: 1.into(),
            envelope: env,
            payload,
            route: Route::Skill("echo".into()),
            task_id: None,
            accepted_at: now,
            webhooks: None,
        };
        let result = SkillResult::echo(&inv);
        let t = Instant::now();
        let mut done = 0;
        while done < tasks {
            let mut snaps: Vec<StateSnapshot> = Vec::with_capacity(batch);
            let mut events: Vec<UsageEvent> = Vec::with_capacity(batch);
            let mut dedup: Vec<DedupRecord> = Vec::new();
            let at = now.saturating_add(std::time::Duration::from_millis(done as u64));
            for i in 0..batch {
                if with_dedup {
                    dedup.push(DedupRecord {
                        sender: "urn:asap:agent:bench".into(),
                        envelope_id: format!("01KDXZ{sync:?}{:020}", done + i),
                        response: vec![b'x'; 640],
                        expires_at_unix_ms: at.as_millis() + 5_000,
                    });
                }
                let r = task_records(
                    &format!("task_{sync:?}_{}", done + i),
                    format!("snap_{}", done + i),
                    &inv.envelope,
                    request.clone(),
                    &result,
                    now,
                    now,
                );
                snaps.push(r.snapshot);
                events.push(r.usage);
            }
            stores
                .record_group(&snaps, &events, &[], &dedup, at)
                .unwrap();
            done += batch;
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "synchronous={sync:?} batch={batch} dedup={with_dedup}: {:.0} tasks/s ({:.1} µs per task)",
            done as f64 / secs,
            secs * 1e6 / done as f64
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
