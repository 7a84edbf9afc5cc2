//! The `POST /asap` pipeline of `asap_proto::server` against the reference's
//! recorded HTTP exchanges: the same bad input gets the same answer.
#![allow(clippy::result_large_err)] // test helpers return the refusing response itself

use std::time::{Duration, Instant};

use asap_proto::model::{Manifest, Timestamp, UnixTime};
use asap_proto::reliability::rate_limit::RateLimitSpec;
use asap_proto::server::{
    drive_inline, HandlerOutcome, HealthReport, Invocation, ManifestDocument, Metrics, Now,
    RequestHead, Route, Server, ServerConfig, SkillResult, Step, Transport,
};
use asap_tests::vectors::load;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

/// Just after the vectors were recorded (their "now" timestamps are 2026-11-24T03:21:06.68Z).
fn vector_now() -> UnixTime {
    "2026-11-24T03:21:07Z".parse::<Timestamp>().unwrap().unix()
}

fn echo_manifest() -> Manifest {
    let body = load("discovery/manifest_endpoint.json")["response_200"]["body_json"].clone();
    serde_json::from_value(body).unwrap()
}

fn server(config: ServerConfig) -> Server {
    let mut s = Server::new(echo_manifest(), config, Instant::now(), 1);
    s.routes_mut().add_skill("echo");
    s
}

fn open() -> ServerConfig {
    ServerConfig {
        rate_limit: None,
        ..ServerConfig::default()
    }
}

fn headers(v: &Value) -> HeaderMap {
    let mut h = HeaderMap::new();
    let pairs: Vec<(String, String)> = match v {
        Value::Object(m) => m
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
            .collect(),
        Value::Array(a) => a
            .iter()
            .map(|p| {
                (
                    p[0].as_str().unwrap().to_owned(),
                    p[1].as_str().unwrap().to_owned(),
                )
            })
            .collect(),
        _ => Vec::new(),
    };
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(&v).unwrap(),
        );
    }
    h
}

fn now_at(wall: UnixTime) -> Now {
    Now {
        monotonic: Instant::now(),
        wall,
    }
}

fn post_head<'a>(hdrs: &'a HeaderMap, peer: [u8; 4]) -> RequestHead<'a> {
    RequestHead {
        method: &http::Method::POST,
        path: "/asap",
        headers: hdrs,
        peer: Some(peer.into()),
        transport: Transport::Http,
    }
}

/// Runs one request through the whole core pipeline; a skill invocation runs the echo skill.
fn exchange(
    server: &mut Server,
    hdrs: &HeaderMap,
    body: &[u8],
    now: UnixTime,
) -> http::Response<Vec<u8>> {
    let echo = |inv: &Invocation| HandlerOutcome::Skill(SkillResult::echo(inv));
    let head = post_head(hdrs, [127, 0, 0, 1]);
    drive_inline(
        server,
        &head,
        body,
        now_at(now),
        echo,
        None,
        &mut Metrics::default(),
    )
}

/// The header stage alone: `Err(response)` when the request is refused before its body.
fn headers_pass(
    server: &mut Server,
    hdrs: &HeaderMap,
    peer: [u8; 4],
    at: Instant,
) -> Result<(), http::Response<Vec<u8>>> {
    let now = Now {
        monotonic: at,
        wall: vector_now(),
    };
    match server
        .handle_request(&post_head(hdrs, peer), now)
        .poll_step()
    {
        Step::ReadBody { .. } => Ok(()),
        Step::Respond(reply) => Err(reply.response),
        other => panic!("unexpected step {other:?}"),
    }
}

/// Drives a body up to its handler: the invocation, or the response that refused it.
fn invocation(
    server: &mut Server,
    body: &[u8],
    now: UnixTime,
) -> Result<Invocation, http::Response<Vec<u8>>> {
    let hdrs = HeaderMap::new();
    let mut ex = server.handle_request(&post_head(&hdrs, [127, 0, 0, 1]), now_at(now));
    loop {
        match ex.poll_step() {
            Step::ReadBody { .. } => ex.handle_body(body, now),
            Step::Admit => server.handle_admission(&mut ex, now_at(now)),
            Step::Invoke(inv) => return Ok(inv),
            Step::Respond(reply) => return Err(reply.response),
            other => panic!("unexpected step {other:?}"),
        }
    }
}

