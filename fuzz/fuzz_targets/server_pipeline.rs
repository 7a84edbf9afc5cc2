//! The whole core exchange on arbitrary bodies, encodings and driver orders:
//! no panic, every answer is a well-formed HTTP response with a JSON body,
//! a driver loop always ends, and the server keeps serving afterwards. A fresh
//! server per input, so a saved crash reproduces from its input alone.
#![no_main]

use std::time::Instant;

use asap_proto::model::{AgentUrn, Manifest, Skill, UnixTime};
use asap_proto::server::{
    drive_inline, BodyError, HandlerOutcome, Invocation, Metrics, Now, RequestHead, Server,
    ServerConfig, SkillResult, Step, Transport,
};
use asap_proto::store::{ClaimOutcome, MemoryMeteringStore, MemoryReplayStore, MemorySnapshotStore, StoreError};
use libfuzzer_sys::fuzz_target;

const NOW_SECS: i64 = 1_767_225_600;
const VALID: &[u8] = br#"{"jsonrpc":"2.0","method":"asap.send","id":1,"params":{"envelope":{"asap_version":"0.1","timestamp":"2026-01-01T00:00:00Z","sender":"urn:asap:agent:c","recipient":"urn:asap:agent:fuzz","payload_type":"task.request","payload":{"conversation_id":"c","skill_id":"echo","input":{}}}}}"#;

struct Fixture {
    server: Server,
    metrics: Metrics,
    snapshots: MemorySnapshotStore,
    metering: MemoryMeteringStore,
    /// Replay state shared "with other replicas" (claims decided here).
    replay: MemoryReplayStore,
}

fn fixture(shared: bool) -> Fixture {
    let mut m = Manifest::new(AgentUrn::new("urn:asap:agent:fuzz").unwrap(), "f", "1.0.0", "f", "http://127.0.0.1/asap");
    m.capabilities.skills.push(Skill::new("echo", "echo"));
    let config = ServerConfig { rate_limit: None, nonce: asap_proto::server::NonceMode::WhenPresent, max_nonces: 64, max_request_size: 64 * 1024, shared_replay: shared.then(Default::default), ..ServerConfig::default() };
    let mut server = Server::new(m, config, Instant::now(), 7);
    server.routes_mut().add_skill("echo");
    server.routes_mut().attach_task_state();
    Fixture { server, metrics: Metrics::default(), snapshots: MemorySnapshotStore::new(), metering: MemoryMeteringStore::new(), replay: MemoryReplayStore::new() }
}

fn now() -> Now {
    Now { monotonic: Instant::now(), wall: UnixTime::from_secs(NOW_SECS) }
}

fn run(f: &mut Fixture, encoding: Option<&str>, body: &[u8]) -> http::Response<Vec<u8>> {
    let mut h = http::HeaderMap::new();
    if let Some(e) = encoding {
        h.insert("content-encoding", http::HeaderValue::from_str(e).unwrap());
    }
    let head = RequestHead { method: &http::Method::POST, path: "/asap", headers: &h, peer: None, transport: Transport::Http };
    let echo = |inv: &Invocation| HandlerOutcome::Skill(SkillResult::echo(inv));
    let state = asap_proto::server::TaskState { snapshots: &mut f.snapshots, metering: &mut f.metering, replay: Some(&mut f.replay) };
    drive_inline(&mut f.server, &head, body, now(), echo, Some(state), &mut f.metrics)
}

/// Feeds inputs in the order the fuzzer picks, then drives correctly: must end.
fn out_of_order(f: &mut Fixture, ops: &[u8]) {
    let h = http::HeaderMap::new();
    let head = RequestHead { method: &http::Method::POST, path: "/asap", headers: &h, peer: None, transport: Transport::Http };
    let mut ex = f.server.handle_request(&head, now());
    for op in ops.iter().take(16) {
        match op % 9 {
            6 => {
                // Whatever a (buggy) store answers, including bytes that are not JSON.
                let outcome = match op / 9 % 5 {
                    0 => Ok(ClaimOutcome::Won),
                    1 => Ok(ClaimOutcome::Running),
                    2 => Ok(ClaimOutcome::NonceReplayed),
                    3 => Ok(ClaimOutcome::Answered(ops.to_vec())),
                    _ => Err(StoreError::Backend("down".into())),
                };
                ex.handle_claim(outcome, now());
            }
            7 => ex.handle_claim_waited(now()),
            8 => {
                let _ = ex.abandon_claim(now().wall);
            }
            0 => ex.handle_body(VALID, now().wall),
            1 => ex.handle_body_error(BodyError::Unreadable("reset".into())),
            2 => f.server.handle_admission(&mut ex, now()),
            3 => ex.handle_persisted(Ok(()), now().wall),
            4 => ex.handle_health(Default::default(), now().monotonic),
            _ => {
                let _ = ex.poll_step();
            }
        }
    }
    for _ in 0..10 {
        match ex.poll_step() {
            Step::ReadBody { .. } => ex.handle_body(VALID, now().wall),
            Step::Admit => f.server.handle_admission(&mut ex, now()),
            Step::Invoke(inv) => {
                let o = HandlerOutcome::Skill(SkillResult::echo(&inv));
                ex.handle_outcome(o, now().wall);
            }
            Step::Persist(_) => ex.handle_persisted(Ok(()), now().wall),
            Step::QueryState(_) => ex.handle_state(Err(asap_proto::server::HandlerError::failed("x")), now().wall),
            Step::CheckHealth => ex.handle_health(Default::default(), now().monotonic),
            Step::RenderMetrics => ex.handle_metrics(&f.metrics),
            Step::Notify(_) => {}
            Step::AwaitFirst { .. } => ex.handle_first_answer(None, now().wall),
            Step::Fetch(_) => f.server.handle_fetched(&mut ex, Err("fuzz: no network".into()), now()),
            Step::AwaitFetch => f.server.handle_fetch_waited(&mut ex, now()),
            Step::Claim(_) => ex.handle_claim(Ok(asap_proto::store::ClaimOutcome::Won), now()),
            Step::AwaitClaim { .. } => ex.handle_claim_waited(now()),
            Step::Respond(_) => return,
        }
    }
    panic!("the driver loop did not end");
}

fuzz_target!(|data: &[u8]| {
    let (selector, body) = match data.split_first() {
        Some((b, rest)) => (*b, rest),
        None => (0, data),
    };
    let f = &mut fixture(selector & 0x40 != 0);
    if selector >= 0xF0 {
        return out_of_order(f, body);
    }
    let encoding = [None, Some("gzip"), Some("br"), Some("identity")][usize::from(selector % 4)];
    let r = run(f, encoding, body);
    assert!(matches!(r.status().as_u16(), 200 | 400 | 413 | 415), "status {}", r.status());
    let v: serde_json::Value = serde_json::from_slice(r.body()).expect("every answer is JSON");
    assert!(v.get("result").is_some() || v.get("error").is_some() || v.get("detail").is_some());
    // Nothing the input did stops the next good request (or its replay: nonces are on,
    // the valid request carries none, so a second one is served too).
    let ok = run(f, None, VALID);
    let v: serde_json::Value = serde_json::from_slice(ok.body()).unwrap();
    assert!(v.get("result").is_some(), "valid request refused after fuzz input: {v}");
});
