//! Writing an agent with `asap_tokio` alone (issue 13, item 4): `skill_with`
//! declares a skill and its handler in one call; a skill reports bad input as a
//! failed task, a refused request as -32602 and a bug as -32603; the router
//! mounted with `into_make_service_with_connect_info` limits each client IP on
//! its own. Every name below comes through `asap_tokio`'s re-exports.

use std::net::{IpAddr, SocketAddr};
use std::time::SystemTime;

use asap_tokio::asap_proto::model::{Timestamp, UnixTime};
use asap_tokio::asap_proto::reliability::rate_limit::RateLimitSpec;
use asap_tokio::serde_json::{json, Value};
use asap_tokio::{
    axum, Agent, AgentUrn, HandlerError, JsonObject, Manifest, ServerConfig, Skill, SkillResult,
};

const AGENT: &str = "urn:asap:agent:authoring";

fn manifest() -> Manifest {
    let mut m = Manifest::new(
        AgentUrn::new(AGENT).unwrap(),
        "Authoring",
        "1.0.0",
        "skills declared with their handlers",
        "http://127.0.0.1/asap",
    );
    // A stale entry: `skill_with` replaces it.
    m.capabilities
        .skills
        .push(Skill::new("upper", "stale words"));
    m
}

fn agent(config: ServerConfig) -> Agent {
    let mut schema = JsonObject::new();
    schema.insert("type".into(), "object".into());
    Agent::builder(manifest())
        .config(config)
        .skill_with(
            Skill::new("upper", "Upper-case input.text").with_input_schema(schema),
            |_ctx, req| async move {
                let Some(text) = req.input.get("text").and_then(|v| v.as_str()) else {
                    return Ok(SkillResult::failed("input.text must be a string"));
                };
                let mut out = JsonObject::new();
                out.insert("text".into(), text.to_uppercase().into());
                Ok(SkillResult::completed(out))
            },
        )
        .skill_with(
            Skill::new("strict", "Refuses a missing input.text"),
            |_ctx, req| async move {
                if req.input.contains_key("text") {
                    Ok(SkillResult::completed(JsonObject::new()))
                } else {
                    Err(HandlerError::invalid_params(
                        "input.text is missing",
                        json!({"member": "input.text"}),
                    ))
                }
            },
        )
        .skill_with(
            Skill::new("buggy", "Always crashes"),
            |_ctx, _req| async move { Err(HandlerError::failed("the database is gone")) },
        )
        .build()
}

/// Serves `agent` in an axum app with the peer address as connect info.
async fn serve(agent: Agent) -> String {
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "my app" }))
        .merge(asap_tokio::router(agent));
    let listener = asap_tokio::tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap();
    let addr = listener.local_addr().unwrap();
    asap_tokio::tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
    });
    format!("http://{addr}")
}

fn request(skill: &str, input: Value) -> Value {
    let now = Timestamp::from_unix(UnixTime::from_system_time(SystemTime::now()));
    json!({"jsonrpc": "2.0", "method": "asap.send", "id": "r", "params": {"envelope": {
        "asap_version": "0.1", "timestamp": now.to_string(),
        "sender": "urn:asap:agent:client", "recipient": AGENT, "payload_type": "task.request",
        "payload": {"conversation_id": "c", "skill_id": skill, "input": input}}}})
}

async fn post(client: &reqwest::Client, url: &str, body: &Value) -> (u16, Value) {
    let r = client
        .post(format!("{url}/asap"))
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    let status = r.status().as_u16();
    let bytes = r.bytes().await.unwrap();
    (
        status,
        asap_tokio::serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn skills_declared_with_their_handlers_report_failures_by_the_rule() {
    let url = serve(agent(ServerConfig {
        rate_limit: None,
        ..ServerConfig::default()
    }))
    .await;
    let client = reqwest::Client::new();

    // The manifest lists each skill once, as `skill_with` declared it.
    let m = client
        .get(format!("{url}/.well-known/asap/manifest.json"))
        .send()
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    let m: Value = asap_tokio::serde_json::from_slice(&m).unwrap();
    let skills: Vec<(&str, &str)> = m["capabilities"]["skills"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap(),
                s["description"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        skills,
        [
            ("upper", "Upper-case input.text"),
            ("strict", "Refuses a missing input.text"),
            ("buggy", "Always crashes"),
        ]
    );
    assert_eq!(
        m["capabilities"]["skills"][0]["input_schema"],
        json!({"type": "object"})
    );
    // The rest of the app is still there.
    let home = client.get(&url).send().await.unwrap().text().await.unwrap();
    assert_eq!(home, "my app");

    let (_, ok) = post(&client, &url, &request("upper", json!({"text": "hi"}))).await;
    let payload = &ok["result"]["envelope"]["payload"];
    assert_eq!(payload["status"], "completed", "{ok}");
    assert_eq!(payload["result"]["text"], "HI");

    // Invalid input: a failed task.
    let (_, failed) = post(&client, &url, &request("upper", json!({"text": 1}))).await;
    let payload = &failed["result"]["envelope"]["payload"];
    assert_eq!(payload["status"], "failed", "{failed}");
    assert_eq!(payload["result"]["error"], "input.text must be a string");

    // A refused request: -32602 naming it.
    let (_, refused) = post(&client, &url, &request("strict", json!({}))).await;
    assert_eq!(refused["error"]["code"], -32602, "{refused}");
    assert_eq!(
        refused["error"]["data"]["code"],
        "asap:protocol/malformed_envelope"
    );
    assert_eq!(
        refused["error"]["data"]["message"],
        "Malformed envelope: input.text is missing"
    );
    assert_eq!(
        refused["error"]["data"]["details"],
        json!({"member": "input.text"})
    );

    // A bug: -32603, the message kept from the caller.
    let (_, crashed) = post(&client, &url, &request("buggy", json!({}))).await;
    assert_eq!(crashed["error"]["code"], -32603, "{crashed}");
    assert!(
        !crashed.to_string().contains("the database is gone"),
        "{crashed}"
    );
}

#[tokio::test]
async fn with_connect_info_each_client_ip_has_its_own_rate_limit() {
    let url = serve(agent(ServerConfig {
        rate_limit: Some(RateLimitSpec::parse("1/minute").unwrap()),
        ..ServerConfig::default()
    }))
    .await;
    let first = reqwest::Client::new();
    let body = request("upper", json!({"text": "a"}));
    assert_eq!(post(&first, &url, &body).await.0, 200);
    assert_eq!(
        post(&first, &url, &body).await.0,
        429,
        "127.0.0.1 spent its budget"
    );
    // Another loopback address is another client: its budget is untouched.
    let other = reqwest::Client::builder()
        .local_address(IpAddr::from([127, 0, 0, 2]))
        .build()
        .unwrap();
    assert_eq!(post(&other, &url, &body).await.0, 200);
}
