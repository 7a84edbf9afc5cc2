//! Two `asap serve` replicas on one real PostgreSQL database behave as one
//! agent: a task run on one is queried on the other, the same envelope sent
//! to both at once runs once, `kill -9` of one under load loses nothing it
//! answered, and a killed replica's pending webhook events are delivered by
//! the other. Needs `ASAP_TEST_POSTGRES_URL` (`.ci/postgres.sh` starts a
//! throwaway cluster on loopback; CI sets `ASAP_REQUIRE_POSTGRES=1`).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asap_proto::webhook::WebhookSecret;
use asap_tokio::webhook::receive::{Received, Receiver};
use serde_json::{json, Value};

/// The admin URL, or `None` with one line saying how to run these tests.
fn admin_url() -> Option<String> {
    match std::env::var("ASAP_TEST_POSTGRES_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("ASAP_REQUIRE_POSTGRES").as_deref() == Ok("1") => {
            panic!("ASAP_REQUIRE_POSTGRES=1 but ASAP_TEST_POSTGRES_URL is unset (.ci/postgres.sh start)")
        }
        _ => {
            eprintln!("skipping: set ASAP_TEST_POSTGRES_URL (CI does: .ci/postgres.sh)");
            None
        }
    }
}

/// A new empty database on the test server; its URL.
async fn fresh_database(admin: &str, tag: &str) -> String {
    let (client, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls)
        .await
        .expect("the test PostgreSQL server");
    tokio::spawn(conn);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    let name = format!("asap_r_{tag}_{}_{nanos}", std::process::id());
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .unwrap();
    // Same server and credentials, another database.
    let (head, tail) = admin.split_at(admin.find("://").unwrap() + 3);
    let (authority, rest) = tail.split_once('/').unwrap_or((tail, ""));
    let query = rest
        .split_once('?')
        .map(|(_, q)| format!("?{q}"))
        .unwrap_or_default();
    format!("{head}{authority}/{name}{query}")
}

struct Replica {
    child: Child,
    url: String,
}

