//! Hostile replay tests against the real `asap serve` binary on loopback
//! (127.0.0.1, port 0), each bounded in time: a required nonce that is
//! missing, a nonce store filled on purpose, a volume of fresh nonces, a
//! replay after a crash and restart, and storage settings that contradict.
//!
//! `ASAP_REPLAY_VOLUME=N` sets how many fresh nonces the volume test sends
//! (default 3,000; its figure in docs/reliability.md used 220,000).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant, SystemTime};

use asap_proto::model::{Timestamp, UnixTime};
use serde_json::{json, Value};

const AGENT: &str = "urn:asap:agent:asap-rs-echo";

/// A running `asap serve`; killed (SIGKILL: a crash, not a clean stop) when dropped.
struct Served {
    child: Child,
    base: String,
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn command(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_asap"));
    c.arg("serve")
        .args(["--bind", "127.0.0.1:0", "--rate-limit", "none"])
        .args(args)
        .current_dir(dir)
        .env("ASAP_LOG", "off")
        .env_remove("ASAP_STORAGE_BACKEND")
        .env_remove("ASAP_STORAGE_PATH")
        .envs(env.iter().copied())
        .stdin(Stdio::null());
    c
}

/// Starts `asap serve` and waits (at most 30 s) for its banner's address.
fn serve(dir: &Path, args: &[&str]) -> Served {
    let mut child = command(dir, args, &[])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("asap binary runs");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        // Keeps reading after the banner: a closed pipe would fail the agent's next print.
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(line) = rx.recv_timeout(left) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("asap serve {args:?} printed no address within 30 s");
        };
        if let Some(rest) = line.split("listening on ").nth(1) {
            let base = rest.split_whitespace().next().unwrap().to_owned();
            return Served { child, base };
        }
    }
}

fn now_stamp() -> Value {
    let now = UnixTime::from_system_time(SystemTime::now());
    serde_json::to_value(Timestamp::from_unix(now)).unwrap()
}

fn body(id: u64, nonce: Option<&str>, timestamp: &Value) -> Vec<u8> {
    let mut envelope = json!({
        "asap_version": "0.1",
        "timestamp": timestamp,
        "sender": "urn:asap:agent:attacker",
        "recipient": AGENT,
        "payload_type": "task.request",
        "payload": {"conversation_id": "c", "skill_id": "echo", "input": {"transfer": 100}},
    });
    if let Some(n) = nonce {
        envelope["extensions"] = json!({ "nonce": n });
    }
    serde_json::to_vec(&json!({"jsonrpc": "2.0", "method": "asap.send", "id": id, "params": {"envelope": envelope}})).unwrap()
}

struct Answer {
    status: u16,
    retry_after: Option<String>,
    json: Value,
}

impl Answer {
    fn accepted(&self) -> bool {
        self.status == 200 && self.json.get("result").is_some()
    }
    fn nonce_refused(&self) -> bool {
        self.json["error"]["code"] == -32602
            && self.json["error"]["data"]["code"] == "asap:protocol/invalid_nonce"
    }
}

