//! A do-nothing ASAP responder: the loopback + HTTP/1.1 ceiling for the bench kit.
//!
//! It answers exactly enough for `shared/interop/bench/run.sh` to work and does no
//! protocol work at all, so its figures are what the machine, the loopback interface,
//! hyper and the load generator allow; an `asap serve` result is read against them.
//!
//! - `GET /.well-known/asap/manifest.json`: a small valid manifest (run.sh reads its `id`).
//! - `POST /asap`: reads the whole request body, then answers a fixed, precomputed
//!   JSON-RPC success body carrying a canned echo `task.response` envelope.
//! - anything else: 404.
//!
//! Run: `cargo run --release -p asap-tokio --example null_responder -- [--bind ADDR] [--workers N]`
//! (default `--bind 127.0.0.1:8002`).
//!
//! `--workers 1` (the default) serves every connection on one current-thread tokio
//! runtime: on a 2-core machine, where wrk needs the other core, that was the fastest
//! (wrk, 32 connections, 2026-12-01: current-thread ~50-53k req/s; multi-thread runtime
//! with 1 worker about the same, with 2 workers ~42k; 2 current-thread runtimes ~48k).
//! `--workers N` runs N such runtimes, each on its own thread, accepting from the same
//! listener, for machines with more cores.

use std::convert::Infallible;
use std::net::SocketAddr;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

const AGENT_ID: &str = "urn:asap:agent:null-responder";

/// The canned `asap.send` answer: an echo `task.response` for the bench's `task.request`,
/// field for field what `asap serve` answers (so the bytes on the wire match too).
const SEND_RESPONSE: &str = concat!(
    r#"{"jsonrpc":"2.0","result":{"envelope":{"#,
    r#""id":"01M8SXQC4N1BBAV376E8SQP7ST","asap_version":"0.1","#,
    r#""timestamp":"2026-12-01T23:06:05.333907Z","#,
    r#""sender":"urn:asap:agent:null-responder","recipient":"urn:asap:agent:bench","#,
    r#""payload_type":"task.response","#,
    r#""payload":{"task_id":"task_01M8SXQC4N1BBAV376E8SQP7SR","status":"completed","#,
    r#""result":{"echoed":{"message":"hello"}},"final_state":null,"metrics":null},"#,
    r#""correlation_id":"01KDXZ00000000000000000001","#,
    r#""trace_id":"3b7cdf34a46d71d3795a990a53f8b2d7","requires_ack":false,"#,
    r#""extensions":{"trace_id":"3b7cdf34a46d71d3795a990a53f8b2d7","span_id":"728dda4c31137372"}}},"#,
    r#""id":1}"#
);

const NOT_FOUND: &str = r#"{"detail":"Not Found"}"#;

/// Precomputed response bodies; cloning a `Bytes` is a reference-count bump.
#[derive(Clone)]
struct Canned {
    manifest: Bytes,
    send: Bytes,
    not_found: Bytes,
}

fn manifest_json(bind: SocketAddr) -> String {
    format!(
        concat!(
            r#"{{"id":"{id}","name":"Null Responder","version":"0.1.0","#,
            r#""description":"Answers a canned echo response; measures the HTTP ceiling","#,
            r#""capabilities":{{"asap_version":"0.1","#,
            r#""skills":[{{"id":"echo","description":"Echo back the input"}}],"#,
            r#""state_persistence":false,"streaming":false,"mcp_tools":[]}},"#,
            r#""endpoints":{{"asap":"http://{bind}/asap"}},"ttl_seconds":300}}"#
        ),
        id = AGENT_ID,
        bind = bind,
    )
}

fn json(status: StatusCode, body: Bytes) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

async fn handle(
    canned: &Canned,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = request.into_parts();
    match (&parts.method, parts.uri.path()) {
        (&Method::POST, "/asap") => {
            // Read (and drop) the whole body, as a real server must before answering.
            match body.collect().await {
                Ok(_) => Ok(json(StatusCode::OK, canned.send.clone())),
                Err(_) => Ok(json(StatusCode::BAD_REQUEST, canned.not_found.clone())),
            }
        }
        (&Method::GET, "/.well-known/asap/manifest.json") => {
            Ok(json(StatusCode::OK, canned.manifest.clone()))
        }
        _ => Ok(json(StatusCode::NOT_FOUND, canned.not_found.clone())),
    }
}

/// Accepts and serves connections on the current (single-threaded) runtime forever.
async fn accept_loop(listener: std::net::TcpListener, canned: Canned) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::from_std(listener)?;
    let mut http = hyper::server::conn::http1::Builder::new();
    // No Date header: one formatted timestamp per response less (a cache in hyper, still work).
    http.keep_alive(true).auto_date_header(false);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            // EMFILE and friends: back off, keep serving the connections already open.
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let canned = canned.clone();
        let connection = http.serve_connection(
            TokioIo::new(stream),
            hyper::service::service_fn(move |request| {
                let canned = canned.clone();
                async move { handle(&canned, request).await }
            }),
        );
        // Spawned on this thread's runtime: no cross-thread wake-ups, no work stealing.
        tokio::spawn(async move {
            let _ = connection.await;
        });
    }
}

fn run_worker(listener: std::net::TcpListener, canned: Canned) -> std::io::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(accept_loop(listener, canned))
}

fn usage() -> ! {
    eprintln!("usage: null_responder [--bind ADDR] [--workers N]");
    std::process::exit(2)
}

// The same allocator as the server it is compared with (the `mimalloc` feature, on by default).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::io::Result<()> {
    let mut bind: SocketAddr = "127.0.0.1:8002".parse().expect("valid default address");
    let mut workers = 1usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--bind" => {
                bind = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| usage())
            }
            "--workers" => {
                workers = args
                    .next()
                    .and_then(|v| v.parse().ok())
                    .filter(|&n| n >= 1)
                    .unwrap_or_else(|| usage())
            }
            "-h" | "--help" => {
                println!("usage: null_responder [--bind ADDR] [--workers N]");
                return Ok(());
            }
            _ => usage(),
        }
    }

    let listener = std::net::TcpListener::bind(bind)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let canned = Canned {
        manifest: Bytes::from(manifest_json(bound)),
        send: Bytes::from_static(SEND_RESPONSE.as_bytes()),
        not_found: Bytes::from_static(NOT_FOUND.as_bytes()),
    };
    eprintln!("null_responder listening on http://{bound} ({workers} worker(s))");

    let mut threads = Vec::new();
    for _ in 1..workers {
        let listener = listener.try_clone()?;
        let canned = canned.clone();
        threads.push(std::thread::spawn(move || run_worker(listener, canned)));
    }
    run_worker(listener, canned)?;
    for thread in threads {
        thread.join().expect("worker thread panicked")?;
    }
    Ok(())
}
