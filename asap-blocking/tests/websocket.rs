//! `/asap/ws` on loopback: the blocking server and `WsClient`, with raw
//! tungstenite frames where the exact bytes matter. Every wait is bounded.

use std::net::TcpStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use asap_blocking::server::{serve, Agent, ServerHandle};
use asap_blocking::ws::{WsClient, WsClientConfig};
use asap_proto::client::{CallError, SendError};
use asap_proto::model::{
    AgentUrn, Envelope, Manifest, Payload, Skill, TaskRequest, Timestamp, UnixTime,
};
use asap_proto::reliability::{AckConfig, CircuitBreakerConfig};
use asap_proto::server::{ServerConfig, SkillResult};
use asap_proto::task::TaskStatus;
use asap_proto::ws::{ClientSessionConfig, SessionConfig};
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;
use tungstenite::Message;

const AGENT: &str = "urn:asap:agent:ws-test";
const WAIT: Duration = Duration::from_secs(10);

struct Running {
    base: String,
    runs: Arc<AtomicUsize>,
    handle: ServerHandle,
}

fn agent(runs: &Arc<AtomicUsize>, websocket: SessionConfig, max_websockets: usize) -> Agent {
    let mut m = Manifest::new(
        AgentUrn::new(AGENT).unwrap(),
        "W",
        "1.0.0",
        "w",
        "http://127.0.0.1/asap",
    );
    m.capabilities.skills.push(Skill::new("echo", "echo"));
    m.capabilities
        .skills
        .push(Skill::new("progress", "pushes two updates"));
    let counted = Arc::clone(runs);
    Agent::builder(m)
        .config(ServerConfig {
            rate_limit: None,
            ..ServerConfig::default()
        })
        .websocket(websocket)
        .max_websockets(max_websockets)
        .skill("echo", move |_ctx, req: TaskRequest| {
            counted.fetch_add(1, Ordering::SeqCst);
            Ok(SkillResult::echo_input(req.input))
        })
        .skill("progress", |ctx, req: TaskRequest| {
            ctx.progress(TaskStatus::Working, Some(50.0), Some("half way"))
                .unwrap();
            ctx.progress(TaskStatus::Working, Some(100.0), None)
                .unwrap();
            Ok(SkillResult::echo_input(req.input))
        })
        .build()
}

fn start_with(websocket: SessionConfig, max_websockets: usize) -> Running {
    let runs = Arc::new(AtomicUsize::new(0));
    let handle = serve("127.0.0.1:0", agent(&runs, websocket, max_websockets), 4).unwrap();
    Running {
        base: format!("ws://{}", handle.local_addr()),
        runs,
        handle,
    }
}

fn start() -> Running {
    start_with(SessionConfig::default(), 16)
}

fn envelope(id: &str, skill: &str) -> Envelope {
    let now = UnixTime::from_system_time(SystemTime::now());
    let mut input = serde_json::Map::new();
    input.insert("n".into(), 1.into());
    Envelope::new(
        id.into(),
        Timestamp::from_unix(now),
        AgentUrn::new("urn:asap:agent:client").unwrap(),
        AgentUrn::new(AGENT).unwrap(),
        Payload::TaskRequest(TaskRequest::new("conv", skill, input)),
    )
}

fn frame(env: &Envelope, rpc_id: &str, requires_ack: bool) -> String {
    let mut v = serde_json::to_value(env).unwrap();
    v["requires_ack"] = requires_ack.into();
    json!({"jsonrpc": "2.0", "method": "asap.send", "params": {"envelope": v}, "id": rpc_id})
        .to_string()
}

type Raw = tungstenite::WebSocket<MaybeTlsStream<TcpStream>>;

fn raw(base: &str) -> Raw {
    let (ws, _) = tungstenite::connect(format!("{base}/asap/ws")).unwrap();
    if let MaybeTlsStream::Plain(s) = ws.get_ref() {
        s.set_read_timeout(Some(WAIT)).unwrap();
    }
    ws
}

fn send_text(ws: &mut Raw, text: impl Into<String>) {
    ws.send(Message::text(text.into())).unwrap();
}

/// Text frames until the one answering `rpc_id` (pings skipped).
fn until(ws: &mut Raw, rpc_id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    loop {
        if let Message::Text(t) = ws.read().unwrap() {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            let done = v["id"] == rpc_id;
            out.push(v);
            if done {
                return out;
            }
        }
    }
}

