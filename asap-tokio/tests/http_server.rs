//! The HTTP server on loopback: behaviour and robustness against bad input.

use std::net::SocketAddr;
use std::time::SystemTime;

use asap_proto::model::{AgentUrn, Manifest, Skill};
use asap_proto::reliability::rate_limit::RateLimitSpec;
use asap_proto::server::ServerConfig;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const AGENT: &str = "urn:asap:agent:asap-rs-echo";

fn manifest() -> Manifest {
    let mut m = Manifest::new(
        AgentUrn::new(AGENT).unwrap(),
        "Echo",
        "1.0.0",
        "test agent",
        "http://127.0.0.1/asap",
    );
    m.capabilities
        .skills
        .push(Skill::new("echo", "Echo back the input"));
    m
}

async fn start(config: ServerConfig) -> SocketAddr {
    let agent = asap_tokio::Agent::builder(manifest())
        .config(config)
        .echo_skill("echo")
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(asap_tokio::serve(listener, agent, std::future::pending()));
    addr
}

fn open_config() -> ServerConfig {
    ServerConfig {
        rate_limit: None,
        ..ServerConfig::default()
    }
}

struct Reply {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    fn code(&self) -> i64 {
        self.json()["error"]["code"].as_i64().unwrap_or(0)
    }
}

/// A minimal keep-alive HTTP/1.1 client, so tests can send anything at all.
struct Conn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    async fn open(addr: SocketAddr) -> Self {
        Self {
            stream: TcpStream::connect(addr).await.unwrap(),
            buf: Vec::new(),
        }
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> Reply {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        // One write per request: head and body in separate segments would meet Nagle + delayed ACK.
        let mut bytes = head.into_bytes();
        bytes.extend_from_slice(body);
        // A server may answer (413) and close before reading the whole body; the reply still counts.
        let _ = self.stream.write_all(&bytes).await;
        self.read_reply().await
    }

    async fn read_reply(&mut self) -> Reply {
        loop {
            if let Some(end) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&self.buf[..end]).to_string();
                let mut lines = head.split("\r\n");
                let status: u16 = lines
                    .next()
                    .unwrap()
                    .split(' ')
                    .nth(1)
                    .unwrap()
                    .parse()
                    .unwrap();
                let headers: Vec<(String, String)> = lines
                    .filter_map(|l| {
                        l.split_once(':')
                            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
                    })
                    .collect();
                let len: usize = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
                    .map_or(0, |(_, v)| v.parse().unwrap());
                while self.buf.len() < end + 4 + len {
                    self.fill().await;
                }
                let body = self.buf[end + 4..end + 4 + len].to_vec();
                self.buf.drain(..end + 4 + len);
                return Reply {
                    status,
                    headers,
                    body,
                };
            }
            self.fill().await;
        }
    }

    async fn fill(&mut self) {
        let mut chunk = [0u8; 16384];
        let n = self.stream.read(&mut chunk).await.unwrap();
        assert!(n > 0, "server closed the connection");
        self.buf.extend_from_slice(&chunk[..n]);
    }
}

async fn post(addr: SocketAddr, body: &[u8]) -> Reply {
    Conn::open(addr)
        .await
        .request(
            "POST",
            "/asap",
            &[("Content-Type", "application/json")],
            body,
        )
        .await
}

fn now_iso(offset_secs: i64) -> String {
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_micros() as i64;
    asap_proto::model::Timestamp::from_unix(asap_proto::model::UnixTime::from_micros(
        now + offset_secs * 1_000_000,
    ))
    .to_string()
}

fn envelope() -> Value {
    json!({
        "asap_version": "0.1",
        "timestamp": now_iso(0),
        "sender": "urn:asap:agent:tester",
        "recipient": AGENT,
        "payload_type": "task.request",
        "payload": {"conversation_id": "conv_t", "skill_id": "echo", "input": {"message": "hi"}},
    })
}

fn rpc(env: Value, id: Value) -> Vec<u8> {
    serde_json::to_vec(
        &json!({"jsonrpc": "2.0", "method": "asap.send", "params": {"envelope": env}, "id": id}),
    )
    .unwrap()
}

