//! The time-driven machines under arbitrary operation sequences (quinn's model):
//! CircuitBreaker, SlidingWindowLimiter, NonceStore and SendCall. Invariants are
//! checked after every operation; time only moves forward by fuzzed steps.
#![no_main]

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use asap_proto::client::{
    ClientConfig, ClientCore, SendCall, SendOutput, TransportError, TransportErrorKind,
};
use asap_proto::model::{AgentUrn, Envelope, Payload, TaskRequest, Timestamp, Ulid, UnixTime};
use asap_proto::reliability::rate_limit::{RateDecision, RateLimitSpec, SlidingWindowLimiter};
use asap_proto::reliability::{CircuitBreaker, CircuitBreakerConfig, RetryPolicy};
use asap_proto::server::{NonceMode, NonceStore, ReplayWindow};
use libfuzzer_sys::fuzz_target;

fn envelope(nonce: Option<u8>) -> Envelope {
    let mut e = Envelope::new(
        "01KDXZ0000ENVREQ0000000001".into(),
        Timestamp::from_unix(UnixTime::from_secs(1_767_225_600)),
        AgentUrn::new("urn:asap:agent:a").unwrap(),
        AgentUrn::new("urn:asap:agent:b").unwrap(),
        Payload::TaskRequest(TaskRequest::new("c", "echo", serde_json::Map::new())),
    );
    if let Some(n) = nonce {
        let mut ext = serde_json::Map::new();
        ext.insert("nonce".into(), format!("n{n}").into());
        e.extensions = Some(ext);
    }
    e
}

fuzz_target!(|data: &[u8]| {
    let t0 = Instant::now();
    let mut now = t0;
    let probes = 1 + u32::from(data.first().copied().unwrap_or(0) % 3);
    let mut breaker = CircuitBreaker::new(CircuitBreakerConfig {
        failure_threshold: 3,
        open_timeout: Duration::from_secs(5),
        half_open_max_probes: probes,
    });
    let mut limiter = SlidingWindowLimiter::with_max_keys(RateLimitSpec::parse("3/second;5/minute").unwrap(), 4);
    // As many keys as the limiter tracks: no key is ever evicted, so its limits must hold exactly.
    let mut allowed: Vec<VecDeque<Instant>> = vec![VecDeque::new(); 4];
    let mut nonces = NonceStore::new(ReplayWindow { max_age: Duration::from_secs(10), ..ReplayWindow::default() }, 16);
    let mut core = ClientCore::new("http://127.0.0.1:1", ClientConfig::default()).unwrap();
    let sent = envelope(None);
    let mut call = SendCall::new(core.prepare_send(&sent, Ulid::from_u128(1)), RetryPolicy::default(), 9);
    let reply = sent.reply(
        "01KDXZ0000ENVREP0000000001".into(),
        sent.timestamp,
        sent.recipient.clone(),
        Payload::TaskResponse(asap_proto::model::TaskResponse {
            task_id: "task_1".into(),
            status: asap_proto::task::TaskStatus::Completed,
            result: None,
            final_state: None,
            metrics: None,
        }),
    );
    let success = asap_proto::jsonrpc::SuccessResponse::new(reply, call.prepared().request_id().clone()).to_vec();

    let mut in_flight = false;

    for pair in data.chunks(2).skip(1) {
        let (op, arg) = (pair[0], pair.get(1).copied().unwrap_or(0));
        match op % 9 {
            0 => now += Duration::from_millis(u64::from(arg) * 37),
            1 => {
                if breaker.try_acquire(now).is_ok() {
                    if arg % 2 == 0 {
                        breaker.record_success(now);
                    } else {
                        breaker.record_failure(now);
                    }
                }
            }
            2 => {
                let _ = breaker.try_acquire(now);
                assert!(breaker.probes_outstanding() <= probes, "too many half-open probes");
            }
            3 => {
                breaker.handle_timeout(now);
                if let Some(t) = breaker.poll_timeout() {
                    assert!(t > now, "breaker deadline not after the now just handled");
                }
            }
            4 => {
                let key = usize::from(arg % 4);
                if let RateDecision::Allowed = limiter.check(&format!("k{key}"), now) {
                    let w = &mut allowed[key];
                    w.push_back(now);
                    while w.front().is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(60)) {
                        w.pop_front();
                    }
                    let last_second = w.iter().filter(|t| now.duration_since(**t) < Duration::from_secs(1)).count();
                    assert!(last_second <= 3, "more than 3 in one second for k{key}");
                    assert!(w.len() <= 5, "more than 5 in one minute for k{key}");
                }
            }
            5 => {
                let unix = UnixTime::from_micros(now.duration_since(t0).as_micros() as i64);
                let _ = nonces.check(&envelope(Some(arg % 32)), NonceMode::WhenPresent, unix);
                assert!(nonces.len() <= 16, "nonce memory unbounded");
            }
            6 => {
                if !in_flight {
                    match call.poll_output(now) {
                        Some(SendOutput::Transmit(_)) => in_flight = true,
                        Some(SendOutput::Timeout(t)) => assert!(t > now || call.is_done()),
                        _ => {}
                    }
                }
            }
            7 => {
                if in_flight {
                    in_flight = false;
                    let status = [200u16, 429, 500, 503, 413, 400, 200][usize::from(arg % 7)];
                    // A real answer to the request sent (arg % 7 == 6), or a 200 without one.
                    let body = match (status, arg % 7) {
                        (200, 6) => success.clone(),
                        (200, _) => b"{\"jsonrpc\":\"2.0\"}".to_vec(),
                        _ => Vec::new(),
                    };
                    let answered = status == 200 && arg % 7 == 6;
                    let resp = http::Response::builder().status(status).header("retry-after", "1").body(body).unwrap();
                    call.handle_response(resp, now);
                    if answered {
                        // The send-success path: the outcome is the reply, at once.
                        let outcome = call.poll_outcome().expect("a real answer ends the call");
                        let reply = outcome.result.expect("a real answer is a success");
                        assert_eq!(reply.correlation_id.as_deref(), Some(sent.id.as_str()));
                    }
                }
            }
            _ => {
                if in_flight {
                    in_flight = false;
                    let kind = [
                        TransportErrorKind::Connect,
                        TransportErrorKind::Timeout,
                        TransportErrorKind::ResponseTooLarge { limit: 1024 },
                    ][usize::from(arg % 3)];
                    call.handle_transport_error(TransportError::new(kind, "fuzzed"), now);
                }
                call.handle_timeout(now);
                if let Some(t) = call.poll_timeout() {
                    assert!(t > now, "send deadline not after the now just handled");
                }
            }
        }
        assert!(call.attempts() <= 3, "more attempts than the policy allows");
    }
});
