//! Measures what recording one skill run costs the state writer: snapshot +
//! usage event, group-committed in batches, on a SQLite file.
//!
//! Run: `cargo run --release --example record_cost -- [batch] [tasks]`

use std::time::Instant;

use asap_blocking::store::{open_stores_with, SqliteOptions, Synchronous};
use asap_proto::model::{
    AgentUrn, Envelope, Payload, StateSnapshot, TaskRequest, Timestamp, UnixTime,
};
use asap_proto::server::state::task_records;
use asap_proto::server::{Invocation, Route, SkillResult};
use asap_proto::store::{StorageBackend, StorageConfig, UsageEvent};

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let batch = args.first().copied().unwrap_or(32);
    let tasks = args.get(1).copied().unwrap_or(20_000);
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
            for i in 0..batch {
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
            stores.record_tasks(&snaps, &events).unwrap();
            done += batch;
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "synchronous={sync:?} batch={batch}: {:.0} tasks/s ({:.1} µs per task)",
            done as f64 / secs,
            secs * 1e6 / done as f64
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
