//! `/asap/ws` on loopback: the tokio server and `WsClient`, with raw frames
//! where the exact bytes matter.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use asap_proto::model::{
    AgentUrn, Envelope, Manifest, Payload, Skill, TaskRequest, Timestamp, UnixTime,
};
use asap_proto::server::{ServerConfig, SkillResult};
use asap_proto::task::TaskStatus;
use asap_tokio::ws::{WsClient, WsClientConfig};
use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

const AGENT: &str = "urn:asap:agent:ws-test";

struct Agent {
    base: String,
    runs: Arc<AtomicUsize>,
    agent: asap_tokio::Agent,
}

async fn start(config: ServerConfig) -> Agent {
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
    let runs = Arc::new(AtomicUsize::new(0));
    let counted = Arc::clone(&runs);
    let agent = asap_tokio::Agent::builder(m)
        .config(config)
        .skill("echo", move |_ctx, req: TaskRequest| {
            counted.fetch_add(1, Ordering::SeqCst);
            async move { Ok(SkillResult::echo_input(req.input)) }
        })
        .skill("progress", |ctx, req: TaskRequest| async move {
            ctx.status(TaskStatus::Working).unwrap();
            ctx.progress(TaskStatus::Working, Some(50.0), Some("half way"))
                .unwrap();
            ctx.progress(TaskStatus::Working, Some(100.0), None)
                .unwrap();
            Ok(SkillResult::echo_input(req.input))
        })
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(asap_tokio::serve(
        listener,
        agent.clone(),
        std::future::pending(),
    ));
    Agent {
        base: format!("ws://{addr}"),
        runs,
        agent,
    }
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

type Raw =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn raw(base: &str) -> Raw {
    tokio_tungstenite::connect_async(format!("{base}/asap/ws"))
        .await
        .unwrap()
        .0
}

/// Text frames until the one answering `rpc_id` (pings skipped).
async fn until(ws: &mut Raw, rpc_id: &str) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(Ok(m)) = ws.next().await {
        if let Message::Text(t) = m {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            let done = v["id"] == rpc_id;
            out.push(v);
            if done {
                break;
            }
        }
    }
    out
}

#[tokio::test]
async fn client_sends_and_gets_the_correlated_answer() {
    let a = start(open()).await;
    let client = WsClient::connect(&a.base, WsClientConfig::default())
        .await
        .unwrap();
    let env = envelope("01KDXZ0000WS0000000000001A", "echo");
    let reply = client.send(env.clone()).await.unwrap();
    assert_eq!(reply.correlation_id.as_deref(), Some(env.id.as_str()));
    assert_eq!(reply.payload_type, "task.response");
    assert_eq!(reply.payload["result"]["echoed"]["n"], 1);
}

#[tokio::test]
async fn pushed_progress_arrives_before_the_response() {
    let a = start(open()).await;
    let client = WsClient::connect(&a.base, WsClientConfig::default())
        .await
        .unwrap();
    let mut pushes = client.pushes().unwrap();
    let reply = client
        .send(envelope("01KDXZ0000WS0000000000002A", "progress"))
        .await
        .unwrap();
    let started = pushes.next().await.unwrap();
    assert_eq!(started.payload["update_type"], "status_change");
    assert_eq!(started.payload["status"], "working");
    let first = pushes.next().await.unwrap();
    let second = pushes.next().await.unwrap();
    assert_eq!(first.payload_type, "task.update");
    assert_eq!(first.payload["progress"]["percent"], 50.0);
    assert_eq!(second.payload["progress"]["percent"], 100.0);
    assert_eq!(
        first.payload["task_id"], reply.payload["task_id"],
        "updates name the task the response names"
    );
    assert_eq!(
        first.correlation_id.as_deref(),
        Some("01KDXZ0000WS0000000000002A")
    );
}

