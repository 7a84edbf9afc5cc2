//! Golden vectors of the webhook core: `webhook/url_validation.json` (SSRF
//! policy), `webhook/delivery.json` (body signature and headers) and
//! `webhook/retry.json` (retry schedule and dead letters).
//!
//! Time is explicit `UnixTime` values: nothing sleeps.

use core::net::IpAddr;

use asap_proto::model::UnixTime;
use asap_proto::webhook::{
    BlockedRange, DeadReason, DeliveryOutcome, Failure, OutboxConfig, OutboxEvent, SigningKeys,
    UrlPolicy, UrlRejection, WebhookEvent, WebhookOutbox, WebhookSecret,
};
use asap_tests::vectors;
use serde_json::Value;

/// Rows the reference allows and we refuse, with the range that refuses them.
const BLOCKED_HERE_ONLY: &[(&str, BlockedRange)] = &[
    ("https://100.64.0.1/h", BlockedRange::SharedAddressSpace),
    ("https://224.0.0.1/h", BlockedRange::Multicast),
    ("https://[fec0::1]/h", BlockedRange::SiteLocal),
    ("https://[ff02::1]/h", BlockedRange::Multicast),
];

/// What the generator's `getaddrinfo` answered for the names in the vector.
fn resolve(host: &str) -> Vec<IpAddr> {
    match host {
        "localhost" => vec!["127.0.0.1".parse().unwrap(), "::1".parse().unwrap()],
        other => panic!("the vector resolves no name {other:?}"),
    }
}

fn check(policy: &UrlPolicy, url: &str) -> Result<(), UrlRejection> {
    let callback = policy.parse(url)?;
    let resolved = callback.host_to_resolve().map(resolve).unwrap_or_default();
    policy.approve(&callback, &resolved).map(|_| ())
}

#[test]
fn url_validation_table() {
    let v = vectors::load("webhook/url_validation.json");
    let cases = v["cases"].as_array().unwrap();
    assert_eq!(cases.len(), 30);
    let mut extra_seen = 0;
    for case in cases {
        let url = case["url"].as_str().unwrap();
        let policy = if case["require_https"].as_bool().unwrap() {
            UrlPolicy::default()
        } else {
            // The reference's require_https=False: our named development switch for http.
            UrlPolicy {
                development_allow_http: true,
                ..UrlPolicy::default()
            }
        };
        let ours = check(&policy, url);
        if case["allowed"].as_bool().unwrap() {
            match BLOCKED_HERE_ONLY.iter().find(|(u, _)| *u == url) {
                Some((_, range)) => {
                    extra_seen += 1;
                    assert_eq!(ours.unwrap_err().blocked_range(), Some(*range), "{url}");
                }
                None => assert_eq!(ours, Ok(()), "{url}"),
            }
        } else {
            let err = ours.expect_err(url);
            let reason = case["reason"].as_str().unwrap();
            // Our messages begin with the reference's and may add the range.
            assert!(
                err.to_string().starts_with(reason),
                "{url}: {err} vs {reason}"
            );
            if let Some(code) = case.get("code").and_then(Value::as_str) {
                assert_eq!(err.code(), code, "{url}");
            }
        }
    }
    assert_eq!(extra_seen, BLOCKED_HERE_ONLY.len());
}

#[test]
fn delivery_signature_and_headers() {
    let v = vectors::load("webhook/delivery.json");
    let secret = v["secret"].as_str().unwrap().as_bytes();
    let req = &v["request"];
    let body = req["body_text"].as_str().unwrap().as_bytes();
    let header = |name: &str| -> String {
        let hs = req["headers"].as_array().unwrap();
        let h = hs
            .iter()
            .find(|h| h[0].as_str().unwrap().eq_ignore_ascii_case(name))
            .unwrap_or_else(|| panic!("no {name} header"));
        h[1].as_str().unwrap().to_owned()
    };
    assert_eq!(header("Content-Length"), body.len().to_string());
    let key = WebhookSecret::from_bytes(secret);
    let expected = v["expected_signature"].as_str().unwrap();
    assert_eq!(key.asap_signature(body), expected);
    assert_eq!(header("X-ASAP-Signature"), expected);
    key.verify_asap_signature(body, expected).unwrap();

    // The outbox sends the same bytes with the same signature header.
    let mut outbox = WebhookOutbox::new(OutboxConfig::default());
    outbox.set_signing_keys("sub", SigningKeys::new(key));
    let url = req["url"].as_str().unwrap();
    let ev = WebhookEvent::new(
        "evt-1",
        "task_01KDXZ00000000000000000000",
        url,
        body.to_vec(),
    )
    .signed_with("sub");
    let now = UnixTime::from_secs(1_767_225_600);
    outbox.enqueue(ev, now).unwrap();
    let d = outbox.poll_transmit(now).unwrap();
    assert_eq!(d.request.method().as_str(), req["method"].as_str().unwrap());
    assert_eq!(d.request.uri().to_string(), url);
    assert_eq!(d.request.body(), body);
    for name in ["Content-Type", "X-ASAP-Signature"] {
        assert_eq!(d.request.headers()[name], header(name).as_str(), "{name}");
    }
    let status = v["result"]["status_code"].as_u64().unwrap() as u16;
    outbox
        .handle_result(d.id, DeliveryOutcome::status(status), now)
        .unwrap();
    assert!(matches!(
        outbox.poll_event(),
        Some(OutboxEvent::Delivered { status: 200, .. })
    ));
}

