//! Two replicas sharing one replay store (`ServerConfig::shared_replay`):
//! the store decides, through `Step::Claim`, what each replica's own window
//! cannot see. Driven inline with explicit clocks; the store is the core's
//! in-memory one, which passes the same contract as SQLite and PostgreSQL.
#![allow(clippy::disallowed_methods)] // A base `Instant` for the test; the code under test never reads the clock.

use std::time::{Duration, Instant};

use asap_proto::model::{AgentUrn, Manifest, Skill, UnixTime};
use asap_proto::server::{
    drive_inline, HandlerError, HandlerOutcome, Invocation, Metrics, NonceMode, Now, RequestHead,
    Server, ServerConfig, SharedReplay, SkillResult, TaskState, Transport,
};
use asap_proto::store::{
    ClaimOutcome, DedupClaim, MemoryMeteringStore, MemoryReplayStore, MemorySnapshotStore,
    ReplayClaim, ReplayStore, StoreError,
};
use serde_json::Value;

const T0: i64 = 1_767_225_600; // 2026-01-01T00:00:00Z

fn at(base: Instant, ms: u64) -> Now {
    Now {
        monotonic: base + Duration::from_millis(ms),
        wall: UnixTime::from_millis(T0 * 1000 + ms as i64),
    }
}

fn replica(nonce: NonceMode, base: Instant, seed: u64) -> Server {
    let mut m = Manifest::new(
        AgentUrn::new("urn:asap:agent:srv").unwrap(),
        "srv",
        "1.0.0",
        "srv",
        "http://127.0.0.1/asap",
    );
    m.capabilities.skills.push(Skill::new("echo", "echo"));
    let config = ServerConfig {
        nonce,
        rate_limit: None,
        shared_replay: Some(SharedReplay::default()),
        ..ServerConfig::default()
    };
    let mut s = Server::new(m, config, base, seed);
    s.routes_mut().add_skill("echo");
    s.routes_mut().attach_task_state();
    s
}

fn body(envelope_id: &str, rpc_id: &str, nonce: Option<&str>) -> Vec<u8> {
    let ext = nonce.map_or(String::new(), |n| {
        format!(r#","extensions":{{"nonce":"{n}"}}"#)
    });
    format!(
        r#"{{"jsonrpc":"2.0","method":"asap.send","id":"{rpc_id}","params":{{"envelope":{{"id":"{envelope_id}","asap_version":"0.1","timestamp":"2026-01-01T00:00:00Z","sender":"urn:asap:agent:cli","recipient":"urn:asap:agent:srv","payload_type":"task.request","payload":{{"conversation_id":"c","skill_id":"echo","input":{{"m":1}}}}{ext}}}}}}}"#
    )
    .into_bytes()
}

struct Shared {
    snapshots: MemorySnapshotStore,
    metering: MemoryMeteringStore,
    replay: Box<dyn ReplayStore>,
}

impl Shared {
    fn new() -> Self {
        Self {
            snapshots: MemorySnapshotStore::new(),
            metering: MemoryMeteringStore::new(),
            replay: Box::new(MemoryReplayStore::new()),
        }
    }

    fn send(
        &mut self,
        server: &mut Server,
        body: &[u8],
        now: Now,
        handler: impl FnMut(&Invocation) -> HandlerOutcome,
    ) -> (u16, Value) {
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        let head = RequestHead {
            method: &http::Method::POST,
            path: "/asap",
            headers: &headers,
            peer: None,
            transport: Transport::Http,
        };
        let state = TaskState {
            snapshots: &mut self.snapshots,
            metering: &mut self.metering,
            replay: Some(self.replay.as_mut()),
        };
        let r = drive_inline(
            server,
            &head,
            body,
            now,
            handler,
            Some(state),
            &mut Metrics::default(),
        );
        let status = r.status().as_u16();
        (
            status,
            serde_json::from_slice(r.body()).unwrap_or(Value::Null),
        )
    }
}

fn counting(runs: &mut u32) -> impl FnMut(&Invocation) -> HandlerOutcome + '_ {
    move |inv| {
        *runs += 1;
        HandlerOutcome::Skill(SkillResult::echo(inv))
    }
}

