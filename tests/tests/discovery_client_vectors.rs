//! Golden vectors of the client and discovery cores: `discovery/*.json`,
//! `client/*.json`, plus the client-side reading of
//! `jsonrpc/client_task_request_exchange.json` and `jsonrpc/rate_limit_429.json`,
//! and the schemas of the health document and the Lite Registry.
//!
//! Every time-dependent check uses explicit instants: nothing sleeps.

use std::time::{Duration, Instant};

use asap_proto::client::{ClientConfig, ClientCore, SendCall, SendError, SendOutput};
use asap_proto::discovery::{
    check_version_compatibility, generate_registry_entry, interpret_health_response, require_skill,
    validate_manifest_value, HealthLoad, HealthStatus, HealthVerdict, LiteRegistry, Lookup,
    ManifestCache, ManifestCacheConfig, RegistryCache, RegistryCacheConfig,
};
use asap_proto::jsonrpc::ErrorResponse;
use asap_proto::model::{Envelope, Manifest, Ulid};
use asap_proto::reliability::{
    Backoff, CircuitBreaker, CircuitBreakerConfig, CircuitState, RateDecision, RetryPolicy,
    SlidingWindowLimiter,
};
use asap_proto::DecodeErrorKind;
use asap_tests::vectors;
use serde_json::{json, Value};

fn response(status: u16, headers: &Value, body: &str) -> http::Response<Vec<u8>> {
    let mut b = http::Response::builder().status(status);
    for h in headers.as_array().into_iter().flatten() {
        b = b.header(h[0].as_str().unwrap(), h[1].as_str().unwrap());
    }
    b.body(body.as_bytes().to_vec()).unwrap()
}

fn echo_manifest() -> Manifest {
    let v = vectors::load("discovery/client_discover_health.json");
    validate_manifest_value(v["manifest"].clone()).unwrap()
}

#[test]
fn client_discover_health() {
    let v = vectors::load("discovery/client_discover_health.json");
    let m = validate_manifest_value(v["manifest"].clone()).unwrap();
    assert_eq!(serde_json::to_value(&m).unwrap(), v["manifest"]);
    let h: HealthStatus = serde_json::from_value(v["health"].clone()).unwrap();
    assert!(h.is_healthy());
    assert_eq!(h.agent_id, m.id.as_str());
    assert_eq!(h.version, m.version);
    assert_eq!(h.asap_version, m.capabilities.asap_version);
}

#[test]
fn health_endpoint() {
    let v = vectors::load("discovery/health_endpoint.json");
    let r = &v["response"];
    let resp = response(
        r["status"].as_u64().unwrap() as u16,
        &r["headers"],
        r["body_text"].as_str().unwrap(),
    );
    let verdict = interpret_health_response(&resp).unwrap();
    let HealthVerdict::Healthy(doc) = &verdict else {
        panic!("{verdict:?}")
    };
    assert_eq!(serde_json::to_value(doc).unwrap(), r["body_json"]);
    assert_eq!(
        String::from_utf8(doc.to_vec()).unwrap(),
        r["body_text"].as_str().unwrap()
    );

    // The 503 + "unhealthy" form is an answer, not an error.
    let ex = &v["unhealthy_example_via_helper"];
    let status = ex[1].as_u64().unwrap() as u16;
    assert_eq!(status, v["unhealthy_status_code"].as_u64().unwrap() as u16);
    let resp = response(status, &json!([]), &ex[0].to_string());
    let verdict = interpret_health_response(&resp).unwrap();
    assert!(!verdict.is_healthy());
    let doc = verdict.status().unwrap();
    assert_eq!(doc.status, "unhealthy");
    assert_eq!(
        doc.load,
        Some(HealthLoad {
            active_tasks: 2,
            queue_depth: 5
        })
    );
    assert_eq!(serde_json::to_value(doc).unwrap(), ex[0]);
}