/// A request other than `POST /asap`, answered with `health` when asked.
fn get(
    server: &mut Server,
    method: &http::Method,
    path: &str,
    hdrs: &HeaderMap,
    health: HealthReport,
) -> http::Response<Vec<u8>> {
    let head = RequestHead {
        method,
        path,
        headers: hdrs,
        peer: None,
        transport: Transport::Http,
    };
    let mut ex = server.handle_request(&head, now_at(vector_now()));
    loop {
        match ex.poll_step() {
            Step::CheckHealth => ex.handle_health(health, Instant::now()),
            Step::RenderMetrics => ex.handle_metrics(&Metrics::default()),
            Step::Respond(reply) => return reply.response,
            other => panic!("unexpected step {other:?}"),
        }
    }
}

/// Where asap-rs answers differently on purpose (README, "Compatibility with the reference").
fn deliberate(name: &str) -> Option<(u16, Option<i64>)> {
    match name {
        // -32600 (a malformed request) naming `id` instead of the reference's -32603.
        "invalid_request_float_id_becomes_internal_error" => Some((200, Some(-32600))),
        // -32602 naming the field instead of the reference's -32603.
        "invalid_envelope_bad_urn_becomes_internal_error"
        | "invalid_envelope_response_without_correlation_id"
        | "handler_payload_invalid_internal_error" => Some((200, Some(-32602))),
        // Both spellings of a payload type reach the registered skill.
        "registered_but_pascal_case" => Some((200, None)),
        _ => None,
    }
}

#[test]
fn every_error_case_of_the_reference_gets_the_same_answer() {
    let cases = load("jsonrpc/errors.json");
    let mut seen = 0;
    for (name, case) in cases.as_object().unwrap() {
        if name.starts_with('_') {
            continue;
        }
        seen += 1;
        let mut s = server(open());
        let hdrs = headers(&case["request_headers"]);
        let body = if name == "gzip_request_accepted" {
            // The recorded body is dynamic; send a fresh gzip-compressed echo request.
            let rpc = json!({"jsonrpc": "2.0", "method": "asap.send", "id": "gz", "params": {"envelope": {
                "asap_version": "0.1", "timestamp": "2026-11-24T03:21:06Z", "sender": "urn:asap:agent:client",
                "recipient": "urn:asap:agent:echo-server", "payload_type": "task.request",
                "payload": {"conversation_id": "c", "skill_id": "echo", "input": {"message": "Hello, ASAP!"}}}}});
            gzip(&serde_json::to_vec(&rpc).unwrap())
        } else {
            asap_tests::vectors::request_body_bytes(name, &case["request_body"])
        };
        let resp = exchange(&mut s, &hdrs, &body, vector_now());
        let expected = &case["response"];
        let got: Value = serde_json::from_slice(resp.body()).unwrap_or(Value::Null);
        if let Some((status, code)) = deliberate(name) {
            assert_eq!(resp.status().as_u16(), status, "{name}");
            assert_eq!(got["error"]["code"].as_i64(), code, "{name}: {got}");
            continue;
        }
        assert_eq!(
            resp.status().as_u16(),
            expected["status"].as_u64().unwrap() as u16,
            "{name}: {got}"
        );
        let want = &expected["body_json"];
        if name == "gzip_request_accepted" {
            assert_eq!(
                got["result"]["envelope"]["payload"]["result"],
                json!({"echoed": {"message": "Hello, ASAP!"}})
            );
            continue;
        }
        if want.get("detail").is_some() {
            // HTTP-level errors: 415 identical; 400 names the gzip problem like the reference.
            assert!(got.get("detail").is_some(), "{name}");
            if name == "unsupported_content_encoding" {
                assert_eq!(
                    resp.body(),
                    expected["body_text"].as_str().unwrap().as_bytes(),
                    "{name}"
                );
            }
            continue;
        }
        assert_eq!(got["error"]["code"], want["error"]["code"], "{name}: {got}");
        assert_eq!(got["error"]["message"], want["error"]["message"], "{name}");
        assert_eq!(got["id"], want["id"], "{name}");
        let data = &want["error"]["data"];
        if name == "parse_error" {
            // The parser's own words differ (serde_json vs Python's json); the prefix is the reference's.
            assert!(
                got["error"]["data"]["error"]
                    .as_str()
                    .unwrap()
                    .starts_with("Invalid JSON: "),
                "{got}"
            );
            continue;
        }
        assert_eq!(
            got["error"]["data"]["error"], data["error"],
            "{name}: {got}"
        );
        match name.as_str() {
            "method_not_found"
            | "unknown_payload_type"
            | "invalid_params_missing_envelope"
            | "invalid_params_envelope_not_object"
            | "bool_id_coerced_to_int"
            | "invalid_request_array_batch"
            | "invalid_request_not_object" => {
                assert_eq!(
                    resp.body(),
                    expected["body_text"].as_str().unwrap().as_bytes(),
                    "{name}: byte-identical"
                );
            }
            "invalid_timestamp_too_old" | "invalid_timestamp_future" => {
                assert_eq!(got["error"]["data"]["code"], data["code"]);
                for key in data["details"].as_object().unwrap().keys() {
                    assert!(
                        got["error"]["data"]["details"].get(key).is_some(),
                        "{name}: details.{key}"
                    );
                }
                assert_eq!(
                    got["error"]["data"]["details"]["timestamp"], data["details"]["timestamp"],
                    "{name}"
                );
            }
            _ => {
                let locs = |v: &Value| -> Vec<Value> {
                    v["error"]["data"]["validation_errors"]
                        .as_array()
                        .map(|a| a.iter().map(|e| e["loc"].clone()).collect())
                        .unwrap_or_default()
                };
                assert_eq!(locs(&got), locs(want), "{name}: the same members are named");
            }
        }
    }
    assert_eq!(seen, 27, "every case of jsonrpc/errors.json is exercised");
}

