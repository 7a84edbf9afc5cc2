//! Interop with the Python reference: its own checker (`check_server.py`) drives `asap serve`.
//!
//! The reference venv comes from `ASAP_INTEROP_VENV` or is installed with the shared
//! kit's `interop/setup.sh`. Without the kit the test prints one line and passes,
//! unless `ASAP_REQUIRE_INTEROP=1` (CI), which makes it fail.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

use asap_tests::interop::{kit_python_or_skip, shared_dir};

/// The running agent; its state directory lives (and is removed) with it.
struct Agent(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `asap serve` on a free loopback port and returns its base URL.
fn start_asap(extra: &[&str]) -> (Agent, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = dir.path().join("state.db");
    let mut child = Command::new(env!("CARGO_BIN_EXE_asap"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--rate-limit",
            "none",
            "--db",
        ])
        .arg(&db)
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("start asap serve");
    let stdout = child.stdout.take().expect("stdout");
    let mut lines = BufReader::new(stdout).lines();
    let first = lines
        .next()
        .expect("asap serve printed nothing")
        .expect("read stdout");
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {first:?}"))
        .to_owned();
    // Keep draining stdout so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    (Agent(child, dir), url)
}

#[test]
fn reference_checker_passes_against_asap_serve() {
    let Some(python) = kit_python_or_skip("reference checker (check_server.py)") else {
        return;
    };
    let (_agent, url) = start_asap(&[]);
    let out = Command::new(&python)
        .arg(shared_dir().join("interop/check_server.py"))
        .arg(&url)
        .args(["--groups", "http,discovery"])
        .output()
        .expect("run check_server.py");
    let text = String::from_utf8_lossy(&out.stdout);
    println!("{text}{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        out.status.success(),
        "check_server.py reported failures:\n{text}"
    );
    assert!(
        text.contains(" 0 failed"),
        "unexpected checker output:\n{text}"
    );
}
