//! The tokio client on loopback: against the asap-rs tokio server, and
//! against scripted servers for retries, the breaker and registries. Protocol
//! timing runs on a manual clock: no test waits on wall time for it.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use asap_proto::client::{ClientError as UrlError, SendError, TransportErrorKind};
use asap_proto::discovery::HealthVerdict;
use asap_proto::model::{
    AgentUrn, Envelope, Manifest, Payload, Skill, TaskRequest, Timestamp, UnixTime,
};
use asap_proto::reliability::{Backoff, CircuitBreakerConfig, CircuitState, RetryPolicy};
use asap_proto::server::{HealthReport, ServerConfig};
use asap_tokio::client::{
    Client, ClientError, ClientHandle as _, ClientOptions, Clock, Fault, Sleep,
};
use asap_tokio::Agent;
use axum::body::Body;
use axum::extract::State;

const AGENT: &str = "urn:asap:agent:tokio-echo";

/// Time moves only when the client sleeps or the test advances it.
#[derive(Debug)]
struct ManualClock {
    base: Instant,
    offset: Mutex<Duration>,
    sleeps: Mutex<Vec<Duration>>,
}

impl ManualClock {
    fn new() -> Arc<Self> {
        Arc::new(Self {
            base: Instant::now(),
            offset: Mutex::new(Duration::ZERO),
            sleeps: Mutex::new(Vec::new()),
        })
    }
    fn advance(&self, d: Duration) {
        *self.offset.lock().unwrap() += d;
    }
    fn sleeps(&self) -> Vec<Duration> {
        self.sleeps.lock().unwrap().clone()
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + *self.offset.lock().unwrap()
    }
    fn sleep_until(&self, deadline: Instant) -> Sleep {
        let now = self.now();
        if deadline > now {
            self.sleeps.lock().unwrap().push(deadline - now);
            self.advance(deadline - now);
        }
        Box::pin(std::future::ready(()))
    }
}

fn manifest() -> Manifest {
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
    m
}

async fn start(unhealthy: bool) -> String {
    let agent = Agent::builder(manifest())
        .config(ServerConfig {
            rate_limit: None,
            ..ServerConfig::default()
        })
        .echo_skill("echo")
        .health(move || HealthReport {
            unhealthy,
            load: None,
        })
        .build();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(asap_tokio::serve(listener, agent, std::future::pending()));
    format!("http://{addr}")
}

fn request(recipient: &str, skill: &str) -> Envelope {
    let mut input = serde_json::Map::new();
    input.insert("message".into(), "hello".into());
    Envelope::new(
        "01KDXZ0000ENVREQ0000000001".into(),
        Timestamp::from_unix(UnixTime::from_system_time(SystemTime::now())),
        AgentUrn::new("urn:asap:agent:tester").unwrap(),
        AgentUrn::new(recipient).unwrap(),
        Payload::TaskRequest(TaskRequest::new("conv-1", skill, input)),
    )
}

/// One recorded request: method, path, headers, body.
type Seen = (String, String, Vec<(String, String)>, Vec<u8>);

type Answer = (u16, Vec<(&'static str, String)>, Vec<u8>);

#[derive(Default)]
struct Script {
    answers: Mutex<VecDeque<Answer>>,
    seen: Mutex<Vec<Seen>>,
}

async fn scripted(State(s): State<Arc<Script>>, req: http::Request<Body>) -> http::Response<Body> {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, usize::MAX)
        .await
        .unwrap()
        .to_vec();
    let headers = parts
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_owned(), v.to_str().unwrap_or("").to_owned()))
        .collect();
    s.seen.lock().unwrap().push((
        parts.method.to_string(),
        parts.uri.to_string(),
        headers,
        body,
    ));
    let (status, headers, body) = {
        let mut a = s.answers.lock().unwrap();
        if a.len() > 1 {
            a.pop_front().unwrap()
        } else {
            a.front().cloned().unwrap()
        }
    };
    if status == 0 {
        // Never answer: a request left in flight.
        std::future::pending::<()>().await;
    }
    let mut resp = http::Response::builder().status(status);
    for (k, v) in headers {
        resp = resp.header(k, v);
    }
    resp.body(Body::from(body)).unwrap()
}