#[test]
fn success_with_integer_id_matches_the_reference_shape() {
    let v = load("jsonrpc/success_int_id.json");
    let mut s = server(open());
    let resp = exchange(
        &mut s,
        &HeaderMap::new(),
        &serde_json::to_vec(&v["request"]).unwrap(),
        vector_now(),
    );
    let got: Value = serde_json::from_slice(resp.body()).unwrap();
    let want = &v["response"]["body_json"];
    assert_eq!(got["id"], json!(7));
    let (g, w) = (&got["result"]["envelope"], &want["result"]["envelope"]);
    let keys = |x: &Value| x.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(g), keys(w));
    for k in [
        "asap_version",
        "sender",
        "recipient",
        "payload_type",
        "correlation_id",
        "requires_ack",
    ] {
        assert_eq!(g[k], w[k], "{k}");
    }
    assert_eq!(keys(&g["payload"]), keys(&w["payload"]));
    assert_eq!(g["payload"]["result"], w["payload"]["result"]);
    assert_eq!(g["payload"]["status"], "completed");
    assert!(g["payload"]["task_id"]
        .as_str()
        .unwrap()
        .starts_with("task_"));
    assert!(g["id"]
        .as_str()
        .unwrap()
        .parse::<asap_proto::model::Ulid>()
        .is_ok());
}

#[test]
fn nonce_replay_is_byte_identical() {
    let v = load("jsonrpc/nonce_replay.json");
    let mut s = server(ServerConfig {
        nonce: asap_proto::server::NonceMode::WhenPresent,
        ..open()
    });
    let rpc = |id: &str| json!({"jsonrpc": "2.0", "method": "asap.send", "params": {"envelope": v["request_envelope"]}, "id": id});
    let first = exchange(
        &mut s,
        &HeaderMap::new(),
        &serde_json::to_vec(&rpc("n-1")).unwrap(),
        vector_now(),
    );
    assert!(serde_json::from_slice::<Value>(first.body())
        .unwrap()
        .get("result")
        .is_some());
    let replay = exchange(
        &mut s,
        &HeaderMap::new(),
        &serde_json::to_vec(&rpc("n-2")).unwrap(),
        vector_now(),
    );
    assert_eq!(
        replay.body(),
        v["replay_response"]["body_text"]
            .as_str()
            .unwrap()
            .as_bytes()
    );
    if let Some(nn) = v.get("non_string_nonce_response") {
        let mut env = v["request_envelope"].clone();
        env["extensions"] = json!({"nonce": 12345});
        let body = json!({"jsonrpc": "2.0", "method": "asap.send", "params": {"envelope": env}, "id": "n-3"});
        let got: Value = serde_json::from_slice(
            exchange(
                &mut s,
                &HeaderMap::new(),
                &serde_json::to_vec(&body).unwrap(),
                vector_now(),
            )
            .body(),
        )
        .unwrap();
        assert_eq!(got["error"]["code"], nn["body_json"]["error"]["code"]);
        assert_eq!(got["error"]["data"]["code"], "asap:protocol/invalid_nonce");
    }
}