/// Drives one event through the scenario's statuses (0 = network error);
/// returns the waits between attempts in seconds and the final event.
fn drive(responses: &[u16]) -> (Vec<f64>, OutboxEvent) {
    let config = OutboxConfig {
        backoff: OutboxConfig::default().backoff.without_jitter(),
        ..OutboxConfig::default()
    };
    let mut outbox = WebhookOutbox::new(config);
    let mut now = UnixTime::from_secs(1_767_225_600);
    let url = "https://93.184.216.34/h";
    outbox
        .enqueue(WebhookEvent::new("e", "t", url, b"{}".to_vec()), now)
        .unwrap();
    let mut sleeps = Vec::new();
    let mut last = None;
    for &status in responses {
        let d = loop {
            if let Some(d) = outbox.poll_transmit(now) {
                break d;
            }
            let next = outbox.poll_timeout().expect("a retry is scheduled");
            sleeps.push(next.micros_since(now) as f64 / 1e6);
            now = next;
        };
        let outcome = match status {
            0 => DeliveryOutcome::ConnectFailed,
            s => DeliveryOutcome::status(s),
        };
        outbox.handle_result(d.id, outcome, now).unwrap();
        while let Some(e) = outbox.poll_event() {
            if !matches!(e, OutboxEvent::RetryScheduled { .. }) {
                last = Some(e);
            }
        }
    }
    assert!(outbox.poll_transmit(now).is_none());
    (sleeps, last.expect("the scenario ends the event"))
}

#[test]
fn retry_schedules_and_dead_letters() {
    let v = vectors::load("webhook/retry.json");
    let backoff = OutboxConfig::default().backoff;
    let delays: Vec<f64> = (0..6)
        .map(|k| backoff.base_delay(k).as_secs_f64())
        .collect();
    let want: Vec<f64> = serde_json::from_value(v["backoff_delays"].clone()).unwrap();
    assert_eq!(delays, want);

    for name in [
        "all_500",
        "503_then_200",
        "404_no_retry",
        "301_is_retried",
        "network_error_then_200",
    ] {
        let s = &v[name];
        let responses: Vec<u16> = serde_json::from_value(s["responses"].clone()).unwrap();
        let want_sleeps: Vec<f64> = serde_json::from_value(s["sleeps_seconds"].clone()).unwrap();
        let (sleeps, last) = drive(&responses);
        assert_eq!(sleeps, want_sleeps, "{name}");
        let final_status = s["final"]["status_code"].as_u64().unwrap() as u16;
        let dead = s["dead_letters"].as_array().unwrap();
        match last {
            OutboxEvent::Delivered { status, .. } => {
                assert!(s["final"]["success"].as_bool().unwrap(), "{name}");
                assert_eq!(status, final_status, "{name}");
                assert!(dead.is_empty(), "{name}");
            }
            OutboxEvent::DeadLettered {
                attempts, reason, ..
            } => {
                assert!(!s["final"]["success"].as_bool().unwrap(), "{name}");
                if let Some(d) = dead.first() {
                    assert_eq!(u64::from(attempts), d["attempts"].as_u64().unwrap());
                    let last_status = d["last_status"].as_u64().unwrap() as u16;
                    assert_eq!(
                        reason,
                        DeadReason::AttemptsExhausted {
                            attempts,
                            last: Failure::Status {
                                status: last_status
                            }
                        }
                    );
                } else {
                    // The reference returns a 4xx without a dead letter; an outbox
                    // must not drop the event, so it is a (replayable) dead letter here.
                    assert_eq!(
                        reason,
                        DeadReason::Rejected {
                            status: final_status
                        },
                        "{name}"
                    );
                }
            }
            other => panic!("{name}: {other:?}"),
        }
    }
}
