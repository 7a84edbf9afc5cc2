//! Invariants of the server's guards: nonce memory, depth scan, pipeline liveness.
#![allow(clippy::disallowed_methods)] // A base `Instant` for the test; the code under test never reads the clock.

use std::time::{Duration, Instant};

use asap_proto::model::{
    AgentUrn, Envelope, Manifest, Payload, Skill, TaskRequest, Timestamp, UnixTime,
};
use asap_proto::server::{
    check_depth, drive_inline, BodyError, HandlerOutcome, Metrics, NonceMode, NonceStore, Now,
    ReplayWindow, RequestHead, Server, ServerConfig, SkillResult, Step, Transport,
};
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
    fn nonce_memory_is_bounded_and_replays_inside_the_window_are_refused(
        ops in prop::collection::vec((0u8..40, 0u64..3_000), 1..300),
        capacity in 1usize..60,
    ) {
        let window = ReplayWindow { max_age: Duration::from_secs(10), ..ReplayWindow::default() };
        let mut store = NonceStore::new(window, capacity);
        let base = UnixTime::from_secs(1_767_225_600).as_micros();
        let mut now = base;
        for (n, step_ms) in ops {
            now += step_ms as i64 * 1000;
            let mut env = with_nonce(&format!("n{n}"));
            // Sent now: inside the window (an envelope outside it never reaches the store).
            env.timestamp = Timestamp::from_unix(UnixTime::from_micros(now));
            let first = store.check(&env, NonceMode::WhenPresent, UnixTime::from_micros(now));
            prop_assert!(store.len() <= capacity);
            if matches!(first, Ok(Some(_))) {
                // Nothing is ever evicted early: an immediate replay is refused.
                prop_assert!(store.check(&env, NonceMode::WhenPresent, UnixTime::from_micros(now)).is_err());
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
        let mut s = echo_server(ServerConfig { rate_limit: None, nonce: NonceMode::WhenPresent, ..ServerConfig::default() });
        let mut metrics = Metrics::default();
        for b in &bodies {
            let r = post(&mut s, b, &mut metrics);
            prop_assert!(serde_json::from_slice::<Value>(r.body()).is_ok());
        }
        let r = post(&mut s, VALID, &mut metrics);
        let v: Value = serde_json::from_slice(r.body()).unwrap();
        prop_assert!(v.get("result").is_some(), "{}", v);
        prop_assert_eq!(metrics.requests(), bodies.len() as u64 + 1);
    }

    /// Whatever inputs an adapter feeds in whatever order, the exchange stays
    /// valid and a correct driver then reaches `Respond` within a few steps.
    #[test]
    fn an_exchange_driven_out_of_order_still_ends(ops in prop::collection::vec(0u8..6, 0..12), nonce in any::<bool>()) {
        let mut s = echo_server(ServerConfig { rate_limit: None, nonce: if nonce { NonceMode::WhenPresent } else { NonceMode::Off }, ..ServerConfig::default() });
        let hdrs = http::HeaderMap::new();
        let mut ex = s.handle_request(&head(&hdrs), now());
        for op in ops {
            match op {
                0 => ex.handle_body(VALID, now().wall),
                1 => ex.handle_body_error(BodyError::Unreadable("reset".into())),
                2 => s.handle_admission(&mut ex, now()),
                3 => ex.handle_persisted(Ok(()), now().wall),
                4 => ex.handle_health(Default::default(), now().monotonic),
                _ => {
                    if let Step::Respond(_) = ex.poll_step() {
                        ex = s.handle_request(&head(&hdrs), now());
                    }
                }
            }
        }
        let mut steps = 0;
        loop {
            steps += 1;
            prop_assert!(steps < 10, "driver loop did not end");
            match ex.poll_step() {
                Step::ReadBody { .. } => ex.handle_body(VALID, now().wall),
                Step::Admit => s.handle_admission(&mut ex, now()),
                Step::Invoke(inv) => {
                    let o = HandlerOutcome::Skill(SkillResult::echo(&inv));
                    ex.handle_outcome(o, now().wall);
                }
                Step::Respond(reply) => {
                    prop_assert!(serde_json::from_slice::<Value>(reply.response.body()).is_ok());
                    break;
                }
                other => prop_assert!(false, "unexpected step {:?}", other),
            }
        }
    }
}

const VALID: &[u8] = br#"{"jsonrpc":"2.0","method":"asap.send","id":1,"params":{"envelope":{"asap_version":"0.1","timestamp":"2026-01-01T00:00:00Z","sender":"urn:asap:agent:c","recipient":"urn:asap:agent:p","payload_type":"task.request","payload":{"conversation_id":"c","skill_id":"echo","input":{}}}}}"#;

fn echo_server(config: ServerConfig) -> Server {
    let mut m = Manifest::new(
        AgentUrn::new("urn:asap:agent:p").unwrap(),
        "p",
        "1.0.0",
        "p",
        "http://127.0.0.1/asap",
    );
    m.capabilities.skills.push(Skill::new("echo", "echo"));
    let mut s = Server::new(m, config, Instant::now(), 3);
    s.routes_mut().add_skill("echo");
    s
}

fn now() -> Now {
    Now {
        monotonic: Instant::now(),
        wall: UnixTime::from_secs(1_767_225_600),
    }
}

fn head(hdrs: &http::HeaderMap) -> RequestHead<'_> {
    RequestHead {
        method: &http::Method::POST,
        path: "/asap",
        headers: hdrs,
        peer: None,
        transport: Transport::Http,
    }
}

fn post(s: &mut Server, body: &[u8], metrics: &mut Metrics) -> http::Response<Vec<u8>> {
    let hdrs = http::HeaderMap::new();
    let echo = |inv: &asap_proto::server::Invocation| HandlerOutcome::Skill(SkillResult::echo(inv));
    drive_inline(s, &head(&hdrs), body, now(), echo, None, metrics)
}