#[tokio::test]
async fn echo_round_trip_with_correlation_and_id_type() {
    let addr = start(open_config()).await;
    let mut env = envelope();
    env["id"] = json!("01KDXZ0000ENVREQ0000000001");
    let r = post(addr, &rpc(env, json!(7))).await;
    assert_eq!(r.status, 200);
    let v = r.json();
    assert_eq!(v["id"], json!(7));
    let reply = &v["result"]["envelope"];
    assert_eq!(reply["payload_type"], "task.response");
    assert_eq!(reply["correlation_id"], "01KDXZ0000ENVREQ0000000001");
    assert_eq!(reply["sender"], AGENT);
    assert_eq!(reply["recipient"], "urn:asap:agent:tester");
    assert_eq!(reply["payload"]["status"], "completed");
    assert_eq!(
        reply["payload"]["result"],
        json!({"echoed": {"message": "hi"}})
    );
    assert!(reply["payload"]["task_id"]
        .as_str()
        .unwrap()
        .starts_with("task_"));
    let keys: Vec<&str> = reply
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    assert_eq!(
        keys,
        [
            "id",
            "asap_version",
            "timestamp",
            "sender",
            "recipient",
            "payload_type",
            "payload",
            "correlation_id",
            "trace_id",
            "requires_ack",
            "extensions"
        ]
    );
    let r = post(addr, &rpc(envelope(), json!("abc"))).await;
    assert_eq!(r.json()["id"], json!("abc"));
}

#[tokio::test]
async fn json_rpc_errors_follow_the_spec() {
    let addr = start(open_config()).await;
    let r = post(addr, b"{\"jsonrpc\": \"2.0\", \"method\": ").await;
    assert_eq!((r.status, r.code()), (200, -32700));
    assert_eq!(r.json()["id"], Value::Null);
    let r = post(addr, b"{\"a\": \"\xff\"}").await;
    assert_eq!(r.code(), -32700);
    assert!(r.json()["error"]["data"]["error"]
        .as_str()
        .unwrap()
        .starts_with("Invalid UTF-8 encoding"));
    let batch = serde_json::to_vec(&json!([json!({"jsonrpc": "2.0"})])).unwrap();
    let r = post(addr, &batch).await;
    assert_eq!(r.code(), -32600);
    assert_eq!(r.json()["error"]["data"]["received_type"], "list");
    let r = post(
        addr,
        br#"{"jsonrpc":"2.0","method":"asap.nope","params":{},"id":1}"#,
    )
    .await;
    assert_eq!(r.code(), -32601);
    assert_eq!(r.json()["error"]["data"], json!({"method": "asap.nope"}));
    let r = post(
        addr,
        br#"{"jsonrpc":"2.0","method":"asap.send","params":{},"id":1}"#,
    )
    .await;
    assert_eq!(r.code(), -32602);
    let mut env = envelope();
    env["sender"] = json!("not-a-urn");
    let r = post(addr, &rpc(env, json!("u"))).await;
    assert_eq!(
        r.code(),
        -32602,
        "bad URN is invalid params, not an internal error"
    );
    assert!(r.body.windows(6).any(|w| w == b"sender"));
    let mut env = envelope();
    env["payload_type"] = json!("no.such.type");
    let r = post(addr, &rpc(env, json!(1))).await;
    assert_eq!(r.code(), -32601);
    let mut env = envelope();
    env["timestamp"] = json!(now_iso(-400));
    let r = post(addr, &rpc(env, json!(1))).await;
    assert_eq!(r.code(), -32602);
    assert_eq!(
        r.json()["error"]["data"]["code"],
        "asap:protocol/invalid_timestamp"
    );
    let mut env = envelope();
    env["timestamp"] = json!(now_iso(120));
    assert_eq!(post(addr, &rpc(env, json!(1))).await.code(), -32602);
    let mut env = envelope();
    env.as_object_mut().unwrap().remove("timestamp");
    let r = post(addr, &rpc(env, json!(1))).await;
    assert_eq!(r.code(), -32602, "missing timestamp is refused by default");
    let mut env = envelope();
    env["payload"] = json!({"not": "a task request"});
    let r = post(addr, &rpc(env, json!(1))).await;
    assert_eq!(r.code(), -32602);
    let r = post(
        addr,
        br#"{"jsonrpc":"2.0","method":"asap.send","params":{},"id":1.5}"#,
    )
    .await;
    assert_eq!(r.code(), -32600, "a fractional id is a malformed request");
    assert_eq!(r.json()["id"], Value::Null);
}

