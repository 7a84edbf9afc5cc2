//! `kill -9` of `asap serve` with webhook deliveries pending, then a restart
//! on the same database: every event is delivered at least once, none is
//! lost, and the receiver deduplicates retries by `webhook-id`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asap_proto::webhook::WebhookSecret;
use asap_tokio::webhook::receive::{Received, Receiver};
use serde_json::json;

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `asap serve` and returns it with its `/asap` URL.
fn serve(db: &std::path::Path, hook: &str) -> (Agent, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_asap"))
        .args(["serve", "--bind", "127.0.0.1:0", "--rate-limit", "none"])
        .arg("--db")
        .arg(db)
        .args([
            "--webhook",
            hook,
            "--webhook-secret",
            "s3cret",
            "--webhook-allow-loopback",
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("asap binary");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().unwrap().unwrap();
    let base = first
        .split("listening on ")
        .nth(1)
        .expect("the listening line")
        .trim()
        .to_owned();
    // Keep reading stdout so the agent never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Agent(child), format!("{base}/asap"))
}

async fn send(url: &str, n: usize) -> String {
    let now = asap_proto::model::Timestamp::from_unix(
        asap_proto::model::UnixTime::from_system_time(std::time::SystemTime::now()),
    );
    let body = json!({"jsonrpc": "2.0", "method": "asap.send", "id": n, "params": {"envelope": {
        "asap_version": "0.1", "timestamp": now.to_string(),
        "sender": "urn:asap:agent:client", "recipient": "urn:asap:agent:asap-rs-echo",
        "payload_type": "task.request",
        "payload": {"conversation_id": "c", "skill_id": "echo", "input": {"n": n}}}}});
    let bytes = reqwest::Client::new()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
    v["result"]["envelope"]["payload"]["task_id"]
        .as_str()
        .unwrap_or_else(|| panic!("answered: {v}"))
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_with_pending_deliveries_then_restart_loses_none() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    // The receiver's port, not listening yet: every first attempt fails to connect.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hook = format!("http://127.0.0.1:{port}/hook");

    let (mut first, url) = serve(&db, &hook);
    let mut tasks = BTreeSet::new();
    for n in 0..20 {
        tasks.insert(send(&url, n).await);
    }
    // Answered means persisted: the outbox rows are on disk. Crash now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.0.kill().unwrap(); // SIGKILL
    first.0.wait().unwrap();
    drop(first);

    let log: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen = Arc::clone(&log);
    let receiver = Receiver::new(WebhookSecret::from_bytes(b"s3cret"), move |r| {
        seen.lock().unwrap().push(r)
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(receiver.serve(listener, std::future::pending()));

    let (_second, _url) = serve(&db, &hook);
    let deadline = Instant::now() + Duration::from_secs(40);
    let by_task = loop {
        let got = log.lock().unwrap().clone();
        let mut by_task: BTreeMap<String, usize> = BTreeMap::new();
        for r in got.iter().filter(|r| !r.duplicate) {
            assert_eq!(r.verified, ["asap", "standard"]);
            assert_eq!(r.payload_type.as_deref(), Some("task.response"));
            *by_task.entry(r.task_id.clone().unwrap()).or_default() += 1;
        }
        if by_task.len() == tasks.len() || Instant::now() > deadline {
            break by_task;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let delivered: BTreeSet<String> = by_task.keys().cloned().collect();
    assert_eq!(
        delivered, tasks,
        "every task's response arrived after the restart"
    );
    assert!(
        by_task.values().all(|n| *n == 1),
        "new ids are unique per event: {by_task:?}"
    );
    // Dedup is by webhook-id: a retry of an arrived event is a duplicate, never a new event.
    let ids: Vec<String> = log
        .lock()
        .unwrap()
        .iter()
        .filter(|r| !r.duplicate)
        .filter_map(|r| r.webhook_id.clone())
        .collect();
    assert_eq!(ids.len(), BTreeSet::from_iter(ids.iter()).len());
}