#[test]
fn manifest_endpoint_seen_by_the_client_cache() {
    let v = vectors::load("discovery/manifest_endpoint.json");
    let r200 = &v["response_200"];
    let etag = v["etag_computed"].as_str().unwrap();
    let base = "http://localhost:8000/";
    let t0 = Instant::now();
    let mut cache = ManifestCache::new(ManifestCacheConfig::default());

    let Lookup::Transmit(req) = cache.lookup(base, t0).unwrap() else {
        panic!("empty cache must fetch")
    };
    assert_eq!(req.method(), http::Method::GET);
    assert_eq!(
        req.uri(),
        "http://localhost:8000/.well-known/asap/manifest.json"
    );
    assert!(req.headers().get(http::header::IF_NONE_MATCH).is_none());

    let resp = response(200, &r200["headers"], r200["body_text"].as_str().unwrap());
    let m = cache
        .handle_response(base, &resp, t0)
        .unwrap()
        .fresh()
        .unwrap();
    assert_eq!(serde_json::to_value(&*m).unwrap(), r200["body_json"]);

    // `public, max-age=300` and ttl_seconds 300: fresh for exactly 300 s.
    let edge = t0 + Duration::from_secs(300);
    assert!(matches!(
        cache.lookup(base, edge - Duration::from_nanos(1)).unwrap(),
        Lookup::Fresh(_)
    ));
    let Lookup::Transmit(req) = cache.lookup(base, edge).unwrap() else {
        panic!("stale at the boundary")
    };
    // Revalidation sends the strong ETag the server computed.
    assert_eq!(req.headers()[http::header::IF_NONE_MATCH], etag);

    for key in ["response_304", "response_304_list"] {
        let r = &v[key];
        assert_eq!(r["body_text"], "");
        let resp = response(304, &r["headers"], "");
        let again = cache.handle_response(base, &resp, edge).unwrap().fresh();
        assert_eq!(again, Some(m.clone()));
        assert_eq!(
            cache.fresh_until(base),
            Some(edge + Duration::from_secs(300))
        );
    }
    assert_eq!(v["response_weak_etag_not_matched"]["status"], 200);
}

#[test]
fn manifest_validation() {
    let v = vectors::load("discovery/manifest_validation.json");
    let m = echo_manifest();
    for (key, min) in [
        (
            "check_version_compatibility(asap_version='0.1', min=None)",
            None,
        ),
        (
            "check_version_compatibility(asap_version='0.1', min='0.1')",
            Some("0.1"),
        ),
        (
            "check_version_compatibility(asap_version='0.1', min='1.0')",
            Some("1.0"),
        ),
        (
            "check_version_compatibility(asap_version='0.1', min='0.0.9')",
            Some("0.0.9"),
        ),
    ] {
        let want = &v[key];
        match check_version_compatibility(&m, min) {
            Ok(()) => assert_eq!(want, "ok", "{key}"),
            Err(e) => {
                assert_eq!(e.to_string(), want["error"].as_str().unwrap(), "{key}");
                assert_eq!(e.field(), want["field"].as_str().unwrap(), "{key}");
            }
        }
    }
    let want = &v["require_skill('translate')"];
    let e = require_skill(&m, "translate").unwrap_err();
    assert_eq!(e.to_string(), want["error"].as_str().unwrap());
    assert_eq!(e.field(), want["field"].as_str().unwrap());
    assert!(require_skill(&m, "echo").is_ok());

    // The generator validated {"id": "urn:asap:agent:x"}.
    let want = &v["validate_manifest_schema(missing fields)"];
    let e = validate_manifest_value(json!({"id": "urn:asap:agent:x"})).unwrap_err();
    assert_eq!(
        e.to_string().lines().next().unwrap(),
        want["error_first_line"].as_str().unwrap()
    );
    assert_eq!(e.field(), want["field"].as_str().unwrap());
}

