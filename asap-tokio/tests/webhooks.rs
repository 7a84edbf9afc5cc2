//! Webhooks end to end on loopback: a skill's progress and its final answer
//! reach a per-request callback, signed and in order; a refused callback URL
//! is -32602 before the skill runs; a host that rebinds to a blocked address
//! gets no connection (the first, approved answer is pinned per attempt).

use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asap_proto::model::{AgentUrn, Manifest, Skill};
use asap_proto::server::{ServerConfig, SkillResult, WebhookConfig};
use asap_proto::store::MemoryWebhookStore;
use asap_proto::task::TaskStatus;
use asap_proto::webhook::{
    DeadReason, OutboxConfig, SigningKeys, UrlPolicy, WebhookEvent, WebhookSecret,
};
use asap_tokio::webhook::receive::{Received, Receiver};
use asap_tokio::webhook::{Resolve, SystemResolver, Webhooks};
use serde_json::{json, Value};

const AGENT: &str = "urn:asap:agent:hooks";

type Log = Arc<Mutex<Vec<Received>>>;

async fn receiver(secret: &[u8]) -> (String, Log) {
    let log: Log = Arc::default();
    let seen = Arc::clone(&log);
    let r = Receiver::new(WebhookSecret::from_bytes(secret), move |x| {
        seen.lock().unwrap().push(x)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(r.serve(listener, std::future::pending()));
    (format!("http://127.0.0.1:{port}/hook"), log)
}

async fn wait_for(log: &Log, n: usize) -> Vec<Received> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = log.lock().unwrap().clone();
        if got.len() >= n || Instant::now() > deadline {
            return got;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn agent(hooks: Webhooks, config: WebhookConfig) -> String {
    let mut m = Manifest::new(
        AgentUrn::new(AGENT).unwrap(),
        "H",
        "1.0.0",
        "h",
        "http://127.0.0.1/asap",
    );
    m.capabilities
        .skills
        .push(Skill::new("work", "reports progress"));
    let runs = Arc::new(AtomicUsize::new(0));
    let agent = asap_tokio::Agent::builder(m)
        .config(ServerConfig {
            rate_limit: None,
            webhooks: config,
            ..ServerConfig::default()
        })
        .skill("work", move |ctx, req| {
            runs.fetch_add(1, Ordering::SeqCst);
            async move {
                ctx.progress(TaskStatus::Working, Some(50.0), Some("half way"))
                    .expect("webhook subscribers take pushes over HTTP");
                Ok(SkillResult::echo_input(req.input))
            }
        })
        .webhooks(hooks)
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(asap_tokio::serve(listener, agent, std::future::pending()));
    format!("http://{addr}/asap")
}

fn task(config: Value) -> Value {
    let now = asap_proto::model::Timestamp::from_unix(
        asap_proto::model::UnixTime::from_system_time(std::time::SystemTime::now()),
    );
    json!({"jsonrpc": "2.0", "method": "asap.send", "id": 1, "params": {"envelope": {
        "asap_version": "0.1", "timestamp": now.to_string(),
        "sender": "urn:asap:agent:client", "recipient": AGENT, "payload_type": "task.request",
        "payload": {"conversation_id": "c", "skill_id": "work", "input": {"n": 1}, "config": config}}}})
}

async fn post(url: &str, b: &Value) -> Value {
    reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(b.to_string())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .map(|b| serde_json::from_slice(&b).unwrap())
        .unwrap()
}

fn hooks(policy: UrlPolicy, resolver: Arc<dyn Resolve>) -> Webhooks {
    Webhooks::start(
        OutboxConfig::default(),
        policy,
        Box::new(MemoryWebhookStore::new()),
        resolver,
        [(
            "callback".to_owned(),
            SigningKeys::new(WebhookSecret::from_bytes(b"cb-secret")),
        )],
    )
    .unwrap()
}

fn callbacks() -> WebhookConfig {
    let mut c = WebhookConfig::default();
    c.policy = UrlPolicy::local_development();
    c.callback_secret_ref = Some("callback".into());
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_and_result_reach_the_callback_signed_and_in_order() {
    let (hook_url, log) = receiver(b"cb-secret").await;
    let url = agent(
        hooks(UrlPolicy::local_development(), Arc::new(SystemResolver)),
        callbacks(),
    )
    .await;
    let answer = post(&url, &task(json!({"webhook": {"url": hook_url}}))).await;
    let task_id = answer["result"]["envelope"]["payload"]["task_id"]
        .as_str()
        .expect("answered")
        .to_owned();
    let got = wait_for(&log, 2).await;
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got[0].payload_type.as_deref(), Some("task.update"));
    assert_eq!(got[0].status.as_deref(), Some("working"));
    assert_eq!(got[1].payload_type.as_deref(), Some("task.response"));
    assert_eq!(got[1].status.as_deref(), Some("completed"));
    for r in &got {
        assert_eq!(r.task_id.as_deref(), Some(task_id.as_str()));
        assert_eq!(r.verified, ["asap", "standard"]);
        assert!(!r.duplicate);
    }
    let response_id = answer["result"]["envelope"]["id"].as_str().unwrap();
    assert_eq!(
        got[1].webhook_id.as_deref(),
        Some(format!("{response_id}.0").as_str())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_callback_is_invalid_params_and_the_skill_does_not_run() {
    let (hook_url, log) = receiver(b"cb-secret").await;
    let url = agent(
        hooks(UrlPolicy::local_development(), Arc::new(SystemResolver)),
        callbacks(),
    )
    .await;
    for bad in [
        "http://10.1.2.3/hook",
        "http://[::ffff:169.254.169.254]/",
        "http://0x7f000001.example@100.64.0.1/",
    ] {
        let answer = post(&url, &task(json!({"webhook": {"url": bad}}))).await;
        assert_eq!(answer["error"]["code"], -32602, "{bad}: {answer}");
        assert!(
            answer["error"]["data"]["error"]
                .as_str()
                .unwrap()
                .contains(bad),
            "{answer}"
        );
    }
    // A good one afterwards still works: nothing was enqueued for the refused ones.
    post(&url, &task(json!({"webhook": {"url": hook_url}}))).await;
    assert_eq!(wait_for(&log, 2).await.len(), 2);
}

/// Answers the first lookup with `first`, every later one with `then`.
struct Rebinding {
    calls: AtomicUsize,
    first: Vec<IpAddr>,
    then: Vec<IpAddr>,
}

impl Resolve for Rebinding {
    fn resolve(
        &self,
        _host: String,
        _port: u16,
    ) -> std::pin::Pin<Box<dyn std::future::Future<Output = std::io::Result<Vec<IpAddr>>> + Send>>
    {
        let n = self.calls.fetch_add(1, Ordering::SeqCst);
        let answer = if n == 0 {
            self.first.clone()
        } else {
            self.then.clone()
        };
        Box::pin(async move { Ok(answer) })
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_rebinds_to_a_blocked_address_gets_no_connection() {
    // The receiver listens on 127.0.0.1 (allowed by the development switch);
    // the name `rebind.test` exists only in this resolver, so a delivery that
    // arrives proves the connection went to the approved address, not to DNS.
    let (hook_url, log) = receiver(b"s").await;
    let port: u16 = hook_url
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/hook")
        .parse()
        .unwrap();
    // 0.0.0.0 is "unspecified" (blocked); on Linux a connection to it would
    // reach the same 127.0.0.1 listener, so its request count tells.
    let resolver = Arc::new(Rebinding {
        calls: AtomicUsize::new(0),
        first: vec!["127.0.0.1".parse().unwrap()],
        then: vec!["0.0.0.0".parse().unwrap(), "127.0.0.1".parse().unwrap()],
    });
    let h = hooks(UrlPolicy::local_development(), resolver.clone());
    h.set_signing_keys("s", SigningKeys::new(WebhookSecret::from_bytes(b"s")));
    let url = format!("http://rebind.test:{port}/hook");
    let events = ["a", "b"]
        .map(|id| WebhookEvent::new(id, "task_1", url.as_str(), b"{}".to_vec()).signed_with("s"));
    h.publish(events.to_vec()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while h.dead_letters().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dead = h.dead_letters();
    assert_eq!(
        dead.len(),
        1,
        "the second event is refused at delivery time"
    );
    assert_eq!(dead[0].event_id, "b");
    assert!(
        matches!(&dead[0].dead_reason, Some(DeadReason::UrlRefused { reason }) if reason.contains("0.0.0.0")),
        "{:?}",
        dead[0].dead_reason
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    let got = log.lock().unwrap().clone();
    assert_eq!(
        got.len(),
        1,
        "only the approved attempt reached a listener: {got:?}"
    );
    assert_eq!(got[0].webhook_id.as_deref(), Some("a"));
    assert_eq!(
        resolver.calls.load(Ordering::SeqCst),
        2,
        "resolved once per attempt"
    );
}
