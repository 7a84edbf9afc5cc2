//! `asap webhooks dead` lists the dead letters of a state database and
//! `asap webhooks replay ID` makes one pending again.

use std::process::Command;

use asap_blocking::store::SqliteWebhookStore;
use asap_proto::model::UnixTime;
use asap_proto::store::WebhookStore;
use asap_proto::webhook::{
    DeliveryOutcome, DispatchOutput, OutboxConfig, RecordState, UrlPolicy, WebhookDispatcher,
    WebhookEvent,
};

fn asap(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_asap"))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[test]
fn dead_letters_are_listed_and_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("state.db");
    let mut store = SqliteWebhookStore::open(&db).unwrap();
    let now = UnixTime::from_system_time(std::time::SystemTime::now());
    let mut d = WebhookDispatcher::new(OutboxConfig::default(), UrlPolicy::PRODUCTION);
    let events = ["gone", "live"]
        .map(|id| WebhookEvent::new(id, id, "https://hooks.example.com/in", b"{}".to_vec()));
    d.publish(events.to_vec(), now);
    while let Some(out) = d.poll_output(now) {
        match out {
            // 404 for "gone"; "live" stays in flight (its row stays pending).
            DispatchOutput::Transmit(x) if x.event_id == "gone" => {
                d.handle_result(x.id, DeliveryOutcome::status(404), now)
                    .unwrap();
            }
            DispatchOutput::Timeout(_) => break,
            _ => {}
        }
    }
    store.apply(&d.take_changes()).unwrap();

    let db_arg = db.to_str().unwrap();
    let (ok, text) = asap(&["webhooks", "dead", "--db", db_arg]);
    assert!(ok, "{text}");
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{text}");
    assert_eq!(rows[0]["id"], "gone");
    assert!(
        rows[0]["reason"].as_str().unwrap().contains("404"),
        "{text}"
    );

    let (ok, text) = asap(&["webhooks", "replay", "gone", "--db", db_arg]);
    assert!(ok, "{text}");
    let (ok, text) = asap(&["webhooks", "replay", "live", "--db", db_arg]);
    assert!(!ok, "only dead letters are replayed: {text}");
    let rows = SqliteWebhookStore::open(&db).unwrap().load().unwrap();
    let gone = rows.iter().find(|r| r.event_id == "gone").unwrap();
    assert_eq!(gone.state, RecordState::Pending);
    assert_eq!(gone.attempts, 0);
    assert!(gone.dead_reason.is_none());
    // The rows restore together (distinct order numbers).
    WebhookDispatcher::restore(OutboxConfig::default(), UrlPolicy::PRODUCTION, rows, now).unwrap();
    let (_, text) = asap(&["webhooks", "dead", "--db", db_arg]);
    assert!(text.trim().is_empty(), "{text}");
}
