//! Invariants of the server's guards: nonce memory, depth scan, pipeline liveness.
#![allow(clippy::disallowed_methods)] // A base `Instant` for the test; the code under test never reads the clock.

use std::time::{Duration, Instant};

use asap_proto::model::{
    AgentUrn, Envelope, Manifest, Payload, Skill, TaskRequest, Timestamp, UnixTime,
};
use asap_proto::server::{check_depth, Decision, NonceStore, Server, ServerConfig};
use proptest::prelude::*;
use serde_json::{json, Value};

fn with_nonce(n: &str) -> Envelope {
    let mut e = Envelope::new(
        "01KDXZ0000ENVREQ0000000001".into(),
        Timestamp::from_unix(UnixTime::from_secs(1_767_225_600)),
        AgentUrn::new("urn:asap:agent:a").unwrap(),
        AgentUrn::new("urn:asap:agent:b").unwrap(),
        Payload::TaskRequest(TaskRequest::new("c", "echo", serde_json::Map::new())),
    );
    e.extensions = Some(json!({"nonce": n}).as_object().unwrap().clone());
    e
}

fn depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(depth).max().unwrap_or(0),
        _ => 0,
    }
}

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        "[\\[\\]{}\"\\\\a-z]{0,6}".prop_map(Value::from)
    ];
    leaf.prop_recursive(12, 64, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z\\[{]{1,3}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

proptest! {
    #[test]
    fn nonce_memory_is_bounded_and_replays_within_ttl_are_refused(
        ops in prop::collection::vec((0u8..40, 0u64..3_000), 1..300),
        capacity in 1usize..60,
    ) {
        let ttl = Duration::from_secs(10);
        let mut store = NonceStore::new(ttl, capacity);
        let mut now = 0i64;
        for (n, step_ms) in ops {
            now += step_ms as i64 * 1000;
            let env = with_nonce(&format!("n{n}"));
            let first = store.check(&env, UnixTime::from_micros(now)).is_ok();
            prop_assert!(store.len() <= capacity);
            if first && capacity >= 40 {
                // Nothing can have been evicted early: an immediate replay is refused.
                prop_assert!(store.check(&env, UnixTime::from_micros(now)).is_err());
            }
        }
    }

    #[test]
    fn depth_scan_agrees_with_the_document(v in json_value(), max in 0usize..14) {
        let text = serde_json::to_vec(&v).unwrap();
        prop_assert_eq!(check_depth(&text, max).is_ok(), depth(&v) <= max);
    }

    #[test]
    fn arbitrary_bodies_never_stop_the_server(bodies in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 1..20)) {
        let mut m = Manifest::new(AgentUrn::new("urn:asap:agent:p").unwrap(), "p", "1.0.0", "p", "http://127.0.0.1/asap");
        m.capabilities.skills.push(Skill::new("echo", "echo"));
        let mut s = Server::new(m, ServerConfig { rate_limit: None, ..ServerConfig::default() }, Instant::now(), 3);
        s.routes_mut().add_skill("echo");
        let now = UnixTime::from_secs(1_767_225_600);
        for b in &bodies {
            if let Decision::Respond(r) = s.handle_body(b, now) {
                prop_assert!(serde_json::from_slice::<Value>(r.body()).is_ok());
            }
        }
        let valid = br#"{"jsonrpc":"2.0","method":"asap.send","id":1,"params":{"envelope":{"asap_version":"0.1","timestamp":"2026-01-01T00:00:00Z","sender":"urn:asap:agent:c","recipient":"urn:asap:agent:p","payload_type":"task.request","payload":{"conversation_id":"c","skill_id":"echo","input":{}}}}}"#;
        prop_assert!(matches!(s.handle_body(valid, now), Decision::Invoke(_)));
    }
}
