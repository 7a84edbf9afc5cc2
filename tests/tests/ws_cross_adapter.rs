//! `/asap/ws` across adapters on loopback: the blocking `WsClient` against
//! the tokio server, and the tokio `WsClient` against the blocking server.
//! Same skills on both servers; each wait is bounded.

use std::time::{Duration, SystemTime};

use asap_proto::model::{
    AgentUrn, Envelope, Manifest, Payload, Skill, TaskRequest, Timestamp, UnixTime,
};
use asap_proto::server::{ServerConfig, SkillResult};
use asap_proto::task::TaskStatus;

const AGENT: &str = "urn:asap:agent:ws-cross";

fn manifest() -> Manifest {
    let mut m = Manifest::new(
        AgentUrn::new(AGENT).unwrap(),
        "X",
        "1.0.0",
        "x",
        "http://127.0.0.1/asap",
    );
    m.capabilities.skills.push(Skill::new("echo", "echo"));
    m.capabilities
        .skills
        .push(Skill::new("progress", "pushes an update"));
    m
}

fn open() -> ServerConfig {
    ServerConfig {
        rate_limit: None,
        ..ServerConfig::default()
    }
}

fn envelope(id: &str, skill: &str) -> Envelope {
    let now = UnixTime::from_system_time(SystemTime::now());
    let mut input = serde_json::Map::new();
    input.insert("n".into(), 7.into());
    Envelope::new(
        id.into(),
        Timestamp::from_unix(now),
        AgentUrn::new("urn:asap:agent:client").unwrap(),
        AgentUrn::new(AGENT).unwrap(),
        Payload::TaskRequest(TaskRequest::new("conv", skill, input)),
    )
}

fn check_echo(request: &Envelope, reply: &Envelope) {
    assert_eq!(reply.correlation_id.as_deref(), Some(request.id.as_str()));
    assert_eq!(reply.payload_type, "task.response");
    assert_eq!(reply.payload["result"]["echoed"]["n"], 7);
}

fn check_update(update: &Envelope, reply: &Envelope) {
    assert_eq!(update.payload_type, "task.update");
    assert_eq!(update.payload["progress"]["percent"], 50.0);
    assert_eq!(update.payload["task_id"], reply.payload["task_id"]);
}

/// Serves `agent` with the tokio adapter on a loopback port of `rt`.
fn spawn_tokio(rt: &tokio::runtime::Runtime, agent: asap_tokio::Agent) -> std::net::SocketAddr {
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(asap_tokio::serve(listener, agent, std::future::pending()));
    addr
}

#[test]
fn blocking_client_against_the_tokio_server() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let agent = asap_tokio::Agent::builder(manifest())
        .config(open())
        .echo_skill("echo")
        .skill("progress", |ctx, req: TaskRequest| async move {
            ctx.progress(TaskStatus::Working, Some(50.0), None).unwrap();
            Ok(SkillResult::echo_input(req.input))
        })
        .build();
    let addr = spawn_tokio(&rt, agent);

    let client = asap_blocking::ws::WsClient::connect(
        &format!("ws://{addr}"),
        asap_blocking::ws::WsClientConfig::default(),
    )
    .unwrap();
    let pushes = client.pushes().unwrap();
    let request = envelope("01KDXZ0000WSX000000000001A", "echo");
    check_echo(&request, &client.send(request.clone()).unwrap());
    let reply = client
        .send(envelope("01KDXZ0000WSX000000000002A", "progress"))
        .unwrap();
    let update = pushes.recv_timeout(Duration::from_secs(10)).unwrap();
    check_update(&update, &reply);
    client.close();
}