/// A loopback server answering from a script (then repeating its last answer).
struct Scripted {
    addr: SocketAddr,
    script: Arc<Script>,
}

impl Scripted {
    async fn start(answers: Vec<Answer>) -> Self {
        let script = Arc::new(Script {
            answers: Mutex::new(answers.into()),
            seen: Mutex::new(Vec::new()),
        });
        let app = axum::Router::new()
            .fallback(scripted)
            .with_state(Arc::clone(&script));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        Self { addr, script }
    }
    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
    fn seen(&self) -> Vec<Seen> {
        self.script.seen.lock().unwrap().clone()
    }
}

fn ok_envelope() -> Vec<u8> {
    br#"{"jsonrpc":"2.0","result":{"envelope":{"id":"01KDXZ0000ENVRESP000000001","asap_version":"0.1","timestamp":"2026-01-01T00:00:00Z","sender":"urn:asap:agent:tokio-echo","recipient":"urn:asap:agent:tester","payload_type":"task.response","payload":{"task_id":"t","status":"completed"},"correlation_id":"01KDXZ0000ENVREQ0000000001"}},"id":"req-1"}"#.to_vec()
}

fn no_jitter(max_attempts: u32) -> RetryPolicy {
    RetryPolicy {
        max_attempts,
        backoff: Backoff::default().without_jitter(),
        ..RetryPolicy::default()
    }
}

#[tokio::test]
async fn send_echo_round_trip() {
    let url = start(false).await;
    let client = Client::new(&url).unwrap();
    assert_eq!(client.base_url(), Some(url.as_str()));
    let req = request(AGENT, "echo");
    let reply = client.send(&req).await.unwrap();
    assert_eq!(reply.payload_type, "task.response");
    assert_eq!(reply.correlation_id.as_deref(), Some(req.id.as_str()));
    assert_eq!(reply.sender, AGENT);
    let Payload::TaskResponse(r) = reply.payload().unwrap() else {
        panic!("not a task.response")
    };
    assert_eq!(r.result.unwrap()["echoed"]["message"], "hello");
    // A second send on the same connection pool, from another task.
    let c2 = client.clone();
    tokio::spawn(async move { c2.send(&request(AGENT, "echo")).await.unwrap() })
        .await
        .unwrap();
    let st = client.stats();
    assert_eq!((st.sends, st.send_attempts), (2, 2));
    assert_eq!(client.breaker_state(&url), Some(CircuitState::Closed));
}

#[tokio::test]
async fn remote_jsonrpc_error_is_a_typed_result_and_keeps_the_breaker_closed() {
    let url = start(false).await;
    let client = Client::new(ClientOptions::default().circuit_breaker(Some(
        CircuitBreakerConfig {
            failure_threshold: 1,
            ..CircuitBreakerConfig::default()
        },
    )))
    .unwrap();
    let mut env = request(AGENT, "echo");
    env.payload_type = "no.such.type".into();
    let err = client.send_to(&url, &env).await.unwrap_err();
    assert!(err.remote_code().is_some(), "{err:?}");
    assert!(matches!(err, ClientError::Send(SendError::Remote { .. })));
    assert_eq!(client.breaker_state(&url), Some(CircuitState::Closed));
    assert_eq!(
        client.send(&request(AGENT, "echo")).await.unwrap_err(),
        ClientError::NoBaseUrl
    );
}

