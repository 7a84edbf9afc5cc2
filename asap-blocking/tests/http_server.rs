//! The blocking server on loopback: same decisions as the tokio server, closures as handlers.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::SystemTime;

use asap_blocking::server::{serve, Agent, HandlerReply};
use asap_proto::model::{
    AgentUrn, Manifest, Payload, PayloadKind, Skill, TaskResponse, Timestamp, UnixTime,
};
use asap_proto::server::{HandlerError, ServerConfig};
use asap_proto::task::TaskStatus;
use serde_json::{json, Value};

const AGENT: &str = "urn:asap:agent:blocking-echo";

fn start() -> (asap_blocking::server::ServerHandle, SocketAddr) {
    let mut m = Manifest::new(
        AgentUrn::new(AGENT).unwrap(),
        "Echo",
        "1.0.0",
        "test",
        "http://127.0.0.1/asap",
    );
    m.capabilities
        .skills
        .push(Skill::new("echo", "Echo back the input"));
    let agent = Agent::builder(m)
        .config(ServerConfig {
            rate_limit: None,
            ..ServerConfig::default()
        })
        .echo_skill("echo")
        .skill("boom", |_, _| Err(HandlerError::failed("secret detail")))
        .handler(PayloadKind::TaskCancel, |_env, p| {
            let Payload::TaskCancel(c) = p else {
                return Err(HandlerError::failed("not a cancel"));
            };
            Ok(HandlerReply::Payload(Payload::TaskResponse(TaskResponse {
                task_id: c.task_id,
                status: TaskStatus::Cancelled,
                result: None,
                final_state: None,
                metrics: None,
            })))
        })
        .build();
    let handle = serve("127.0.0.1:0", agent, 2).unwrap();
    let addr = handle.local_addr();
    (handle, addr)
}

fn request(addr: SocketAddr, method: &str, path: &str, body: &[u8]) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "{method} {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len()).unwrap();
    s.write_all(body).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let end = out.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let status = String::from_utf8_lossy(&out[..end])
        .split(' ')
        .nth(1)
        .unwrap()
        .parse()
        .unwrap();
    (status, out[end + 4..].to_vec())
}

fn rpc(payload_type: &str, payload: Value) -> Vec<u8> {
    let now = UnixTime::from_system_time(SystemTime::now());
    serde_json::to_vec(
        &json!({"jsonrpc": "2.0", "method": "asap.send", "id": "b-1", "params": {"envelope": {
        "asap_version": "0.1", "timestamp": Timestamp::from_unix(now).to_string(),
        "sender": "urn:asap:agent:tester", "recipient": AGENT,
        "payload_type": payload_type, "payload": payload}}}),
    )
    .unwrap()
}

#[test]
fn a_request_followed_by_a_half_close_is_answered() {
    let (_h, addr) = start();
    let body = rpc(
        "task.request",
        json!({"conversation_id": "c", "skill_id": "echo", "input": {"m": 1}}),
    );
    let mut s = TcpStream::connect(addr).unwrap();
    write!(s, "POST /asap HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", body.len()).unwrap();
    s.write_all(&body).unwrap();
    // `nc -N` style: done sending, waiting for the answer.
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    assert!(text.contains(r#""result""#), "{text}");
}

#[test]
fn closures_answer_like_the_async_server() {
    let (handle, addr) = start();
    let (status, body) = request(
        addr,
        "POST",
        "/asap",
        &rpc(
            "task.request",
            json!({"conversation_id": "c", "skill_id": "echo", "input": {"x": 1}}),
        ),
    );
    assert_eq!(status, 200);
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["result"]["envelope"]["payload"]["result"],
        json!({"echoed": {"x": 1}})
    );
    assert_eq!(v["id"], "b-1");

    let (_, body) = request(
        addr,
        "POST",
        "/asap",
        &rpc("TaskCancel", json!({"task_id": "t-9"})),
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["result"]["envelope"]["payload"]["status"], "cancelled");

    let (_, body) = request(
        addr,
        "POST",
        "/asap",
        &rpc(
            "task.request",
            json!({"conversation_id": "c", "skill_id": "boom", "input": {}}),
        ),
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], -32603);
    assert_eq!(
        v["error"]["data"],
        json!({"error": "Internal server error"}),
        "details stay out of responses"
    );

    let (status, body) = request(addr, "POST", "/asap", b"{nope");
    assert_eq!(status, 200);
    assert_eq!(
        serde_json::from_slice::<Value>(&body).unwrap()["error"]["code"],
        -32700
    );

    let (status, body) = request(addr, "GET", "/.well-known/asap/manifest.json", b"");
    assert_eq!(status, 200);
    assert_eq!(serde_json::from_slice::<Value>(&body).unwrap()["id"], AGENT);
    let (status, _) = request(addr, "GET", "/asap", b"");
    assert_eq!(status, 405);
    handle.shutdown();
}

