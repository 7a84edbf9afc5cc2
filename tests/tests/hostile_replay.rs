//! Hostile replay against the core's nonce store at its default size: a flood
//! of fresh nonces larger than the store never makes it forget an accepted
//! one (the old store held 100,000 and dropped the oldest, so 100,001 fresh
//! nonces re-admitted the original). The CLI-level tests are in
//! `asap-tokio/tests/hostile_replay.rs`.

use std::time::{Duration, Instant};

use asap_proto::model::{AgentUrn, Envelope, Payload, TaskRequest, Timestamp, UnixTime};
use asap_proto::server::{NonceError, NonceMode, NonceStore, ServerConfig};
use serde_json::{json, Value};

const NOW: UnixTime = UnixTime::from_secs(1_767_225_600);

fn envelope(nonce: &str, ts: UnixTime) -> Envelope {
    let mut e = Envelope::new(
        "01KDXZ0000ENVREQ0000000001".into(),
        Timestamp::from_unix(ts),
        AgentUrn::new("urn:asap:agent:attacker").unwrap(),
        AgentUrn::new("urn:asap:agent:victim").unwrap(),
        Payload::TaskRequest(TaskRequest::new("c", "pay", serde_json::Map::new())),
    );
    e.extensions = Some(json!({ "nonce": nonce }).as_object().unwrap().clone());
    e
}

/// Resident memory of this process (Linux; 0 elsewhere), for the figure printed.
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn more_fresh_nonces_than_the_default_capacity_never_readmit_the_original() {
    let config = ServerConfig::default();
    assert_eq!(config.max_nonces, 1_000_000);
    let mut store = NonceStore::new(config.replay_window, config.max_nonces);
    let original = envelope("original", NOW);
    assert!(matches!(
        store.check(&original, NonceMode::Required, NOW),
        Ok(Some(_))
    ));
    // 1.2 million fresh nonces inside 60 s of envelope time (well inside the
    // 300 s window): the store fills, then refuses instead of forgetting.
    let rss_before = rss_kib();
    let started = Instant::now();
    let mut flood = envelope("x", NOW);
    let (mut accepted, mut full) = (1usize, 0usize);
    let total = 1_200_000u64;
    for i in 0..total {
        let now = NOW.saturating_add(Duration::from_micros(i * 50));
        flood.timestamp = Timestamp::from_unix(now);
        if let Some(ext) = flood.extensions.as_mut() {
            ext.insert("nonce".into(), Value::String(format!("fresh-{i}")));
        }
        match store.check(&flood, NonceMode::Required, now) {
            Ok(Some(_)) => accepted += 1,
            Err(NonceError::Full {
                capacity,
                retry_after_secs,
            }) => {
                assert_eq!(capacity, 1_000_000);
                // The original leaves 300 s after its stamp; at most 60 s have passed.
                assert!(
                    (240..=301).contains(&retry_after_secs),
                    "{retry_after_secs}"
                );
                full += 1;
            }
            other => panic!("fresh nonce {i}: {other:?}"),
        }
        assert!(store.len() <= 1_000_000);
    }
    let end = NOW.saturating_add(Duration::from_micros(total * 50));
    assert_eq!((accepted, full), (1_000_000, 200_001));
    match store.check(&original, NonceMode::Required, end) {
        Err(NonceError::Invalid(e)) => assert_eq!(e.message, "Duplicate nonce detected: original"),
        other => panic!("the original was re-admitted after the flood: {other:?}"),
    }
    eprintln!(
        "{total} fresh nonces checked in {:.1} s; {full} refused as full; the original still refused; \
         resident memory grew by {} MiB",
        started.elapsed().as_secs_f64(),
        rss_kib().saturating_sub(rss_before) / 1024
    );
    // Once the original's envelope has left the window, its entry leaves too.
    let gone = NOW.saturating_add(config.replay_window.max_age + Duration::from_micros(1));
    assert!(config.replay_window.check(&original, gone).is_err());
    assert!(matches!(
        store.check(&envelope("after", gone), NonceMode::Required, gone),
        Ok(Some(_))
    ));
}
