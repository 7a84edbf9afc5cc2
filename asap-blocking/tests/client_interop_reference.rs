//! The blocking client against the Python reference server (`interop/ref_server.py`):
//! send `task.request`, discover with ETag revalidation, health.
//!
//! The reference venv comes from `ASAP_INTEROP_VENV` or `interop/setup.sh`; when
//! neither works the test prints a notice and passes, unless `ASAP_REQUIRE_INTEROP=1`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use asap_blocking::client::{Client, Clock};
use asap_proto::discovery::{check_version_compatibility, require_skill};
use asap_proto::model::{AgentUrn, Envelope, Payload, TaskRequest, Timestamp, UnixTime};

const REF_AGENT: &str = "urn:asap:agent:ref-echo";

/// The shared directory (spec, interop scripts): `ASAP_SHARED_DIR`, else `../../shared`.
fn shared_dir() -> PathBuf {
    match std::env::var("ASAP_SHARED_DIR") {
        Ok(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    }
}

/// The reference venv's python: `ASAP_INTEROP_VENV`, else what `interop/setup.sh` prints.
fn interop_python() -> Result<PathBuf, String> {
    // Once per test binary: tests run in parallel and setup.sh must not race with itself.
    static PYTHON: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    PYTHON.get_or_init(find_interop_python).clone()
}

fn find_interop_python() -> Result<PathBuf, String> {
    let venv = match std::env::var("ASAP_INTEROP_VENV") {
        Ok(v) if !v.is_empty() => PathBuf::from(v),
        _ => {
            let setup = shared_dir().join("interop/setup.sh");
            let out = Command::new("bash")
                .arg(&setup)
                .stderr(Stdio::inherit())
                .output()
                .map_err(|e| format!("cannot run {}: {e}", setup.display()))?;
            if !out.status.success() {
                return Err(format!("{} failed", setup.display()));
            }
            PathBuf::from(String::from_utf8_lossy(&out.stdout).trim().to_owned())
        }
    };
    let python = venv.join("bin/python");
    if python.exists() {
        Ok(python)
    } else {
        Err(format!("no python at {}", python.display()))
    }
}

/// The reference server process, killed on drop.
struct RefServer(Child);

impl Drop for RefServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ref_server.py` on a free loopback port; `Err` says why it could not.
fn start_reference() -> Result<(RefServer, String), String> {
    let python = interop_python()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(|e| e.to_string())?
        .port();
    let script = shared_dir().join("interop/ref_server.py");
    let child = Command::new(&python)
        .arg(&script)
        .args(["--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("cannot start {}: {e}", script.display()))?;
    let mut server = RefServer(child);
    // Real waiting, bounded: the Python process needs time to bind its socket.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok((server, format!("http://127.0.0.1:{port}")));
        }
        if let Ok(Some(status)) = server.0.try_wait() {
            return Err(format!("ref_server.py exited early: {status}"));
        }
        if Instant::now() > deadline {
            return Err("ref_server.py did not listen within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The reference server, or `None` (with a notice) when it is unavailable and
/// `ASAP_REQUIRE_INTEROP` is not `1`.
fn reference_or_skip() -> Option<(RefServer, String)> {
    match start_reference() {
        Ok(s) => Some(s),
        Err(e) if std::env::var("ASAP_REQUIRE_INTEROP").as_deref() == Ok("1") => {
            panic!("reference server required (ASAP_REQUIRE_INTEROP=1) but unavailable: {e}")
        }
        Err(e) => {
            eprintln!("NOTICE: skipping reference-server interop: {e}");
            None
        }
    }
}

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
    fn sleep_until(&self, deadline: Instant) {
        let now = self.now();
        *self.offset.lock().unwrap() += deadline.saturating_duration_since(now);
    }
}

fn task_request() -> Envelope {
    let mut input = serde_json::Map::new();
    input.insert("message".into(), "hello from asap-rs".into());
    Envelope::new(
        "01KDXZ0000ENVREQ0000000042".into(),
        Timestamp::from_unix(UnixTime::from_system_time(SystemTime::now())),
        AgentUrn::new("urn:asap:agent:asap-rs-blocking").unwrap(),
        AgentUrn::new(REF_AGENT).unwrap(),
        Payload::TaskRequest(TaskRequest::new("conv-interop", "echo", input)),
    )
}

#[test]
fn blocking_client_against_the_reference_server() {
    let Some((_server, url)) = reference_or_skip() else {
        return;
    };
    let clock = Arc::new(ManualClock {
        base: Instant::now(),
        offset: Mutex::new(Duration::ZERO),
    });
    let client = Client::builder()
        .base_url(&url)
        .clock(clock.clone())
        .build()
        .unwrap();

    // Discover: manifest validated, cached, then revalidated with If-None-Match → 304.
    let manifest = client.discover(&url).unwrap();
    assert_eq!(manifest.id, REF_AGENT);
    require_skill(&manifest, "echo").unwrap();
    check_version_compatibility(&manifest, None).unwrap();
    client.discover(&url).unwrap();
    *clock.offset.lock().unwrap() += Duration::from_secs(300);
    let again = client.discover(&url).unwrap();
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
    let health = client.health_check(&url).unwrap();
    assert!(health.is_healthy(), "{health:?}");
    assert_eq!(health.status().unwrap().agent_id, REF_AGENT);

    // Send task.request (the only payload the reference server registers).
    let req = task_request();
    let reply = client.send(&req).unwrap();
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
    let err = client.send(&other).unwrap_err();
    assert!(err.remote_code().is_some(), "{err:?}");
    assert_eq!(client.stats().send_attempts, 2);
}
