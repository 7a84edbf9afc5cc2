//! Property tests of the auth caches: single flight, the kid-miss rate limit,
//! no fetch without a caller asking, stale-if-error, bounded memory.
#![allow(clippy::disallowed_methods)] // one base `Instant`; the code under test never reads a clock

use std::time::{Duration, Instant};

use asap_proto::auth::{
    FetchId, IntrospectionCache, IntrospectionConfig, IntrospectionLookup, JwksCache,
    JwksCacheConfig, KeyMiss, KeySetLookup,
};
use asap_proto::model::UnixTime;
use asap_proto::server::Now;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Advance(u64),
    Lookup,
    KeyMiss,
    AnswerOk,
    AnswerBad,
    TransportFail,
    Forget,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0u64..45).prop_map(Op::Advance),
        Just(Op::Lookup),
        Just(Op::KeyMiss),
        Just(Op::AnswerOk),
        Just(Op::AnswerBad),
        Just(Op::TransportFail),
        Just(Op::Forget),
    ]
}

proptest! {
    #[test]
    fn jwks_cache_invariants(ops in proptest::collection::vec(op(), 1..200)) {
        let t0 = Instant::now();
        let config = JwksCacheConfig::new("https://idp.example.com/jwks");
        let mut c = JwksCache::new(config.clone()).unwrap();
        let mut t = 0u64;
        // Fetches handed out and not reported; `Forget` leaves them unreported for good.
        let mut outstanding: Vec<(FetchId, u64)> = Vec::new();
        let mut lost: Vec<(FetchId, u64)> = Vec::new();
        let mut starts: Vec<u64> = Vec::new();
        let mut had_good = false;
        for op in ops {
            let now = t0 + Duration::from_secs(t);
            let mut started = |id: FetchId, outstanding: &mut Vec<(FetchId, u64)>, lost: &[(FetchId, u64)], from_miss: bool| {
                // Single flight: every other fetch out has been reported or timed out.
                prop_assert!(outstanding.iter().chain(lost).all(|(_, s)| t - s >= config.fetch_timeout.as_secs()));
                if from_miss {
                    if let Some(last) = starts.last() {
                        prop_assert!(t - last >= config.kid_miss_interval.as_secs(), "kid-miss fetch {}s after the last", t - last);
                    }
                }
                starts.push(t);
                outstanding.push((id, t));
                Ok(())
            };
            match op {
                Op::Advance(d) => t += d,
                Op::Lookup => match c.lookup(now) {
                    KeySetLookup::Fetch(f) => started(f.id, &mut outstanding, &lost, false)?,
                    KeySetLookup::Ready(_) => prop_assert!(had_good),
                    KeySetLookup::Wait(id) => prop_assert!(outstanding.iter().chain(&lost).any(|(o, _)| *o == id)),
                    KeySetLookup::Unavailable => prop_assert!(c.keys().is_none()),
                },
                Op::KeyMiss => match c.key_miss(now) {
                    KeyMiss::Fetch(f) => started(f.id, &mut outstanding, &lost, true)?,
                    KeyMiss::Wait(id) => prop_assert!(outstanding.iter().chain(&lost).any(|(o, _)| *o == id)),
                    KeyMiss::Refused => {}
                },
                Op::AnswerOk | Op::AnswerBad | Op::TransportFail | Op::Forget => {
                    if let Some((id, at)) = outstanding.pop() {
                        match op {
                            Op::AnswerOk => {
                                c.handle_response(id, &http::Response::new(br#"{"keys":[]}"#.to_vec()), now).unwrap();
                                had_good = true;
                            }
                            Op::AnswerBad => {
                                let r = http::Response::builder().status(500).body(Vec::new()).unwrap();
                                prop_assert!(c.handle_response(id, &r, now).is_err());
                            }
                            Op::TransportFail => c.handle_failure(id, now),
                            _ => lost.push((id, at)),
                        }
                    }
                }
            }
            // Stale-if-error: once a set was had, it is never lost.
            prop_assert_eq!(c.keys().is_some(), had_good);
            prop_assert_eq!(c.fetches_started(), starts.len() as u64);
        }
    }

    #[test]
    fn introspection_memory_is_bounded(tokens in proptest::collection::vec((0u32..5000, any::<bool>(), 0u64..100), 1..400)) {
        let t0 = Instant::now();
        let mut c = IntrospectionCache::new(IntrospectionConfig {
            url: "https://idp.example.com/introspect".into(),
            capacity: 16,
            max_in_flight: 8,
            ..Default::default()
        }).unwrap();
        let mut t = 0;
        for (tok, active, dt) in tokens {
            t += dt;
            let now = Now { monotonic: t0 + Duration::from_secs(t), wall: UnixTime::from_secs(1_800_000_000 + t as i64) };
            if let IntrospectionLookup::Fetch(f) = c.lookup(&format!("tok-{tok}"), now.monotonic) {
                let body = format!(r#"{{"active":{active},"sub":"s","exp":{}}}"#, 1_800_000_000 + t + 500);
                c.handle_response(f.id, &http::Response::new(body.into_bytes()), now).unwrap();
            }
            prop_assert!(c.len() <= 16);
        }
    }
}
