//! The whole `POST /asap` core pipeline on arbitrary bodies and encodings:
//! no panic, every answer is a well-formed HTTP response with a JSON body
//! (or an empty 304-free success), and the server keeps serving afterwards.
#![no_main]

use std::sync::Mutex;
use std::time::Instant;

use asap_proto::model::{AgentUrn, Manifest, Skill, UnixTime};
use asap_proto::server::{decode_body, Decision, HandlerOutcome, Server, ServerConfig, SkillResult};
use libfuzzer_sys::fuzz_target;

const NOW_SECS: i64 = 1_767_225_600;
const VALID: &[u8] = br#"{"jsonrpc":"2.0","method":"asap.send","id":1,"params":{"envelope":{"asap_version":"0.1","timestamp":"2026-01-01T00:00:00Z","sender":"urn:asap:agent:c","recipient":"urn:asap:agent:fuzz","payload_type":"task.request","payload":{"conversation_id":"c","skill_id":"echo","input":{}}}}}"#;

fn server() -> Server {
    let mut m = Manifest::new(AgentUrn::new("urn:asap:agent:fuzz").unwrap(), "f", "1.0.0", "f", "http://127.0.0.1/asap");
    m.capabilities.skills.push(Skill::new("echo", "echo"));
    let config = ServerConfig { rate_limit: None, require_nonce: true, max_nonces: 64, max_request_size: 64 * 1024, ..ServerConfig::default() };
    let mut s = Server::new(m, config, Instant::now(), 7);
    s.routes_mut().add_skill("echo");
    s
}

static SERVER: Mutex<Option<Server>> = Mutex::new(None);

fn run(s: &mut Server, encoding: Option<&str>, body: &[u8]) -> http::Response<Vec<u8>> {
    let mut h = http::HeaderMap::new();
    if let Some(e) = encoding {
        h.insert("content-encoding", http::HeaderValue::from_str(e).unwrap());
    }
    let plan = match s.begin_post(&h, "127.0.0.1", Instant::now()) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let body = match decode_body(body, plan) {
        Ok(b) => b,
        Err(e) => return s.body_error(&e),
    };
    let now = UnixTime::from_secs(NOW_SECS);
    match s.handle_body(&body, now) {
        Decision::Respond(r) => r,
        Decision::Invoke(inv) => {
            let out = HandlerOutcome::Skill(SkillResult::echo(&inv));
            s.finish(inv, out, now)
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut guard = SERVER.lock().unwrap();
    let s = guard.get_or_insert_with(server);
    let (encoding, body) = match data.split_first() {
        Some((b, rest)) => ([None, Some("gzip"), Some("br"), Some("identity")][usize::from(*b % 4)], rest),
        None => (None, data),
    };
    let r = run(s, encoding, body);
    assert!(matches!(r.status().as_u16(), 200 | 400 | 413 | 415), "status {}", r.status());
    let v: serde_json::Value = serde_json::from_slice(r.body()).expect("every answer is JSON");
    assert!(v.get("result").is_some() || v.get("error").is_some() || v.get("detail").is_some());
    // Nothing the input did stops the next good request.
    let ok = run(s, None, VALID);
    let v: serde_json::Value = serde_json::from_slice(ok.body()).unwrap();
    assert!(v.get("result").is_some(), "valid request refused after fuzz input: {v}");
});