#[test]
fn lite_registry() {
    let v = vectors::load("discovery/lite_registry.json");
    let input = serde_json::to_vec(&v["input"]).unwrap();
    let reg = LiteRegistry::from_slice(&input).unwrap();
    assert_eq!(serde_json::to_value(&reg).unwrap(), v["materialised"]);
    // Re-serialisation keeps member and endpoint order.
    assert_eq!(
        reg.to_vec(),
        serde_json::to_vec(&v["materialised"]).unwrap()
    );

    let ids = |entries: Vec<&asap_proto::discovery::RegistryEntry>| -> Value {
        entries
            .iter()
            .map(|e| e.id.as_str())
            .collect::<Vec<_>>()
            .into()
    };
    assert_eq!(
        ids(reg.find_by_skill("code_review")),
        v["find_by_skill(code_review)"]
    );
    assert_eq!(
        ids(reg.find_by_skill("Code_Review")),
        v["find_by_skill(Code_Review) (case-sensitive)"]
    );
    assert_eq!(
        serde_json::to_value(reg.find_by_id("urn:asap:agent:echo")).unwrap(),
        v["find_by_id(urn:asap:agent:echo)"]
    );
    assert_eq!(
        serde_json::to_value(reg.find_by_id("urn:asap:agent:missing")).unwrap(),
        v["find_by_id(urn:asap:agent:missing)"]
    );

    let want = &v["generate_registry_entry"];
    let endpoints: Vec<(String, String)> = want["endpoints"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(k, u)| (k.clone(), u.as_str().unwrap().to_owned()))
        .collect();
    let entry = generate_registry_entry(&echo_manifest(), endpoints);
    assert_eq!(serde_json::to_value(&entry).unwrap(), *want);

    // Two discoveries within the TTL: one HTTP request, the same object.
    let url = "https://registry.example.com/registry.json";
    let calls = v["http_calls_for_two_discover_calls"].as_array().unwrap();
    let t0 = Instant::now();
    let mut cache = RegistryCache::new(RegistryCacheConfig::default());
    let mut requests = Vec::new();
    let mut results = Vec::new();
    for t in [t0, t0 + Duration::from_secs(899)] {
        let got = match cache.lookup(url, t).unwrap() {
            Lookup::Fresh(r) => r,
            Lookup::Transmit(req) => {
                requests.push(req.uri().to_string());
                let resp = http::Response::builder()
                    .status(200)
                    .body(input.clone())
                    .unwrap();
                cache
                    .handle_response(url, &resp, t)
                    .unwrap()
                    .fresh()
                    .unwrap()
            }
        };
        results.push(got);
    }
    assert_eq!(
        requests,
        calls
            .iter()
            .map(|c| c.as_str().unwrap())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        std::sync::Arc::ptr_eq(&results[0], &results[1]),
        v["same_object_returned"].as_bool().unwrap()
    );
}

#[test]
fn circuit_breaker_trace() {
    let v = vectors::load("client/circuit_breaker_trace.json");
    let timeout = Duration::from_millis(200);
    let mut b = CircuitBreaker::new(CircuitBreakerConfig {
        failure_threshold: 3,
        open_timeout: timeout,
        half_open_max_probes: 1,
    });
    let mut now = Instant::now();
    for step in v["trace"].as_array().unwrap() {
        let event = step["event"].as_str().unwrap();
        if event.starts_with("record_failure") {
            b.record_failure(now);
        } else if event.starts_with("record_success") {
            b.record_success(now);
        } else if event.starts_with("can_attempt") {
            if event.contains("after timeout") {
                now += timeout;
            }
            assert_eq!(
                b.try_acquire(now).is_ok(),
                step["result"].as_bool().unwrap(),
                "{event}"
            );
        } else {
            assert_eq!(event, "init");
        }
        assert_eq!(
            b.state().as_str(),
            step["state"].as_str().unwrap(),
            "{event}"
        );
        if let Some(n) = step.get("consecutive_failures") {
            assert_eq!(
                u64::from(b.consecutive_failures()),
                n.as_u64().unwrap(),
                "{event}"
            );
        }
    }
    // The documented defaults.
    let d = CircuitBreakerConfig::default();
    assert_eq!(
        (d.failure_threshold, d.open_timeout),
        (5, Duration::from_secs(60))
    );
    assert_eq!(CircuitBreaker::default().state(), CircuitState::Closed);
}

fn request_envelope() -> Envelope {
    let v = vectors::load("jsonrpc/client_task_request_exchange.json");
    Envelope::from_value(v["request"]["body_json"]["params"]["envelope"].clone()).unwrap()
}

