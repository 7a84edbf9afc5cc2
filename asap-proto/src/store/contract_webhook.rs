//! The contract suite every [`WebhookStore`] backend must pass (with the
//! `contract-tests` feature): `contract_webhook::webhook_store(make)`.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use super::{WebhookChange, WebhookStore};
use crate::model::UnixTime;
use crate::webhook::{
    DeadReason, DeliveryOutcome, Failure, OutboxConfig, OutboxOutput, OutboxRecord, RecordState,
    WebhookEvent, WebhookOutbox,
};

type Case = fn(&mut dyn WebhookStore);

/// Every case, by name.
pub const WEBHOOK_CASES: &[(&str, Case)] = &[
    ("empty store loads nothing", empty),
    ("put then load round-trips every field", round_trip),
    (
        "put replaces, remove deletes, unknown remove is harmless",
        replace_and_remove,
    ),
    ("load is in seq order", seq_order),
    ("dead letters are listed with their reason", dead_letters),
    (
        "an invalid record is refused and nothing of the batch is written",
        invalid_batch,
    ),
    (
        "an outbox restored from the store resumes its pending events",
        restore_resumes,
    ),
];

/// Runs every case of [`WEBHOOK_CASES`], each on a fresh store from `make`.
pub fn webhook_store<W: WebhookStore, F: FnMut() -> W>(mut make: F) {
    for (name, case) in WEBHOOK_CASES {
        let mut store = make();
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| case(&mut store))) {
            let msg = payload
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| payload.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                .unwrap_or_default();
            resume_unwind(Box::new(format!(
                "WebhookStore contract case `{name}` failed: {msg}"
            )));
        }
    }
}

fn record(id: &str, seq: u64) -> OutboxRecord {
    OutboxRecord {
        event_id: id.into(),
        task_id: "task_1".into(),
        url: "https://hooks.example.com/asap".into(),
        secret_ref: Some("ops".into()),
        body: vec![0, 1, 2, 255, b'{', b'}'],
        seq,
        state: RecordState::Pending,
        attempts: 2,
        next_attempt_at_ms: 1_767_225_600_123,
        created_at_ms: 1_767_225_600_000,
        last_failure: Some(Failure::Status { status: 503 }),
        dead_reason: None,
    }
}

fn dead(id: &str, seq: u64) -> OutboxRecord {
    OutboxRecord {
        state: RecordState::Dead,
        dead_reason: Some(DeadReason::Rejected { status: 404 }),
        ..record(id, seq)
    }
}

fn empty(s: &mut dyn WebhookStore) {
    assert!(s.load().unwrap().is_empty());
    assert!(s.dead_letters().unwrap().is_empty());
}

fn round_trip(s: &mut dyn WebhookStore) {
    let r = record("e1", 7);
    s.apply(&[WebhookChange::Put(r.clone())]).unwrap();
    assert_eq!(s.load().unwrap(), vec![r]);
}

fn replace_and_remove(s: &mut dyn WebhookStore) {
    let mut r = record("e1", 1);
    s.apply(&[
        WebhookChange::Put(r.clone()),
        WebhookChange::Put(record("e2", 2)),
    ])
    .unwrap();
    r.attempts = 5;
    s.apply(&[WebhookChange::Put(r.clone())]).unwrap();
    assert_eq!(s.load().unwrap()[0].attempts, 5);
    s.apply(&[
        WebhookChange::Remove("e2".into()),
        WebhookChange::Remove("never".into()),
    ])
    .unwrap();
    assert_eq!(s.load().unwrap(), vec![r]);
}

fn seq_order(s: &mut dyn WebhookStore) {
    s.apply(&[
        WebhookChange::Put(record("z", 3)),
        WebhookChange::Put(record("a", 10)),
        WebhookChange::Put(record("m", 1)),
    ])
    .unwrap();
    let seqs: Vec<u64> = s.load().unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(seqs, [1, 3, 10]);
}

fn dead_letters(s: &mut dyn WebhookStore) {
    s.apply(&[
        WebhookChange::Put(record("live", 1)),
        WebhookChange::Put(dead("gone", 2)),
    ])
    .unwrap();
    let dead_ones = s.dead_letters().unwrap();
    assert_eq!(dead_ones.len(), 1);
    assert_eq!(dead_ones[0].event_id, "gone");
    assert_eq!(
        dead_ones[0].dead_reason,
        Some(DeadReason::Rejected { status: 404 })
    );
}

fn invalid_batch(s: &mut dyn WebhookStore) {
    let mut broken = record("bad", 2);
    broken.state = RecordState::Dead; // without a reason
    let r = s.apply(&[
        WebhookChange::Put(record("ok", 1)),
        WebhookChange::Put(broken),
    ]);
    assert!(
        matches!(r, Err(super::StoreError::InvalidInput { .. })),
        "{r:?}"
    );
    assert!(s.load().unwrap().is_empty());
}

fn restore_resumes(s: &mut dyn WebhookStore) {
    let now = UnixTime::from_secs(1_767_225_600);
    let mut outbox = WebhookOutbox::new(OutboxConfig::default());
    for id in ["a", "b"] {
        let e = WebhookEvent::new(id, "task_1", "https://hooks.example.com/", b"{}".to_vec());
        outbox.enqueue(e, now).unwrap();
    }
    s.apply(&WebhookChange::of_enqueued(&outbox, ["a", "b"]))
        .unwrap();
    // "a" goes out and is delivered; "b" is in flight when the process dies.
    let mut sent = Vec::new();
    while let Some(OutboxOutput::Transmit(d)) = outbox.poll_output(now) {
        sent.push(d);
    }
    assert_eq!(sent.len(), 1, "one task's events go one at a time");
    outbox
        .handle_result(sent[0].id, DeliveryOutcome::status(200), now)
        .unwrap();
    while let Some(OutboxOutput::Event(e)) = outbox.poll_output(now) {
        if let Some(c) = WebhookChange::of_event(&outbox, &e) {
            s.apply(&[c]).unwrap();
        }
    }
    let restored = WebhookOutbox::restore(OutboxConfig::default(), s.load().unwrap(), now).unwrap();
    let ids: Vec<&str> = restored.records().map(|r| r.event_id.as_str()).collect();
    assert_eq!(ids, ["b"]);
}
