//! The Python reference implementation for interop tests: where the shared kit
//! is, the reference's venv (installed once per test binary), and its server.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The shared directory (spec, interop scripts): `ASAP_SHARED_DIR`, else `../../shared`.
pub fn shared_dir() -> PathBuf {
    match std::env::var("ASAP_SHARED_DIR") {
        Ok(d) if !d.is_empty() => PathBuf::from(d),
        _ => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../shared"),
    }
}

/// The reference venv's python: `ASAP_INTEROP_VENV`, else what `interop/setup.sh` prints.
pub fn interop_python() -> Result<PathBuf, String> {
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
pub struct RefServer(Child);

impl Drop for RefServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `ref_server.py` on a free loopback port; `Err` says why it could not.
pub fn start_reference() -> Result<(RefServer, String), String> {
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

/// `Some(value)`, or `None` with a notice when the reference is unavailable;
/// with `ASAP_REQUIRE_INTEROP=1` (as in CI) unavailability fails the test instead.
pub fn required_or_skip<T>(what: &str, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(e) if std::env::var("ASAP_REQUIRE_INTEROP").as_deref() == Ok("1") => {
            panic!("{what} required (ASAP_REQUIRE_INTEROP=1) but unavailable: {e}")
        }
        Err(e) => {
            eprintln!("NOTICE: skipping {what}: {e}");
            None
        }
    }
}

/// The reference server, or `None` (with a notice) when it is unavailable and
/// `ASAP_REQUIRE_INTEROP` is not `1`.
pub fn reference_or_skip() -> Option<(RefServer, String)> {
    required_or_skip("reference-server interop", start_reference())
}

/// The reference venv's python, or `None` as [`required_or_skip`] says.
pub fn python_or_skip(what: &str) -> Option<PathBuf> {
    required_or_skip(what, interop_python())
}