#[tokio::test]
async fn acks_then_response_and_a_retransmission_runs_nothing() {
    let a = start(open()).await;
    let mut ws = raw(&a.base).await;
    let env = envelope("01KDXZ0000WS0000000000003A", "echo");
    ws.send(Message::Text(frame(&env, "ws-req-1", true).into()))
        .await
        .unwrap();
    let frames = until(&mut ws, "ws-req-1").await;
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
    ws.send(Message::Text(frame(&env, "ws-req-2", true).into()))
        .await
        .unwrap();
    let again = until(&mut ws, "ws-req-2").await;
    assert_eq!(
        again.iter().filter(|f| f["method"] == "asap.ack").count(),
        2,
        "fresh acks for the copy"
    );
    assert_eq!(
        again.last().unwrap()["result"],
        first["result"],
        "the first answer"
    );
    assert_eq!(a.runs.load(Ordering::SeqCst), 1, "the skill ran once");
}

#[tokio::test]
async fn bad_frames_are_answered_and_the_connection_stays() {
    let a = start(open()).await;
    let mut ws = raw(&a.base).await;
    ws.send(Message::Text("not json".into())).await.unwrap();
    ws.send(Message::Binary(vec![1, 2, 3].into()))
        .await
        .unwrap();
    ws.send(Message::Text("[1,2]".into())).await.unwrap();
    let mut codes = Vec::new();
    while codes.len() < 3 {
        if let Some(Ok(Message::Text(t))) = ws.next().await {
            let v: Value = serde_json::from_str(t.as_str()).unwrap();
            codes.push(v["error"]["code"].as_i64().unwrap());
        }
    }
    codes.sort();
    assert_eq!(codes, [-32700, -32600, -32600]);
    // Still serving.
    let env = envelope("01KDXZ0000WS0000000000004A", "echo");
    ws.send(Message::Text(frame(&env, "after", false).into()))
        .await
        .unwrap();
    assert!(until(&mut ws, "after")
        .await
        .last()
        .unwrap()
        .get("result")
        .is_some());
}

#[tokio::test]
async fn the_eleventh_frame_of_a_burst_closes_1008() {
    let a = start(open()).await;
    let mut ws = raw(&a.base).await;
    for i in 0..11 {
        let f = json!({"jsonrpc": "2.0", "method": "asap.unknown", "params": {}, "id": format!("f-{i}")});
        ws.send(Message::Text(f.to_string().into())).await.unwrap();
    }
    let mut last_error = None;
    let mut close = None;
    while let Some(Ok(m)) = ws.next().await {
        match m {
            Message::Text(t) => last_error = Some(t.to_string()),
            Message::Close(c) => {
                close = c;
                break;
            }
            _ => {}
        }
    }
    assert_eq!(
        last_error.unwrap(),
        r#"{"jsonrpc": "2.0", "error": {"code": -32001, "message": "Rate limit exceeded; too many messages per second"}, "id": "f-10"}"#
    );
    assert_eq!(u16::from(close.unwrap().code), 1008);
}

#[tokio::test]
async fn shutdown_closes_1001_server_shutting_down() {
    let a = start(open()).await;
    let mut ws = raw(&a.base).await;
    a.agent.shutdown_websockets();
    loop {
        match ws.next().await {
            Some(Ok(Message::Close(Some(c)))) => {
                assert_eq!(u16::from(c.code), 1001);
                assert_eq!(c.reason.as_str(), "Server shutting down");
                break;
            }
            Some(Ok(_)) => {}
            other => panic!("no close frame: {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_pool_reuses_connections_and_callers_wait_for_a_free_one() {
    use asap_tokio::ws::WsPool;
    let a = start(open()).await;
    let pool = WsPool::new(
        &a.base,
        WsClientConfig::default(),
        asap_proto::ws::PoolConfig {
            max_size: 2,
            ..Default::default()
        },
    );
    let one = pool.acquire().await.unwrap();
    let two = pool.acquire().await.unwrap();
    let waiting = tokio::spawn({
        let pool = pool.clone();
        async move {
            pool.acquire()
                .await
                .unwrap()
                .send(envelope("01KDXZ0000WS0000000000009A", "echo"))
                .await
        }
    });
    tokio::task::yield_now().await;
    assert!(
        !waiting.is_finished(),
        "a third caller waits while both are taken"
    );
    let reply = one
        .send(envelope("01KDXZ0000WS0000000000008A", "echo"))
        .await
        .unwrap();
    assert_eq!(reply.payload_type, "task.response");
    drop(one);
    let reply = waiting.await.unwrap().unwrap();
    assert_eq!(reply.payload_type, "task.response");
    drop(two);
}