#[test]
fn a_copy_sent_to_the_other_replica_gets_the_first_answer_and_runs_nothing() {
    let base = Instant::now();
    let (mut a, mut b) = (
        replica(NonceMode::Off, base, 1),
        replica(NonceMode::Off, base, 2),
    );
    let mut store = Shared::new();
    let mut runs = 0;
    let env = "01KDXZ0000SHAREDREPLAY0001";
    let (_, first) = store.send(
        &mut a,
        &body(env, "r-1", None),
        at(base, 0),
        counting(&mut runs),
    );
    let (status, copy) = store.send(
        &mut b,
        &body(env, "r-2", None),
        at(base, 5),
        counting(&mut runs),
    );
    assert_eq!(runs, 1, "the skill ran once over both replicas");
    assert_eq!(status, 200);
    assert_eq!(copy["id"], "r-2", "re-addressed to the copy's JSON-RPC id");
    assert_eq!(
        copy["result"], first["result"],
        "the first answer, same task id"
    );
    // Another envelope runs on either replica.
    let (_, other) = store.send(
        &mut b,
        &body("01KDXZ0000SHAREDREPLAY0002", "r-3", None),
        at(base, 6),
        counting(&mut runs),
    );
    assert_eq!(runs, 2);
    assert!(other.get("result").is_some(), "{other}");
}

#[test]
fn a_nonce_used_on_one_replica_is_a_replay_on_the_other() {
    let base = Instant::now();
    let mode = NonceMode::WhenPresent;
    let (mut a, mut b) = (replica(mode, base, 1), replica(mode, base, 2));
    let mut store = Shared::new();
    let mut runs = 0;
    let (_, ok) = store.send(
        &mut a,
        &body("01KDXZ0000SHAREDNONCE00001", "n-1", Some("nonce-1")),
        at(base, 0),
        counting(&mut runs),
    );
    assert!(ok.get("result").is_some(), "{ok}");
    let (status, replay) = store.send(
        &mut b,
        &body("01KDXZ0000SHAREDNONCE00002", "n-2", Some("nonce-1")),
        at(base, 5),
        counting(&mut runs),
    );
    assert_eq!(runs, 1);
    assert_eq!(status, 200);
    assert_eq!(replay["error"]["code"], -32602, "{replay}");
    assert_eq!(
        replay["error"]["data"]["message"], "Duplicate nonce detected: nonce-1",
        "{replay}"
    );
    // The refusal is not the envelope's answer: the same envelope with a
    // fresh nonce runs on the replica that refused it.
    let (_, fresh) = store.send(
        &mut b,
        &body("01KDXZ0000SHAREDNONCE00002", "n-3", Some("nonce-2")),
        at(base, 6),
        counting(&mut runs),
    );
    assert!(fresh.get("result").is_some(), "{fresh}");
    assert_eq!(runs, 2);
}

fn running_elsewhere(store: &mut Shared, env: &str, lease_ms: i64) {
    let claim = ReplayClaim {
        nonce: None,
        dedup: Some(DedupClaim {
            sender: "urn:asap:agent:cli".into(),
            envelope_id: env.into(),
            lease_until_unix_ms: T0 * 1000 + lease_ms,
            expires_at_unix_ms: T0 * 1000 + 330_000,
        }),
        now: UnixTime::from_secs(T0),
    };
    assert_eq!(store.replay.claim(&claim).unwrap(), ClaimOutcome::Won);
}

#[test]
fn a_copy_of_an_envelope_running_elsewhere_waits_then_is_told_to_retry() {
    let base = Instant::now();
    let mut b = replica(NonceMode::Off, base, 2);
    let mut store = Shared::new();
    let env = "01KDXZ0000SHAREDRUNNING001";
    running_elsewhere(&mut store, env, 600_000);
    let mut runs = 0;
    let (status, busy) = store.send(
        &mut b,
        &body(env, "w-1", None),
        at(base, 0),
        counting(&mut runs),
    );
    assert_eq!(runs, 0, "not started twice");
    assert_eq!(status, 503, "{busy}");
    assert!(busy.to_string().contains("another replica"), "{busy}");
    // The refusal was not kept: once the other replica answers, the copy gets it.
    store
        .replay
        .record_dedup(&asap_proto::store::DedupRecord {
            sender: "urn:asap:agent:cli".into(),
            envelope_id: env.into(),
            response: br#"{"jsonrpc":"2.0","id":"x","result":{"first":true}}"#.to_vec(),
            expires_at_unix_ms: T0 * 1000 + 330_000,
        })
        .unwrap();
    let (status, first) = store.send(
        &mut b,
        &body(env, "w-2", None),
        at(base, 20_000),
        counting(&mut runs),
    );
    assert_eq!((status, runs), (200, 0));
    assert_eq!(first["id"], "w-2");
    assert_eq!(first["result"]["first"], true);
}

