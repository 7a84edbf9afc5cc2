//! The Python reference implementation for interop tests: where the shared
//! interop kit is, the reference's venv (installed once per test binary), and
//! its server. Every interop test finds the kit through this module.
//!
//! The kit is `$ASAP_SHARED_DIR` when set, else `../shared` beside the
//! repository (`interop/setup.sh` must be in it). A test that cannot have it
//! prints one line and passes, unless `ASAP_REQUIRE_INTEROP=1` (CI), which
//! makes it fail; see [`required_or_skip`].

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Where the kit is looked for when `ASAP_SHARED_DIR` is unset: `../shared`
/// beside the repository (relative to this crate, `tests/`).
fn sibling_kit() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared")
}

/// The shared kit (interop scripts): `$ASAP_SHARED_DIR`, else `../shared` beside
/// the repository; `Err` says where it looked and how to point at it.
pub fn kit_dir() -> Result<PathBuf, String> {
    let (dir, from_env) = match std::env::var_os("ASAP_SHARED_DIR") {
        Some(d) if !d.is_empty() => (PathBuf::from(d), true),
        _ => (sibling_kit(), false),
    };
    if dir.join("interop/setup.sh").is_file() {
        return Ok(dir);
    }
    Err(if from_env {
        format!(
            "interop kit not found: ASAP_SHARED_DIR={} has no interop/setup.sh",
            dir.display()
        )
    } else {
        "interop kit not found (set ASAP_SHARED_DIR to the shared kit, or put it beside the repository as ../shared)".to_owned()
    })
}

/// The shared kit's directory, for tests that already hold the kit's python
/// (from [`python_or_skip`] or [`interop_python`], which check that it exists).
///
/// # Panics
///
/// When the kit cannot be found: call it only after one of those succeeded.
#[must_use]
pub fn shared_dir() -> PathBuf {
    kit_dir().unwrap_or_else(|e| panic!("{e}"))
}

/// The reference venv's python: `ASAP_INTEROP_VENV`, else what the kit's
/// `interop/setup.sh` prints (it installs the venv on first use).
pub fn interop_python() -> Result<PathBuf, String> {
    // Once per test binary: tests run in parallel and setup.sh must not race with itself.
    static PYTHON: std::sync::OnceLock<Result<PathBuf, String>> = std::sync::OnceLock::new();
    PYTHON.get_or_init(find_interop_python).clone()
}

fn find_interop_python() -> Result<PathBuf, String> {
    let venv = match std::env::var("ASAP_INTEROP_VENV") {
        Ok(v) if !v.is_empty() => PathBuf::from(v),
        _ => {
            let setup = kit_dir()?.join("interop/setup.sh");
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

/// The kit and the reference venv's python, both checked: what a test driving
/// the kit's scripts needs.
fn kit_and_python() -> Result<PathBuf, String> {
    kit_dir()?;
    interop_python()
}

/// The reference server process, killed on drop.
pub struct RefServer(Child);

impl Drop for RefServer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A free loopback port never handed out before in this process. Tests run in
/// parallel: two of them asking the OS for a free port at once may be given the
/// same one (it is released before the server binds it); the second server
/// then fails to bind while the first one's answers make it look ready, and
/// its test loses the server when the other test ends.
fn unused_port() -> Result<u16, String> {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    for _ in 0..100 {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    Err("no unused loopback port after 100 tries".into())
}

/// Starts `ref_server.py` on a free loopback port; `Err` says why it could not.
pub fn start_reference() -> Result<(RefServer, String), String> {
    let python = kit_and_python()?;
    let port = unused_port()?;
    let script = kit_dir()?.join("interop/ref_server.py");
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

/// `Some(value)`, or `None` after one line on stderr saying what is skipped and
/// why; with `ASAP_REQUIRE_INTEROP=1` (as in CI) unavailability fails the test.
///
/// # Panics
///
/// When `found` is an error and `ASAP_REQUIRE_INTEROP=1`.
pub fn required_or_skip<T>(what: &str, found: Result<T, String>) -> Option<T> {
    match found {
        Ok(v) => Some(v),
        Err(e) if std::env::var("ASAP_REQUIRE_INTEROP").as_deref() == Ok("1") => {
            panic!("{what} required (ASAP_REQUIRE_INTEROP=1) but unavailable: {e}")
        }
        Err(e) => {
            // Straight to the process's stderr, past the test harness's capture:
            // a skipped interop test must be visible in a plain `cargo test`.
            let _ = writeln!(
                std::io::stderr(),
                "NOTICE: skipping {what}: {e}; ASAP_REQUIRE_INTEROP=1 fails instead"
            );
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
/// Use it for scripts of this repository run with the reference installed.
pub fn python_or_skip(what: &str) -> Option<PathBuf> {
    required_or_skip(what, interop_python())
}

/// The reference venv's python with the kit present (its scripts are under
/// [`shared_dir`]`/interop`), or `None` as [`required_or_skip`] says.
pub fn kit_python_or_skip(what: &str) -> Option<PathBuf> {
    required_or_skip(what, kit_and_python())
}
