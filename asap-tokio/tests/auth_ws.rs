//! `/asap/ws` with a user-supplied bearer validator (spec 11.1 bearer mode):
//! the upgrade is refused without a token, and the connection ends with
//! close 1008 when the token expires.

use std::time::{Duration, SystemTime};

use asap_proto::auth::{AuthRejection, Identity, Scope};
use asap_proto::model::{AgentUrn, Manifest, Skill, TaskRequest, UnixTime};
use asap_proto::server::{ServerAuth, ServerConfig, SkillResult};
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

async fn serve() -> String {
    let mut m = Manifest::new(
        AgentUrn::new("urn:asap:agent:ws-auth").unwrap(),
        "W",
        "1.0.0",
        "w",
        "http://127.0.0.1/asap",
    );
    m.capabilities.skills.push(Skill::new("echo", "echo"));
    let auth = ServerAuth::custom(|token: &str, _: Option<Scope>, now: UnixTime| {
        if token == "short-lived" {
            Ok(Identity::new("c", vec!["asap:execute".into()], None)
                .expiring(now.saturating_add(Duration::from_secs(1))))
        } else {
            Err(AuthRejection::MissingToken)
        }
    });
    let agent = asap_tokio::Agent::builder(m)
        .config(ServerConfig {
            rate_limit: None,
            ..ServerConfig::default()
        })
        .auth(auth)
        .skill("echo", |_ctx, req: TaskRequest| async move {
            Ok(SkillResult::echo_input(req.input))
        })
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(asap_tokio::serve(listener, agent, std::future::pending()));
    format!("ws://{addr}/asap/ws")
}

#[tokio::test]
async fn the_upgrade_needs_a_token_and_expiry_closes_with_1008() {
    let url = serve().await;
    let err = match tokio_tungstenite::connect_async(url.as_str()).await {
        Ok(_) => panic!("upgraded without a token"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("401"), "{err}");

    let mut req = url.as_str().into_client_request().unwrap();
    req.headers_mut()
        .insert("authorization", "Bearer short-lived".parse().unwrap());
    let (mut ws, _) = tokio_tungstenite::connect_async(req).await.unwrap();
    let started = SystemTime::now();
    let close = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(m)) = ws.next().await {
            if let Message::Close(c) = m {
                return c;
            }
        }
        None
    })
    .await
    .expect("closed within 10 s")
    .expect("a close frame");
    assert_eq!(u16::from(close.code), 1008);
    assert!(close.reason.contains("expired"), "{}", close.reason);
    assert!(started.elapsed().unwrap() >= Duration::from_millis(500));
}