#[tokio::test]
async fn limits_and_encodings() {
    let addr = start(open_config()).await;
    // Wrong content type.
    let r = Conn::open(addr)
        .await
        .request(
            "POST",
            "/asap",
            &[("Content-Type", "text/plain")],
            &rpc(envelope(), json!(1)),
        )
        .await;
    assert_eq!(r.status, 415);
    // Unsupported encoding.
    let r = Conn::open(addr)
        .await
        .request("POST", "/asap", &[("Content-Encoding", "deflate")], b"{}")
        .await;
    assert_eq!(r.status, 415);
    assert_eq!(
        r.json(),
        json!({"detail": "Unsupported Content-Encoding: deflate. Supported: br, gzip"})
    );
    // 11 MiB body: refused on Content-Length before reading.
    let big = vec![b' '; 11 * 1024 * 1024];
    let r = post(addr, &big).await;
    assert_eq!(r.status, 413);
    assert!(r.json()["detail"]
        .as_str()
        .unwrap()
        .starts_with("Request size (11534336 bytes)"));
    // Bad gzip.
    let r = Conn::open(addr)
        .await
        .request(
            "POST",
            "/asap",
            &[("Content-Encoding", "gzip")],
            b"{\"not\":\"gzip\"}",
        )
        .await;
    assert_eq!(r.status, 400);
    // gzip accepted.
    let gz = gzip(&rpc(envelope(), json!("gz")));
    let r = Conn::open(addr)
        .await
        .request(
            "POST",
            "/asap",
            &[
                ("Content-Encoding", "gzip"),
                ("Content-Type", "application/json"),
            ],
            &gz,
        )
        .await;
    assert_eq!(r.status, 200);
    assert!(r.json().get("result").is_some());
    // gzip bomb: 16 MiB of zeros in ~16 KiB.
    let bomb = gzip(&vec![b'0'; 16 * 1024 * 1024]);
    assert!(bomb.len() < 200 * 1024);
    let r = Conn::open(addr)
        .await
        .request("POST", "/asap", &[("Content-Encoding", "gzip")], &bomb)
        .await;
    assert_eq!(r.status, 413);
    assert!(r.json()["detail"]
        .as_str()
        .unwrap()
        .starts_with("Decompressed request size"));
    // Deep nesting.
    let deep = format!("{}{}", "[".repeat(100_000), "]".repeat(100_000));
    let r = post(addr, deep.as_bytes()).await;
    assert_eq!(r.code(), -32700);
    assert!(r.json()["error"]["data"]["error"]
        .as_str()
        .unwrap()
        .contains("nesting depth"));
}

#[tokio::test]
async fn brotli_request_from_the_reference_client_shape() {
    let addr = start(ServerConfig {
        require_timestamp: false,
        ..open_config()
    })
    .await;
    let body = include_bytes!("data/echo_request.json.br");
    let r = Conn::open(addr)
        .await
        .request(
            "POST",
            "/asap",
            &[
                ("Content-Encoding", "br"),
                ("Content-Type", "application/json"),
            ],
            body,
        )
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert!(
        r.json()["result"]["envelope"]["payload"]["result"]["echoed"]["message"]
            .as_str()
            .unwrap()
            .starts_with("brotli")
    );
}