async fn post(client: &reqwest::Client, base: &str, body: Vec<u8>) -> Answer {
    let r = client
        .post(format!("{base}/asap"))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the agent answers");
    let status = r.status().as_u16();
    let retry_after = r
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap().to_owned());
    let bytes = r.bytes().await.unwrap_or_default();
    let json = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Answer {
        status,
        retry_after,
        json,
    }
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_required_nonce_that_is_missing_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let c = client();
    for (flag, db) in [
        (&["--require-nonce"][..], "a.db"),
        (&["--nonce", "required"][..], "b.db"),
    ] {
        let args: Vec<&str> = flag.iter().copied().chain(["--db", db]).collect();
        let agent = serve(dir.path(), &args);
        let ts = now_stamp();
        let missing = post(&c, &agent.base, body(1, None, &ts)).await;
        assert!(missing.nonce_refused(), "{flag:?}: {}", missing.json);
        assert_eq!(
            missing.json["error"]["data"]["message"],
            "Nonce is required: put a unique non-empty string in extensions.nonce"
        );
        assert!(post(&c, &agent.base, body(2, Some("n-1"), &ts))
            .await
            .accepted());
    }
    // The reference's mode: checked when present, not required.
    let agent = serve(dir.path(), &["--nonce", "when-present", "--db", "other.db"]);
    let ts = now_stamp();
    assert!(post(&c, &agent.base, body(1, None, &ts)).await.accepted());
    assert!(post(&c, &agent.base, body(2, Some("n-1"), &ts))
        .await
        .accepted());
    assert!(post(&c, &agent.base, body(3, Some("n-1"), &ts))
        .await
        .nonce_refused());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_nonce_store_refuses_new_envelopes_and_never_forgets_the_old() {
    let dir = tempfile::tempdir().unwrap();
    let agent = serve(
        dir.path(),
        &[
            "--nonce",
            "required",
            "--max-nonces",
            "50",
            "--db",
            "state.db",
        ],
    );
    let c = client();
    let ts = now_stamp();
    let original = body(0, Some("original"), &ts);
    assert!(post(&c, &agent.base, original.clone()).await.accepted());
    for i in 1..50 {
        let a = post(&c, &agent.base, body(i, Some(&format!("fresh-{i}")), &ts)).await;
        assert!(a.accepted(), "fresh nonce {i}: {}", a.json);
    }
    // Full: each new envelope is refused with a 503 to retry later, 500 times over.
    for i in 50..550 {
        let a = post(&c, &agent.base, body(i, Some(&format!("fresh-{i}")), &ts)).await;
        assert_eq!(a.status, 503, "fresh nonce {i}: {}", a.json);
        assert_eq!(a.json["code"], "asap:transport/nonce_store_full");
        let wait: u64 = a.retry_after.as_deref().unwrap().parse().unwrap();
        assert!((1..=301).contains(&wait), "Retry-After {wait}");
    }
    // The flood did not push the original out.
    let replay = post(&c, &agent.base, original).await;
    assert!(replay.nonce_refused(), "replay accepted: {}", replay.json);
    assert_eq!(
        replay.json["error"]["data"]["message"],
        "Duplicate nonce detected: original"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_of_fresh_nonces_does_not_flush_the_default_store() {
    let volume: u64 = std::env::var("ASAP_REPLAY_VOLUME")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3_000);
    let dir = tempfile::tempdir().unwrap();
    let agent = serve(
        dir.path(),
        &[
            "--nonce", "required", "--db", "state.db", "--sync", "normal",
        ],
    );
    let c = client();
    let ts = now_stamp();
    let original = body(0, Some("original"), &ts);
    assert!(post(&c, &agent.base, original.clone()).await.accepted());
    let started = Instant::now();
    // Bounded in time: at most 60 s (the window is 300 s, so every envelope stays inside it).
    let deadline = started + Duration::from_secs(60);
    let workers = 8;
    let mut tasks = Vec::new();
    for w in 0..workers {
        let (c, base, ts) = (c.clone(), agent.base.clone(), ts.clone());
        tasks.push(tokio::spawn(async move {
            let mut sent = 0u64;
            let mut i = w;
            while i < volume && Instant::now() < deadline {
                let a = post(&c, &base, body(i + 1, Some(&format!("fresh-{i}")), &ts)).await;
                assert!(a.accepted(), "fresh nonce {i}: {}", a.json);
                sent += 1;
                i += workers;
            }
            sent
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await.unwrap();
    }
    let elapsed = started.elapsed();
    eprintln!(
        "{sent} fresh nonces in {:.1} s ({:.0}/s), then the original:",
        elapsed.as_secs_f64(),
        sent as f64 / elapsed.as_secs_f64()
    );
    let replay = post(&c, &agent.base, original).await;
    eprintln!("  {}", replay.json["error"]["data"]["message"]);
    assert!(replay.nonce_refused(), "replay accepted: {}", replay.json);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replay_after_a_crash_and_restart_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    // `--require-nonce`, which the old binary also takes (there it forgot nonces on restart).
    let args = ["--require-nonce", "--db", "state.db"];
    let c = client();
    let ts = now_stamp();
    let original = body(1, Some("pay-once"), &ts);
    {
        let agent = serve(dir.path(), &args);
        assert!(post(&c, &agent.base, original.clone()).await.accepted());
        // Dropped: SIGKILL, right after the answer.
    }
    let agent = serve(dir.path(), &args);
    let replay = post(&c, &agent.base, original).await;
    assert!(
        replay.nonce_refused(),
        "replay accepted after restart: {}",
        replay.json
    );
    assert!(post(&c, &agent.base, body(2, Some("pay-twice"), &ts))
        .await
        .accepted());
}

/// Runs `asap serve` expecting a startup error; fails if it is still running after 20 s.
fn startup_error(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> String {
    let mut child = command(dir, args, env)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("asap serve {args:?} with {env:?} started instead of refusing");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut err).unwrap();
    assert_eq!(status.code(), Some(2), "{err}");
    err
}

#[test]
fn contradicting_storage_settings_are_a_startup_error_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let err = startup_error(
        dir.path(),
        &["--db", "x.db"],
        &[("ASAP_STORAGE_BACKEND", "memory")],
    );
    assert_eq!(
        err.trim(),
        "asap: --db x.db contradicts ASAP_STORAGE_BACKEND=memory: the flag keeps state in that SQLite file, the variable in memory; remove one of them"
    );
    let err = startup_error(
        dir.path(),
        &["--db", "x.db"],
        &[("ASAP_STORAGE_PATH", "y.db")],
    );
    assert!(
        err.contains("--db x.db") && err.contains("ASAP_STORAGE_PATH=y.db"),
        "{err}"
    );
    let err = startup_error(
        dir.path(),
        &[],
        &[
            ("ASAP_STORAGE_BACKEND", "memory"),
            ("ASAP_STORAGE_PATH", "y.db"),
        ],
    );
    assert!(
        err.contains("ASAP_STORAGE_BACKEND=memory") && err.contains("ASAP_STORAGE_PATH=y.db"),
        "{err}"
    );
    assert!(!dir.path().join("x.db").exists(), "nothing was created");
}

#[test]
fn serve_help_documents_nonces_and_storage_precedence() {
    let out = Command::new(env!("CARGO_BIN_EXE_asap"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "--nonce <MODE>",
        "when-present",
        "required",
        "--require-nonce",
        "--max-nonces <N>",
        "Retry-After",
        "ASAP_STORAGE_BACKEND=sqlite ASAP_STORAGE_PATH=PATH",
        "must agree",
    ] {
        assert!(help.contains(needle), "--help lacks {needle:?}:\n{help}");
    }
}
