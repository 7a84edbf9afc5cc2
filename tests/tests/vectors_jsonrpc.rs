//! `jsonrpc/errors.json`: every error the reference's `POST /asap` produced,
//! replayed through the JSON-RPC core (`parse_json` → `decode_request` →
//! `take_envelope` → `materialize`). Cases that need the HTTP server (content
//! encoding, replay window, handler dispatch) are listed in [`SERVER_CASES`];
//! the test still enumerates every case key, so a new case cannot be skipped.

// `ErrorResponse` is the value under test; asap-proto's clippy.toml raises the
// threshold for the same reason.
#![allow(clippy::result_large_err)]

use asap_proto::canonical_json::{self, JsonStyle};
use asap_proto::jsonrpc::{self, codes, ErrorResponse, JsonRpcRequest, RequestId, SuccessResponse};
use asap_proto::model::{Envelope, EnvelopeInput, Payload, Timestamp, UnixTime};
use asap_tests::vectors;
use serde_json::{json, Value};

/// Cases decided after the JSON-RPC core by the HTTP server, with what decides
/// them. The core's part (the body decodes, or the builder for the answer) is
/// still checked here.
const SERVER_CASES: &[(&str, &str)] = &[
    (
        "invalid_timestamp_too_old",
        "server replay window (covered by the server tests)",
    ),
    (
        "invalid_timestamp_future",
        "server replay window (covered by the server tests)",
    ),
    (
        "handler_payload_invalid_internal_error",
        "handler failure → -32603 (covered by the server tests)",
    ),
    (
        "unsupported_content_encoding",
        "HTTP 415 before JSON-RPC (covered by the server tests)",
    ),
    (
        "bad_gzip_body",
        "HTTP 400 before JSON-RPC (covered by the server tests)",
    ),
    (
        "gzip_request_accepted",
        "gzip decoding (covered by the server tests)",
    ),
];

/// Runs the core pipeline; `Ok` when the envelope decoded.
fn run(bytes: &[u8]) -> Result<(JsonRpcRequest, Envelope), ErrorResponse> {
    let value = jsonrpc::parse_json(bytes)?;
    let mut req = jsonrpc::decode_request(value)?;
    let input = req.take_envelope()?;
    let now = Timestamp::from_unix(UnixTime::from_secs(1_795_000_000));
    let env = input.materialize(now, || "01KDXZ0000GENERATED0000000".into());
    // The bytes-level entry point agrees with the two-step one.
    let mut again = jsonrpc::decode_request_bytes(bytes).expect("same result");
    assert_eq!(
        again
            .take_envelope()
            .map(|e| e.materialize(now, || env.id.clone())),
        Ok(env.clone())
    );
    Ok((req, env))
}

fn response_of(case: &Value) -> (&Value, &str) {
    let r = &case["response"];
    (&r["body_json"], r["body_text"].as_str().unwrap())
}

/// The whole answer is the reference's, byte for byte (compact server JSON).
fn assert_exact(name: &str, ours: &ErrorResponse, case: &Value) {
    let (json, text) = response_of(case);
    assert_eq!(&serde_json::to_value(ours).unwrap(), json, "{name}");
    assert_eq!(
        String::from_utf8(ours.to_vec()).unwrap(),
        text,
        "{name}: bytes"
    );
}

/// Same code, message, id and `data.error`; `validation_errors` name the same
/// members with the same pydantic `type` (their `msg`/`input`/`url` are
/// pydantic's and are not reproduced).
fn assert_same_shape(name: &str, ours: &ErrorResponse, case: &Value) {
    let (want, _) = response_of(case);
    let got = serde_json::to_value(ours).unwrap();
    assert_eq!(got["error"]["code"], want["error"]["code"], "{name}: code");
    assert_eq!(
        got["error"]["message"], want["error"]["message"],
        "{name}: message"
    );
    assert_eq!(got["id"], want["id"], "{name}: id");
    let (gd, wd) = (&got["error"]["data"], &want["error"]["data"]);
    assert_eq!(gd["error"], wd["error"], "{name}: data.error");
    let shape = |d: &Value| -> Vec<(Value, Value)> {
        d["validation_errors"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|e| (e["type"].clone(), e["loc"].clone()))
                    .collect()
            })
            .unwrap_or_default()
    };
    assert_eq!(
        shape(gd),
        shape(wd),
        "{name}: validation_errors (type, loc)"
    );
}