#[tokio::test]
async fn well_known_endpoints() {
    let addr = start(open_config()).await;
    let mut c = Conn::open(addr).await;
    let r = c
        .request("GET", "/.well-known/asap/manifest.json", &[], b"")
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("cache-control"), Some("public, max-age=300"));
    let etag = r.header("etag").unwrap().to_owned();
    assert!(etag.starts_with('"') && etag.len() == 66);
    assert_eq!(r.json()["id"], AGENT);
    let r = c
        .request(
            "GET",
            "/.well-known/asap/manifest.json",
            &[("If-None-Match", &format!("\"x\", {etag}"))],
            b"",
        )
        .await;
    assert_eq!(r.status, 304);
    assert!(r.body.is_empty());
    let r = c
        .request(
            "GET",
            "/.well-known/asap/manifest.json",
            &[("If-None-Match", &format!("W/{etag}"))],
            b"",
        )
        .await;
    assert_eq!(r.status, 304, "weak comparison (RFC 9110 13.1.2)");
    let r = c
        .request(
            "GET",
            "/.well-known/asap/manifest.json",
            &[("If-None-Match", "*")],
            b"",
        )
        .await;
    assert_eq!(r.status, 304, "* matches the existing manifest");
    let r = c.request("GET", "/.well-known/asap/health", &[], b"").await;
    assert_eq!(r.status, 200);
    let h = r.json();
    assert_eq!(h["status"], "healthy");
    assert_eq!(h["agent_id"], AGENT);
    assert!(h["uptime_seconds"].is_number());
    let r = c.request("GET", "/asap", &[], b"").await;
    assert_eq!((r.status, r.header("allow")), (405, Some("POST")));
    assert_eq!(r.json(), json!({"detail": "Method Not Allowed"}));
    let r = c.request("GET", "/nope", &[], b"").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.json(), json!({"detail": "Not Found"}));
    let r = c.request("GET", "/health", &[], b"").await;
    assert_eq!(r.json(), json!({"status": "ok"}));
}

/// HEAD on every GET route: the GET's status and headers (with its
/// Content-Length), no body, and the connection stays usable.
#[tokio::test]
async fn head_answers_like_get_without_a_body() {
    let addr = start(open_config()).await;
    for path in [
        "/.well-known/asap/manifest.json",
        "/.well-known/asap/health",
        "/health",
        "/ready",
        "/asap/metrics",
    ] {
        let mut c = Conn::open(addr).await;
        let get = c.request("GET", path, &[], b"").await;
        c.stream
            .write_all(format!("HEAD {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n").as_bytes())
            .await
            .unwrap();
        while !c.buf.windows(4).any(|w| w == b"\r\n\r\n") {
            c.fill().await;
        }
        let end = c.buf.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
        let head = String::from_utf8_lossy(&c.buf[..end]).to_ascii_lowercase();
        c.buf.drain(..end + 4);
        assert!(head.starts_with("http/1.1 200"), "HEAD {path}: {head}");
        let len = format!("content-length: {}", get.body.len());
        assert!(
            head.contains(&len),
            "HEAD {path} has the GET's length: {head}"
        );
        // No body followed: the next answer on this connection parses cleanly.
        let again = c.request("GET", path, &[], b"").await;
        assert_eq!(again.status, 200, "GET after HEAD {path}");
    }
    let mut c = Conn::open(addr).await;
    let r = c.request("PUT", "/health", &[], b"").await;
    assert_eq!((r.status, r.header("allow")), (405, Some("GET, HEAD")));
}

#[tokio::test]
async fn unhealthy_agent_answers_503() {
    let agent = asap_tokio::Agent::builder(manifest())
        .health(|| asap_proto::server::HealthReport {
            unhealthy: true,
            load: None,
        })
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(asap_tokio::serve(listener, agent, std::future::pending()));
    let r = Conn::open(addr)
        .await
        .request("GET", "/.well-known/asap/health", &[], b"")
        .await;
    assert_eq!(r.status, 503);
    assert_eq!(r.json()["status"], "unhealthy");
}

#[tokio::test]
async fn rate_limit_answers_429_with_retry_after() {
    let spec = Some(RateLimitSpec::parse("2/minute").unwrap());
    let addr = start(ServerConfig {
        rate_limit: spec,
        ..ServerConfig::default()
    })
    .await;
    let mut c = Conn::open(addr).await;
    for _ in 0..2 {
        let r = c
            .request("POST", "/asap", &[], &rpc(envelope(), json!(1)))
            .await;
        assert_eq!(r.status, 200);
    }
    let r = c
        .request("POST", "/asap", &[], &rpc(envelope(), json!(1)))
        .await;
    assert_eq!(r.status, 429);
    let retry: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry));
    let v = r.json();
    assert_eq!(v["error"]["code"], 429);
    assert_eq!(v["id"], Value::Null);
    assert_eq!(v["error"]["data"]["limit"], "2 per 1 minute");
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(keys, ["jsonrpc", "id", "error"]);
}

