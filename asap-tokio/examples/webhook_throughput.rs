//! Webhook delivery throughput: signed deliveries per second from the tokio
//! worker to a verifying receiver on loopback (both signatures checked).
//!
//! ```sh
//! cargo run --release -p asap-tokio --example webhook_throughput -- [EVENTS] [sqlite]
//! ```
//!
//! Each event is its own task (tasks are delivered in parallel; one task's
//! events go one at a time), the per-URL rate limit is off (the default 10/s
//! would be the figure otherwise), and with `sqlite` every row change is
//! written to a SQLite outbox in a temporary directory.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use asap_proto::store::{MemoryWebhookStore, WebhookStore};
use asap_proto::webhook::{OutboxConfig, SigningKeys, UrlPolicy, WebhookEvent, WebhookSecret};
use asap_tokio::webhook::receive::Receiver;
use asap_tokio::webhook::{SystemResolver, Webhooks};

#[tokio::main]
async fn main() {
    let mut args = std::env::args().skip(1);
    let n: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5000);
    let sqlite = args.next().as_deref() == Some("sqlite");
    let received = Arc::new(AtomicUsize::new(0));
    let seen = Arc::clone(&received);
    let receiver = Receiver::new(WebhookSecret::from_bytes(b"bench-secret"), move |r| {
        assert_eq!(r.verified, ["asap", "standard"]);
        seen.fetch_add(1, Ordering::Relaxed);
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(receiver.serve(listener, std::future::pending()));

    let dir = tempfile::tempdir().unwrap();
    let store: Box<dyn WebhookStore + Send> = if sqlite {
        Box::new(
            asap_blocking::store::SqliteWebhookStore::open(dir.path().join("state.db")).unwrap(),
        )
    } else {
        Box::new(MemoryWebhookStore::new())
    };
    let config = OutboxConfig {
        rate_per_second: 0,
        capacity: n.max(1),
        ..OutboxConfig::default()
    };
    let keys = [(
        "k".to_owned(),
        SigningKeys::new(WebhookSecret::from_bytes(b"bench-secret")),
    )];
    let hooks = Webhooks::start(
        config,
        UrlPolicy::local_development(),
        store,
        Arc::new(SystemResolver),
        keys,
    )
    .unwrap();
    let body = br#"{"id":"01KDXZ0000ENVUPD0000000001","asap_version":"0.1","payload_type":"task.response","payload":{"task_id":"t","status":"completed","result":{"echoed":{"n":1}}}}"#;
    let started = Instant::now();
    let events: Vec<WebhookEvent> = (0..n)
        .map(|i| {
            WebhookEvent::new(
                format!("evt-{i}"),
                format!("task-{i}"),
                url.as_str(),
                body.to_vec(),
            )
            .signed_with("k")
        })
        .collect();
    hooks.publish(events).await.unwrap();
    while received.load(Ordering::Relaxed) < n {
        assert!(started.elapsed() < Duration::from_secs(300), "stalled");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{n} signed deliveries in {secs:.2} s: {:.0} deliveries/s ({} outbox)",
        n as f64 / secs,
        if sqlite { "SQLite" } else { "memory" }
    );
}
