//! Closed-loop `/asap/ws` load: N connections, each sending one `asap.send`
//! task.request frame and waiting for the response with its id before the
//! next (acks skipped). Works against asap-rs and the reference alike.
//!
//! ```sh
//! cargo run --release -p asap-tokio --example ws_bench -- ws://127.0.0.1:8000 --conns 16 --seconds 10
//! ```
//! Prints one JSON line: round trips/s, p50/p99 latency (ms), errors.
#![allow(missing_docs)]

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::Message;

struct Args {
    url: String,
    conns: usize,
    seconds: f64,
    recipient: String,
    /// Open this many connections, hold them idle for `seconds`, send nothing.
    idle: usize,
}

fn args() -> Args {
    let mut a = Args {
        url: "ws://127.0.0.1:8000".into(),
        conns: 1,
        seconds: 10.0,
        recipient: "urn:asap:agent:asap-rs-echo".into(),
        idle: 0,
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--conns" => a.conns = v().parse().expect("--conns N"),
            "--seconds" => a.seconds = v().parse().expect("--seconds S"),
            "--recipient" => a.recipient = v(),
            "--idle" => a.idle = v().parse().expect("--idle N"),
            url => a.url = url.to_owned(),
        }
    }
    if !a.url.ends_with("/asap/ws") {
        a.url = format!("{}/asap/ws", a.url.trim_end_matches('/'));
    }
    a
}

fn timestamp() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    asap_proto::model::Timestamp::from_unix(asap_proto::model::UnixTime::from_micros(
        i64::try_from(d.as_micros()).unwrap_or(0),
    ))
    .to_string()
}

async fn connection(a: std::sync::Arc<Args>, n: usize, until: Instant) -> (Vec<u32>, u64) {
    let (mut ws, _) = tokio_tungstenite::connect_async(a.url.as_str())
        .await
        .expect("connect");
    let mut lat = Vec::new();
    let mut errors = 0u64;
    let mut seq = 0u64;
    while Instant::now() < until {
        seq += 1;
        let id = format!("b{n}-{seq}");
        let frame = format!(
            r#"{{"jsonrpc":"2.0","method":"asap.send","id":"{id}","params":{{"envelope":{{"id":"01KDXZ{n:04}{seq:016}","asap_version":"0.1","timestamp":"{ts}","sender":"urn:asap:agent:bench","recipient":"{r}","payload_type":"task.request","payload":{{"conversation_id":"bench","skill_id":"echo","input":{{"n":{seq}}}}}}}}}}}"#,
            ts = timestamp(),
            r = a.recipient,
        );
        let t0 = Instant::now();
        if ws.send(Message::Text(frame.into())).await.is_err() {
            errors += 1;
            break;
        }
        let needle = format!(r#""id":"{id}""#);
        let spaced = format!(r#""id": "{id}""#);
        loop {
            match tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
                Ok(Some(Ok(Message::Text(t)))) => {
                    let t = t.as_str();
                    if t.contains(&needle) || t.contains(&spaced) {
                        if t.contains("\"error\"") {
                            errors += 1;
                        }
                        break;
                    }
                }
                Ok(Some(Ok(_))) => {}
                _ => {
                    errors += 1;
                    return (lat, errors);
                }
            }
        }
        lat.push(u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX));
    }
    let _ = ws.close(None).await;
    (lat, errors)
}

/// `--idle N`: hold N idle connections (answering the server's heartbeat
/// pings) for `--seconds`, then report how many stayed open.
async fn idle(a: &Args) {
    let mut open = Vec::with_capacity(a.idle);
    for _ in 0..a.idle {
        match tokio_tungstenite::connect_async(a.url.as_str()).await {
            Ok((ws, _)) => open.push(ws),
            Err(e) => {
                eprintln!("connect failed after {} connections: {e}", open.len());
                break;
            }
        }
    }
    println!(r#"{{"idle_connections":{}}}"#, open.len());
    tokio::time::sleep(Duration::from_secs_f64(a.seconds)).await;
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let a = std::sync::Arc::new(args());
    if a.idle > 0 {
        return idle(&a).await;
    }
    let start = Instant::now();
    let until = start + Duration::from_secs_f64(a.seconds);
    let tasks: Vec<_> = (0..a.conns)
        .map(|n| tokio::spawn(connection(std::sync::Arc::clone(&a), n, until)))
        .collect();
    let mut all = Vec::new();
    let mut errors = 0;
    for t in tasks {
        let (l, e) = t.await.expect("connection task");
        all.extend(l);
        errors += e;
    }
    let secs = start.elapsed().as_secs_f64();
    all.sort_unstable();
    let pct = |p: f64| {
        all.get(((all.len() as f64 * p) as usize).min(all.len().saturating_sub(1)))
            .map_or(0.0, |us| f64::from(*us) / 1000.0)
    };
    println!(
        r#"{{"url":"{}","conns":{},"seconds":{:.1},"round_trips":{},"per_second":{:.0},"p50_ms":{:.2},"p99_ms":{:.2},"errors":{}}}"#,
        a.url,
        a.conns,
        secs,
        all.len(),
        all.len() as f64 / secs,
        pct(0.50),
        pct(0.99),
        errors
    );
}