/// The close frame, skipping text frames (their texts returned too).
fn close_frame(ws: &mut Raw) -> (Vec<String>, tungstenite::protocol::CloseFrame) {
    let mut texts = Vec::new();
    loop {
        match ws.read() {
            Ok(Message::Text(t)) => texts.push(t.to_string()),
            Ok(Message::Close(Some(c))) => return (texts, c),
            Ok(_) => {}
            Err(e) => panic!("no close frame: {e}"),
        }
    }
}

/// One HTTP request on a fresh connection; the whole response text.
fn http(addr: std::net::SocketAddr, head: &str) -> String {
    use std::io::{Read, Write};
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    String::from_utf8_lossy(&out).into_owned()
}

#[test]
fn client_sends_and_gets_the_correlated_answer() {
    let a = start();
    let client = WsClient::connect(&a.base, WsClientConfig::default()).unwrap();
    assert_eq!(client.url(), format!("{}/asap/ws", a.base));
    let env = envelope("01KDXZ0000WS0000000000001B", "echo");
    let reply = client.send(env.clone()).unwrap();
    assert_eq!(reply.correlation_id.as_deref(), Some(env.id.as_str()));
    assert_eq!(reply.payload_type, "task.response");
    assert_eq!(reply.payload["result"]["echoed"]["n"], 1);
    // Several at once from several threads: each gets its own answer.
    let answers: Vec<_> = (0..8)
        .map(|i| {
            let c = client.clone();
            std::thread::spawn(move || {
                let id = format!("01KDXZ0000WS00000000000{i:02}C");
                (id.clone(), c.send(envelope(&id, "echo")).unwrap())
            })
        })
        .collect();
    for t in answers {
        let (id, reply) = t.join().unwrap();
        assert_eq!(reply.correlation_id.as_deref(), Some(id.as_str()));
    }
    assert_eq!(a.runs.load(Ordering::SeqCst), 9);
}

#[test]
fn pushed_progress_arrives_before_the_response() {
    let a = start();
    let client = WsClient::connect(&a.base, WsClientConfig::default()).unwrap();
    let pushes = client.pushes().unwrap();
    assert!(client.pushes().is_none(), "taken once");
    let reply = client
        .send(envelope("01KDXZ0000WS0000000000002B", "progress"))
        .unwrap();
    // Already there when the response is: they were sent before it.
    let first = pushes.try_recv().unwrap();
    let second = pushes.try_recv().unwrap();
    assert_eq!(first.payload_type, "task.update");
    assert_eq!(first.payload["progress"]["percent"], 50.0);
    assert_eq!(second.payload["progress"]["percent"], 100.0);
    assert_eq!(first.payload["task_id"], reply.payload["task_id"]);
    assert_eq!(
        first.correlation_id.as_deref(),
        Some("01KDXZ0000WS0000000000002B")
    );
    // On the wire: both pushes, then the response.
    let mut ws = raw(&a.base);
    let env = envelope("01KDXZ0000WS0000000000002C", "progress");
    send_text(&mut ws, frame(&env, "p-1", false));
    let frames = until(&mut ws, "p-1");
    let methods: Vec<_> = frames.iter().map(|f| f["method"].clone()).collect();
    assert_eq!(
        methods,
        [json!("asap.send"), json!("asap.send"), Value::Null]
    );
    assert!(frames[0].get("id").is_none(), "a push is a notification");
}