#[tokio::test]
async fn discover_caches_then_revalidates_with_304() {
    let url = start(false).await;
    let clock = ManualClock::new();
    let client = Client::with_clock(ClientOptions::default(), clock.clone()).unwrap();
    let m = client.discover(&url).await.unwrap();
    assert_eq!(m.id, AGENT);
    assert!(m.has_skill("echo"));
    let again = client.discover(&format!("{url}/")).await.unwrap();
    assert!(Arc::ptr_eq(&m, &again), "served from the cache");
    clock.advance(Duration::from_secs(299));
    client.discover(&url).await.unwrap();
    let st = client.stats();
    assert_eq!((st.manifest_hits, st.manifest_fetches), (2, 1));
    // max-age=300 and ttl_seconds=300: stale at exactly 300 s, revalidated with If-None-Match.
    clock.advance(Duration::from_secs(1));
    let revalidated = client.discover(&url).await.unwrap();
    assert_eq!(*revalidated, *m);
    let st = client.stats();
    assert_eq!((st.manifest_fetches, st.manifest_not_modified), (2, 1));
    // Fresh again for another 300 s.
    client.discover(&url).await.unwrap();
    assert_eq!(client.stats().manifest_fetches, 2);
}

#[tokio::test]
async fn discover_sends_if_none_match_and_errors_are_typed() {
    let body = serde_json::to_vec(&manifest()).unwrap();
    let s = Scripted::start(vec![
        (
            200,
            vec![
                ("etag", "\"v1\"".into()),
                ("cache-control", "max-age=5".into()),
            ],
            body,
        ),
        (
            304,
            vec![
                ("etag", "\"v1\"".into()),
                ("cache-control", "max-age=5".into()),
            ],
            Vec::new(),
        ),
        (404, vec![], b"gone".to_vec()),
    ])
    .await;
    let clock = ManualClock::new();
    let client = Client::with_clock(ClientOptions::default(), clock.clone()).unwrap();
    client.discover(&s.url()).await.unwrap();
    clock.advance(Duration::from_secs(5));
    client.discover(&s.url()).await.unwrap();
    clock.advance(Duration::from_secs(5));
    let err = client.discover(&s.url()).await.unwrap_err();
    assert_eq!(err.fault(), Fault::Peer);
    assert!(err.to_string().contains("404"), "{err}");
    let seen = s.seen();
    assert_eq!(seen.len(), 3);
    assert_eq!(seen[0].1, "/.well-known/asap/manifest.json");
    let inm = |i: usize| {
        seen[i]
            .2
            .iter()
            .find(|(k, _)| k == "if-none-match")
            .map(|(_, v)| v.clone())
    };
    assert_eq!(inm(0), None);
    assert_eq!(inm(1).as_deref(), Some("\"v1\""));
    assert_eq!(inm(2).as_deref(), Some("\"v1\""));
    // The failed entry is gone: the next fetch is unconditional.
    let _ = client.discover(&s.url()).await;
    assert_eq!(s.seen().len(), 4);
    assert_eq!(
        s.seen()[3].2.iter().find(|(k, _)| k == "if-none-match"),
        None
    );
}

#[tokio::test]
async fn health_is_a_verdict_even_when_unhealthy() {
    let url = start(false).await;
    let client = Client::new(ClientOptions::default()).unwrap();
    let v = client.health_check(&url).await.unwrap();
    assert!(v.is_healthy());
    let doc = v.status().unwrap();
    assert_eq!(doc.agent_id, AGENT);
    assert_eq!(doc.version, "1.0.0");

    let sick = start(true).await;
    let v = client.health_check(&sick).await.unwrap();
    assert!(!v.is_healthy());
    match &*v {
        HealthVerdict::Unhealthy(Some(doc)) => assert_eq!(doc.status, "unhealthy"),
        other => panic!("{other:?}"),
    }
    // Cached: no second request.
    client.health_check(&sick).await.unwrap();
    let st = client.stats();
    assert_eq!((st.health_fetches, st.health_hits), (2, 1));
}

