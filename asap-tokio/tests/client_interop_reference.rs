//! The tokio client against the Python reference server (`interop/ref_server.py`):
//! send `task.request`, discover with ETag revalidation, health.
//!
//! The reference venv comes from `ASAP_INTEROP_VENV` or `interop/setup.sh`; when
//! neither works the test prints a notice and passes, unless `ASAP_REQUIRE_INTEROP=1`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use asap_proto::discovery::{check_version_compatibility, require_skill};
use asap_proto::model::{AgentUrn, Envelope, Payload, TaskRequest, Timestamp, UnixTime};
use asap_tokio::client::{Client, ClientHandle as _, ClientOptions, Clock, Sleep};

use asap_tests::interop::reference_or_skip;

const REF_AGENT: &str = "urn:asap:agent:ref-echo";

/// Time moves only when the test advances it (or the client sleeps).
#[derive(Debug)]
struct ManualClock {
    base: Instant,
    offset: Mutex<Duration>,
}

impl Clock for ManualClock {
    fn now(&self) -> Instant {
        self.base + *self.offset.lock().unwrap()
    }
    fn sleep_until(&self, deadline: Instant) -> Sleep {
        let now = self.now();
        *self.offset.lock().unwrap() += deadline.saturating_duration_since(now);
        Box::pin(std::future::ready(()))
    }
}

fn task_request() -> Envelope {
    let mut input = serde_json::Map::new();
    input.insert("message".into(), "hello from asap-rs".into());
    Envelope::new(
        "01KDXZ0000ENVREQ0000000042".into(),
        Timestamp::from_unix(UnixTime::from_system_time(SystemTime::now())),
        AgentUrn::new("urn:asap:agent:asap-rs-tokio").unwrap(),
        AgentUrn::new(REF_AGENT).unwrap(),
        Payload::TaskRequest(TaskRequest::new("conv-interop", "echo", input)),
    )
}

#[tokio::test]
async fn tokio_client_against_the_reference_server() {
    let Some((_server, url)) = tokio::task::spawn_blocking(reference_or_skip)
        .await
        .unwrap()
    else {
        return;
    };
    let clock = Arc::new(ManualClock {
        base: Instant::now(),
        offset: Mutex::new(Duration::ZERO),
    });
    let client =
        Client::with_clock(ClientOptions::default().base_url(&url), clock.clone()).unwrap();

    // Discover: manifest validated, cached, then revalidated with If-None-Match → 304.
    let manifest = client.discover(&url).await.unwrap();
    assert_eq!(manifest.id, REF_AGENT);
    require_skill(&manifest, "echo").unwrap();
    check_version_compatibility(&manifest, None).unwrap();
    client.discover(&url).await.unwrap();
    *clock.offset.lock().unwrap() += Duration::from_secs(300);
    let again = client.discover(&url).await.unwrap();
    assert_eq!(*again, *manifest);
    let st = client.stats();
    assert_eq!(
        (
            st.manifest_fetches,
            st.manifest_hits,
            st.manifest_not_modified
        ),
        (2, 1, 1),
        "{st:?}"
    );

    // Health.
    let health = client.health_check(&url).await.unwrap();
    assert!(health.is_healthy(), "{health:?}");
    assert_eq!(health.status().unwrap().agent_id, REF_AGENT);

    // Send task.request (the only payload the reference server registers).
    let req = task_request();
    let reply = client.send(&req).await.unwrap();
    assert_eq!(reply.payload_type, "task.response");
    assert_eq!(reply.sender, REF_AGENT);
    assert_eq!(reply.correlation_id.as_deref(), Some(req.id.as_str()));
    let text = serde_json::to_string(&reply.payload).unwrap();
    assert!(text.contains("hello from asap-rs"), "{text}");
    // A payload type it does not handle is a JSON-RPC error, not a transport failure.
    let mut other = task_request();
    other.payload_type = "task.cancel".into();
    other.payload = serde_json::json!({"task_id": "t-1"})
        .as_object()
        .cloned()
        .unwrap();
    let err = client.send(&other).await.unwrap_err();
    assert!(err.remote_code().is_some(), "{err:?}");
    assert_eq!(client.stats().send_attempts, 2);
}

/// The WebSocket client against the reference's `/asap/ws`: the answer is
/// correlated, and the reference's acks (`received` only, never `processed`)
/// do not leave the envelope pending: its answer settles it.
#[tokio::test]
async fn ws_client_against_the_reference_server() {
    use asap_tokio::ws::{WsClient, WsClientConfig};
    let Some((_server, url)) = tokio::task::spawn_blocking(reference_or_skip)
        .await
        .unwrap()
    else {
        return;
    };
    let ws_url = url.replace("http://", "ws://");
    let client = WsClient::connect(&ws_url, WsClientConfig::default())
        .await
        .unwrap();
    for n in 0..3 {
        let mut req = task_request();
        req.id = format!("01KDXZ0000ENVREQWS0000000{n}");
        let reply = client.send(req.clone()).await.unwrap();
        assert_eq!(reply.payload_type, "task.response");
        assert_eq!(reply.correlation_id.as_deref(), Some(req.id.as_str()));
        assert_eq!(
            reply.payload["result"]["echoed"]["message"],
            "hello from asap-rs"
        );
    }
    client.close();
}
