//! Identity on the blocking adapter: the server fetches the key set from a
//! (scripted, loopback) IdP when the first token arrives, the client gets its
//! token with client credentials from the same IdP, and the envelope sender
//! is bound to the token's agent.

use std::io::{Read, Write};
use std::net::TcpListener;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use asap_blocking::client::{Client, ClientOptions};
use asap_blocking::server::{serve, Agent};
use asap_proto::auth::{Authenticator, AuthenticatorConfig, JwksCacheConfig, KeySource};
use asap_proto::model::{
    AgentUrn, Envelope, Manifest, Payload, Skill, TaskRequest, Timestamp, UnixTime,
};
use asap_proto::server::{ServerAuth, ServerConfig};
use base64::Engine as _;
use ring::signature::{Ed25519KeyPair, KeyPair};

const AGENT: &str = "urn:asap:agent:blocking-auth";
const CLIENT_AGENT: &str = "urn:asap:agent:blocking-client";

fn b64(b: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b)
}

/// A tiny IdP: `GET /jwks` and `POST /token` (one Ed25519 key), counting requests.
fn idp(key: Arc<Ed25519KeyPair>, hits: Arc<AtomicUsize>) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut s) = stream else { continue };
            let mut buf = vec![0u8; 8192];
            let n = s.read(&mut buf).unwrap_or(0);
            let req = String::from_utf8_lossy(&buf[..n]).into_owned();
            hits.fetch_add(1, Ordering::SeqCst);
            let body = if req.starts_with("GET /jwks") {
                format!(
                    r#"{{"keys":[{{"kty":"OKP","crv":"Ed25519","kid":"k1","x":"{}"}}]}}"#,
                    b64(key.public_key().as_ref())
                )
            } else {
                let exp = UnixTime::from_system_time(SystemTime::now()).as_secs() + 600;
                let claims = format!(
                    r#"{{"sub":"blocking-client","scope":"asap:execute","exp":{exp},"https://github.com/adriannoes/asap-protocol/agent_id":"{CLIENT_AGENT}"}}"#
                );
                let input = format!(
                    "{}.{}",
                    b64(br#"{"alg":"EdDSA","kid":"k1"}"#),
                    b64(claims.as_bytes())
                );
                let token = format!("{input}.{}", b64(key.sign(input.as_bytes()).as_ref()));
                format!(r#"{{"access_token":"{token}","token_type":"Bearer","expires_in":600}}"#)
            };
            let _ = write!(
                s,
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    format!("http://{addr}")
}

fn envelope(sender: &str) -> Envelope {
    let now = UnixTime::from_system_time(SystemTime::now());
    Envelope::new(
        format!("e-{}", now.as_micros()),
        Timestamp::from_unix(now),
        AgentUrn::new(sender).unwrap(),
        AgentUrn::new(AGENT).unwrap(),
        Payload::TaskRequest(TaskRequest::new("c", "echo", serde_json::Map::new())),
    )
}

#[test]
fn tokens_from_client_credentials_are_checked_by_the_blocking_server() {
    let pkcs8 = Ed25519KeyPair::generate_pkcs8(&ring::rand::SystemRandom::new()).unwrap();
    let key = Arc::new(Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).unwrap());
    let hits = Arc::new(AtomicUsize::new(0));
    let idp = idp(key, Arc::clone(&hits));
    let auth = Authenticator::new(AuthenticatorConfig {
        keys: KeySource::Jwks(JwksCacheConfig::new(format!("{idp}/jwks"))),
        ..Default::default()
    })
    .unwrap();
    let mut m = Manifest::new(
        AgentUrn::new(AGENT).unwrap(),
        "B",
        "1.0.0",
        "b",
        "http://127.0.0.1/asap",
    );
    m.capabilities.skills.push(Skill::new("echo", "echo"));
    let agent = Agent::builder(m)
        .config(ServerConfig {
            rate_limit: None,
            ..ServerConfig::default()
        })
        .auth(ServerAuth::new(auth))
        .echo_skill("echo")
        .build();
    let server = serve("127.0.0.1:0", agent, 2).unwrap();
    let base = format!("http://{}", server.local_addr());

    let anonymous = Client::new(ClientOptions::default().base_url(&base)).unwrap();
    let err = anonymous.send(&envelope(CLIENT_AGENT)).unwrap_err();
    assert!(err.to_string().contains("401"), "{err}");

    let client = Client::new(ClientOptions::default().base_url(&base))
        .unwrap()
        .with_oauth2(
            &format!("{idp}/token"),
            "blocking-client",
            "s3cret",
            &["asap:execute"],
        )
        .unwrap();
    let reply = client.send(&envelope(CLIENT_AGENT)).unwrap();
    assert_eq!(reply.payload["status"], "completed", "{:?}", reply.payload);
    let err = client
        .send(&envelope("urn:asap:agent:mallory"))
        .unwrap_err();
    assert!(err.to_string().contains("403"), "{err}");
    // One token request and one key-set fetch served all of it.
    client.send(&envelope(CLIENT_AGENT)).unwrap();
    assert_eq!(hits.load(Ordering::SeqCst), 2);
}