#[test]
fn retry_behaviour() {
    let v = vectors::load("client/retry_behaviour.json");
    let table: Vec<f64> = (0..8)
        .map(|k| {
            Backoff::default()
                .without_jitter()
                .delay(k, 0.0)
                .as_secs_f64()
        })
        .collect();
    assert_eq!(
        serde_json::to_value(table).unwrap(),
        v["backoff_table_no_jitter_attempt0_to_7"]
    );

    for (name, max_attempts, retry_after) in [
        ("5xx_x3_default_max_retries_3", 3, None),
        ("429_then_429_then_429_with_Retry-After_7", 3, Some("7")),
        ("429_no_retry_after_max_retries_5", 5, None),
        ("4xx_no_retry", 3, None),
    ] {
        let case = &v[name];
        let mut statuses: Vec<u16> = case["http_statuses_returned"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_u64().unwrap() as u16)
            .collect();
        statuses.reverse();
        let mut core = ClientCore::new("http://127.0.0.1:8000", ClientConfig::default()).unwrap();
        let prepared = core.prepare_send(
            &request_envelope(),
            "01M85S4KH8DCTDJD6AABZBEXDP".parse::<Ulid>().unwrap(),
        );
        let policy = RetryPolicy {
            max_attempts,
            backoff: Backoff::default().without_jitter(),
            ..RetryPolicy::default()
        };
        let mut call = SendCall::new(prepared, policy, 1);
        let mut now = Instant::now();
        let (mut sleeps, mut ids, mut keys, mut bodies) = (vec![], vec![], vec![], vec![]);
        let outcome = loop {
            match call.poll_output(now) {
                Some(SendOutput::Transmit(req)) => {
                    let body: Value = serde_json::from_slice(req.body()).unwrap();
                    ids.push(body["id"].clone());
                    keys.push((
                        req.headers()["x-idempotency-key"]
                            .to_str()
                            .unwrap()
                            .to_owned(),
                        body["params"]["idempotency_key"].clone(),
                    ));
                    bodies.push(req.body().clone());
                    let status = statuses.pop().expect("more attempts than the vector");
                    let mut resp = http::Response::builder().status(status);
                    if let Some(ra) = retry_after {
                        resp = resp.header("retry-after", ra);
                    }
                    call.handle_response(resp.body(Vec::new()).unwrap(), now);
                }
                Some(SendOutput::Timeout(t)) => {
                    sleeps.push((t - now).as_secs_f64());
                    now = t;
                    call.handle_timeout(now);
                }
                Some(SendOutput::Done(o)) => break o,
                None => panic!("{name}: stalled"),
            }
        };
        assert!(statuses.is_empty(), "{name}: all scripted answers used");
        assert_eq!(
            serde_json::to_value(&sleeps).unwrap(),
            case["sleeps_seconds"],
            "{name}"
        );
        assert_eq!(Value::from(ids), case["jsonrpc_ids"], "{name}");
        let same_key = keys
            .iter()
            .all(|(h, p)| *h == keys[0].0 && *p == keys[0].0.as_str());
        assert_eq!(
            same_key,
            case["same_idempotency_key_all_attempts"].as_bool().unwrap()
        );
        assert!(
            bodies.iter().all(|b| *b == bodies[0]),
            "{name}: same bytes on every attempt"
        );
        assert_eq!(case["outcome"], "ASAPConnectionError");
        assert!(
            matches!(
                outcome.result,
                Err(SendError::ServerError { .. }
                    | SendError::RateLimited { .. }
                    | SendError::ClientError { .. })
            ),
            "{name}: {:?}",
            outcome.result
        );
    }
}