fn validation_locs(resp: &ErrorResponse) -> Vec<Value> {
    resp.error.data.as_ref().unwrap()["validation_errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["loc"].clone())
        .collect()
}

#[test]
fn error_cases() {
    let vector = vectors::load("jsonrpc/errors.json");
    let mut checked = Vec::new();
    for name in vectors::data_keys(&vector) {
        let case = &vector[name.as_str()];
        let name = name.as_str();
        let bytes = case
            .get("request_body")
            .map(|b| asap_tests::vectors::request_body_bytes(name, b));
        let result = bytes.as_deref().map(run);
        let err = || -> ErrorResponse {
            match result.clone() {
                Some(Err(e)) => e,
                Some(Ok((_, env))) => panic!("{name}: the core accepted it: {env:?}"),
                None => panic!("{name}: no request body"),
            }
        };
        match name {
            // -32700: invalid JSON. data.error carries the parser's text, which is
            // Python's in the reference and serde_json's here.
            "parse_error" => {
                let e = err();
                let (want, _) = response_of(case);
                assert_eq!(e.error.code, codes::PARSE_ERROR);
                assert_eq!(serde_json::to_value(&e).unwrap()["id"], want["id"]);
                let msg = e.error.data.as_ref().unwrap()["error"]
                    .as_str()
                    .unwrap()
                    .to_owned();
                assert!(msg.starts_with("Invalid JSON: "), "{msg}");
                assert!(msg.contains("EOF"), "{msg} says where the text ends");
            }
            // Byte-identical answers.
            "parse_error_bad_utf8"
            | "invalid_request_array_batch"
            | "invalid_request_not_object"
            | "bool_id_coerced_to_int"
            | "method_not_found"
            | "invalid_params_missing_envelope"
            | "invalid_params_envelope_not_object" => assert_exact(name, &err(), case),
            // Structural errors: same code, summary, id and (type, loc) list.
            "invalid_request_missing_method"
            | "invalid_request_wrong_version"
            | "invalid_request_missing_id_notification"
            | "invalid_request_null_id"
            | "invalid_request_extra_member"
            | "invalid_params_params_null"
            | "invalid_params_params_not_object"
            | "invalid_params_envelope_missing_fields" => assert_same_shape(name, &err(), case),
            // Deliberate difference: the reference cannot echo an id of type float
            // (or object/array), crashes and answers -32603 with id "". We answer
            // -32600 (a malformed request) naming `id`, with id null.
            "invalid_request_float_id_becomes_internal_error" => {
                let e = err();
                assert_eq!(e.error.code, codes::INVALID_REQUEST);
                assert_eq!(e.id, None);
                assert_eq!(validation_locs(&e), [json!(["id"])]);
                for body in [
                    r#"{"jsonrpc":"2.0","method":"asap.send","params":{},"id":{"a":1}}"#,
                    r#"{"jsonrpc":"2.0","method":"asap.send","params":{},"id":[1]}"#,
                ] {
                    let e = run(body.as_bytes()).unwrap_err();
                    assert_eq!(
                        (e.error.code, validation_locs(&e)),
                        (codes::INVALID_REQUEST, vec![json!(["id"])]),
                        "{body}"
                    );
                }
                assert_eq!(response_of(case).0["error"]["code"], codes::INTERNAL_ERROR);
            }
            // Deliberate difference: a custom-validator failure (bad URN, missing
            // correlation_id) crashes the reference's error encoder (-32603). We
            // answer -32602 "Invalid envelope structure" naming the member.
            "invalid_envelope_bad_urn_becomes_internal_error"
            | "invalid_envelope_response_without_correlation_id" => {
                let e = err();
                let (want, _) = response_of(case);
                assert_eq!(
                    want["error"]["code"],
                    codes::INTERNAL_ERROR,
                    "reference quirk"
                );
                assert_eq!(e.error.code, codes::INVALID_PARAMS);
                assert_eq!(serde_json::to_value(&e).unwrap()["id"], want["id"]);
                assert_eq!(
                    e.error.data.as_ref().unwrap()["error"],
                    "Invalid envelope structure"
                );
                let member = if name.contains("urn") {
                    "sender"
                } else {
                    "correlation_id"
                };
                assert_eq!(validation_locs(&e), [json!([member])], "{name}");
            }
            // The core accepts the envelope; the payload-type registry says no.
            // The registry lookup is the server's; the answer's builder is ours.
            "unknown_payload_type" | "registered_but_pascal_case" => {
                let (req, env) = result.clone().unwrap().unwrap();
                let ours = ErrorResponse::no_handler(&env.payload_type, Some(req.id));
                assert_exact(name, &ours, case);
            }
            _ => {
                let why = SERVER_CASES
                    .iter()
                    .find(|(n, _)| *n == name)
                    .map(|(_, why)| *why)
                    .unwrap_or_else(|| panic!("errors.json case {name:?} is neither checked nor listed in SERVER_CASES"));
                assert!(!why.is_empty());
                server_case_core_part(name, case, result.clone());
            }
        }
        checked.push(name.to_owned());
    }
    assert!(checked.len() >= 27, "{checked:?}");
    for (name, _) in SERVER_CASES {
        assert!(
            checked.iter().any(|c| c == name),
            "SERVER_CASES names {name}, which errors.json lacks"
        );
    }
}

/// What the core contributes to the server-decided cases.
fn server_case_core_part(
    name: &str,
    case: &Value,
    result: Option<Result<(JsonRpcRequest, Envelope), ErrorResponse>>,
) {
    match name {
        "invalid_timestamp_too_old" | "invalid_timestamp_future" => {
            // The envelope decodes and keeps its timestamp for the window check.
            let (_, env) = result.unwrap().unwrap();
            let sent = case["request_body"]["params"]["envelope"]["timestamp"]
                .as_str()
                .unwrap();
            assert_eq!(env.timestamp, sent.parse::<Timestamp>().unwrap());
            let details = &case["response"]["body_json"]["error"]["data"]["details"];
            assert_eq!(
                env.timestamp.to_python_isoformat(),
                details["timestamp"],
                "details.timestamp"
            );
        }
        "handler_payload_invalid_internal_error" => {
            // The transport accepts the envelope; the typed payload does not decode.
            let (req, env) = result.unwrap().unwrap();
            let err = env.payload().unwrap_err();
            assert!(err.path.starts_with("payload."), "{err}");
            assert_exact(name, &ErrorResponse::internal(Some(req.id), None), case);
        }
        "gzip_request_accepted" => {
            // The (dynamic) success answer decodes and re-encodes byte for byte.
            let text = case["response"]["body_text"].as_str().unwrap();
            let resp: SuccessResponse<Envelope> =
                asap_proto::error::from_slice(text.as_bytes()).unwrap();
            assert_eq!(String::from_utf8(resp.to_vec()).unwrap(), text);
        }
        _ => {
            // HTTP-level refusal before JSON-RPC: a `{"detail"}` body, whose
            // builder is the core's.
            assert_ne!(case["response"]["status"], 200, "{name}");
            let (json, text) = response_of(case);
            let detail = json["detail"].as_str().unwrap();
            assert_eq!(
                String::from_utf8(jsonrpc::detail_body(detail)).unwrap(),
                text
            );
        }
    }
}

#[test]
fn request_without_jsonrpc_member_is_accepted() {
    // The reference's request model defaults `jsonrpc` to "2.0".
    let req =
        jsonrpc::decode_request(json!({"method": "asap.send", "params": {}, "id": 7})).unwrap();
    assert_eq!(req.jsonrpc, "2.0");
    assert_eq!(req.id, RequestId::Int(7));
}

#[test]
fn python_client_request_body_bytes() {
    let v = vectors::load("jsonrpc/client_task_request_exchange.json");
    let body_text = v["request"]["body_text"].as_str().unwrap();
    let body_json = &v["request"]["body_json"];

    // The Python client's body is `json.dumps` text: canonical_json reproduces it.
    assert_eq!(
        canonical_json::to_string(body_json, JsonStyle::default()),
        body_text
    );

    // It decodes through the core to the envelope it carries.
    let (req, env) = run(body_text.as_bytes()).unwrap();
    assert_eq!(req.id, RequestId::from("req-1"));
    assert_eq!(
        req.params["idempotency_key"],
        body_json["params"]["idempotency_key"]
    );
    assert_eq!(
        serde_json::to_value(&env).unwrap(),
        body_json["params"]["envelope"]
    );
    assert!(matches!(env.payload().unwrap(), Payload::TaskRequest(_)));

    // Built with our request builder, the same bytes.
    let mut built = JsonRpcRequest::send(&env, RequestId::from("req-1"));
    built.params.insert(
        "idempotency_key".into(),
        body_json["params"]["idempotency_key"].clone(),
    );
    let text =
        canonical_json::to_string(&serde_json::to_value(&built).unwrap(), JsonStyle::default());
    assert_eq!(text, body_text);

    // The server's answer decodes and re-encodes to the same compact bytes.
    let resp_text = v["response"]["body_text"].as_str().unwrap();
    let resp: SuccessResponse<Envelope> =
        asap_proto::error::from_slice(resp_text.as_bytes()).unwrap();
    assert_eq!(String::from_utf8(resp.to_vec()).unwrap(), resp_text);
    let answer = &resp.result.envelope;
    assert_eq!(answer.correlation_id.as_deref(), Some(env.id.as_str()));
    let Payload::TaskResponse(tr) = answer.payload().unwrap() else {
        panic!("task.response")
    };
    assert_eq!(
        tr.result.unwrap()["echoed"],
        json!({"message": "Hello, ASAP!"})
    );
    let _ = EnvelopeInput::from_slice(&serde_json::to_vec(answer).unwrap()).unwrap();
}

/// Fuzz finding (jsonrpc_request, issue 15): the error body echoes an integer id
/// of any size verbatim, and our own `ErrorResponse` decoder must read it back.
#[test]
fn big_integer_ids_echoed_in_errors_decode_back() {
    use asap_proto::jsonrpc::{decode_request_raw, parse_json, ErrorResponse, RequestId};
    let fuzz = format!(
        r#"{{"j\\u0000":{{}},"+id":{{}},"id":5{}5}}"#,
        "5".repeat(75)
    );
    for body in [
        fuzz.as_str(),
        r#"{"id":56666666666666699999}"#,
        r#"{"id":18446744073709551616}"#,
        r#"{"id":-9223372036854775809}"#,
        r#"{"jsonrpc":"2.0","method":"asap.send","params":{},"id":18446744073709551616}"#,
    ] {
        let value = parse_json(body.as_bytes()).unwrap();
        let err = decode_request_raw(value, body.as_bytes())
            .and_then(|mut r| r.take_envelope().map(|_| ()))
            .expect_err(body);
        let bytes = err.to_vec();
        let back: ErrorResponse = serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("{body}: our own error body does not decode: {e}"));
        assert_eq!(back, err, "{body}");
        if let Some(RequestId::Big(digits)) = &back.id {
            assert!(body.contains(digits.as_str()), "{body}: digits kept");
        }
    }
    // `-0` is the integer 0, as in Python.
    let body = br#"{"jsonrpc":"2.0","method":"asap.send","params":{},"id":-0}"#;
    let req = decode_request_raw(parse_json(body).unwrap(), body).unwrap();
    assert_eq!(req.id, RequestId::Int(0));
}