impl Drop for Replica {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Replica {
    /// `kill -9`: no shutdown, no flush.
    fn kill_9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

/// Starts `asap serve --db <postgres url>` with `extra` arguments.
fn serve(db: &str, extra: &[&str]) -> Replica {
    let mut child = Command::new(env!("CARGO_BIN_EXE_asap"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--rate-limit",
            "none",
            "--db",
            db,
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("asap binary");
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let first = lines.next().expect("a listening line").unwrap();
    let base = first
        .split("listening on ")
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected first line: {first}"))
        .trim()
        .to_owned();
    std::thread::spawn(move || for _ in lines {});
    Replica {
        child,
        url: format!("{base}/asap"),
    }
}

fn envelope(id: Option<&str>, payload_type: &str, payload: Value) -> Value {
    let now = asap_proto::model::Timestamp::from_unix(
        asap_proto::model::UnixTime::from_system_time(std::time::SystemTime::now()),
    );
    let mut env = json!({
        "asap_version": "0.1", "timestamp": now.to_string(),
        "sender": "urn:asap:agent:client", "recipient": "urn:asap:agent:asap-rs-echo",
        "payload_type": payload_type, "payload": payload,
    });
    if let Some(id) = id {
        env["id"] = json!(id);
    }
    env
}

fn task(n: usize) -> Value {
    json!({"conversation_id": "c", "skill_id": "echo", "input": {"n": n}})
}

async fn post(
    client: &reqwest::Client,
    url: &str,
    env: &Value,
    rpc_id: &str,
) -> Result<Value, String> {
    let body =
        json!({"jsonrpc": "2.0", "method": "asap.send", "id": rpc_id, "params": {"envelope": env}});
    let r = client
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let bytes = r.bytes().await.map_err(|e| e.to_string())?;
    serde_json::from_slice(&bytes).map_err(|e| e.to_string())
}

fn task_id(v: &Value) -> Option<String> {
    v["result"]["envelope"]["payload"]["task_id"]
        .as_str()
        .map(str::to_owned)
}

async fn query_state(client: &reqwest::Client, url: &str, task: &str) -> Value {
    let env = envelope(None, "state.query", json!({"task_id": task}));
    post(client, url, &env, "q").await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_run_on_one_replica_is_queried_on_the_other() {
    let Some(admin) = admin_url() else { return };
    let db = fresh_database(&admin, "query").await;
    let (a, b) = (serve(&db, &[]), serve(&db, &[]));
    let client = reqwest::Client::new();
    let answer = post(
        &client,
        &a.url,
        &envelope(None, "task.request", task(1)),
        "t",
    )
    .await
    .unwrap();
    let id = task_id(&answer).unwrap_or_else(|| panic!("{answer}"));
    let state = query_state(&client, &b.url, &id).await;
    assert_eq!(
        state["result"]["envelope"]["payload"]["result"]["snapshot"]["data"]["task"]["status"],
        "completed",
        "{state}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_envelope_sent_to_both_at_once_runs_once() {
    let Some(admin) = admin_url() else { return };
    let db = fresh_database(&admin, "race").await;
    let (a, b) = (serve(&db, &[]), serve(&db, &[]));
    let client = reqwest::Client::new();
    for n in 0..25 {
        let id = format!("01KDXZ00REPL1CARACE{n:07}");
        let env = envelope(Some(&id), "task.request", task(n));
        let (ra, rb) = tokio::join!(
            post(&client, &a.url, &env, "to-a"),
            post(&client, &b.url, &env, "to-b")
        );
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        let (ta, tb) = (task_id(&ra), task_id(&rb));
        assert!(ta.is_some(), "{ra}");
        // One run: the copy gets the first answer (same task), re-addressed.
        assert_eq!(ta, tb, "envelope {id} ran twice: {ra} / {rb}");
        assert_eq!(
            (ra["id"].as_str(), rb["id"].as_str()),
            (Some("to-a"), Some("to-b"))
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_of_one_replica_under_load_loses_no_answered_task() {
    let Some(admin) = admin_url() else { return };
    let db = fresh_database(&admin, "kill").await;
    let (mut a, b) = (serve(&db, &[]), serve(&db, &[]));
    let client = reqwest::Client::new();
    let answered: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut load = Vec::new();
    for worker in 0..8 {
        let (client, url, answered) = (client.clone(), a.url.clone(), Arc::clone(&answered));
        load.push(tokio::spawn(async move {
            for n in 0..400 {
                let env = envelope(None, "task.request", task(worker * 1000 + n));
                match post(&client, &url, &env, "l").await {
                    Ok(v) => match task_id(&v) {
                        Some(id) => answered.lock().unwrap().push(id),
                        None => panic!("refused under load: {v}"),
                    },
                    Err(_) => return, // the replica is gone
                }
            }
        }));
    }
    // Kill it mid-load: a fixed number of answers in, not a fixed time.
    let deadline = Instant::now() + Duration::from_secs(30);
    while answered.lock().unwrap().len() < 200 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.kill_9();
    for l in load {
        l.await.unwrap();
    }
    let answered = answered.lock().unwrap().clone();
    assert!(answered.len() >= 200, "only {} answered", answered.len());
    for id in &answered {
        let state = query_state(&client, &b.url, id).await;
        assert_eq!(
            state["result"]["envelope"]["payload"]["result"]["snapshot"]["data"]["task"]["status"],
            "completed",
            "answered task {id} is not on the other replica: {state}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_replicas_pending_webhook_events_are_delivered_by_the_other() {
    let Some(admin) = admin_url() else { return };
    let db = fresh_database(&admin, "hooks").await;
    // The receiver's port, not listening yet: every attempt of A fails.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let hook = format!("http://127.0.0.1:{port}/hook");
    let hooked = [
        "--webhook",
        hook.as_str(),
        "--webhook-secret",
        "s3cret",
        "--webhook-allow-loopback",
    ];
    let mut a = serve(&db, &hooked);
    let client = reqwest::Client::new();
    let mut tasks = BTreeSet::new();
    for n in 0..10 {
        let v = post(
            &client,
            &a.url,
            &envelope(None, "task.request", task(n)),
            "h",
        )
        .await
        .unwrap();
        tasks.insert(task_id(&v).unwrap_or_else(|| panic!("{v}")));
    }
    // Answered means the outbox rows are committed. A dies with them pending.
    a.kill_9();
    let log: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen = Arc::clone(&log);
    let receiver = Receiver::new(WebhookSecret::from_bytes(b"s3cret"), move |r| {
        seen.lock().unwrap().push(r)
    });
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", port))
        .await
        .unwrap();
    tokio::spawn(receiver.serve(listener, std::future::pending()));
    // B starts afterwards and takes them over once A's leases (30 s) end.
    let _b = serve(&db, &hooked);
    let deadline = Instant::now() + Duration::from_secs(90);
    let by_task = loop {
        let mut by_task: BTreeMap<String, usize> = BTreeMap::new();
        for r in log.lock().unwrap().iter().filter(|r| !r.duplicate) {
            assert_eq!(r.payload_type.as_deref(), Some("task.response"));
            *by_task.entry(r.task_id.clone().unwrap()).or_default() += 1;
        }
        if by_task.len() == tasks.len() || Instant::now() > deadline {
            break by_task;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let delivered: BTreeSet<String> = by_task.keys().cloned().collect();
    assert_eq!(
        delivered, tasks,
        "every pending event of the killed replica arrived"
    );
    assert!(by_task.values().all(|n| *n == 1), "{by_task:?}");
}

#[test]
fn an_unreachable_database_is_a_startup_error_naming_the_host_and_the_cause() {
    // A port nothing listens on (bound, then released).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("postgres://asap:hunter2@127.0.0.1:{port}/asap");
    let out = Command::new(env!("CARGO_BIN_EXE_asap"))
        .args(["serve", "--bind", "127.0.0.1:0", "--db", &url])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        err.trim(),
        format!("asap: cannot connect to PostgreSQL at 127.0.0.1:{port} (postgres://asap:***@127.0.0.1:{port}/asap): connection refused; is the server running and is the URL right?")
    );
    let out = Command::new(env!("CARGO_BIN_EXE_asap"))
        .args(["serve", "--bind", "127.0.0.1:0"])
        .env("ASAP_STORAGE_BACKEND", "postgres")
        .env_remove("ASAP_STORAGE_URL")
        .env_remove("ASAP_STORAGE_PATH")
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "asap: ASAP_STORAGE_BACKEND=postgres needs the database URL: set ASAP_STORAGE_URL=postgres://USER@HOST:5432/DB (or give --db postgres://…)"
    );
}

/// A replica whose first run of each envelope takes `slow` (the client gives up before).
async fn slow_replica(db: &str, slow: Duration) -> String {
    use asap_proto::model::{AgentUrn, Manifest, Skill, TaskRequest};
    use asap_proto::server::{ServerConfig, SharedReplay, SkillResult};
    let storage = asap_proto::store::StorageConfig::postgres(db).unwrap();
    let (recorder, shared) = asap_tokio::store::open_task_state(
        &storage,
        &asap_tokio::store::TaskStateOptions::default(),
    )
    .unwrap();
    assert!(shared);
    let mut m = Manifest::new(
        AgentUrn::new("urn:asap:agent:asap-rs-echo").unwrap(),
        "slow",
        "1.0.0",
        "slow",
        "http://127.0.0.1/asap",
    );
    m.capabilities.skills.push(Skill::new("echo", "echo"));
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let agent = asap_tokio::Agent::builder(m)
        .config(ServerConfig {
            rate_limit: None,
            shared_replay: Some(SharedReplay::default()),
            ..ServerConfig::default()
        })
        .stores(recorder)
        .skill("echo", move |_ctx, req: TaskRequest| {
            let first = first.swap(false, std::sync::atomic::Ordering::SeqCst);
            async move {
                if first {
                    tokio::time::sleep(slow).await;
                }
                Ok(SkillResult::echo_input(req.input))
            }
        })
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(asap_tokio::serve(listener, agent, std::future::pending()));
    format!("http://{addr}/asap")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_mid_run_releases_the_claim_for_its_retry() {
    let Some(admin) = admin_url() else { return };
    let db = fresh_database(&admin, "gaveup").await;
    let url = slow_replica(&db, Duration::from_secs(30)).await;
    let env = envelope(
        Some("01KDXZ00REPL1CAGAVEUP0000001"),
        "task.request",
        task(1),
    );
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    assert!(
        post(&impatient, &url, &env, "first").await.is_err(),
        "the first run is slow"
    );
    // The dropped exchange released its claim: the retry runs now (the
    // skill is fast the second time) instead of waiting out the 300 s lease.
    let client = reqwest::Client::new();
    let mut answer = Value::Null;
    for _ in 0..50 {
        answer = post(&client, &url, &env, "retry").await.unwrap();
        if answer.get("result").is_some() {
            break;
        }
        // The release is written just after the drop: a retry racing it gets 503.
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(task_id(&answer).is_some(), "{answer}");
}
