//! Webhooks on the blocking server: progress pushed by a skill and its final
//! answer reach the per-request callback signed and in order; a host that
//! rebinds to a blocked address gets no connection.

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asap_blocking::server::{serve, Agent};
use asap_blocking::webhook::{Resolve, SystemResolver, Webhooks};
use asap_proto::model::{AgentUrn, Manifest, Skill, UnixTime};
use asap_proto::server::{ServerConfig, SkillResult, WebhookConfig};
use asap_proto::store::MemoryWebhookStore;
use asap_proto::task::TaskStatus;
use asap_proto::webhook::{
    DeadReason, OutboxConfig, SigningKeys, StandardVerifier, UrlPolicy, WebhookEvent, WebhookSecret,
};
use serde_json::{json, Value};

/// A verifying receiver on tiny_http: (webhook-id, body) of each verified request.
type Log = Arc<Mutex<Vec<(String, Value)>>>;

fn receiver(secret: &'static [u8]) -> (u16, Log) {
    let server = tiny_http::Server::http("127.0.0.1:0").unwrap();
    let port = server.server_addr().to_ip().unwrap().port();
    let log: Log = Arc::default();
    let seen = Arc::clone(&log);
    std::thread::spawn(move || {
        let verifier = StandardVerifier::new(vec![WebhookSecret::from_bytes(secret)]);
        for mut req in server.incoming_requests() {
            let mut body = Vec::new();
            let _ = std::io::Read::read_to_end(req.as_reader(), &mut body);
            let mut headers = http::HeaderMap::new();
            for h in req.headers() {
                if let (Ok(n), Ok(v)) = (
                    http::HeaderName::from_bytes(h.field.as_str().as_str().as_bytes()),
                    http::HeaderValue::from_str(h.value.as_str()),
                ) {
                    headers.insert(n, v);
                }
            }
            let now = UnixTime::from_system_time(std::time::SystemTime::now());
            let ok = verifier.verify_headers(&headers, &body, now).is_ok()
                && WebhookSecret::from_bytes(secret)
                    .verify_asap_signature(&body, headers["x-asap-signature"].to_str().unwrap())
                    .is_ok();
            if ok {
                let id = headers["webhook-id"].to_str().unwrap().to_owned();
                seen.lock()
                    .unwrap()
                    .push((id, serde_json::from_slice(&body).unwrap_or_default()));
            }
            let _ = req.respond(tiny_http::Response::empty(if ok { 200 } else { 401 }));
        }
    });
    (port, log)
}

fn wait_until(mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn hooks(resolver: Arc<dyn Resolve>, secret: &[u8]) -> Webhooks {
    Webhooks::start(
        OutboxConfig::default(),
        UrlPolicy::local_development(),
        Box::new(MemoryWebhookStore::new()),
        resolver,
        [(
            "callback".to_owned(),
            SigningKeys::new(WebhookSecret::from_bytes(secret)),
        )],
        2,
    )
    .unwrap()
}

#[test]
fn progress_and_result_reach_the_callback_signed_and_in_order() {
    let (port, log) = receiver(b"cb");
    let mut m = Manifest::new(
        AgentUrn::new("urn:asap:agent:bh").unwrap(),
        "B",
        "1.0.0",
        "b",
        "http://127.0.0.1/asap",
    );
    m.capabilities
        .skills
        .push(Skill::new("work", "reports progress"));
    let mut webhooks = WebhookConfig::default();
    webhooks.policy = UrlPolicy::local_development();
    webhooks.callback_secret_ref = Some("callback".into());
    let agent = Agent::builder(m)
        .config(ServerConfig {
            rate_limit: None,
            webhooks,
            ..ServerConfig::default()
        })
        .skill("work", |ctx, req| {
            ctx.progress(TaskStatus::Working, Some(10.0), Some("started"))
                .expect("pushes reach the subscribers");
            Ok(SkillResult::echo_input(req.input))
        })
        .webhooks(hooks(Arc::new(SystemResolver), b"cb"))
        .build();
    let handle = serve("127.0.0.1:0", agent, 2).unwrap();
    let now = asap_proto::model::Timestamp::from_unix(UnixTime::from_system_time(
        std::time::SystemTime::now(),
    ));
    let body = json!({"jsonrpc": "2.0", "method": "asap.send", "id": 1, "params": {"envelope": {
        "asap_version": "0.1", "timestamp": now.to_string(),
        "sender": "urn:asap:agent:c", "recipient": "urn:asap:agent:bh", "payload_type": "task.request",
        "payload": {"conversation_id": "c", "skill_id": "work", "input": {},
                    "config": {"webhook": {"url": format!("http://127.0.0.1:{port}/in")}}}}}});
    let text = ureq::post(format!("http://{}/asap", handle.local_addr()))
        .header("content-type", "application/json")
        .send(body.to_string())
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    let answer: Value = serde_json::from_str(&text).unwrap();
    let task_id = answer["result"]["envelope"]["payload"]["task_id"].clone();
    wait_until(|| log.lock().unwrap().len() >= 2);
    let got = log.lock().unwrap().clone();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].1["payload_type"], "task.update");
    assert_eq!(got[1].1["payload_type"], "task.response");
    assert_eq!(got[1].1, answer["result"]["envelope"]);
    assert!(got.iter().all(|(_, b)| b["payload"]["task_id"] == task_id));
    handle.shutdown();
}

struct Rebinding(AtomicUsize);

impl Resolve for Rebinding {
    fn resolve(&self, _host: &str, _port: u16) -> std::io::Result<Vec<IpAddr>> {
        let first = self.0.fetch_add(1, Ordering::SeqCst) == 0;
        let ip = if first { "127.0.0.1" } else { "0.0.0.0" };
        Ok(vec![ip.parse().unwrap()])
    }
}

#[test]
fn a_host_that_rebinds_to_a_blocked_address_gets_no_connection() {
    let (port, log) = receiver(b"cb");
    let resolver = Arc::new(Rebinding(AtomicUsize::new(0)));
    let h = hooks(resolver.clone(), b"cb");
    // `rebind.test` exists only in this resolver: an arrival proves the pinning.
    let url = format!("http://rebind.test:{port}/in");
    let events = ["a", "b"].map(|id| {
        WebhookEvent::new(id, "task_1", url.as_str(), b"{}".to_vec()).signed_with("callback")
    });
    h.publish(events.to_vec()).unwrap();
    wait_until(|| !h.dead_letters().is_empty());
    let dead = h.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(dead[0].event_id, "b");
    assert!(matches!(
        dead[0].dead_reason,
        Some(DeadReason::UrlRefused { .. })
    ));
    std::thread::sleep(Duration::from_millis(200));
    let got = log.lock().unwrap().clone();
    assert_eq!(got.len(), 1, "only the approved attempt reached a listener");
    assert_eq!(got[0].0, "a");
    assert_eq!(resolver.0.load(Ordering::SeqCst), 2);
}
