//! The blocking agent keeps refusing a replayed nonce after a restart on the
//! same SQLite file (accepted nonces are committed before the answer and
//! handed back to the core when the stores are opened again).

use std::time::SystemTime;

use asap_blocking::server::Agent;
use asap_blocking::store::open_stores;
use asap_proto::model::{AgentUrn, Manifest, Skill, Timestamp, UnixTime};
use asap_proto::server::{NonceMode, ServerConfig};
use asap_proto::store::StorageConfig;
use http::{HeaderMap, Method};
use serde_json::{json, Value};

fn agent(config: &StorageConfig) -> Agent {
    let mut m = Manifest::new(
        AgentUrn::new("urn:asap:agent:bank").unwrap(),
        "bank",
        "1.0.0",
        "bank",
        "http://127.0.0.1/asap",
    );
    m.capabilities.skills.push(Skill::new("echo", "echo"));
    Agent::builder(m)
        .config(ServerConfig {
            nonce: NonceMode::WhenPresent,
            rate_limit: None,
            ..ServerConfig::default()
        })
        .echo_skill("echo")
        .stores(open_stores(config).unwrap())
        .build()
}

fn send(agent: &Agent, body: &[u8]) -> Value {
    let mut reader = body;
    let r = agent.handle(&Method::POST, "/asap", &HeaderMap::new(), None, &mut reader);
    serde_json::from_slice(r.body()).unwrap()
}

#[test]
fn a_replayed_nonce_stays_refused_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let config = StorageConfig::from_values(Some("sqlite"), Some(path.to_str().unwrap())).unwrap();
    let ts = Timestamp::from_unix(UnixTime::from_system_time(SystemTime::now()));
    let body = serde_json::to_vec(&json!({"jsonrpc": "2.0", "method": "asap.send", "id": 1, "params": {"envelope": {
        "asap_version": "0.1", "timestamp": ts, "sender": "urn:asap:agent:client", "recipient": "urn:asap:agent:bank",
        "payload_type": "task.request", "extensions": {"nonce": "pay-once"},
        "payload": {"conversation_id": "c", "skill_id": "echo", "input": {"amount": 1}}}}}))
    .unwrap();
    let first = agent(&config);
    assert!(send(&first, &body).get("result").is_some());
    drop(first);
    let restarted = agent(&config);
    let replay = send(&restarted, &body);
    assert_eq!(replay["error"]["code"], -32602, "{replay}");
    assert_eq!(
        replay["error"]["data"]["message"],
        "Duplicate nonce detected: pay-once"
    );
}

/// Receiver dedup survives a restart on the same SQLite file: a copy of an
/// envelope answered before the restart gets the same answer (same task id)
/// and the skill does not run again.
#[test]
fn a_copy_after_a_restart_gets_the_first_answer() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("state.db");
    let config = StorageConfig::from_values(Some("sqlite"), Some(path.to_str().unwrap())).unwrap();
    let runs = Arc::new(AtomicUsize::new(0));
    let start = |runs: Arc<AtomicUsize>| {
        let mut m = Manifest::new(
            AgentUrn::new("urn:asap:agent:bank").unwrap(),
            "bank",
            "1.0.0",
            "bank",
            "http://127.0.0.1/asap",
        );
        m.capabilities.skills.push(Skill::new("pay", "pay"));
        Agent::builder(m)
            .config(ServerConfig {
                rate_limit: None,
                ..ServerConfig::default()
            })
            .skill("pay", move |_ctx, req| {
                runs.fetch_add(1, Ordering::SeqCst);
                Ok(asap_proto::server::SkillResult::echo_input(req.input))
            })
            .stores(open_stores(&config).unwrap())
            .build()
    };
    let ts = Timestamp::from_unix(UnixTime::from_system_time(SystemTime::now()));
    let body = |rpc_id: u32| {
        serde_json::to_vec(
            &json!({"jsonrpc": "2.0", "method": "asap.send", "id": rpc_id, "params": {"envelope": {
            "id": "01KDXZ0000PAY0000000000001", "asap_version": "0.1", "timestamp": ts,
            "sender": "urn:asap:agent:client", "recipient": "urn:asap:agent:bank",
            "payload_type": "task.request",
            "payload": {"conversation_id": "c", "skill_id": "pay", "input": {"amount": 1}}}}}),
        )
        .unwrap()
    };
    let first = start(Arc::clone(&runs));
    let answer = send(&first, &body(1));
    let task = answer["result"]["envelope"]["payload"]["task_id"].clone();
    assert!(task.is_string(), "{answer}");
    drop(first);
    let restarted = start(Arc::clone(&runs));
    let copy = send(&restarted, &body(2));
    assert_eq!(copy["id"], 2, "the copy's own JSON-RPC id");
    assert_eq!(
        copy["result"]["envelope"]["payload"]["task_id"], task,
        "{copy}"
    );
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "the skill ran again after the restart"
    );
}