#[test]
fn a_dead_replicas_claim_passes_to_a_copy_when_its_lease_ends() {
    let base = Instant::now();
    let mut b = replica(NonceMode::Off, base, 2);
    let mut store = Shared::new();
    let env = "01KDXZ0000SHAREDLEASE00001";
    running_elsewhere(&mut store, env, 2_000); // the claimant died; its lease ends 2 s in
    let mut runs = 0;
    let (status, answer) = store.send(
        &mut b,
        &body(env, "l-1", None),
        at(base, 1_000),
        counting(&mut runs),
    );
    assert_eq!(
        (status, runs),
        (200, 1),
        "waited past the lease, then ran: {answer}"
    );
    assert!(answer.get("result").is_some(), "{answer}");
}

#[test]
fn a_failed_run_releases_its_claim_for_the_next_copy() {
    let base = Instant::now();
    let (mut a, mut b) = (
        replica(NonceMode::Off, base, 1),
        replica(NonceMode::Off, base, 2),
    );
    let mut store = Shared::new();
    let env = "01KDXZ0000SHAREDFAILED0001";
    let fail = |_: &Invocation| HandlerOutcome::Failed(HandlerError::failed("disk on fire"));
    let (_, failed) = store.send(&mut a, &body(env, "f-1", None), at(base, 0), fail);
    assert!(failed.get("error").is_some(), "{failed}");
    let mut runs = 0;
    let (status, again) = store.send(
        &mut b,
        &body(env, "f-2", None),
        at(base, 10),
        counting(&mut runs),
    );
    assert_eq!((status, runs), (200, 1), "ran again at once: {again}");
}

struct Down;
impl ReplayStore for Down {
    fn record_nonce(&mut self, _: &asap_proto::store::NonceRecord) -> Result<(), StoreError> {
        Err(StoreError::Backend("down".into()))
    }
    fn load_nonces(&self, _: UnixTime) -> Result<Vec<asap_proto::store::NonceRecord>, StoreError> {
        Ok(Vec::new())
    }
    fn record_dedup(&mut self, _: &asap_proto::store::DedupRecord) -> Result<(), StoreError> {
        Err(StoreError::Backend("down".into()))
    }
    fn load_dedup(&self, _: UnixTime) -> Result<Vec<asap_proto::store::DedupRecord>, StoreError> {
        Ok(Vec::new())
    }
    fn purge_expired(&mut self, _: UnixTime) -> Result<u64, StoreError> {
        Ok(0)
    }
    fn claim(&mut self, _: &ReplayClaim) -> Result<ClaimOutcome, StoreError> {
        Err(StoreError::Backend("connection refused".into()))
    }
}

#[test]
fn an_unreachable_store_fails_closed_and_runs_nothing() {
    let base = Instant::now();
    let mut a = replica(NonceMode::Off, base, 1);
    let mut store = Shared::new();
    store.replay = Box::new(Down);
    let mut runs = 0;
    let (status, busy) = store.send(
        &mut a,
        &body("01KDXZ0000SHAREDDOWN000001", "d-1", None),
        at(base, 0),
        counting(&mut runs),
    );
    assert_eq!((status, runs), (503, 0), "{busy}");
    assert!(busy.to_string().contains("connection refused"), "{busy}");
}

#[test]
fn an_envelope_answered_with_an_error_releases_its_claim() {
    let base = Instant::now();
    let (mut a, mut b) = (
        replica(NonceMode::Off, base, 1),
        replica(NonceMode::Off, base, 2),
    );
    let mut store = Shared::new();
    let env = "01KDXZ0000SHAREDNOSKILL001";
    let body = String::from_utf8(body(env, "x-1", None))
        .unwrap()
        .replace(r#""skill_id":"echo""#, r#""skill_id":"nope""#);
    let mut runs = 0;
    let (_, first) = store.send(&mut a, body.as_bytes(), at(base, 0), counting(&mut runs));
    assert_eq!(first["error"]["code"], -32601, "{first}");
    // The error is not kept as the answer, and the claim does not hold the
    // envelope for its lease: the copy is decided again at once, the same way.
    let (status, copy) = store.send(&mut b, body.as_bytes(), at(base, 10), counting(&mut runs));
    assert_eq!((status, runs), (200, 0));
    assert_eq!(copy["error"]["code"], -32601, "{copy}");
}
