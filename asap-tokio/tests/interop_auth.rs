//! Interop with the Python reference, with bearer tokens, both directions:
//! its checker (`check_server.py --groups auth`, keys from `keys.py`) drives
//! `asap serve --jwks-file`, and the asap-rs client sends with a token to
//! `ref_server.py --jwks-file`. Skipped with a notice when the reference is
//! unavailable, unless `ASAP_REQUIRE_INTEROP=1`.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use asap_proto::model::{AgentUrn, Envelope, Payload, TaskRequest, Timestamp, UnixTime};
use asap_tests::interop::{kit_python_or_skip, shared_dir};
use asap_tokio::client::{Client, ClientOptions};

/// A child process, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn keys(python: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(python)
        .arg(shared_dir().join("interop/keys.py"))
        .arg("gen")
        .arg(dir.path())
        .output()
        .expect("keys.py gen");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir
}

fn mint(python: &Path, keys: &Path, extra: &[&str]) -> String {
    let out = Command::new(python)
        .arg(shared_dir().join("interop/keys.py"))
        .arg("mint")
        .arg(keys)
        .args(extra)
        .output()
        .expect("keys.py mint");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap().trim().to_owned()
}

fn start_asap(jwks: &Path, state: &Path) -> (Proc, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_asap"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--rate-limit",
            "none",
            "--db",
        ])
        .arg(state.join("state.db"))
        .arg("--jwks-file")
        .arg(jwks)
        .args(["--required-scope", "asap:execute"])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start asap serve");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("asap serve printed nothing").unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {first:?}"))
        .to_owned();
    std::thread::spawn(move || for _ in lines {});
    (Proc(child), url)
}

#[test]
fn reference_checker_auth_group_passes_against_asap_serve() {
    let Some(python) = kit_python_or_skip("auth interop (check_server.py)") else {
        return;
    };
    let keys = keys(&python);
    let (_agent, url) = start_asap(&keys.path().join("public.jwks.json"), keys.path());
    let out = Command::new(&python)
        .arg(shared_dir().join("interop/check_server.py"))
        .arg(&url)
        .args([
            "--groups",
            "auth,http,discovery,ws",
            "--required-scope",
            "asap:execute",
        ])
        .arg("--auth-keys")
        .arg(keys.path())
        .output()
        .expect("run check_server.py");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "check_server.py reported failures:\n{text}"
    );
    assert!(
        text.contains(" 0 failed") && text.contains("PASS auth.valid_es256"),
        "{text}"
    );
}

fn start_reference(python: &PathBuf, jwks: &Path) -> (Proc, String) {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
        .port();
    let child = Command::new(python)
        .arg(shared_dir().join("interop/ref_server.py"))
        .args([
            "--port",
            &port.to_string(),
            "--required-scope",
            "asap:execute",
        ])
        .arg("--jwks-file")
        .arg(jwks)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start ref_server.py");
    let proc = Proc(child);
    // Real waiting, bounded: the Python process needs time to bind.
    let deadline = Instant::now() + Duration::from_secs(60);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "ref_server.py did not listen within 60 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (proc, format!("http://127.0.0.1:{port}"))
}

fn envelope(recipient: &AgentUrn) -> Envelope {
    let now = UnixTime::from_system_time(SystemTime::now());
    let mut input = serde_json::Map::new();
    input.insert("n".into(), 1.into());
    Envelope::new(
        format!("e-{}", now.as_micros()),
        Timestamp::from_unix(now),
        AgentUrn::new("urn:asap:agent:asap-rs-client").unwrap(),
        recipient.clone(),
        Payload::TaskRequest(TaskRequest::new("conv", "echo", input)),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asap_rs_client_sends_with_a_token_to_the_reference_server() {
    let Some(python) = kit_python_or_skip("auth interop (ref_server.py --jwks-file)") else {
        return;
    };
    let keys = keys(&python);
    let (_server, url) = start_reference(&python, &keys.path().join("public.jwks.json"));
    let plain = Client::new(ClientOptions::default().base_url(&url)).unwrap();
    let id = plain.discover(&url).await.unwrap().id.clone();
    let err = plain.send(&envelope(&id)).await.unwrap_err();
    assert!(err.to_string().contains("401"), "no token: {err}");
    for alg in ["RS256", "ES256"] {
        let token = mint(
            &python,
            keys.path(),
            &["--alg", alg, "--scope", "asap:execute"],
        );
        let client = Client::new(ClientOptions::default().base_url(&url))
            .unwrap()
            .with_token(token);
        let reply = client.send(&envelope(&id)).await.unwrap();
        assert_eq!(
            reply.payload["result"]["echoed"]["n"], 1,
            "{alg}: {:?}",
            reply.payload
        );
    }
    let read_only = mint(&python, keys.path(), &["--scope", "asap:read"]);
    let err = Client::new(ClientOptions::default().base_url(&url))
        .unwrap()
        .with_token(read_only)
        .send(&envelope(&id))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("403"), "wrong scope: {err}");
}