#[tokio::test]
async fn nonce_replay_is_refused_when_required() {
    let addr = start(ServerConfig {
        nonce: asap_proto::server::NonceMode::WhenPresent,
        ..open_config()
    })
    .await;
    let mut env = envelope();
    env["extensions"] = json!({"nonce": "nonce-123"});
    assert!(post(addr, &rpc(env.clone(), json!(1)))
        .await
        .json()
        .get("result")
        .is_some());
    let r = post(addr, &rpc(env, json!("n-2"))).await;
    assert_eq!(r.code(), -32602);
    assert_eq!(
        r.json()["error"]["data"]["message"],
        "Duplicate nonce detected: nonce-123"
    );
}

fn rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_malformed_requests_then_a_valid_one() {
    let addr = start(open_config()).await;
    let bad: Vec<Vec<u8>> = vec![
        b"{".to_vec(),
        b"[]".to_vec(),
        b"\"x\"".to_vec(),
        br#"{"jsonrpc":"2.0","method":"asap.send","params":{"envelope":{"sender":1}},"id":1}"#
            .to_vec(),
        b"\xff\xfe".to_vec(),
        format!("{}1{}", "{\"a\":".repeat(200), "}".repeat(200)).into_bytes(),
        br#"{"jsonrpc":"2.0","method":"asap.send","params":[],"id":{}}"#.to_vec(),
    ];
    let before = rss_kib();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let bad = bad.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = Conn::open(addr).await;
            for i in 0..1250 {
                let body = &bad[(i + t) % bad.len()];
                let r = c
                    .request(
                        "POST",
                        "/asap",
                        &[("Content-Type", "application/json")],
                        body,
                    )
                    .await;
                assert_eq!(r.status, 200);
                assert!(r.code() < 0, "malformed input must get a JSON-RPC error");
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let r = post(addr, &rpc(envelope(), json!("after"))).await;
    assert_eq!(r.status, 200);
    assert!(r.json().get("result").is_some());
    let after = rss_kib();
    // A sanity ceiling for the whole test process, not a leak check: the other
    // tests of this binary run in the same process, so growth here is not ours alone.
    assert!(
        after < 256 * 1024,
        "RSS grew to {after} KiB (from {before} KiB)"
    );
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::best());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_skill_runs_are_group_committed_and_queryable() {
    use asap_proto::store::{StorageBackend, StorageConfig};
    let dir = tempfile::tempdir().unwrap();
    let config = StorageConfig {
        backend: StorageBackend::Sqlite,
        path: dir.path().join("state.db"),
        url: None,
    };
    let stores = asap_blocking::store::open_stores(&config).unwrap();
    let agent = asap_tokio::Agent::builder(manifest())
        .config(open_config())
        .echo_skill("echo")
        .stores(asap_tokio::store::TaskRecorder::spawn(stores).unwrap())
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(asap_tokio::serve(listener, agent, std::future::pending()));

    let mut runs = Vec::new();
    for i in 0..40 {
        runs.push(tokio::spawn(async move {
            let mut env = envelope();
            env["payload"]["input"] = json!({"n": i});
            let r = post(addr, &rpc(env, json!(i))).await;
            r.json()["result"]["envelope"]["payload"]["task_id"]
                .as_str()
                .unwrap()
                .to_owned()
        }));
    }
    let mut task_ids = Vec::new();
    for r in runs {
        task_ids.push(r.await.unwrap());
    }
    for id in &task_ids {
        let mut env = envelope();
        env["payload_type"] = json!("state.query");
        env["payload"] = json!({"task_id": id});
        let v = post(addr, &rpc(env, json!("q"))).await.json();
        assert_eq!(
            v["result"]["envelope"]["payload"]["result"]["snapshot"]["data"]["task"]["status"],
            "completed",
            "{v}"
        );
    }
    // Every acknowledged run is in the file, seen by a fresh connection.
    let stores = asap_blocking::store::open_stores(&config).unwrap();
    for id in &task_ids {
        assert_eq!(stores.snapshots.list_versions(id).unwrap(), vec![1]);
    }
}

#[tokio::test]
async fn in_memory_state_is_recorded_in_place_and_queryable() {
    use asap_proto::store::{StorageBackend, StorageConfig};
    let config = StorageConfig {
        backend: StorageBackend::Memory,
        path: "unused.db".into(),
        url: None,
    };
    let stores = asap_blocking::store::open_stores(&config).unwrap();
    let agent = asap_tokio::Agent::builder(manifest())
        .config(open_config())
        .echo_skill("echo")
        .stores(asap_tokio::store::TaskRecorder::spawn(stores).unwrap())
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(asap_tokio::serve(listener, agent, std::future::pending()));
    let v = post(addr, &rpc(envelope(), json!(1))).await.json();
    let task_id = v["result"]["envelope"]["payload"]["task_id"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut env = envelope();
    env["payload_type"] = json!("StateQuery");
    env["payload"] = json!({"task_id": task_id, "version": 1});
    let v = post(addr, &rpc(env, json!(2))).await.json();
    assert_eq!(
        v["result"]["envelope"]["payload"]["result"]["snapshot"]["version"], 1,
        "{v}"
    );
}

#[tokio::test]
async fn a_panicking_skill_is_an_internal_error_and_the_server_keeps_serving() {
    let agent = asap_tokio::Agent::builder(manifest())
        .config(open_config())
        .echo_skill("echo")
        .skill("boom", |_ctx, _req| async move {
            if true {
                panic!("skill bug");
            }
            Ok(asap_proto::server::SkillResult::completed(
                serde_json::Map::new(),
            ))
        })
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(asap_tokio::serve(listener, agent, std::future::pending()));
    let mut env = envelope();
    env["payload"]["skill_id"] = json!("boom");
    let r = post(addr, &rpc(env, json!(1))).await;
    assert_eq!(r.code(), -32603);
    assert_eq!(
        r.json()["error"]["data"],
        json!({"error": "Internal server error"})
    );
    assert!(post(addr, &rpc(envelope(), json!(2)))
        .await
        .json()
        .get("result")
        .is_some());
}

#[tokio::test]
async fn metrics_count_requests_by_payload_type_and_status() {
    let addr = start(open_config()).await;
    post(addr, &rpc(envelope(), json!(1))).await;
    post(addr, b"{not json").await;
    let mut c = Conn::open(addr).await;
    let r = c.request("GET", "/asap/metrics", &[], b"").await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.header("content-type"),
        Some("application/openmetrics-text; version=1.0.0; charset=utf-8")
    );
    let text = String::from_utf8(r.body).unwrap();
    assert!(
        text.contains("asap_requests_total{payload_type=\"task.request\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("asap_requests_total{payload_type=\"none\",status=\"200\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("asap_request_duration_seconds_count 2"),
        "{text}"
    );
    assert!(text.ends_with("# EOF\n"));
    assert_eq!(
        c.request("POST", "/asap/metrics", &[], b"").await.status,
        405
    );
}

#[tokio::test]
async fn a_request_followed_by_a_half_close_is_answered() {
    // The skill waits until the client has shut down its write side and the
    // server has had time to read that end of stream.
    let gate = std::sync::Arc::new(tokio::sync::Notify::new());
    let opened = std::sync::Arc::clone(&gate);
    let agent = asap_tokio::Agent::builder(manifest())
        .config(open_config())
        .skill_with(
            Skill::new("gated", "answers once let through"),
            move |_, _| {
                let opened = std::sync::Arc::clone(&opened);
                async move {
                    opened.notified().await;
                    Ok(asap_proto::server::SkillResult::completed(
                        asap_proto::model::JsonObject::new(),
                    ))
                }
            },
        )
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(asap_tokio::serve(listener, agent, std::future::pending()));
    let mut env = envelope();
    env["payload"]["skill_id"] = json!("gated");
    let body = rpc(env, json!("half-closed"));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = format!(
        "POST /asap HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    req.extend_from_slice(&body);
    stream.write_all(&req).await.unwrap();
    // `nc -N` style: the client is done sending and waits for the answer.
    stream.shutdown().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    gate.notify_one();
    let mut c = Conn {
        stream,
        buf: Vec::new(),
    };
    let r = c.read_reply().await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["id"], "half-closed");
    assert!(r.json().get("result").is_some(), "{}", r.json());
}

#[tokio::test]
async fn chunked_bodies_are_bounded_while_streaming() {
    let addr = start(ServerConfig {
        max_request_size: 64 * 1024,
        ..open_config()
    })
    .await;
    // Chunked upload with no Content-Length: the limit applies to the bytes as they arrive.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = b"POST /asap HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for _ in 0..20 {
        req.extend_from_slice(format!("{:x}\r\n", 8192).as_bytes());
        req.extend_from_slice(&[b' '; 8192]);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    let _ = stream.write_all(&req).await;
    let mut c = Conn {
        stream,
        buf: Vec::new(),
    };
    let r = c.read_reply().await;
    assert_eq!(r.status, 413);
    assert!(r.json()["detail"]
        .as_str()
        .unwrap()
        .contains("exceeds maximum (65536 bytes)"));
    // A small chunked request is read whole and answered.
    let body = rpc(envelope(), json!("chunked"));
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let mut req = b"POST /asap HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for part in body.chunks(40) {
        req.extend_from_slice(format!("{:x}\r\n", part.len()).as_bytes());
        req.extend_from_slice(part);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&req).await.unwrap();
    let mut c = Conn {
        stream,
        buf: Vec::new(),
    };
    let r = c.read_reply().await;
    assert_eq!(r.json()["id"], "chunked");
    assert!(r.json().get("result").is_some());
}

/// Issue 8 item 4: conformance beyond the reference where it is wrong.
#[tokio::test]
async fn recipient_must_be_this_agent_unless_configured() {
    let addr = start(open_config()).await;
    let mut env = envelope();
    env["recipient"] = json!("urn:asap:agent:someone-else");
    let r = post(addr, &rpc(env.clone(), json!(1))).await;
    assert_eq!(r.code(), -32602);
    let data = &r.json()["error"]["data"];
    assert_eq!(data["recipient"], "urn:asap:agent:someone-else");
    assert_eq!(data["expected"], AGENT);
    assert_eq!(data["validation_errors"][0]["loc"], json!(["recipient"]));
    let gateway = start(ServerConfig {
        accept_any_recipient: true,
        ..open_config()
    })
    .await;
    let r = post(gateway, &rpc(env, json!(1))).await;
    assert_eq!(
        r.json()["result"]["envelope"]["payload"]["status"],
        "completed"
    );
}

#[tokio::test]
async fn every_spelling_of_an_answer_needs_its_correlation_id() {
    let addr = start(open_config()).await;
    for (payload_type, payload) in [
        (
            "task.response",
            json!({"task_id": "t", "status": "completed"}),
        ),
        (
            "TaskResponse",
            json!({"task_id": "t", "status": "completed"}),
        ),
        (
            "mcp.tool_result",
            json!({"request_id": "r", "success": true}),
        ),
        ("McpToolResult", json!({"request_id": "r", "success": true})),
        (
            "McpResourceData",
            json!({"resource_uri": "u", "content": {}}),
        ),
    ] {
        let mut env = envelope();
        env["payload_type"] = json!(payload_type);
        env["payload"] = payload;
        let r = post(addr, &rpc(env, json!(1))).await;
        assert_eq!(r.code(), -32602, "{payload_type}: {}", r.json());
        let locs = &r.json()["error"]["data"]["validation_errors"];
        assert_eq!(locs[0]["loc"], json!(["correlation_id"]), "{payload_type}");
    }
}

fn nested(depth: usize) -> Value {
    (0..depth).fold(json!("leaf"), |inner, _| json!({ "a": inner }))
}

#[tokio::test]
async fn input_nested_100_deep_round_trips_and_deeper_is_refused_by_name() {
    let addr = start(open_config()).await;
    let mut env = envelope();
    env["payload"]["input"] = json!({ "deep": nested(100) });
    let r = post(addr, &rpc(env.clone(), json!(1))).await;
    let v = r.json();
    assert_eq!(
        v["result"]["envelope"]["payload"]["result"]["echoed"]["deep"],
        nested(100),
        "round trip"
    );
    // Built as text: a Value this deep would overflow the test's own stack.
    let text = String::from_utf8(rpc(env, json!(1))).unwrap();
    let deep = format!("{}1{}", "[".repeat(50_000), "]".repeat(50_000));
    let body = text.replacen(
        r#"{"deep":{"a":"#,
        &format!(r#"{{"deep":{deep},"x":{{"a":"#),
        1,
    );
    let r = post(addr, body.as_bytes()).await;
    assert_eq!(r.code(), -32700);
    let msg = r.json()["error"]["data"]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(msg.contains("maximum of 120"), "{msg}");
    // Still serving.
    assert_eq!(post(addr, &rpc(envelope(), json!(2))).await.status, 200);
}