#[test]
fn rate_limit_and_size_limit_bodies_match() {
    let v = load("jsonrpc/rate_limit_429.json");
    let spec = RateLimitSpec::parse("2/minute").unwrap();
    let mut s = server(ServerConfig {
        rate_limit: Some(spec),
        ..ServerConfig::default()
    });
    let t0 = Instant::now();
    let none = HeaderMap::new();
    assert!(headers_pass(&mut s, &none, [10, 0, 0, 1], t0).is_ok());
    assert!(headers_pass(&mut s, &none, [10, 0, 0, 1], t0).is_ok());
    let r = headers_pass(&mut s, &none, [10, 0, 0, 1], t0 + Duration::from_secs(1)).unwrap_err();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "59");
    assert_eq!(
        r.body(),
        v["response"]["body_text"].as_str().unwrap().as_bytes()
    );
    // Another client is not affected.
    assert!(headers_pass(&mut s, &none, [10, 0, 0, 2], t0).is_ok());

    let v = load("jsonrpc/size_limit_413.json");
    let s = server(ServerConfig {
        max_request_size: 1024,
        ..open()
    });
    let mut h = HeaderMap::new();
    h.insert(
        "content-length",
        HeaderValue::from(v["request_content_length"].as_u64().unwrap()),
    );
    let mut s = s;
    let r = headers_pass(&mut s, &h, [127, 0, 0, 1], Instant::now()).unwrap_err();
    assert_eq!(r.status(), 413);
    assert_eq!(
        r.body(),
        v["response"]["body_text"].as_str().unwrap().as_bytes()
    );
}

#[test]
fn manifest_etag_and_body_are_the_references() {
    let v = load("discovery/manifest_endpoint.json");
    let doc = ManifestDocument::new(echo_manifest());
    assert_eq!(doc.etag(), v["etag_computed"].as_str().unwrap());
    assert_eq!(
        doc.body(),
        v["response_200"]["body_text"].as_str().unwrap().as_bytes()
    );
    let mut s = server(open());
    let mut get = |inm: Option<&str>| {
        let mut h = HeaderMap::new();
        if let Some(x) = inm {
            h.insert("if-none-match", HeaderValue::from_str(x).unwrap());
        }
        get(
            &mut s,
            &http::Method::GET,
            "/.well-known/asap/manifest.json",
            &h,
            HealthReport::default(),
        )
    };
    let etag = doc.etag().to_owned();
    assert_eq!(get(None).status(), 200);
    assert_eq!(get(None).headers()["cache-control"], "public, max-age=300");
    assert_eq!(get(Some(&etag)).status(), 304);
    assert!(get(Some(&etag)).body().is_empty());
    assert_eq!(get(Some(&format!("\"other\", {etag}"))).status(), 304);
    // Deliberate difference: RFC 9110 13.1.2 (weak comparison, `*`); the reference answers 200.
    assert_eq!(get(Some(&format!("W/{etag}"))).status(), 304);
    assert_eq!(get(Some(&format!("\"a,b\", W/{etag}"))).status(), 304);
    assert_eq!(get(Some("*")).status(), 304);
    assert_eq!(get(Some("W/\"other\"")).status(), 200);
}

#[test]
fn health_and_probe_documents_match() {
    let v = load("discovery/health_endpoint.json");
    let mut s = server(open());
    let r = get(
        &mut s,
        &http::Method::GET,
        "/.well-known/asap/health",
        &HeaderMap::new(),
        HealthReport::default(),
    );
    let got: Value = serde_json::from_slice(r.body()).unwrap();
    let want = &v["response"]["body_json"];
    let keys = |x: &Value| x.as_object().unwrap().keys().cloned().collect::<Vec<_>>();
    assert_eq!(keys(&got), keys(want));
    for k in ["status", "agent_id", "version", "asap_version", "load"] {
        assert_eq!(got[k], want[k], "{k}");
    }
    let r = get(
        &mut s,
        &http::Method::GET,
        "/.well-known/asap/health",
        &HeaderMap::new(),
        HealthReport {
            unhealthy: true,
            load: Some(asap_proto::discovery::HealthLoad {
                active_tasks: 2,
                queue_depth: 5,
            }),
        },
    );
    assert_eq!(
        r.status().as_u16(),
        v["unhealthy_status_code"].as_u64().unwrap() as u16
    );
    let got: Value = serde_json::from_slice(r.body()).unwrap();
    let want = &v["unhealthy_example_via_helper"][0];
    assert_eq!(got["status"], want["status"]);
    assert_eq!(got["load"], want["load"]);

    let v = load("discovery/k8s_probes.json");
    for (path, key) in [("/health", "GET /health"), ("/ready", "GET /ready")] {
        let r = get(
            &mut s,
            &http::Method::GET,
            path,
            &HeaderMap::new(),
            HealthReport::default(),
        );
        assert_eq!(r.body(), v[key]["body_text"].as_str().unwrap().as_bytes());
    }
    let r = get(
        &mut s,
        &http::Method::GET,
        "/asap",
        &HeaderMap::new(),
        HealthReport::default(),
    );
    let want = &v["GET /asap (method not allowed)"];
    assert_eq!(r.status(), 405);
    assert_eq!(r.headers()["allow"], "POST");
    assert_eq!(r.body(), want["body_text"].as_str().unwrap().as_bytes());
}

