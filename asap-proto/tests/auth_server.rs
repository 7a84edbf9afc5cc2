//! Authentication as a step of the server exchange: every case asserts the
//! exact answer (status, challenge, JSON-RPC code) and the fetches the core
//! asks for are counted.
#![allow(clippy::disallowed_methods)] // one base `Instant` per test; the code under test never reads a clock

mod auth_support;

use std::time::{Duration, Instant};

use asap_proto::auth::{
    AuthRejection, Authenticator, AuthenticatorConfig, Identity, JwksCacheConfig, KeySource, Scope,
};
use asap_proto::model::{AgentUrn, Manifest, Skill, UnixTime};
use asap_proto::server::{
    HandlerOutcome, Now, Outcome, RequestHead, Server, ServerAuth, ServerConfig, SkillResult, Step,
    Transport,
};
use auth_support::TestKeys;
use http::{header, HeaderMap, Method, Response};
use serde_json::{json, Value};

const WALL: i64 = 1_800_000_000;
const AGENT_CLAIM: &str = "https://github.com/adriannoes/asap-protocol/agent_id";

fn body(sender: &str) -> Vec<u8> {
    format!(
        r#"{{"jsonrpc":"2.0","method":"asap.send","id":7,"params":{{"envelope":{{
  "asap_version":"0.1","timestamp":"2027-01-15T08:00:00Z","sender":"{sender}",
  "recipient":"urn:asap:agent:demo","payload_type":"task.request",
  "payload":{{"conversation_id":"c","skill_id":"echo","input":{{"m":1}}}}}}}}}}"#
    )
    .into_bytes()
}

struct Rig {
    keys: TestKeys,
    server: Server,
    t0: Instant,
    /// Key-set fetches the core asked for.
    fetches: usize,
    /// What the fake IdP answers (`None`: down).
    idp: Option<Vec<u8>>,
}

impl Rig {
    fn new(auth: impl FnOnce(Authenticator) -> ServerAuth) -> Self {
        let keys = TestKeys::new();
        let config = AuthenticatorConfig {
            keys: KeySource::Jwks(JwksCacheConfig::new("https://idp.example.com/jwks")),
            ..Default::default()
        };
        let mut manifest = Manifest::new(
            AgentUrn::new("urn:asap:agent:demo").unwrap(),
            "Demo",
            "1.0.0",
            "demo",
            "http://127.0.0.1:8000/asap",
        );
        manifest
            .capabilities
            .skills
            .push(Skill::new("echo", "Echo"));
        let t0 = Instant::now();
        let mut server = Server::new(manifest, ServerConfig::default(), t0, 7);
        server.routes_mut().add_skill("echo");
        server.set_auth(auth(Authenticator::new(config).unwrap()));
        let idp = Some(keys.jwks_json());
        Self {
            keys,
            server,
            t0,
            fetches: 0,
            idp,
        }
    }

    fn now(&self, secs: u64) -> Now {
        Now {
            monotonic: self.t0 + Duration::from_secs(secs),
            wall: UnixTime::from_secs(WALL + secs as i64),
        }
    }

    fn token(&self, alg: &str, scope: &str, agent: Option<&str>) -> String {
        let mut claims =
            json!({"sub": "client-app", "scope": scope, "exp": WALL + 600, "iat": WALL});
        if let Some(a) = agent {
            claims[AGENT_CLAIM] = json!(a);
        }
        self.keys
            .sign(alg, Some(auth_support::kid_for(alg)), &claims)
    }

    /// Drives one request to its answer, performing fetches against the fake IdP.
    fn run(
        &mut self,
        method: &Method,
        path: &str,
        token: Option<&str>,
        body: &[u8],
        transport: Transport,
        now: Now,
    ) -> (Response<Vec<u8>>, Option<Outcome>) {
        let mut headers = HeaderMap::new();
        if let Some(t) = token {
            headers.insert(
                header::AUTHORIZATION,
                format!("Bearer {t}").parse().unwrap(),
            );
        }
        let head = RequestHead {
            method,
            path,
            headers: &headers,
            peer: None,
            transport,
        };
        let mut ex = self.server.handle_request(&head, now);
        loop {
            match ex.poll_step() {
                Step::Fetch(request) => {
                    assert_eq!(request.uri(), "https://idp.example.com/jwks");
                    self.fetches += 1;
                    let result = self
                        .idp
                        .clone()
                        .map(Response::new)
                        .ok_or_else(|| "down".to_owned());
                    self.server.handle_fetched(&mut ex, result, now);
                }
                Step::AwaitFetch => self.server.handle_fetch_waited(&mut ex, now),
                Step::Claim(_) | Step::AwaitClaim { .. } => panic!("no shared replay here"),
                Step::ReadBody { limit } => {
                    ex.handle_body(&body[..body.len().min(limit + 1)], now.wall)
                }
                Step::Admit => self.server.handle_admission(&mut ex, now),
                Step::Invoke(inv) => {
                    ex.handle_outcome(HandlerOutcome::Skill(SkillResult::echo(&inv)), now.wall)
                }
                Step::RenderMetrics => ex.handle_metrics(&Default::default()),
                Step::CheckHealth => ex.handle_health(Default::default(), now.monotonic),
                Step::Notify(_) => {}
                Step::Respond(reply) => return (reply.response, reply.record.map(|r| r.outcome)),
                other => panic!("unexpected step {other:?}"),
            }
        }
    }

