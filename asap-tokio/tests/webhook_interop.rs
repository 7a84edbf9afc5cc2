//! Webhook interop with third-party verifiers and senders:
//! * the reference's receiver (`ref_webhook_receiver.py`, its `verify_signature`)
//!   accepts our `X-ASAP-Signature` through retries, and refuses a wrong key;
//! * the reference's sender (`ref_webhook_sender.py`) is accepted by our
//!   receiver, and a wrong secret is refused (401, not retried);
//! * the `standardwebhooks` package (PyPI) accepts our Standard Webhooks
//!   headers, also during key rotation, and rejects tampered ones.
//!
//! Python comes from the interop venv (`kit_python_or_skip`) and the
//! `standardwebhooks` venv (`.ci/standardwebhooks.sh`).

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use asap_proto::model::UnixTime;
use asap_proto::store::MemoryWebhookStore;
use asap_proto::webhook::{
    DeadReason, OutboxConfig, OutboxOutput, SigningKeys, UrlPolicy, WebhookEvent, WebhookOutbox,
    WebhookSecret,
};
use asap_tests::interop::{kit_python_or_skip, required_or_skip, shared_dir};
use asap_tokio::webhook::receive::{Received, Receiver};
use asap_tokio::webhook::{SystemResolver, Webhooks};
use base64::Engine as _;

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "receiver did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_receiver_verifies_our_signature_through_retries() {
    let Some(python) = kit_python_or_skip("reference webhook receiver interop") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let child = Command::new(&python)
        .arg(shared_dir().join("interop/ref_webhook_receiver.py"))
        .args([
            "--port",
            &port.to_string(),
            "--secret",
            "s3cret",
            "--fail-first",
            "2",
        ])
        .args(["--exit-after", "1", "--duration", "60", "--out"])
        .arg(dir.path().join("deliveries.jsonl"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    wait_listening(port);
    let keys = [
        (
            "good".to_owned(),
            SigningKeys::new(WebhookSecret::from_bytes(b"s3cret")),
        ),
        (
            "bad".to_owned(),
            SigningKeys::new(WebhookSecret::from_bytes(b"not-the-secret")),
        ),
    ];
    let config = OutboxConfig {
        backoff: asap_proto::reliability::Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_millis(400),
            jitter_ratio: 0.0,
        },
        ..OutboxConfig::default()
    };
    let hooks = Webhooks::start(
        config,
        UrlPolicy::local_development(),
        Box::new(MemoryWebhookStore::new()),
        Arc::new(SystemResolver),
        keys,
    )
    .unwrap();
    let url = format!("http://127.0.0.1:{port}/hook");
    // The receiver fails its first two attempts (503), whichever event they carry.
    let bad = WebhookEvent::new(
        "bad",
        "task_bad",
        url.as_str(),
        br#"{"payload_type":"task.response","payload":{"n":0}}"#.to_vec(),
    )
    .signed_with("bad");
    hooks.publish(vec![bad]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    while hooks.dead_letters().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let dead = hooks.dead_letters();
    assert_eq!(dead.len(), 1);
    assert_eq!(
        dead[0].dead_reason,
        Some(DeadReason::Rejected { status: 401 }),
        "a wrong key is refused"
    );
    let good = WebhookEvent::new(
        "good",
        "task_1",
        url.as_str(),
        br#"{"payload_type":"task.response","payload":{"n":1}}"#.to_vec(),
    )
    .signed_with("good");
    hooks.publish(vec![good]).await.unwrap();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let last = String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_owned();
    let stats: serde_json::Value = serde_json::from_str(&last).unwrap();
    assert_eq!(stats["accepted"], 1, "{stats}");
    assert_eq!(stats["failed_on_purpose"], 2, "{stats}");
    let log = std::fs::read_to_string(dir.path().join("deliveries.jsonl")).unwrap();
    let rows: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = rows.last().unwrap();
    assert_eq!(last["status"], 200);
    assert_eq!(
        last["signature_valid"], true,
        "the reference's verify_signature accepts ours"
    );
    assert!(
        rows.iter().any(|r| r["signature_valid"] == false),
        "and refused the wrong key"
    );
}

fn run_sender(python: &PathBuf, url: &str, secret: &str) -> std::process::Output {
    Command::new(python)
        .arg(shared_dir().join("interop/ref_webhook_sender.py"))
        .arg(url)
        .args([
            "--secret",
            secret,
            "--allow-loopback",
            "--allow-http",
            "--max-retries",
            "1",
        ])
        .args(["--base-delay", "0.1"])
        .args(["--payload", r#"{"event":"task.completed","task_id":"t1"}"#])
        .stderr(Stdio::null())
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_reference_sender_is_accepted_by_our_receiver_and_a_wrong_secret_refused() {
    let Some(python) = kit_python_or_skip("reference webhook sender interop") else {
        return;
    };
    let log: Arc<Mutex<Vec<Received>>> = Arc::default();
    let seen = Arc::clone(&log);
    let receiver = Receiver::new(WebhookSecret::from_bytes(b"s3cret"), move |r| {
        seen.lock().unwrap().push(r)
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(receiver.serve(listener, std::future::pending()));

    let ok = {
        let (p, u) = (python.clone(), url.clone());
        tokio::task::spawn_blocking(move || run_sender(&p, &u, "s3cret"))
            .await
            .unwrap()
    };
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stdout)
    );
    let got = log.lock().unwrap().clone();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].verified, ["asap"]);
    assert_eq!(got[0].task_id, None);

    let bad = tokio::task::spawn_blocking(move || run_sender(&python, &url, "wrong"))
        .await
        .unwrap();
    assert!(!bad.status.success(), "a wrong secret must not be accepted");
    assert_eq!(log.lock().unwrap().len(), 1, "nothing more was accepted");
}

/// The `standardwebhooks` venv's python (installed by `.ci/standardwebhooks.sh`).
fn standardwebhooks_python() -> Result<PathBuf, String> {
    let venv = match std::env::var("ASAP_STANDARDWEBHOOKS_VENV") {
        Ok(v) if !v.is_empty() => PathBuf::from(v),
        _ => {
            let script =
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.ci/standardwebhooks.sh");
            let out = Command::new("bash")
                .arg(&script)
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| format!("cannot run {}: {e}", script.display()))?;
            if !out.status.success() {
                return Err(format!("{} failed", script.display()));
            }
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
    };
    let python = venv.join("bin/python");
    python
        .exists()
        .then_some(python)
        .ok_or_else(|| format!("no python in {}", venv.display()))
}

const VERIFY_PY: &str = r#"
import base64, json, sys
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
cases = json.load(open(sys.argv[1]))
out = []
for c in cases:
    wh = Webhook(base64.b64decode(c["secret_b64"]))
    try:
        wh.verify(base64.b64decode(c["body_b64"]), c["headers"])
        out.append(True)
    except WebhookVerificationError:
        out.append(False)
print(json.dumps(out))
"#;

#[test]
fn standardwebhooks_accepts_our_signatures_and_rejects_tampered_ones() {
    let Some(python) = required_or_skip("standardwebhooks interop", standardwebhooks_python())
    else {
        return;
    };
    let now = UnixTime::from_system_time(std::time::SystemTime::now());
    let current = b"current-secret-bytes".to_vec();
    let previous = b"previous-secret".to_vec();
    let mut outbox = WebhookOutbox::new(OutboxConfig::default());
    outbox.set_signing_keys(
        "k",
        SigningKeys::new(WebhookSecret::from_bytes(&current))
            .with_previous(WebhookSecret::from_bytes(&previous)),
    );
    let body = br#"{"id":"01KDXZ0000ENVUPD0000000001","payload_type":"task.update","payload":{"task_id":"t"}}"#;
    let event = WebhookEvent::new(
        "01KDXZ0000ENVUPD0000000001.0",
        "t",
        "https://hooks.example.com/in",
        body.to_vec(),
    )
    .signed_with("k");
    outbox.enqueue(event, now).unwrap();
    let delivery = loop {
        match outbox.poll_output(now) {
            Some(OutboxOutput::Transmit(d)) => break d,
            Some(_) => {}
            None => panic!("a delivery is due"),
        }
    };
    let headers: serde_json::Map<String, serde_json::Value> = delivery
        .request
        .headers()
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap().into()))
        .collect();
    let b64 = |b: &[u8]| base64::engine::general_purpose::STANDARD.encode(b);
    let case = |secret: &[u8],
                body: &[u8],
                headers: &serde_json::Map<String, serde_json::Value>| {
        serde_json::json!({"secret_b64": b64(secret), "body_b64": b64(body), "headers": headers})
    };
    let mut later_ts = headers.clone();
    let ts: i64 = headers["webhook-timestamp"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    later_ts.insert("webhook-timestamp".into(), (ts + 1).to_string().into());
    let mut other_id = headers.clone();
    other_id.insert("webhook-id".into(), "someone-else".into());
    let cases = serde_json::json!([
        case(&current, body, &headers),
        case(&previous, body, &headers),
        case(&current, br#"{"id":"01KDXZ0000ENVUPD0000000001","payload_type":"task.update","payload":{"task_id":"u"}}"#, &headers),
        case(&current, body, &later_ts),
        case(&current, body, &other_id),
        case(b"another-secret", body, &headers),
    ]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("cases.json");
    std::fs::write(&file, cases.to_string()).unwrap();
    let out = Command::new(python)
        .args(["-c", VERIFY_PY])
        .arg(&file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let verdicts: Vec<bool> = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        verdicts,
        [true, true, false, false, false, false],
        "genuine (current key), genuine (previous key during rotation), tampered body, timestamp, id, wrong secret"
    );
}