fn at(secs_offset: f64) -> String {
    let base = vector_now().as_micros();
    Timestamp::from_unix(UnixTime::from_micros(base + (secs_offset * 1e6) as i64)).to_string()
}

fn with_timestamp(ts: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"jsonrpc": "2.0", "method": "asap.send", "id": 1, "params": {"envelope": {
        "asap_version": "0.1", "timestamp": ts, "sender": "urn:asap:agent:client", "recipient": "urn:asap:agent:echo-server",
        "payload_type": "task.request", "payload": {"conversation_id": "c", "skill_id": "echo", "input": {}}}}}))
    .unwrap()
}

fn accepted(s: &mut Server, body: &[u8]) -> bool {
    invocation(s, body, vector_now()).is_ok()
}

#[test]
fn replay_window_boundaries_are_inclusive() {
    let mut s = server(open());
    assert!(
        accepted(&mut s, &with_timestamp(&at(-300.0))),
        "exactly 300 s old passes"
    );
    assert!(!accepted(&mut s, &with_timestamp(&at(-300.000_001))));
    assert!(
        accepted(&mut s, &with_timestamp(&at(30.0))),
        "exactly 30 s ahead passes"
    );
    assert!(!accepted(&mut s, &with_timestamp(&at(30.000_001))));
    // Naive timestamps are taken as UTC.
    let naive = at(-10.0).trim_end_matches('Z').to_owned();
    assert!(accepted(&mut s, &with_timestamp(&naive)));
}

#[test]
fn missing_timestamp_is_refused_unless_allowed() {
    let body = br#"{"jsonrpc":"2.0","method":"asap.send","id":1,"params":{"envelope":{"asap_version":"0.1",
        "sender":"urn:asap:agent:client","recipient":"urn:asap:agent:echo-server","payload_type":"task.request",
        "payload":{"conversation_id":"c","skill_id":"echo","input":{}}}}}"#;
    let mut strict = server(open());
    let r = invocation(&mut strict, body, vector_now()).expect_err("accepted");
    let v: Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(v["error"]["code"], -32602);
    assert_eq!(
        v["error"]["data"]["code"],
        "asap:protocol/invalid_timestamp"
    );
    let mut lax = server(ServerConfig {
        require_timestamp: false,
        ..open()
    });
    let inv = invocation(&mut lax, body, vector_now()).expect("refused");
    assert_eq!(inv.envelope.timestamp.unix(), vector_now());
    assert_eq!(inv.envelope.id.len(), 26, "missing id gets a ULID");
    assert!(matches!(inv.route, Route::Skill(_)));
}