#[test]
fn acks_then_response_and_a_retransmission_runs_nothing() {
    let a = start();
    let mut ws = raw(&a.base);
    let env = envelope("01KDXZ0000WS0000000000003B", "echo");
    send_text(&mut ws, frame(&env, "ws-req-1", true));
    let frames = until(&mut ws, "ws-req-1");
    let statuses: Vec<_> = frames
        .iter()
        .filter(|f| f["method"] == "asap.ack")
        .map(|f| {
            f["params"]["envelope"]["payload"]["status"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(statuses, ["received", "processed"]);
    let first = frames.last().unwrap().clone();
    // The same envelope again in a new frame (a lost ack's retransmission).
    send_text(&mut ws, frame(&env, "ws-req-2", true));
    let again = until(&mut ws, "ws-req-2");
    assert_eq!(
        again.iter().filter(|f| f["method"] == "asap.ack").count(),
        2,
        "fresh acks for the copy"
    );
    assert_eq!(again.last().unwrap()["result"], first["result"]);
    assert_eq!(a.runs.load(Ordering::SeqCst), 1, "the skill ran once");
}

#[test]
fn bad_frames_are_answered_and_the_connection_stays() {
    let a = start();
    let mut ws = raw(&a.base);
    send_text(&mut ws, "not json");
    ws.send(Message::Binary(vec![1, 2, 3].into())).unwrap();
    send_text(&mut ws, "[1,2]");
    let mut codes = Vec::new();
    while codes.len() < 3 {
        if let Message::Text(t) = ws.read().unwrap() {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            codes.push(v["error"]["code"].as_i64().unwrap());
        }
    }
    codes.sort_unstable();
    assert_eq!(codes, [-32700, -32600, -32600]);
    let env = envelope("01KDXZ0000WS0000000000004B", "echo");
    send_text(&mut ws, frame(&env, "after", false));
    assert!(until(&mut ws, "after")
        .last()
        .unwrap()
        .get("result")
        .is_some());
}

#[test]
fn the_eleventh_frame_of_a_burst_closes_1008() {
    let a = start();
    let mut ws = raw(&a.base);
    for i in 0..11 {
        let f = json!({"jsonrpc": "2.0", "method": "asap.unknown", "params": {}, "id": format!("f-{i}")});
        send_text(&mut ws, f.to_string());
    }
    let (texts, close) = close_frame(&mut ws);
    assert_eq!(
        texts.last().unwrap(),
        r#"{"jsonrpc": "2.0", "error": {"code": -32001, "message": "Rate limit exceeded; too many messages per second"}, "id": "f-10"}"#
    );
    assert_eq!(u16::from(close.code), 1008);
}

#[test]
fn shutdown_closes_1001_server_shutting_down() {
    let a = start();
    let mut ws = raw(&a.base);
    let addr = a.handle.local_addr();
    let started = Instant::now();
    let stopping = std::thread::spawn(move || a.handle.shutdown());
    let (_, close) = close_frame(&mut ws);
    assert_eq!(u16::from(close.code), 1001);
    assert_eq!(close.reason.as_str(), "Server shutting down");
    // Our close reply goes out on the next read; the server then lets go at once.
    while ws.read().is_ok() {}
    stopping.join().unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "shutdown waited for the linger timeout: {:?}",
        started.elapsed()
    );
    assert!(
        TcpStream::connect_timeout(&addr, Duration::from_secs(1)).is_err(),
        "no longer accepting"
    );
}

#[test]
fn heartbeat_pings_and_a_silent_peer_is_closed() {
    let a = start_with(
        SessionConfig {
            heartbeat_interval: Duration::from_millis(100),
            idle_timeout: Duration::from_millis(350),
            ..SessionConfig::default()
        },
        16,
    );
    let started = Instant::now();
    let mut ws = raw(&a.base);
    let (texts, close) = close_frame(&mut ws);
    assert!(texts.len() >= 2, "{texts:?}");
    assert!(
        texts.iter().all(|t| t == r#"{"type": "ping"}"#),
        "{texts:?}"
    );
    assert_eq!(u16::from(close.code), 1001);
    assert!(close.reason.contains("heartbeat timeout"), "{close}");
    // The session starts after the handshake: within a few ms of `started`.
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "{:?}",
        started.elapsed()
    );
    // A client answers pings (WsClient does): its connection stays.
    let client = WsClient::connect(&a.base, WsClientConfig::default()).unwrap();
    std::thread::sleep(Duration::from_millis(600));
    let reply = client.send(envelope("01KDXZ0000WS0000000000005B", "echo"));
    assert!(reply.is_ok(), "{reply:?}");
}

#[test]
fn upgrades_are_checked_and_bounded() {
    let a = start_with(SessionConfig::default(), 1);
    let addr = a.handle.local_addr();
    let plain = http(addr, "GET /asap/ws HTTP/1.1\r\nHost: x\r\n\r\n");
    assert!(plain.starts_with("HTTP/1.1 426"), "{plain}");
    assert!(plain.contains("Upgrade: websocket"), "{plain}");
    let old = http(
        addr,
        "GET /asap/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
    );
    assert!(old.starts_with("HTTP/1.1 426"), "{old}");
    assert!(old
        .to_ascii_lowercase()
        .contains("sec-websocket-version: 13"));
    let keyless = http(
        addr,
        "GET /asap/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
    );
    assert!(keyless.starts_with("HTTP/1.1 400"), "{keyless}");
    assert!(keyless.contains("Sec-WebSocket-Key"), "{keyless}");
    let post = http(
        addr,
        "POST /asap/ws HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(post.starts_with("HTTP/1.1 405"), "{post}");
    // RFC 6455's sample key and accept value.
    let handshake = "GET /asap/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    let mut first = raw(&a.base);
    let busy = http(addr, handshake);
    assert!(busy.starts_with("HTTP/1.1 503"), "{busy}");
    assert!(busy.contains("retry later"), "{busy}");
    first.close(None).unwrap();
    while first.read().is_ok() {} // the server's close reply, then the end
                                  // The slot is given back once the first connection ends.
    let deadline = Instant::now() + WAIT;
    loop {
        let again = {
            use std::io::{Read, Write};
            let mut s = TcpStream::connect(addr).unwrap();
            s.set_read_timeout(Some(WAIT)).unwrap();
            s.write_all(handshake.as_bytes()).unwrap();
            let mut buf = [0u8; 512];
            let n = s.read(&mut buf).unwrap();
            String::from_utf8_lossy(&buf[..n]).into_owned()
        };
        if again.starts_with("HTTP/1.1 101") {
            assert!(
                again.contains("sec-websocket-accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
                "{again}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{again}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn the_client_reconnects_with_backoff_after_the_server_comes_back() {
    let runs = Arc::new(AtomicUsize::new(0));
    let first = serve("127.0.0.1:0", agent(&runs, SessionConfig::default(), 16), 2).unwrap();
    let addr = first.local_addr();
    let client = WsClient::connect(&format!("ws://{addr}"), WsClientConfig::default()).unwrap();
    client
        .send(envelope("01KDXZ0000WS0000000000006B", "echo"))
        .unwrap();
    first.shutdown();
    // Down: sends fail at once with a retry hint (not a hang).
    let down = client.send(envelope("01KDXZ0000WS0000000000006C", "echo"));
    assert!(matches!(down, Err(SendError::Transport(_))), "{down:?}");
    let second = serve(addr, agent(&runs, SessionConfig::default(), 16), 2).unwrap();
    let deadline = Instant::now() + WAIT;
    let reply = loop {
        match client.send(envelope("01KDXZ0000WS0000000000006D", "echo")) {
            Ok(r) => break r,
            Err(e) if Instant::now() < deadline => {
                assert!(e.to_string().contains("reconnecting"), "{e}");
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => panic!("never reconnected: {e}"),
        }
    };
    assert_eq!(reply.payload_type, "task.response");
    second.shutdown();
}

#[test]
fn ack_give_ups_open_the_breaker() {
    // A peer that upgrades and then never answers or acknowledges.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut ws = tungstenite::accept(s).unwrap();
        while ws.read().is_ok() {}
    });
    let config = WsClientConfig {
        session: ClientSessionConfig {
            ack: AckConfig {
                ack_timeout: Duration::from_millis(50),
                max_retries: 1,
                ..AckConfig::default()
            },
            ..ClientSessionConfig::default()
        },
        breaker: Some(CircuitBreakerConfig {
            failure_threshold: 1,
            ..CircuitBreakerConfig::default()
        }),
        reconnect: false,
        ..WsClientConfig::default()
    };
    let client = WsClient::connect(&format!("ws://{addr}"), config).unwrap();
    let gave_up = client.send(envelope("01KDXZ0000WS0000000000007B", "echo"));
    assert!(
        matches!(&gave_up, Err(SendError::Transport(e)) if e.to_string().contains("no MessageAck")),
        "{gave_up:?}"
    );
    let refused = client.send(envelope("01KDXZ0000WS0000000000007C", "echo"));
    assert!(
        matches!(refused, Err(SendError::CircuitOpen(_))),
        "{refused:?}"
    );
}

#[test]
fn wss_speaks_tls_and_bad_urls_are_typed() {
    let a = start();
    let tls_url = a.base.replace("ws://", "wss://");
    // Our server speaks plain WebSocket: the TLS handshake fails, as a connect error.
    match WsClient::connect(&tls_url, WsClientConfig::default()) {
        Err(CallError::Transport { detail, url, .. }) => {
            assert!(url.starts_with("wss://"), "{url}");
            assert!(detail.contains("handshake"), "{detail}");
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        WsClient::connect("ws://example.com", WsClientConfig::default()),
        Err(CallError::Config(_))
    ));
    assert!(matches!(
        WsClient::connect("ws://127.0.0.1:1", WsClientConfig::default()),
        Err(CallError::Transport { .. })
    ));
}