#[test]
fn client_core_reproduces_python_request_bytes() {
    let v = vectors::load("jsonrpc/client_task_request_exchange.json");
    let req_v = &v["request"];
    let key: Ulid = req_v["body_json"]["params"]["idempotency_key"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let mut core = ClientCore::new("http://127.0.0.1:56879/", ClientConfig::default()).unwrap();
    let prepared = core.prepare_send(&request_envelope(), key);
    let req = prepared.http_request();
    assert_eq!(req.method(), http::Method::POST);
    assert_eq!(req.uri(), req_v["url"].as_str().unwrap());
    assert_eq!(
        std::str::from_utf8(req.body()).unwrap(),
        req_v["body_text"].as_str().unwrap()
    );
    // The headers the reference client itself sets (transport headers come from the HTTP library).
    for (name, value) in req_v["headers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| (h[0].as_str().unwrap(), h[1].as_str().unwrap()))
    {
        match name {
            "Content-Type" | "X-Idempotency-Key" => {
                assert_eq!(req.headers()[name], value, "{name}");
            }
            // We do not decompress, so we only accept identity.
            "Accept-Encoding" => assert_eq!(req.headers()[name], "identity"),
            _ => {}
        }
    }
    // The reference's answer decodes to the response envelope.
    let r = &v["response"];
    let resp = response(
        r["status"].as_u64().unwrap() as u16,
        &r["headers"],
        r["body_text"].as_str().unwrap(),
    );
    let env = asap_proto::client::interpret_send_response(&resp).unwrap();
    assert_eq!(
        serde_json::to_value(&env).unwrap(),
        r["body_json"]["result"]["envelope"]
    );
    assert_eq!(env.correlation_id.as_deref(), Some(prepared.envelope_id()));
    // The next send gets the next id.
    let next = core.prepare_send(&request_envelope(), key);
    assert_eq!(next.request_id().clone(), "req-2".into());
}

#[test]
fn rate_limit_429_from_the_limiter() {
    let v = vectors::load("jsonrpc/rate_limit_429.json");
    // create_app(rate_limit='2/minute'): 200, 200, 429.
    let mut limiter = SlidingWindowLimiter::new("2/minute".parse().unwrap());
    let t0 = Instant::now();
    let statuses: Vec<u64> = (0..3)
        .map(
            |i| match limiter.check("127.0.0.1", t0 + Duration::from_millis(20 * i)) {
                RateDecision::Allowed => 200,
                RateDecision::Limited { .. } => 429,
            },
        )
        .collect();
    let want: Vec<u64> = v["statuses"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["status"].as_u64().unwrap())
        .collect();
    assert_eq!(statuses, want);
    let RateDecision::Limited {
        retry_after_secs,
        limit_text,
    } = limiter.check("127.0.0.1", t0 + Duration::from_millis(60))
    else {
        panic!("still limited")
    };
    let r = &v["response"];
    assert_eq!(retry_after_secs, 59);
    let body = ErrorResponse::rate_limited_body(retry_after_secs, &limit_text);
    assert_eq!(
        std::str::from_utf8(&body).unwrap(),
        r["body_text"].as_str().unwrap()
    );
    // And the client reads it back.
    let resp = response(429, &r["headers"], r["body_text"].as_str().unwrap());
    let err = asap_proto::client::interpret_send_response(&resp).unwrap_err();
    assert_eq!(
        err,
        SendError::RateLimited {
            retry_after: Some(Duration::from_secs(59)),
            limit: Some("2 per 1 minute".into())
        }
    );
}

/// Checks member order, required members and `additionalProperties` of a
/// reference schema against one of our decoders.
fn check_schema(
    schema: &Value,
    sample: &Value,
    decode: &dyn Fn(&Value) -> Result<Value, asap_proto::DecodeError>,
) {
    let props = schema["properties"].as_object().unwrap();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r.as_str().unwrap())
        .collect();
    let out = decode(sample).unwrap();
    assert_eq!(
        out.as_object().unwrap().keys().collect::<Vec<_>>(),
        props.keys().collect::<Vec<_>>(),
        "member order"
    );
    for prop in props.keys() {
        let mut without = sample.clone();
        without.as_object_mut().unwrap().remove(prop);
        match decode(&without) {
            Err(e) => {
                assert!(
                    required.contains(&prop.as_str()),
                    "{prop} should be optional: {e}"
                );
                assert_eq!(e.kind, DecodeErrorKind::Missing, "{prop}");
                assert_eq!(e.path, *prop);
            }
            Ok(v) => {
                assert!(
                    !required.contains(&prop.as_str()),
                    "{prop} should be required"
                );
                if let Some(d) = props[prop].get("default") {
                    assert_eq!(&v[prop.as_str()], d, "{prop} default");
                }
            }
        }
    }
    let mut extra = sample.clone();
    extra
        .as_object_mut()
        .unwrap()
        .insert("zzz_extra".into(), json!(1));
    let rejected = decode(&extra).is_err();
    assert_eq!(
        rejected,
        schema["additionalProperties"] == json!(false),
        "additionalProperties"
    );
}

#[test]
fn discovery_schemas() {
    let reg = vectors::load("discovery/lite_registry.json");
    let entry_sample = reg["input"]["agents"][0].clone();
    let registry_sample = reg["input"].clone();
    let health_sample =
        vectors::load("discovery/health_endpoint.json")["response"]["body_json"].clone();

    check_schema(
        &vectors::load("schemas_current/registry_entry.json"),
        &entry_sample,
        &|v| {
            asap_proto::error::from_value::<asap_proto::discovery::RegistryEntry>(v.clone())
                .map(|e| serde_json::to_value(e).unwrap())
        },
    );
    check_schema(
        &vectors::load("schemas_current/lite_registry.json"),
        &registry_sample,
        &|v| {
            LiteRegistry::from_slice(&serde_json::to_vec(v).unwrap())
                .map(|r| serde_json::to_value(r).unwrap())
        },
    );
    check_schema(
        &vectors::load("schemas_current/health_status.json"),
        &health_sample,
        &|v| {
            HealthStatus::from_slice(&serde_json::to_vec(v).unwrap())
                .map(|h| serde_json::to_value(h).unwrap())
        },
    );
}