#[test]
fn tokio_client_against_the_blocking_server() {
    let agent = asap_blocking::server::Agent::builder(manifest())
        .config(open())
        .echo_skill("echo")
        .skill("progress", |ctx, req: TaskRequest| {
            ctx.progress(TaskStatus::Working, Some(50.0), None).unwrap();
            Ok(SkillResult::echo_input(req.input))
        })
        .build();
    let handle = asap_blocking::server::serve("127.0.0.1:0", agent, 2).unwrap();
    let base = format!("ws://{}", handle.local_addr());

    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        use futures_util::StreamExt;
        let limit = Duration::from_secs(10);
        let client = asap_tokio::ws::WsClient::connect(&base, Default::default())
            .await
            .unwrap();
        let mut pushes = client.pushes().unwrap();
        let request = envelope("01KDXZ0000WSX000000000003A", "echo");
        let reply = tokio::time::timeout(limit, client.send(request.clone()))
            .await
            .unwrap()
            .unwrap();
        check_echo(&request, &reply);
        let reply = tokio::time::timeout(
            limit,
            client.send(envelope("01KDXZ0000WSX000000000004A", "progress")),
        )
        .await
        .unwrap()
        .unwrap();
        let update = tokio::time::timeout(limit, pushes.next())
            .await
            .unwrap()
            .unwrap();
        check_update(&update, &reply);
        client.close();
    });
    handle.shutdown();
}

/// One raw frame as a client writes it (masked with a fixed key).
fn client_frame(opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mask = [0x37, 0xfa, 0x21, 0x3d];
    let mut out = vec![0x80 | opcode];
    match payload.len() {
        n if n < 126 => out.push(0x80 | n as u8),
        n => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// Opens `/asap/ws` on `addr` over a plain socket, writes `bytes`, and returns
/// the server's first frame (opcode, payload), or `None` if the connection
/// ended without one. Bounded by a read timeout.
fn first_answer(addr: std::net::SocketAddr, bytes: &[u8]) -> Option<(u8, Vec<u8>)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(
        b"GET /asap/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    s.write_all(bytes).unwrap();
    let mut h = [0u8; 2];
    s.read_exact(&mut h).ok()?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut n = [0u8; 2];
            s.read_exact(&mut n).ok()?;
            usize::from(u16::from_be_bytes(n))
        }
        n => usize::from(n),
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).ok()?;
    Some((h[0] & 0x0f, payload))
}

/// RFC 6455: a close is answered with a close (5.5.1), and a peer that breaks
/// the framing rules is told why before the connection ends (7.1.7, 7.4.1):
/// 1002 for a protocol error, 1007 for text that is not UTF-8. Both servers.
fn check_closing(addr: std::net::SocketAddr) {
    let close = |code: u16, reason: &[u8]| {
        let mut p = code.to_be_bytes().to_vec();
        p.extend_from_slice(reason);
        p
    };
    let answer = first_answer(addr, &client_frame(0x8, &close(1000, b"bye")));
    assert_eq!(
        answer,
        Some((0x8, close(1000, b"bye"))),
        "{addr}: close handshake"
    );
    for (what, bytes, code) in [
        ("invalid UTF-8", client_frame(0x1, b"\xff\xfe{"), 1007),
        ("reserved opcode", client_frame(0x3, b"x"), 1002),
        (
            "continuation without a start",
            client_frame(0x0, b"x"),
            1002,
        ),
        ("oversized ping", client_frame(0x9, &[b'p'; 126]), 1002),
    ] {
        let (opcode, payload) = first_answer(addr, &bytes)
            .unwrap_or_else(|| panic!("{addr}: {what}: no close frame before the end"));
        assert_eq!(opcode, 0x8, "{addr}: {what}");
        assert_eq!(
            u16::from_be_bytes([payload[0], payload[1]]),
            code,
            "{addr}: {what}"
        );
    }
    // Still serving: a plain JSON error after all that.
    let (opcode, payload) = first_answer(addr, &client_frame(0x1, b"{oops")).unwrap();
    assert_eq!(opcode, 0x1);
    assert!(String::from_utf8_lossy(&payload).contains("-32700"));
}

#[test]
fn both_servers_answer_a_close_and_name_protocol_violations() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let agent = asap_tokio::Agent::builder(manifest())
        .config(open())
        .echo_skill("echo")
        .build();
    let addr = spawn_tokio(&rt, agent);
    check_closing(addr);

    let agent = asap_blocking::server::Agent::builder(manifest())
        .config(open())
        .echo_skill("echo")
        .build();
    let handle = asap_blocking::server::serve("127.0.0.1:0", agent, 2).unwrap();
    check_closing(handle.local_addr());
}