#[test]
fn skill_runs_are_persisted_and_state_can_be_queried_and_restored() {
    use asap_proto::store::{StorageBackend, StorageConfig};
    let dir = tempfile::tempdir().unwrap();
    let config = StorageConfig {
        backend: StorageBackend::Sqlite,
        path: dir.path().join("state.db"),
        url: None,
    };
    let stores = asap_blocking::store::open_stores(&config).unwrap();
    let mut m = Manifest::new(
        AgentUrn::new(AGENT).unwrap(),
        "Echo",
        "1.0.0",
        "test",
        "http://127.0.0.1/asap",
    );
    m.capabilities
        .skills
        .push(Skill::new("echo", "Echo back the input"));
    let agent = Agent::builder(m)
        .config(ServerConfig {
            rate_limit: None,
            ..ServerConfig::default()
        })
        .echo_skill("echo")
        .stores(stores)
        .build();
    let handle = serve("127.0.0.1:0", agent, 2).unwrap();
    let addr = handle.local_addr();

    let (_, body) = request(
        addr,
        "POST",
        "/asap",
        &rpc(
            "task.request",
            json!({"conversation_id": "c", "skill_id": "echo", "input": {"step": 1}}),
        ),
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    let task_id = v["result"]["envelope"]["payload"]["task_id"]
        .as_str()
        .unwrap()
        .to_owned();

    let (_, body) = request(
        addr,
        "POST",
        "/asap",
        &rpc("state.query", json!({"task_id": task_id})),
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    let snap = &v["result"]["envelope"]["payload"]["result"]["snapshot"];
    assert_eq!(snap["version"], 1);
    assert_eq!(snap["data"]["task"]["status"], "completed");
    assert_eq!(
        snap["data"]["status_history"],
        json!(["submitted", "working", "completed"])
    );
    assert_eq!(snap["data"]["input"], json!({"step": 1}));
    let snapshot_id = snap["id"].as_str().unwrap().to_owned();

    let (_, body) = request(
        addr,
        "POST",
        "/asap",
        &rpc(
            "StateRestore",
            json!({"task_id": task_id, "snapshot_id": snapshot_id}),
        ),
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(
        v["result"]["envelope"]["payload"]["result"]["snapshot"]["version"],
        2
    );

    let (_, body) = request(
        addr,
        "POST",
        "/asap",
        &rpc("state.query", json!({"task_id": "task_unknown"})),
    );
    let v: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(v["error"]["code"], -32602);
    assert_eq!(v["error"]["data"]["code"], "asap:task/not_found");
    handle.shutdown();

    // The state outlives the process: reopen the file.
    let stores = asap_blocking::store::open_stores(&config).unwrap();
    assert_eq!(
        stores.snapshots.list_versions(&task_id).unwrap(),
        vec![1, 2]
    );
    let events = stores
        .metering
        .query(
            AGENT,
            UnixTime::EPOCH,
            UnixTime::from_secs(i64::from(i32::MAX)),
        )
        .unwrap();
    assert_eq!(events.len(), 1);
    assert_eq!(events[0].task_id, task_id);
}

/// HEAD on a GET route: the GET's headers and Content-Length, no body.
#[test]
fn head_answers_like_get_without_a_body() {
    let (_handle, addr) = start();
    let (status, get_body) = request(addr, "GET", "/.well-known/asap/manifest.json", b"");
    assert_eq!(status, 200);
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "HEAD /.well-known/asap/manifest.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let text = String::from_utf8_lossy(&out).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(
        text.contains(&format!("content-length: {}", get_body.len())),
        "{text}"
    );
    assert!(
        text.ends_with("\r\n\r\n"),
        "no body after the headers: {text}"
    );
}

#[test]
fn header_cap_and_body_budget_hold_on_the_blocking_server() {
    let m = Manifest::new(
        AgentUrn::new(AGENT).unwrap(),
        "Echo",
        "1.0.0",
        "test",
        "http://127.0.0.1/asap",
    );
    let agent = Agent::builder(m)
        .config(ServerConfig {
            rate_limit: None,
            max_body_bytes_in_flight: 100,
            max_header_bytes: 1024,
            ..ServerConfig::default()
        })
        .echo_skill("echo")
        .build();
    let post = http::Method::POST;
    let mut headers = http::HeaderMap::new();
    headers.insert("x-pad", "a".repeat(2000).parse().unwrap());
    let r = agent.handle(&post, "/asap", &headers, None, &mut &b"{}"[..]);
    assert_eq!(r.status(), 431);
    // A body larger than the budget of bodies in flight: 503, retry later.
    let body = [b' '; 200];
    let mut headers = http::HeaderMap::new();
    headers.insert(http::header::CONTENT_LENGTH, 200.into());
    let r = agent.handle(&post, "/asap", &headers, None, &mut &body[..]);
    assert_eq!(r.status(), 503);
    assert_eq!(r.headers()["retry-after"], "1");
    // Unannounced (chunked) bodies are counted as they arrive.
    let r = agent.handle(
        &post,
        "/asap",
        &http::HeaderMap::new(),
        None,
        &mut &body[..],
    );
    assert_eq!(r.status(), 503);
    // The budget was given back: a small request passes.
    let r = agent.handle(
        &post,
        "/asap",
        &http::HeaderMap::new(),
        None,
        &mut &b"{}"[..],
    );
    assert_eq!(r.status(), 200);
}

/// Reads one response off `s`: status, lower-cased head, body (by Content-Length).
fn response(s: &mut std::io::BufReader<TcpStream>) -> (u16, String, Vec<u8>) {
    use std::io::BufRead;
    let mut head = String::new();
    loop {
        let mut line = String::new();
        s.read_line(&mut line).unwrap();
        if line == "\r\n" || line.is_empty() {
            break;
        }
        head.push_str(&line.to_ascii_lowercase());
    }
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse().unwrap());
    let mut body = vec![0; len];
    s.read_exact(&mut body).unwrap();
    (status, head, body)
}

/// HTTP/1.1 framing: keep-alive, chunked bodies, `Expect: 100-continue`,
/// and requests whose framing cannot be trusted are refused and closed.
#[test]
fn http11_keep_alive_chunked_and_continue() {
    let (_handle, addr) = start();
    let s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = std::io::BufReader::new(s);
    // 1: chunked, in three chunks with an extension and a trailer.
    let body = rpc(
        "task.request",
        json!({"conversation_id": "c", "skill_id": "echo", "input": {"k": 1}}),
    );
    let (a, b) = body.split_at(10);
    write!(w, "POST /asap HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n").unwrap();
    write!(w, "{:x};ext=1\r\n", a.len()).unwrap();
    w.write_all(a).unwrap();
    write!(w, "\r\n{:X}\r\n", b.len()).unwrap();
    w.write_all(b).unwrap();
    write!(w, "\r\n0\r\nX-Trailer: y\r\n\r\n").unwrap();
    let (status, head, out) = response(&mut r);
    assert_eq!(status, 200, "{head}");
    assert!(head.contains("date: "), "{head}");
    assert!(!head.contains("connection: close"), "{head}");
    let v: Value = serde_json::from_slice(&out).unwrap();
    assert_eq!(
        v["result"]["envelope"]["payload"]["result"]["echoed"]["k"],
        1
    );
    // 2: same connection, Expect: 100-continue.
    write!(w, "POST /asap HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nExpect: 100-continue\r\nContent-Length: {}\r\n\r\n", body.len()).unwrap();
    let (status, _, _) = response(&mut r);
    assert_eq!(status, 100);
    w.write_all(&body).unwrap();
    let (status, _, out) = response(&mut r);
    assert_eq!(status, 200);
    assert!(serde_json::from_slice::<Value>(&out).unwrap()["result"].is_object());
    // 3: a GET with a body nobody reads: discarded, the connection stays usable.
    write!(
        w,
        "GET /health HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello"
    )
    .unwrap();
    assert_eq!(response(&mut r).0, 200);
    // 4: ambiguous framing: 400, then closed.
    write!(
        w,
        "POST /asap HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    .unwrap();
    let (status, head, out) = response(&mut r);
    assert_eq!(status, 400);
    assert!(head.contains("connection: close"), "{head}");
    assert!(String::from_utf8_lossy(&out).contains("Transfer-Encoding"));
    let mut rest = Vec::new();
    r.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty());
    // Not HTTP at all (a TLS ClientHello): refused at once.
    let mut tls = TcpStream::connect(addr).unwrap();
    tls.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    tls.write_all(&[0x16, 0x03, 0x01, 0x00, 0x05]).unwrap();
    let mut out = Vec::new();
    tls.read_to_end(&mut out).unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 400"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}
