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
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let addr = listener.local_addr().unwrap();
    rt.spawn(asap_tokio::serve(listener, agent, std::future::pending()));

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
