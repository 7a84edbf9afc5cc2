//! Counts heap allocations per echo `POST /asap` through the whole exchange
//! (`drive_inline`, memory task state without a replay store, dedup on: what
//! `asap serve` does with `ASAP_STORAGE_BACKEND=memory`): the number the adapters
//! multiply by their request rate. `cargo run --release -p asap-tests --example alloc_count`
#![allow(clippy::disallowed_methods)]
// GlobalAlloc is an unsafe trait; this counter only forwards to the system allocator.
#![allow(unsafe_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use asap_proto::model::{AgentUrn, Manifest, Skill, UnixTime};
use asap_proto::server::{
    drive_inline, HandlerOutcome, Invocation, Metrics, Now, RequestHead, Server, ServerConfig,
    SkillResult, TaskState, Transport,
};
use asap_proto::store::{MemoryMeteringStore, MemorySnapshotStore};

struct Counting;
static ALLOCS: AtomicUsize = AtomicUsize::new(0);
static BYTES: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(l.size(), Ordering::Relaxed);
        System.alloc(l)
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        System.dealloc(p, l)
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        BYTES.fetch_add(n, Ordering::Relaxed);
        System.realloc(p, l, n)
    }
}

#[global_allocator]
static A: Counting = Counting;

fn main() {
    let mut m = Manifest::new(
        AgentUrn::new("urn:asap:agent:srv").unwrap(),
        "srv",
        "1.0.0",
        "srv",
        "http://127.0.0.1/asap",
    );
    m.capabilities.skills.push(Skill::new("echo", "echo"));
    let base = Instant::now();
    let config = ServerConfig {
        rate_limit: None,
        ..ServerConfig::default()
    };
    let mut s = Server::new(m, config, base, 1);
    s.routes_mut().add_skill("echo");
    s.routes_mut().attach_task_state();
    let (mut snaps, mut meter) = (MemorySnapshotStore::new(), MemoryMeteringStore::new());
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    let mut metrics = Metrics::default();
    let n: u64 = std::env::var("N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let mut counted = (0, 0);
    for i in 0..n {
        if i == n / 2 {
            counted = (
                ALLOCS.load(Ordering::Relaxed),
                BYTES.load(Ordering::Relaxed),
            );
        }
        let body = format!(
            r#"{{"jsonrpc":"2.0","method":"asap.send","params":{{"envelope":{{"id":"01KDXZ{i:020}","asap_version":"0.1","timestamp":"2026-01-01T00:00:00.000000Z","sender":"urn:asap:agent:bench","recipient":"urn:asap:agent:srv","payload_type":"task.request","payload":{{"conversation_id":"conv_bench","skill_id":"echo","input":{{"message":"hello"}}}}}}}},"id":{i}}}"#
        );
        let head = RequestHead {
            method: &http::Method::POST,
            path: "/asap",
            headers: &headers,
            peer: None,
            transport: Transport::Http,
        };
        let now = Now {
            monotonic: base + std::time::Duration::from_micros(i),
            wall: UnixTime::from_secs(1_767_225_600),
        };
        let state = TaskState {
            snapshots: &mut snaps,
            metering: &mut meter,
            replay: None,
        };
        let r = drive_inline(
            &mut s,
            &head,
            body.as_bytes(),
            now,
            |inv: &Invocation| HandlerOutcome::Skill(SkillResult::echo(inv)),
            Some(state),
            &mut metrics,
        );
        assert_eq!(r.status(), 200);
    }
    let (a, b) = (
        ALLOCS.load(Ordering::Relaxed) - counted.0,
        BYTES.load(Ordering::Relaxed) - counted.1,
    );
    let half = n / 2;
    println!(
        "per echo request: {} allocations, {} bytes (over {half} requests, the body's own format! included)",
        a as u64 / half,
        b as u64 / half
    );
}
