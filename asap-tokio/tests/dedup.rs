//! Receiver dedup over HTTP: the same envelope sent twice runs its skill once
//! and both copies get the first answer, also when the second arrives while
//! the first is still running (it waits instead of starting the skill again).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use asap_proto::model::{AgentUrn, Manifest, Skill};
use asap_proto::server::{ServerConfig, SkillResult};
use serde_json::{json, Value};

const AGENT: &str = "urn:asap:agent:dedup";

async fn start(runs: Arc<AtomicUsize>, gate: Arc<tokio::sync::Semaphore>) -> String {
    let mut m = Manifest::new(
        AgentUrn::new(AGENT).unwrap(),
        "D",
        "1.0.0",
        "d",
        "http://127.0.0.1/asap",
    );
    m.capabilities
        .skills
        .push(Skill::new("slow", "waits for the test"));
    let agent = asap_tokio::Agent::builder(m)
        .config(ServerConfig {
            rate_limit: None,
            ..ServerConfig::default()
        })
        .skill("slow", move |_ctx, req| {
            let runs = Arc::clone(&runs);
            let gate = Arc::clone(&gate);
            async move {
                runs.fetch_add(1, Ordering::SeqCst);
                let _permit = gate.acquire().await;
                Ok(SkillResult::echo_input(req.input))
            }
        })
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(asap_tokio::serve(listener, agent, std::future::pending()));
    format!("http://{addr}/asap")
}

fn body(rpc_id: &str) -> Value {
    let now = asap_proto::model::Timestamp::from_unix(
        asap_proto::model::UnixTime::from_system_time(std::time::SystemTime::now()),
    );
    json!({"jsonrpc": "2.0", "method": "asap.send", "id": rpc_id, "params": {"envelope": {
        "id": "01KDXZ0000DEDUP000000000001", "asap_version": "0.1", "timestamp": now.to_string(),
        "sender": "urn:asap:agent:client", "recipient": AGENT, "payload_type": "task.request",
        "payload": {"conversation_id": "c", "skill_id": "slow", "input": {"n": 1}}}}})
}

async fn post(http: &reqwest::Client, url: &str, b: &Value) -> Value {
    let r = http
        .post(url)
        .header("content-type", "application/json")
        .body(b.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    serde_json::from_slice(&r.bytes().await.unwrap()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_duplicate_envelope_runs_once_and_gets_the_first_answer() {
    let runs = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let url = start(Arc::clone(&runs), Arc::clone(&gate)).await;
    let http = reqwest::Client::new();

    let first = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move { post(&http, &url, &body("a")).await }
    });
    while runs.load(Ordering::SeqCst) == 0 {
        tokio::task::yield_now().await;
    }
    // The first copy is running: the second must wait for it, not run the skill.
    let second = tokio::spawn({
        let (http, url) = (http.clone(), url.clone());
        async move { post(&http, &url, &body("b")).await }
    });
    tokio::time::sleep(std::time::Duration::from_millis(100)).await; // let it arrive and park
    gate.add_permits(10);
    let (first, second) = (first.await.unwrap(), second.await.unwrap());
    assert_eq!(runs.load(Ordering::SeqCst), 1, "the skill ran twice");
    assert_eq!(first["id"], "a");
    assert_eq!(
        second["id"], "b",
        "the copy's answer carries its own JSON-RPC id"
    );
    assert_eq!(
        first["result"], second["result"],
        "the copy gets the first answer"
    );
    let task = first["result"]["envelope"]["payload"]["task_id"]
        .as_str()
        .unwrap()
        .to_owned();

    // After it answered, a later copy is answered at once from the window.
    let third = post(&http, &url, &body("c")).await;
    assert_eq!(
        third["result"]["envelope"]["payload"]["task_id"],
        task.as_str()
    );
    assert_eq!(runs.load(Ordering::SeqCst), 1);
}