#[tokio::test]
async fn registry_from_a_loopback_url() {
    let registry = br#"{"version":"1.0","updated_at":"2026-01-01T00:00:00Z","agents":[
        {"id":"urn:asap:agent:a","name":"A","description":"a","endpoints":{"http":"http://127.0.0.1:1/asap"},"skills":["echo","sum"],"asap_version":"0.1"},
        {"id":"urn:asap:agent:b","name":"B","description":"b","endpoints":{"http":"http://127.0.0.1:2/asap"},"skills":["sum"],"asap_version":"0.1"}]}"#;
    let s = Scripted::start(vec![(200, vec![], registry.to_vec())]).await;
    let clock = ManualClock::new();
    let client = Client::with_clock(ClientOptions::default(), clock.clone()).unwrap();
    let url = format!("{}/registry.json", s.url());
    let found = client.find_by_skill(&url, "sum").await.unwrap();
    let ids: Vec<&str> = found.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids, ["urn:asap:agent:a", "urn:asap:agent:b"]);
    assert_eq!(client.find_by_skill(&url, "echo").await.unwrap().len(), 1);
    assert!(client.find_by_skill(&url, "Echo").await.unwrap().is_empty());
    assert_eq!(s.seen().len(), 1, "15 min cache");
    clock.advance(Duration::from_secs(900));
    assert_eq!(client.registry(&url).await.unwrap().agents.len(), 2);
    assert_eq!(s.seen().len(), 2);
    assert_eq!(s.seen()[1].1, "/registry.json");
    // Plain http off loopback is refused before any I/O.
    let err = client
        .registry("http://registry.example/registry.json")
        .await
        .unwrap_err();
    assert!(matches!(
        err,
        ClientError::Config(UrlError::InsecureUrl { .. })
    ));
    assert_eq!(err.fault(), Fault::Local);
}

