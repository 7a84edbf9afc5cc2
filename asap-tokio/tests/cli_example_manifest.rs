//! `examples/manifest.json` (the README's `asap serve --manifest` example) is
//! accepted and served as written, and the CLI reads it back: the manifest
//! summary of `asap discover`, the echo skill, an unknown skill's message.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};

use serde_json::Value;

fn example() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../examples/manifest.json")
}

/// `asap serve`, killed on drop; its state directory lives as long.
struct Serving(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Serving {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `asap serve --manifest examples/manifest.json` on a free port; its base URL.
fn serve() -> (Serving, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_asap"))
        .args(["serve", "--bind", "127.0.0.1:0", "--rate-limit", "none"])
        .arg("--manifest")
        .arg(example())
        .arg("--db")
        .arg(dir.path().join("state.db"))
        .env("ASAP_LOG", "off")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().expect("asap serve printed nothing").unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no URL in {first:?}"))
        .to_owned();
    std::thread::spawn(move || for _ in lines {});
    (Serving(child, dir), url)
}

fn asap(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_asap"))
        .args(args)
        .env("ASAP_LOG", "off")
        .output()
        .unwrap()
}

#[test]
fn the_example_manifest_is_served_as_written() {
    let (_agent, url) = serve();

    let o = asap(&["discover", &url]);
    assert!(o.status.success(), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "My echo agent 1.0.0  (urn:asap:agent:my-echo)
  An ASAP agent served by `asap serve --manifest examples/manifest.json`
  skills (1):
    echo  Echo back the input
  endpoints:
    asap       http://127.0.0.1:8000/asap
    events     ws://127.0.0.1:8000/asap/ws
  auth:        none
  cache TTL:   300 s
  state kept:  yes   streaming: no   envelope version: 0.1
"
    );

    let o = asap(&["discover", &url, "--json"]);
    assert!(o.status.success(), "{o:?}");
    let served: Value = serde_json::from_slice(&o.stdout).unwrap();
    let written: Value = serde_json::from_slice(&std::fs::read(example()).unwrap()).unwrap();
    for (key, value) in written.as_object().unwrap() {
        assert_eq!(&served[key], value, "{key}");
    }

    let o = asap(&[
        "send",
        &url,
        "--skill",
        "echo",
        "--input",
        r#"{"message":"hi"}"#,
        "--json",
    ]);
    assert!(o.status.success(), "{o:?}");
    let reply: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(reply["payload"]["status"], "completed");
    assert_eq!(reply["payload"]["result"]["echoed"]["message"], "hi");

    let o = asap(&["send", &url, "--skill", "ecoh"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "asap: no skill 'ecoh' at urn:asap:agent:my-echo; it offers: echo\n"
    );
}
