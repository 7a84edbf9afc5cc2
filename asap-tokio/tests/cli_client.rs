//! `asap send | discover | health | registry` against in-process agents on
//! loopback: output, `--json`, and the documented exit codes.

use std::process::{Command, Output};

use asap_proto::model::{AgentUrn, Manifest, Skill};
use asap_proto::server::{HealthReport, ServerConfig};
use serde_json::Value;

const AGENT: &str = "urn:asap:agent:cli-echo";

async fn start(unhealthy: bool) -> String {
    let mut m = Manifest::new(
        AgentUrn::new(AGENT).unwrap(),
        "CLI Echo",
        "1.2.3",
        "test agent",
        "http://127.0.0.1/asap",
    );
    m.capabilities
        .skills
        .push(Skill::new("echo", "Echo back the input"));
    let agent = asap_tokio::Agent::builder(m)
        .config(ServerConfig {
            rate_limit: None,
            ..ServerConfig::default()
        })
        .echo_skill("echo")
        .health(move || HealthReport {
            unhealthy,
            load: None,
        })
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(asap_tokio::serve(listener, agent, std::future::pending()));
    format!("http://{addr}")
}

async fn registry_server() -> String {
    let body = r#"{"version":"1.0","updated_at":"2026-01-01T00:00:00Z","agents":[
        {"id":"urn:asap:agent:a","name":"A","description":"a","endpoints":{"http":"http://127.0.0.1:1/asap"},"skills":["echo"],"asap_version":"0.1"},
        {"id":"urn:asap:agent:b","name":"B","description":"b","endpoints":{"http":"http://127.0.0.1:2/asap"},"skills":["sum"],"asap_version":"0.1"}]}"#;
    let app = axum::Router::new().route(
        "/registry.json",
        axum::routing::get(move || async move { body }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/registry.json")
}

/// Runs the `asap` binary off the runtime's worker threads.
async fn asap(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_asap"))
            .args(&args)
            .env("ASAP_LOG", "off")
            .output()
            .unwrap()
    })
    .await
    .unwrap()
}

fn code(o: &Output) -> i32 {
    o.status.code().unwrap()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn json(o: &Output) -> Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}{}",
            stdout(o),
            String::from_utf8_lossy(&o.stderr)
        )
    })
}