#[tokio::test]
async fn invalid_registry_is_a_peer_error() {
    let s = Scripted::start(vec![(200, vec![], br#"{"version":"1"}"#.to_vec())]).await;
    let client = Client::new(ClientOptions::default()).unwrap();
    let err = client.registry(&s.url()).await.unwrap_err();
    assert_eq!(err.fault(), Fault::Peer);
    assert!(err.to_string().contains("updated_at"), "{err}");
}

#[tokio::test]
async fn retries_503_then_429_honouring_retry_after_with_the_same_bytes() {
    let s = Scripted::start(vec![
        (503, vec![], b"busy".to_vec()),
        (429, vec![("retry-after", "7".into())], Vec::new()),
        (
            200,
            vec![("content-type", "application/json".into())],
            ok_envelope(),
        ),
    ])
    .await;
    let clock = ManualClock::new();
    let client = Client::with_clock(
        ClientOptions::default()
            .base_url(s.url())
            .retry_policy(no_jitter(3)),
        clock.clone(),
    )
    .unwrap();
    let reply = client.send(&request(AGENT, "echo")).await.unwrap();
    assert_eq!(reply.payload_type, "task.response");
    assert_eq!(
        clock.sleeps(),
        [Duration::from_secs(1), Duration::from_secs(7)]
    );
    let seen = s.seen();
    assert_eq!(seen.len(), 3);
    assert!(seen
        .iter()
        .all(|r| r.0 == "POST" && r.1 == "/asap" && r.3 == seen[0].3));
    let key = |r: &Seen| {
        r.2.iter()
            .find(|(k, _)| k == "x-idempotency-key")
            .map(|(_, v)| v.clone())
            .unwrap()
    };
    assert_eq!(key(&seen[0]), key(&seen[2]));
    let body: serde_json::Value = serde_json::from_slice(&seen[0].3).unwrap();
    assert_eq!(body["method"], "asap.send");
    assert_eq!(body["id"], "req-1");
    assert_eq!(body["params"]["idempotency_key"], key(&seen[0]));
    assert_eq!(client.stats().send_attempts, 3);
}

#[tokio::test]
async fn exhausted_retries_report_the_last_status() {
    let s = Scripted::start(vec![(
        429,
        vec![("retry-after", "2".into())],
        br#"{"jsonrpc":"2.0","id":null,"error":{"code":429,"message":"Rate limit exceeded","data":{"limit":"1 per 1 minute"}}}"#.to_vec(),
    )]).await;
    let clock = ManualClock::new();
    let client =
        Client::with_clock(ClientOptions::default().base_url(s.url()), clock.clone()).unwrap();
    let err = client.send(&request(AGENT, "echo")).await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "rate limited by the agent (1 per 1 minute)"
    );
    assert_eq!(clock.sleeps(), [Duration::from_secs(2); 2]);
    assert_eq!(s.seen().len(), 3);
}

#[tokio::test]
async fn breaker_opens_refuses_without_io_and_probes_after_the_timeout() {
    let s = Scripted::start(vec![(503, vec![], Vec::new())]).await;
    let clock = ManualClock::new();
    let client = Client::with_clock(
        ClientOptions::default()
            .base_url(s.url())
            .retry_policy(RetryPolicy::no_retries())
            .circuit_breaker(Some(CircuitBreakerConfig {
                failure_threshold: 2,
                ..CircuitBreakerConfig::default()
            })),
        clock.clone(),
    )
    .unwrap();
    let env = request(AGENT, "echo");
    for _ in 0..2 {
        let e = client.send(&env).await.unwrap_err();
        assert!(matches!(
            e,
            ClientError::Send(SendError::ServerError { status: 503, .. })
        ));
    }
    assert_eq!(client.breaker_state(&s.url()), Some(CircuitState::Open));
    let e = client.send(&env).await.unwrap_err();
    assert!(e.is_circuit_open(), "{e:?}");
    assert_eq!(s.seen().len(), 2, "no I/O while open");
    clock.advance(Duration::from_secs(60));
    let e = client.send(&env).await.unwrap_err();
    assert!(!e.is_circuit_open());
    assert_eq!(s.seen().len(), 3, "one half-open probe");
    assert_eq!(client.breaker_state(&s.url()), Some(CircuitState::Open));
    assert_eq!(client.stats().circuit_rejections, 1);
}

#[tokio::test]
async fn transport_failures_are_retried_and_blamed_on_the_network() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let clock = ManualClock::new();
    let client = Client::with_clock(
        ClientOptions::default()
            .base_url(format!("http://127.0.0.1:{port}"))
            .retry_policy(no_jitter(3)),
        clock.clone(),
    )
    .unwrap();
    let err = client.send(&request(AGENT, "echo")).await.unwrap_err();
    match &err {
        ClientError::Transport { kind, url, .. } => {
            assert_eq!(*kind, TransportErrorKind::Connect);
            assert_eq!(*url, format!("http://127.0.0.1:{port}/asap"));
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(err.fault(), Fault::Network);
    assert_eq!(
        clock.sleeps(),
        [Duration::from_secs(1), Duration::from_secs(2)]
    );
    let err = client
        .discover(&format!("http://127.0.0.1:{port}"))
        .await
        .unwrap_err();
    assert_eq!(err.fault(), Fault::Network);
}

#[tokio::test]
async fn oversized_and_malformed_responses_are_the_peers_fault() {
    let s = Scripted::start(vec![(200, vec![], vec![b' '; 4096])]).await;
    let client = Client::new(
        ClientOptions::default()
            .base_url(s.url())
            .max_response_size(1024),
    )
    .unwrap();
    let err = client.send(&request(AGENT, "echo")).await.unwrap_err();
    assert!(
        matches!(err, ClientError::ResponseTooLarge { limit: 1024, ref detail, .. } if !detail.is_empty()),
        "{err:?}"
    );
    assert_eq!(err.fault(), Fault::Peer);
    // The user sees the URL, the limit and the HTTP library's text, and the agent was asked once.
    let text = err.to_string();
    assert!(
        text.starts_with(&format!(
            "response from {}/asap exceeds 1024 bytes (",
            s.url()
        )),
        "{text}"
    );
    assert_eq!(s.seen().len(), 1, "not retried");
    let s = Scripted::start(vec![(200, vec![], b"not json".to_vec())]).await;
    let err = Client::new(s.url())
        .unwrap()
        .send(&request(AGENT, "echo"))
        .await
        .unwrap_err();
    assert!(matches!(err, ClientError::Send(SendError::InvalidJson(_))));
    assert_eq!(err.fault(), Fault::Peer);
}

#[tokio::test]
async fn plain_http_only_on_loopback_unless_allowed() {
    for bad in ["http://agent.example.com", "http://10.1.2.3:8000"] {
        let err = Client::new(bad).unwrap_err();
        assert_eq!(
            err,
            ClientError::Config(UrlError::InsecureUrl { url: bad.into() }),
            "{bad}"
        );
        assert_eq!(err.fault(), Fault::Local);
    }
    for ok in [
        "https://agent.example.com",
        "http://localhost:1",
        "http://[::1]:1",
    ] {
        Client::new(ok).unwrap();
    }
    Client::new(
        ClientOptions::default()
            .base_url("http://agent.example.com")
            .allow_insecure_http(true),
    )
    .unwrap();
    let client = Client::new(ClientOptions::default()).unwrap();
    // Refused before any I/O, with the error that names the insecure URL.
    for refused in [
        client
            .discover("http://agent.example.com")
            .await
            .unwrap_err(),
        client
            .health_check("http://agent.example.com")
            .await
            .unwrap_err(),
    ] {
        assert_eq!(
            refused,
            ClientError::Config(UrlError::InsecureUrl {
                url: "http://agent.example.com".into()
            })
        );
    }
    assert!(client.health_check("ftp://x").await.is_err());
}

#[tokio::test]
async fn a_dropped_send_gives_its_half_open_probe_back() {
    let s = Scripted::start(vec![
        (503, vec![], Vec::new()),
        (0, vec![], Vec::new()),
        (503, vec![], Vec::new()),
    ])
    .await;
    let clock = ManualClock::new();
    let client = Client::with_clock(
        ClientOptions::default()
            .base_url(s.url())
            .retry_policy(RetryPolicy::no_retries())
            .circuit_breaker(Some(CircuitBreakerConfig {
                failure_threshold: 1,
                ..CircuitBreakerConfig::default()
            })),
        clock.clone(),
    )
    .unwrap();
    let env = request(AGENT, "echo");
    client.send(&env).await.unwrap_err();
    assert_eq!(client.breaker_state(&s.url()), Some(CircuitState::Open));
    clock.advance(Duration::from_secs(60));
    let (c2, e2) = (client.clone(), env.clone());
    let probe = tokio::spawn(async move { c2.send(&e2).await });
    // Wait (bounded) until the probe is in flight on the real socket, then drop it.
    for _ in 0..5000 {
        if s.seen().len() == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert_eq!(s.seen().len(), 2);
    assert!(
        client.send(&env).await.unwrap_err().is_circuit_open(),
        "probe in use"
    );
    probe.abort();
    assert!(probe.await.unwrap_err().is_cancelled());
    let e = client.send(&env).await.unwrap_err();
    assert!(!e.is_circuit_open(), "the probe came back: {e:?}");
    assert_eq!(s.seen().len(), 3);
}

#[tokio::test]
async fn https_is_spoken_by_default() {
    // A plain-HTTP server behind an https:// URL: the TLS handshake fails in the transport.
    let s = Scripted::start(vec![(200, vec![], Vec::new())]).await;
    let url = format!("https://{}", s.addr);
    let client =
        Client::new(ClientOptions::default().retry_policy(RetryPolicy::no_retries())).unwrap();
    let err = client.health_check(&url).await.unwrap_err();
    assert!(matches!(err, ClientError::Transport { .. }), "{err:?}");
    assert_eq!(err.fault(), Fault::Network);
}
