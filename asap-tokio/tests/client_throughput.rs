//! Requests/s of `send` (echo `task.request`) against `asap serve` on loopback,
//! for the tokio and the blocking client. A measurement, not a check: ignored
//! by default. Run in release:
//!
//! ```text
//! cargo test --release -p asap-tokio --test client_throughput -- --ignored --nocapture
//! ```
//!
//! `ASAP_BENCH_SECS` sets the duration of each run (default 3).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use asap_proto::model::{AgentUrn, Envelope, Payload, TaskRequest, Timestamp, UnixTime};

struct Serve(Child, #[allow(dead_code)] tempfile::TempDir);

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_asap_serve() -> (Serve, String) {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_asap"))
        .args([
            "serve",
            "--bind",
            "127.0.0.1:0",
            "--rate-limit",
            "none",
            "--db",
        ])
        .arg(dir.path().join("state.db"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    std::thread::spawn(move || for _ in lines {});
    (Serve(child, dir), url)
}

fn envelope() -> Envelope {
    let mut input = serde_json::Map::new();
    input.insert("message".into(), "hello".into());
    Envelope::new(
        "01KDXZ0000ENVREQ0000000001".into(),
        Timestamp::from_unix(UnixTime::from_system_time(SystemTime::now())),
        AgentUrn::new("urn:asap:agent:bench").unwrap(),
        AgentUrn::new("urn:asap:agent:asap-rs-echo").unwrap(),
        Payload::TaskRequest(TaskRequest::new("bench", "echo", input)),
    )
}

fn secs() -> Duration {
    Duration::from_secs_f64(
        std::env::var("ASAP_BENCH_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3.0),
    )
}

fn report(name: &str, n: u64, elapsed: Duration) {
    println!(
        "{name}: {n} sends in {:.2} s = {:.0} requests/s",
        elapsed.as_secs_f64(),
        n as f64 / elapsed.as_secs_f64()
    );
}

fn tokio_run(url: &str, concurrency: usize) -> (u64, Duration) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let client = asap_tokio::client::Client::new(url).unwrap();
        let env = Arc::new(envelope());
        client.send(&env).await.unwrap(); // warm up the connection
        let until = Instant::now() + secs();
        let start = Instant::now();
        let tasks: Vec<_> = (0..concurrency)
            .map(|_| {
                let (client, env) = (client.clone(), Arc::clone(&env));
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while Instant::now() < until {
                        client.send(&env).await.unwrap();
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut total = 0;
        for t in tasks {
            total += t.await.unwrap();
        }
        (total, start.elapsed())
    })
}

fn blocking_run(url: &str, threads: usize) -> (u64, Duration) {
    let client = asap_blocking::client::Client::new(url).unwrap();
    let env = Arc::new(envelope());
    client.send(&env).unwrap();
    let until = Instant::now() + secs();
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (client, env) = (client.clone(), Arc::clone(&env));
            std::thread::spawn(move || {
                let mut n = 0u64;
                while Instant::now() < until {
                    client.send(&env).unwrap();
                    n += 1;
                }
                n
            })
        })
        .collect();
    let total = handles.into_iter().map(|h| h.join().unwrap()).sum();
    (total, start.elapsed())
}

#[test]
#[ignore = "measurement; run with --release -- --ignored --nocapture"]
fn send_requests_per_second() {
    let (_serve, url) = start_asap_serve();
    println!("asap serve at {url} (SQLite task state, no rate limit)");
    for c in [1, 8] {
        let (n, t) = tokio_run(&url, c);
        report(&format!("asap_tokio::Client    {c} in flight"), n, t);
        let (n, t) = blocking_run(&url, c);
        report(&format!("asap_blocking::Client {c} thread(s)"), n, t);
    }
}