#[tokio::test(flavor = "multi_thread")]
async fn send_prints_the_answer_and_exits_0() {
    let url = start(false).await;
    let o = asap(&[
        "send",
        &url,
        "--skill",
        "echo",
        "--input",
        r#"{"msg":"hi"}"#,
    ])
    .await;
    assert_eq!(code(&o), 0, "{o:?}");
    let text = stdout(&o);
    assert!(
        text.starts_with(&format!("task.response from {AGENT}")),
        "{text}"
    );
    assert!(text.contains(": completed"), "{text}");
    assert!(text.contains("\"msg\": \"hi\""), "{text}");

    let o = asap(&[
        "send",
        &url,
        "--skill",
        "echo",
        "--input",
        r#"{"n":1}"#,
        "--json",
        "--sender",
        "urn:asap:agent:script",
        "--recipient",
        AGENT,
    ])
    .await;
    assert_eq!(code(&o), 0, "{o:?}");
    let env = json(&o);
    assert_eq!(env["payload_type"], "task.response");
    assert_eq!(env["sender"], AGENT);
    assert_eq!(env["recipient"], "urn:asap:agent:script");
    assert_eq!(env["payload"]["result"]["echoed"]["n"], 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn send_failures_map_to_exit_codes() {
    let url = start(false).await;
    // The agent says no (JSON-RPC error): 1.
    let o = asap(&["send", &url, "--skill", "nope", "--json"]).await;
    assert_eq!(code(&o), 1, "{o:?}");
    let e = json(&o);
    assert_eq!(e["error"]["kind"], "remote");
    assert!(e["error"]["code"].as_i64().is_some(), "{e}");
    // Usage: 2.
    for bad in [
        vec!["send", url.as_str(), "--skill", "echo", "--input", "[1]"],
        vec!["send", url.as_str(), "--skill", "echo", "--input", "{"],
        vec!["send", url.as_str(), "--skill", "echo", "--sender", "bob"],
        vec![
            "send",
            "http://agent.example.com",
            "--skill",
            "echo",
            "--recipient",
            AGENT,
        ],
        vec!["send", url.as_str()],
        vec!["nonsense"],
    ] {
        let o = asap(&bad).await;
        assert_eq!(code(&o), 2, "{bad:?}: {o:?}");
    }
    let o = asap(&["discover", "http://agent.example.com"]).await;
    assert!(String::from_utf8_lossy(&o.stderr).contains("--allow-insecure-http"));
    // Nobody listening: 3 (no retries asked, so no backoff wait).
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("http://127.0.0.1:{port}");
    let o = asap(&[
        "send",
        &dead,
        "--skill",
        "echo",
        "--recipient",
        AGENT,
        "--attempts",
        "1",
        "--json",
    ])
    .await;
    assert_eq!(code(&o), 3, "{o:?}");
    assert_eq!(json(&o)["error"]["fault"], "network");
    let o = asap(&["health", &dead]).await;
    assert_eq!(code(&o), 3, "{o:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn discover_and_health() {
    let url = start(false).await;
    let o = asap(&["discover", &url]).await;
    assert_eq!(code(&o), 0, "{o:?}");
    let text = stdout(&o);
    assert_eq!(
        text,
        format!(
            "CLI Echo 1.2.3  ({AGENT})
  test agent
  skills (1):
    echo  Echo back the input
  endpoints:
    asap       http://127.0.0.1/asap
  auth:        none
  cache TTL:   300 s
  state kept:  no   streaming: no   envelope version: 0.1
"
        )
    );
    let o = asap(&["discover", &url, "--json"]).await;
    assert_eq!(json(&o)["id"], AGENT);
    assert_eq!(json(&o)["capabilities"]["skills"][0]["id"], "echo");

    let o = asap(&["health", &url]).await;
    assert_eq!(code(&o), 0, "{o:?}");
    assert!(stdout(&o).starts_with(&format!("healthy  {AGENT} 1.2.3")));
    let sick = start(true).await;
    let o = asap(&["health", &sick, "--json"]).await;
    assert_eq!(code(&o), 1, "unhealthy exits 1: {o:?}");
    let doc = json(&o);
    assert_eq!(doc["healthy"], false);
    assert_eq!(doc["health"]["status"], "unhealthy");
    let o = asap(&["health", &sick]).await;
    assert!(stdout(&o).starts_with("UNHEALTHY"));
}

#[tokio::test(flavor = "multi_thread")]
async fn registry_lists_and_filters() {
    let reg = registry_server().await;
    let o = asap(&["registry", "--url", &reg]).await;
    assert_eq!(code(&o), 0, "{o:?}");
    let text = stdout(&o);
    assert!(text.contains("2 of 2 agents"), "{text}");
    assert!(
        text.contains("urn:asap:agent:b  B  [sum]  http://127.0.0.1:2/asap"),
        "{text}"
    );
    let o = asap(&["registry", "--url", &reg, "--skill", "sum", "--json"]).await;
    assert_eq!(code(&o), 0, "{o:?}");
    let found = json(&o);
    assert_eq!(found.as_array().unwrap().len(), 1);
    assert_eq!(found[0]["id"], "urn:asap:agent:b");
    let o = asap(&["registry", "--url", &reg, "--skill", "translate", "--json"]).await;
    assert_eq!(code(&o), 1, "{o:?}");
    assert_eq!(json(&o)["error"]["kind"], "not_found");
    // Not a registry: the peer's fault, 1.
    let url = start(false).await;
    let o = asap(&[
        "registry",
        "--url",
        &format!("{url}/.well-known/asap/manifest.json"),
    ])
    .await;
    assert_eq!(code(&o), 1, "{o:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn help_documents_exit_codes() {
    let o = asap(&["--help"]).await;
    let text = stdout(&o);
    for s in [
        "send",
        "discover",
        "health",
        "registry",
        "Exit codes",
        "3  transport failure",
    ] {
        assert!(text.contains(s), "{s}: {text}");
    }
}

/// `asap serve --bind` takes host names, and a bad value says what to write.
#[tokio::test]
async fn serve_bind_accepts_host_names_and_explains_bad_values() {
    for (bind, says) in [
        ("127.0.0.1", "has no port; write HOST:PORT"),
        ("localhost:http", "is not a number from 0 to 65535"),
        (
            "no-such-host.invalid:8000",
            "cannot resolve host \"no-such-host.invalid\"",
        ),
    ] {
        let o = asap(&["serve", "--bind", bind]).await;
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(code(&o), 2, "{bind}: {err}");
        assert!(err.contains(says), "{bind}: {err}");
    }
    // A host name binds: the agent starts and names the address it got.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_asap"))
        .args(["serve", "--bind", "localhost:0", "--rate-limit", "none"])
        .env("ASAP_STORAGE_BACKEND", "memory")
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(std::time::Duration::from_secs(30));
    let _ = child.kill();
    let _ = child.wait();
    let line = line.expect("asap serve --bind localhost:0 printed nothing");
    assert!(
        line.contains("listening on http://127.0.0.1:")
            || line.contains("listening on http://[::1]:"),
        "{line}"
    );
}

/// The endpoint URL the `asap serve` banner prints, given where the base URL
/// belongs, gets the base URL back as the fix (issue 13, item 5).
#[tokio::test]
async fn an_endpoint_url_is_answered_with_the_base_url() {
    let url = start(false).await;
    for (args, endpoint) in [
        (vec!["send", "--skill", "echo"], format!("{url}/asap")),
        (
            vec!["discover"],
            format!("{url}/.well-known/asap/manifest.json"),
        ),
        (vec!["health"], format!("{url}/.well-known/asap/health/")),
    ] {
        let mut argv: Vec<&str> = vec![args[0], endpoint.as_str()];
        argv.extend(&args[1..]);
        let o = asap(&argv).await;
        let err = String::from_utf8_lossy(&o.stderr);
        assert_eq!(code(&o), 2, "{argv:?}: {err}");
        assert!(
            err.contains(&format!(
                "is an endpoint of the agent; pass the agent's base URL {url}"
            )),
            "{argv:?}: {err}"
        );
    }
}

/// `--db` in a directory that does not exist says so, once.
#[tokio::test]
async fn serve_with_a_database_in_a_missing_directory_says_so() {
    let o = asap(&[
        "serve",
        "--bind",
        "127.0.0.1:0",
        "--db",
        "/missing-dir-asap/x.db",
    ])
    .await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert_ne!(code(&o), 0, "{err}");
    assert!(
        err.contains("directory /missing-dir-asap does not exist"),
        "{err}"
    );
    assert_eq!(
        err.matches("/missing-dir-asap/x.db").count(),
        1,
        "the path once: {err}"
    );
}

#[tokio::test]
async fn send_over_websocket_and_watch() {
    let url = start(false).await.replace("http://", "ws://");
    let o = asap(&[
        "send",
        &url,
        "--skill",
        "echo",
        "--input",
        r#"{"msg":"hi"}"#,
    ])
    .await;
    assert_eq!(code(&o), 0, "{o:?}");
    let text = stdout(&o);
    assert!(
        text.starts_with(&format!("task.response from {AGENT}")),
        "{text}"
    );
    assert!(text.contains("\"msg\": \"hi\""), "{text}");
    // --watch over an http:// URL uses the WebSocket transport as well.
    let http = url.replace("ws://", "http://");
    let o = asap(&["send", &http, "--skill", "echo", "--watch", "--json"]).await;
    assert_eq!(code(&o), 0, "{o:?}");
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["payload_type"], "task.response");
}

/// `--skill` naming a skill the agent does not have: the CLI has (or fetches)
/// the manifest, so it names the skills there are instead of "-32601".
#[tokio::test(flavor = "multi_thread")]
async fn an_unknown_skill_is_answered_with_the_skills_the_agent_offers() {
    let url = start(false).await;
    let ws = url.replace("http://", "ws://");
    let says = format!("asap: no skill 'ecoh' at {AGENT}; it offers: echo\n");
    for argv in [
        vec!["send", url.as_str(), "--skill", "ecoh"],
        // No discovery before sending: the manifest is fetched for the message.
        vec![
            "send",
            url.as_str(),
            "--skill",
            "ecoh",
            "--recipient",
            AGENT,
        ],
        vec!["send", ws.as_str(), "--skill", "ecoh"],
    ] {
        let o = asap(&argv).await;
        assert_eq!(code(&o), 1, "{argv:?}: {o:?}");
        assert_eq!(String::from_utf8_lossy(&o.stderr), says, "{argv:?}");
    }
    let o = asap(&["send", &url, "--skill", "ecoh", "--json"]).await;
    let e = json(&o);
    assert_eq!(
        e["error"]["message"],
        format!("no skill 'ecoh' at {AGENT}; it offers: echo")
    );
    assert_eq!(e["error"]["code"], -32601);
    assert_eq!(e["error"]["kind"], "remote");
}

/// Nobody listening: the URL once, and what to check.
#[tokio::test(flavor = "multi_thread")]
async fn a_refused_connection_names_the_url_once_with_a_hint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let http = format!("http://127.0.0.1:{port}");
    for scheme in ["http", "ws"] {
        let url = format!("{scheme}://127.0.0.1:{port}");
        for (argv, dead) in [
            // The manifest is fetched over HTTP first, also for a ws:// URL.
            (
                vec!["send", url.as_str(), "--skill", "echo", "--attempts", "1"],
                &http,
            ),
            (
                vec![
                    "send",
                    url.as_str(),
                    "--skill",
                    "echo",
                    "--recipient",
                    AGENT,
                    "--attempts",
                    "1",
                ],
                &url,
            ),
        ] {
            let o = asap(&argv).await;
            assert_eq!(code(&o), 3, "{argv:?}: {o:?}");
            let err = String::from_utf8_lossy(&o.stderr);
            assert!(
                err.starts_with(&format!("asap: cannot connect to {dead}: ")),
                "{argv:?}: {err}"
            );
            assert!(
                err.ends_with(&format!(
                    "; is the agent running, and listening on port {port}?\n"
                )),
                "{argv:?}: {err}"
            );
            assert_eq!(err.matches(dead.as_str()).count(), 1, "the URL once: {err}");
            assert_eq!(err.lines().count(), 1, "one line: {err}");
        }
    }
    let o = asap(&["health", &format!("http://127.0.0.1:{port}")]).await;
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("is the agent running"), "{err}");
}

/// Failure lines say who refused or failed in words, never "remote error (local)".
#[tokio::test(flavor = "multi_thread")]
async fn failure_lines_read_naturally() {
    let url = start(false).await;
    let o = asap(&[
        "send",
        &url,
        "--skill",
        "echo",
        "--recipient",
        "urn:asap:agent:someone-else",
    ])
    .await;
    assert_eq!(code(&o), 1, "{o:?}");
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.starts_with("asap: the agent refused the request: JSON-RPC -32602 Invalid params "),
        "{err}"
    );
    assert!(
        err.contains("Envelope recipient is not this agent"),
        "{err}"
    );
    let o = asap(&["discover", &format!("{url}/nothing-here")]).await;
    assert_eq!(code(&o), 1, "{o:?}");
    let err2 = String::from_utf8_lossy(&o.stderr);
    assert_eq!(
        err2,
        format!(
            "asap: {url}/nothing-here serves no ASAP manifest (HTTP 404); is it the agent's base URL?\n"
        )
    );
    for label in [
        "error (local)",
        "error (peer)",
        "error (network)",
        "remote error",
    ] {
        assert!(
            !err.contains(label) && !err2.contains(label),
            "{label}: {err}{err2}"
        );
    }
}

/// Progress is drawn only on a terminal: a piped stderr gets none of it.
#[tokio::test(flavor = "multi_thread")]
async fn no_progress_when_stderr_is_not_a_terminal() {
    let url = start(false).await;
    for argv in [
        vec!["send", url.as_str(), "--skill", "echo"],
        vec!["discover", url.as_str()],
    ] {
        let o = asap(&argv).await;
        assert_eq!(code(&o), 0, "{argv:?}: {o:?}");
        assert!(o.stderr.is_empty(), "{argv:?}: {o:?}");
    }
}