    fn post(
        &mut self,
        token: Option<&str>,
        sender: &str,
        now: Now,
    ) -> (Response<Vec<u8>>, Option<Outcome>) {
        self.run(
            &Method::POST,
            "/asap",
            token,
            &body(sender),
            Transport::Http,
            now,
        )
    }
}

fn json_of(r: &Response<Vec<u8>>) -> Value {
    serde_json::from_slice(r.body()).unwrap()
}

fn challenge(r: &Response<Vec<u8>>) -> String {
    r.headers()
        .get(header::WWW_AUTHENTICATE)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[test]
fn first_request_fetches_the_key_set_then_cached_keys_answer_immediately() {
    let mut rig = Rig::new(ServerAuth::new);
    for alg in ["RS256", "ES256", "EdDSA"] {
        let token = rig.token(alg, "asap:execute", Some("urn:asap:agent:client"));
        let (r, outcome) = rig.post(Some(&token), "urn:asap:agent:client", rig.now(1));
        assert_eq!(
            r.status(),
            200,
            "{alg}: {}",
            String::from_utf8_lossy(r.body())
        );
        assert_eq!(
            json_of(&r)["result"]["envelope"]["payload"]["result"]["echoed"]["m"],
            1
        );
        assert_eq!(outcome, Some(Outcome::Ok));
    }
    assert_eq!(rig.fetches, 1, "one key-set fetch for all three tokens");
}

/// Each hostile case at the server level: (what, token, sender, status, challenge or body fragment).
#[test]
fn attack_table_at_the_server() {
    let mut rig = Rig::new(ServerAuth::new);
    let good_agent = "urn:asap:agent:client";
    let valid = rig.token("RS256", "asap:execute", Some(good_agent));
    let read_only = rig.token("RS256", "asap:read", Some(good_agent));
    let expired = rig.keys.sign(
        "RS256",
        Some("rsa-1"),
        &json!({"sub": "c", "scope": "asap:execute", "exp": WALL - 3600}),
    );
    let no_exp = rig.keys.sign(
        "RS256",
        Some("rsa-1"),
        &json!({"sub": "c", "scope": "asap:execute"}),
    );
    let none_alg = format!(
        "{}.{}.",
        auth_support::b64(r#"{"alg":"none"}"#),
        auth_support::b64(r#"{"sub":"c","scope":"asap:execute","exp":1900000000}"#)
    );
    let mut tampered = valid.clone();
    let mid = tampered.find('.').unwrap() + 3;
    tampered.replace_range(
        mid..=mid,
        if &tampered[mid..=mid] == "A" {
            "B"
        } else {
            "A"
        },
    );
    // Over the JWS header cap (512 B encoded) but under the HTTP header cap.
    let big_header = format!("{}.e30.c2ln", "a".repeat(4096));
    let cases: Vec<(&str, Option<&str>, &str, u16, &str)> = vec![
        ("no token", None, good_agent, 401, "Bearer"),
        (
            "none alg",
            Some(&none_alg),
            good_agent,
            401,
            "invalid_token",
        ),
        ("expired", Some(&expired), good_agent, 401, "invalid_token"),
        (
            "missing exp",
            Some(&no_exp),
            good_agent,
            401,
            "invalid_token",
        ),
        (
            "tampered",
            Some(&tampered),
            good_agent,
            401,
            "invalid_token",
        ),
        (
            "oversized JWS header",
            Some(&big_header),
            good_agent,
            401,
            "invalid_token",
        ),
        (
            "read scope on send",
            Some(&read_only),
            good_agent,
            403,
            "insufficient_scope",
        ),
        (
            "token for another agent",
            Some(&valid),
            "urn:asap:agent:mallory",
            403,
            "",
        ),
    ];
    for (what, token, sender, status, fragment) in cases {
        let (r, outcome) = rig.post(token, sender, rig.now(1));
        assert_eq!(
            r.status(),
            status,
            "{what}: {}",
            String::from_utf8_lossy(r.body())
        );
        assert_eq!(outcome, Some(Outcome::Unauthorized), "{what}");
        if status == 401 || what.contains("scope") {
            assert!(
                challenge(&r).contains(fragment),
                "{what}: {:?}",
                challenge(&r)
            );
        } else {
            assert_eq!(
                json_of(&r)["detail"],
                "Sender does not match authenticated identity",
                "{what}"
            );
        }
    }
    // A 1 MiB token never reaches the validator: the header cap answers first.
    let huge = "a".repeat(1 << 20);
    let (r, _) = rig.post(Some(&huge), good_agent, rig.now(1));
    assert_eq!(r.status(), 431);
    assert_eq!(rig.fetches, 1);
}

#[test]
fn an_unknown_kid_flood_costs_at_most_one_fetch_per_30_s() {
    let mut rig = Rig::new(ServerAuth::new);
    let valid = rig.token("RS256", "asap:execute", None);
    assert_eq!(
        rig.post(Some(&valid), "urn:asap:agent:x", rig.now(0))
            .0
            .status(),
        200
    );
    for i in 0..200u64 {
        let t = rig.keys.sign(
            "RS256",
            Some(&format!("forged-{i}")),
            &json!({"sub": "c", "scope": "asap:execute", "exp": WALL + 600}),
        );
        let (r, _) = rig.post(Some(&t), "urn:asap:agent:x", rig.now(i / 10));
        assert_eq!(r.status(), 401);
    }
    // t = 0 .. 19 s: the first miss may refetch once, then 30 s must pass.
    assert!(rig.fetches <= 2, "fetches {}", rig.fetches);
}

#[test]
fn keys_that_cannot_be_had_answer_503_and_the_last_good_set_keeps_serving() {
    let mut rig = Rig::new(ServerAuth::new);
    rig.idp = None;
    let token = rig.token("ES256", "asap:execute", None);
    let (r, _) = rig.post(Some(&token), "urn:asap:agent:x", rig.now(0));
    assert_eq!(r.status(), 503);
    // The IdP comes back; after the back-off the set is fetched.
    rig.idp = Some(rig.keys.jwks_json());
    let (r, _) = rig.post(Some(&token), "urn:asap:agent:x", rig.now(10));
    assert_eq!(r.status(), 200);
    rig.idp = None;
    let (r, _) = rig.post(Some(&token), "urn:asap:agent:x", rig.now(60));
    assert_eq!(r.status(), 200, "cached keys serve while the IdP is down");
}

#[test]
fn a_second_request_waits_for_the_fetch_in_flight() {
    let mut rig = Rig::new(ServerAuth::new);
    let token = rig.token("RS256", "asap:execute", None);
    let mut headers = HeaderMap::new();
    headers.insert(
        header::AUTHORIZATION,
        format!("Bearer {token}").parse().unwrap(),
    );
    let head = RequestHead {
        method: &Method::POST,
        path: "/asap",
        headers: &headers,
        peer: None,
        transport: Transport::Http,
    };
    let now = rig.now(0);
    let mut first = rig.server.handle_request(&head, now);
    let mut second = rig.server.handle_request(&head, now);
    let Step::Fetch(_) = first.poll_step() else {
        panic!("first fetches")
    };
    let Step::AwaitFetch = second.poll_step() else {
        panic!("second waits")
    };
    rig.server
        .handle_fetched(&mut first, Ok(Response::new(rig.keys.jwks_json())), now);
    rig.server.handle_fetch_waited(&mut second, now);
    assert!(matches!(first.poll_step(), Step::ReadBody { .. }));
    assert!(matches!(second.poll_step(), Step::ReadBody { .. }));
    assert_eq!(second.identity().unwrap().subject, "client-app");
}

#[test]
fn metrics_need_a_token_once_auth_is_on_and_well_known_stays_public() {
    let mut rig = Rig::new(ServerAuth::new);
    let now = rig.now(0);
    let (r, _) = rig.run(
        &Method::GET,
        "/asap/metrics",
        None,
        b"",
        Transport::Http,
        now,
    );
    assert_eq!(r.status(), 401);
    let read = rig.token("RS256", "asap:read", None);
    let (r, _) = rig.run(
        &Method::GET,
        "/asap/metrics",
        Some(&read),
        b"",
        Transport::Http,
        now,
    );
    assert_eq!(r.status(), 200);
    let (r, _) = rig.run(
        &Method::GET,
        "/.well-known/asap/manifest.json",
        None,
        b"",
        Transport::Http,
        now,
    );
    assert_eq!(r.status(), 200);
    let (r, _) = rig.run(&Method::GET, "/health", None, b"", Transport::Http, now);
    assert_eq!(r.status(), 200);
}

#[test]
fn the_websocket_upgrade_is_authenticated_and_frames_are_bound_to_the_sender() {
    let mut rig = Rig::new(ServerAuth::new);
    let now = rig.now(0);
    let (r, _) = rig.run(&Method::GET, "/asap/ws", None, b"", Transport::Http, now);
    assert_eq!(r.status(), 401, "no upgrade without a token");
    let read = rig.token("RS256", "asap:read", None);
    let (r, _) = rig.run(
        &Method::GET,
        "/asap/ws",
        Some(&read),
        b"",
        Transport::Http,
        now,
    );
    assert_eq!(r.status(), 403);
    let token = rig.token("RS256", "asap:execute", Some("urn:asap:agent:client"));
    let (r, _) = rig.run(
        &Method::GET,
        "/asap/ws",
        Some(&token),
        b"",
        Transport::Http,
        now,
    );
    assert_eq!(r.status(), 101);
    let identity = r
        .extensions()
        .get::<Identity>()
        .expect("identity rides on the 101");
    assert_eq!(identity.expires_at, Some(UnixTime::from_secs(WALL + 600)));
    // Frames carry the upgrade headers: bound to the token's agent.
    let (r, _) = rig.run(
        &Method::POST,
        "/asap",
        Some(&token),
        &body("urn:asap:agent:client"),
        Transport::WebSocket,
        now,
    );
    assert_eq!(
        json_of(&r)["result"]["envelope"]["payload"]["result"]["echoed"]["m"],
        1
    );
    let (r, outcome) = rig.run(
        &Method::POST,
        "/asap",
        Some(&token),
        &body("urn:asap:agent:mallory"),
        Transport::WebSocket,
        now,
    );
    let answer = json_of(&r);
    assert_eq!(answer["error"]["code"], -32602, "{answer}");
    assert_eq!(answer["error"]["data"]["status_code"], 403, "{answer}");
    assert_eq!(
        answer["error"]["data"]["error"],
        "Sender does not match authenticated identity"
    );
    assert_eq!(answer["id"], 7);
    assert_eq!(outcome, Some(Outcome::Unauthorized));
    // A frame whose token no longer passes (here: none) is answered with the frame's id.
    let (r, _) = rig.run(
        &Method::POST,
        "/asap",
        None,
        &body("urn:asap:agent:client"),
        Transport::WebSocket,
        now,
    );
    let answer = json_of(&r);
    assert_eq!(r.status(), 200, "a frame answer, not an HTTP refusal");
    assert_eq!(answer["error"]["code"], -32600, "{answer}");
    assert_eq!(answer["error"]["data"]["status_code"], 401);
    assert_eq!(answer["id"], 7);
}

#[test]
fn without_auth_the_upgrade_is_open() {
    let mut rig = Rig::new(ServerAuth::new);
    let mut plain = Server::new(
        rig.server.manifest().clone(),
        ServerConfig::default(),
        rig.t0,
        1,
    );
    std::mem::swap(&mut rig.server, &mut plain);
    rig.server = Server::new(plain.manifest().clone(), ServerConfig::default(), rig.t0, 1);
    let (r, _) = rig.run(
        &Method::GET,
        "/asap/ws",
        None,
        b"",
        Transport::Http,
        rig.now(0),
    );
    assert_eq!(r.status(), 101);
    assert!(r.extensions().get::<Identity>().is_none());
}

#[test]
fn a_custom_bearer_validator_decides_and_binds() {
    let mut rig = Rig::new(|_| {
        ServerAuth::custom(|token: &str, scope: Option<Scope>, _now: UnixTime| {
            assert_eq!(scope, Some(Scope::Execute));
            match token {
                "alice-token" => Ok(Identity::new(
                    "alice",
                    vec!["asap:execute".into()],
                    Some(AgentUrn::new("urn:asap:agent:alice").unwrap()),
                )),
                _ => Err(AuthRejection::MissingToken),
            }
        })
    });
    let now = rig.now(0);
    assert_eq!(
        rig.post(Some("alice-token"), "urn:asap:agent:alice", now)
            .0
            .status(),
        200
    );
    assert_eq!(
        rig.post(Some("alice-token"), "urn:asap:agent:bob", now)
            .0
            .status(),
        403
    );
    assert_eq!(
        rig.post(Some("nope"), "urn:asap:agent:alice", now)
            .0
            .status(),
        401
    );
    assert_eq!(rig.fetches, 0);
}

#[test]
fn sender_binding_can_be_turned_off_and_the_execute_scope_replaced() {
    let mut rig = Rig::new(|a| {
        ServerAuth::new(a)
            .bind_sender(false)
            .execute_scope(Some(Scope::Admin))
    });
    let exec = rig.token("RS256", "asap:execute", Some("urn:asap:agent:client"));
    let admin = rig.token("RS256", "asap:admin", Some("urn:asap:agent:client"));
    let now = rig.now(0);
    assert_eq!(
        rig.post(Some(&exec), "urn:asap:agent:client", now)
            .0
            .status(),
        403
    );
    assert_eq!(
        rig.post(Some(&admin), "urn:asap:agent:other", now)
            .0
            .status(),
        200
    );
}