fn gzip(data: &[u8]) -> Vec<u8> {
    // A stored (uncompressed) deflate stream wrapped in gzip: enough to exercise decoding
    // without a compressor dependency in this crate.
    let mut out = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 0xff];
    for (i, chunk) in data.chunks(65_535).enumerate() {
        let last = (i + 1) * 65_535 >= data.len();
        out.push(u8::from(last));
        let len = chunk.len() as u16;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(&(!len).to_le_bytes());
        out.extend_from_slice(chunk);
    }
    out.extend_from_slice(&crc32(data).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn trace_context_is_continued_or_started_like_the_reference() {
    let v = load("jsonrpc/trace_context.json");
    for case in ["with_valid_context", "without_valid_context"] {
        let mut s = server(open());
        let rpc = json!({"jsonrpc": "2.0", "method": "asap.send", "id": 1, "params": {"envelope": v[case]["request_envelope"]}});
        let resp = exchange(
            &mut s,
            &HeaderMap::new(),
            &serde_json::to_vec(&rpc).unwrap(),
            vector_now(),
        );
        let got: Value = serde_json::from_slice(resp.body()).unwrap();
        let (g, w) = (&got["result"]["envelope"], &v[case]["response_envelope"]);
        assert_eq!(g["trace_id"], w["trace_id"], "{case}");
        if w["extensions"].is_null() {
            assert_eq!(g["extensions"], Value::Null, "{case}");
        } else {
            let ext = g["extensions"].as_object().unwrap();
            assert_eq!(
                ext.keys().collect::<Vec<_>>(),
                w["extensions"]
                    .as_object()
                    .unwrap()
                    .keys()
                    .collect::<Vec<_>>()
            );
            assert_eq!(ext["trace_id"].as_str().unwrap().len(), 32);
            assert_eq!(ext["span_id"].as_str().unwrap().len(), 16);
        }
    }
}

#[test]
fn handler_failures_are_sanitised_and_asap_errors_name_themselves() {
    use asap_proto::jsonrpc::AsapError;
    use asap_proto::server::HandlerError;
    let v = load("jsonrpc/handler_asap_error.json");
    let body = |id: &str| {
        serde_json::to_vec(&json!({"jsonrpc": "2.0", "method": "asap.send", "id": id, "params": {"envelope": {
            "asap_version": "0.1", "timestamp": "2026-11-24T03:21:06Z", "sender": "urn:asap:agent:client",
            "recipient": "urn:asap:agent:echo-server", "payload_type": "task.request",
            "payload": {"conversation_id": "c", "skill_id": "echo", "input": {}}}}}))
        .unwrap()
    };
    let run = |s: &mut Server, err: HandlerError| {
        let failed = |_: &Invocation| HandlerOutcome::Failed(err.clone());
        let hdrs = HeaderMap::new();
        let head = post_head(&hdrs, [127, 0, 0, 1]);
        drive_inline(
            s,
            &head,
            &body("h-1"),
            now_at(vector_now()),
            failed,
            None,
            &mut Metrics::default(),
        )
    };
    // Any failure other than an ASAP protocol error: the reference's sanitised -32603, byte for byte.
    let r = run(
        &mut server(open()),
        HandlerError::failed("database password is hunter2"),
    );
    assert_eq!(
        r.body(),
        v["response"]["body_text"].as_str().unwrap().as_bytes()
    );
    // Debug mode shows the detail, with the reference's keys.
    let r = run(
        &mut server(ServerConfig {
            debug: true,
            ..open()
        }),
        HandlerError::failed("Task not found: task_missing"),
    );
    let got: Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(
        got["error"]["data"]["error"],
        v["debug_mode_response_error_and_type"]["error"]
    );
    assert!(got["error"]["data"].get("type").is_some());
    // Deliberate difference: an ASAP task/protocol error is -32602 carrying the error object.
    let r = run(
        &mut server(open()),
        HandlerError::Asap(AsapError::task_not_found("task_missing")),
    );
    let got: Value = serde_json::from_slice(r.body()).unwrap();
    assert_eq!(got["error"]["code"], -32602);
    assert_eq!(got["error"]["data"]["code"], "asap:task/not_found");
    assert_eq!(
        got["error"]["data"]["details"],
        json!({"task_id": "task_missing"})
    );
}

fn rpc_body(id: &str, envelope: &Value) -> Vec<u8> {
    format!(
        r#"{{"jsonrpc":"2.0","method":"asap.send","params":{{"envelope":{envelope}}},"id":{id}}}"#
    )
    .into_bytes()
}

fn valid_envelope() -> Value {
    json!({"asap_version": "0.1", "timestamp": at(0.0), "sender": "urn:asap:agent:client",
        "recipient": "urn:asap:agent:echo-server", "payload_type": "task.request",
        "payload": {"conversation_id": "c", "skill_id": "echo", "input": {}}})
}

fn answer(body: &[u8]) -> (http::Response<Vec<u8>>, Value) {
    let mut s = server(open());
    let r = exchange(&mut s, &HeaderMap::new(), body, vector_now());
    let v = serde_json::from_slice(r.body()).unwrap_or(Value::Null);
    (r, v)
}

#[test]
fn validation_errors_use_pydantic_types_and_messages() {
    // (member, value, pydantic type, msg) as the reference answers them (spec 1, 3).
    let cases = [
        (
            "asap_version",
            json!(1),
            "string_type",
            "Input should be a valid string",
        ),
        (
            "sender",
            json!(null),
            "string_type",
            "Input should be a valid string",
        ),
        (
            "payload_type",
            json!(1),
            "string_type",
            "Input should be a valid string",
        ),
        (
            "id",
            json!(5),
            "string_type",
            "Input should be a valid string",
        ),
        (
            "correlation_id",
            json!(5),
            "string_type",
            "Input should be a valid string",
        ),
        (
            "payload",
            json!([]),
            "dict_type",
            "Input should be a valid dictionary",
        ),
        (
            "payload",
            json!("x"),
            "dict_type",
            "Input should be a valid dictionary",
        ),
        (
            "extensions",
            json!([]),
            "dict_type",
            "Input should be a valid dictionary",
        ),
        (
            "requires_ack",
            json!(null),
            "bool_type",
            "Input should be a valid boolean",
        ),
        (
            "requires_ack",
            json!(2),
            "bool_parsing",
            "Input should be a valid boolean, unable to interpret input",
        ),
        (
            "timestamp",
            json!(true),
            "datetime_type",
            "Input should be a valid datetime",
        ),
        (
            "foo",
            json!(1),
            "extra_forbidden",
            "Extra inputs are not permitted",
        ),
    ];
    for (member, value, kind, msg) in cases {
        let mut env = valid_envelope();
        env[member] = value.clone();
        let (_, v) = answer(&rpc_body("1", &env));
        assert_eq!(v["error"]["code"], -32602, "{member}={value}: {v}");
        let item = &v["error"]["data"]["validation_errors"][0];
        assert_eq!(item["type"], kind, "{member}={value}: {v}");
        assert_eq!(item["msg"], msg, "{member}={value}: {v}");
        assert_eq!(item["loc"], json!([member]), "{member}={value}: {v}");
    }
    let mut env = valid_envelope();
    env["timestamp"] = json!("yesterday");
    let (_, v) = answer(&rpc_body("1", &env));
    let item = &v["error"]["data"]["validation_errors"][0];
    assert_eq!(item["type"], "datetime_from_date_parsing", "{v}");
    assert!(item["msg"]
        .as_str()
        .unwrap()
        .starts_with("Input should be a valid datetime or date, "));

    // Missing and unknown members are reported together, as pydantic does.
    let mut env = valid_envelope();
    env.as_object_mut().unwrap().remove("sender");
    env["foo"] = json!(1);
    let (_, v) = answer(&rpc_body("1", &env));
    let items: Vec<(Value, Value, Value)> = v["error"]["data"]["validation_errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["type"].clone(), e["loc"].clone(), e["msg"].clone()))
        .collect();
    assert_eq!(
        items,
        vec![
            (json!("missing"), json!(["sender"]), json!("Field required")),
            (
                json!("extra_forbidden"),
                json!(["foo"]),
                json!("Extra inputs are not permitted")
            ),
        ]
    );

    // A null JSON-RPC id: the reference's two items, word for word.
    let (_, v) = answer(&rpc_body("null", &valid_envelope()));
    assert_eq!(v["error"]["code"], -32600);
    assert_eq!(
        v["error"]["data"]["validation_errors"],
        json!([
            {"type": "string_type", "loc": ["id", "str"], "msg": "Input should be a valid string"},
            {"type": "int_type", "loc": ["id", "int"], "msg": "Input should be a valid integer"}
        ])
    );
}

#[test]
fn integer_ids_of_any_size_are_echoed_verbatim() {
    for id in [
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
        "123456789012345678901234567890",
        "-123456789012345678901234567890",
    ] {
        let (r, v) = answer(&rpc_body(id, &valid_envelope()));
        assert!(v.get("result").is_some(), "{id}: {v}");
        let text = String::from_utf8(r.body().clone()).unwrap();
        assert!(text.ends_with(&format!(r#","id":{id}}}"#)), "{id}: {text}");
        // Error responses echo it too.
        let (r, _) = answer(
            format!(r#"{{"jsonrpc":"2.0","method":"x","params":{{}},"id":{id}}}"#).as_bytes(),
        );
        let text = String::from_utf8(r.body().clone()).unwrap();
        assert!(
            text.contains("-32601") && text.ends_with(&format!(r#","id":{id}}}"#)),
            "{text}"
        );
    }
    // Integral floats coerce (1.0 -> 1, 1e3 -> 1000); others stay refused (README 1).
    for (id, want) in [
        ("1.0", json!(1)),
        ("1e3", json!(1000)),
        ("-0.0", json!(0)),
        ("true", json!(1)),
    ] {
        let (_, v) = answer(&rpc_body(id, &valid_envelope()));
        assert_eq!(v["id"], want, "{id}: {v}");
        assert!(v.get("result").is_some(), "{id}: {v}");
    }
    for id in ["1.5", "1e30", "{}", "[]"] {
        let (_, v) = answer(&rpc_body(id, &valid_envelope()));
        assert_eq!(v["error"]["code"], -32600, "{id}: {v}");
        assert_eq!(v["id"], Value::Null, "{id}: {v}");
    }
}

#[test]
fn timestamp_error_details_give_the_instant_in_utc() {
    // The reference converts to UTC before formatting details.timestamp (isoformat, +00:00).
    for (ts, want) in [
        ("2026-11-24T05:00:00+02:00", "2026-11-24T03:00:00+00:00"),
        ("2026-11-24T03:00:00", "2026-11-24T03:00:00+00:00"),
        ("2026-11-24T03:00:00.5Z", "2026-11-24T03:00:00.500000+00:00"),
        ("2026-11-24T06:00:00+02:00", "2026-11-24T04:00:00+00:00"),
    ] {
        let mut env = valid_envelope();
        env["timestamp"] = json!(ts);
        let (_, v) = answer(&rpc_body("1", &env));
        assert_eq!(
            v["error"]["data"]["code"], "asap:protocol/invalid_timestamp",
            "{ts}: {v}"
        );
        assert_eq!(
            v["error"]["data"]["details"]["timestamp"], want,
            "{ts}: {v}"
        );
    }
}

#[test]
fn only_gzip_br_and_identity_encodings_and_get_only_routes() {
    let mut s = server(open());
    let mut h = HeaderMap::new();
    h.insert("content-encoding", HeaderValue::from_static("x-gzip"));
    let r = exchange(&mut s, &h, &rpc_body("1", &valid_envelope()), vector_now());
    assert_eq!(r.status(), 415);
    assert_eq!(
        r.body(),
        br#"{"detail":"Unsupported Content-Encoding: x-gzip. Supported: br, gzip"}"#
    );
    for enc in ["GZIP", "Gzip"] {
        h.insert("content-encoding", HeaderValue::from_static(enc));
        let r = exchange(
            &mut s,
            &h,
            &gzip(&rpc_body("1", &valid_envelope())),
            vector_now(),
        );
        assert_eq!(r.status(), 200, "{enc}");
    }
    // GET routes answer HEAD with the GET's headers and no body (RFC 9110 9.3.2; the
    // reference answers 405), and refuse every other method with 405 + Allow.
    for path in [
        "/.well-known/asap/manifest.json",
        "/.well-known/asap/health",
        "/health",
        "/ready",
        "/asap/metrics",
    ] {
        let none = HeaderMap::new();
        let full = get(
            &mut s,
            &http::Method::GET,
            path,
            &none,
            HealthReport::default(),
        );
        let head = get(
            &mut s,
            &http::Method::HEAD,
            path,
            &none,
            HealthReport::default(),
        );
        assert_eq!(head.status(), 200, "HEAD {path}");
        assert!(head.body().is_empty(), "HEAD {path}");
        assert_eq!(
            head.headers()["content-type"],
            full.headers()["content-type"],
            "HEAD {path}"
        );
        assert_eq!(
            head.headers()["content-length"],
            full.body().len().to_string().as_str(),
            "HEAD {path}"
        );
        for m in [http::Method::PUT, http::Method::OPTIONS, http::Method::POST] {
            let r = get(&mut s, &m, path, &none, HealthReport::default());
            assert_eq!(r.status(), 405, "{m} {path}");
            assert_eq!(r.headers()["allow"], "GET, HEAD", "{m} {path}");
            assert_eq!(r.body(), br#"{"detail":"Method Not Allowed"}"#);
        }
    }
    let r = get(
        &mut s,
        &http::Method::HEAD,
        "/asap",
        &HeaderMap::new(),
        HealthReport::default(),
    );
    assert_eq!(
        (r.status().as_u16(), &r.headers()["allow"]),
        (405, &HeaderValue::from_static("POST"))
    );
}
